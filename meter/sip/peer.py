"""Where a message came from or goes to: transport, address, and the TCP connection it rode on."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Peer:
    """A transport address. ``conn`` names the TCP connection a request arrived on, so its
    responses and later requests to that endpoint reuse it (RFC 3261 §18.2.2, RFC 5923)."""

    transport: str  # "udp" | "tcp"
    host: str  # IP literal, no brackets (or a name still to resolve)
    port: int
    conn: int | None = None

    @property
    def reliable(self) -> bool:
        # RFC 3261 §17: retransmission timers A, E, G run over unreliable transports only.
        return self.transport != "udp"

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def __reduce__(self):
        # Pickled between SIP workers with every binding and question (meter.workers): as a plain
        # tuple, several times faster than a slotted dataclass's generic state.
        return Peer, (self.transport, self.host, self.port, self.conn)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.transport}:{host}:{self.port}"
