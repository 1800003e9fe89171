"""The status page, rendered by headless Chromium against a running node: what an operator sees."""

from __future__ import annotations

import asyncio
import shutil
import subprocess

import pytest

from tests.integration.peers import MeterProcess
from tests.integration.test_metering_prometheus import register
from tests.sipclient import SipUA

pytestmark = pytest.mark.integration


def chromium_dump_dom(url: str, profile) -> str:
    exe = shutil.which("chromium")
    assert exe, "chromium not found: install Debian's chromium package (make test does)"
    # Flags as this machine needs them: no sandbox as root, no background network calls.
    result = subprocess.run(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--dump-dom", url],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_r1_k6_status_page_shows_pools_in_use_and_capacity(tmp_path):
    node = MeterProcess(tmp_path / "page", licensing={"enforcement": "enforce"})
    node.install_keys({"ROOM": 7, "RMS": 3})
    node.start()
    try:
        async def two_rooms():
            for name in ("r1", "r2"):
                ua = await SipUA.open(name, ("127.0.0.1", node.sip_port), domain="lab.test")
                assert (await register(ua, "PolycomRealPresenceGroup500/5.0.1")).status == 200
                ua.close()

        asyncio.run(two_rooms())
        dom = chromium_dump_dom(node.url("/"), tmp_path / "profile")
    finally:
        node.stop()
    # The rows the page's script built from /api/licenses: license, in use, cluster, capacity.
    assert '<tr id="pool-room"><td>room</td><td class="n">2</td><td class="n">2</td><td class="n">7</td></tr>' in dom
    assert '<tr id="pool-rms"><td>rms</td><td class="n">0</td><td class="n">0</td><td class="n">3</td></tr>' in dom
    assert "meter-test (Expressway-C, enforce)" in dom
    assert "updated 20" in dom  # the script ran and reached the API
