"""A real node's CPU per SIP message at fixed rates: ``python -m bench.node_cpu``.

``bench.hotpath`` feeds the SIP core datagrams back to back in one process; here a real node
(``meter run``, UDP on loopback, standalone) holds N registrations and takes refresh REGISTERs
from the load generator at fixed rates, one datagram per event-loop wake-up as in service. The
figure is the node's user and system CPU per answered message (``/proc/PID/stat``, 10 ms ticks),
beside the same load against a bare uvloop UDP responder that parses nothing (``--baseline``):
what one wake-up costs any Python process on this box.

    python -m bench.node_cpu                                   # 5000 registrations, 300,1000,2500/s
    python -m bench.node_cpu --registrations 50000 --rates 1000 --no-baseline
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

from bench.loadgen import LoadSpec, run_load
from bench.services import LOOPBACK, Services, free_port, rss_bytes

_TICK = os.sysconf("SC_CLK_TCK")


def _user_system(pid: int) -> tuple[float, float]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / _TICK, int(fields[12]) / _TICK


def _rates(pid: int, target, endpoints: int, rates, seconds: float, cseq_base: int) -> list[dict]:
    out = []
    for k, rate in enumerate(rates):
        time.sleep(0.5)
        u0, s0 = _user_system(pid)
        res = run_load(LoadSpec(target=target, endpoints=endpoints, window=200, sockets=4, rate=rate,
                                requests=int(rate * seconds), cseq_base=cseq_base + k * 1000, deadline=60))
        u1, s1 = _user_system(pid)
        ok = max(res.ok, 1)
        out.append({"rate": rate, "ok": res.ok, "lost": res.lost, "user_us": (u1 - u0) / ok * 1e6,
                     "system_us": (s1 - s0) / ok * 1e6, "p99_ms": res.percentile(99),
                     "load_average": os.getloadavg()[0]})
    return out


def measure_node(registrations: int, rates, seconds: float) -> tuple[list[dict], int]:
    with Services(Path(tempfile.mkdtemp(prefix="meter-node-cpu-"))) as services:
        port, admin = free_port(), free_port()
        node = services.node(port, admin, mode="standalone")
        target = (LOOPBACK, port)
        done = 0
        while done < registrations:  # a few thousand at a time, small window: set-up, not measured
            chunk = min(5000, registrations - done)
            run_load(LoadSpec(target=target, first=done, endpoints=chunk, window=50, sockets=4, deadline=120))
            done += chunk
        return _rates(node.pid, target, registrations, rates, seconds, cseq_base=10), rss_bytes(node.pid)


def measure_baseline(rates, seconds: float) -> list[dict]:
    with Services(Path(tempfile.mkdtemp(prefix="meter-node-cpu-echo-"))) as services:
        port = free_port()
        echo = services.start("echo", [sys.executable, "-m", "bench.node_cpu", "--echo", str(port)],
                              cwd=Path(__file__).resolve().parent.parent)
        time.sleep(1.0)
        return _rates(echo.pid, (LOOPBACK, port), 5000, rates, seconds, cseq_base=10)


class _Echo(asyncio.DatagramProtocol):
    """Answers 200 with the request's top Via: enough for the generator to match it."""

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        start = data.find(b"\nVia:") + 1
        end = data.find(b"\r\n", start)
        self.transport.sendto(b"SIP/2.0 200 OK\r\n" + data[start:end] + b"\r\nContent-Length: 0\r\n\r\n", addr)


async def _echo(port: int) -> None:
    await asyncio.get_running_loop().create_datagram_endpoint(_Echo, local_addr=(LOOPBACK, port))
    await asyncio.Event().wait()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registrations", type=int, default=5000)
    parser.add_argument("--rates", default="300,1000,2500", help="refresh REGISTERs per second, comma-separated")
    parser.add_argument("--seconds", type=float, default=5.0, help="per rate (default 5)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the bare uvloop responder")
    parser.add_argument("--echo", type=int, metavar="PORT", help=argparse.SUPPRESS)  # the baseline itself
    args = parser.parse_args(argv)
    if args.echo:
        import uvloop

        uvloop.run(_echo(args.echo))
        return 0
    rates = [int(x) for x in args.rates.split(",") if x]
    rows, rss = measure_node(args.registrations, rates, args.seconds)
    print(f"node, {args.registrations} registrations (RSS {rss / 2**20:.1f} MiB):")
    for r in rows:
        print(f"  {r['rate']:>5}/s: user {r['user_us']:.0f} us + system {r['system_us']:.0f} us per message, "
              f"{r['ok']} ok, {r['lost']} lost, p99 {r['p99_ms']:.2f} ms; load average {r['load_average']:.1f}")
    if not args.no_baseline:
        print("bare uvloop UDP responder (parses nothing):")
        for r in measure_baseline(rates, args.seconds):
            print(f"  {r['rate']:>5}/s: user {r['user_us']:.0f} us + system {r['system_us']:.0f} us per message; "
                  f"load average {r['load_average']:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
