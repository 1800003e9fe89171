"""The SIP core as a stateful proxy (RFC 3261 §16): registrar, routing, edits, CANCEL, failures,
timeouts, and the policy hooks' contract (every allowed call ends exactly once). Sans-I/O: a fake
network captures what the node sends, a fake clock fires the timers."""

from __future__ import annotations

import pytest

from meter.codecs.sip import Request, Response, make_response, parse
from meter.sip.peer import Peer
from meter.sip.hooks import Verdict
from tests.sipclient import LAB_ANSWER, LAB_OFFER, LAB_RR, CoreLab, Phone, Recorder

RR = LAB_RR
UPSTREAM = Peer("udp", "10.0.0.50", 5060)
OFFER = LAB_OFFER
ANSWER = LAB_ANSWER
Lab = CoreLab


def take_one(lab, phone) -> Request | Response:
    return lab.take_one(phone)


def setup_call(lab, *, body=OFFER, extra_headers=()):
    """alice INVITEs bob (registered); returns (alice's INVITE, what bob received)."""
    return lab.setup_call(body=body, extra_headers=extra_headers)


# -- registrar (standalone) ---------------------------------------------------------------------------------


def test_register_200_lists_bindings_and_tells_the_policy():
    lab = Lab()
    resp = lab.register(lab.alice, expires=600)
    assert resp.header_values("contact") == ["<sip:alice@10.0.0.2:5062>;expires=600"]
    assert lab.policy.log == [("register", "sip:alice@lab.test", 600),
                              ("bindings", "sip:alice@lab.test", ("sip:alice@10.0.0.2:5062",))]
    assert lab.core.registrar.views()[0]["aor"] == "sip:alice@lab.test"


def test_register_too_brief_gets_423_min_expires_and_is_never_charged():
    lab = Lab()
    lab.feed(lab.alice.register(10), lab.alice)
    resp, _ = lab.net.only()
    assert resp.status == 423 and resp.header("min-expires") == "60"
    assert lab.policy.log == []  # the registrar's checks come before the metering hook: nothing to refund


def test_register_over_the_contact_limit_gets_503_and_is_never_charged():
    from meter.sip.location import MAX_BINDINGS_PER_AOR

    lab = Lab()
    contacts = ", ".join(f"<sip:alice@10.0.0.2:{6000 + i}>" for i in range(MAX_BINDINGS_PER_AOR + 1))
    lab.feed(lab.alice.register(600, contact=contacts), lab.alice)
    resp, _ = lab.net.only()
    assert resp.status == 503 and "too many contacts" in resp.reason
    assert lab.policy.log == []


def test_star_unregister_and_expiry_report_empty_bindings():
    lab = Lab()
    lab.register(lab.alice, expires=60)
    lab.register(lab.bob, expires=60)
    lab.feed(lab.alice.register(0, contact="*"), lab.alice)
    assert lab.net.only()[0].status == 200
    assert lab.policy.log[-1] == ("bindings", "sip:alice@lab.test", ())
    lab.clock.advance(61)
    assert lab.policy.log[-1] == ("bindings", "sip:bob@lab.test", ())
    assert lab.core.registrar.views() == []


def test_register_refused_by_policy_gets_status_and_warning():
    lab = Lab(policy=Recorder(register=Verdict.refuse(403, "Forbidden", "no desktop license")))
    lab.feed(lab.alice.register(600), lab.alice)
    resp, _ = lab.net.only()
    assert resp.status == 403
    assert resp.header("warning") == '399 10.0.0.1:5060 "no desktop license"'
    assert lab.core.registrar.views() == []


# -- node-level answers ---------------------------------------------------------------------------------------


def test_options_to_the_node_is_answered_200_even_with_max_forwards_zero():
    lab = Lab()
    for uri, mf in (("sip:10.0.0.1:5060", 70), ("sip:10.0.0.1", 0), ("sip:elsewhere.test", 70)):
        lab.feed(lab.alice.request("OPTIONS", uri, max_forwards=mf), lab.alice)
        resp, peer = lab.net.only()
        assert resp.status == 200 and "INVITE" in resp.header_values("allow") and resp.header("accept") == "application/sdp"
        assert peer.address == ("10.0.0.2", 5062)


def test_malformed_request_gets_400_with_the_codec_reason():
    lab = Lab()
    bad = lab.alice.request("INVITE", "sip:bob@lab.test").to_bytes().replace(b"1 INVITE", b"1 BYE")
    lab.feed(bad, lab.alice)
    resp, peer = lab.net.only()
    assert resp.status == 400 and resp.reason == "Bad Request - CSeq method does not match the request method"
    assert peer == lab.alice.peer
    assert lab.core.counters.malformed_answered == 1


@pytest.mark.parametrize("breakage, reason", [
    ((b"OPTIONS sip:bob@lab.test SIP/2.0", b"OPTIONSsip:bob@lab.test SIP/2.0"), "malformed Request-Line"),
    ((b"OPTIONS sip:bob@lab.test SIP/2.0", b"OPT@ONS sip:bob@lab.test SIP/2.0"), "malformed method"),
    ((b"Max-Forwards:", b"Max\xffForwards:"), "malformed header name"),
    ((b"Max-Forwards: 70", b"Max-Forwards 70"), "malformed header line"),
    ((b"Max-Forwards: 70", b"Max-Forwards: 7\n0"), "bare CR or LF"),
])
def test_broken_lines_still_get_400_built_from_the_sound_ones(breakage, reason):
    # What sipsak's randtrash mode sends: one damaged line; the rest is enough to answer it.
    lab = Lab()
    bad = lab.alice.request("OPTIONS", "sip:bob@lab.test").to_bytes().replace(*breakage, 1)
    lab.feed(bad, lab.alice)
    resp, peer = lab.net.only()
    assert resp.status == 400 and reason in resp.reason and peer == lab.alice.peer
    assert resp.call_id and resp.cseq.method == "OPTIONS" and b"\n0" not in resp.to_bytes()
    assert lab.core.counters.malformed_answered == 1 and lab.core.counters.internal_errors == 0


def test_a_broken_ack_is_never_answered():
    lab = Lab()
    bad = lab.alice.request("ACK", "sip:bob@lab.test").to_bytes().replace(b"ACK sip:", b"ACKsip:", 1)
    lab.feed(bad, lab.alice)
    assert lab.net.take() == [] and lab.core.counters.malformed_dropped == 1


def test_unsupported_uri_scheme_keeps_the_codec_status_hint():
    lab = Lab()
    bad = lab.alice.request("INVITE", "sip:bob@lab.test").to_bytes().replace(
        b"INVITE sip:bob@lab.test", b"INVITE http://example.com/", 1)
    lab.feed(bad, lab.alice)
    resp, _ = lab.net.only()
    assert resp.status == 416 and "http" in resp.reason


@pytest.mark.parametrize("garbage", [b"\x00\xff garbage", b"NOT SIP AT ALL", b"SIP/2.0 200 OK\r\n\r\n", b"\r\n\r\n"])
def test_garbage_and_broken_responses_are_dropped_and_counted(garbage):
    lab = Lab()
    lab.feed(garbage, lab.alice)
    assert lab.net.take() == []
    c = lab.core.counters
    assert c.malformed_dropped + c.keepalives == 1
    assert c.internal_errors == 0


def test_max_forwards_zero_gets_483():
    lab = Lab()
    lab.register(lab.bob)
    lab.feed(lab.alice.request("INVITE", "sip:bob@lab.test", max_forwards=0), lab.alice)
    assert [m.status for m, _ in lab.net.take()] == [483]


def test_proxy_require_gets_420_with_unsupported():
    lab = Lab()
    lab.feed(lab.alice.request("OPTIONS", "sip:bob@lab.test", headers=[("Proxy-Require", "foo")]), lab.alice)
    resp, _ = lab.net.only()
    assert resp.status == 420 and resp.header("unsupported") == "foo"


def test_unknown_alias_404_known_but_unregistered_480():
    lab = Lab()
    lab.feed(lab.alice.request("INVITE", "sip:nobody@lab.test"), lab.alice)
    assert [m.status for m, _ in lab.net.take()] == [404]
    lab.register(lab.bob, expires=60)
    lab.feed(lab.bob.register(0), lab.bob)
    lab.net.take()
    lab.feed(lab.alice.request("INVITE", "sip:bob@lab.test"), lab.alice)
    assert [m.status for m, _ in lab.net.take()] == [480]
    assert lab.policy.events("invite") == []  # refused before metering: nothing to end


# -- a call through the node --------------------------------------------------------------------------------------


def test_call_setup_and_teardown_edits_only_what_a_proxy_must():
    lab = Lab()
    lab.register(lab.alice)
    lab.register(lab.bob)
    invite, at_bob = setup_call(lab, extra_headers=[("X-Untouched", "odd   spacing ,kept")])
    # RFC 3261 §16.6: Request-URI = the binding, Max-Forwards - 1, Record-Route, our Via on top.
    assert at_bob.uri == "sip:bob@10.0.0.3:5064"
    assert at_bob.max_forwards == 69
    assert at_bob.header_values("record-route") == [RR]
    ours, theirs = at_bob.vias
    assert ours.host == "10.0.0.1" and ours.port == 5060 and ours.branch.startswith("z9hG4bKmtr")
    assert theirs.branch == invite.top_via.branch and theirs.rport == 5062 and theirs.received == "10.0.0.2"
    assert b"X-Untouched: odd   spacing ,kept\r\n" in at_bob.to_bytes()
    assert at_bob.body == OFFER

    lab.feed(lab.bob.answer(at_bob, 180, to_tag="bt"), lab.bob)
    ringing = take_one(lab, lab.alice)
    assert ringing.status == 180 and len(ringing.vias) == 1  # §16.7 step 3: our Via popped
    assert lab.core.calls.views()[0]["state"] == "early"

    lab.feed(lab.bob.answer(at_bob, 200, to_tag="bt", body=ANSWER), lab.bob)
    ok = take_one(lab, lab.alice)
    assert ok.status == 200 and ok.body == ANSWER and ok.header_values("record-route") == [RR]

    ack = lab.alice.request("ACK", "sip:bob@10.0.0.3:5064", to="sip:bob@lab.test", to_tag="bt",
                            call_id=invite.call_id, cseq=invite.cseq.number, headers=[("Route", RR)])
    lab.feed(ack, lab.alice)
    fwd_ack = take_one(lab, lab.bob)
    assert fwd_ack.method == "ACK" and not fwd_ack.has_header("route") and len(fwd_ack.vias) == 2
    assert lab.core.calls.views()[0]["state"] == "confirmed"

    bye = lab.bob.request("BYE", "sip:alice@10.0.0.2:5062", to="sip:alice@lab.test", to_tag=lab.alice.tag,
                          call_id=invite.call_id, headers=[("Route", RR)])
    # bob's From tag must be his dialog tag "bt"
    bye = parse(bye.to_bytes().replace(f"tag={lab.bob.tag}".encode(), b"tag=bt"))
    lab.feed(bye, lab.bob)
    at_alice = take_one(lab, lab.alice)
    assert at_alice.method == "BYE" and at_alice.uri == "sip:alice@10.0.0.2:5062"
    lab.feed(make_response(at_alice, 200), lab.alice)
    assert take_one(lab, lab.bob).status == 200

    call_id = invite.call_id
    assert [e[0] for e in lab.policy.log if len(e) > 1 and e[1] == call_id] == \
        ["invite", "answered", "confirmed", "ended"]
    assert lab.policy.events("answered") == [("answered", call_id, OFFER, ANSWER)]
    assert lab.policy.events("ended") == [("ended", call_id, "bye")]
    assert lab.policy.events("invite")[0][2] is True  # callee registered locally
    assert lab.core.calls.views() == []


def test_in_dialog_request_to_a_local_aor_goes_through_the_location_service():
    # RFC 3261 §16.5: a peer whose remote target stayed the AOR (its 2xx had no Contact) still
    # reaches the callee; the Request-URI becomes the registered contact (§16.6 step 2).
    lab = Lab()
    lab.register(lab.bob)
    invite, at_bob = setup_call(lab)
    lab.feed(lab.bob.answer(at_bob, 200, to_tag="bt", body=ANSWER), lab.bob)
    take_one(lab, lab.alice)
    bye = lab.alice.request("BYE", "sip:bob@lab.test", to="sip:bob@lab.test", to_tag="bt",
                            call_id=invite.call_id, cseq=invite.cseq.number + 1, headers=[("Route", RR)])
    lab.feed(bye, lab.alice)
    at_bob_bye = take_one(lab, lab.bob)
    assert at_bob_bye.method == "BYE" and at_bob_bye.uri == "sip:bob@10.0.0.3:5064"
    lab.feed(make_response(at_bob_bye, 200), lab.bob)
    assert take_one(lab, lab.alice).status == 200 and lab.core.calls.views() == []


def test_retransmitted_invite_is_absorbed_and_answered_by_the_transaction():
    lab = Lab()
    lab.register(lab.bob)
    invite, at_bob = setup_call(lab)
    lab.feed(invite, lab.alice)
    msgs = lab.net.take()
    assert [(m.status, p.address) for m, p in msgs] == [(100, ("10.0.0.2", 5062))]
    assert lab.core.counters.retransmissions_absorbed == 1


def test_cancel_before_answer_ends_the_call_once():
    lab = Lab()
    lab.register(lab.bob)
    invite, at_bob = setup_call(lab)
    lab.feed(lab.bob.answer(at_bob, 180, to_tag="bt"), lab.bob)
    assert take_one(lab, lab.alice).status == 180
    cancel = parse(invite.to_bytes().replace(b"INVITE sip:", b"CANCEL sip:", 1)
                   .replace(b"1 INVITE\r\n", b"1 CANCEL\r\n"))
    lab.feed(cancel, lab.alice)
    msgs = lab.net.take()
    by_dest = {(p.address, getattr(m, "method", None) or m.status) for m, p in msgs}
    assert by_dest == {(("10.0.0.2", 5062), 200), (("10.0.0.3", 5064), "CANCEL")}
    fwd_cancel = next(m for m, _ in msgs if isinstance(m, Request))
    assert fwd_cancel.top_via.branch == at_bob.top_via.branch  # RFC 3261 §9.1
    lab.feed(make_response(fwd_cancel, 200), lab.bob)
    lab.feed(lab.bob.answer(at_bob, 487, to_tag="bt"), lab.bob)
    msgs = lab.net.take()
    assert {(p.address, getattr(m, "method", None) or m.status) for m, p in msgs} == {
        (("10.0.0.3", 5064), "ACK"), (("10.0.0.2", 5062), 487)}
    alice_ack = parse(invite.to_bytes().replace(b"INVITE sip:", b"ACK sip:", 1).replace(b"1 INVITE\r\n", b"1 ACK\r\n"))
    lab.feed(alice_ack, lab.alice)
    assert lab.net.take() == []  # RFC 3261 §17.2.1: the ACK of a non-2xx stays at this hop
    assert lab.policy.events("ended") == [("ended", invite.call_id, "cancelled")]
    lab.policy.assert_every_allowed_call_ended_once()
    assert lab.core.calls.views() == []


def test_cancel_before_any_provisional_waits_for_one_rfc3261_9_1():
    lab = Lab()
    lab.register(lab.bob)
    invite, at_bob = setup_call(lab)
    cancel = parse(invite.to_bytes().replace(b"INVITE sip:", b"CANCEL sip:", 1)
                   .replace(b"1 INVITE\r\n", b"1 CANCEL\r\n"))
    lab.feed(cancel, lab.alice)
    assert [(m.status, p.address) for m, p in lab.net.take()] == [(200, ("10.0.0.2", 5062))]
    lab.feed(lab.bob.answer(at_bob, 180, to_tag="bt"), lab.bob)
    sent = lab.sent_to(lab.bob.peer)
    assert [m.method for m in sent] == ["CANCEL"]


def test_busy_callee_486_is_acked_hop_by_hop_and_relayed():
    lab = Lab()
    lab.register(lab.bob)
    invite, at_bob = setup_call(lab)
    lab.feed(lab.bob.answer(at_bob, 486, to_tag="bt"), lab.bob)
    msgs = lab.net.take()
    ack = next(m for m, p in msgs if isinstance(m, Request))
    busy = next(m for m, p in msgs if isinstance(m, Response))
    assert ack.method == "ACK" and ack.top_via.branch == at_bob.top_via.branch and ack.to.tag == "bt"
    assert busy.status == 486 and len(busy.vias) == 1
    assert lab.policy.events("ended") == [("ended", invite.call_id, "rejected 486")]
    assert lab.core.calls.views() == []


def test_parallel_fork_to_two_contacts_cancels_the_loser():
    lab = Lab()
    lab.register(lab.bob)
    desk = Phone("bob", "10.0.0.4", 5066)
    lab.feed(desk.register(3600), desk)
    lab.net.take()
    invite = lab.alice.request("INVITE", "sip:bob@lab.test", body=OFFER)
    lab.feed(invite, lab.alice)
    msgs = lab.net.take()
    forks = {p.address: m for m, p in msgs if isinstance(m, Request)}
    assert set(forks) == {("10.0.0.3", 5064), ("10.0.0.4", 5066)}
    for phone in (lab.bob, desk):
        lab.feed(phone.answer(forks[(phone.host, phone.port)], 180, to_tag=phone.host), phone)
    lab.net.take()
    lab.feed(desk.answer(forks[("10.0.0.4", 5066)], 200, to_tag="10.0.0.4", body=ANSWER), desk)
    msgs = lab.net.take()
    assert {(p.address, getattr(m, "method", None) or m.status) for m, p in msgs} == {
        (("10.0.0.2", 5062), 200), (("10.0.0.3", 5064), "CANCEL")}
    lab.feed(lab.bob.answer(forks[("10.0.0.3", 5064)], 487, to_tag="10.0.0.3"), lab.bob)
    assert [getattr(m, "method", None) for m, p in lab.net.take()] == ["ACK"]  # the 487 is not relayed


def test_no_answer_from_next_hop_gives_408_and_empty_dialog_table():
    lab = Lab(mode="inline")
    invite = lab.alice.request("INVITE", "sip:carol@lab.test", body=OFFER)
    lab.feed(invite, lab.alice)
    sent = lab.net.take()
    assert [(getattr(m, "method", None) or m.status, p) for m, p in sent] == [(100, lab.alice.peer),
                                                                             ("INVITE", UPSTREAM)]
    lab.clock.advance(64 * 0.5)  # Timer B
    final = [m for m, p in lab.net.take() if isinstance(m, Response)]
    assert [r.status for r in final] == [408]
    assert lab.core.calls.views() == []
    assert lab.policy.events("ended") == [("ended", invite.call_id, "timeout")]


def test_invite_refused_by_policy_gets_verdict_and_is_not_forwarded():
    lab = Lab(policy=Recorder(invite=Verdict.refuse(403, "Forbidden", 'no "RMS" left')))
    lab.register(lab.bob)
    lab.feed(lab.alice.request("INVITE", "sip:bob@lab.test", body=OFFER), lab.alice)
    msgs = lab.net.take()
    assert [(m.status, p.address) for m, p in msgs] == [(403, ("10.0.0.2", 5062))]
    assert msgs[0][0].header("warning") == '399 10.0.0.1:5060 "no \\"RMS\\" left"'
    assert lab.policy.events("ended") == []


@pytest.mark.parametrize("hook, request_kind", [("on_invite", "INVITE"), ("on_register", "REGISTER")])
def test_policy_exception_answers_500_and_the_node_keeps_going(hook, request_kind):
    lab = Lab(policy=Recorder(explode=hook))
    lab.register(lab.bob) if request_kind == "INVITE" else None
    req = lab.alice.request("INVITE", "sip:bob@lab.test") if request_kind == "INVITE" else lab.alice.register(600)
    lab.feed(req, lab.alice)
    assert [m.status for m, _ in lab.net.take()] == [500]
    assert lab.core.counters.hook_errors == 1
    lab.feed(lab.alice.request("OPTIONS", "sip:10.0.0.1"), lab.alice)
    assert lab.net.only()[0].status == 200


def test_node_shutdown_ends_every_call_and_binding_once():
    lab = Lab()
    lab.register(lab.alice)
    lab.register(lab.bob)
    invite, at_bob = setup_call(lab)
    lab.feed(lab.bob.answer(at_bob, 200, to_tag="bt", body=ANSWER), lab.bob)
    lab.core.close()
    lab.core.close()
    assert lab.policy.events("ended") == [("ended", invite.call_id, "node shutdown")]
    assert sorted(e[1] for e in lab.policy.log[-2:]) == ["sip:alice@lab.test", "sip:bob@lab.test"]
    assert all(e[2] == () for e in lab.policy.log[-2:])
    lab.policy.assert_every_allowed_call_ended_once()


def test_reaper_ends_calls_older_than_max_dialog_age():
    lab = Lab(max_dialog_age=30.0)
    lab.register(lab.bob)
    invite, at_bob = setup_call(lab)
    lab.feed(lab.bob.answer(at_bob, 200, to_tag="bt", body=ANSWER), lab.bob)
    lab.clock.advance(31.0)
    assert lab.policy.events("ended") == [("ended", invite.call_id, "max dialog age")]
    assert lab.core.calls.views() == []


def test_every_allowed_call_ends_exactly_once_across_scenarios():
    """Answered+BYE, cancelled, rejected, timed out and shutdown calls: one end each."""
    lab = Lab()
    lab.register(lab.bob)
    # rejected
    _, at_bob = setup_call(lab)
    lab.feed(lab.bob.answer(at_bob, 603, to_tag="x"), lab.bob)
    assert sorted(getattr(m, "method", None) or str(m.status) for m, _ in lab.net.take()) == ["603", "ACK"]
    # timed out at the callee (no answer at all: Timer B)
    setup_call(lab)
    lab.clock.advance(33.0)
    sent = lab.net.take()
    assert 408 in [m.status for m, _ in sent if isinstance(m, Response)]
    # answered then still up at shutdown
    _, at_bob = setup_call(lab)
    lab.feed(lab.bob.answer(at_bob, 200, to_tag="y", body=ANSWER), lab.bob)
    lab.feed(lab.bob.answer(at_bob, 200, to_tag="y", body=ANSWER), lab.bob)  # retransmitted 2xx
    lab.core.close()
    lab.policy.assert_every_allowed_call_ended_once()
    causes = sorted(e[2] for e in lab.policy.events("ended"))
    assert causes == ["node shutdown", "rejected 603", "timeout"]


# -- inline mode ----------------------------------------------------------------------------------------------------


def test_inline_register_goes_upstream_with_path_and_bindings_are_learned():
    lab = Lab(mode="inline")
    reg = lab.alice.register(600)
    lab.feed(reg, lab.alice)
    fwd, peer = lab.net.only()
    assert peer == UPSTREAM and fwd.method == "REGISTER" and fwd.uri == reg.uri
    assert fwd.header("path") == RR  # RFC 3327
    ok = make_response(fwd, 200, to_tag="up", headers=[("Contact", "<sip:alice@10.0.0.2:5062>;expires=300")])
    lab.feed(ok, UPSTREAM)
    relayed, peer = lab.net.only()
    assert relayed.status == 200 and peer.address == ("10.0.0.2", 5062) and len(relayed.vias) == 1
    assert [(b["aor"], b["contact"], b["expires"]) for b in lab.core.registrar.views()] == [
        ("sip:alice@lab.test", "sip:alice@10.0.0.2:5062", 300)]
    assert lab.policy.log[-1] == ("bindings", "sip:alice@lab.test", ("sip:alice@10.0.0.2:5062",))


@pytest.mark.parametrize("status", [401, 403, 407])
def test_inline_register_refused_upstream_releases_its_reservation_at_once(status):
    """An upstream's digest challenge or refusal settles the REGISTER: its reservation is released
    when the answer passes, not when a timer lapses (R9: no license without a binding)."""
    from tests.unit.test_metering import ROOM_KIT, make_metering
    from meter.metering.sip import SipMetering

    metering, _, _ = make_metering(mode="inline")
    lab = Lab(mode="inline", policy=SipMetering(metering, inline=True))
    reg = lab.alice.register(600, headers=[("User-Agent", ROOM_KIT)])
    lab.feed(reg, lab.alice)
    fwd, _ = lab.net.only()
    assert metering.ledger.in_use("room") == 1 and metering.registration_views()[0]["pending"]
    lab.feed(make_response(fwd, status, to_tag="up"), UPSTREAM)
    relayed, _ = lab.net.only()
    assert relayed.status == status  # the challenge passes through untouched
    assert metering.ledger.in_use("room") == 0 and not metering.registrations


def test_inline_register_the_upstream_never_answers_is_released_at_timer_f():
    lab = Lab(mode="inline")
    lab.feed(lab.alice.register(600), lab.alice)
    lab.net.take()
    lab.clock.advance(64 * 0.5 + 0.1)  # Timer F (RFC 3261 §17.1.2.2)
    timeout = [m for m, _ in lab.net.take() if isinstance(m, Response)]
    assert [m.status for m in timeout] == [408]
    assert lab.policy.events("register_failed") == [("register_failed", "sip:alice@lab.test", "timeout")]


def test_inline_register_answered_200_is_not_reported_failed():
    lab = Lab(mode="inline")
    lab.feed(lab.alice.register(600), lab.alice)
    fwd, _ = lab.net.only()
    lab.feed(make_response(fwd, 200, to_tag="up", headers=[("Contact", "<sip:alice@10.0.0.2:5062>;expires=300")]),
             UPSTREAM)
    assert not lab.policy.events("register_failed") and lab.policy.events("bindings")


def test_inline_spiral_through_the_upstream_is_one_call_with_one_end():
    lab = Lab(mode="inline")
    # bob's binding as learned from the upstream's 200 OK
    lab.feed(lab.bob.register(600), lab.bob)
    fwd, _ = lab.net.only()
    lab.feed(make_response(fwd, 200, to_tag="u", headers=[("Contact", "<sip:bob@10.0.0.3:5064>;expires=600")]),
             UPSTREAM)
    lab.net.take()
    invite = lab.alice.request("INVITE", "sip:bob@lab.test", body=OFFER)
    lab.feed(invite, lab.alice)
    up = [m for m, p in lab.net.take() if p == UPSTREAM][0]
    assert up.uri == "sip:bob@lab.test" and up.header_values("record-route") == [RR]
    # the upstream's lookup: Request-URI = contact, Route = the Path, its own Record-Route and Via
    spiral = up.copy()
    spiral.set_uri("sip:bob@10.0.0.3:5064")
    spiral.add_record_route("<sip:10.0.0.50:5060;lr>")
    spiral.push_via("SIP/2.0/UDP 10.0.0.50:5060;branch=z9hG4bKup1")
    spiral.set_header("Route", RR)
    lab.feed(spiral, UPSTREAM)
    msgs = lab.net.take()
    at_bob = [m for m, p in msgs if p.address == ("10.0.0.3", 5064)][0]
    assert at_bob.uri == "sip:bob@10.0.0.3:5064" and not at_bob.has_header("route")
    assert len(at_bob.vias) == 4 and at_bob.header_values("record-route") == [RR, "<sip:10.0.0.50:5060;lr>", RR]
    assert len(lab.policy.events("invite")) == 1  # the spiral is the same call
    ok = lab.bob.answer(at_bob, 200, to_tag="bt", body=ANSWER)
    lab.feed(ok, lab.bob)
    to_up = [m for m, p in lab.net.take() if p == UPSTREAM][0]
    to_up.pop_via()  # the upstream relays it back down
    lab.feed(to_up, UPSTREAM)
    final = take_one(lab, lab.alice)
    assert final.status == 200 and len(final.vias) == 1
    assert len(lab.policy.events("answered")) == 1
    # BYE from alice along the route set: node, upstream, node
    bye = lab.alice.request("BYE", "sip:bob@10.0.0.3:5064", to="sip:bob@lab.test", to_tag="bt",
                            call_id=invite.call_id, headers=[("Route", f"{RR}, <sip:10.0.0.50:5060;lr>, {RR}")])
    lab.feed(bye, lab.alice)
    b1 = [m for m, p in lab.net.take() if p == UPSTREAM][0]
    assert b1.header_values("route") == ["<sip:10.0.0.50:5060;lr>", RR]
    b1.pop_route()
    b1.push_via("SIP/2.0/UDP 10.0.0.50:5060;branch=z9hG4bKup2")
    lab.feed(b1, UPSTREAM)
    b2 = take_one(lab, lab.bob)
    lab.feed(make_response(b2, 200), lab.bob)
    r1 = [m for m, p in lab.net.take() if p == UPSTREAM][0]
    r1.pop_via()
    lab.feed(r1, UPSTREAM)
    assert take_one(lab, lab.alice).status == 200
    lab.policy.assert_every_allowed_call_ended_once()
    assert lab.policy.events("ended") == [("ended", invite.call_id, "bye")]


def test_request_looping_back_unchanged_gets_482():
    lab = Lab(mode="inline")
    invite = lab.alice.request("INVITE", "sip:carol@lab.test")
    lab.feed(invite, lab.alice)
    up = [m for m, p in lab.net.take() if p == UPSTREAM][0]
    up.push_via("SIP/2.0/UDP 10.0.0.50:5060;branch=z9hG4bKloop")
    lab.feed(up, UPSTREAM)  # the upstream sent it straight back, Request-URI unchanged
    msgs = lab.net.take()
    assert [(m.status, p) for m, p in msgs] == [(482, UPSTREAM)]
    assert lab.core.counters.loops_detected == 1


def test_tcp_callee_gets_a_double_record_route_rfc5658():
    lab = Lab()
    conn_peer = Peer("tcp", "10.0.0.3", 40000, conn=9)  # bob's TCP connection, ephemeral port
    tcp_bob = Phone("bob", "10.0.0.3", 5064, transport="tcp")
    lab.feed(tcp_bob.register(600), conn_peer)
    resp, peer = lab.net.only()
    # RFC 3261 §18.2.2: the same connection, or a new one to the Via's sent-by port if it is gone
    assert resp.status == 200 and peer == Peer("tcp", "10.0.0.3", 5064, conn=9)
    lab.feed(lab.alice.request("INVITE", "sip:bob@lab.test", body=OFFER), lab.alice)
    msgs = lab.net.take()
    at_bob, peer = next((m, p) for m, p in msgs if isinstance(m, Request))
    assert peer == Peer("tcp", "10.0.0.3", 5064, conn=9)  # its connection first, else its contact
    assert at_bob.top_via.transport == "TCP"
    assert at_bob.header_values("record-route") == ["<sip:10.0.0.1:5060;transport=tcp;lr>", RR]


def test_late_offer_is_reported_at_the_ack_with_offer_from_2xx_and_answer_from_ack():
    lab = Lab()
    lab.register(lab.bob)
    invite, at_bob = setup_call(lab, body=b"")
    lab.feed(lab.bob.answer(at_bob, 200, to_tag="bt", body=OFFER), lab.bob)
    lab.net.take()
    assert lab.policy.events("answered") == []
    ack = lab.alice.request("ACK", "sip:bob@10.0.0.3:5064", to="sip:bob@lab.test", to_tag="bt",
                            call_id=invite.call_id, cseq=invite.cseq.number, headers=[("Route", RR)], body=ANSWER)
    lab.feed(ack, lab.alice)
    assert lab.policy.events("answered") == [("answered", invite.call_id, OFFER, ANSWER)]
    assert [e[0] for e in lab.policy.log if e[0] in ("answered", "confirmed")] == ["answered", "confirmed"]


def test_malformed_header_read_late_is_answered_400_by_its_transaction():
    lab = Lab()
    lab.register(lab.bob)
    req = lab.alice.request("INVITE", "sip:bob@lab.test", headers=[("Route", "<sip:10.0.0.1:5060;lr>, <bad uri>")])
    lab.feed(req, lab.alice)
    resp, peer = lab.net.only()
    assert resp.status == 400 and resp.reason.startswith("Bad Request") and peer == lab.alice.peer
    lab.feed(req, lab.alice)  # its retransmission gets the same answer from the transaction
    again, _ = lab.net.only()
    assert again.to_bytes() == resp.to_bytes()
    assert lab.core.counters.internal_errors == 0


def test_unreachable_next_hop_counts_as_503_rfc3261_16_9():
    lab = Lab()
    tcp_bob = Phone("bob", "10.0.0.3", 5064, transport="tcp")
    lab.feed(tcp_bob.register(600), Peer("tcp", "10.0.0.3", 40000, conn=9))
    lab.net.take()
    invite, _ = setup_call(lab)
    lab.core.transport_failed(Peer("tcp", "10.0.0.3", 5064))  # the connect to bob's contact failed
    final = take_one(lab, lab.alice)
    assert final.status == 503 and "unreachable" in final.reason
    assert lab.policy.events("ended") == [("ended", invite.call_id, "unreachable")]
    assert lab.core.calls.views() == []


def test_a_dropped_header_line_takes_its_continuation_lines_with_it():
    # RFC 3261 §7.3.1: a continuation belongs to the line above; that line was left out, so is it
    # (it must not be glued onto the sound header before).
    lab = Lab()
    bad = lab.alice.request("OPTIONS", "sip:bob@lab.test").to_bytes().replace(
        b"Max-Forwards: 70", b"Max Forwards: 70\r\n  still broken", 1)
    lab.feed(bad, lab.alice)
    resp, _ = lab.net.only()
    assert resp.status == 400 and "malformed header name" in resp.reason
    assert b"still broken" not in resp.to_bytes()


def test_too_many_header_lines_get_the_documented_400():
    """[sip] max_headers: a request with more header lines is answered 400 (config/meter.toml), not dropped."""
    lab = Lab(max_headers=16)
    req = lab.alice.register(600, headers=[(f"X-Pad-{i}", "1") for i in range(20)])
    lab.feed(req, lab.alice)
    resp, _ = lab.net.only()
    assert resp.status == 400 and "too many header fields" in resp.reason
    assert resp.call_id == req.call_id and lab.policy.log == []
