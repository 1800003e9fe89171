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


def alarm_ids(node: MeterProcess) -> set[str]:
    return {alarm["id"] for alarm in node.api("alarms")}


OUTAGE_METRIC = 'meter_alarm_active{alarm="cluster-store-unreachable",rule="P1"} 1.0'


def test_p1_p2_redis_outage_two_nodes_stay_within_the_pool_and_alarm(tmp_path):
    """Issue 10 item 6 (P1, P2), outage = "share": 4 room licenses, all keyed on A; redis-server
    stops; 4 endpoints register on each node: the two nodes together never pass 4 (each takes its
    half of what was free), both raise `cluster-store-unreachable` (API and meter_alarm_active);
    redis-server is back: the alarm clears on both."""
    server = RedisServer(tmp_path / "redis").start()
    nodes, uas = [], []
    try:
        async def scenario():
            cluster = ('[cluster]\nstore = "redis"\nname = "lab"\nsync_interval = 0.2\noutage = "share"\n'
                       f'redis_url = "redis://127.0.0.1:{server.port}/0"\n')
            a = MeterProcess(tmp_path / "a", node={"name": "node-a"}, licensing={"enforcement": "enforce"},
                             extra=cluster)
            b = MeterProcess(tmp_path / "b", node={"name": "node-b"}, licensing={"enforcement": "enforce"},
                             extra=cluster)
            nodes.extend([a, b])
            a.install_keys({"ROOM": 4})
            a.start()
            b.start()
            wait_until(lambda: b.api("licenses")["licenses"]["room"]["capacity"] == 4, 20, "B to see A's keys (P1)")
            server.stop()
            for node in (a, b):
                wait_until(lambda: "cluster-store-unreachable" in alarm_ids(node), 30, f"{node.workdir.name}'s alarm")
                assert OUTAGE_METRIC in node.metrics_text()
            accepted = {}
            for node in (a, b):
                statuses = []
                for i in range(4):
                    ua = await SipUA.open(f"{node.workdir.name}{i}", ("127.0.0.1", node.sip_port), domain="lab.test")
                    uas.append(ua)
                    statuses.append((await register(ua, ROOM)).status)
                assert set(statuses) <= {200, 503}
                accepted[node.workdir.name] = statuses.count(200)
            in_use = {n.workdir.name: n.api("licenses")["licenses"]["room"]["in_use"] for n in (a, b)}
            assert sum(in_use.values()) <= 4 and in_use == accepted == {"a": 2, "b": 2}
            server.start()  # same port, empty: the nodes republish and meet again
            for node in (a, b):
                wait_until(lambda: "cluster-store-unreachable" not in alarm_ids(node), 30,
                           f"{node.workdir.name}'s alarm to clear")
                assert OUTAGE_METRIC not in node.metrics_text()
            wait_until(lambda: a.api("licenses")["licenses"]["room"]["in_use_cluster"] == 4, 20, "the pool rejoined")

        async def closing_endpoints():
            try:
                await scenario()
            finally:
                for ua in uas:
                    ua.close()

        asyncio.run(closing_endpoints())
    finally:
        for node in nodes:
            node.stop()
        server.stop()


def test_p2_a_lost_peers_licenses_survive_a_redis_restart_and_a_node_restart(tmp_path):
    """Issue 10 item 6 (P2), end to end: A holds 25 RMS, B 5. B stops and is lost; redis-server
    restarts empty: A still counts 30 (it republishes B's record from its own state); A restarts on
    a Redis restarted empty again: still 30 and the P2 alarm. B comes back: the alarm clears."""
    server = RedisServer(tmp_path / "redis").start()
    cluster = ('[cluster]\nstore = "redis"\nname = "lab"\nsync_interval = 0.2\npeer_timeout = 1.0\n'
               f'redis_url = "redis://127.0.0.1:{server.port}/0"\n')
    a = MeterProcess(tmp_path / "a", node={"name": "node-a"}, licensing={"enforcement": "enforce"}, extra=cluster)
    b = MeterProcess(tmp_path / "b", node={"name": "node-b"}, licensing={"enforcement": "enforce"}, extra=cluster)

    def rms_capacity(node: MeterProcess) -> int:
        return node.api("licenses")["licenses"]["rms"]["capacity"]

    try:
        a.install_keys({"RMS": 25})
        b.install_keys({"RMS": 5})
        a.start()
        b.start()
        wait_until(lambda: rms_capacity(a) == 30 and rms_capacity(b) == 30, 20, "the pool of 30 (P1)")
        b.stop()
        wait_until(lambda: "peer-lost-node-b" in alarm_ids(a), 20, "A to see B lost (P2)")
        server.stop()
        server.start()  # empty: no persistence
        wait_until(lambda: server.client().hget("lab:peer:node-b", "lic.rms") == "5", 20, "A to republish B")
        assert rms_capacity(a) == 30
        a.stop()
        server.stop()
        server.start()  # empty again, while A is down
        a.start()
        assert rms_capacity(a) == 30 and "peer-lost-node-b" in alarm_ids(a)
        wait_until(lambda: server.client().hget("lab:peer:node-b", "lic.rms") == "5", 20, "A to republish B again")
        b.start()
        wait_until(lambda: "peer-lost-node-b" not in alarm_ids(a), 20, "B back: the alarm clears")
        assert rms_capacity(a) == 30
        assert "cluster.lost_peer_forgotten" in a.log_path.read_text()
    finally:
        a.stop()
        b.stop()
        server.stop()


def test_p1_redis_outage_fail_closed_refuses_new_calls_on_both_nodes(tmp_path):
    """Issue 10 item 6 (P1), outage = "fail_closed": with Redis stopped neither node takes a new RMS
    (503 rms_exhausted) although the pool has room; a registration refresh (a charge already held)
    still succeeds and a call in progress hangs up; Redis back: the alarm clears and calls go through."""
    server = RedisServer(tmp_path / "redis").start()
    nodes = []
    try:
        async def scenario():
            itsp = await SipUA.open("itsp", ("127.0.0.1", 9), domain="itsp.example")
            callee = Callee(itsp, SDP_ANSWER)
            zones = [{"name": "itsp", "kind": "third_party_sip", "match": ["domain:itsp.example"],
                      "target": f"127.0.0.1:{itsp.port}"}]
            cluster = ('[cluster]\nstore = "redis"\nname = "lab"\nsync_interval = 0.2\noutage = "fail_closed"\n'
                       f'redis_url = "redis://127.0.0.1:{server.port}/0"\n')
            a = MeterProcess(tmp_path / "a", node={"name": "node-a"}, licensing={"enforcement": "enforce"},
                             zones=zones, extra=cluster)
            b = MeterProcess(tmp_path / "b", node={"name": "node-b"}, licensing={"enforcement": "enforce"},
                             zones=zones, extra=cluster)
            nodes.extend([a, b])
            a.install_keys({"RMS": 4, "ROOM": 4})
            a.start()
            b.start()
            wait_until(lambda: b.api("licenses")["licenses"]["rms"]["capacity"] == 4, 20, "B to see A's keys (P1)")
            alice = await SipUA.open("alice", ("127.0.0.1", a.sip_port), domain="lab.test")
            bob = await SipUA.open("bob", ("127.0.0.1", b.sip_port), domain="lab.test")
            try:
                assert (await register(alice, ROOM)).status == 200 and (await register(bob, ROOM)).status == 200
                first, dialog = await call(alice, "sip:+1@itsp.example", SDP_OFFER)
                assert first.status == 200
                server.stop()
                for node in (a, b):
                    wait_until(lambda: "cluster-store-unreachable" in alarm_ids(node), 30,
                               f"{node.workdir.name}'s alarm")
                for ua, number in ((alice, "+2"), (bob, "+3")):
                    refused, _ = await call(ua, f"sip:{number}@itsp.example", SDP_OFFER)
                    assert refused.status == 503 and "rms_exhausted" in refused.header("warning")
                assert (await register(bob, ROOM)).status == 200  # a refresh holds what it held
                await hang_up(alice, dialog)
                assert a.api("licenses")["licenses"]["rms"]["in_use"] == 0
                server.start()
                for node in (a, b):
                    wait_until(lambda: "cluster-store-unreachable" not in alarm_ids(node), 30,
                               f"{node.workdir.name}'s alarm to clear")
                again, dialog = await call(bob, "sip:+4@itsp.example", SDP_OFFER)
                assert again.status == 200
                await hang_up(bob, dialog)
            finally:
                callee.close()
                alice.close()
                bob.close()

        asyncio.run(scenario())
    finally:
        for node in nodes:
            node.stop()
        server.stop()
