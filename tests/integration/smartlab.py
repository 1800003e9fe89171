"""Real peers for the Smart Licensing tests: the lab Smart Software Manager (`meter ssm serve`) and an
authenticating HTTP CONNECT proxy (Debian's tinyproxy with BasicAuth), each in its own process."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest


def meter(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "meter", *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"meter {' '.join(args)} failed ({done.returncode}): {done.stderr}"
    return done.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Manager:
    """`meter ssm init` + `meter ssm serve`; ``base`` is its SmartTransport URL, ``ca`` its CA file."""

    def __init__(self, state: Path, *, time_factor: float = 1.0, hostnames: list[str] | None = None,
                 clock_offset: float = 0.0) -> None:
        self.state = state
        meter("ssm", "init", "--state", str(state), "--port", str(free_port()),
              *[a for h in (hostnames or []) for a in ("--hostname", h)])
        config = state / "ssm.toml"
        text = config.read_text().replace("time_factor = 1.0", f"time_factor = {time_factor}")
        config.write_text(text.replace("clock_offset = 0.0", f"clock_offset = {clock_offset}"))
        self.ca = state / "ca.pem"
        self.start()

    def start(self) -> None:
        self.log = open(self.state / f"serve-{uuid.uuid4().hex[:6]}.log", "w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "meter", "ssm", "serve", "--config", str(self.state / "ssm.toml")],
            stdout=subprocess.PIPE, stderr=self.log, text=True)
        line = self.proc.stdout.readline()
        if "serving https://" not in line:
            self.stop()
            self.log.seek(0)
            pytest.fail(f"meter ssm serve did not start: {line!r}\n{self.log.read()}")
        self.base = line.split("serving ")[1].split()[0]
        self.port = int(self.base.split(":")[2].split("/")[0])

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def account(self, **pools: int) -> str:
        va = f"VA-{uuid.uuid4().hex[:8]}"
        meter("ssm", "account", "add", "LAB", va, "--state", str(self.state))
        for tag, qty in pools.items():
            self.pool(va, tag, qty)
        return va

    def pool(self, va: str, tag: str, qty: int) -> None:
        meter("ssm", "pool", "set", va, tag, str(qty), "--state", str(self.state))

    def token(self, va: str, *options: str) -> str:
        return meter("ssm", "token", "create", va, "--state", str(self.state), *options).strip()

    def show(self) -> dict:
        import json

        return json.loads(meter("ssm", "show", "--state", str(self.state)))


class Proxy:
    """tinyproxy in the foreground with BasicAuth ``user``/``password`` on a free port."""

    def __init__(self, directory: Path, user: str = "labuser", password: str = "s3cret") -> None:
        exe = shutil.which("tinyproxy")
        if exe is None:
            pytest.fail("tinyproxy is not installed (apt-get install tinyproxy): the Proxy transport needs it")
        self.user, self.password, self.port = user, password, free_port()
        directory.mkdir(parents=True, exist_ok=True)
        self.logfile = directory / "tinyproxy.log"
        conf = directory / "tinyproxy.conf"
        conf.write_text(f"Port {self.port}\nListen 127.0.0.1\nTimeout 30\nAllow 127.0.0.1\n"
                        f"BasicAuth {user} {password}\nLogLevel Info\nLogFile \"{self.logfile}\"\n"
                        f"MaxClients 20\n")
        self.proc = subprocess.Popen([exe, "-d", "-c", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
        self.stop()
        pytest.fail(f"tinyproxy did not start on port {self.port}: {self.log()}")

    def log(self) -> str:
        return self.logfile.read_text() if self.logfile.exists() else ""

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
