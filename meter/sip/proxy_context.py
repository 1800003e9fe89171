"""One forwarded request's RFC 3261 §16 state: its server transaction, its branches, the best
final answer so far (§16.7 step 6) and the outcome to tell how it ended (``meter.sip.outcome``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from meter.codecs.sip import Response
from meter.sip.outcome import NO_OUTCOME, Outcome
from meter.sip.transaction import ServerTransaction


def rank(status: int) -> tuple[int, int]:
    """RFC 3261 §16.7 step 6: any 6xx first, else the lowest class (3xx before 4xx before 5xx)."""
    return (0, status) if status >= 600 else (status // 100, status)


@dataclass(slots=True)
class ProxyContext:
    server: ServerTransaction
    method: str
    outcome: Outcome = NO_OUTCOME
    branches: list = field(default_factory=list)
    finals: dict = field(default_factory=dict)  # branch key -> final status (or the local 408/487)
    best: Response | None = None
    best_cause: str = ""
    final_sent: bool = False
    cancelled: bool = False
    timer_c: set = field(default_factory=set)  # branches Timer C cancelled (RFC 3261 §16.8)

    def better(self, status: int) -> bool:
        """Would a final ``status`` replace the best answer so far (§16.7 step 6)?"""
        return self.best is None or rank(status) < rank(self.best.status)
