"""Cluster edges (issue 10 item 6): a store outage keeps enforce mode within the pool (P1, P2), and
a lost peer's 14 days live in each node's own state, not only in Redis (P2).

Pools are driven directly (``apply_remote`` as a sync would) or through ``PoolSync`` on the fake
Redis of test_cluster_redis_sync; the real redis-server is in tests/integration/test_cluster_redis.py.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from meter import catalogs
from meter.cluster.redis_pool import RedisPool
from meter.cluster.sync import PoolSync
from meter.config import ConfigError, parse
from meter.licensing.calls import CallFacts, classify_call
from meter.licensing.ledger import OBSERVE, STORE_OUTAGE_ALARM, Ledger
from meter.licensing.model import License
from meter.licensing.pool import GRACE_SECONDS, PEER_TIMEOUT_SECONDS, MemoryPool, PeerRecord
from meter.store.licensing import LicensingStore
from tests.unit.test_cluster_redis_sync import FakeRedis

LARGE = catalogs.platform("large_vm")
VIDEO = classify_call(CallFacts("E", "local", "E", "sip", "external", "", "sip", m_lines=2))
DAY = 24 * 3600.0
LOST = 1.0 + PEER_TIMEOUT_SECONDS + 1  # peer-b's last heartbeat is 1.0


def ledger(name: str, rms: int, *, outage: str = "share", enforcement: str = "enforce", now: float = 1.0):
    pool = RedisPool(outage=outage)
    led = Ledger(name, "E", LARGE, pool=pool, enforcement=enforcement, now=now)
    led.set_licenses({License.RMS: rms}, now)
    return led


def sync(*ledgers: Ledger) -> None:
    """One round of syncs as PoolSync does it: every node publishes, then every node reads."""
    records = [led.pool.local_record(led.node) for led in ledgers]
    for led in ledgers:
        led.pool.apply_remote(led.node, records, published=led.pool.local_record(led.node))


def calls(led: Ledger, prefix: str, count: int, now: float = 2.0) -> int:
    """How many of ``count`` new video calls the ledger lets through."""
    return sum(led.charge_call(f"{prefix}{i}", VIDEO, now).ok for i in range(count))


# ---- P1 during a store outage ------------------------------------------------------------------


def test_p1_share_two_nodes_never_pass_the_pool_during_an_outage():
    """P1, outage = share: 30 RMS on A, none on B, both live at the last sync; with the store down
    each node takes its half of what was free, so together they stop at 30, not 60."""
    a, b = ledger("node-a", 30), ledger("node-b", 0)
    sync(a, b)
    a.pool.store_down("node-a")
    b.pool.store_down("node-b")
    took_a, took_b = calls(a, "a", 40), calls(b, "b", 40)
    assert (took_a, took_b) == (15, 15)  # B holds no key and still carries calls (P1)
    assert a.charge_call("a-more", VIDEO, 2.0).reason == "rms_exhausted"


def test_p1_share_counts_what_each_node_used_at_the_last_sync():
    """P1: usage at the last sync is kept by its node; only what was free is shared. A node above
    its share keeps its calls, takes no new one, and reuses what it releases."""
    a, b = ledger("node-a", 20), ledger("node-b", 10)
    assert calls(a, "a", 16, 1.0) == 16
    sync(a, b)
    a.pool.store_down("node-a")
    b.pool.store_down("node-b")
    free = 30 - 16
    assert calls(a, "a-new", 30) == free // 2 and calls(b, "b", 30) == free // 2
    assert a.snapshot(2.0).calls == 16 + 7
    assert a.release("a0", 3.0) and a.charge_call("a-again", VIDEO, 3.0).ok


def test_p1_share_when_the_pool_was_already_overshot_at_the_last_sync():
    """P1: two syncs' worth of overshoot (A 12 + B 10 of 20 RMS): each node may hold only what the
    other left it (A 10, B 8), so their limits add up to less than the pool and neither grows."""
    a, b = ledger("node-a", 20), ledger("node-b", 0)
    sync(a, b)
    assert calls(a, "a", 12, 1.0) == 12
    assert calls(b, "b", 10, 1.0) == 10  # B had not seen A's calls yet: the lag between syncs
    sync(a, b)
    a.pool.store_down("node-a")
    b.pool.store_down("node-b")
    assert calls(a, "a-new", 5) == 0 and calls(b, "b-new", 5) == 0
    for i in range(3):
        a.release(f"a{i}", 3.0)
    assert calls(a, "a-back", 5, 3.0) == 1  # A is at 9 calls; its limit is 20 - 10 = 10


def test_p2_share_counts_a_lost_peers_licenses_but_not_its_calls():
    """P2 with P1: a peer lost before the outage leaves its licenses in the pool and is not a share
    holder: the one live node may use all of it."""
    a, b = ledger("node-a", 10), ledger("node-b", 10)
    sync(a, b)
    a.tick(LOST)
    sync(a)
    a.pool.store_down("node-a")
    assert a.pool.outage().live_peers == 1
    assert calls(a, "a", 30, LOST) == 20


def test_p1_fail_closed_refuses_every_new_pooled_license_and_keeps_what_is_held():
    """P1, outage = fail_closed: nothing new is charged from the pool; a charge already held is
    repeated (a re-INVITE, a refresh) and released as before."""
    a = ledger("node-a", 30, outage="fail_closed")
    b = ledger("node-b", 0, outage="fail_closed")
    assert calls(a, "a", 2, 1.0) == 2
    sync(a, b)
    a.pool.store_down("node-a")
    b.pool.store_down("node-b")
    assert calls(a, "a-new", 5) == 0 and calls(b, "b", 5) == 0
    assert a.charge_call("a0", VIDEO, 2.0).ok  # the same charge again fits
    assert a.release("a1", 2.0)


def test_p1_observe_mode_lets_through_and_counts_what_the_share_would_refuse():
    a = ledger("node-a", 2, enforcement=OBSERVE)
    b = ledger("node-b", 0, enforcement=OBSERVE)
    sync(a, b)
    a.pool.store_down("node-a")
    assert calls(a, "a", 3) == 3
    assert a.snapshot(2.0).would_refuse == {"rms_exhausted": 2}


def test_p1_outage_alarm_is_raised_at_the_tick_and_cleared_when_the_store_is_back():
    a, b = ledger("node-a", 30), ledger("node-b", 0)
    sync(a, b)
    a.pool.store_down("node-a")
    a.tick(2.0)
    alarm = {x.id: x for x in a.alarms.active()}[STORE_OUTAGE_ALARM]
    assert alarm.rule == "P1" and "1 of 2 live peers" in alarm.reason
    a.pool.store_up()
    sync(a, b)
    a.tick(3.0)
    assert not a.alarms.is_active(STORE_OUTAGE_ALARM)
    assert calls(a, "a", 40, 3.0) == 30  # the whole pool again


def test_p1_a_node_that_never_reached_the_store_shares_with_no_one():
    """Documented corner: with no sync ever, the node knows no live peer; its share is its pool."""
    a = ledger("node-a", 3)
    a.pool.store_down("node-a")
    assert a.pool.outage().live_peers == 1 and calls(a, "a", 5) == 3


def test_a_memory_pool_has_no_outage_and_reserves_what_the_others_use():
    pool = MemoryPool()
    assert pool.outage() is None
    pool.join("peer-b", 0.0)
    pool.set_usage("peer-b", "rms", 4)
    assert pool.reserved_elsewhere("rms", 1.0, "peer-a", 60) == 4


def test_outage_policy_is_checked():
    with pytest.raises(ValueError, match="outage"):
        RedisPool(outage="open")
    assert parse('[cluster]\noutage = "fail_closed"\n').cluster.outage == "fail_closed"
    with pytest.raises(ConfigError, match="outage"):
        parse('[cluster]\noutage = "open"\n')


# ---- P2: lost peers kept in the node's own state ------------------------------------------------


def test_p2_lost_records_are_the_lost_peers_whose_licenses_still_count():
    a, b, c = ledger("node-a", 25), ledger("node-b", 5), ledger("node-c", 0)
    sync(a, b, c)
    assert a.pool.lost_records("node-a") == []  # all alive
    a.tick(LOST)
    sync(a)
    lost = a.pool.lost_records("node-a")
    assert [r.name for r in lost] == ["node-b"]  # node-c contributed nothing: nothing to keep
    assert lost[0].last_seen == 1.0 and lost[0].contributed == {"rms": 5} and lost[0].usage == {}
    a.tick(1.0 + GRACE_SECONDS + 1)
    assert a.pool.lost_records("node-a") == []  # P2: its 14 days are over


def test_p2_remember_brings_back_a_lost_peer_and_the_later_contact_wins():
    pool = RedisPool()
    led = Ledger("node-a", "E", LARGE, pool=pool, now=10 * DAY)
    led.set_licenses({"rms": 25}, 10 * DAY)
    pool.remember("node-a", [PeerRecord("node-b", 1.0, contributed={"rms": 5}),
                             PeerRecord("node-a", 1.0, contributed={"rms": 99})])  # never overrides itself
    assert pool.capacity("rms", 10 * DAY, "node-a") == 30
    pool.remember("node-a", [PeerRecord("node-b", 0.5, contributed={"rms": 1})])  # older: ignored
    assert pool.capacity("rms", 10 * DAY, "node-a") == 30
    # The store's record of node-b merges too: an older one (republished by a node that knew less) loses.
    pool.apply_remote("node-a", [PeerRecord("node-b", 0.2, contributed={"rms": 2})])
    assert pool.capacity("rms", 10 * DAY, "node-a") == 30
    assert pool.capacity("rms", 1.0 + GRACE_SECONDS + 1, "node-a") == 25


def test_p2_lost_peers_round_trip_through_the_licensing_store(tmp_path):
    with LicensingStore(tmp_path) as store:
        store.save_lost_peer("lab", PeerRecord("node-b", 1.5, 500, contributed={"rms": 5, "room": 2}))
        store.save_lost_peer("lab", PeerRecord("node-b", 2.5, 500, contributed={"rms": 5}))
        store.save_lost_peer("other", PeerRecord("node-c", 1.0, contributed={"rms": 1}))
    with LicensingStore(tmp_path) as store:
        assert store.lost_peers("lab") == [PeerRecord("node-b", 2.5, 500, contributed={"rms": 5})]
        store.forget_lost_peer("lab", "node-b")
        assert store.lost_peers("lab") == [] and len(store.lost_peers("other")) == 1


class ScriptedRedis(FakeRedis):
    """The fake Redis plus the one Lua script PoolSync runs (republish where no record is)."""

    async def eval(self, script, numkeys, key, index, ttl, name, *fields):
        self._check()
        if key in self.hashes:
            return 0
        self.hashes[key] = dict(zip(fields[::2], fields[1::2]))
        self.ttl[key] = int(ttl)
        self.sets.setdefault(index, set()).add(name)
        return 1


def peer_sync(led: Ledger, redis: FakeRedis, store: LicensingStore | None) -> PoolSync:
    return PoolSync(led.pool, "redis://127.0.0.1:6379/0", led.node, 1.0, cluster="lab", client=redis,
                    clock=lambda: redis.time_now, lost_store=store)


def forgotten(caplog) -> list[str]:
    """Why each lost peer was forgotten, from the log (caplog at INFO for meter.cluster)."""
    return [r.facts["why"] for r in caplog.records if r.getMessage() == "cluster.lost_peer_forgotten"]


def test_p2_the_grace_survives_a_store_restart_and_a_node_restart(tmp_path, caplog):
    """P2: node-b (5 RMS) is lost; node-a (25 RMS) keeps the instant in its own state. Redis loses
    its data: node-a republishes node-b, so a node-c joining now counts 30 too. node-a restarts on
    an empty store: it still counts 30 and still alarms until day 14, then 25."""
    caplog.set_level(logging.INFO, logger="meter.cluster")
    redis = ScriptedRedis()
    store = LicensingStore(tmp_path)
    a, b = ledger("node-a", 25), ledger("node-b", 5)
    sa, sb = peer_sync(a, redis, store), peer_sync(b, redis, None)

    async def scenario():
        await sa.start()
        await sb.start()
        assert await sa.sync_once()
        assert a.snapshot(1.0).licenses["rms"].capacity == 30
        a.tick(LOST)  # node-b is silent from here
        assert await sa.sync_once()
        assert [r.name for r in store.lost_peers("lab")] == ["node-b"]
        assert sa.status().lost_peers_kept == ("node-b",)
        redis.hashes.clear()
        redis.sets.clear()  # Redis restarted without persistence
        assert await sa.sync_once()
        assert redis.hashes["lab:peer:node-b"]["lic.rms"] == "5"  # republished
        c = ledger("node-c", 0, now=LOST)
        sc = peer_sync(c, redis, None)
        assert await sc.sync_once()
        assert c.snapshot(LOST).licenses["rms"].capacity == 30
        await sa.close()

    asyncio.run(scenario())
    redis.hashes.clear()
    redis.sets.clear()  # and once more, now with node-a restarting
    day13 = 1.0 + 13 * DAY
    a2 = ledger("node-a", 25, now=day13)
    sa2 = peer_sync(a2, redis, store)

    async def restarted():
        await sa2.start()
        a2.tick(day13)
        assert a2.snapshot(day13).licenses["rms"].capacity == 30
        assert a2.alarms.is_active("peer-lost-node-b")
        after = 1.0 + GRACE_SECONDS + 1
        a2.tick(after)
        assert await sa2.sync_once()
        assert a2.snapshot(after).licenses["rms"].capacity == 25
        assert store.lost_peers("lab") == []  # its 14 days are over: forgotten
        assert forgotten(caplog) == ["its licenses left the pool (P2)"]
        await sa2.close()

    asyncio.run(restarted())
    store.close()


def test_p2_a_peer_that_comes_back_is_forgotten(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="meter.cluster")
    redis = ScriptedRedis()
    store = LicensingStore(tmp_path)
    a, b = ledger("node-a", 25), ledger("node-b", 5)
    sa, sb = peer_sync(a, redis, store), peer_sync(b, redis, None)

    async def scenario():
        assert await sb.sync_once() and await sa.sync_once()
        a.tick(LOST)
        assert await sa.sync_once()
        assert len(store.lost_peers("lab")) == 1
        b.tick(LOST)  # back
        assert await sb.sync_once() and await sa.sync_once()
        assert store.lost_peers("lab") == [] and forgotten(caplog) == ["reachable again"]

    asyncio.run(scenario())
    store.close()


def test_p1_pool_sync_declares_the_outage_and_ends_it():
    """PoolSync: a failed sync puts the pool in its outage policy; the next good one ends it."""
    redis = ScriptedRedis()
    a, b = ledger("node-a", 30), ledger("node-b", 0)
    sa, sb = peer_sync(a, redis, None), peer_sync(b, redis, None)

    async def scenario():
        assert await sa.sync_once() and await sb.sync_once() and await sa.sync_once()
        redis.down = True
        assert not await sa.sync_once()
        assert a.pool.outage().live_peers == 2 and calls(a, "a", 40) == 15
        assert sa.status().outage == "share"  # shown by /api/cluster
        redis.down = False
        assert await sa.sync_once()
        assert a.pool.outage() is None and calls(a, "a-more", 40) == 15
        assert sa.status().outage == ""

    asyncio.run(scenario())
