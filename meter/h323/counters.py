"""Plain-int counters of the RAS gatekeeper; the admin layer turns a snapshot into Prometheus metrics.

Label values come from small fixed sets (docs/design.md, prometheus conventions): message kinds are
H.225.0's abbreviations (``codecs.ras.SHORT_NAMES``, 33 of them), malformed datagrams count by the
codec's error code (``RASError.code``: empty, too_large, undecodable, trailing_octets, unknown_message).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class RasCounters:
    received: Counter = field(default_factory=Counter)  # by kind ("RRQ", "ARQ", ...)
    sent: Counter = field(default_factory=Counter)  # by kind, relayed messages included
    malformed_dropped: int = 0  # datagrams that are no RAS message: dropped, never answered
    malformed_by_code: Counter = field(default_factory=Counter)  # the same, by RASError.code
    unknown_answered: int = 0  # valid messages of a kind we do not handle, answered XRS
    stray_answers: int = 0  # confirms/rejects matching nothing we asked
    keepalives: int = 0  # lightweight RRQs that refreshed a registration
    expired: int = 0  # registrations removed because their time-to-live ran out
    missed_irr: int = 0  # calls released because their IRQs went unanswered
    forwarded: int = 0  # inline: requests sent upstream (retransmissions included)
    relayed: int = 0  # inline: upstream answers and requests passed on to endpoints, endpoint answers passed up
    upstream_timeouts: int = 0  # inline: forwarded requests the upstream never answered
    unroutable: int = 0  # inline: upstream requests naming no endpoint or call we know
    hook_errors: int = 0  # exceptions raised by the hooks or the sip_locator (meter.hooks.HookCaller)
    internal_errors: int = 0  # exceptions caught at the core's boundary (a bug, not the peer's fault)
    send_errors: int = 0

    def snapshot(self) -> dict:
        return {name: dict(value) if isinstance(value, Counter) else value for name, value in vars(self).items()}
