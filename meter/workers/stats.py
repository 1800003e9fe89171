"""One /metrics for the node: the workers' SIP counters and latency histograms, added to worker 0's.

Each worker sends its figures once a second (``meter.workers.worker``); a scrape adds the last ones
up, so a worker's counts are at most a second behind. A restarted worker starts again from zero:
what its predecessor had counted is carried, so the node's counters never go backwards.
"""

from __future__ import annotations

from collections import Counter

from meter.admin.latency import LatencyHistogram
from meter.sip.counters import SipCounters, add_snapshots


class WorkerStats:
    __slots__ = ("counters", "latency_counts", "latency_sum", "calls", "_carried", "_carried_latency")

    def __init__(self) -> None:
        self.counters: dict = {}
        self.latency_counts: list[int] = []
        self.latency_sum = 0.0
        self.calls: list[dict] = []
        self._carried: dict = {}
        self._carried_latency: tuple[list[int], float] = ([], 0.0)

    def update(self, counters: dict, latency_counts: list[int], latency_sum: float, calls: list[dict]) -> None:
        self.counters = add_snapshots(self._carried, counters)
        carried_counts, carried_sum = self._carried_latency
        self.latency_counts = _add_lists(carried_counts, latency_counts)
        self.latency_sum = carried_sum + latency_sum
        self.calls = calls

    def retire(self) -> None:
        """The worker is gone: its calls are over, its counts stay."""
        self.calls = []

    def carry(self, old: "WorkerStats") -> None:
        """A restarted worker's figures start from its predecessor's."""
        self._carried = dict(old.counters)
        self._carried_latency = (list(old.latency_counts), old.latency_sum)
        self.update({}, [], 0.0, [])


def summed_counters(own: SipCounters, workers: list[WorkerStats]) -> SipCounters:
    if not workers:
        return own
    total = own.snapshot()
    for worker in workers:
        total = add_snapshots(total, worker.counters)
    out = SipCounters()
    for name, value in total.items():
        setattr(out, name, Counter(value) if isinstance(value, dict) else value)
    return out


def summed_latency(own: LatencyHistogram | None, workers: list[WorkerStats]) -> LatencyHistogram | None:
    if own is None or not workers:
        return own
    out = LatencyHistogram()
    out.counts = list(own.counts)
    out.sum = own.sum
    for worker in workers:
        out.counts = _add_lists(out.counts, worker.latency_counts)
        out.sum += worker.latency_sum
    out.total = sum(out.counts)
    return out


def _add_lists(a: list[int], b: list[int]) -> list[int]:
    if len(a) < len(b):
        a = a + [0] * (len(b) - len(a))
    return [x + (b[i] if i < len(b) else 0) for i, x in enumerate(a)]
