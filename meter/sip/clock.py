"""Time for the SIP core: a monotonic clock plus one-shot timers, injected so tests can fake it.

The asyncio adapter uses ``loop.call_later`` (one heap entry per timer, no task per transaction);
unit tests drive :class:`FakeClock` by hand to fire RFC 3261 timers deterministically.
"""

from __future__ import annotations

import heapq
import itertools
import time
from typing import Any, Callable, Protocol


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    def time(self) -> float:
        """Monotonic seconds, for timers and expiries."""

    def wall(self) -> float:
        """Seconds since the epoch, for what the hooks and the API show."""

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> TimerHandle: ...


class LoopClock:
    """The event loop's clock and timer heap."""

    def __init__(self, loop) -> None:
        self._loop = loop
        self.call_later = loop.call_later
        self.time = loop.time

    @staticmethod
    def wall() -> float:
        return time.time()


class _FakeHandle:
    __slots__ = ("when", "callback", "args", "cancelled")

    def __init__(self, when: float, callback, args) -> None:
        self.when = when
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """A clock that only moves when told to; ``advance`` fires due timers in time order."""

    def __init__(self, start: float = 1000.0, wall_offset: float = 1_700_000_000.0) -> None:
        self.now = start
        self._wall_offset = wall_offset
        self._heap: list[tuple[float, int, _FakeHandle]] = []
        self._seq = itertools.count()

    def time(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.now + self._wall_offset

    def call_later(self, delay: float, callback, *args) -> _FakeHandle:
        handle = _FakeHandle(self.now + max(0.0, delay), callback, args)
        heapq.heappush(self._heap, (handle.when, next(self._seq), handle))
        return handle

    @property
    def pending(self) -> int:
        return sum(1 for _, _, h in self._heap if not h.cancelled)

    def advance(self, seconds: float = 0.0) -> None:
        target = self.now + seconds
        while self._heap and self._heap[0][0] <= target:
            when, _, handle = heapq.heappop(self._heap)
            if handle.cancelled:
                continue
            self.now = max(self.now, when)
            handle.callback(*handle.args)
        self.now = target
