"""Two ledgers on two RedisPools sharing a REAL redis-server (Debian package) on a loopback port:
P1 pooling and shared usage, P5 (600 pooled, the survivor of a lost peer keeps 600 licenses for
P2's 14 days but carries at most 500 calls, P3), and a store that goes away and comes back.

Time in the ledgers is simulated with their `now` arguments (14 days pass without sleeping); only
the sync loop test waits for real, and it asserts what happened, never how fast.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import redis

from meter.cluster.redis_pool import RedisPool
from meter.cluster.sync import PEER_KEY_TTL_SECONDS, PoolSync
from meter import catalogs
from meter.licensing.calls import CallFacts, classify_call
from meter.licensing.ledger import Ledger
from meter.licensing.model import License
from meter.licensing.pool import GRACE_SECONDS, PEER_TIMEOUT_SECONDS
from meter.store.licensing import LicensingStore
from tests.integration.peers import stop_process

pytestmark = pytest.mark.integration

LARGE = catalogs.platform("large_vm")
VIDEO = classify_call(CallFacts("E", "local", "E", "sip", "external", "", "sip", m_lines=2))
DAY = 24 * 3600.0
REDIS_SERVER = "/usr/bin/redis-server"


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """redis-server in the foreground on 127.0.0.1:<port>, no persistence, files in its own temp dir."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_tcp_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log_path = workdir / f"redis-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "RedisServer":
        binary = REDIS_SERVER if os.path.exists(REDIS_SERVER) else shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed (Debian package redis-server; run `make deps`)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir), "--daemonize", "no"],
            stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                if redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1).ping():
                    return self
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)
        self.stop()
        pytest.fail(f"redis-server did not start on 127.0.0.1:{self.port}:\n{self.log_tail()}")

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True)

    def log_tail(self) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-20:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        stop_process(self.proc)
        if hasattr(self, "_log"):
            self._log.close()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


def peer(name: str, server: RedisServer, cluster: str, rms: int, now: float = 0.0, interval: float = 1.0):
    pool = RedisPool()
    ledger = Ledger(name, "E", LARGE, pool=pool, now=now)
    ledger.set_licenses({License.RMS: rms}, now)
    return ledger, PoolSync(pool, server.url, name, interval, cluster=cluster)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def rms(ledger: Ledger, now: float):
    return ledger.snapshot(now).licenses[License.RMS]


def test_p5_two_large_vms_pool_600_then_the_survivor_keeps_600_for_14_days_but_carries_500(redis_server):
    """P5 (P1, P2, P3) through a real Redis: 300 RMS on each of two large VMs give 600 concurrent
    video calls; peer-b stops heartbeating; peer-a keeps all 600 RMS for 14 days from peer-b's last
    heartbeat but carries at most 500 calls; after the 14 days its own 300 remain."""
    a, sa = peer("peer-a", redis_server, "p5", 300)
    b, sb = peer("peer-b", redis_server, "p5", 300)

    async def scenario():
        assert await sa.sync_once() and await sb.sync_once() and await sa.sync_once()
        assert rms(a, 1.0).capacity == 600 and rms(b, 1.0).capacity == 600
        assert all(d.ok for d in (a.charge_call(f"a{i}", VIDEO, 1.0) for i in range(300)))
        a.tick(1.0)
        assert await sa.sync_once() and await sb.sync_once()
        assert all(d.ok for d in (b.charge_call(f"b{i}", VIDEO, 1.0) for i in range(300)))
        b.tick(1.0)
        assert await sb.sync_once() and await sa.sync_once()
        assert rms(a, 1.0).in_use_cluster == 600 and rms(b, 1.0).in_use_cluster == 600
        assert a.charge_call("a-601", VIDEO, 1.0).reason == "rms_exhausted"
        assert b.charge_call("b-601", VIDEO, 1.0).reason == "rms_exhausted"

        # peer-b stops: no more heartbeats nor syncs (its process is gone, its record stays in Redis).
        lost = 1.0 + PEER_TIMEOUT_SECONDS + 1
        a.tick(lost)
        assert await sa.sync_once()
        assert a.alarms.is_active("peer-lost-peer-b")
        assert rms(a, lost).capacity == 600 and rms(a, lost).in_use_cluster == 300  # its calls are gone
        assert all(d.ok for d in (a.charge_call(f"a-more-{i}", VIDEO, lost) for i in range(200)))
        beyond = a.charge_call("a-501", VIDEO, lost)
        assert beyond.reason == "node_call_capacity" and "P3" in beyond.rules
        assert a.snapshot(lost).calls == 500

        last_heard = 1.0  # peer-b's last heartbeat
        assert redis_server.client().ttl("p5:peer:peer-b") > GRACE_SECONDS  # still readable for the grace
        day13 = last_heard + 13 * DAY
        a.tick(day13)
        assert await sa.sync_once()
        assert rms(a, day13).capacity == 600
        after = last_heard + GRACE_SECONDS + 1
        a.tick(after)
        assert await sa.sync_once()
        assert rms(a, after).capacity == 300 and not a.alarms.is_active("peer-lost-peer-b")
        for i in range(200):
            a.release(f"a-more-{i}", after)
        assert a.charge_call("a-301", VIDEO, after).reason == "rms_exhausted"
        await sa.close()
        await sb.close()  # only frees its connection: the test is over

    run(scenario())


def test_p1_usage_on_one_node_is_seen_by_the_other(redis_server):
    """P1: the pool and its usage are the cluster's, whichever peer holds the keys: peer-a holds none,
    a call charged on peer-a reduces what peer-b can charge, and releasing it gives the room back."""
    a, sa = peer("peer-a", redis_server, "p1", 0)
    b, sb = peer("peer-b", redis_server, "p1", 10)

    async def scenario():
        assert await sa.sync_once() and await sb.sync_once() and await sa.sync_once()
        assert rms(a, 1.0).capacity == 10  # peer-a has no keys of its own
        assert all(a.charge_call(f"a{i}", VIDEO, 1.0).ok for i in range(7))
        await sa.sync_once()
        await sb.sync_once()
        assert rms(b, 1.0).in_use_cluster == 7
        assert all(b.charge_call(f"b{i}", VIDEO, 1.0).ok for i in range(3))
        assert b.charge_call("b3", VIDEO, 1.0).reason == "rms_exhausted"
        await sb.sync_once()
        await sa.sync_once()
        assert a.charge_call("a7", VIDEO, 1.0).reason == "rms_exhausted"
        a.release("a0", 2.0)
        await sa.sync_once()
        await sb.sync_once()
        assert b.charge_call("b3", VIDEO, 2.0).ok
        await sb.sync_once()
        stored = redis_server.client().hgetall("p1:peer:peer-b")
        assert stored["lic.rms"] == "10" and stored["use.rms"] == "8"  # 4 video calls, half units (C4)
        await sa.close()
        await sb.close()

    run(scenario())


def test_the_sync_loop_carries_usage_between_nodes_by_itself(redis_server):
    """The periodic loop (no explicit sync): a charge on peer-a shows up on peer-b."""
    a, sa = peer("peer-a", redis_server, "loop", 5, interval=0.1)
    b, sb = peer("peer-b", redis_server, "loop", 5, interval=0.1)

    async def scenario():
        await sa.start()
        await sb.start()
        a.charge_call("a0", VIDEO, 1.0)
        for _ in range(200):  # up to 10 s; asserts the outcome, not the speed
            if b.pool.usage_elsewhere(License.RMS, 1.0, "peer-b") == 2 and rms(b, 1.0).capacity == 10:
                break
            await asyncio.sleep(0.05)
        assert rms(b, 1.0).capacity == 10 and rms(b, 1.0).in_use_cluster == 1
        await sa.close()
        await sb.close()
        assert sa.status().connected and sa.status().syncs_total >= 2

    run(scenario())


def test_redis_going_away_leaves_the_node_working_and_it_reconnects(tmp_path):
    """Store unreachable: the node charges against its cache within its share (P1: half of the 600
    free with two live peers at the last sync), the error is shown; when redis-server is back
    (empty: no persistence) the next sync republishes and the peers meet again."""
    server = RedisServer(tmp_path).start()
    try:
        a, sa = peer("peer-a", server, "outage", 300)
        b, sb = peer("peer-b", server, "outage", 300)

        async def scenario():
            assert await sa.sync_once() and await sb.sync_once() and await sa.sync_once()
            assert rms(a, 1.0).capacity == 600
            server.stop()
            assert not await sa.sync_once()
            status = sa.status()
            assert not status.connected and "ConnectionError" in status.last_error and status.failures_total >= 1
            assert all(a.charge_call(f"a{i}", VIDEO, 2.0).ok for i in range(300))  # 600 cached, its share
            assert a.charge_call("a300", VIDEO, 2.0).reason == "rms_exhausted"
            server.start()  # same port, empty store
            assert await sa.sync_once() and sa.status().connected
            assert await sb.sync_once()  # its connection went stale with the old server: reconnects
            assert rms(b, 2.0).in_use_cluster == 300 and rms(b, 2.0).capacity == 600
            assert a.pool.outage() is None and a.charge_call("a300", VIDEO, 2.0).ok  # the whole pool again
            await sa.close()
            await sb.close()

        run(scenario())
    finally:
        server.stop()


def test_keys_carry_the_cluster_prefix_and_a_ttl_longer_than_the_grace(redis_server):
    """P2: records expire on their own, but only long after the 14 days."""
    a, sa = peer("peer-a", redis_server, "ttl", 3)

    async def scenario():
        await sa.start()
        await sa.close()

    run(scenario())
    client = redis_server.client()
    assert sorted(client.scan_iter("ttl:*")) == ["ttl:peer:peer-a", "ttl:peers"]
    assert GRACE_SECONDS < client.ttl("ttl:peer:peer-a") <= PEER_KEY_TTL_SECONDS
    assert client.smembers("ttl:peers") == {"peer-a"}


def test_p2_a_lost_peers_14_days_survive_a_redis_restart_and_a_node_restart(tmp_path):
    """P2 (issue 10): peer-b (5 RMS) is lost; peer-a (25 RMS) keeps the instant and the licenses in
    its own SQLite state. redis-server restarts empty: peer-a republishes peer-b's record, so it keeps
    30 and a peer-c that joins now counts 30 too. peer-a restarts on day 13 on a store restarted
    empty again: still 30, still the P2 alarm. peer-b comes back: it is forgotten."""
    server = RedisServer(tmp_path / "redis").start()
    store = LicensingStore(tmp_path / "state-a")

    def node(name: str, rms_: int, now: float, lost_store=None):
        pool = RedisPool()
        led = Ledger(name, "E", LARGE, pool=pool, now=now)
        led.set_licenses({License.RMS: rms_}, now)
        return led, PoolSync(pool, server.url, name, 1.0, cluster="grace", lost_store=lost_store)

    lost = 1.0 + PEER_TIMEOUT_SECONDS + 1
    day13 = 1.0 + 13 * DAY
    try:
        async def before_restart():
            a, sa = node("peer-a", 25, 1.0, store)
            b, sb = node("peer-b", 5, 1.0)
            await sa.start()
            assert await sb.sync_once() and await sa.sync_once()
            assert rms(a, 1.0).capacity == 30
            await sb.close()          # peer-b stops for good (its record stays in Redis)
            a.tick(lost)
            assert await sa.sync_once()
            assert a.alarms.is_active("peer-lost-peer-b")
            assert [r.name for r in store.lost_peers("grace")] == ["peer-b"]
            server.stop()
            server.start()            # same port, no persistence: every record is gone
            assert await sa.sync_once()
            assert server.client().hgetall("grace:peer:peer-b")["lic.rms"] == "5"  # republished
            assert rms(a, lost).capacity == 30
            c, sc = node("peer-c", 0, lost)
            assert await sc.sync_once()
            assert rms(c, lost).capacity == 30
            await sa.close()
            await sc.close()

        run(before_restart())
        server.stop()
        server.start()                # empty again, and peer-a restarts on day 13

        async def after_restart():
            a, sa = node("peer-a", 25, day13, store)
            await sa.start()
            a.tick(day13)
            assert rms(a, day13).capacity == 30
            alarm = {x.id: x for x in a.alarms.active()}["peer-lost-peer-b"]
            assert f"{1.0 + GRACE_SECONDS:.0f}" in alarm.reason  # the promise is the one kept
            assert server.client().hgetall("grace:peer:peer-b")["lic.rms"] == "5"
            b, sb = node("peer-b", 5, day13)  # peer-b comes back
            assert await sb.sync_once() and await sa.sync_once()
            a.tick(day13 + 1)
            assert await sa.sync_once()
            assert not a.alarms.is_active("peer-lost-peer-b") and store.lost_peers("grace") == []
            await sa.close()
            await sb.close()

        run(after_restart())
    finally:
        store.close()
        server.stop()
