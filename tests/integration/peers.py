"""Real peers for the metering tests: a meter node as a subprocess, Prometheus scraping it.

Each starts on free loopback ports in a private directory and fails loudly when it cannot.
"""

from __future__ import annotations

import json
import resource
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port on 127.0.0.1")


def wait_until(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except Exception as exc:  # not up yet
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


async def async_wait_until(predicate, timeout: float = 5.0, what: str = "condition"):
    """``wait_until`` for code on the event loop: polls without blocking it."""
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def stop_process(proc: subprocess.Popen | None, timeout: float = 10.0) -> int | None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout``; its exit status."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


def http_get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as reply:
        return reply.read()


class MeterProcess:
    """`meter run --config` in a subprocess, on free ports, with its own state directory."""

    def __init__(self, workdir: Path, *, sip: dict | None = None, node: dict | None = None,
                 licensing: dict | None = None, zones: list[dict] | None = None, extra: str = "",
                 h323: dict | None = None, admin: dict | None = None):
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.sip_port = free_port()
        self.admin_port = free_port()
        self.ras_port = free_port()
        self.state_dir = workdir / "state"
        sip = {"host": "127.0.0.1", "port": self.sip_port, **(sip or {})}
        node = {"name": "meter-test", "state_dir": str(self.state_dir), **(node or {})}
        h323 = {"host": "127.0.0.1", "ras_port": self.ras_port, **(h323 or {})}
        sections = {"node": node, "sip": sip, "h323": h323, "admin": {"port": self.admin_port, **(admin or {})},
                    "licensing": licensing or {}, "log": {"level": "debug"}}
        text = "".join(f"[{name}]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in table.items()) + "\n"
                       for name, table in sections.items())
        for zone in zones or []:
            text += "[[zones]]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in zone.items()) + "\n"
        self.config = workdir / "meter.toml"
        self.config.write_text(text + extra)
        self.log_path = workdir / "meter.log"
        self.proc: subprocess.Popen | None = None
        self.meter_cli("init")  # `meter run` refuses a state directory without a node identity

    def meter_cli(self, *args: str) -> str:
        result = subprocess.run([sys.executable, "-m", "meter", *args, "--state-dir", str(self.state_dir)],
                                capture_output=True, text=True, timeout=60, cwd=self.workdir)
        assert result.returncode == 0, f"meter {' '.join(args)} failed: {result.stderr}"
        return result.stdout

    def install_keys(self, quantities: dict[str, int]) -> None:
        """Issue lab option keys bound to this node's serial and install them (K1, K4)."""
        # `meter init` created the lab issuer key this node trusts.
        for index, (option, quantity) in enumerate(quantities.items(), start=1):
            key = self.meter_cli("keys", "issue", "--option", option, "--quantity", str(quantity)).strip().split()[-1]
            self.meter_cli("xconfiguration", "option", str(index), "key", key)

    def start(self, *, nofile: int | None = None) -> "MeterProcess":
        """``nofile``: the node's RLIMIT_NOFILE, soft and hard (a systemd LimitNOFILE=)."""
        self.log = open(self.log_path, "w")
        limit = None if nofile is None else (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile)))
        self.proc = subprocess.Popen([sys.executable, "-m", "meter", "run", "--config", str(self.config)],
                                     stdout=self.log, stderr=subprocess.STDOUT, cwd=self.workdir, preexec_fn=limit)
        wait_until(lambda: self.proc.poll() is None and http_get(self.url("/healthz")) == b"ok\n", 30,
                   f"meter to start (log: {self.log_tail()})")
        return self

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.admin_port}{path}"

    def api(self, resource: str):
        """The resource's JSON; a paged listing (registrations, calls) as the list of every page's items."""
        doc = json.loads(http_get(self.url(f"/api/{resource}")))
        if not (isinstance(doc, dict) and "items" in doc and "next" in doc):
            return doc
        items = doc["items"]
        while doc["next"]:
            after = urllib.parse.quote(doc["next"], safe="")
            doc = json.loads(http_get(self.url(f"/api/{resource}{'&' if '?' in resource else '?'}after={after}")))
            items += doc["items"]
        return items

    def metrics_text(self) -> str:
        return http_get(self.url("/metrics")).decode()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-lines:])
        except OSError:
            return "<no log>"

    def stop(self) -> int:
        rc = stop_process(self.proc, 15)
        if hasattr(self, "log"):
            self.log.close()
        return rc or 0


class PrometheusProcess:
    """Debian's prometheus, scraping given targets every second, with its HTTP query API."""

    def __init__(self, workdir: Path, targets: list[str]):
        exe = shutil.which("prometheus")
        assert exe, "prometheus not found: install Debian's prometheus package (make test does)"
        self.exe = exe
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        (workdir / "prometheus.yml").write_text(textwrap.dedent(f"""\
            global:
              scrape_interval: 1s
              evaluation_interval: 1s
            scrape_configs:
              - job_name: meter
                static_configs:
                  - targets: {json.dumps(targets)}
            """))
        self.proc: subprocess.Popen | None = None

    def start(self) -> "PrometheusProcess":
        self.log = open(self.workdir / "prometheus.log", "w")
        self.proc = subprocess.Popen(
            [self.exe, f"--config.file={self.workdir / 'prometheus.yml'}",
             f"--storage.tsdb.path={self.workdir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=self.workdir)
        wait_until(lambda: self.proc.poll() is None and b"Ready" in http_get(f"http://127.0.0.1:{self.port}/-/ready"),
                   60, "prometheus to be ready")
        return self

    def query(self, expr: str) -> list[dict]:
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        doc = json.loads(http_get(url))
        assert doc["status"] == "success", doc
        return doc["data"]["result"]

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def wait_value(self, expr: str, expected: float, timeout: float = 20.0) -> float:
        """Wait until a fresh scrape shows ``expr == expected``; fail with the last value seen."""
        seen = []

        def check():
            value = self.value(expr)
            seen.append(value)
            return value == expected

        try:
            wait_until(check, timeout, f"{expr} == {expected}", interval=0.5)
        except AssertionError:
            raise AssertionError(f"prometheus: {expr} is {seen[-1] if seen else None}, expected {expected}") from None
        return expected

    def stop(self) -> None:
        stop_process(self.proc, 15)
        if hasattr(self, "log"):
            self.log.close()


def promtool_check_metrics(text: str) -> str:
    exe = shutil.which("promtool")
    assert exe, "promtool not found: install Debian's prometheus package (make test does)"
    result = subprocess.run([exe, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"promtool check metrics failed:\n{result.stdout}{result.stderr}"
    return result.stdout + result.stderr


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)
