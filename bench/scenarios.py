"""The benchmark scenarios of issue 6. Each returns a markdown block for BENCHMARKS.md.

Every measurement starts its own processes (fresh registrar, fresh node) in a private directory
and stops them before the next one, so repeats are independent. A path whose processes cannot
start (the node not built yet, say) is reported as such and the others still run.
"""

from __future__ import annotations

import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bench import calls as sipp_calls
from bench.loadgen import LoadResult, LoadSpec, run_load
from bench.report import stat, table
from bench.services import LOOPBACK, Proc, Services, cpu_seconds, free_port, node_config, rss_bytes

PATHS = {
    "a": "(a) node standalone",
    "b": "(b) node inline -> Kamailio registrar",
    "c": "(c) Kamailio stateless forwarder -> registrar",
    "d": "(d) Kamailio registrar direct",
}
NODE_PATHS = {"a", "b"}


@dataclass
class Plan:
    """Counts and durations; ``quick()`` is the smoke-run version."""

    repeats: int = 5
    call_repeats: int = 3
    paths: tuple[str, ...] = ("a", "b", "c", "d")
    sizes: tuple[int, ...] = (5000, 20000)
    window: int = 200
    procs: int = 1
    sockets: int = 4
    kamailio_children: int = 2
    open_rates: tuple[int, ...] = (1000, 3000)
    open_seconds: float = 5.0
    open_endpoints: int = 5000
    call_rates: tuple[int, ...] = (50, 100, 200, 400)
    call_concurrent: int = 500
    call_steady: float = 5.0
    call_registrations: int = 5000
    memory_stages: tuple[int, ...] = (500, 5000, 50000)
    memory_cost_rate: int = 1000
    memory_cost_seconds: float = 5.0
    memory_call_rate: int = 100
    ras_endpoints: int = 2000
    node_options: dict = field(default_factory=dict)
    workers: tuple[int, ...] = (1,)  # [sip] workers of the node for avalanche and open loop
    codecs: tuple[str, ...] = ("python", "compiled")  # SIP parsers the hot-path table compares
    hotpath_count: int = 5000
    scale_registrations: tuple[int, ...] = (500, 5000, 50000)  # per-message cost held flat?
    scale_count: int = 2000

    @classmethod
    def quick(cls) -> "Plan":
        return cls(repeats=1, call_repeats=1, sizes=(500, 2000), open_seconds=1.0, open_endpoints=500,
                   call_rates=(50, 200), call_concurrent=50, call_steady=3.0, call_registrations=500,
                   memory_stages=(100, 1000, 5000), memory_cost_seconds=1.0, memory_call_rate=50,
                   ras_endpoints=200, hotpath_count=1000, scale_registrations=(500, 5000), scale_count=500)

    @classmethod
    def standard(cls) -> "Plan":
        """``make bench``: every table issue 11 asks for, in about 15 minutes on 2 cores."""
        return cls(repeats=3, call_repeats=1, sizes=(10000,), open_seconds=3.0, call_rates=(100, 400),
                   memory_cost_seconds=3.0, ras_endpoints=1000, hotpath_count=3000)


@dataclass
class Context:
    plan: Plan
    workdir: Path
    log: callable = print
    unavailable: dict[str, str] = field(default_factory=dict)  # path -> why it could not start
    workers: int = 1  # the node's [sip] workers for what starts now (see per_workers)
    headlines: list[str] = field(default_factory=list)  # one-line results for the top of the section
    _workers_key: bool | None = None  # does this node's config know [sip] workers yet?
    _seq: int = 0

    def rundir(self, name: str) -> Path:
        self._seq += 1
        return self.workdir / f"{self._seq:03d}-{name}"


@dataclass
class Topology:
    target: tuple[str, int]
    node: Proc | None = None
    admin: tuple[str, int] | None = None
    services: Services | None = None


def workers_key_known(ctx: Context) -> bool:
    """Whether ``meter check-config`` takes ``[sip] workers`` (the key lands with meter/workers/)."""
    if ctx._workers_key is None:
        probe = ctx.workdir / "workers-probe"
        probe.mkdir(parents=True, exist_ok=True)
        path = probe / "meter.toml"
        path.write_text(node_config(probe, free_port(), free_port(), options={"sip": {"workers": 1}}))
        done = subprocess.run([sys.executable, "-m", "meter", "check-config", str(path)], cwd=probe,
                              capture_output=True, text=True, timeout=60)
        ctx._workers_key = done.returncode == 0
        if not ctx._workers_key:
            ctx.log("  [sip] workers: this node does not know the key yet; 1 worker = the node as it is")
    return ctx._workers_key


def node_options(ctx: Context) -> dict:
    """The plan's node options plus ``[sip] workers = N`` (UDP only when N > 1: TCP off)."""
    options = {name: (dict(values) if isinstance(values, dict) else values)
               for name, values in ctx.plan.node_options.items()}
    n = ctx.workers
    if n > 1 or workers_key_known(ctx):
        sip = options.setdefault("sip", {})
        sip["workers"] = n
        if n > 1:
            sip["tcp"] = False
    return options


def _start(ctx: Context, services: Services, path: str) -> Topology:
    plan = ctx.plan
    kids = plan.kamailio_children
    if path == "a":
        port, admin = free_port(), free_port()
        node = services.node(port, admin, mode="standalone", options=node_options(ctx))
        return Topology((LOOPBACK, port), node, (LOOPBACK, admin))
    registrar = free_port()
    services.kamailio("registrar", registrar, children=kids)
    if path == "d":
        return Topology((LOOPBACK, registrar))
    if path == "c":
        port = free_port()
        services.kamailio("forwarder", port, children=kids,
                          defines={"REGISTRAR": f'"sip:{LOOPBACK}:{registrar}"'})
        return Topology((LOOPBACK, port))
    if path == "b":
        port, admin = free_port(), free_port()
        node = services.node(port, admin, mode="inline", upstream=f"{LOOPBACK}:{registrar}",
                             options=node_options(ctx))
        return Topology((LOOPBACK, port), node, (LOOPBACK, admin))
    raise ValueError(f"unknown path {path!r}")


@contextmanager
def topology(ctx: Context, path: str, name: str):
    """Start ``path``'s processes in a fresh directory; yields a Topology, or None if it cannot start."""
    if path in ctx.unavailable:
        yield None
        return
    with Services(ctx.rundir(f"{name}-{path}")) as services:
        try:
            topo = _start(ctx, services, path)
        except RuntimeError as exc:
            reason = str(exc).strip().splitlines()
            ctx.unavailable[path] = " / ".join(line.strip() for line in reason[-3:])[:400]
            ctx.log(f"  {PATHS[path]}: cannot start: {ctx.unavailable[path]}")
            yield None
            return
        topo.services = services
        yield topo


def _spec(ctx: Context, target, **kw) -> LoadSpec:
    return LoadSpec(target=target, window=ctx.plan.window, sockets=ctx.plan.sockets, **kw)


def _load(ctx: Context, spec: LoadSpec) -> LoadResult:
    return run_load(spec, procs=ctx.plan.procs)


def _unavailable_rows(ctx: Context, paths, width: int) -> list[list[str]]:
    return [[PATHS[p], f"not measured: {ctx.unavailable[p]}"] + [""] * (width - 2)
            for p in paths if p in ctx.unavailable]


def _ratio(num: list[float], den: list[float]) -> list[float]:
    return [a / b for a, b in zip(num, den) if b]


# ---- generator ceiling ----------------------------------------------------------------------------


def ceiling(ctx: Context) -> str:
    """What the load generator itself can do: Kamailio answering 200 statelessly, nothing kept."""
    plan = ctx.plan
    size = max(plan.sizes)
    thr, p50, p99, ol50, ol99 = [], [], [], [], []
    for rep in range(plan.repeats):
        with Services(ctx.rundir("ceiling")) as services:
            port = free_port()
            services.kamailio("responder", port, children=plan.kamailio_children)
            res = _load(ctx, _spec(ctx, (LOOPBACK, port), endpoints=size))
            ctx.log(f"[ceiling] rep {rep + 1}/{plan.repeats} closed loop: {res.summary()}")
            thr.append(res.throughput)
            p50.append(res.percentile(50))
            p99.append(res.percentile(99))
            rate = max(plan.open_rates)
            res = _load(ctx, _spec(ctx, (LOOPBACK, port), endpoints=size,
                                   requests=int(rate * plan.open_seconds), rate=rate))
            ctx.log(f"[ceiling] rep {rep + 1}/{plan.repeats} open loop {rate}/s: {res.summary()}")
            ol50.append(res.percentile(50))
            ol99.append(res.percentile(99))
    return (
        f"### Load generator ceiling\n\n"
        f"Kamailio `bench/kamailio/responder.cfg` answers every REGISTER 200 at once (no state). "
        f"{size} requests, window {plan.window}, {plan.procs} generator process(es) x {plan.sockets} "
        f"sockets; {plan.repeats} repeat(s). Anything measured below this is the target's limit, not the "
        f"generator's.\n\n"
        + table(["load", "answers/s", "latency p50 ms", "latency p99 ms"], [
            [f"closed loop, window {plan.window}", stat(thr), stat(p50, "{:.2f}"), stat(p99, "{:.2f}")],
            [f"open loop {max(plan.open_rates)}/s", "-", stat(ol50, "{:.3f}"), stat(ol99, "{:.3f}")],
        ])
    )


# ---- registration avalanche -----------------------------------------------------------------------


def avalanche(ctx: Context) -> str:
    plan = ctx.plan
    out = [
        "### Registration avalanche\n\n"
        f"N distinct endpoints (device mix of `bench/devices.py`: 73% room, 27% desktop User-Agents) "
        f"REGISTER once each, at most {plan.window} outstanding; a fresh registrar/node per run; "
        f"{plan.repeats} repeat(s), paths interleaved. Throughput = 200 OKs per second from the first "
        f"send to the last answer. Latency here is under saturation (queueing in the window), see "
        f"the open-loop table for added latency at a fixed load.\n"
    ]
    for size in plan.sizes:
        results: dict[str, list[LoadResult]] = {p: [] for p in plan.paths}
        for rep in range(plan.repeats):
            for path in plan.paths:
                with topology(ctx, path, f"avalanche{size}") as topo:
                    if topo is None:
                        continue
                    res = _load(ctx, _spec(ctx, topo.target, endpoints=size, deadline=max(60.0, size / 100)))
                    ctx.log(f"[avalanche {size}] rep {rep + 1}/{plan.repeats} {PATHS[path]}: {res.summary()}")
                    results[path].append(res)
        rows = []
        for path in plan.paths:
            rs = results[path]
            if not rs:
                continue
            failed = sum(sum(r.failed.values()) for r in rs)
            codes = sorted({c for r in rs for c in r.failed})
            rows.append([
                PATHS[path], stat([r.throughput for r in rs]), stat([r.percentile(50) for r in rs], "{:.2f}"),
                stat([r.percentile(99) for r in rs], "{:.2f}"), stat([r.lost for r in rs]),
                f"{failed}" + (f" ({', '.join(map(str, codes))})" if codes else ""),
            ])
        rows += _unavailable_rows(ctx, plan.paths, 6)
        out.append(f"\n**{size} endpoints**\n\n" + table(
            ["path", "REGISTER/s", "latency p50 ms", "latency p99 ms", "lost", "non-2xx (all repeats)"], rows))
        thr = {p: [r.throughput for r in results[p]] for p in plan.paths}
        ratios = []
        if thr.get("b") and thr.get("c"):
            bc = stat(_ratio(thr['b'], thr['c']), '{:.2f}')
            ratios.append(f"**(b)/(c) = {bc}** (target >= 1.0)")
            ctx.headlines.append(f"(b)/(c) REGISTER throughput, avalanche {size}, {_workers_text(ctx.workers)}: "
                                 f"**{bc}** ({stat(thr['b'])} vs {stat(thr['c'])} REGISTER/s)")
        if thr.get("a") and thr.get("d"):
            ratios.append(f"(a)/(d) = {stat(_ratio(thr['a'], thr['d']), '{:.2f}')}")
        if thr.get("c") and thr.get("d"):
            ratios.append(f"(c)/(d) = {stat(_ratio(thr['c'], thr['d']), '{:.2f}')}")
        if ratios:
            out.append("\nThroughput ratios, per repeat: " + "; ".join(ratios) + ".\n")
        else:
            out.append("\nHeadline ratio (b)/(c): n/a, a path was not measured.\n")
    return "".join(out)


# ---- 1 and N workers ------------------------------------------------------------------------------


def _workers_text(n: int) -> str:
    return "1 worker" if n == 1 else f"{n} workers"


TITLES = {"avalanche": "Registration avalanche", "openloop": "Open-loop latency", "calls": "Calls (SIPp)"}


def per_workers(scenario):
    """Run ``scenario`` once per ``plan.workers`` count, each block titled with its count. A node
    that cannot start with N workers is reported for N only; Kamailio's paths are measured again
    each time, so (b)/(c) and the added latency compare figures taken in the same repeats."""
    def run(ctx: Context) -> str:
        blocks, found = [], dict(ctx.unavailable)
        for n in ctx.plan.workers:
            if n > 1 and not workers_key_known(ctx):  # spare the peers' runs: the node would not start
                blocks.append(f"### {TITLES.get(scenario.__name__, scenario.__name__)}, {_workers_text(n)}\n\n"
                              f"not measured: this node does not know `[sip] workers` yet (meter/workers/).\n")
                continue
            ctx.workers = n
            ctx.unavailable = {p: why for p, why in found.items() if p not in NODE_PATHS}
            block = scenario(ctx)
            title, _, rest = block.partition("\n")
            note = f"`[sip] workers = {n}`" + (", `tcp = false`" if n > 1 else "")
            if n == 1 and not workers_key_known(ctx):
                note = "`[sip] workers` not set: this node does not know the key yet"
            blocks.append(f"{title}, {_workers_text(n)} ({note})\n{rest}")
            if n == ctx.plan.workers[0]:
                found.update(ctx.unavailable)
        ctx.workers, ctx.unavailable = 1, found
        return "\n".join(blocks)
    run.__doc__ = scenario.__doc__
    return run


# ---- open-loop latency ----------------------------------------------------------------------------


def openloop(ctx: Context) -> str:
    plan = ctx.plan
    n = plan.open_endpoints
    got: dict[tuple[str, int], list[LoadResult]] = {}
    for rep in range(plan.repeats):
        for path in plan.paths:
            with topology(ctx, path, "openloop") as topo:
                if topo is None:
                    continue
                pre = _register(ctx, topo, n)
                if pre.ok < n:
                    ctx.log(f"[open loop] {PATHS[path]}: only {pre.ok}/{n} registered before the run")
                for k, rate in enumerate(plan.open_rates):
                    res = _load(ctx, _spec(ctx, topo.target, endpoints=n, rate=rate,
                                           requests=int(rate * plan.open_seconds), cseq_base=10 + k * 1000))
                    ctx.log(f"[open loop {rate}/s] rep {rep + 1}/{plan.repeats} {PATHS[path]}: {res.summary()}")
                    got.setdefault((path, rate), []).append(res)
                    time.sleep(0.2)
    out = [
        "### Open-loop latency\n\n"
        f"{n} endpoints registered first; then refresh REGISTERs leave on a fixed schedule "
        f"({plan.open_seconds:g} s per rate, whatever the answers do). Added = path minus (d) in the same "
        f"repeat. {plan.repeats} repeat(s). Target: added p99 <= 2 ms at 3000/s.\n"
    ]
    for rate in plan.open_rates:
        rows = []
        base = got.get(("d", rate), [])
        for path in plan.paths:
            rs = got.get((path, rate), [])
            if not rs:
                continue
            add50 = [r.percentile(50) - b.percentile(50) for r, b in zip(rs, base)] if path != "d" else []
            add99 = [r.percentile(99) - b.percentile(99) for r, b in zip(rs, base)] if path != "d" else []
            rows.append([
                PATHS[path], stat([r.throughput for r in rs]), stat([r.percentile(50) for r in rs], "{:.3f}"),
                stat([r.percentile(99) for r in rs], "{:.3f}"),
                stat(add50, "{:+.3f}") if path != "d" else "-", stat(add99, "{:+.3f}") if path != "d" else "-",
                stat([r.lost for r in rs]),
            ])
        rows += _unavailable_rows(ctx, plan.paths, 7)
        b, d = got.get(("b", rate), []), got.get(("d", rate), [])
        if b and d:
            added = stat([r.percentile(99) - x.percentile(99) for r, x in zip(b, d)], "{:+.3f}")
            ctx.headlines.append(f"added p99 inline (b) at {rate} REGISTER/s, {_workers_text(ctx.workers)}: "
                                 f"**{added} ms** (lost {stat([r.lost for r in b])})")
        out.append(f"\n**{rate} REGISTER/s**\n\n" + table(
            ["path", "answered/s", "p50 ms", "p99 ms", "added p50 ms", "added p99 ms", "lost"], rows))
    return "".join(out)


# ---- calls ----------------------------------------------------------------------------------------


def _register(ctx: Context, topo: Topology, count: int, *, first: int = 0, contact: str = "127.0.0.1:5999",
              cseq_base: int = 1, passes: int = 3) -> LoadResult:
    """Set-up, not a measurement: register ``count`` endpoints, re-sending the whole set (a refresh
    for those already bound) until every one got a 2xx, at most ``passes`` times, with a small window."""
    res = None
    for k in range(passes):
        res = _load(ctx, LoadSpec(target=topo.target, first=first, endpoints=count, contact=contact,
                                  window=min(ctx.plan.window, 50), sockets=ctx.plan.sockets,
                                  cseq_base=cseq_base + k, deadline=max(60.0, count / 100)))
        if res.ok == count:
            break
        ctx.log(f"  set-up pass {k + 1}: {res.summary()}")
    return res


def _register_for_calls(ctx: Context, topo: Topology, uas_port: int, count: int) -> LoadResult:
    res = _register(ctx, topo, count, contact=f"{LOOPBACK}:{uas_port}")
    ctx.log(f"  registered callees: {res.summary()}")
    return res


def _rms_cell(step: sipp_calls.CallStep, path: str) -> str:
    if path not in NODE_PATHS:
        return "-"
    if step.gauge is None:
        return "n/a: metering not landed"
    rms = sipp_calls.rms_of(step.gauge)
    if rms is None:
        series = ", ".join(f"{k or '{}'}={v:g}" for k, v in step.gauge.items())
        return f"no RMS series ({series[:120]}); expected {step.expected_rms}"
    after = sipp_calls.rms_of(step.gauge_after)
    text = f"{rms:g} vs {step.expected_rms}, after: {'n/a' if after is None else f'{after:g}'}"
    if step.settled_after_s:
        text += f" (at {step.settled_after_s:.0f} s; not 0 at 1 s)"
    return text


def _kinds(steps: list[sipp_calls.CallStep]) -> str:
    """How the failed calls failed, summed over repeats (SIPp's counter names)."""
    total: dict[str, int] = {}
    for step in steps:
        for kind, count in step.failure_kinds.items():
            total[kind] = total.get(kind, 0) + count
    return " (" + ", ".join(f"{k} {v}" for k, v in sorted(total.items())) + ")" if total else ""


def calls(ctx: Context) -> str:
    plan = ctx.plan
    paths = [p for p in plan.paths if p in ("a", "b", "c")]
    got: dict[tuple[str, int], list[sipp_calls.CallStep]] = {}
    for rep in range(plan.call_repeats):
        for path in paths:
            with topology(ctx, path, "calls") as topo:
                if topo is None:
                    continue
                services = topo.services
                workdir = services.rundir
                uas_port = free_port()
                sipp_calls.start_uas(services, uas_port, workdir / "uas")
                _register_for_calls(ctx, topo, uas_port, plan.call_registrations)
                for rate in plan.call_rates:
                    step = sipp_calls.run_step(
                        services, topo.target, workdir / f"uac-{rate}", rate=rate, concurrent=plan.call_concurrent,
                        steady=plan.call_steady, callees=plan.call_registrations, admin=topo.admin, node=topo.node,
                        socket_per_call=ctx.workers > 1)
                    ctx.log(f"[calls {rate} CPS] rep {rep + 1}/{plan.call_repeats} {PATHS[path]}: "
                            f"{step.successful}/{step.planned} ok, {step.failed} failed"
                            f"{' ' + str(step.failure_kinds) if step.failure_kinds else ''}, "
                            f"peak {step.peak_concurrent}, "
                            f"setup p50 {step.percentile(50):.0f} ms p99 {step.percentile(99):.0f} ms, "
                            f"RMS {_rms_cell(step, path)}")
                    got.setdefault((path, rate), []).append(step)
                    time.sleep(1.0)
    out = [
        "### Calls (SIPp)\n\n"
        f"SIPp UAC -> path -> SIPp UAS (`bench/sipp/`): video INVITEs (audio + H.264 SDP) to {plan.call_registrations} "
        f"registered aliases (their Contacts point at the UAS), each held {plan.call_concurrent}/CPS seconds so "
        f"{plan.call_concurrent} calls stand at once (SIPp -l caps it), {plan.call_steady:g} s at full concurrency per "
        f"step. For (c) the callees register through the forwarder, so calls go UAC -> forwarder -> registrar -> "
        f"UAS, the same hops as (b). Setup = INVITE sent -> 200 OK received, from microsecond timestamps the "
        f"UAC scenario logs. "
        f"RMS: `meter_licenses_in_use{{license=\"rms\"}}` scraped from the node's /metrics mid-step vs SIPp's "
        f"standing calls at that moment (its statistics lag up to 1 s; the callers are a third-party SIP zone, "
        f"so rules C2/C4 give one RMS per video call), and once the step's calls have all ended (must be 0). "
        f"{plan.call_repeats} repeat(s). Target: 500 concurrent at 400 CPS with zero failed calls.\n\n"
    ]
    rows = []
    for path in paths:
        for rate in plan.call_rates:
            steps = got.get((path, rate), [])
            if not steps:
                continue
            rows.append([
                PATHS[path], str(rate), stat([s.successful for s in steps]) + f" / {steps[0].planned}",
                stat([s.failed for s in steps]) + _kinds(steps), stat([s.peak_concurrent for s in steps]),
                stat([s.percentile(50) for s in steps], "{:.0f}"), stat([s.percentile(99) for s in steps], "{:.0f}"),
                "; ".join(_rms_cell(s, path) for s in steps),
            ])
    rows += _unavailable_rows(ctx, paths, 8)
    out.append(table(["path", "CPS", "calls ok / planned", "failed", "peak standing", "setup p50 ms",
                      "setup p99 ms", "RMS gauge vs expected (per repeat)"], rows))
    ratio = []
    for rate in plan.call_rates:
        b, c = got.get(("b", rate), []), got.get(("c", rate), [])
        if b and c:
            ratio.append(f"{rate} CPS: {stat(_ratio([s.percentile(99) for s in b], [s.percentile(99) for s in c]), '{:.2f}')}")
    if ratio:
        out.append("\nSetup latency p99 ratio (b)/(c), per repeat: "
                   + "; ".join(ratio) + ".\n")
    return "".join(out)


# ---- memory and growth ----------------------------------------------------------------------------


def _cost(ctx: Context, topo: Topology, endpoints: int, cseq_base: int) -> tuple[float, float, LoadResult]:
    """Node CPU per refresh REGISTER at a fixed rate over ``endpoints`` standing registrations.

    Returns (idle CPU fraction, CPU microseconds per answered message net of that idle work, result).
    """
    plan = ctx.plan
    pid = topo.node.pid
    t0, c0 = time.monotonic(), cpu_seconds(pid)
    time.sleep(1.0)
    idle = (cpu_seconds(pid) - c0) / (time.monotonic() - t0)
    count = int(plan.memory_cost_rate * plan.memory_cost_seconds)
    t0, c0 = time.monotonic(), cpu_seconds(pid)
    res = _load(ctx, _spec(ctx, topo.target, endpoints=endpoints, rate=plan.memory_cost_rate, requests=count,
                           cseq_base=cseq_base))
    used = cpu_seconds(pid) - c0 - idle * (time.monotonic() - t0)
    return idle, used / max(res.ok, 1) * 1e6, res


def memory(ctx: Context) -> str:
    plan = ctx.plan
    if "a" in ctx.unavailable:
        return f"### Memory and growth\n\nnot measured: the node could not start ({ctx.unavailable['a']}).\n"
    stages = plan.memory_stages
    idle, rss = [], {s: [] for s in stages}
    cost = {s: [] for s in stages}
    idle_cpu = {s: [] for s in stages}
    lat = {s: [] for s in stages}
    per_reg, per_call, with_calls, before_calls = [], [], [], []
    for rep in range(plan.repeats):
        with topology(ctx, "a", "memory") as topo:
            if topo is None:
                break
            time.sleep(1.0)
            idle.append(rss_bytes(topo.node.pid))
            standing = 0
            for k, stage in enumerate(stages):
                res = _register(ctx, topo, stage - standing, first=standing)
                standing = stage
                time.sleep(0.5)
                rss[stage].append(rss_bytes(topo.node.pid))
                idle_frac, us, cres = _cost(ctx, topo, stage, cseq_base=10 + k * 1000)
                cost[stage].append(us)
                idle_cpu[stage].append(idle_frac * 100)
                lat[stage].append(cres)
                ctx.log(f"[memory] rep {rep + 1}/{plan.repeats} {stage} registered ({res.ok} new ok): "
                        f"RSS {rss[stage][-1] / 2**20:.1f} MiB, idle CPU {idle_frac:.1%}, {us:.0f} us CPU/message, "
                        f"{cres.summary()}")
            lo, hi = stages[1], stages[-1]
            if len(stages) > 2 and rss[hi] and rss[lo]:
                per_reg.append((rss[hi][-1] - rss[lo][-1]) / (hi - lo))
        with topology(ctx, "a", "memory-calls") as topo:
            if topo is None:
                break
            services = topo.services
            uas_port = free_port()
            sipp_calls.start_uas(services, uas_port, services.rundir / "uas")
            regs = plan.call_registrations
            _register_for_calls(ctx, topo, uas_port, regs)
            time.sleep(0.5)
            base = rss_bytes(topo.node.pid)
            step = sipp_calls.run_step(services, topo.target, services.rundir / "uac", rate=plan.memory_call_rate,
                                       concurrent=plan.call_concurrent, steady=plan.call_steady, callees=regs,
                                       admin=topo.admin, node=topo.node)
            before_calls.append(base)
            if step.rss_mid:
                with_calls.append(step.rss_mid)
                if step.expected_rms:
                    per_call.append((step.rss_mid - base) / step.expected_rms)
            ctx.log(f"[memory] rep {rep + 1}/{plan.repeats} {regs} registrations: RSS {base / 2**20:.1f} MiB; "
                    f"with {step.expected_rms} calls standing: "
                    f"{(step.rss_mid or 0) / 2**20:.1f} MiB ({step.failed} failed calls)")
    mib = "{:.1f}"
    if with_calls:
        ctx.headlines.append(f"RSS at {plan.call_registrations} registrations + {plan.call_concurrent} calls: "
                             f"**{stat([v / 2**20 for v in with_calls], mib)} MiB** (target <= 150 MB = 143 MiB)")
    if rss[stages[-1]]:
        ctx.headlines.append(f"RSS at {stages[-1]:,} registrations: {stat([v / 2**20 for v in rss[stages[-1]]], mib)} MiB; "
                             f"CPU per refresh REGISTER {' / '.join(stat(cost[s], '{:.0f}') for s in stages)} us "
                             f"at {' / '.join(f'{s:,}' for s in stages)} registrations")
    rows = [["idle", stat([v / 2**20 for v in idle], mib), "-", "-", "-", "-", "-"]]
    for s in stages:
        rows.append([f"{s} registrations", stat([v / 2**20 for v in rss[s]], mib), stat(idle_cpu[s], "{:.1f}"),
                     stat(cost[s], "{:.0f}"), stat([r.percentile(50) for r in lat[s]], "{:.3f}"),
                     stat([r.percentile(99) for r in lat[s]], "{:.3f}"), stat([r.lost for r in lat[s]])])
    rows.append([f"{plan.call_registrations} registrations, before calls", stat([v / 2**20 for v in before_calls], mib),
                 "-", "-", "-", "-", "-"])
    rows.append([f"{plan.call_registrations} registrations + {plan.call_concurrent} calls",
                 stat([v / 2**20 for v in with_calls], mib), "-", "-", "-", "-", "-"])
    return (
        "### Memory and growth (node standalone)\n\n"
        f"RSS of the node's process tree. At each stage the node holds that many registrations, then "
        f"idles 1 s (idle CPU: its timers and housekeeping), then takes {plan.memory_cost_rate}/s refresh "
        f"REGISTERs for {plan.memory_cost_seconds:g} s: CPU = node user+system time per answered message, "
        f"net of the idle rate (10 ms clock ticks), latency from the generator. Calls: "
        f"a second node, {plan.call_registrations} registrations, {plan.call_concurrent} calls standing at "
        f"{plan.memory_call_rate} CPS, RSS sampled mid-step. {plan.repeats} repeat(s). Targets: RSS <= 150 MB at "
        f"5000 registrations + 500 calls; per-message cost flat from 500 to 50000.\n\n"
        + table(["state", "RSS MiB", "idle CPU %", "CPU us/message", "p50 ms", "p99 ms", "lost"], rows)
        + f"\nPer registration: {stat(per_reg, '{:,.0f}', ' B')} ({stages[1]} -> {stages[-1]}). "
        f"Per call: {stat(per_call, '{:,.0f}', ' B')} (RSS with calls minus before, over standing calls).\n"
    )


# ---- scrape ----------------------------------------------------------------------------------------


def scrape(ctx: Context) -> str:
    """/metrics and /api/v1/licenses build time at 500 to 50,000 registrations (``bench/scrape.py``)."""
    import json

    counts = ",".join(str(n) for n in ctx.plan.scale_registrations)
    argv = [sys.executable, "-m", "bench.scrape", "--json", "--registrations", counts, "--repeats", "100"]
    ctx.log("[scrape] " + " ".join(argv[1:]))
    done = subprocess.run(argv, capture_output=True, text=True, timeout=1800,
                          cwd=Path(__file__).resolve().parent.parent)
    if done.returncode != 0:
        return f"### Scrape cost\n\nnot measured: {done.stderr.strip()[-400:]}\n"
    got = json.loads(done.stdout.strip().splitlines()[-1])
    rows = [[f"{g['registrations']:,}", f"{g['metrics_ms'][0]:.3f} (min {g['metrics_ms'][1]:.3f})",
             f"{g['licenses_ms'][0]:.3f} (min {g['licenses_ms'][1]:.3f})", f"{g['load_average']:.1f}"] for g in got]
    return (
        "### Scrape cost\n\n"
        f"`python -m bench.scrape --registrations {counts} --repeats 100`: a node (hot-path harness, "
        "standalone) holding N registrations and 20 calls builds `/metrics` (every family source) and the "
        "`/api/v1/licenses` body 100 times; median (min) ms of one build. Running totals "
        "(meter/metering/tallies.py): flat in N.\n\n"
        + table(["registrations", "/metrics ms", "/api/v1/licenses ms", "load average"], rows)
    )


# ---- RAS ------------------------------------------------------------------------------------------


def ras(ctx: Context) -> str:
    """RRQ->RCF, ARQ->ACF and DRQ->DCF per second against the node's gatekeeper (standalone)."""
    from bench import rasload

    root = Path(__file__).resolve().parent.parent
    if not ((root / "meter" / "h323" / "gatekeeper.py").exists() and (root / "codecs" / "ras.py").exists()):
        return ("### RAS (H.323)\n\nTODO: not measured: needs codecs/ras.py and the gatekeeper "
                "(meter/h323/gatekeeper.py).\n")
    if "a" in ctx.unavailable:
        return f"### RAS (H.323)\n\nnot measured: the node could not start ({ctx.unavailable['a']}).\n"
    plan = ctx.plan
    n = min(plan.ras_endpoints, rasload.MAX_REQUESTS)
    got: dict[str, list[LoadResult]] = {"RRQ": [], "ARQ": [], "DRQ": []}
    for rep in range(plan.repeats):
        with Services(ctx.rundir("ras")) as services:
            port, admin, ras_port = free_port(), free_port(), free_port()
            try:
                services.node(port, admin, options=plan.node_options, ras_port=ras_port)
            except RuntimeError as exc:
                return f"### RAS (H.323)\n\nnot measured: the node could not start ({exc}).\n"
            time.sleep(0.5)  # the RAS socket opens after SIP's, which the start-up probe waited for
            target = (LOOPBACK, ras_port)

            def spec(count: int) -> LoadSpec:
                # One socket: an endpoint's ARQ and DRQ come from the RAS address it registered.
                return LoadSpec(target=target, endpoints=count, window=plan.window, sockets=1, timeout=3.0,
                                deadline=max(60.0, count / 50))

            rrq = run_load(spec(n), builder=rasload.rrq_builder(n), classify=rasload.classify, keep=True)
            ids = rasload.endpoint_ids(rrq.responses or [])
            registered = [(i, eid) for i, eid in enumerate(ids) if eid]
            ctx.log(f"[ras] rep {rep + 1}/{plan.repeats} RRQ: {rrq.summary()}")
            got["RRQ"].append(rrq)
            if not registered:
                continue
            calls = min(n, rasload.MAX_REQUESTS)
            arq = run_load(spec(calls), builder=rasload.arq_builder(registered, salt=rep * 4 + 1),
                           classify=rasload.classify)
            ctx.log(f"[ras] rep {rep + 1}/{plan.repeats} ARQ: {arq.summary()}")
            got["ARQ"].append(arq)
            drq = run_load(spec(calls), builder=rasload.drq_builder(registered, salt=rep * 4 + 1),
                           classify=rasload.classify)
            ctx.log(f"[ras] rep {rep + 1}/{plan.repeats} DRQ: {drq.summary()}")
            got["DRQ"].append(drq)
    rows = []
    names = {"RRQ": "RRQ -> RCF", "ARQ": "ARQ -> ACF", "DRQ": "DRQ -> DCF"}
    for kind, rs in got.items():
        if not rs:
            continue
        rejected = sum(sum(r.failed.values()) for r in rs)
        rows.append([names[kind], stat([r.throughput for r in rs]), stat([r.percentile(50) for r in rs], "{:.2f}"),
                     stat([r.percentile(99) for r in rs], "{:.2f}"), stat([r.lost for r in rs]), str(rejected)])
    return (
        "### RAS (H.323, node standalone gatekeeper)\n\n"
        f"{n} endpoints send an RRQ each (an h323-ID and an E.164 alias, vendor = a device model of the "
        f"mix), then {n} ARQs between registered endpoints, then the {n} DRQs ending those calls; at most "
        f"{plan.window} outstanding, one socket, no retries (lost after 3 s). Answers are matched by "
        f"requestSeqNum without decoding; RCFs are decoded after the RRQ phase for their endpointIdentifier. "
        f"A fresh node per repeat; {plan.repeats} repeat(s). No Kamailio peer: Kamailio has no H.323.\n\n"
        + table(["exchange", "per second", "latency p50 ms", "latency p99 ms", "lost", "rejected (all repeats)"], rows)
    )


HOTPATH_FLOWS = {
    "register": "new REGISTER, node standalone (registrar + room/desktop charge)",
    "refresh": "refresh REGISTER (same Call-ID, CSeq + 1), standalone",
    "inline": "inline REGISTER: request forwarded + upstream 200 OK relayed (per message)",
    "call": "call via the node: INVITE, 180, 200, ACK, BYE, 200 (per message)",
}


def _hotpath_run(ctx: Context, *args: str) -> dict[str, list[float]] | str:
    """One ``bench.hotpath --json`` process: {flow: [us per message, ...]}, or why it failed."""
    import json

    argv = [sys.executable, "-m", "bench.hotpath", "--json", *args]
    ctx.log("[hotpath] " + " ".join(argv[1:]))
    done = subprocess.run(argv, capture_output=True, text=True, timeout=1800,
                          cwd=Path(__file__).resolve().parent.parent)
    if done.returncode != 0:
        return done.stderr.strip()[-400:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _load_average() -> str:
    import os

    return "load average " + ", ".join(f"{x:.1f}" for x in os.getloadavg())


def hotpath(ctx: Context) -> str:
    """The node's own CPU per SIP message, no sockets and no peers (``bench/hotpath.py``): per
    codec, then with 500 to 50,000 other registrations held (it must stay flat)."""
    plan = ctx.plan
    count, repeats = plan.hotpath_count, max(plan.repeats, 3)
    rows, loads = [], []
    for codec in plan.codecs:
        got = _hotpath_run(ctx, "--codec", codec, "--count", str(count), "--repeats", str(repeats))
        loads.append(f"{codec}: {_load_average()}")
        if isinstance(got, str):
            rows.append([f"({codec})", f"not measured: {got}", ""])
            continue
        for flow, us in got.items():
            rows.append([f"{HOTPATH_FLOWS[flow]} ({codec})", stat(us, "{:.1f}"), stat([1e6 / u for u in us])])
            if flow == "inline":
                ctx.headlines.append(f"node CPU per SIP message, inline REGISTER flow ({codec} codec): "
                                     f"**{stat(us, '{:.1f}')} us** (target <= 40, then <= 20)")
    rows.sort(key=lambda row: row[0])
    out = [
        "### Hot path (CPU per message, no sockets)\n\n"
        f"`python -m bench.hotpath --codec CODEC --count {count} --repeats {repeats}`: the real SIP core, metering "
        f"policy and latency wrapper in one process, fed pre-built datagrams as the UDP endpoint would; what "
        f"the node sends is kept in a list; the garbage collector under the node's policy (meter.gc_timer: no "
        f"automatic full passes). Process CPU time per message, {count} endpoints per run, a fresh node per "
        f"run, {repeats} runs. `python` is the pure-Python reference codec, `compiled` the C scanner "
        f"(codecs/_sipscan.c). The load scenarios share 2 cores between generator, node and peers; this is "
        f"the node's cost alone, and \"messages/s per core\" is the ceiling it sets. ({'; '.join(loads)})\n\n"
        + table(["flow (codec)", "us per message", "messages/s per core"], rows)
    ]
    scale_rows = []
    flows = ("register", "refresh", "inline", "call")
    for held in plan.scale_registrations:
        got = _hotpath_run(ctx, "--count", str(plan.scale_count), "--repeats", "3", "--registrations", str(held))
        load = _load_average()
        if isinstance(got, str):
            scale_rows.append([f"{held:,}", f"not measured: {got}"] + [""] * len(flows))
            continue
        scale_rows.append([f"{held:,}"] + [stat(got.get(f, []), "{:.1f}") for f in flows] + [load])
    out.append(
        "\n**Per-message cost with registrations held** (`python -m bench.hotpath --count "
        f"{plan.scale_count} --repeats 3 --registrations N`, default codec): N other endpoints registered before "
        "each run; us of CPU per message. Target: flat from 500 to 50,000.\n\n"
        + table(["registrations held"] + [f"{f} us/msg" for f in flows] + ["load"], scale_rows)
    )
    return "".join(out)


SCENARIOS = {
    "hotpath": hotpath,
    "scrape": scrape,
    "ceiling": ceiling,
    "avalanche": per_workers(avalanche),
    "openloop": per_workers(openloop),
    "calls": per_workers(calls),
    "memory": memory,
    "ras": ras,
}
