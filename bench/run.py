"""Benchmark runner: ``python -m bench.run`` (``make bench``). See BENCHMARKS.md for the results.

    python -m bench.run                       # every table of issue 11, about 15 minutes (make bench)
    python -m bench.run --full                # full counts, 5 repeats (about 40 minutes)
    python -m bench.run --quick               # smoke run: small counts, 1 repeat
    python -m bench.run --workers 1,2         # avalanche, open loop and calls with 1 and 2 SIP workers
    python -m bench.run --scenarios avalanche,calls --paths b,c --repeats 3

Starts what it measures on loopback (Kamailio, the node, SIPp) in a private directory, stops it all
at the end, on errors and on Ctrl-C, and writes one dated section to BENCHMARKS.md (unless
``--no-write``). A scenario that fails is recorded as failed; the others still run.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import shutil
import sys
import tempfile
import time
import tomllib
import traceback
from pathlib import Path

from bench import report
from bench.scenarios import PATHS, SCENARIOS, Context, Plan

DEFAULT_SCENARIOS = ("hotpath", "scrape", "ceiling", "avalanche", "openloop", "calls", "memory", "ras")


def _csv(kind):
    return lambda text: tuple(kind(x) for x in text.split(",") if x)


def _node_option(text: str) -> tuple[str, str, object]:
    """``section.key=TOML value``, e.g. ``sip.workers=2`` or ``log.level="info"``."""
    name, sep, value = text.partition("=")
    section, dot, key = name.partition(".")
    if not (sep and dot and section and key):
        raise argparse.ArgumentTypeError(f"expected section.key=value, got {text!r}")
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value  # a bare word: take it as a string
    return section, key, parsed


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small counts and 1 repeat: a smoke run")
    p.add_argument("--full", action="store_true", help="full counts and 5 repeats (about 40 minutes)")
    p.add_argument("--workers", type=_csv(int), help="[sip] workers of the node, one table per count, e.g. 1,2 "
                   "(N > 1 also sets tcp = false; default 1)")
    p.add_argument("--codecs", type=_csv(str), help="hot-path SIP codecs (default python,compiled)")
    p.add_argument("--scenarios", type=_csv(str), default=DEFAULT_SCENARIOS,
                   help=f"comma-separated, from {','.join(SCENARIOS)} (default: all)")
    p.add_argument("--paths", type=_csv(str), help="comma-separated subset of a,b,c,d (default: all)")
    p.add_argument("--repeats", type=int, help="repeats per figure (default 5; --quick 1)")
    p.add_argument("--call-repeats", type=int, help="repeats of the calls scenario (default 3; --quick 1)")
    p.add_argument("--sizes", type=_csv(int), help="avalanche endpoint counts (default 5000,20000)")
    p.add_argument("--call-rates", type=_csv(int), help="calls per second steps (default 50,100,200,400)")
    p.add_argument("--window", type=int, help="outstanding REGISTERs in closed loop (default 200)")
    p.add_argument("--procs", type=int, help="load generator processes (default 1: on 2 cores a second "
                   "one takes CPU from the target)")
    p.add_argument("--sockets", type=int, help="source sockets per generator process (default 4)")
    p.add_argument("--kamailio-children", type=int, help="Kamailio UDP workers (default 2, one per core)")
    p.add_argument("--node-option", type=_node_option, action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="extra node config, repeatable (e.g. sip.workers=2)")
    p.add_argument("--output", type=Path, default=report.BENCHMARKS, help="results file (default BENCHMARKS.md)")
    p.add_argument("--no-write", action="store_true", help="print the section instead of writing it")
    p.add_argument("--keep", action="store_true", help="keep the working directory (logs, SIPp files)")
    return p


def plan_from(args) -> Plan:
    plan = Plan.quick() if args.quick else Plan() if args.full else Plan.standard()
    for name in ("repeats", "call_repeats", "sizes", "call_rates", "window", "procs", "sockets",
                 "kamailio_children", "paths", "workers", "codecs"):
        value = getattr(args, name)
        if value is not None:
            setattr(plan, name, value)
    if any(n < 1 for n in plan.workers):
        raise SystemExit(f"--workers: counts must be >= 1, got {plan.workers}")
    for path in plan.paths:
        if path not in PATHS:
            raise SystemExit(f"unknown path {path!r}: expected some of {','.join(PATHS)}")
    for section, key, value in args.node_option:
        if (section, key) == ("sip", "workers") and args.workers is None:
            plan.workers = (int(value),)  # the older spelling of --workers N
            continue
        plan.node_options.setdefault(section, {})[key] = value
    return plan


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown scenario(s) {', '.join(unknown)}: expected some of {','.join(SCENARIOS)}")
    plan = plan_from(args)
    # `kill` stops the run the way Ctrl-C does: cleanly. SIGINT too, also when a non-interactive
    # shell started us in the background with it ignored.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    workdir = Path(tempfile.mkdtemp(prefix="meter-bench-"))
    given = sys.argv[1:] if argv is None else argv
    command = "python -m bench.run" + (" " + shlex.join(given) if given else "")
    info = report.machine()
    print(report.machine_block(info), flush=True)
    print(f"working directory: {workdir}", flush=True)

    def log(text: str) -> None:
        print(text, flush=True)

    ctx = Context(plan=plan, workdir=workdir, log=log)
    blocks, status = [], "complete"
    started = time.monotonic()
    try:
        for name in args.scenarios:
            log(f"== {name}")
            t0, load0 = time.monotonic(), os.getloadavg()[0]
            try:
                blocks.append(SCENARIOS[name](ctx).rstrip("\n")
                              + f"\n\n_(load average {load0:.1f} at the start of this table, "
                              f"{os.getloadavg()[0]:.1f} at its end; {time.monotonic() - t0:.0f} s)_\n")
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # record and go on: one broken scenario must not hide the rest
                traceback.print_exc()
                blocks.append(f"### {name}\n\nFAILED: {type(exc).__name__}: {exc}\n")
            log(f"== {name} done in {time.monotonic() - t0:.0f} s")
    except KeyboardInterrupt:
        status = "interrupted"
        log("interrupted: writing what was measured")
    finally:
        if not args.keep and status == "complete":
            shutil.rmtree(workdir, ignore_errors=True)
    elapsed = time.monotonic() - started
    section = (
        f"## {report.now_title()}: load benchmarks ({'quick' if args.quick else 'full counts' if args.full else 'standard'}"
        f"{'' if tuple(args.scenarios) == DEFAULT_SCENARIOS else ', only ' + ','.join(args.scenarios)}, {status})\n\n"
        f"Command: `{command}` ({elapsed / 60:.1f} min).\n"
        + report.machine_block(info)
        + f"Repeats: {plan.repeats} (calls: {plan.call_repeats}). Kamailio workers: {plan.kamailio_children} each. "
        f"Generator: {plan.procs} process(es) x {plan.sockets} sockets.\n"
        + (f"Node options: {plan.node_options}.\n" if plan.node_options else "")
        + f"SIP workers: {', '.join(map(str, plan.workers))}.\n"
        + ("\n**This run, issue 11's figures**:\n\n" + "".join(f"- {h}\n" for h in ctx.headlines)
           if ctx.headlines else "")
        + "\n" + "\n".join(blocks)
    )
    if args.no_write:
        print(section)
    else:
        report.write_section(section, args.output)
        log(f"wrote {args.output}")
    if status != "complete":
        log(f"logs kept in {workdir}")
    return 0 if status == "complete" else 130


if __name__ == "__main__":
    sys.exit(main())
