"""Where the CPU goes with N SIP workers: ``python -m bench.workers --workers 1,2``.

A node (standalone, UDP) with 5,000 registered endpoints takes closed-loop refresh REGISTERs from
the generator (16 sockets, each endpoint always on the same one, as a device keeps its port); for
each worker count, per repeat: REGISTERs answered per second, each node process's CPU per
REGISTER (user + system, from /proc), the node's total, and how the kernel spread the requests
over the workers (``meter_sip_worker_requests_total``), and the RSS of the node's process tree idle
and with the endpoints registered. The generator runs on the same cores: on a
2-core box, N workers share them with it, which is what this measures.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.loadgen import LoadSpec, run_load
from bench.services import LOOPBACK, Services, _tree, free_port, rss_bytes

ENDPOINTS = 5000
REFRESHES = 20000


def _cpu(pid: int) -> float:
    from bench.services import _CLK_TCK

    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def _spread(admin_port: int) -> list[int]:
    text = urllib.request.urlopen(f"http://{LOOPBACK}:{admin_port}/metrics", timeout=5).read().decode()
    counts = [int(float(line.rsplit(" ", 1)[1])) for line in text.splitlines()
              if line.startswith("meter_sip_worker_requests_total")]
    return counts


def measure(workers: int, rundir: Path, endpoints: int, refreshes: int) -> dict:
    port, admin = free_port(), free_port()
    options = {"sip": {"workers": workers}, "limits": {"requests": 0, "registrations": 0}}
    with Services(rundir) as services:
        node = services.node(port, admin, options=options)
        time.sleep(1.5)
        idle = rss_bytes(node.pid)  # the node's process tree: every worker
        run_load(LoadSpec((LOOPBACK, port), endpoints=endpoints, sockets=16))
        time.sleep(1.5)  # the workers' counts reach the owner every second
        registered = rss_bytes(node.pid)
        pids = _tree(node.pid)
        before, spread_before = [_cpu(p) for p in pids], _spread(admin) if workers > 1 else []
        start = time.perf_counter()
        result = run_load(LoadSpec((LOOPBACK, port), endpoints=endpoints, requests=refreshes, sockets=16,
                                   cseq_base=2))
        wall = time.perf_counter() - start
        used = [_cpu(p) - b for p, b in zip(pids, before)]
        time.sleep(1.5)
        spread = [a - b for a, b in zip(_spread(admin), spread_before)] if workers > 1 else []
    answered = result.answered
    return {"rate": answered / wall, "per_process": [u / answered * 1e6 for u in used],
            "total": sum(used) / answered * 1e6, "spread": spread, "lost": refreshes - answered,
            "rss": (idle / 2**20, registered / 2**20)}


def frame_costs(n: int = 20000) -> list[tuple[str, int, float, float]]:
    """What one message between a worker and the owner costs to write and read: a REGISTER's whole
    binding set ("bindings", what every REGISTER sent at first) and a refresh's new expiries."""
    import pickle

    from meter.codecs.sip import parse_uri
    from meter.sip.hooks import BindingInfo
    from meter.sip.location import Binding, contact_key
    from meter.sip.peer import Peer
    from meter.workers.link import frame

    uri = parse_uri("sip:bench000123@127.0.0.1:5999;transport=udp")
    peer = Peer("udp", "127.0.0.1", 40001)
    b = Binding("sip:bench000123@bench.meter.test", uri, {}, 12345.6, "callid-abcdef-123456@127.0.0.1", 17,
                peer, "Cisco-CP8865/12.8.1 SIP", contact_key(uri))
    whole = ("bindings", b.aor, [b], (BindingInfo(b.contact, 3600, peer, b.user_agent),), b.user_agent, peer,
             1733300000.0, 0, None)
    refresh = ("refresh", b.aor, ((b.key, 12345.6, 17, b.call_id),), b.user_agent, peer, 1733300000.0, 0)
    out = []
    for name, message in (("whole binding set", whole), ("refresh", refresh)):
        start = time.perf_counter()
        for _ in range(n):
            data = frame(message)
        middle = time.perf_counter()
        for _ in range(n):
            pickle.loads(data[4:])
        out.append((name, len(data), (middle - start) / n * 1e6, (time.perf_counter() - middle) / n * 1e6))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", default="1,2")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--endpoints", type=int, default=ENDPOINTS)
    p.add_argument("--refreshes", type=int, default=REFRESHES)
    p.add_argument("--frames", action="store_true", help="only the cost of one link message, written and read")
    args = p.parse_args(argv)
    if args.frames:
        print("| message | bytes | write us | read us |")
        print("|---|---|---|---|")
        for name, size, write, read in frame_costs():
            print(f"| {name} | {size} | {write:.1f} | {read:.1f} |")
        return 0
    counts = [int(n) for n in args.workers.split(",")]
    print("| workers | REGISTER/s | node CPU us/REGISTER | per process (owner first) | requests per worker | lost "
          "| RSS idle / registered MiB |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="meter-bench-workers-") as tmp:
        for n in counts:
            runs = [measure(n, Path(tmp) / f"w{n}-{r}", args.endpoints, args.refreshes) for r in range(args.repeats)]
            best = sorted(runs, key=lambda r: r["total"])[len(runs) // 2]  # the median run by node CPU
            print(f"| {n} | {statistics.median(r['rate'] for r in runs):,.0f} | "
                  f"{statistics.median(r['total'] for r in runs):.0f} | "
                  f"{', '.join(f'{c:.0f}' for c in best['per_process'])} | "
                  f"{', '.join(map(str, best['spread'])) or 'all'} | {sum(r['lost'] for r in runs)} | "
                  f"{statistics.median(r['rss'][0] for r in runs):.1f} / {statistics.median(r['rss'][1] for r in runs):.1f} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
