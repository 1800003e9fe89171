"""Registration classification: which license one registration takes, how many, and why.

One registration carrying N aliases takes N licenses (R9) and N registration slots (R6). A
device registered over SIP and over H.323 is two registrations and takes both licenses (R8):
the SIP one by its model (R2, R3), the H.323 one always a room (R4).
"""

from __future__ import annotations

from typing import NamedTuple

from meter.licensing.devices import DeviceCatalog
from meter.licensing.model import Kind, License

# How the registration reached this node:
#   direct        the endpoint registered here
#   proxied_to_c  (on C) a SIP registration Expressway-E proxied to this C: same license as direct (R10)
#   proxied_by_e  (on E) a SIP registration this E proxies on to C: no license on E (R10), still a slot (R6)
#   mra           (on C or E) an MRA registration proxied to Unified CM: licensed there (C1), a slot here (R6)
PATHS = ("direct", "proxied_to_c", "proxied_by_e", "mra")


class RegistrationFacts(NamedTuple):
    role: str               # "C" or "E"
    protocol: str           # "sip" or "h323"
    path: str = "direct"    # see PATHS
    aliases: int = 1        # aliases in this registration (R9)
    user_agent: str = ""    # SIP User-Agent
    h323_product: str = ""  # RRQ endpointVendor productId
    h323_version: str = ""  # RRQ endpointVendor versionId


class RegistrationCharge(NamedTuple):
    license: License        # ROOM, DESKTOP or NONE
    units: int              # licenses: one per alias (R9); 0 with NONE
    kind: Kind              # the physical slot it occupies (R6)
    aliases: int
    model: str              # device catalog label, "" when unknown
    rules: tuple[str, ...]


# Distinct facts are few (User-Agent strings are the variable part); bound the memo anyway.
_CACHE_LIMIT = 4096


def classify_registration(facts: RegistrationFacts, catalog: DeviceCatalog) -> RegistrationCharge:
    """Decide the license of one registration. Raises ValueError on impossible facts.

    Memoised per catalog (a lab's reloaded catalog starts with an empty memo).
    """
    memo = catalog.registration_memo
    charge = memo.get(facts)
    if charge is None:
        charge = _decide(facts, catalog)
        if len(memo) >= _CACHE_LIMIT:
            memo.clear()
        memo[facts] = charge
    return charge


def _decide(facts: RegistrationFacts, catalog: DeviceCatalog) -> RegistrationCharge:
    if facts.role not in ("C", "E"):
        raise ValueError(f"role: expected 'C' or 'E', got {facts.role!r}")
    if facts.protocol not in ("sip", "h323"):
        raise ValueError(f"protocol: expected 'sip' or 'h323', got {facts.protocol!r}")
    if facts.path not in PATHS:
        raise ValueError(f"path: expected one of {PATHS}, got {facts.path!r}")
    if facts.aliases < 1:
        raise ValueError(f"aliases: a registration carries at least one alias, got {facts.aliases}")
    if facts.protocol == "h323" and facts.path != "direct":
        raise ValueError("R7: proxied registration exists for SIP only, not H.323")
    n = facts.aliases

    if facts.protocol == "h323":
        model = catalog.match_h323(facts.h323_product, facts.h323_version)
        return RegistrationCharge(License.ROOM, n, Kind.REGISTRATION, n, model, ("R1", "R4", "R9"))

    device = catalog.match_sip(facts.user_agent)
    if facts.path == "mra":
        return RegistrationCharge(License.NONE, 0, Kind.MRA_REGISTRATION, n, device.model, ("C1", "R6"))
    if facts.path == "proxied_by_e":
        return RegistrationCharge(License.NONE, 0, Kind.REGISTRATION, n, device.model, ("R10", "R6"))
    license = License.DESKTOP if device.device_class == "desktop" else License.ROOM
    rules = ("R1", *device.rules, "R9")
    if facts.path == "proxied_to_c":
        rules += ("R10",)
    return RegistrationCharge(license, n, Kind.REGISTRATION, n, device.model, rules)
