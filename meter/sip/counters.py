"""Plain-int counters of the SIP node; the admin layer turns a snapshot into Prometheus metrics.

Label values come from small fixed sets (docs/design.md, prometheus conventions): methods outside
:data:`METHODS` count as "other", statuses are the 100-699 codes.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

METHODS = frozenset({
    "INVITE", "ACK", "BYE", "CANCEL", "REGISTER", "OPTIONS", "INFO", "UPDATE", "PRACK",
    "SUBSCRIBE", "NOTIFY", "REFER", "MESSAGE", "PUBLISH",
})


def method_label(method: str) -> str:
    return method if method in METHODS else "other"


@dataclass
class SipCounters:
    requests_received: Counter = field(default_factory=Counter)  # by method
    responses_received: Counter = field(default_factory=Counter)  # by status
    requests_sent: Counter = field(default_factory=Counter)  # by method (retransmissions included)
    responses_sent: Counter = field(default_factory=Counter)  # by status (retransmissions included)
    malformed_dropped: int = 0  # not a request we could answer: garbage, broken responses
    malformed_answered: int = 0  # malformed requests answered with 4xx/5xx and the codec's reason
    retransmissions_absorbed: int = 0  # request retransmissions matched to a server transaction
    stray_responses: int = 0  # responses matching no client transaction
    keepalives: int = 0  # CRLF keep-alives (RFC 5626 §3.5.1)
    loops_detected: int = 0
    hook_errors: int = 0  # exceptions raised by the metering hooks
    internal_errors: int = 0  # exceptions caught in a callback (a bug, not the peer's fault)
    send_errors: int = 0
    sessions_expired: int = 0  # calls ended by the node when their RFC 4028 session interval ran out
    late_answers: int = 0  # 2xx for calls the node had ended unanswered (re-opened or refused)
    relay_refused: Counter = field(default_factory=Counter)  # by why (router.RELAY_REFUSALS)
    auth_failures: Counter = field(default_factory=Counter)  # by reason (admission.AUTH_FAILURES)

    def snapshot(self) -> dict:
        out = {}
        for name, value in vars(self).items():
            out[name] = dict(value) if isinstance(value, Counter) else value
        return out

    def count_sent(self, data: bytes) -> None:
        """Count an outgoing message from its start line (works for retransmissions too)."""
        if data[:4] == b"SIP/":
            try:
                self.responses_sent[int(data[8:11])] += 1
            except ValueError:
                pass
        else:
            sp = data.find(b" ", 0, 32)
            self.requests_sent[method_label(data[:sp].decode("ascii", "replace"))] += 1


def add_snapshots(a: dict, b: dict) -> dict:
    """Two :meth:`SipCounters.snapshot` dicts added up (several SIP workers make one node)."""
    out = dict(a)
    for name, value in b.items():
        if isinstance(value, dict):
            merged = Counter(out.get(name) or {})
            merged.update(value)
            out[name] = dict(merged)
        else:
            out[name] = out.get(name, 0) + value
    return out
