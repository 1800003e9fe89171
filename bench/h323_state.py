"""How long the H.323 write-behind holds the event loop (meter.store.h323_state), and a start's restore.

    .venv/bin/python -m bench.h323_state

ENDPOINTS registrations and CALLS admitted calls (to a third-party SIP zone: one RMS each) on a real
Gatekeeper metered by RasMetering (the in-memory Net of tests.rasclient), written in one flush
(production writes at most ``[state] flush_batch`` keys at once), then restored into a new core and
ledger. Prints the median of RUNS, in milliseconds.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from meter.metering.h323 import RasMetering
from meter.store.h323_state import H323State, H323StateStore
from meter.store.state import StateSettings
from tests.rasclient import standalone_net
from tests.unit.test_h323_state import FAR, Timers
from tests.unit.test_metering import make_metering

ENDPOINTS, CALLS, RUNS = 1000, 500, 5


def main() -> None:
    flushes, restores = [], []
    for _ in range(RUNS):
        state_dir = Path(tempfile.mkdtemp())
        m, _, _ = make_metering(room=ENDPOINTS + 10, rms=2 * CALLS)
        net, gk = standalone_net(RasMetering(m))
        timers = Timers()
        state = H323State(H323StateStore(state_dir), StateSettings(flush_batch=10**9), gk, m, call_later=timers,
                          clock=lambda: net.now)
        state.attach()
        endpoints = [net.endpoint(10000 + i, [("h323-ID", f"r{i}")]) for i in range(ENDPOINTS)]
        for ep in endpoints:
            net.register(ep, ttl=600)
        for ep in endpoints[:CALLS]:
            net.admit(ep, [("h323-ID", "x")], dest_address=FAR)
        start = time.perf_counter()
        state.journal.flush()
        flushes.append(time.perf_counter() - start)
        state.store.close()
        m2, _, _ = make_metering(room=ENDPOINTS + 10, rms=2 * CALLS)
        net2, gk2 = standalone_net(RasMetering(m2))
        again = H323State(H323StateStore(state_dir), StateSettings(), gk2, m2, call_later=Timers(),
                          clock=lambda: net2.now)
        start = time.perf_counter()
        restored = again.restore()
        restores.append(time.perf_counter() - start)
        assert (restored.registrations, restored.calls) == (ENDPOINTS, CALLS), restored
    keys = ENDPOINTS + CALLS
    for what, times in (("flush", flushes), ("restore", restores)):
        median = statistics.median(times) * 1000
        print(f"{what} {ENDPOINTS} registrations + {CALLS} calls: median {median:.1f} ms "
              f"({median * 1000 / keys:.0f} us per key), runs {[round(t * 1000, 1) for t in times]}")


if __name__ == "__main__":
    main()
