"""Call classification: from the facts of one call, what it costs, where, and which rules said so.

Pure and memoised: a node sees the same handful of fact combinations over and over, so after
warm-up ``classify_call`` is one dict lookup returning a shared, immutable ``CallCharge``.

Resolutions of the spec that are not spelled out there (each also named in a comment below):
- An unregistered far end reached through the traversal zone or the node's own default zone is
  ``external`` (B2B, reached through E).
- A call with an unregistered side pays where that side is (C3); the callee side wins when both
  are unregistered ("RMS licenses are consumed on the exit node").
- C9 moves the single RMS to the node that interworks; a call never costs two RMS.
- C1 vs C8: Cisco conferencing is free (CMS, or Conductor as policy server) unless Conductor is
  a B2BUA (C8) or the MCU is not managed by Conductor (C1's exception); both cost 1 RMS on C.
- C10: a cloud CMR call with a transformed dialled string gets no bypass and costs RMS on E.
"""

from __future__ import annotations

from typing import NamedTuple

from meter.licensing.model import RMS_HALF_UNITS, License, Media

ZONES = frozenset({
    "local", "unified_cm", "cisco_conferencing", "cloud_cmr", "traversal", "external",
    "third_party_gatekeeper", "third_party_sip", "lync_gateway", "jabber_guest",
})
# Where an endpoint can be registered to Cisco infrastructure: this cluster's C or E, another
# peer of this cluster (C11), or Unified CM. "" = not registered to Cisco infrastructure.
REGISTERED_AT = frozenset({"C", "E", "peer", "unified_cm"})
PROTOCOLS = frozenset({"sip", "h323"})
# "" no Conductor (e.g. Cisco Meeting Server); "policy"/"b2bua" Conductor deployment (C8);
# "unmanaged": a TelePresence MCU/Server *not* managed by Conductor (C1's exception).
CONDUCTOR_MODES = frozenset({"", "policy", "b2bua", "unmanaged"})


class CallFacts(NamedTuple):
    """What the node knows about one call. Hashable: it is the classification cache key."""

    role: str               # this node: "C" or "E"
    caller_zone: str        # zone kind of the caller's leg ("local": registered on this node)
    caller_registered: str  # "C" | "E" | "peer" | "unified_cm" | "" (not on Cisco infrastructure)
    caller_protocol: str    # "sip" | "h323"
    callee_zone: str
    callee_registered: str
    callee_protocol: str
    m_lines: int | None = None      # negotiated m= lines; None while setting up (C5, C6)
    interworked: bool = False       # this node interworks SIP<->H.323 (C9)
    transformed: bool = False       # this node transformed the dialled string (C10)
    conductor: str = ""             # see CONDUCTOR_MODES (C1, C8)
    mra: bool = False               # Unified CM remote session through the C/E pair (C1)
    cluster_peers: bool = False     # endpoints registered on different peers of this cluster (C11)
    media_via_peers: bool = False   # media passes through cluster peers as B2BUA (C11)
    caller_proxied: bool = False    # caller registered to C through E (C3's "remote" rows)


class CallCharge(NamedTuple):
    """The verdict for one call, as seen by the node in ``CallFacts.role``."""

    license: License        # drawn on this node (NONE when free, or when the other role pays)
    units: int              # on this node: RMS half units (C4), CMR whole licenses, else 0
    payer: str              # role that pays the call's license: "C", "E", or "" when free
    call_license: License   # what the call costs wherever it is charged
    media: Media            # how it is counted (C4-C6); SETUP until settled (C6, C7)
    physical: bool          # counts against the node's physical call capacity (P3, C1 note, C10)
    rules: tuple[str, ...]

    @property
    def charged_here(self) -> bool:
        return self.units > 0


# C3 as published (licensing-rules.md), one row per line. Columns: caller registered at, caller
# protocol (None: either), callee kind, RMS on C, RMS on E (None: C is not on the path, "-").
C3_TABLE: tuple[tuple[str, str | None, str, int | None, int], ...] = (
    ("unified_cm", None, "lync_gateway", 1, 0),
    ("unified_cm", None, "external", 0, 1),
    ("unified_cm", None, "third_party_gatekeeper", 1, 0),
    ("C", None, "external", 0, 1),
    ("C_remote", "sip", "external", 0, 1),
    ("C", "sip", "third_party_gatekeeper", 1, 0),
    ("C", "h323", "third_party_gatekeeper", 1, 0),
    ("C_remote", "sip", "third_party_gatekeeper", 1, 0),
    # The seed prints the two Lync rows as "1 (Lync gateway on C)" under E; C2 settles it as C.
    ("C", None, "lync_gateway", 1, 0),
    ("C_remote", None, "lync_gateway", 1, 0),
    ("C", "sip", "third_party_sip", 1, 0),
    ("C", "h323", "third_party_sip", 1, 0),
    ("E", "sip", "external", None, 1),
    ("E", "h323", "external", None, 1),
)


def _payers_from_c3() -> dict[str, str]:
    # The table's callee column decides the paying role; every row must agree (checked at import).
    payers: dict[str, str] = {}
    for _caller, _protocol, callee, on_c, on_e in C3_TABLE:
        payer = "C" if on_c else "E"
        if payers.setdefault(callee, payer) != payer or (on_c or 0) + on_e != 1:
            raise AssertionError(f"C3 table disagrees with itself on {callee}")
    return payers


# Role paying for a call whose far side is not registered to Cisco infrastructure (C2, C3).
PAYER_BY_FAR_KIND: dict[str, str] = {**_payers_from_c3(), "jabber_guest": "E"}  # C2: B2C on E
C3_KINDS = frozenset(callee for _, _, callee, _, _ in C3_TABLE)

_REGISTERED, _CONFERENCING, _CLOUD = "registered", "conferencing", "cloud"


def _side(zone: str, registered: str) -> str:
    """Reduce one end of the call to what the rules look at."""
    if registered or zone == "unified_cm":  # a Unified CM trunk carries Cisco-registered endpoints
        return _REGISTERED
    if zone == "cisco_conferencing":
        return _CONFERENCING
    if zone == "cloud_cmr":
        return _CLOUD
    if zone in ("traversal", "local", "external"):
        return "external"  # an unregistered far end reached via E: business to business (C2)
    return zone  # jabber_guest, third_party_gatekeeper, third_party_sip, lync_gateway


def _media(facts: CallFacts) -> Media:
    if not facts.m_lines:  # None or 0: set-up not complete, counts as video (C6)
        return Media.SETUP
    if facts.m_lines >= 2:  # any further m= line makes it a video call (C5)
        return Media.VIDEO
    sip_end_to_end = (facts.caller_protocol == "sip" and facts.callee_protocol == "sip"
                      and not facts.interworked)
    return Media.AUDIO_SIP if sip_end_to_end else Media.AUDIO_OTHER  # C4


def _check(facts: CallFacts) -> None:
    if facts.role not in ("C", "E"):
        raise ValueError(f"role: expected 'C' or 'E', got {facts.role!r}")
    for name in ("caller_zone", "callee_zone"):
        if getattr(facts, name) not in ZONES:
            raise ValueError(f"{name}: unknown zone kind {getattr(facts, name)!r}")
    for name in ("caller_registered", "callee_registered"):
        value = getattr(facts, name)
        if value and value not in REGISTERED_AT:
            raise ValueError(f"{name}: expected one of {sorted(REGISTERED_AT)} or '', got {value!r}")
    for name in ("caller_protocol", "callee_protocol"):
        if getattr(facts, name) not in PROTOCOLS:
            raise ValueError(f"{name}: expected 'sip' or 'h323', got {getattr(facts, name)!r}")
    if facts.conductor not in CONDUCTOR_MODES:
        raise ValueError(f"conductor: expected one of {sorted(CONDUCTOR_MODES)}, got {facts.conductor!r}")
    if facts.m_lines is not None and facts.m_lines < 0:
        raise ValueError(f"m_lines: expected None or >= 0, got {facts.m_lines}")


def _decide(facts: CallFacts) -> CallCharge:
    _check(facts)
    caller = _side(facts.caller_zone, facts.caller_registered)
    callee = _side(facts.callee_zone, facts.callee_registered)
    media = _media(facts)
    license, payer, rules = License.NONE, "", []

    if facts.mra:
        rules.append("C1")  # Unified CM remote session
    elif caller in PAYER_BY_FAR_KIND or callee in PAYER_BY_FAR_KIND:
        far = callee if callee in PAYER_BY_FAR_KIND else caller  # exit side first
        license, payer = License.RMS, PAYER_BY_FAR_KIND[far]
        rules.append("C2")
        if far in C3_KINDS:
            rules.append("C3")
    elif _CLOUD in (caller, callee):
        cloud_protocol = facts.callee_protocol if callee == _CLOUD else facts.caller_protocol
        if facts.transformed:
            license, payer = License.RMS, "E"  # no bypass once the node rewrote the string (C10)
            rules += ["C10", "C2"]
        elif cloud_protocol == "h323":
            license, payer = License.CMR, "E"
            rules.append("C10")
        else:
            rules += ["C1", "C10"]
    elif _CONFERENCING in (caller, callee):
        if facts.conductor == "b2bua":
            license, payer = License.RMS, "C"
            rules.append("C8")
        elif facts.conductor == "unmanaged":
            license, payer = License.RMS, "C"  # an MCU not managed by Conductor costs RMS (C1)
            rules += ["C1", "C2"]
        else:
            rules += ["C1", "C8"] if facts.conductor == "policy" else ["C1"]
    else:
        rules.append("C1")  # both ends registered to Cisco infrastructure

    if facts.cluster_peers or facts.media_via_peers:
        rules.append("C11")  # across peers: registered unless one side is not (same verdict as C1/C2)
    if facts.interworked:
        rules.append("C9")
        if license is License.RMS:
            payer = facts.role  # the interworking node pays
    if license is License.RMS:
        rules.append("C4" if media is not Media.SETUP else "C6")
        units = RMS_HALF_UNITS[media]
    else:
        units = 1 if license is License.CMR else 0
    here = payer == facts.role
    return CallCharge(
        license=license if here else License.NONE,
        units=units if here else 0,
        payer=payer,
        call_license=license,
        media=media,
        physical=True,  # every call through the node uses it, registered or not (C1 note, C10)
        rules=tuple(rules),
    )


_CACHE: dict[CallFacts, CallCharge] = {}
# Distinct fact combinations are few (zones x registration x protocol x flags); the bound only
# guards against a caller feeding unbounded m_lines values.
_CACHE_LIMIT = 4096


def classify_call(facts: CallFacts) -> CallCharge:
    """Decide what ``facts`` cost on the node in ``facts.role``. Raises ValueError on bad facts."""
    charge = _CACHE.get(facts)
    if charge is None:
        charge = _decide(facts)
        if len(_CACHE) >= _CACHE_LIMIT:
            _CACHE.clear()
        _CACHE[facts] = charge
    return charge
