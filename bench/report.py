"""BENCHMARKS.md: the machine, the command, and markdown tables of median (min-max) figures.

New sections go on top, under the file's introduction (the marker line), so the latest result
is the first one read; the introduction is rewritten each time from ``INTRO``.
"""

from __future__ import annotations

import math
import os
import platform
import re
import statistics
import subprocess
from datetime import datetime, timezone
from pathlib import Path

from bench.services import KAMAILIO, REPO_DIR, SIPP

BENCHMARKS = REPO_DIR / "BENCHMARKS.md"
MARKER = "<!-- results below: newest first; bench/run.py and bench/fuzz.py insert here -->"

INTRO = f"""# Benchmarks

Measured by `bench/` (issue 6): `make bench` (= `python -m bench.run`, every table issue 11 asks
for in about 15 minutes) for load, `make fuzz` (= `python -m bench.fuzz`) for long fuzzing. Both
write a dated section below; tests never assert timings. Smoke run: `make bench BENCH_ARGS=--quick`;
full counts and 5 repeats: `BENCH_ARGS=--full`; 1 and 2 SIP workers: `BENCH_ARGS="--workers 1,2"`; a
subset: `BENCH_ARGS="--scenarios avalanche,calls --paths b,c --repeats 3"`; fuzzing budget:
`FUZZ_ARGS="--seconds 600"` (atheris when installed, else Hypothesis). `python -m bench.run --help`
lists the rest.

How to read the figures:
- Every figure is the **median (min-max)** over the repeats named in its section.
- **This machine has 2 cores shared by everything**: the load generator, the node, Kamailio and
  SIPp all run on the same 2 cores, so each one's CPU is taken from the others. Figures are for
  comparing peers measured the same way on the same box, not absolute capacity.
- Paths: **(a)** node standalone (it is the registrar); **(b)** through the node inline to the
  Kamailio registrar; **(c)** through a Kamailio *stateless* forwarder (`bench/kamailio/forwarder.cfg`)
  to the same registrar; **(d)** straight to the Kamailio registrar (`bench/kamailio/registrar.cfg`,
  usrloc in memory). The headline is **(b)/(c)**: the node inline against the peer a user would
  put in its place.
- Latency is measured by the load generator (send to final answer, loopback), so it includes the
  generator's own event loop. "Added" latency is the path's percentile minus path (d)'s percentile
  in the same repeat (a difference of percentiles, not a percentile of differences).
- No retransmissions: an unanswered REGISTER counts **lost** after 2 s. SIPp retransmits INVITE
  and BYE as RFC 3261 says; a call that fails anyway is a failed call.
- Call setup (INVITE sent -> 200 OK received) comes from microsecond timestamps the SIPp UAC
  scenario logs (SIPp's own response-time counters have 1 ms resolution).

{MARKER}
"""


def stat(values, fmt: str = "{:,.0f}", unit: str = "") -> str:
    """``median (min-max)`` of the finite values, or ``n/a``."""
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return "n/a"
    med = statistics.median(vals)
    if len(vals) == 1:
        return fmt.format(med) + unit
    return f"{fmt.format(med)}{unit} ({fmt.format(min(vals))}-{fmt.format(max(vals))})"


def table(headers: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out) + "\n"


def _first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        text = (out.stdout or out.stderr).strip()
        return text.splitlines()[0].strip() if text else "?"
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"


def machine() -> dict[str, str]:
    cpu = "?"
    try:
        m = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = m[1].strip() if m else "?"
    except OSError:
        pass
    try:
        mem = re.search(r"^MemTotal:\s*(\d+)", Path("/proc/meminfo").read_text(), re.M)
        memory = f"{int(mem[1]) / 1024 / 1024:.0f} GiB"
    except (OSError, TypeError):
        memory = "?"
    try:
        import uvloop

        uv = uvloop.__version__
    except ImportError:
        uv = "not installed"
    try:
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        load = "?"
    commit = _first_line(["git", "-C", str(REPO_DIR), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(["git", "-C", str(REPO_DIR), "status", "--porcelain"], capture_output=True,
                           text=True).stdout.strip()
    return {
        "nproc": str(os.cpu_count()),
        "CPU": cpu,
        "memory": memory,
        "kernel": platform.release(),
        "Python": platform.python_version(),
        "uvloop": uv,
        "Kamailio": _first_line([KAMAILIO, "-v"]).removeprefix("version: "),
        "SIPp": _first_line([SIPP, "-v"]),
        "commit": commit + (" + uncommitted changes" if dirty else ""),
        "load average at start": load,
    }


def machine_block(info: dict[str, str]) -> str:
    text = ", ".join(f"{k} {v}" for k, v in info.items())
    return f"Machine: {text}. All processes share these {info['nproc']} cores.\n"


def now_title() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def write_section(section: str, path: Path = BENCHMARKS) -> None:
    """Insert ``section`` at the top of the results in ``path`` (creating the file if needed)."""
    text = path.read_text() if path.exists() else INTRO
    if MARKER not in text:
        text = text.rstrip("\n") + "\n\n" + MARKER + "\n"
    _, tail = text.split(MARKER, 1)
    head = INTRO.split(MARKER, 1)[0]  # the introduction always says how the current harness measures
    path.write_text(head + MARKER + "\n\n" + section.rstrip("\n") + "\n" + tail)
