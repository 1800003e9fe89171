"""Two running nodes share one license pool through a real Redis (P1): the RMS key installed on
one node carries a call placed through the other, and the pool refuses the next call on either."""

from __future__ import annotations

import asyncio

import pytest

from tests.integration.peers import MeterProcess, wait_until
from tests.integration.test_cluster_redis import RedisServer
from tests.integration.test_metering_calls import SDP_ANSWER, SDP_OFFER, Callee, call, hang_up
from tests.integration.test_metering_prometheus import register
from tests.sipclient import SipUA

pytestmark = pytest.mark.integration
ROOM = "TANDBERG/529 (ce11.40.1.1.10bdaa53ce2) Cisco-RoomKitMini"


def rms_in_use_cluster(node: MeterProcess) -> float:
    return node.api("licenses")["licenses"]["rms"]["in_use_cluster"]


def test_p1_two_nodes_pool_rms_through_redis(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    nodes = []
    try:
        async def scenario():
            itsp = await SipUA.open("itsp", ("127.0.0.1", 9), domain="itsp.example")
            callee = Callee(itsp, SDP_ANSWER)
            zones = [{"name": "itsp", "kind": "third_party_sip", "match": ["domain:itsp.example"],
                      "target": f"127.0.0.1:{itsp.port}"}]
            cluster = {"store": "redis", "redis_url": f"redis://127.0.0.1:{server.port}/0", "name": "lab",
                       "sync_interval": 0.2}
            extra = "[cluster]\n" + "".join(f'{k} = {v!r}\n'.replace("'", '"') for k, v in cluster.items())
            a = MeterProcess(tmp_path / "a", node={"name": "node-a"}, licensing={"enforcement": "enforce"},
                             zones=zones, extra=extra)
            b = MeterProcess(tmp_path / "b", node={"name": "node-b"}, licensing={"enforcement": "enforce"},
                             zones=zones, extra=extra)
            nodes.extend([a, b])
            a.install_keys({"RMS": 1, "ROOM": 2})      # the only keys of the cluster are on A
            a.start()
            b.start()
            wait_until(lambda: b.api("licenses")["licenses"]["rms"]["capacity"] == 1, 20, "B to see A's RMS key (P1)")
            alice = await SipUA.open("alice", ("127.0.0.1", b.sip_port), domain="lab.test")
            assert (await register(alice, ROOM)).status == 200  # B holds a room license from A's key
            first, dialog = await call(alice, "sip:+1@itsp.example", SDP_OFFER)
            assert first.status == 200                           # B draws A's RMS license
            wait_until(lambda: rms_in_use_cluster(a) == 1, 20, "A to see B's call in the pool")
            bob = await SipUA.open("bob", ("127.0.0.1", a.sip_port), domain="lab.test")
            assert (await register(bob, ROOM)).status == 200
            second, _ = await call(bob, "sip:+2@itsp.example", SDP_OFFER)
            assert second.status == 503 and "rms_exhausted" in second.header("warning")  # pool used up on B
            await hang_up(alice, dialog)
            wait_until(lambda: rms_in_use_cluster(a) == 0, 20, "the released license back in the pool")
            third, dialog3 = await call(bob, "sip:+3@itsp.example", SDP_OFFER)
            assert third.status == 200
            await hang_up(bob, dialog3)
            callee.close()
            alice.close()
            bob.close()

        asyncio.run(scenario())
    finally:
        for node in nodes:
            node.stop()
        server.stop()
