"""Fixtures for tests against real peers: Kamailio on a loopback port, SIPp, a SIP node in-process.

A peer that cannot start fails the test loudly (team rule: never skip)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from meter.sip.node import SipNode
from meter.sip.settings import SipSettings
from tests.integration.peers import free_port  # noqa: F401  (one definition; tests import it from here too)

KAMAILIO_CFG = Path(__file__).parent / "kamailio" / "kamailio.cfg"


def need(tool: str) -> str:
    path = shutil.which(tool) or (f"/usr/sbin/{tool}" if os.path.exists(f"/usr/sbin/{tool}") else None)
    if path is None:
        pytest.fail(f"{tool} is not installed (Debian package: see Makefile DEBIAN_TOOLS); run `make deps`")
    return path


# -- Kamailio -----------------------------------------------------------------------------------------------


class Kamailio:
    """Kamailio in the foreground (-DD -E) on 127.0.0.1:<port>, runtime dir and ctl socket private."""

    cfg = KAMAILIO_CFG  # a variant (the TLS one) names its own file and adds its arguments

    def extra_args(self) -> list[str]:
        return []

    def __init__(self, rundir: Path) -> None:
        self.rundir = rundir
        self.port = free_port()
        self.ctl = rundir / "kamailio_ctl"
        self.log_path = rundir / "kamailio.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        binary = need("kamailio")
        self.kamcmd = need("kamcmd")
        cmd = [
            binary, "-f", str(self.cfg), "-DD", "-E", "-m", "64", "-M", "8",
            "-Y", str(self.rundir), "-P", str(self.rundir / "kamailio.pid"), "-w", str(self.rundir),
            "-l", f"udp:127.0.0.1:{self.port}", "-l", f"tcp:127.0.0.1:{self.port}",
            "-A", f'CTL_SOCKET="unix:{self.ctl}"', *self.extra_args(),
        ]
        self._log = open(self.log_path, "wb")
        # Own process group: stopping it reaches every Kamailio child and nothing else.
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if self.ctl.exists() and self._rpc_ok():
                return
            time.sleep(0.1)
        self.stop()
        pytest.fail(f"Kamailio did not start on 127.0.0.1:{self.port}:\n{self.log_tail()}")

    def _rpc_ok(self) -> bool:
        try:
            return self.rpc("core.version").startswith("kamailio")
        except (subprocess.SubprocessError, OSError):
            return False

    def rpc(self, *args: str) -> str:
        out = subprocess.run([self.kamcmd, "-s", f"unix:{self.ctl}", *args], capture_output=True, text=True,
                             timeout=10)
        if out.returncode != 0:
            raise subprocess.SubprocessError(f"kamcmd {' '.join(args)} failed: {out.stderr or out.stdout}")
        return out.stdout

    def contacts(self) -> dict[str, list[str]]:
        """`kamcmd ul.dump`: AOR -> contact addresses held in usrloc."""
        dump = self.rpc("ul.dump")
        result: dict[str, list[str]] = {}
        aor = None
        for line in dump.splitlines():
            m = re.match(r"\s*AoR:\s*(\S+)", line)
            if m:
                aor = m.group(1)
                result.setdefault(aor, [])
                continue
            m = re.match(r"\s*Address:\s*(\S+)", line)
            if m and aor is not None:
                result[aor].append(m.group(1))
        return result

    def paths(self) -> list[str]:
        return re.findall(r"Path:\s*(\S+)", self.rpc("ul.dump"))

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        if hasattr(self, "_log"):
            self._log.close()


@pytest.fixture(scope="session")
def kamailio(tmp_path_factory):
    """One Kamailio for the session; tests use their own user names so bindings do not collide."""
    k = Kamailio(tmp_path_factory.mktemp("kamailio"))
    k.start()
    yield k
    k.stop()


# -- the node, in-process ------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def running_node(policy=None, **settings):
    """A SipNode on 127.0.0.1, a free port, short timers unless told otherwise."""
    kw = dict(host="127.0.0.1", port=0, t1=0.1, t2=0.4, t4=0.5, timer_d=1.0, housekeeping_interval=0.2)
    kw.update(settings)
    node = SipNode(SipSettings(**kw), policy)
    await node.start()
    try:
        yield node
    finally:
        await node.close()


@pytest.fixture
def sip_node():
    return running_node


def run(coro, *, loop: str = "uvloop"):
    """Run one test scenario on a fresh event loop: uvloop (what the node runs on) or asyncio's own."""
    if loop == "uvloop":
        import uvloop

        return uvloop.run(asyncio.wait_for(coro, 60))
    return asyncio.run(asyncio.wait_for(coro, 60))


# -- SIPp ------------------------------------------------------------------------------------------------------


@dataclass
class SippResult:
    returncode: int
    stdout: str
    stderr: str
    messages: str

    def check(self) -> None:
        assert self.returncode == 0, (
            f"sipp exit {self.returncode}\n--- stderr\n{self.stderr[-3000:]}\n--- messages\n{self.messages[-6000:]}")


async def run_sipp(scenario: str, remote: str, workdir: Path, *, port: int | None = None, calls: int = 1,
                   extra: tuple[str, ...] = (), timeout: float = 30.0) -> SippResult:
    """Run SIPp with an XML scenario against ``remote`` ("host:port"), loopback only, message trace kept."""
    binary = need("sipp")
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "scenario.xml"
    path.write_text(scenario)
    msg_file = workdir / "messages.log"
    cmd = [
        binary, remote, "-sf", str(path), "-i", "127.0.0.1", "-p", str(port or free_port()), "-m", str(calls),
        "-nostdin", "-trace_msg", "-message_file", str(msg_file), "-timeout", f"{int(timeout)}s",
        "-timeout_error", "-nd", *extra,
    ]
    proc = await asyncio.create_subprocess_exec(*cmd, cwd=workdir, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout + 10)
    except asyncio.TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
    messages = msg_file.read_text(errors="replace") if msg_file.exists() else ""
    return SippResult(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"), messages)


@pytest.fixture
def sipp():
    return run_sipp
