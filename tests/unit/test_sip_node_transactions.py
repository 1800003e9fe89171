"""RFC 3261 §17 transaction state machines, driven by messages and a fake clock."""

from __future__ import annotations

import pytest

from meter.codecs.sip import make_response, parse
from meter.sip import transaction as tx
from meter.sip.clock import FakeClock
from meter.sip.peer import Peer
from tests.sipclient import FakeNet, Phone

T1, T2, T4 = 0.5, 4.0, 5.0
UDP = Peer("udp", "10.0.0.9", 5060)
TCP = Peer("tcp", "10.0.0.9", 5060, conn=7)


class Owner:
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def on_response(self, txn, resp):
        self.events.append(("response", resp.status))

    def on_timeout(self, txn):
        self.events.append(("timeout", txn.kind))

    def on_timer_c(self, txn):
        self.events.append(("timer_c",))

    def on_ack(self, txn, ack):
        self.events.append(("ack", ack.method))


@pytest.fixture
def env():
    clock = FakeClock()
    net = FakeNet()
    layer = tx.TransactionLayer(clock, net.send, tx.Timers(T1, T2, T4, c=180.0, d=32.0))
    return clock, net, layer, Owner()


def send_times(clock, layer, until):
    """Advance the clock and note when (relative to now) the layer sent something."""
    times = []
    start = clock.now
    inner = layer.send
    layer.send = lambda data, peer: times.append(round(clock.now - start, 3))
    clock.advance(until)
    layer.send = inner
    return times


def phone_invite():
    alice = Phone("alice", "10.0.0.2", 5062)
    return alice, alice.request("INVITE", "sip:bob@lab.test", body=b"v=0\r\n")


def forwarded(req, branch="z9hG4bKmtrtest1"):
    out = req.copy()
    out.push_via(f"SIP/2.0/UDP 10.0.0.1:5060;branch={branch}")
    return out


# -- INVITE server transaction (RFC 3261 §17.2.1) ------------------------------------------------------


def test_invite_server_resends_last_provisional_on_retransmission(env):
    clock, net, layer, owner = env
    _, inv = phone_invite()
    st = layer.new_server(inv, UDP, tx.server_key(inv), owner)
    st.respond(make_response(inv, 180, to_tag="b1"))
    assert net.only()[0].status == 180
    assert st.receive_request(inv)  # retransmitted INVITE
    assert net.only()[0].status == 180
    assert st.state == tx.PROCEEDING


def test_invite_server_non2xx_retransmits_with_timer_g_until_ack_then_timer_i(env):
    clock, net, layer, owner = env
    _, inv = phone_invite()
    st = layer.new_server(inv, UDP, tx.server_key(inv), owner)
    st.respond(make_response(inv, 486, to_tag="b1"))
    assert net.only()[0].status == 486
    assert st.state == tx.COMPLETED
    # Timer G: T1, 2*T1, 4*T1, then capped at T2 (RFC 3261 §17.2.1)
    times = send_times(clock, layer, 0.5 + 1.0 + 2.0 + 4.0 + 0.01)
    assert times == [0.5, 1.5, 3.5, 7.5]
    ack = parse(inv.to_bytes().replace(b"INVITE sip:", b"ACK sip:", 1).replace(b" INVITE\r\n", b" ACK\r\n"))
    assert st.receive_request(ack)
    assert st.state == tx.CONFIRMED
    assert st.running_timers == ("i",)
    clock.advance(T4)
    assert st.state == tx.TERMINATED
    assert layer.find_server(st.key) is None
    assert owner.events == []


def test_invite_server_timer_h_reports_missing_ack(env):
    clock, net, layer, owner = env
    _, inv = phone_invite()
    st = layer.new_server(inv, UDP, tx.server_key(inv), owner)
    st.respond(make_response(inv, 404, to_tag="x"))
    clock.advance(64 * T1)
    assert st.state == tx.TERMINATED
    assert owner.events == [("timeout", tx.INVITE_SERVER)]


def test_invite_server_over_tcp_does_not_retransmit_and_timer_i_is_zero(env):
    clock, net, layer, owner = env
    _, inv = phone_invite()
    st = layer.new_server(inv, TCP, tx.server_key(inv), owner)
    st.respond(make_response(inv, 486, to_tag="b1"))
    net.take()
    assert "g" not in st.running_timers
    clock.advance(10)
    assert net.take() == []
    ack = parse(inv.to_bytes().replace(b"INVITE sip:", b"ACK sip:", 1).replace(b" INVITE\r\n", b" ACK\r\n"))
    st.receive_request(ack)
    clock.advance(0)
    assert st.state == tx.TERMINATED


def test_invite_server_2xx_goes_to_accepted_absorbs_retransmissions_rfc6026(env):
    clock, net, layer, owner = env
    _, inv = phone_invite()
    st = layer.new_server(inv, UDP, tx.server_key(inv), owner)
    ok = make_response(inv, 200, to_tag="b1")
    st.respond(ok)
    net.take()
    assert st.state == tx.ACCEPTED
    st.receive_request(inv)
    assert net.take() == []  # absorbed: the 2xx is the UAS's to retransmit
    assert st.respond(ok)  # a retransmitted 2xx from downstream passes
    assert net.only()[0].status == 200
    clock.advance(64 * T1)
    assert st.state == tx.TERMINATED


# -- non-INVITE server transaction (RFC 3261 §17.2.2) ----------------------------------------------------


def test_non_invite_server_absorbs_in_trying_then_replays_final_until_timer_j(env):
    clock, net, layer, owner = env
    bob = Phone("bob", "10.0.0.3", 5064)
    reg = bob.register()
    st = layer.new_server(reg, UDP, tx.server_key(reg), owner)
    assert not st.receive_request(reg)  # Trying: nothing to resend
    assert net.take() == []
    st.respond(make_response(reg, 200, to_tag="r"))
    assert net.only()[0].status == 200
    st.receive_request(reg)
    assert net.only()[0].status == 200
    clock.advance(64 * T1 - 0.01)
    assert st.state == tx.COMPLETED
    clock.advance(0.02)
    assert st.state == tx.TERMINATED


def test_non_invite_server_timer_j_is_zero_over_tcp(env):
    clock, net, layer, owner = env
    reg = Phone("bob", "10.0.0.3", 5064, transport="tcp").register()
    st = layer.new_server(reg, TCP, tx.server_key(reg), owner)
    st.respond(make_response(reg, 200, to_tag="r"))
    clock.advance(0)
    assert st.state == tx.TERMINATED


def test_server_key_matches_ack_and_cancel_to_the_invite_rfc3261_17_2_3(env):
    _, inv = phone_invite()
    key = tx.server_key(inv)
    text = inv.to_bytes()
    ack = parse(text.replace(b"INVITE sip:", b"ACK sip:", 1).replace(b" INVITE\r\n", b" ACK\r\n"))
    cancel = parse(text.replace(b"INVITE sip:", b"CANCEL sip:", 1).replace(b" INVITE\r\n", b" CANCEL\r\n"))
    assert tx.server_key(ack) == key
    assert tx.server_key(cancel) != key
    assert tx.server_key(cancel, "INVITE") == key


# -- INVITE client transaction (RFC 3261 §17.1.1) --------------------------------------------------------


def test_invite_client_timer_a_doubles_and_timer_b_times_out(env):
    clock, net, layer, owner = env
    _, inv = phone_invite()
    ct = layer.new_client(forwarded(inv), UDP, owner)
    assert net.only()[0].method == "INVITE"
    times = send_times(clock, layer, 64 * T1 + 0.01)
    assert times == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]  # A: T1, 2T1, 4T1... uncapped
    assert owner.events == [("timeout", tx.INVITE_CLIENT)]
    assert ct.state == tx.TERMINATED
    assert layer.clients == {}


def test_invite_client_provisional_stops_retransmissions_and_non2xx_is_acked(env):
    clock, net, layer, owner = env
    _, inv = phone_invite()
    out = forwarded(inv)
    ct = layer.new_client(out, UDP, owner)
    net.take()
    ringing = make_response(out, 180, to_tag="b1")
    assert layer.match_response(ringing) is ct
    ct.receive_response(ringing)
    assert ct.state == tx.PROCEEDING
    clock.advance(10)
    assert net.take() == []  # no Timer A in Proceeding
    busy = make_response(out, 486, to_tag="b1")
    ct.receive_response(busy)
    ack, peer = net.only()
    # RFC 3261 §17.1.1.3: same branch, To with the response's tag, CSeq number with ACK
    assert ack.method == "ACK" and peer == UDP
    assert ack.top_via.branch == out.top_via.branch and len(ack.vias) == 1
    assert ack.to.tag == "b1" and ack.cseq == (out.cseq.number, "ACK") and ack.uri == out.uri
    ct.receive_response(busy)  # retransmitted final: ACK again, not passed up
    assert net.only()[0].method == "ACK"
    assert owner.events == [("response", 180), ("response", 486)]
    clock.advance(32.0)
    assert ct.state == tx.TERMINATED


def test_invite_client_2xx_accepted_passes_retransmitted_2xx_rfc6026(env):
    clock, net, layer, owner = env
    _, inv = phone_invite()
    out = forwarded(inv)
    ct = layer.new_client(out, UDP, owner)
    ok = make_response(out, 200, to_tag="b1")
    ct.receive_response(ok)
    ct.receive_response(ok)
    assert owner.events == [("response", 200), ("response", 200)]
    assert ct.state == tx.ACCEPTED
    assert not any(m.method == "ACK" for m, _ in net.take() if hasattr(m, "method"))  # 2xx ACK is end to end
    clock.advance(64 * T1)
    assert ct.state == tx.TERMINATED


def test_invite_client_timer_c_then_cancel_guard(env):
    clock, net, layer, owner = env
    _, inv = phone_invite()
    out = forwarded(inv)
    ct = layer.new_client(out, UDP, owner)
    ct.receive_response(make_response(out, 180, to_tag="b1"))
    clock.advance(180.0)
    assert owner.events[-1] == ("timer_c",)
    ct.start_cancel_guard()
    clock.advance(64 * T1)
    assert owner.events[-1] == ("timeout", tx.INVITE_CLIENT)
    assert ct.state == tx.TERMINATED


def test_invite_client_over_tcp_has_no_timer_a_and_timer_d_zero(env):
    clock, net, layer, owner = env
    _, inv = phone_invite()
    out = forwarded(inv)
    ct = layer.new_client(out, TCP, owner)
    assert "a" not in ct.running_timers and "b" in ct.running_timers
    ct.receive_response(make_response(out, 603, to_tag="x"))
    clock.advance(0)
    assert ct.state == tx.TERMINATED


# -- non-INVITE client transaction (RFC 3261 §17.1.2) ----------------------------------------------------


def test_non_invite_client_timer_e_caps_at_t2_and_timer_f_times_out(env):
    clock, net, layer, owner = env
    reg = forwarded(Phone("bob", "10.0.0.3", 5064).register())
    ct = layer.new_client(reg, UDP, owner)
    net.take()
    times = send_times(clock, layer, 64 * T1 + 0.01)
    # E: 0.5, 1, 2, 4(=T2), 4, 4 ... after the first send at 0
    assert times[:5] == [0.5, 1.5, 3.5, 7.5, 11.5]
    assert all(round(b - a, 2) == T2 for a, b in zip(times[3:], times[4:]))
    assert owner.events == [("timeout", tx.NON_INVITE_CLIENT)]
    assert ct.state == tx.TERMINATED


def test_non_invite_client_proceeding_retransmits_every_t2_and_final_starts_timer_k(env):
    clock, net, layer, owner = env
    reg = forwarded(Phone("bob", "10.0.0.3", 5064).register())
    ct = layer.new_client(reg, UDP, owner)
    net.take()
    ct.receive_response(make_response(reg, 100))
    assert ct.state == tx.PROCEEDING
    times = send_times(clock, layer, 9.0)
    assert times[-1] - times[-2] == pytest.approx(T2, abs=0.06)
    ct.receive_response(make_response(reg, 200, to_tag="r"))
    ct.receive_response(make_response(reg, 200, to_tag="r"))  # absorbed in Completed
    assert owner.events == [("response", 100), ("response", 200)]
    clock.advance(T4)
    assert ct.state == tx.TERMINATED


def test_build_cancel_copies_what_rfc3261_9_1_requires(env):
    _, inv = phone_invite()
    out = forwarded(inv)
    cancel = tx.build_cancel(out)
    assert cancel.method == "CANCEL" and cancel.uri == out.uri
    assert [str(v) for v in cancel.vias] == [str(out.top_via)]
    assert cancel.cseq == (out.cseq.number, "CANCEL")
    assert cancel.call_id == out.call_id and cancel.from_.tag == out.from_.tag and cancel.to.tag is None


def test_unknown_events_are_absorbed_not_raised(env):
    clock, net, layer, owner = env
    _, inv = phone_invite()
    st = layer.new_server(inv, UDP, tx.server_key(inv), owner)
    assert st.handle("timer_z") is False
    assert st.handle(tx.R_2XX) is False
    assert st.state == tx.PROCEEDING
