"""Start-up errors as clear as the config errors: each stops `meter run` (a real process) with one
line on stderr and no traceback: an unknown platform (P3: also `check-config`), an unusable state
directory, a listen port in use (its config key and "address already in use"), and a second node on
the same state directory (the lock)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.peers import MeterProcess

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def meter(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "meter", *args], capture_output=True, text=True,
                          timeout=60, cwd=cwd)


def one_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0, result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_p3_an_unknown_platform_stops_check_config_and_run(tmp_path):
    node = MeterProcess(tmp_path / "n", node={"platform": "enormous_vm"})
    for command in ("check-config", "run --config"):
        line = one_line(meter(*command.split(), str(node.config), cwd=tmp_path))
        assert "[node] platform" in line and "unknown platform 'enormous_vm'" in line and "large_vm" in line, line


def test_a_state_directory_that_is_not_a_directory_stops_start_up(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the state directory should be\n")
    node = MeterProcess(tmp_path / "n", node={"state_dir": str(blocker)})
    line = one_line(meter("run", "--config", str(node.config), cwd=tmp_path))
    assert line.startswith("meter: not starting:") and "[node] state_dir" in line and "not a directory" in line


@pytest.mark.parametrize("key,kind", [("[sip] port", "udp"), ("[admin] port", "tcp")])
def test_a_listen_port_in_use_names_its_key(tmp_path, key, kind):
    node = MeterProcess(tmp_path / "n")
    port = node.sip_port if key == "[sip] port" else node.admin_port
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", port))
        if kind == "tcp":
            holder.listen()
        line = one_line(meter("run", "--config", str(node.config), cwd=tmp_path))
    assert f"{key} = {port}" in line and "address already in use" in line, line


def test_k2_a_second_node_on_the_same_state_directory_is_refused_by_the_lock(tmp_path):
    first = MeterProcess(tmp_path / "first").start()
    try:
        second = MeterProcess(tmp_path / "second", node={"state_dir": str(first.state_dir)})
        line = one_line(meter("run", "--config", str(second.config), cwd=tmp_path))
        assert "another node is running on the state directory" in line and str(first.state_dir) in line
        assert f"pid {first.proc.pid}" in line
        assert first.proc.poll() is None  # the first node is untouched
    finally:
        assert first.stop() == 0
    # the lock goes with the process: the state directory serves a node again
    again = MeterProcess(tmp_path / "third", node={"state_dir": str(first.state_dir)}).start()
    assert again.stop() == 0
