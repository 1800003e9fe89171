"""Vocabulary shared by the licensing modules: license types, roles, media classes.

StrEnums, so a value is also its plain string: pool stores (meter.cluster) and metrics labels
use ``"rms"`` without importing this module.
"""

from __future__ import annotations

from enum import StrEnum


class License(StrEnum):
    """What a charge draws from. NONE: nothing (a registered call, an MRA registration...)."""

    RMS = "rms"          # Rich Media Sessions, per call (C2)
    ROOM = "room"        # TelePresence Room Systems, per registered alias (R1, R2, R4)
    DESKTOP = "desktop"  # TelePresence Desktop Systems, per registered alias (R1, R2)
    CMR = "cmr"          # H.323 call to the cloud CMR (C10)
    NONE = "none"


# License types with a pool. RMS is kept in half units so that two audio-only SIP calls share
# one license (C4); every other pool counts whole licenses.
POOLED = (License.RMS, License.ROOM, License.DESKTOP, License.CMR)
UNIT_SCALE: dict[str, int] = {License.RMS: 2, License.ROOM: 1, License.DESKTOP: 1, License.CMR: 1}


class Role(StrEnum):
    C = "C"  # Expressway-C, inside
    E = "E"  # Expressway-E, edge


class Media(StrEnum):
    """How a call is counted (C4-C6)."""

    SETUP = "setup"              # SDP not yet negotiated: counts as video (C6)
    VIDEO = "video"              # two or more m= lines (C5)
    AUDIO_SIP = "audio_sip"      # exactly one m= line, SIP end to end: half an RMS (C4, C5)
    AUDIO_OTHER = "audio_other"  # audio-only H.323 or interworked: a whole RMS (C4)


# Half units of RMS per call class (C4, C6).
RMS_HALF_UNITS: dict[str, int] = {
    Media.SETUP: 2, Media.VIDEO: 2, Media.AUDIO_SIP: 1, Media.AUDIO_OTHER: 2,
}


class Kind(StrEnum):
    """What a ledger entry occupies of the node's physical capacity (P3, R6)."""

    CALL = "call"
    REGISTRATION = "registration"          # local or proxied registration (R6)
    MRA_REGISTRATION = "mra_registration"  # proxied to Unified CM; also counts as a registration (R6)
    NONE = "none"                          # a license only (tests, imports)
