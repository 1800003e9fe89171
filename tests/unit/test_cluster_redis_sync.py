"""PoolSync against a fake in-memory Redis: what it publishes, what it reads, and how it rides out a
store that goes away (P1, P2, P5 through the adapter; the real Redis is in tests/integration)."""

import asyncio
import logging

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from meter.cluster.redis_pool import RedisPool, encode_record
from meter.cluster.settings import ClusterSettings
from meter.cluster.sync import PEER_KEY_TTL_SECONDS, PoolSync
from meter import catalogs
from meter.licensing.calls import CallFacts, classify_call
from meter.licensing.ledger import Ledger
from meter.licensing.model import License
from meter.licensing.pool import GRACE_SECONDS, PeerRecord

LARGE = catalogs.platform("large_vm")
VIDEO = classify_call(CallFacts("E", "local", "E", "sip", "external", "", "sip", m_lines=2))
DAY = 24 * 3600.0


class FakeRedis:
    """The few redis.asyncio commands PoolSync uses, on dicts; ``down`` makes every command fail."""

    def __init__(self, time_now: float = 1000.0):
        self.hashes: dict[str, dict[str, str]] = {}
        self.sets: dict[str, set[str]] = {}
        self.ttl: dict[str, int] = {}
        self.time_now = time_now
        self.down = False
        self.commands = 0

    def pipeline(self, transaction: bool = True):
        return FakePipeline(self)

    def _check(self):
        if self.down:
            raise RedisConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    async def srem(self, key, *members):
        self._check()
        self.sets.get(key, set()).difference_update(members)

    async def aclose(self):
        pass

    # commands, applied by FakePipeline.execute
    def delete(self, key):
        return int(self.hashes.pop(key, None) is not None)

    def hset(self, key, mapping):
        self.hashes.setdefault(key, {}).update({str(k): str(v) for k, v in mapping.items()})
        return len(mapping)

    def expire(self, key, seconds):
        self.ttl[key] = seconds
        return True

    def sadd(self, key, *members):
        self.sets.setdefault(key, set()).update(members)
        return len(members)

    def smembers(self, key):
        return set(self.sets.get(key, set()))

    def time(self):
        return (int(self.time_now), int(self.time_now % 1 * 1e6))

    def hgetall(self, key):
        return dict(self.hashes.get(key, {}))


class FakePipeline:
    def __init__(self, redis):
        self.redis, self.ops = redis, []

    def __getattr__(self, name):
        def queue(*args, **kw):
            self.ops.append((name, args, kw))
            return self
        return queue

    async def execute(self):
        self.redis._check()
        self.redis.commands += len(self.ops)
        return [getattr(self.redis, name)(*args, **kw) for name, args, kw in self.ops]


def node(name, redis, rms, now=0.0):
    pool = RedisPool()
    ledger = Ledger(name, "E", LARGE, pool=pool, now=now)
    ledger.set_licenses({License.RMS: rms}, now)
    return ledger, PoolSync(pool, "redis://127.0.0.1:6379/0", name, 1.0, cluster="lab", client=redis,
                            clock=lambda: redis.time_now)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_sync_publishes_one_hash_per_peer_with_a_ttl_beyond_the_14_day_grace():
    """P2: the record of a peer that stops must stay readable for the whole grace."""
    redis = FakeRedis()
    a, sync = node("peer-a", redis, 300, now=5.0)
    a.charge_call("c1", VIDEO, 5.0)
    assert run(sync.sync_once())
    fields = redis.hashes["lab:peer:peer-a"]
    assert fields["lic.rms"] == "300" and fields["use.rms"] == "2" and fields["last_seen"] == "5.0"
    assert fields["call_capacity"] == str(LARGE.calls_video) and fields["instance"] == sync.instance
    assert redis.sets["lab:peers"] == {"peer-a"}
    assert redis.ttl["lab:peer:peer-a"] == PEER_KEY_TTL_SECONDS > GRACE_SECONDS
    assert redis.ttl["lab:peers"] == PEER_KEY_TTL_SECONDS


def test_p1_p5_two_nodes_through_the_fake_store_pool_600_and_share_usage():
    """P1/P5: 300 RMS on each node give 600 on both; A's calls reduce what B can charge."""
    redis = FakeRedis()
    a, sa = node("peer-a", redis, 300)
    b, sb = node("peer-b", redis, 300)

    async def scenario():
        await sa.sync_once()
        await sb.sync_once()
        await sa.sync_once()
        assert a.snapshot(1.0).licenses[License.RMS].capacity == 600
        assert b.snapshot(1.0).licenses[License.RMS].capacity == 600
        assert all(a.charge_call(f"a{i}", VIDEO, 1.0).ok for i in range(450))
        await sa.sync_once()
        await sb.sync_once()
        assert b.snapshot(1.0).licenses[License.RMS].in_use_cluster == 450
        assert all(b.charge_call(f"b{i}", VIDEO, 1.0).ok for i in range(150))
        assert b.charge_call("b-151", VIDEO, 1.0).reason == "rms_exhausted"

    run(scenario())


def test_store_down_node_keeps_working_on_its_cache_logs_once_and_recovers(caplog):
    """Redis unreachable: no exception reaches the node, charges go on against the cached pool
    within this node's share of it (P1: peer-b was live at the last sync, so 300 of the 600 free),
    the error is logged and shown, and the next sync after the store returns catches up."""
    redis = FakeRedis()
    a, sa = node("peer-a", redis, 300)
    redis.hashes["lab:peer:peer-b"] = encode_record(PeerRecord("peer-b", 0.0, 500, 0.0, {"rms": 300}))
    redis.sets["lab:peers"] = {"peer-b"}

    async def scenario():
        assert await sa.sync_once()
        redis.down = True
        with caplog.at_level(logging.WARNING, logger="meter.cluster"):
            for _ in range(5):
                redis.time_now += 1.0
                assert not await sa.sync_once()
        warnings = [r for r in caplog.records if r.getMessage() == "cluster.store_unreachable"]
        assert len(warnings) == 1 and "Connection refused" in warnings[0].facts["error"]
        status = sa.status()
        assert not status.connected and "ConnectionError" in status.last_error and status.failures_total == 5
        assert all(a.charge_call(f"a{i}", VIDEO, 2.0).ok for i in range(300))  # 600 RMS cached, half its share
        assert a.charge_call("a-301", VIDEO, 2.0).reason == "rms_exhausted"
        assert a.snapshot(2.0).licenses[License.RMS].capacity == 600
        redis.down = False
        with caplog.at_level(logging.INFO, logger="meter.cluster"):
            assert await sa.sync_once()
        assert any(r.getMessage() == "cluster.store_reachable" for r in caplog.records)
        assert sa.status().connected and sa.status().last_error == ""
        assert redis.hashes["lab:peer:peer-a"]["use.rms"] == "600"  # caught up: 300 video calls, half units

    run(scenario())


def test_a_hung_store_costs_one_bounded_attempt(monkeypatch):
    """A store that never answers: the sync gives up after its timeout instead of hanging the loop."""
    import meter.cluster.sync as sync_module

    monkeypatch.setattr(sync_module, "SYNC_TIMEOUT_SECONDS", 0.05)
    redis = FakeRedis()
    _, sa = node("peer-a", redis, 1)

    async def never(self):
        await asyncio.Event().wait()

    monkeypatch.setattr(FakePipeline, "execute", never)
    assert run(sa.sync_once()) is False
    assert sa.status().last_error == "TimeoutError"


def test_an_expired_peer_is_dropped_from_the_index_and_a_bad_record_is_reported(caplog):
    redis = FakeRedis()
    _, sa = node("peer-a", redis, 10)
    redis.sets["lab:peers"] = {"peer-gone", "peer-bad"}
    redis.hashes["lab:peer:peer-bad"] = {"v": "1", "last_seen": "yesterday"}
    with caplog.at_level(logging.ERROR, logger="meter.cluster"):
        assert run(sa.sync_once())
    assert redis.sets["lab:peers"] == {"peer-a", "peer-bad"}
    assert sa.status().unreadable == ("peer-bad: last_seen: expected a number, got 'yesterday'",)
    assert any(r.getMessage() == "cluster.peer_record_unreadable" for r in caplog.records)


def test_two_processes_with_one_node_name_are_detected(caplog, monkeypatch):
    """Two nodes configured with one name would overwrite each other's record: the one that reads
    another instance id in its own hash says so."""
    redis = FakeRedis()
    _, first = node("peer-a", redis, 10)
    _, second = node("peer-a", redis, 10)
    run(first.sync_once())
    assert not first.status().duplicate_name  # reading back its own write is no duplicate
    write = FakePipeline.execute

    async def second_writes_between_the_two_round_trips(self):
        if any(op[0] == "hgetall" for op in self.ops):
            monkeypatch.setattr(FakePipeline, "execute", write)
            await second.sync_once()
        return await write(self)

    monkeypatch.setattr(FakePipeline, "execute", second_writes_between_the_two_round_trips)
    with caplog.at_level(logging.ERROR, logger="meter.cluster"):
        assert run(first.sync_once())
    assert first.status().duplicate_name
    assert any(r.getMessage() == "cluster.duplicate_node_name" for r in caplog.records)


def test_clock_skew_against_redis_is_measured_and_warned(caplog):
    redis = FakeRedis(time_now=1000.0)
    pool = RedisPool()
    Ledger("peer-a", "E", LARGE, pool=pool, now=0.0)
    sync = PoolSync(pool, "redis://127.0.0.1:6379/0", "peer-a", client=redis, clock=lambda: 1000.0 + 20.0)
    with caplog.at_level(logging.WARNING, logger="meter.cluster"):
        run(sync.sync_once())
    assert sync.status().clock_skew == pytest.approx(20.0)
    assert any(r.getMessage() == "cluster.clock_skew" for r in caplog.records)  # 20 s > 60 s / 4


def test_start_syncs_at_once_then_every_interval_and_close_publishes_the_released_usage():
    """Principle 4: after shutdown, the node's record shows no usage, so peers do not count its calls."""
    redis = FakeRedis()
    a, sa = node("peer-a", redis, 10)
    sa.interval = 0.01

    async def scenario():
        a.charge_call("c1", VIDEO, 0.0)
        await sa.start()
        assert redis.hashes["lab:peer:peer-a"]["use.rms"] == "2"  # start() synced before returning
        first = sa.status().syncs_total
        for _ in range(500):  # wait for the loop, no timing asserted
            if sa.status().syncs_total >= first + 3:
                break
            await asyncio.sleep(0.01)
        assert sa.status().syncs_total >= first + 3
        a.release_all(1.0)
        await sa.close()
        assert redis.hashes["lab:peer:peer-a"]["use.rms"] == "0"
        syncs = sa.status().syncs_total
        await asyncio.sleep(0.05)
        assert sa.status().syncs_total == syncs  # the loop is gone

    run(scenario())


def test_start_with_the_store_down_still_starts_the_node():
    redis = FakeRedis()
    redis.down = True
    _, sa = node("peer-a", redis, 10)

    async def scenario():
        await sa.start()
        assert not sa.status().connected
        await sa.close()

    run(scenario())


def test_from_settings_uses_the_cluster_name_as_prefix_and_refuses_a_ttl_inside_the_grace():
    settings = ClusterSettings(store="redis", redis_url="redis://:secret@127.0.0.1:6390/2", name="lab2",
                               sync_interval=0.5)
    sync = PoolSync.from_settings(RedisPool(), settings, "peer-a", client=FakeRedis())
    assert sync.peer_key("peer-a") == "lab2:peer:peer-a" and sync.interval == 0.5
    assert "secret" not in sync.status().store
    with pytest.raises(ValueError, match="grace"):
        PoolSync(RedisPool(), "redis://127.0.0.1", "peer-a", key_ttl=int(GRACE_SECONDS))
    with pytest.raises(ValueError, match="interval"):
        PoolSync(RedisPool(), "redis://127.0.0.1", "peer-a", 0)


def test_p2_lost_peer_read_from_the_store_by_a_restarted_survivor():
    """P2: the grace runs from the lost peer's last heartbeat, also for a node started after the loss."""
    redis = FakeRedis()
    b, sb = node("peer-b", redis, 300, now=0.0)
    run(sb.sync_once())  # peer-b's last word
    a, sa = node("peer-a", redis, 300, now=10 * DAY)  # started ten days later
    run(sa.sync_once())
    assert a.snapshot(10 * DAY).licenses[License.RMS].capacity == 600
    a.tick(10 * DAY)
    assert a.alarms.is_active("peer-lost-peer-b")
    assert a.snapshot(GRACE_SECONDS + 1).licenses[License.RMS].capacity == 300
