"""Option types (K2): what a key can grant, and which of them need a restart (K3)."""

from __future__ import annotations

from dataclasses import dataclass

from meter.licensing.model import License


@dataclass(frozen=True, slots=True)
class OptionType:
    code: str
    title: str
    license: License | None = None  # quantity options: the pool they feed
    restart: bool = False           # takes effect only after a restart (K3)
    legacy: bool = False            # recognised, from older software (K2)


OPTIONS: dict[str, OptionType] = {o.code: o for o in (
    # K2: in force
    OptionType("RMS", "Rich Media Sessions", License.RMS),
    OptionType("DESKTOP", "TelePresence Desktop Systems", License.DESKTOP),
    OptionType("ROOM", "TelePresence Room Systems", License.ROOM),
    OptionType("HSM", "HSM"),
    OptionType("ADVANCED_ACCOUNT_SECURITY", "Advanced Account Security", restart=True),
    OptionType("MICROSOFT_INTEROP", "Microsoft Interoperability"),
    # K2: legacy, still recognised
    OptionType("EXPRESSWAY_SERIES", "Expressway Series", restart=True, legacy=True),
    OptionType("TRAVERSAL_SERVER", "Traversal Server", restart=True, legacy=True),
    OptionType("ENCRYPTION", "Encryption", legacy=True),
    OptionType("H323_SIP_INTERWORKING", "H.323-to-SIP Interworking Gateway", legacy=True),
    # Not in K2: C10 charges H.323 calls to the cloud CMR against CMR licenses, and the spec names
    # no key that grants them; a lab grants them with this quantity key.
    OptionType("CMR", "Cloud Collaboration Meeting Room", License.CMR),
)}
# L3: features only an option key can turn on; unavailable in Smart mode.
KEY_ONLY_FEATURES = frozenset({"HSM", "ADVANCED_ACCOUNT_SECURITY", "MICROSOFT_INTEROP"})
