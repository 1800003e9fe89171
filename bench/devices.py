"""The endpoint population a benchmark registers: a mix of video device models by User-Agent.

The mix is the kind a lab holds: mostly Cisco room systems, some Cisco desktops (rule R2: EX60,
EX90, DX70, DX80, Movi), other vendors' room systems, soft clients. ``kind`` is what rule R2/R3
says the device should be charged as; the benchmark only reports it, the node decides.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Device:
    model: str
    user_agent: str
    kind: str  # "room" or "desktop" per rules R2/R3
    weight: int  # share of the population, in parts of sum(weights)


#: Weights sum to 100, so ``DEVICES`` reads as percentages. User-Agent strings as these devices send
#: them (the samples config/devices.toml cites): "TANDBERG/<train> (<software>) Cisco-<model>".
DEVICES: tuple[Device, ...] = (
    Device("Cisco Webex Room Kit", "TANDBERG/529 (ce9.15.3.22) Cisco-RoomKit", "room", 17),
    Device("Cisco Webex Room 55", "TANDBERG/529 (ce9.15.3.22) Cisco-Room55", "room", 9),
    Device("Cisco TelePresence SX80", "TANDBERG/529 (ce8.2.2.3263c59) Cisco-SX80", "room", 8),
    Device("Cisco TelePresence MX700", "TANDBERG/529 (ce9.1.4.3ae3106) Cisco-MX700ST", "room", 5),
    Device("Cisco TelePresence SX20 (TC7.3.5)", "TANDBERG/528 (TC7.3.5.a93bdb1)", "room", 4),
    Device("Cisco TelePresence EX90", "TANDBERG/528 (TC7.3.11.c1479a9) Cisco-EX90", "desktop", 7),
    Device("Cisco TelePresence EX60", "TANDBERG/528 (TC7.3.6.ea51021) Cisco-EX60", "desktop", 5),
    Device("Cisco Webex DX80", "TANDBERG/529 (ce9.15.3.22) Cisco-DX80", "desktop", 8),
    Device("Cisco Webex DX70", "TANDBERG/529 (ce8.3.0.c1a7707) Cisco-DX70", "desktop", 4),
    Device("Cisco DX80 (Android firmware, R3)", "Cisco-CP-DX80/10.2.1", "room", 2),
    Device("Cisco Jabber Video for TelePresence (Movi)", "TANDBERG/775 (MCX 4.8.12.18951) - Windows", "desktop", 3),
    Device("Cisco Jabber", "Cisco-CSF", "room", 6),
    Device("Poly RealPresence Group 500", "PolycomRealPresenceGroup500/6.2.2", "room", 8),
    Device("Poly HDX 8000", "PolycomHDX8000HD/3.1.12", "room", 3),
    Device("Lifesize Icon 600", "LifeSize Icon 600/LS_RM3_3.7.0 (2421)", "room", 6),
    Device("Linphone", "Linphone/5.2.0 (belle-sip/5.2.0)", "room", 5),
)
assert sum(d.weight for d in DEVICES) == 100


def population(n: int) -> list[Device]:
    """``n`` devices in a fixed interleaved order that keeps the mix at every prefix length."""
    total = sum(d.weight for d in DEVICES)
    out: list[Device] = []
    # Smooth weighted round-robin (as nginx balances upstreams): deterministic, even spread.
    current = [0] * len(DEVICES)
    for _ in range(n):
        for i, d in enumerate(DEVICES):
            current[i] += d.weight
        best = max(range(len(DEVICES)), key=current.__getitem__)
        current[best] -= total
        out.append(DEVICES[best])
    return out
