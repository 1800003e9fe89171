"""State that survives a restart, with a real node process (issue 10 item 5).

20 endpoints register, 5 of them call a third-party SIP trunk (one RMS each, C2, C3), the node is
killed with SIGKILL mid-call and started again on the same state directory. Then, from its admin
API: the 20 registrations, the 5 calls and the licenses in use are what they were; an inbound call
to a restored alias reaches its contact (no 404); a BYE after the restart releases its RMS; every
endpoint refreshing its registration changes nothing (no double count).
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys

import pytest

from tests.integration.peers import MeterProcess, wait_until
from tests.integration.test_metering_calls import ROOM, Callee, call, hang_up
from tests.integration.test_metering_prometheus import register
from tests.sipclient import SDP_ANSWER, SDP_OFFER, SipUA

pytestmark = pytest.mark.integration

ENDPOINTS = 20
CALLS = 5


def listing(node: MeterProcess, resource: str) -> list[dict]:
    return node.api(resource)  # every page's items


def in_use(node: MeterProcess) -> dict[str, float]:
    licenses = node.api("licenses")["licenses"]
    return {name: licenses[name]["in_use"] for name in ("room", "desktop", "rms")}


def stored(node: MeterProcess) -> tuple[int, int]:
    """(registrations, calls) the node has written to its state database so far."""
    with sqlite3.connect(node.state_dir / "licensing.sqlite", timeout=5) as db:
        counts = tuple(db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("registrations", "calls"))
    db.close()
    return counts


def test_kill_9_mid_call_then_restart_keeps_registrations_calls_and_counts(tmp_path):
    async def scenario():
        far = await SipUA.open("itsp", ("127.0.0.1", 9), domain="far.example")
        node = MeterProcess(tmp_path / "node", licensing={"enforcement": "enforce"}, zones=[
            {"name": "itsp", "kind": "third_party_sip", "match": ["domain:itsp.example"],
             "target": f"127.0.0.1:{far.port}"}])
        node.install_keys({"ROOM": ENDPOINTS + 5, "RMS": 10})
        node.start()
        trunk = Callee(far, SDP_ANSWER)
        proxy = ("127.0.0.1", node.sip_port)
        endpoints = [await SipUA.open(f"ep{i:02d}", proxy, domain="lab.test") for i in range(ENDPOINTS)]
        try:
            for ua in endpoints:
                assert (await register(ua, ROOM, expires=600)).status == 200
            dialogs = []
            for i, ua in enumerate(endpoints[:CALLS]):
                final, dialog = await call(ua, f"sip:+4930{i:04d}@itsp.example", SDP_OFFER)
                assert final.status == 200, final
                dialogs.append(dialog)
            before = in_use(node)
            assert before == {"room": ENDPOINTS, "desktop": 0, "rms": CALLS}
            registrations = sorted((r["alias"], r["license"], tuple(r["rules"])) for r in listing(node, "registrations"))
            calls = sorted((c["call_id"], c["call_class"], c["units"], tuple(c["rules"])) for c in listing(node, "calls"))
            assert len(registrations) == ENDPOINTS and len(calls) == CALLS
            # write-behind: every change reaches the database within a flush interval (0.2 s)
            wait_until(lambda: stored(node) == (ENDPOINTS, CALLS), 10, "the state database to hold every change")

            node.proc.send_signal(signal.SIGKILL)  # kill -9 mid-call: no shutdown, no release
            node.proc.wait(10)
            node.log.close()
            node.start()
            assert "state.restored" in node.log_path.read_text()

            assert in_use(node) == before
            assert sorted((r["alias"], r["license"], tuple(r["rules"]))
                          for r in listing(node, "registrations")) == registrations
            assert sorted((c["call_id"], c["call_class"], c["units"], tuple(c["rules"]))
                          for c in listing(node, "calls")) == calls
            sip_calls = node.api("sip")
            assert sip_calls["bindings"] == ENDPOINTS and sip_calls["calls"] == CALLS

            # an inbound call to a restored alias reaches its contact (RFC 3261 §16.5), not 404
            caller, callee = endpoints[10], endpoints[11]
            invite = caller.invite(callee.aor)
            at_callee = await callee.expect(method="INVITE", timeout=10)
            callee.reply(at_callee, 486)
            final = await caller.final("INVITE", call_id=invite.call_id, timeout=10)
            assert final.status == 486
            caller.ack_non2xx(invite, final)

            # a BYE after the restart finds its call and releases its RMS (principle 4)
            await hang_up(endpoints[0], dialogs[0])
            wait_until(lambda: in_use(node)["rms"] == CALLS - 1, 10, "the BYE to release one RMS")
            assert len(listing(node, "calls")) == CALLS - 1

            # every endpoint refreshes: a restored binding is confirmed, not charged again
            for ua in endpoints:
                assert (await register(ua, ROOM, expires=600)).status == 200
            assert in_use(node) == {"room": ENDPOINTS, "desktop": 0, "rms": CALLS - 1}
            assert len(listing(node, "registrations")) == ENDPOINTS

            for dialog, ua in zip(dialogs[1:], endpoints[1:CALLS]):
                await hang_up(ua, dialog)
            wait_until(lambda: in_use(node)["rms"] == 0, 10, "every RMS released")
        finally:
            trunk.close()
            for ua in endpoints:
                ua.close()
            rc = node.stop()
        assert rc == 0, node.log_tail()

    asyncio.run(scenario())


def test_a_node_whose_state_database_was_emptied_does_not_start_with_a_new_serial(tmp_path):
    """The incident: licensing.sqlite truncated to 0 bytes. `meter run` stops with one line naming the
    file and `meter init`; `meter restore` of a backup brings the same serial back."""
    node = MeterProcess(tmp_path / "node")
    backup = tmp_path / "node.backup"
    node.meter_cli("backup", str(backup))
    serial = node.meter_cli("xstatus", "options").split("Serial: ")[1].split()[0]
    (node.state_dir / "licensing.sqlite").write_bytes(b"")
    result = subprocess.run([sys.executable, "-m", "meter", "run", "--config", str(node.config)],
                            capture_output=True, text=True, timeout=60, cwd=node.workdir)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "licensing.sqlite" in result.stderr and "meter init" in result.stderr
    node.meter_cli("restore", str(backup), "--force")
    node.start()
    try:
        assert node.api("licenses")["option_keys"]["serial"] == serial
    finally:
        assert node.stop() == 0


def test_a_graceful_restart_also_keeps_registrations_and_calls(tmp_path):
    """SIGTERM: the node writes what waits, then its shutdown releases stay out of the database."""
    async def scenario():
        far = await SipUA.open("itsp", ("127.0.0.1", 9), domain="far.example")
        node = MeterProcess(tmp_path / "node", zones=[
            {"name": "itsp", "kind": "third_party_sip", "match": ["domain:itsp.example"],
             "target": f"127.0.0.1:{far.port}"}])
        node.start()
        trunk = Callee(far, SDP_ANSWER)
        endpoints = [await SipUA.open(f"ep{i}", ("127.0.0.1", node.sip_port), domain="lab.test") for i in range(3)]
        try:
            for ua in endpoints:
                assert (await register(ua, ROOM, expires=600)).status == 200
            final, dialog = await call(endpoints[0], "sip:+49300001@itsp.example", SDP_OFFER)
            assert final.status == 200
            before = in_use(node)
            assert before == {"room": 3, "desktop": 0, "rms": 1}
            assert node.stop() == 0  # SIGTERM, at once: no wait for a flush interval
            node.start()
            assert in_use(node) == before
            assert len(listing(node, "registrations")) == 3 and len(listing(node, "calls")) == 1
            await hang_up(endpoints[0], dialog)
            wait_until(lambda: in_use(node)["rms"] == 0, 10, "the BYE to release the RMS")
        finally:
            trunk.close()
            for ua in endpoints:
                ua.close()
            rc = node.stop()
        assert rc == 0, node.log_tail()

    asyncio.run(scenario())
