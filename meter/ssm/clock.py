"""The manager's clock: the wall clock moved by ``clock_offset`` (a manager whose clock is off),
and durations compressed by ``time_factor`` (86400 = one simulated day per real second).

Every timestamp the manager writes or sends is on this clock; every duration of the protocol
(90-day authorization, one-year ID certificate, token lifetimes) goes through ``span``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

DAY = 86400.0


@dataclass(frozen=True)
class Clock:
    time_factor: float = 1.0
    clock_offset: float = 0.0

    def now(self) -> float:
        return time.time() + self.clock_offset

    def span(self, days: float) -> float:
        """Real seconds that ``days`` simulated days last."""
        return days * DAY / self.time_factor
