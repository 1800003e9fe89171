"""Smart Licensing end to end with real processes (issue 13, "How it will be checked"): the lab Smart
Software Manager (`meter ssm serve`, its timers compressed ten days per second), a node
(`meter run`) and an authenticating tinyproxy, all over TLS:

evaluation -> token registration through the proxy (`meter smart register`) -> real SIP
registrations and calls -> usage reported -> out of compliance when usage passes the pool -> back
in compliance when the pool grows -> manager unreachable for 91 simulated days -> authorization
expired -> deregister returns the entitlements (the manager's pool shows them free).
Rules S1, S3, S4, S6, S7, S8, S10, S11, P6.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.request

import pytest

from meter.licensing import smart
from tests.integration.peers import MeterProcess, wait_until
from tests.integration.smartlab import Manager, Proxy
from tests.integration.test_metering_calls import ROOM, Callee, call, hang_up
from tests.integration.test_metering_prometheus import register
from tests.sipclient import SDP_ANSWER, SDP_OFFER, SipUA

pytestmark = pytest.mark.integration
TIME_FACTOR = 864000.0  # ten simulated days per real second: authorization renewed every 3 s, lasts 9 s


def post(node: MeterProcess, path: str, body: dict | None = None) -> dict:
    token = (node.state_dir / "admin-token").read_text().strip()
    request = urllib.request.Request(node.url(f"/api/v1/{path}"), data=json.dumps(body or {}).encode(),
                                     method="POST", headers={"Authorization": f"Bearer {token}",
                                                             "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as reply:
        return json.load(reply)


def smart_view(node: MeterProcess) -> dict:
    return node.api("v1/smart")


def rms_pool(manager: Manager, va: str) -> dict:
    account = next(a for a in manager.show()["accounts"] if a["virtual_account"] == va)
    return account["pools"]["EXPWY_RMS"]


def test_smart_licensing_end_to_end_with_manager_node_and_proxy(tmp_path):
    manager = Manager(tmp_path / "ssm", time_factor=TIME_FACTOR)
    proxy = Proxy(tmp_path / "proxy")
    va = manager.account(rms=1, room=2)
    node = None
    try:
        async def scenario():
            nonlocal node
            far = await SipUA.open("itsp", ("127.0.0.1", 9), domain="far.example")
            node = MeterProcess(tmp_path / "node", zones=[
                {"name": "itsp", "kind": "third_party_sip", "match": ["domain:itsp.example"],
                 "target": f"127.0.0.1:{far.port}"}],
                extra=f'[smart]\ndirect_url = "{manager.base}"\nca_file = "{manager.ca}"\n'
                      'usage_interval = 1.0\nretry = 1.0\ntimeout = 3.0\nhostname = "expe-e2e.lab"\n')
            node.install_keys({"RMS": 40})
            node.meter_cli("mode", "smart", "--yes")
            node.start()
            trunk = Callee(far, SDP_ANSWER)
            endpoints = [await SipUA.open(f"room{i}", ("127.0.0.1", node.sip_port), domain="lab.test") for i in range(2)]
            try:
                # S1: evaluation; L3: the 40 RMS of the option key count for nothing
                view = smart_view(node)
                assert view["mode"] == "smart" and view["authorization"]["status"] == smart.EVALUATION
                assert view["evaluation"]["days_left"] > 89

                # S3 + S4 Proxy: `meter smart register` through tinyproxy with basic auth
                token = manager.token(va, "--expires-days", "365")  # 36 real seconds at this time factor
                env = dict(os.environ, METER_SMART_PROXY_PASSWORD=proxy.password)
                done = subprocess.run(
                    [sys.executable, "-m", "meter", "smart", "register", token, "--proxy", f"127.0.0.1:{proxy.port}",
                     "--proxy-user", proxy.user, "--admin", node.url(""), "--state-dir", str(node.state_dir)],
                    capture_output=True, text=True, timeout=60, env=env)
                assert done.returncode == 0, done.stderr
                wait_until(lambda: smart_view(node)["authorization"]["authorized_at"] is not None, 20,
                           "the first authorization")
                view = smart_view(node)
                assert view["registration"]["status"] == smart.REGISTERED and view["virtual_account"] == va
                assert view["transport"]["kind"] == "proxy" and "CONNECT" in proxy.log()

                # real SIP: two room systems register, one calls the trunk: one RMS in use
                for ua in endpoints:
                    assert (await register(ua, ROOM, expires=600)).status == 200
                final, first = await call(endpoints[0], "sip:+493000001@itsp.example", SDP_OFFER)
                assert final.status == 200
                # S11: usage reported; P6: capacity is the pool (1), not the keys (40)
                wait_until(lambda: manager.show()["instances"][0]["usage"].get("EXPWY_RMS") == 1, 20,
                           "the manager to receive one RMS in use")
                wait_until(lambda: smart_view(node)["authorization"]["status"] == smart.AUTHORIZED, 20, "authorized")
                assert node.api("licenses")["licenses"]["rms"]["capacity"] == 1

                # a second call passes the pool: out of compliance, an alarm, nothing blocked
                final, second = await call(endpoints[1], "sip:+493000002@itsp.example", SDP_OFFER)
                assert final.status == 200
                wait_until(lambda: smart_view(node)["authorization"]["status"] == smart.OUT_OF_COMPLIANCE, 20,
                           "out of compliance")
                rows = {r["license"]: r for r in smart_view(node)["usage"]}
                assert rows["rms"]["status"] == smart.TAG_OUT_OF_COMPLIANCE and rows["rms"]["in_use"] == 2
                wait_until(lambda: smart.ALARM_OUT_OF_COMPLIANCE in [
                    a["id"] for a in node.api("v1/alarms")["items"] if a["cleared_at"] is None], 10,
                    "the out-of-compliance alarm")
                assert 'meter_smart_tag_compliant{license="rms",status="Out of compliance",tag="EXPWY_RMS"} 0.0' \
                    in node.metrics_text()

                # the pool grows: back in compliance at the next authorization
                manager.pool(va, "rms", 5)
                wait_until(lambda: smart_view(node)["authorization"]["status"] == smart.AUTHORIZED, 20,
                           "back in compliance")
                assert node.api("licenses")["licenses"]["rms"]["capacity"] == 5

                # the manager unreachable for more than 90 simulated days (9 s): authorization expired
                manager.stop()
                wait_until(lambda: smart_view(node)["authorization"]["status"] == smart.AUTH_EXPIRED, 30,
                           "authorization expired")
                view = smart_view(node)
                assert view["authorization"]["last_attempt"]["ok"] is False
                assert "proxy" in view["authorization"]["last_attempt"]["error"]
                wait_until(lambda: smart.ALARM_AUTH_EXPIRED in [
                    a["id"] for a in node.api("v1/alarms")["items"] if a["cleared_at"] is None], 10,
                    "the authorization-expired alarm")

                # contact again, then deregister: the manager's pool shows the licenses free (S8)
                manager.start()
                await hang_up(endpoints[1], second)
                outcome = post(node, "smart/deregister")
                assert outcome["ok"] and outcome["manager_told"], outcome
                assert outcome["smart"]["registration"]["status"] == smart.UNREGISTERED
                pool = rms_pool(manager, va)
                assert pool["in_use"] == 0 and pool["available"] == 5
                assert manager.show()["instances"] == []
                await hang_up(endpoints[0], first)
            finally:
                trunk.close()
                far.close()
                for ua in endpoints:
                    ua.close()

        asyncio.run(scenario())
    finally:
        if node is not None and node.proc is not None:
            rc = node.stop()
            assert rc == 0, node.log_tail()
        manager.stop()
        proxy.stop()
