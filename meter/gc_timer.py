"""Python's cyclic garbage collector, kept off the hot path.

Measured (``python -m bench.hotpath --gc-stats``, BENCHMARKS.md): handling a SIP message leaves
no cyclic garbage, reference counting frees all of it; yet each message keeps a dozen or more
tracked objects alive for its transaction's 32 s (RFC 3261 Timer J). At 3000 REGISTER/s that is
over a million objects, and every automatic *full* collection walks them all with the event loop
stopped for tens to hundreds of milliseconds: that was the whole p99 at 3000/s. So the young generations stay automatic (they only
walk what is new, well under a millisecond), and full collections run on a timer instead, timed
and logged so a slow one or a leak shows.
"""

from __future__ import annotations

import gc
import logging
import time

from meter.logs import log_event

log = logging.getLogger("meter.gc")

_NEVER = 2**30  # gen-1 passes before an automatic full collection: never, in practice


class FullCollections:
    """Start-up objects frozen, automatic full collections off, one every ``interval`` seconds."""

    def __init__(self, loop, interval: float):
        self._loop = loop
        self.interval = interval
        self._handle = None
        self._saved = gc.get_threshold()
        self.runs = 0
        self.collected = 0
        self.last_pause = 0.0

    def start(self) -> None:
        # Start-up objects (pycrate's ASN.1 tables, config, catalogs) live as long as the node:
        # out of the collector's generations, no pass ever walks them again.
        gc.collect()
        gc.freeze()
        if self.interval > 0:
            young, middle, _ = self._saved
            gc.set_threshold(young, middle, _NEVER)
            self._handle = self._loop.call_later(self.interval, self._run)

    def _run(self) -> None:
        self._handle = self._loop.call_later(self.interval, self._run)
        self.collect()

    def collect(self) -> int:
        start = time.perf_counter()
        found = gc.collect()
        self.last_pause = time.perf_counter() - start
        self.runs += 1
        self.collected += found
        log_event(log, "gc.full", logging.INFO if found or self.last_pause > 0.1 else logging.DEBUG,
                  pause_ms=round(self.last_pause * 1000, 1), unreachable=found)
        return found

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        gc.set_threshold(*self._saved)
        gc.unfreeze()
