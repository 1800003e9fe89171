"""The SIP core's timer wheel (meter/sip/timer_wheel.py): bucketed deadlines behind ``call_later``.

Driven by FakeClock; one test runs on a real event loop (uvloop) so the single loop timer is real.
"""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from meter.sip.clock import FakeClock, LoopClock
from meter.sip.timer_wheel import TimerWheel

RES = 0.01  # the default resolution: 100 ticks per second


@pytest.fixture
def wheel():
    clock = FakeClock(start=1000.0)
    return clock, TimerWheel(clock)


def recorder(clock, fired):
    def note(name):
        fired.append((name, round(clock.now - 1000.0, 6)))
    return note


def test_timers_fire_in_deadline_order_whatever_order_they_were_started(wheel):
    clock, w = wheel
    fired: list = []
    note = recorder(clock, fired)
    for name, delay in (("c", 3.0), ("a", 0.5), ("b", 1.0), ("a2", 0.5), ("d", 0.503), ("e", 0.501)):
        w.call_later(delay, note, name)
    clock.advance(5)
    assert [name for name, _ in fired] == ["a", "a2", "e", "d", "b", "c"]  # ties keep their start order


def test_a_timer_never_fires_early_and_at_most_one_tick_late(wheel):
    clock, w = wheel
    fired: list = []
    clock.advance(0.0037)  # start off a tick boundary
    start = clock.now
    for delay in (0.5, 0.5001, 0.7777, 1.234, 32.0):
        w.call_later(delay, lambda d=delay: fired.append((d, clock.now - start)))
    clock.advance(40)
    assert len(fired) == 5
    for delay, at in fired:
        assert delay - 1e-9 <= at <= delay + RES + 1e-9, (delay, at)


def test_a_timer_exactly_on_a_tick_fires_at_its_deadline_not_a_tick_later(wheel):
    """RFC 3261 Timer G from T1 = 0.5 s: 0.5, 1.5, 3.5 s after the final answer, to the millisecond."""
    clock, w = wheel
    fired: list = []
    note = recorder(clock, fired)
    w.call_later(0.5, note, "g1")
    w.call_later(1.5, note, "g2")
    clock.advance(0.5)
    assert fired == [("g1", 0.5)]
    clock.advance(1.0)
    assert fired == [("g1", 0.5), ("g2", 1.5)]


def test_cancelled_timer_does_not_fire_and_frees_its_place(wheel):
    clock, w = wheel
    fired: list = []
    keep = w.call_later(1.0, fired.append, "keep")
    gone = w.call_later(1.0, fired.append, "gone")
    assert len(w) == 2
    gone.cancel()
    assert gone.cancelled and not keep.cancelled
    assert len(w) == 1  # removed from its bucket at once, not when its tick comes
    clock.advance(2)
    assert fired == ["keep"]


def test_cancel_of_a_fired_timer_or_twice_is_harmless(wheel):
    clock, w = wheel
    fired: list = []
    first = w.call_later(0.5, fired.append, 1)
    clock.advance(1)
    first.cancel()
    first.cancel()
    later = w.call_later(0.5, fired.append, 2)  # the wheel still works afterwards
    later.cancel()
    later.cancel()
    w.call_later(0.5, fired.append, 3)
    clock.advance(1)
    assert fired == [1, 3]


def test_a_callback_cancelling_a_later_timer_of_the_same_tick_stops_it(wheel):
    clock, w = wheel
    fired: list = []
    second = None

    def first():
        fired.append("first")
        second.cancel()

    w.call_later(0.501, first)
    second = w.call_later(0.502, fired.append, "second")  # same 10 ms bucket
    clock.advance(1)
    assert fired == ["first"]


def test_rearm_from_the_callback_keeps_absolute_deadlines_no_drift(wheel):
    """A timer re-armed from its own callback (Timer G/E style) at T1, 2T1, 4T1, then T2 steps:
    each firing lands on its deadline, however many times it was re-armed."""
    clock, w = wheel
    fired: list = []
    delays = iter([0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0])

    def fire():
        fired.append(round(clock.now - 1000.0, 6))
        nxt = next(delays, None)
        if nxt is not None:
            w.call_later(nxt, fire)

    w.call_later(next(delays), fire)
    clock.advance(60)
    assert fired == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]


def test_a_timer_started_by_a_callback_never_fires_in_the_same_run(wheel):
    clock, w = wheel
    fired: list = []

    def chain():
        fired.append(round(clock.now - 1000.0, 6))
        if len(fired) < 3:
            w.call_later(0.000001, chain)  # below one tick: the next tick, not this one again

    w.call_later(0.5, chain)
    clock.advance(0.5)
    assert fired == [0.5]
    clock.advance(RES)
    assert fired == [0.5, 0.51]


def test_rearm_by_cancel_and_start_moves_the_deadline(wheel):
    clock, w = wheel
    fired: list = []
    handle = w.call_later(1.0, fired.append, "old")
    clock.advance(0.5)
    handle.cancel()
    w.call_later(1.0, fired.append, "new")  # restarted: 1.0 s from now (RFC 3261 §16.7 Timer C)
    clock.advance(0.9)
    assert fired == []
    clock.advance(0.2)
    assert fired == ["new"]


def test_zero_delay_runs_on_the_next_loop_pass_as_before(wheel):
    """RFC 3261 Timers D, I, J, K are zero over reliable transports: not held a tick."""
    clock, w = wheel
    fired: list = []
    w.call_later(0, fired.append, "now")
    assert len(w) == 0
    clock.advance(0)
    assert fired == ["now"]


def test_one_loop_timer_whatever_the_number_of_wheel_timers(wheel):
    clock, w = wheel
    handles = [w.call_later(32.0, lambda: None) for _ in range(1000)]  # Timer J of 1000 transactions
    handles += [w.call_later(0.5 + i * 0.001, lambda: None) for i in range(1000)]
    assert clock.pending == 1
    for h in handles[1000:]:
        h.cancel()
    clock.advance(1)
    assert clock.pending == 1  # re-armed for the Timer J bucket only
    assert len(w) == 1000


def test_a_failing_callback_does_not_lose_the_others_of_its_tick(wheel, caplog):
    clock, w = wheel
    fired: list = []
    w.call_later(0.5, lambda: 1 / 0)
    w.call_later(0.5, fired.append, "after")
    clock.advance(1)
    assert fired == ["after"]
    assert "sip.timer_wheel.callback_error" in caplog.text


def test_close_forgets_everything_and_stops_the_loop_timer(wheel):
    clock, w = wheel
    fired: list = []
    handle = w.call_later(0.5, fired.append, 1)
    w.close()
    assert clock.pending == 0 and len(w) == 0
    handle.cancel()  # harmless after close
    clock.advance(2)
    assert fired == []


def test_on_a_real_event_loop_timers_fire_in_order_within_a_tick_of_their_deadline():
    async def run():
        loop = asyncio.get_running_loop()
        w = TimerWheel(LoopClock(loop))
        fired: list = []
        start = loop.time()
        for delay in (0.05, 0.02, 0.03, 0.021):
            w.call_later(delay, lambda d=delay: fired.append((d, loop.time() - start)))
        w.call_later(0.025, fired.append, "cancelled").cancel()
        await asyncio.sleep(0.2)
        return fired

    fired = uvloop.run(run())
    assert [d for d, _ in fired] == [0.02, 0.021, 0.03, 0.05]
    assert all(at >= d - 0.002 for d, at in fired)  # the loop's own clock resolution, never a tick early


def test_rfc3261_timer_j_of_many_transactions_rides_one_loop_timer_and_fires_at_64_t1():
    """Non-INVITE server transactions answered over UDP wait out Timer J (64*T1, RFC 3261 §17.2.2):
    a thousand of them hold one loop timer, and each ends when its own J fires."""
    from meter.codecs.sip import make_response
    from meter.sip import transaction as tx
    from meter.sip.peer import Peer
    from tests.sipclient import FakeNet, Phone

    clock = FakeClock(start=1000.0)
    net = FakeNet()
    layer = tx.TransactionLayer(clock, net.send, tx.Timers(0.5, 4.0, 5.0))
    phone = Phone("alice", "10.0.0.2", 5062)
    udp = Peer("udp", "10.0.0.2", 5062)
    txns = []
    for i in range(1000):
        req = phone.request("OPTIONS", "sip:lab.test")
        st = layer.new_server(req, udp, tx.server_key(req), None)
        st.respond(make_response(req, 200))
        txns.append(st)
        if i == 499:
            clock.advance(0.25)  # the second half answered a quarter second later
    assert clock.pending == 1 and len(layer.wheel) == 1000
    assert all(t.running_timers == ("j",) for t in txns)
    clock.advance(32.0 - 0.25 - 0.001)
    assert all(t.state == tx.COMPLETED for t in txns)
    clock.advance(0.001)  # 64*T1 after the first half's answer
    assert [t.state for t in txns[:500]] == [tx.TERMINATED] * 500
    assert [t.state for t in txns[500:]] == [tx.COMPLETED] * 500
    clock.advance(0.25)
    assert all(t.state == tx.TERMINATED for t in txns)
    assert len(layer.servers) == 0 and len(layer.wheel) == 0 and clock.pending == 0


def test_a_transaction_ended_early_leaves_nothing_on_the_wheel():
    """RFC 3261 §17.1.2.2: a final answer stops Timers E and F of a non-INVITE client transaction."""
    from meter.codecs.sip import make_response
    from meter.sip import transaction as tx
    from meter.sip.peer import Peer
    from tests.sipclient import FakeNet, Phone

    clock = FakeClock(start=1000.0)
    net = FakeNet()
    layer = tx.TransactionLayer(clock, net.send, tx.Timers(0.5, 4.0, 5.0))
    req = Phone("alice", "10.0.0.2", 5062).request("OPTIONS", "sip:lab.test")
    req.push_via("SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKwheel1")
    ct = layer.new_client(req, Peer("udp", "10.0.0.9", 5060), None)
    assert ct.running_timers == ("e", "f") and len(layer.wheel) == 2
    ct.receive_response(make_response(req, 200))
    assert ct.running_timers == ("k",) and len(layer.wheel) == 1  # E and F gone from their buckets
    clock.advance(5.0)  # Timer K = T4
    assert ct.terminated and len(layer.wheel) == 0
