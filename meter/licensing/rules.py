"""Rule IDs of docs/licensing-rules.md that this package implements, one line each.

The document is the reference: each rule's full statement, the resolutions the code takes where
the Cisco guide is ambiguous, the module that decides it, and how to find its tests. Rules it
marks "not implemented yet" (P6 and S1-S14, Smart Licensing) have no line here.

Every licensing decision carries the IDs that made it (docs/design.md principle 2), so logs, the API
and tests can say *why* a call cost an RMS or a registration took a room license.
"""

from __future__ import annotations

RULES: dict[str, str] = {
    # L. License modes
    "L1": "Two modes, PAK (option keys) and Smart; exactly one is active; PAK is the default.",
    "L2": "PAK -> Smart at run time; Smart -> PAK only through a factory reset (backup first, confirmation).",
    "L3": "In Smart mode option keys cannot be added and have no effect; key-only features are unavailable.",
    "L4": "Product vcs does not support Smart mode.",
    # K. Option keys
    "K1": "A key grants a feature or a quantity, for a period or without end.",
    "K2": "Key types in force (RMS, desktop, room, HSM, AAS, MS interop) and legacy types still recognised.",
    "K3": "Traversal Server, Expressway Series and AAS apply after a restart; until then 'restart required'.",
    "K4": "Only the first 65 keys apply (CSCvf78728); xConfiguration Option [1..64] Key overwrites an index.",
    "K5": "Demo keys expire with their grant; a permanent key added beside a demo key warns.",
    "K6": "The option-key view lists every key with its validity, features in force and peers' licenses.",
    # C. Call licensing
    "C1": "No RMS between registered endpoints, for MRA, nor to Cisco conferencing or the collaboration cloud.",
    "C2": "Every other call costs RMS: B2B and Jabber Guest on E, interop gateway calls on C.",
    "C3": "Where the RMS is charged, by where caller and callee are registered (the table).",
    "C4": "One RMS carries one video call or two audio-only SIP calls; other audio-only calls take a whole one.",
    "C5": "Audio-only SIP: exactly one m= line in the negotiated SDP (port 0 on either side: not negotiated).",
    "C6": "An audio-only SIP call counts as video until set-up completes.",
    "C7": "The class fixed at set-up stays until the call ends.",
    "C8": "Behind TelePresence Conductor, licenses are consumed only when Conductor is a B2BUA.",
    "C9": "SIP<->H.323 interworking costs 1 RMS on the interworking node when either side is unregistered.",
    "C10": "Cloud CMR calls without dialled-string transformation need no RMS; H.323 ones take a CMR license.",
    "C11": "Cluster: calls between endpoints on different peers are registered calls unless one side is not.",
    # R. Registration licensing
    "R1": "Each registered system needs a room or a desktop license.",
    "R2": "SIP desktop systems: EX60, EX90, DX70, DX80, Jabber Video (Movi); every other SIP device is a room.",
    "R3": "Desktop needs DX on CE8.2+ and EX on TC7.3.6+; older ones take a room license.",
    "R4": "Every H.323 registration takes a room license.",
    "R5": "Room and desktop licenses pool across the cluster and are not interchangeable.",
    "R6": "Registration capacity per platform; local, proxied and MRA registrations all count.",
    "R7": "Proxied registration exists for SIP only.",
    "R8": "A device registered over SIP and H.323 consumes both licenses.",
    "R9": "Registrations count per alias: several aliases consume one license each.",
    "R10": "SIP proxied to C costs as direct; SIP proxied through E costs nothing on E.",
    "R11": "An exhausted pool refuses the registration.",
    # P. Cluster, capacity, alarms
    "P1": "PAK: RMS (and other shareable) licenses pool across peers whichever peer holds the key.",
    "P2": "A lost peer's licenses stay in the pool for 14 days from the loss of contact, then leave.",
    "P3": "Each peer uses no more than its platform's physical capacity whatever the pool holds.",
    "P4": "Capacity alarm at 90% of the cluster's capacity or of one node's physical capacity.",
    "P5": "Two large VMs with 300 RMS each carry 600 calls; one lost, the other keeps 600 RMS for 14 days "
          "but carries at most 500.",
}


def describe(rule_ids: tuple[str, ...] | list[str]) -> str:
    """'C2 (…); C3 (…)': the rules behind a decision, for logs and the CLI."""
    return "; ".join(f"{rule} ({RULES.get(rule, 'unknown rule')})" for rule in rule_ids)
