"""Video calls with SIPp: a UAS behind every registered alias, a UAC at a fixed call rate.

One step = ``rate`` calls per second, each held ``concurrent / rate`` seconds so that about
``concurrent`` calls stand at once (SIPp's ``-l`` caps it there), for ``steady`` seconds at full
concurrency. Setup latency is INVITE sent -> 200 OK received, from microsecond timestamps the
scenario logs (``-trace_logs``; SIPp's own ``-trace_rtt`` counts whole milliseconds). Failed calls
and the standing count come from its statistics file (``-trace_stat``).
"""

from __future__ import annotations

import csv
import math
import re
import shutil
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from bench import sipmsg
from bench.services import BENCH_DIR, LOOPBACK, Proc, Services, free_port, rss_bytes

SCENARIOS = BENCH_DIR / "sipp"
_RECV_TIMEOUT_MS = 10_000  # a call with no answer for 10 s has failed (RFC 3261 Timer B is 32 s)


@dataclass
class CallStep:
    rate: int
    planned: int
    created: int = 0
    successful: int = 0
    failed: int = 0
    peak_concurrent: int = 0
    setup_ms: list[float] = field(default_factory=list)
    gauge: dict[str, float] | None = None  # meter_licenses_in_use series at mid-step, or None
    expected_rms: int | None = None  # SIPp's standing calls at the same moment
    gauge_after: dict[str, float] | None = None  # the same series once every call has ended
    settled_after_s: float | None = None  # when the gauge was not 0 at once: seconds until it was (or gave up)
    rss_mid: int | None = None  # node RSS at mid-step (bytes), when asked
    sipp_exit: int | None = None
    failure_kinds: dict[str, int] = field(default_factory=dict)  # SIPp's Failed<Kind>(C) counters that are not 0

    def percentile(self, q: float) -> float:
        data = sorted(self.setup_ms)
        if not data:
            return math.nan
        return data[min(len(data) - 1, max(0, math.ceil(q / 100 * len(data)) - 1))]


def write_callees(path: Path, count: int, first: int = 0) -> Path:
    """SIPp injection file: one registered alias per line, taken in order (SEQUENTIAL)."""
    lines = ["SEQUENTIAL"] + [f"{sipmsg.user_name(first + i)};{sipmsg.DOMAIN};" for i in range(count)]
    path.write_text("\n".join(lines) + "\n")
    return path


def start_uas(services: Services, port: int, workdir: Path) -> Proc:
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.copy(SCENARIOS / "uas_video.xml", workdir / "uas_video.xml")
    proc = services.sipp("sipp-uas", [
        "-sf", "uas_video.xml", "-i", LOOPBACK, "-p", str(port), "-t", "u1", "-nostdin",
        "-max_socket", "1000",
    ], cwd=workdir)
    time.sleep(0.3)
    proc.check()
    return proc


def scrape(admin: tuple[str, int] | None, metric: str = "meter_licenses_in_use") -> dict[str, float] | None:
    """``{labels: value}`` of one metric family from the node's /metrics; None if unreachable or absent."""
    if admin is None:
        return None
    try:
        with urllib.request.urlopen(f"http://{admin[0]}:{admin[1]}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return None
    out = {}
    for line in text.splitlines():
        m = re.match(rf"{metric}(\{{[^}}]*\}})?\s+(\S+)", line)
        if m:
            out[m[1] or ""] = float(m[2])
    return out or None


def rms_of(gauge: dict[str, float] | None) -> float | None:
    """The Rich Media Sessions part of meter_licenses_in_use (series whose labels name RMS)."""
    if not gauge:
        return None
    values = [v for k, v in gauge.items() if re.search(r"rms|rich", k, re.I)]
    return sum(values) if values else None


def _stats_rows(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="") as f:
            return list(csv.DictReader(f, delimiter=";"))
    except OSError:
        return []


def _int(row: dict[str, str], name: str) -> int:
    try:
        return int(float(row.get(name, "0") or 0))
    except ValueError:
        return 0


def run_step(services: Services, target: tuple[str, int], workdir: Path, *, rate: int, concurrent: int,
             steady: float, callees: int, admin: tuple[str, int] | None = None, node: Proc | None = None,
             on_mid=None, socket_per_call: bool = False) -> CallStep:
    """One call-rate step through ``target`` (the node or the Kamailio forwarder); blocks until done.
    ``socket_per_call``: SIPp's ``-t un``, a source port per call, as many phones would be: a node
    with several SIP workers then spreads them (one socket would all hash to one worker)."""
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.copy(SCENARIOS / "uac_video.xml", workdir / "uac_video.xml")
    write_callees(workdir / "callees.csv", callees)
    hold = concurrent / rate
    planned = max(1, round(rate * (hold + steady)))
    stats = workdir / "stats.csv"
    deadline = int(hold * 2 + steady + 60)
    proc = services.sipp(f"sipp-uac-{rate}", [
        f"{target[0]}:{target[1]}", "-sf", "uac_video.xml", "-inf", "callees.csv",
        "-i", LOOPBACK, "-p", str(free_port()), "-nostdin",
        *(["-t", "un", "-max_socket", str(2 * concurrent + 64)] if socket_per_call else ["-t", "u1"]),
        "-r", str(rate), "-l", str(concurrent), "-m", str(planned), "-d", str(int(hold * 1000)),
        "-recv_timeout", str(_RECV_TIMEOUT_MS), "-timeout", f"{deadline}s",
        "-trace_stat", "-stf", stats.name, "-fd", "1",
        "-trace_err", "-trace_logs",
    ], cwd=workdir)
    step = CallStep(rate=rate, planned=planned)
    # SIPp writes its statistics once a second: sample no earlier than 2.5 s in.
    mid = time.monotonic() + max(hold + steady / 2, 2.5)
    end = time.monotonic() + deadline + 10
    sampled = False
    while proc.alive() and time.monotonic() < end:
        time.sleep(0.1)
        if not sampled and time.monotonic() >= mid:
            sampled = True
            rows = _stats_rows(stats)
            step.gauge = scrape(admin)
            step.expected_rms = _int(rows[-1], "CurrentCall") if rows else None
            if node is not None:
                step.rss_mid = rss_bytes(node.pid)
            if on_mid is not None:
                on_mid(step)
    if proc.alive():
        services.stop(proc)
    else:
        services.procs.remove(proc)
    step.sipp_exit = proc.popen.returncode
    rows = _stats_rows(stats)
    if rows:
        last = rows[-1]
        step.created = _int(last, "TotalCallCreated")
        step.successful = _int(last, "SuccessfulCall(C)")
        step.failed = _int(last, "FailedCall(C)")
        step.peak_concurrent = max(_int(r, "CurrentCall") for r in rows)
        step.failure_kinds = {name[6:-3]: _int(last, name) for name in last
                              if name and name.startswith("Failed") and name.endswith("(C)")
                              and name != "FailedCall(C)" and _int(last, name)}
    step.setup_ms = _setup_times(workdir)
    if admin is not None:
        time.sleep(1.0)  # the last BYE's 200 is on its way through
        step.gauge_after = scrape(admin)
        # Not back to zero: a release path is late or missing (principle 4). Watch it for the
        # longest a proxy transaction can linger (64*T1 = 32 s, RFC 3261 §17.1.2.2) plus margin.
        t0 = time.monotonic()
        while rms_of(step.gauge_after) and time.monotonic() - t0 < 40:
            time.sleep(1.0)
            step.gauge_after = scrape(admin)
        if time.monotonic() - t0 >= 1:
            step.settled_after_s = time.monotonic() - t0 + 1.0
    return step


def _setup_times(workdir: Path) -> list[float]:
    """INVITE -> 200 OK per call, in ms, from the scenario's microsecond log lines.

    A line is ``invite;<call-id>;<date>\t<time>\t<epoch.usec>`` or ``answered;...``.
    """
    sent: dict[str, float] = {}
    out: list[float] = []
    for path in workdir.glob("uac_video_*_logs.log"):
        with open(path, errors="replace") as f:
            for line in f:
                kind, _, rest = line.strip().partition(";")
                call_id, _, stamp = rest.partition(";")
                try:
                    t = float(stamp.split()[-1])
                except (ValueError, IndexError):
                    continue
                if kind == "invite":
                    sent.setdefault(call_id, t)
                elif kind == "answered" and call_id in sent:
                    out.append((t - sent.pop(call_id)) * 1000)
    return out
