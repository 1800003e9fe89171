"""Long fuzzing of the codecs, outside CI: ``python -m bench.fuzz`` (``make fuzz``).

    python -m bench.fuzz --seconds 600                 # all targets, 600 s in all
    python -m bench.fuzz --targets sip,sdp --engine hypothesis --seconds 120

Engines: ``atheris`` (coverage-guided libFuzzer, one process per target, seeded with real
messages) when it is installed, else ``hypothesis`` (random and mutated inputs in batches until
the time is up). A finding is any exception other than the codec's own error, or one input taking
longer than ``--slow`` seconds. Writes inputs tried and findings to BENCHMARKS.md; crashing inputs
are kept in the output directory.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from bench import report
from bench.fuzz_targets import TARGETS, Target


@dataclass
class Finding:
    kind: str  # "crash" or "slow"
    summary: str
    input: bytes
    path: Path | None = None


@dataclass
class Outcome:
    target: str
    engine: str
    seconds: float = 0.0
    inputs: int = 0
    findings: list[Finding] = field(default_factory=list)
    slowest_ms: float | None = None
    note: str = ""


def _short(data: bytes, limit: int = 120) -> str:
    text = repr(data[:limit])
    return text + (f" ...(+{len(data) - limit} B)" if len(data) > limit else "")


# ---- hypothesis ------------------------------------------------------------------------------------


def _strategy(seeds: list[bytes]):
    from hypothesis import strategies as st

    from bench.mutations import mutated

    sources = [st.binary(max_size=2048)]
    if seeds:
        sources.insert(0, mutated(seeds))
    return st.one_of(*sources)


def fuzz_hypothesis(target: Target, seconds: float, slow: float, outdir: Path, log) -> Outcome:
    from hypothesis import HealthCheck, Phase, given, settings

    outcome = Outcome(target.name, "hypothesis")
    module = target.load()
    allowed = target.allowed(module)
    seeds = target.seeds()
    state = {"count": 0, "failure": None, "slowest": 0.0}
    seen: set[str] = set()

    def check(data: bytes) -> None:
        state["count"] += 1
        t0 = time.perf_counter()
        try:
            target.run(module, data)
        except allowed:
            pass
        except Exception as exc:
            state["failure"] = (data, _where(exc))
            raise
        finally:
            took = time.perf_counter() - t0
            state["slowest"] = max(state["slowest"], took)
        if took > slow:
            state["failure"] = (data, f"slow: {took * 1000:.0f} ms for one input")
            raise AssertionError(state["failure"][1])

    # A fresh random seed per call; shrinking only when something failed; no example database.
    test = settings(max_examples=500, deadline=None, database=None, derandomize=False,
                    phases=[Phase.generate, Phase.shrink], report_multiple_bugs=False,
                    suppress_health_check=list(HealthCheck))(given(_strategy(seeds))(check))
    end = time.monotonic() + seconds
    started = time.monotonic()
    batch = 0
    while time.monotonic() < end and len(seen) < 3:
        batch += 1
        try:
            test()
        except Exception:
            data, summary = state["failure"] or (b"", traceback.format_exc().splitlines()[-1])
            if summary in seen:
                continue
            seen.add(summary)
            path = outdir / f"{target.name}-crash-{len(seen)}.bin"
            path.write_bytes(data)
            kind = "slow" if summary.startswith("slow") else "crash"
            outcome.findings.append(Finding(kind, summary, data, path))
            log(f"  [{target.name}] {kind}: {summary} input {_short(data, 60)} -> {path}")
        if batch % 5 == 0:
            log(f"  [{target.name}] {state['count']:,} inputs, {time.monotonic() - started:.0f} s")
    outcome.seconds = time.monotonic() - started
    outcome.inputs = state["count"]
    outcome.slowest_ms = state["slowest"] * 1000
    outcome.note = f"{len(seeds)} seeds, mutated and random"
    return outcome


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    last = frames[-1] if frames else None
    at = f" at {Path(last.filename).name}:{last.lineno} ({last.name})" if last else ""
    return f"{type(exc).__name__}: {str(exc)[:160]}{at}"


# ---- atheris --------------------------------------------------------------------------------------


def fuzz_atheris(target: Target, seconds: float, slow: float, outdir: Path, corpus_root: Path, log) -> Outcome:
    outcome = Outcome(target.name, "atheris")
    corpus = corpus_root / target.name
    corpus.mkdir(parents=True, exist_ok=True)
    seeds = target.seeds()
    for i, seed in enumerate(seeds):
        (corpus / f"seed-{i:03d}").write_bytes(seed)
    artifacts = outdir / f"{target.name}-"
    argv = [
        sys.executable, "-m", "bench.fuzz_atheris", target.name,
        f"-max_total_time={max(1, int(seconds))}", f"-timeout={max(1, int(slow + 0.999))}",
        "-rss_limit_mb=2048", "-max_len=8192", "-print_final_stats=1", f"-artifact_prefix={artifacts}",
        str(corpus),
    ]
    log(f"  [{target.name}] {shlex.join(argv[1:])}")
    started = time.monotonic()
    proc = subprocess.run(argv, cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True,
                          errors="replace", timeout=seconds + 300)
    outcome.seconds = time.monotonic() - started
    text = proc.stdout + proc.stderr
    (outdir / f"{target.name}-atheris.log").write_text(text)
    m = re.search(r"stat::number_of_executed_units:\s*(\d+)", text) or re.search(r"Done (\d+) runs", text)
    outcome.inputs = int(m[1]) if m else 0
    m = re.search(r"stat::slowest_unit_time_sec:\s*(\d+)", text)
    if m:
        outcome.slowest_ms = int(m[1]) * 1000.0  # libFuzzer counts whole seconds here
    cov = re.findall(r"cov: (\d+) ft: (\d+)", text)
    outcome.note = f"{len(seeds)} seeds; coverage {cov[-1][0]} edges, {cov[-1][1]} features" if cov else f"{len(seeds)} seeds"
    for path_text in re.findall(r"Test unit written to (\S+)", text):
        path = Path(path_text)
        data = path.read_bytes() if path.exists() else b""
        kind = "slow" if path.name.startswith(f"{target.name}-timeout") else "crash"
        summary = _atheris_summary(text) if kind == "crash" else f"slow: over {slow:g} s for one input"
        outcome.findings.append(Finding(kind, summary, data, path))
        log(f"  [{target.name}] {kind}: {summary} -> {path}")
    if proc.returncode not in (0,) and not outcome.findings:
        outcome.note += f"; atheris exited {proc.returncode}: {text.strip().splitlines()[-1][:200] if text.strip() else ''}"
    return outcome


def _atheris_summary(text: str) -> str:
    block = text.split("=== Uncaught Python exception: ===", 1)
    if len(block) < 2:
        m = re.search(r"ERROR: libFuzzer: (.+)", text)
        return m[1].strip() if m else "crash (see log)"
    lines = [line for line in block[1].splitlines() if line.strip()]
    exc = next((line for line in lines if re.match(r"^\w+(\.\w+)*(Error|Exception|Exit)\b|^\w+:", line)), lines[0])
    where = [line.strip() for line in lines if line.strip().startswith("File ")]
    return exc.strip()[:200] + (f" at {where[-1][5:][:120]}" if where else "")


def _slowest(o: Outcome) -> str:
    if o.slowest_ms is None:
        return "n/a"
    if o.engine == "atheris" and o.slowest_ms < 1000:
        return "< 1000"  # libFuzzer reports the slowest unit in whole seconds
    return f"{o.slowest_ms:.1f}"


# ---- runner ---------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.fuzz", description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=600.0, help="total budget, split evenly over the targets")
    p.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated, from {','.join(TARGETS)}")
    p.add_argument("--engine", choices=("auto", "atheris", "hypothesis"), default="auto",
                   help="auto = atheris when installed, else hypothesis")
    p.add_argument("--slow", type=float, default=2.0, help="one input taking longer than this (s) is a finding")
    p.add_argument("--corpus", type=Path, help="keep the atheris corpus here (default: a temporary directory)")
    p.add_argument("--output", type=Path, default=report.BENCHMARKS)
    p.add_argument("--no-write", action="store_true", help="print the section instead of writing it")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    names = [t for t in args.targets.split(",") if t]
    unknown = [t for t in names if t not in TARGETS]
    if unknown:
        raise SystemExit(f"unknown target(s) {', '.join(unknown)}: expected some of {','.join(TARGETS)}")
    engine = args.engine
    if engine == "auto":
        engine = "atheris" if importlib.util.find_spec("atheris") else "hypothesis"
    outdir = Path(tempfile.mkdtemp(prefix="meter-fuzz-"))
    corpus_root = args.corpus or outdir / "corpus"
    targets = [TARGETS[n] for n in names]
    missing = [t.name for t in targets if not t.available()]
    targets = [t for t in targets if t.available()]
    share = args.seconds / max(1, len(targets))
    given = sys.argv[1:] if argv is None else argv
    command = "python -m bench.fuzz" + (" " + shlex.join(given) if given else "")
    print(f"engine {engine}, {share:.0f} s per target, findings in {outdir}", flush=True)

    def log(text: str) -> None:
        print(text, flush=True)

    outcomes: list[Outcome] = []
    status = "complete"
    try:
        for target in targets:
            log(f"== {target.name}: {target.what}")
            if engine == "atheris":
                outcome = fuzz_atheris(target, share, args.slow, outdir, corpus_root, log)
            else:
                outcome = fuzz_hypothesis(target, share, args.slow, outdir, log)
            log(f"== {target.name}: {outcome.inputs:,} inputs in {outcome.seconds:.0f} s, "
                f"{len(outcome.findings)} finding(s)")
            outcomes.append(outcome)
    except KeyboardInterrupt:
        status = "interrupted"
    rows = []
    for o in outcomes:
        rate = o.inputs / o.seconds if o.seconds else 0
        found = "; ".join(f"{f.kind}: {f.summary} (input {_short(f.input, 80)})" for f in o.findings) or "none"
        rows.append([o.target, TARGETS[o.target].what, o.engine, f"{o.seconds:.0f}", f"{o.inputs:,}", f"{rate:,.0f}",
                     _slowest(o), found, o.note])
    for name in missing:
        rows.append([name, TARGETS[name].what, engine, "0", "0", "-", "-", "not run: codec module missing", ""])
    section = (
        f"## {report.now_title()}: fuzzing ({engine}, {status})\n\n"
        f"Command: `{command}`. A finding is any exception other than the codec's own error class, or one "
        f"input slower than {args.slow:g} s."
        + (f" Crashing inputs were kept in `{outdir}`." if any(o.findings for o in outcomes) else "") + "\n"
        + report.machine_block(report.machine()) + "\n"
        + report.table(["target", "exercises", "engine", "seconds", "inputs tried", "inputs/s", "slowest input ms",
                        "findings", "notes"], rows)
    )
    if args.no_write:
        print(section)
    else:
        report.write_section(section, args.output)
        log(f"wrote {args.output}")
    return 0 if status == "complete" else 130


if __name__ == "__main__":
    sys.exit(main())
