"""What one scrape costs with many registrations held: ``python -m bench.scrape``.

A real SIP core with its metering (the ``bench.hotpath`` harness, standalone) registers N
endpoints (the device mix of ``bench/devices.py``, R9: one license per alias) and places a few
calls; then ``/metrics`` (``meter.admin.metrics.render``, every registered family source
included) and the body of ``/api/v1/licenses`` (``meter.admin.api.licenses_view``, what the
licenses and resource-usage pages read) are built again and again. The figure is the median wall
time of one build, in milliseconds: it must not grow with N (running totals, not a walk).

    python -m bench.scrape                          # 500, 5000, 50000 registrations
    python -m bench.scrape --registrations 500,50000 --repeats 200 --json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from types import SimpleNamespace

CALLS_UP = 20  # calls left standing (set up, not ended): meter_calls has something to count


async def _node(registrations: int):
    from bench import hotpath

    h = hotpath.Harness("standalone")
    for data in hotpath._registers(registrations, 1):
        h.feed(data, hotpath.ENDPOINTS)
    for n in range(min(CALLS_UP, registrations)):
        h.sent.clear()
        h.feed(hotpath._request("INVITE", n, 1, body=hotpath._SDP), hotpath.CALLER)
        invite = next(data for data, _ in h.sent if data.startswith(b"INVITE"))
        h.feed(hotpath._answer(invite, b"200 OK", body=hotpath._SDP), hotpath.ENDPOINTS)
    h.sent.clear()
    return SimpleNamespace(metering=h.metering, sip=SimpleNamespace(counters=h.core.counters, core=h.core),
                           ras=None, pool_sync=None, latency=None, latency_ras=None, collections=None)


def _median_ms(fn, repeats: int) -> tuple[float, float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3, min(times) * 1e3


def measure(registrations: int, repeats: int) -> dict:
    """Scrape and licenses-API build times (median, min ms) at ``registrations`` held."""
    import uvloop

    from meter.admin import metrics
    from meter.admin.api import licenses_view

    async def run():
        node = await _node(registrations)
        held = len(node.metering.registrations)
        scrape = _median_ms(lambda: metrics.render(node), repeats)
        licenses = _median_ms(lambda: licenses_view(node.metering), repeats)
        return {"registrations": held, "calls": len(node.metering.calls), "metrics_ms": scrape,
                "licenses_ms": licenses}

    return uvloop.run(run())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registrations", default="500,5000,50000", help="comma-separated counts")
    parser.add_argument("--repeats", type=int, default=100, help="builds timed per count (default 100)")
    parser.add_argument("--json", action="store_true", help="print one JSON list (for bench.run)")
    args = parser.parse_args(argv)
    out = []
    for n in (int(x) for x in args.registrations.split(",") if x):
        got = measure(n, args.repeats)
        got["load_average"] = os.getloadavg()[0]
        out.append(got)
        if not args.json:
            print(f"{got['registrations']:>6} registrations, {got['calls']} calls: /metrics "
                  f"{got['metrics_ms'][0]:.3f} ms (min {got['metrics_ms'][1]:.3f}), /api/v1/licenses "
                  f"{got['licenses_ms'][0]:.3f} ms (min {got['licenses_ms'][1]:.3f}); "
                  f"load average {got['load_average']:.1f}", flush=True)
    if args.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
