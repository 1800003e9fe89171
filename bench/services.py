"""Start and stop what a benchmark drives: Kamailio, the node, SIPp. Loopback only.

:class:`Services` owns every process it starts (each in its own session, so a signal reaches its
children too) and stops them all on exit, also on Ctrl-C and on errors. A process that dies early
fails loudly with the tail of its log.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.loadgen import wait_until_answering

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
KAMAILIO = shutil.which("kamailio") or "/usr/sbin/kamailio"
SIPP = shutil.which("sipp") or "/usr/bin/sipp"
LOOPBACK = "127.0.0.1"
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    """A port free for both UDP and TCP on loopback (SIP listens on one, the admin server on the other)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind((LOOPBACK, 0))
            port = u.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind((LOOPBACK, port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free loopback port found")


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def check(self) -> None:
        if not self.alive():
            raise RuntimeError(f"{self.name} exited with {self.popen.returncode}; last log lines:\n{self.tail()}")


class Services:
    """A set of processes started for one measurement; ``with Services(dir) as s: ...`` stops them all."""

    def __init__(self, rundir: Path):
        self.rundir = Path(rundir)
        self.rundir.mkdir(parents=True, exist_ok=True)
        self.procs: list[Proc] = []

    def __enter__(self) -> "Services":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self, name: str, argv: list[str], cwd: Path | None = None, env: dict | None = None) -> Proc:
        log = self.rundir / f"{name}.log"
        with open(log, "wb") as out:
            popen = subprocess.Popen(
                argv, cwd=cwd or self.rundir, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, env=env,
            )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc, timeout: float = 5.0) -> None:
        if proc.alive():
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.popen.wait()
        _signal_group(proc.pid, signal.SIGKILL)  # stragglers left in the group (Kamailio children)
        if proc in self.procs:
            self.procs.remove(proc)

    def close(self) -> None:
        while self.procs:
            self.stop(self.procs[-1])

    # ---- Kamailio -------------------------------------------------------------------------------

    def kamailio(self, role: str, port: int, *, children: int = 2, defines: dict[str, str] | None = None,
                 shm_mb: int = 512) -> Proc:
        """Kamailio with ``bench/kamailio/<role>.cfg`` on udp:127.0.0.1:port, in the foreground."""
        rundir = self.rundir / f"kamailio-{role}-{port}"
        rundir.mkdir(parents=True, exist_ok=True)
        argv = [
            KAMAILIO, "-DD", "-E", "-f", str(BENCH_DIR / "kamailio" / f"{role}.cfg"),
            "-l", f"udp:{LOOPBACK}:{port}", "-n", str(children),
            # tlsf: the shared-memory allocator the baseline used; 512 MB holds 50000 contacts
            # with room to spare, 16 MB private memory per worker is twice the default.
            "-x", "tlsf", "-m", str(shm_mb), "-M", "16",
            "-Y", str(rundir), "-w", str(rundir), "-P", str(rundir / "kamailio.pid"),
        ]
        for key, value in (defines or {}).items():
            argv += ["-A", f"{key}={value}"]
        proc = self.start(f"kamailio-{role}", argv)
        wait_until_answering((LOOPBACK, port), alive=proc.alive)
        return proc

    # ---- the node -------------------------------------------------------------------------------

    def node(self, port: int, admin_port: int, *, mode: str = "standalone", upstream: str = "",
             options: dict[str, dict] | None = None, ras_port: int = 0) -> Proc:
        """``meter run`` with a generated config, ready once it answers OPTIONS on ``port``."""
        rundir = self.rundir / f"node-{port}"
        rundir.mkdir(parents=True, exist_ok=True)
        config = node_config(rundir, port, admin_port, mode=mode, upstream=upstream, options=options,
                             ras_port=ras_port)
        path = rundir / "meter.toml"
        path.write_text(config)
        check = subprocess.run([sys.executable, "-m", "meter", "check-config", str(path)],
                               cwd=rundir, capture_output=True, text=True, timeout=60)
        if check.returncode != 0:
            raise RuntimeError(f"node config rejected ({path}):\n{check.stderr or check.stdout}")
        # `meter run` refuses a state directory without a node identity (meter init creates it once).
        subprocess.run([sys.executable, "-m", "meter", "init", "--if-missing", "--config", str(path)],
                       cwd=rundir, check=True, capture_output=True, timeout=60)
        proc = self.start("node", [sys.executable, "-m", "meter", "run", "--config", str(path)], cwd=rundir)
        wait_until_answering((LOOPBACK, port), seconds=30, alive=proc.alive)
        return proc

    # ---- SIPp -----------------------------------------------------------------------------------

    def sipp(self, name: str, args: list[str], cwd: Path) -> Proc:
        return self.start(name, [SIPP, *args], cwd=cwd)


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def node_config(rundir: Path, port: int, admin_port: int, *, mode: str = "standalone", upstream: str = "",
                options: dict[str, dict] | None = None, ras_port: int = 0) -> str:
    """The node's TOML for a benchmark: loopback, UDP only, quiet logs, metering observing (not refusing).

    ``observe`` because the benchmark registers more endpoints (20000, 50000) than a large VM's
    licences and capacity allow (rule R6); the node still does all the metering work.
    The SIPp callers (loopback) are a third-party SIP zone, so every video call they place to a
    registered alias takes one Rich Media Session on this C node (rules C2, C4): the RMS gauge then
    has something to count.
    """
    sections: dict[str, dict] = {
        "node": {"name": "bench", "state_dir": str(rundir / "state")},
        "licensing": {"enforcement": "observe"},
        "sip": {"host": LOOPBACK, "port": port, "udp": True, "tcp": False, "mode": mode,
                "aliases": ["bench.meter.test"]},
        "admin": {"host": LOOPBACK, "port": admin_port},
        "log": {"level": "warning"},
        "zones": [{"name": "bench-callers", "kind": "third_party_sip", "peers": [f"{LOOPBACK}/32"]}],
    }
    if upstream:
        sections["sip"]["upstream"] = upstream
    if importlib.util.find_spec("meter.h323.settings") is not None:
        # RAS on loopback too; port 0 = a free one, so no benchmark node holds 1719.
        sections["h323"] = {"host": LOOPBACK, "ras_port": ras_port}
    for name, values in (options or {}).items():
        if isinstance(values, list):
            sections[name] = values
        else:
            sections.setdefault(name, {}).update(values)
    lines = []
    for name, values in sections.items():
        for table in values if isinstance(values, list) else [values]:  # a list: an array of tables
            lines.append(f"[[{name}]]" if isinstance(values, list) else f"[{name}]")
            lines += [f"{key} = {_toml(value)}" for key, value in table.items()]
            lines.append("")
    return "\n".join(lines)


# ---- what a process costs ------------------------------------------------------------------------


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (a node may run worker processes)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and its descendants (shared pages counted once per process)."""
    total = 0
    for p in _tree(pid):
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * _PAGE
        except OSError:
            pass
    return total


def cpu_seconds(pid: int) -> float:
    """User + system CPU time used so far by ``pid`` and its live descendants."""
    total = 0
    for p in _tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat(5))
    return total / _CLK_TCK


def wait_for(predicate, seconds: float, what: str, interval: float = 0.05) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(interval)
    raise RuntimeError(f"timed out after {seconds:.0f} s waiting for {what}")
