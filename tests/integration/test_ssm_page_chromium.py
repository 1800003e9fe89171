"""The lab manager's page in headless Chromium (Debian's), against `meter ssm serve`: what the
lab admin sees of accounts, pools with in-use and compliance (S10), instances and tokens."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess

import aiohttp
import pytest

from tests.integration.test_ssm_protocol import Agent, Manager, meter, new_token, new_va, trusting

pytestmark = pytest.mark.integration


def chromium_dump_dom(url: str, profile) -> str:
    exe = shutil.which("chromium")
    assert exe, "chromium not found: install Debian's chromium package (make test does)"
    # The manager's CA is not in Chromium's store: the page is what is under test here (the TLS
    # trust is test_ssm_protocol's). No sandbox as root, no background network calls.
    result = subprocess.run(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--ignore-certificate-errors", f"--user-data-dir={profile}", "--dump-dom", url],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_s10_the_page_shows_pools_in_use_compliance_instances_and_tokens(tmp_path):
    state = tmp_path / "state"
    meter("ssm", "init", "--state", str(state), "--port", "0")
    manager = Manager(state)
    try:
        va = new_va(manager, rms=2, room=5)
        meter("ssm", "pool", "set", va, "cmr", "3", "--end", "2001-01-01", "--state", str(state))
        token = new_token(manager, va)

        async def usage():
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trusting(state / "ca.pem"))) as session:
                agent = Agent(session, manager.base, "expe-page.lab")
                assert (await agent.register(token))[0] == 200
                status, _ = await agent.post("authorize", {"usage": {"EXPWY_RMS": 3, "EXPWY_ROOM": 1}, "hostname": "expe-page.lab"})
                assert status == 200
                return agent.instance_id

        instance = asyncio.run(usage())
        dom = chromium_dump_dom(manager.root + "/", tmp_path / "profile")
    finally:
        manager.stop()
    cells = lambda row_id: re.findall(r"<td[^>]*>([^<]*)</td>", re.search(f'<tr id="{row_id}">(.*?)</tr>', dom).group(1))
    # smart account, virtual account, tag, purchased, ends, valid, in use, available, compliance
    assert cells(f"pool-{va}-EXPWY_RMS")[5:] == ["2", "3", "0", "out of compliance"]
    assert cells(f"pool-{va}-EXPWY_ROOM")[5:] == ["5", "1", "4", "in compliance"]
    cmr = cells(f"pool-{va}-EXPWY_CMR")
    assert cmr[3] == "3" and cmr[4].endswith("(ended)") and cmr[5] == "0"
    row = cells(f"instance-{instance}")
    assert row[1] == "expe-page.lab" and row[3] == va and row[7] == "authorized"
    assert cells(f"token-{token[:8]}")[3] == "1/∞" and token not in dom
