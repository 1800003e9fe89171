"""RedisPool's cache and its records, pure (no Redis, no event loop): P1, P2, P3, P5 over the cache."""

import pytest

from meter.cluster.redis_pool import RECORD_VERSION, RecordError, RedisPool, decode_record, encode_record
from meter import catalogs
from meter.licensing.calls import CallFacts, classify_call
from meter.licensing.ledger import Ledger
from meter.licensing.model import License
from meter.licensing.pool import GRACE_SECONDS, PEER_TIMEOUT_SECONDS, PeerRecord

LARGE = catalogs.platform("large_vm")
VIDEO = classify_call(CallFacts("E", "local", "E", "sip", "external", "", "sip", m_lines=2))
DAY = 24 * 3600.0


def exchange(*nodes):
    """What one round of syncs does: every node publishes its record and reads everyone's."""
    records = [pool.local_record(name) for pool, name in nodes]
    for pool, name in nodes:
        pool.apply_remote(name, [r for r in records if r is not None])


def test_record_round_trips_exactly_through_hash_fields():
    record = PeerRecord("peer-a", 1712345678.123456, 500, 12.5, {"rms": 300, "room": 7}, {"rms": 41, "room": 0})
    fields = encode_record(record, "abc123")
    assert fields["v"] == RECORD_VERSION and fields["lic.rms"] == "300" and fields["use.rms"] == "41"
    assert fields["instance"] == "abc123"  # the writing process, beside the record (PoolSync reads it)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in fields.items())  # a Redis hash
    assert decode_record("peer-a", fields) == record


@pytest.mark.parametrize("change, reason", [
    ({"v": "2"}, "record version '2'"),
    ({"last_seen": "soon"}, "last_seen: expected a number"),
    ({"last_seen": "nan"}, "last_seen: expected a finite number"),
    ({"last_seen": "-5"}, "last_seen: expected a finite number >= 0"),
    ({"lic.rms": "3.5"}, "lic.rms: expected a whole number"),
    ({"use.rms": "-1"}, "use.rms: expected 0..1000000000"),
    ({"call_capacity": "1e99"}, "call_capacity: expected a whole number"),
    ({"calls_load": "inf"}, "calls_load: expected a finite number"),
])
def test_a_bad_record_is_refused_with_the_field_and_why(change, reason):
    fields = encode_record(PeerRecord("peer-b", 10.0, 500, 1.0, {"rms": 5}, {"rms": 2}))
    fields.update(change)
    with pytest.raises(RecordError) as err:
        decode_record("peer-b", fields)
    assert err.value.peer == "peer-b" and reason in err.value.reason


def test_missing_heartbeat_and_oversized_records_are_refused():
    fields = encode_record(PeerRecord("peer-b", 10.0))
    del fields["last_seen"]
    with pytest.raises(RecordError, match="last_seen"):
        decode_record("peer-b", fields)
    huge = encode_record(PeerRecord("peer-b", 10.0, contributed={f"t{i}": 1 for i in range(100)}))
    with pytest.raises(RecordError, match="fields"):
        decode_record("peer-b", huge)


def test_unknown_fields_from_a_newer_writer_are_ignored():
    fields = encode_record(PeerRecord("peer-b", 10.0, 500, 0.0, {"rms": 5}))
    fields["zone_hint"] = "whatever"
    assert decode_record("peer-b", fields).contributed == {"rms": 5}


def test_local_record_is_what_the_ledger_wrote():
    pool = RedisPool()
    assert pool.local_record("peer-a") is None  # nothing to publish before the ledger joins
    a = Ledger("peer-a", "E", LARGE, pool=pool, now=5.0)
    a.set_licenses({License.RMS: 300}, 5.0)
    a.charge_call("c1", VIDEO, 6.0)
    a.tick(7.0)
    record = pool.local_record("peer-a")
    assert record.last_seen == 7.0 and record.contributed == {"rms": 300} and record.usage == {"rms": 2}
    assert record.call_capacity == LARGE.calls_video and record.calls_load == 1.0
    record.usage["rms"] = 99  # a copy: publishing never aliases the ledger's live record
    assert pool.local_record("peer-a").usage == {"rms": 2}


def test_p1_p5_two_caches_pool_600_and_share_usage():
    """P1/P5 over the cache: 300 RMS on each of two large VMs give both 600; a call charged on A
    (seen at the next sync) reduces what B can charge."""
    pa, pb = RedisPool(), RedisPool()
    a = Ledger("peer-a", "E", LARGE, pool=pa, now=0.0)
    b = Ledger("peer-b", "E", LARGE, pool=pb, now=0.0)
    a.set_licenses({License.RMS: 300}, 0.0)
    b.set_licenses({License.RMS: 300}, 0.0)
    assert a.snapshot(0.0).licenses[License.RMS].capacity == 300  # before any sync: own licenses only
    exchange((pa, "peer-a"), (pb, "peer-b"))
    assert a.snapshot(0.0).licenses[License.RMS].capacity == 600
    assert b.snapshot(0.0).licenses[License.RMS].capacity == 600
    assert all(a.charge_call(f"a{i}", VIDEO, 1.0).ok for i in range(400))
    exchange((pa, "peer-a"), (pb, "peer-b"))
    assert all(b.charge_call(f"b{i}", VIDEO, 1.0).ok for i in range(200))
    assert b.charge_call("b-extra", VIDEO, 1.0).reason == "rms_exhausted"
    a.release("a0", 2.0)
    exchange((pa, "peer-a"), (pb, "peer-b"))
    assert b.charge_call("b-extra", VIDEO, 2.0).ok


def test_p2_p3_survivor_keeps_600_for_14_days_but_carries_500():
    """P2/P3/P5: peer-b stops publishing; its calls leave at once, its licenses after 14 days."""
    pa, pb = RedisPool(), RedisPool()
    a = Ledger("peer-a", "E", LARGE, pool=pa, now=0.0)
    b = Ledger("peer-b", "E", LARGE, pool=pb, now=0.0)
    a.set_licenses({License.RMS: 300}, 0.0)
    b.set_licenses({License.RMS: 300}, 0.0)
    assert all(b.charge_call(f"b{i}", VIDEO, 1.0).ok for i in range(300))
    b.tick(1.0)
    exchange((pa, "peer-a"), (pb, "peer-b"))
    last_b = pb.local_record("peer-b")
    lost = 1.0 + PEER_TIMEOUT_SECONDS + 1
    a.tick(lost)
    pa.apply_remote("peer-a", [pa.local_record("peer-a"), last_b])  # B's record, never refreshed
    assert a.snapshot(lost).licenses[License.RMS].capacity == 600
    assert pa.usage_elsewhere(License.RMS, lost, "peer-a") == 0  # a lost peer's calls are gone
    assert all(a.charge_call(f"a{i}", VIDEO, lost).ok for i in range(500))
    assert a.charge_call("a-501", VIDEO, lost).reason == "node_call_capacity"
    assert pa.capacity(License.RMS, 1.0 + GRACE_SECONDS, "peer-a") == 600
    assert pa.capacity(License.RMS, 1.0 + GRACE_SECONDS + 1, "peer-a") == 300


def test_a_peer_gone_from_the_store_stays_until_its_grace_ends():
    """P2: a store that lost its data (restarted without persistence) does not shorten the 14 days."""
    pool = RedisPool()
    pool.join("peer-a", 0.0)
    pool.contribute("peer-a", {"rms": 10}, 0.0)
    pool.apply_remote("peer-a", [PeerRecord("peer-b", 100.0, 500, 0.0, {"rms": 50})])
    pool.apply_remote("peer-a", [])  # the store forgot peer-b
    assert pool.capacity("rms", 100.0 + 13 * DAY, "peer-a") == 60
    assert [v.name for v in pool.peers(100.0 + 13 * DAY)] == ["peer-a", "peer-b"]
    assert [v.name for v in pool.peers(100.0 + GRACE_SECONDS + 1)] == ["peer-a"]  # forgotten after P2
    assert pool.capacity("rms", 100.0 + GRACE_SECONDS + 1, "peer-a") == 10


def test_a_peer_still_in_the_store_after_grace_is_listed_but_counts_nothing():
    """K6/P2: the view keeps showing a lost peer (with when its licenses left) while its record exists."""
    pool = RedisPool()
    pool.join("peer-a", 0.0)
    record = PeerRecord("peer-b", 100.0, 500, 0.0, {"rms": 50}, {"rms": 8})
    after = 100.0 + GRACE_SECONDS + 1
    pool.apply_remote("peer-a", [record])
    pool.apply_remote("peer-a", [record])
    view = {v.name: v for v in pool.peers(after)}["peer-b"]
    assert not view.alive and view.licenses_until == 100.0 + GRACE_SECONDS
    assert pool.capacity("rms", after, "peer-a") == 0 and pool.usage_elsewhere("rms", after, "peer-a") == 0


def test_own_record_in_the_store_never_overwrites_this_nodes_state():
    pool = RedisPool()
    pool.join("peer-a", 50.0)
    pool.contribute("peer-a", {"rms": 10}, 50.0)
    pool.apply_remote("peer-a", [PeerRecord("peer-a", 1.0, 0, 0.0, {"rms": 999})])
    assert pool.capacity("rms", 50.0, "peer-a") == 10 and pool.local_record("peer-a").last_seen == 50.0


def test_an_unreadable_record_keeps_the_peers_last_good_state():
    pool = RedisPool()
    pool.join("peer-a", 0.0)
    pool.apply_remote("peer-a", [PeerRecord("peer-b", 10.0, 500, 0.0, {"rms": 50}, {"rms": 4})])
    pool.apply_remote("peer-a", [], unreadable=["peer-b"])
    assert pool.capacity("rms", 10.0, "peer-a") == 50 and pool.usage_elsewhere("rms", 10.0, "peer-a") == 4
    pool.apply_remote("peer-a", [PeerRecord("peer-b", 11.0, 500, 0.0, {"rms": 20}, {})])
    assert pool.capacity("rms", 11.0, "peer-a") == 20 and pool.usage_elsewhere("rms", 11.0, "peer-a") == 0


def test_a_license_type_a_peer_stopped_contributing_leaves_the_cache():
    """K5 across the cluster: a demo key expired on peer-b removes its quantity everywhere."""
    pool = RedisPool()
    pool.join("peer-a", 0.0)
    pool.apply_remote("peer-a", [PeerRecord("peer-b", 1.0, 500, 0.0, {"rms": 50, "room": 5})])
    pool.apply_remote("peer-a", [PeerRecord("peer-b", 2.0, 500, 0.0, {"rms": 50})])
    assert pool.capacity("room", 2.0, "peer-a") == 0 and pool.capacity("rms", 2.0, "peer-a") == 50
    assert pool.cluster_load(2.0, "peer-a") == (0.0, 500)  # P4: peer-b's capacity, none of its load
