"""Bucketed deadlines for the SIP core's many timers: one event-loop timer, not one per RFC timer.

At 3000 REGISTER/s every non-INVITE server transaction waits out Timer J (64*T1 = 32 s), so one
``loop.call_later`` per timer keeps ~96,000 loop handles alive, each a heap entry the loop sifts on
every start and cancel. Here a timer is a small :class:`WheelTimer` in the bucket of its tick (the
deadline rounded *up* to the wheel's resolution, 10 ms by default); the wheel keeps a heap of the
ticks that have a bucket and arms a single loop timer for the earliest. Cancelling removes the timer
from its bucket (a dict), so cancelled timers cost no memory until their deadline.

Guarantees (tests/unit/test_timer_wheel.py):
- a timer never fires before its deadline and at most one tick after it (plus loop latency);
- timers fire in deadline order, ties in the order they were started;
- deadlines are absolute (``clock.time() + delay`` when started), so nothing drifts however late
  a tick runs; a timer started from a callback never fires within the same tick's run;
- cancelling a timer that has fired, or twice, does nothing.

A delay <= 0 (RFC 3261 Timers D, I, J, K over reliable transports) goes straight to the clock's
``call_later(0, ...)``: it runs on the loop's next iteration, exactly as before, and lives no longer.
"""

from __future__ import annotations

import heapq
import logging
from typing import Any, Callable

from meter.sip.clock import Clock

log = logging.getLogger("meter.sip.timer_wheel")

DEFAULT_TICKS_PER_SECOND = 100  # 10 ms: far below T1 (500 ms), the shortest RFC 3261 timer
_EPSILON = 1e-6  # in ticks: float rounding of "now + delay" must not push a deadline a whole tick late


class WheelTimer:
    """A timer started with :meth:`TimerWheel.call_later`; :meth:`cancel` is all its owner needs
    (the asyncio ``TimerHandle`` protocol)."""

    __slots__ = ("callback", "args", "_bucket")

    def __init__(self, callback: Callable[..., Any], args: tuple) -> None:
        self.callback = callback
        self.args = args
        self._bucket: dict | None = None  # None once fired or cancelled

    def cancel(self) -> None:
        bucket = self._bucket
        if bucket is not None:
            self._bucket = None
            bucket.pop(self, None)

    @property
    def cancelled(self) -> bool:
        return self._bucket is None

    def __repr__(self) -> str:
        return f"<WheelTimer {getattr(self.callback, '__qualname__', self.callback)}>"


def _fire_handle(timer: WheelTimer) -> None:
    timer._bucket = None
    timer.callback(*timer.args)


class TimerWheel:
    """Many short-lived timers on top of one timer of ``clock``.

    Two ways in: :meth:`call_later` (a handle to cancel, for the odd per-call timer) and the
    allocation-light :meth:`schedule` the transactions use per message: ``fire(key)`` runs at the
    deadline unless the owner cancels with ``bucket.pop(key, None)`` on the bucket it was given.
    """

    def __init__(self, clock: Clock, ticks_per_second: int = DEFAULT_TICKS_PER_SECOND) -> None:
        if ticks_per_second <= 0:
            raise ValueError("ticks_per_second must be positive")
        self.clock = clock
        self._time = clock.time  # bound once: schedule runs per message
        self.ticks_per_second = ticks_per_second
        # tick -> {key: (deadline, fire)}: a dict, so a cancel is one C-level pop
        self._buckets: dict[int, dict[Any, tuple[float, Callable[[Any], Any]]]] = {}
        self._ticks: list[int] = []  # heap of the ticks in _buckets
        self._armed_tick: int | None = None  # the tick the loop timer is set for
        self._armed = None  # that loop timer's handle
        self._done = -1  # the last tick run: a timer started while it runs goes to a later one
        self._closed = False

    def __len__(self) -> int:
        """Timers started and neither fired nor cancelled (zero-delay ones excepted)."""
        return sum(len(bucket) for bucket in self._buckets.values())

    def schedule(self, delay: float, key: Any, fire: Callable[[Any], Any]):
        """``fire(key)`` after ``delay`` seconds (> 0); returns the bucket to ``pop(key, None)`` from
        to cancel. ``key`` must be hashable and unique among the owner's running timers."""
        when = self._time() + delay
        exact = when * self.ticks_per_second
        tick = int(exact)
        if tick < exact - _EPSILON:
            tick += 1  # round up: never early
        if tick <= self._done:
            tick = self._done + 1
        bucket = self._buckets.get(tick)
        if bucket is None:
            bucket = self._buckets[tick] = {}
            heapq.heappush(self._ticks, tick)
            if self._armed_tick is None or tick < self._armed_tick:
                self._arm(tick)
        bucket[key] = (when, fire)
        return bucket

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any):
        """``callback(*args)`` after ``delay`` seconds; returns a handle with ``cancel()``."""
        if delay <= 0:
            return self.clock.call_later(0, callback, *args)
        timer = WheelTimer(callback, args)
        timer._bucket = self.schedule(delay, timer, _fire_handle)
        return timer

    def close(self) -> None:
        """Forget every timer and stop the loop timer (the node is shutting down)."""
        self._closed = True
        for bucket in self._buckets.values():
            bucket.clear()
        self._buckets.clear()
        self._ticks.clear()
        self._disarm()

    # -- the one loop timer ------------------------------------------------------------------------

    def _arm(self, tick: int) -> None:
        self._disarm()
        if self._closed:
            return
        self._armed_tick = tick
        self._armed = self.clock.call_later(max(0.0, tick / self.ticks_per_second - self._time()), self._run)

    def _disarm(self) -> None:
        if self._armed is not None:
            self._armed.cancel()
        self._armed = None
        self._armed_tick = None

    def _run(self) -> None:
        # The loop may run a timer a little early (its clock resolution): the tick armed for is due.
        due = max(self._armed_tick if self._armed_tick is not None else -1,
                  int(self._time() * self.ticks_per_second + _EPSILON))
        self._armed = None
        self._armed_tick = None
        ticks, buckets = self._ticks, self._buckets
        while ticks and ticks[0] <= due:
            tick = heapq.heappop(ticks)
            self._done = tick
            bucket = buckets.pop(tick)
            if not bucket:
                continue
            # deadline order (ties: start order, the sort is stable)
            entries = list(bucket.items()) if len(bucket) == 1 else sorted(bucket.items(), key=_deadline)
            for key, (_, fire) in entries:
                if bucket.pop(key, None) is None:  # cancelled by an earlier callback of this tick
                    continue
                try:
                    fire(key)
                except Exception:  # one broken callback must not lose the others of its tick
                    log.exception("sip.timer_wheel.callback_error")
        if due > self._done:
            self._done = due
        if ticks and not self._closed:
            self._arm(ticks[0])


def _deadline(entry: tuple) -> float:
    return entry[1][0]
