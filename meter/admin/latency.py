"""A per-message processing-latency histogram cheap enough for the hot path.

prometheus-client's Histogram takes a lock and walks its buckets in Python on each observe();
here an observation is one bisect and one list increment, and the Prometheus family is built
only when /metrics is scraped.
"""

from __future__ import annotations

from bisect import bisect_left

# Seconds. A proxied SIP message costs tens of microseconds; the upper buckets catch event-loop
# stalls (GC, a slow disk write) that the p99 target of 2 ms is about.
BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.1, 1.0)


class LatencyHistogram:
    __slots__ = ("counts", "total", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)  # last slot: above the largest bound (+Inf)
        self.total = 0
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(BUCKETS, seconds)] += 1
        self.total += 1
        self.sum += seconds

    def cumulative(self) -> list[tuple[str, int]]:
        """Buckets as Prometheus wants them: cumulative counts per upper bound, ending at +Inf."""
        out, running = [], 0
        for bound, count in zip(BUCKETS, self.counts):
            running += count
            out.append((repr(bound), running))
        out.append(("+Inf", self.total))
        return out


class TimedReceiver:
    """Wraps a receiver and times each message's handling: the SIP core (as the transports'
    receiver) or the RAS node (which only has receive_datagram)."""

    __slots__ = ("inner", "histogram", "_clock")

    def __init__(self, inner, histogram: LatencyHistogram):
        from time import perf_counter

        self.inner, self.histogram, self._clock = inner, histogram, perf_counter

    def receive_datagram(self, data, source) -> None:
        start = self._clock()
        self.inner.receive_datagram(data, source)
        self.histogram.observe(self._clock() - start)

    def receive_message(self, msg, source) -> None:
        start = self._clock()
        self.inner.receive_message(msg, source)
        self.histogram.observe(self._clock() - start)

    def receive_error(self, err, source) -> None:
        self.inner.receive_error(err, source)

    def __getattr__(self, name):  # anything else the transports ask of the core
        return getattr(self.inner, name)
