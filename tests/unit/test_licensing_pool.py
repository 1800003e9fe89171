"""Cluster pooling through the pool interface, faked as two peers sharing one MemoryPool (P1, P2, P3, P4, P5)."""

from meter import catalogs
from meter.licensing.calls import CallFacts, classify_call
from meter.licensing.ledger import Ledger
from meter.licensing.model import License
from meter.licensing.pool import GRACE_SECONDS, PEER_TIMEOUT_SECONDS, MemoryPool

LARGE = catalogs.platform("large_vm")
VIDEO = classify_call(CallFacts("E", "local", "E", "sip", "external", "", "sip", m_lines=2))
DAY = 24 * 3600.0


def two_peers(rms_a, rms_b, now=0.0):
    pool = MemoryPool()
    a = Ledger("peer-a", "E", LARGE, pool=pool, now=now)
    b = Ledger("peer-b", "E", LARGE, pool=pool, now=now)
    a.set_licenses({License.RMS: rms_a}, now)
    b.set_licenses({License.RMS: rms_b}, now)
    return pool, a, b


def fill(book, prefix, n, now):
    return [book.charge_call(f"{prefix}-{i}", VIDEO, now) for i in range(n)]


def test_p1_rms_pool_across_peers_whichever_peer_holds_the_key():
    """P1: a peer without keys uses the licenses installed on another peer; usage is shared."""
    _, a, b = two_peers(rms_a=0, rms_b=10)
    assert all(d.ok for d in fill(a, "a", 6, 1.0))
    assert all(d.ok for d in fill(b, "b", 4, 1.0))
    refused = a.charge_call("a-extra", VIDEO, 1.0)
    assert refused.reason == "rms_exhausted"
    snap = a.snapshot(1.0)
    assert snap.licenses[License.RMS].capacity == 10
    assert snap.licenses[License.RMS].in_use == 6 and snap.licenses[License.RMS].in_use_cluster == 10
    b.release("b-0", 2.0)
    assert a.charge_call("a-extra", VIDEO, 2.0).ok


def test_p2_a_lost_peers_licenses_stay_14_days_then_leave():
    """P2: from the loss of contact, a peer's shareable licenses stay in the pool for two weeks."""
    pool, a, b = two_peers(rms_a=100, rms_b=50, now=0.0)
    assert GRACE_SECONDS == 14 * DAY
    a.tick(13 * DAY)  # peer-b never heard from again after t=0
    assert pool.capacity(License.RMS, 13 * DAY, "peer-a") == 150
    alarm = next(x for x in a.alarms.active() if x.id == "peer-lost-peer-b")
    assert alarm.rule == "P2" and str(int(GRACE_SECONDS)) in alarm.reason
    assert pool.capacity(License.RMS, 14 * DAY, "peer-a") == 150
    assert pool.capacity(License.RMS, 14 * DAY + 1, "peer-a") == 100
    a.tick(14 * DAY + 1)
    assert not a.alarms.is_active("peer-lost-peer-b")


def test_p2_a_peer_that_comes_back_contributes_again():
    """P2: contact restored, the peer's licenses and usage count as before."""
    pool, a, b = two_peers(rms_a=10, rms_b=10)
    fill(b, "b", 5, 1.0)
    assert pool.usage_elsewhere(License.RMS, 1.0 + PEER_TIMEOUT_SECONDS + 1, "peer-a") == 0  # lost: calls gone
    b.tick(20 * DAY)
    a.tick(20 * DAY)
    assert pool.capacity(License.RMS, 20 * DAY, "peer-a") == 20
    assert pool.usage_elsewhere(License.RMS, 20 * DAY, "peer-a") == 10  # 5 video calls in half units


def test_p5_two_large_vms_with_300_rms_each_carry_600_then_500_on_the_survivor_then_300():
    """P5 (with P2, P3): two large VMs with 300 RMS each carry 600 concurrent video calls; with one
    peer lost the other keeps all 600 RMS for 14 days but carries at most 500 video calls; after
    the 14 days only its own 300 remain."""
    pool, a, b = two_peers(rms_a=300, rms_b=300, now=0.0)
    assert all(d.ok for d in fill(a, "a", 300, 1.0))
    assert all(d.ok for d in fill(b, "b", 300, 1.0))
    assert a.charge_call("a-601", VIDEO, 1.0).reason == "rms_exhausted"
    assert b.charge_call("b-601", VIDEO, 1.0).reason == "rms_exhausted"

    # peer-b is removed from the cluster at t=1: its calls go with it, its licenses stay.
    lost = 1.0 + PEER_TIMEOUT_SECONDS + 1
    a.tick(lost)
    assert a.snapshot(lost).licenses[License.RMS].capacity == 600
    assert all(d.ok for d in fill(a, "a-more", 200, lost))  # 500 calls on peer-a
    beyond = a.charge_call("a-501", VIDEO, lost)
    assert beyond.refused and beyond.reason == "node_call_capacity" and "P3" in beyond.rules
    assert a.snapshot(lost).calls == 500

    # Two weeks after contact was lost (peer-b was last heard from at t=0), 300 RMS remain.
    after = 14 * DAY + 1
    a.tick(after)
    assert a.snapshot(after).licenses[License.RMS].capacity == 300
    for i in range(200):
        a.release(f"a-more-{i}", after)
    assert a.charge_call("a-301", VIDEO, after).reason == "rms_exhausted"
    a.release("a-0", after)
    assert a.charge_call("a-301", VIDEO, after).ok


def test_p4_cluster_capacity_alarm_at_90_percent_of_the_cluster():
    """P4: raised when concurrent calls reach 90% of the cluster's capacity, cleared under 85%."""
    _, a, b = two_peers(rms_a=1000, rms_b=1000)
    registered = classify_call(CallFacts("E", "local", "E", "sip", "local", "E", "sip", m_lines=2))
    for i in range(450):
        a.charge_call(f"a{i}", registered, 1.0)
    for i in range(449):
        b.charge_call(f"b{i}", registered, 1.0)
    b.tick(2.0)  # each peer publishes its load at its tick
    a.tick(2.0)
    assert not a.alarms.is_active("capacity-cluster")
    b.charge_call("b449", registered, 3.0)  # 900 of 1000
    b.tick(4.0)
    a.tick(4.0)
    alarm = next(x for x in a.alarms.active() if x.id == "capacity-cluster")
    assert alarm.rule == "P4" and "90%" in alarm.reason and "1000" in alarm.reason
    b.release("b0", 5.0)  # 899: under 90%, not yet under the 85% that clears it
    b.tick(6.0)
    a.tick(6.0)
    assert a.alarms.is_active("capacity-cluster")
    for i in range(1, 50):  # 850 of 1000
        b.release(f"b{i}", 7.0)
    b.tick(8.0)
    a.tick(8.0)
    assert a.alarms.is_active("capacity-cluster")
    b.release("b50", 9.0)  # 849
    b.tick(10.0)
    a.tick(10.0)
    assert not a.alarms.is_active("capacity-cluster")


def test_pool_peers_view_lists_every_peer_with_its_licenses():
    """K6/P2: the pool shows each peer's licenses, and when a lost peer's licenses leave."""
    pool, a, b = two_peers(rms_a=5, rms_b=7)
    a.tick(1000.0)
    views = {v.name: v for v in pool.peers(1000.0)}
    assert views["peer-a"].alive and views["peer-a"].licenses_until is None
    assert not views["peer-b"].alive and views["peer-b"].licenses_until == GRACE_SECONDS
    assert views["peer-b"].contributed == {"rms": 7}
