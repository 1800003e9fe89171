"""`meter registrations` and `meter calls` list what a running node meters, with rule IDs (R9, C1)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from tests.integration.peers import MeterProcess
from tests.integration.test_metering_calls import SDP_ANSWER, SDP_OFFER, Callee, call, hang_up
from tests.integration.test_metering_prometheus import register
from tests.sipclient import SipUA

pytestmark = pytest.mark.integration


def meter(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "meter", *args], capture_output=True, text=True, timeout=60)


def test_r9_c1_cli_lists_registrations_and_calls_with_their_rules(tmp_path):
    node = MeterProcess(tmp_path / "cli")
    node.start()
    admin = f"http://127.0.0.1:{node.admin_port}"
    try:
        async def scenario():
            proxy = ("127.0.0.1", node.sip_port)
            alice = await SipUA.open("alice", proxy, domain="lab.test")
            bob = await SipUA.open("bob", proxy, domain="lab.test")
            assert (await register(alice, "TANDBERG/529 (ce9.15.3.17d0b8c2d7c) Cisco-DX80")).status == 200
            assert (await register(bob, "PolycomRealPresenceGroup500/5.0.1")).status == 200
            callee = Callee(bob, SDP_ANSWER)
            final, dialog = await call(alice, bob.aor, SDP_OFFER)
            assert final.status == 200
            regs = meter("registrations", "--admin", admin)
            calls = meter("calls", "--admin", admin)
            calls_json = json.loads(meter("calls", "--admin", admin, "--json").stdout)
            await hang_up(alice, dialog)
            callee.close()
            alice.close()
            return regs, calls, calls_json

        regs, calls, calls_json = asyncio.run(scenario())
    finally:
        node.stop()
    assert regs.returncode == 0, regs.stderr
    lines = regs.stdout.splitlines()
    assert lines[0].split()[:4] == ["ALIAS", "PROTOCOL", "DEVICE_CLASS", "LICENSE"]
    dx80 = next(line for line in lines if "sip:alice@lab.test" in line)
    assert "desktop" in dx80 and "DX80" in dx80 and "R2" in dx80
    assert "(2 rows)" in regs.stdout
    assert calls.returncode == 0 and "(1 row)" in calls.stdout
    assert calls_json[0]["callee"] == "sip:bob@lab.test" and "C1" in calls_json[0]["rules"]


def test_cli_says_clearly_when_the_node_is_not_reachable():
    result = meter("calls", "--admin", "http://127.0.0.1:9")
    assert result.returncode == 1
    assert "cannot reach the node at http://127.0.0.1:9" in result.stderr
