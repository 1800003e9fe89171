"""RFC 4028 session timers at the node: what it does to session refresh requests and their 2xx
(§8.1, §8.2), and how it ends, exactly once and with a BYE each way, a call whose session interval
runs out without a refresh (§10). Sans-I/O, fake clock."""

from __future__ import annotations

import pytest

from meter.codecs.sip import SIPError, make_response
from meter.sip.peer import Peer
from meter.sip.session_timer import (
    NO_SESSION, Offer, RequestPlan, Session, plan_request, plan_response, read_min_se, read_session_expires,
)
from tests.sipclient import LAB_ANSWER, LAB_RR, CoreLab, Phone

UPSTREAM_RR = "<sip:10.0.0.50:5060;lr>"


def invite_with(*headers):
    return Phone("alice", "10.0.0.2", 5062).request("INVITE", "sip:bob@lab.test", headers=headers)


# -- §8.1: the node's say on a session refresh request --------------------------------------------------------


@pytest.mark.parametrize("headers, insert, plan", [
    # §8.1: a proxy MAY add Session-Expires (no refresher) to a request without one...
    ((), 1800, RequestPlan(edits=(("Session-Expires", "1800"),), offer=Offer(1800, False))),
    # ...not below the request's Min-SE
    ((("Min-SE", "3600"),), 1800, RequestPlan(edits=(("Session-Expires", "3600"),), offer=Offer(3600, False))),
    # session_expires = 0: the node adds nothing
    ((("Supported", "timer"),), 0, RequestPlan(offer=Offer(0, True))),
    # an acceptable interval is left as it came (a proxy MUST NOT increase it), compact form too
    ((("Session-Expires", "1800;refresher=uac"), ("Supported", "timer")), 1800, RequestPlan(offer=Offer(1800, True))),
    ((("x", "600"),), 1800, RequestPlan(offer=Offer(600, False))),
    # too brief, and the UAC understands 422 (Supported: timer): refuse with the node's Min-SE
    ((("Session-Expires", "60"), ("Supported", "100rel, timer")), 1800, RequestPlan(reject_min_se=90)),
    # too brief, the UAC would not understand 422: raise Min-SE and the interval, refresher untouched
    ((("Session-Expires", "60;refresher=uas"),), 1800,
     RequestPlan(edits=(("Min-SE", "90"), ("Session-Expires", "90;refresher=uas")), offer=Offer(90, False))),
    ((("Session-Expires", "60"), ("Min-SE", "120")), 1800,
     RequestPlan(edits=(("Min-SE", "120"), ("Session-Expires", "120")), offer=Offer(120, False))),
])
def test_request_plan_rfc4028_8_1(headers, insert, plan):
    assert plan_request(invite_with(*headers), min_se=90, insert=insert) == plan


@pytest.mark.parametrize("header", [("Session-Expires", "soon"), ("Session-Expires", "1800;refresher=both"),
                                    ("Min-SE", "ninety"), ("Session-Expires", "1800;;")])
def test_malformed_session_expires_or_min_se_is_a_400(header):
    with pytest.raises(SIPError) as info:
        plan_request(invite_with(header), min_se=90, insert=1800)
    assert info.value.status == 400 and header[0] in info.value.reason


def test_readers_take_the_number_and_the_refresher():
    msg = invite_with(("Session-Expires", " 600 ; Refresher=UAS ;x=1"), ("Min-SE", "90;foo"))
    se = read_session_expires(msg)
    assert (se.interval, se.refresher) == (600, "uas") and read_min_se(msg) == 90
    assert read_session_expires(invite_with()) is None and read_min_se(invite_with()) == 0


# -- §8.2: the 2xx --------------------------------------------------------------------------------------------


def ok_with(*headers, require=()):
    req = invite_with()
    hs = list(headers) + [("Require", r) for r in require]
    return make_response(req, 200, to_tag="bt", headers=hs)


@pytest.mark.parametrize("headers, offer, session, edits", [
    # the UAS settled it: learned, response untouched
    ((("Session-Expires", "900;refresher=uas"),), Offer(1800, True), Session(900, "uas"), ()),
    # the UAS ignored the extension, the UAC supports it: the proxy fills in refresher=uac + Require
    ((), Offer(1800, True), Session(1800, "uac"),
     (("Session-Expires", "1800;refresher=uac"), ("Require", "timer"))),
    # neither end does session timers: no session expiration
    ((), Offer(1800, False), NO_SESSION, ()),
    ((), Offer(0, True), NO_SESSION, ()),
])
def test_response_plan_rfc4028_8_2(headers, offer, session, edits):
    assert plan_response(ok_with(*headers), offer) == (session, edits)


def test_response_plan_adds_timer_to_an_existing_require():
    _, edits = plan_response(ok_with(require=["100rel"]), Offer(1800, True))
    assert dict(edits)["Require"] == "100rel, timer"


# -- the node on the wire -------------------------------------------------------------------------------------


def answered_call(lab, *, invite_headers=(), answer_headers=()):
    """alice calls bob (registered), bob answers 200 with ``answer_headers``, alice ACKs.
    Returns (alice's INVITE, INVITE at bob, 200 at alice)."""
    lab.register(lab.bob)
    invite, at_bob = lab.setup_call(extra_headers=invite_headers)
    lab.feed(lab.bob.answer(at_bob, 200, to_tag="bt", body=LAB_ANSWER, headers=answer_headers), lab.bob)
    ok = lab.take_one(lab.alice)
    assert ok.status == 200
    lab.ack(invite, ok)
    assert [m.method for m in lab.sent_to(lab.bob.peer)] == ["ACK"]
    return invite, at_bob, ok


def in_dialog(lab, invite, method, *, by="alice", cseq, headers=()):
    """An in-dialog request along the route set: alice -> bob, or bob -> alice (From tag "bt")."""
    if by == "alice":
        req = lab.alice.request(method, "sip:bob@10.0.0.3:5064", to="sip:bob@lab.test", to_tag="bt",
                                call_id=invite.call_id, cseq=cseq, headers=[("Route", LAB_RR), *headers])
        lab.feed(req, lab.alice)
        return req, lab.take_one(lab.bob)
    req = lab.bob.request(method, "sip:alice@10.0.0.2:5062", to="sip:alice@lab.test", to_tag=lab.alice.tag,
                          call_id=invite.call_id, cseq=cseq, from_tag="bt", headers=[("Route", LAB_RR), *headers])
    lab.feed(req, lab.bob)
    return req, lab.take_one(lab.alice)


def refresh(lab, invite, method, *, by, cseq, answer_se="1800;refresher=uac"):
    """A session refresh (RFC 4028 §9/§10) passing the node, answered 2xx with ``answer_se``."""
    _, fwd = in_dialog(lab, invite, method, by=by, cseq=cseq, headers=[("Supported", "timer")])
    answerer = lab.bob if by == "alice" else lab.alice
    headers = [("Session-Expires", answer_se)] if answer_se else []
    lab.feed(answerer.answer(fwd, 200, headers=headers), answerer)
    requester = lab.alice if by == "alice" else lab.bob
    ok = lab.take_one(requester)
    assert ok.status == 200 and ok.cseq.method == method
    return ok


def ended(lab):
    return lab.policy.events("ended")


def test_initial_invite_gets_the_nodes_session_expires_rfc4028_8_1():
    lab = CoreLab()
    lab.register(lab.bob)
    _, at_bob = lab.setup_call()
    assert at_bob.header("session-expires") == "1800" and not at_bob.has_header("min-se")
    off = CoreLab(session_expires=0)
    off.register(off.bob)
    _, at_bob = off.setup_call()
    assert not at_bob.has_header("session-expires")


def test_too_brief_interval_from_a_timer_aware_caller_gets_422_and_is_not_metered():
    lab = CoreLab()
    lab.register(lab.bob)
    lab.feed(lab.alice.request("INVITE", "sip:bob@lab.test", headers=[("Session-Expires", "30"),
                                                                      ("Supported", "timer")]), lab.alice)
    resp, peer = lab.net.only()
    assert (resp.status, resp.reason, resp.header("min-se")) == (422, "Session Interval Too Small", "90")
    assert peer == lab.alice.peer and lab.policy.events("invite") == []


def test_too_brief_interval_from_a_caller_without_timer_is_raised_rfc4028_8_1():
    lab = CoreLab()
    lab.register(lab.bob)
    _, at_bob = lab.setup_call(extra_headers=[("Session-Expires", "30;refresher=uac")])
    assert (at_bob.header("session-expires"), at_bob.header("min-se")) == ("90;refresher=uac", "90")


def test_unrefreshed_session_is_ended_once_with_a_bye_each_way_rfc4028_10():
    lab = CoreLab()
    invite, at_bob, ok = answered_call(lab, invite_headers=[("Supported", "timer")],
                                       answer_headers=[("Session-Expires", "1800;refresher=uac")])
    assert ok.header("session-expires") == "1800;refresher=uac"  # §8.2: the UAS's answer is not modified
    lab.clock.advance(900)
    refresh(lab, invite, "UPDATE", by="alice", cseq=2)  # RFC 3311 UPDATE from the caller
    lab.clock.advance(900)
    refresh(lab, invite, "INVITE", by="bob", cseq=7, answer_se="1800;refresher=uas")  # re-INVITE from the callee
    lab.net.take()  # the ACK of the re-INVITE is not needed by the node
    lab.clock.advance(1799)
    assert ended(lab) == [] and lab.core.calls.views()[0]["state"] == "confirmed"
    lab.clock.advance(2)
    assert ended(lab) == [("ended", invite.call_id, "session expired")]
    assert lab.core.calls.views() == [] and lab.core.counters.sessions_expired == 1
    sent = lab.net.take()
    byes = {p.address: m for m, p in sent}
    assert set(byes) == {("10.0.0.3", 5064), ("10.0.0.2", 5062)} and all(m.method == "BYE" for m in byes.values())
    to_bob, to_alice = byes[("10.0.0.3", 5064)], byes[("10.0.0.2", 5062)]
    # to bob, as alice would send it (RFC 3261 §12.2.1.1): her tag, CSeq beyond her UPDATE's 2
    assert to_bob.uri == "sip:bob@10.0.0.3:5064" and to_bob.from_.tag == lab.alice.tag and to_bob.to.tag == "bt"
    assert to_bob.cseq.number == 3 and to_bob.call_id == invite.call_id and not to_bob.has_header("route")
    # to alice, as bob would: his tag, CSeq beyond his re-INVITE's 7
    assert to_alice.uri == "sip:alice@10.0.0.2:5062" and to_alice.from_.tag == "bt"
    assert to_alice.to.tag == lab.alice.tag and to_alice.cseq.number == 8
    for bye in (to_bob, to_alice):
        assert len(bye.vias) == 1 and bye.top_via.host == "10.0.0.1" and "Session expired" in bye.header("reason")
    lab.feed(make_response(to_bob, 200), lab.bob)
    lab.feed(make_response(to_alice, 481), lab.alice)
    assert lab.net.take() == []  # the answers to the node's own BYEs stop at the node
    # alice's own BYE, too late: the call is gone and bob's registration lapsed (3600 s), so it is
    # a request for a dialog the node no longer routes, to a host it does not serve: refused as a
    # relay (RFC 3261 §16.12), and the call is not ended twice
    req = lab.alice.request("BYE", "sip:bob@10.0.0.3:5064", to="sip:bob@lab.test", to_tag="bt",
                            call_id=invite.call_id, cseq=4, headers=[("Route", LAB_RR)])
    lab.feed(req, lab.alice)
    assert lab.take_one(lab.alice).status == 403
    assert ended(lab) == [("ended", invite.call_id, "session expired")]
    lab.policy.assert_every_allowed_call_ended_once()
    lab.clock.advance(3600)
    assert lab.core.txns.clients == {} and ended(lab) == [("ended", invite.call_id, "session expired")]


def test_callee_without_timer_gets_one_from_the_node_and_the_caller_refreshes_rfc4028_8_2():
    lab = CoreLab()
    invite, at_bob, ok = answered_call(lab, invite_headers=[("Supported", "timer")])
    assert at_bob.header("session-expires") == "1800"
    assert ok.header("session-expires") == "1800;refresher=uac" and ok.header_values("require") == ["timer"]
    lab.clock.advance(1800.5)
    assert ended(lab) == [("ended", invite.call_id, "session expired")]


def test_no_session_timer_when_neither_end_does_them():
    lab = CoreLab(max_dialog_age=10000.0)
    invite, _, ok = answered_call(lab)
    assert not ok.has_header("session-expires")
    lab.clock.advance(3 * 1800)
    assert ended(lab) == [] and len(lab.core.calls.views()) == 1
    lab.clock.advance(10000)
    assert ended(lab) == [("ended", invite.call_id, "max dialog age")]


def test_refresh_answered_without_session_expires_turns_the_timer_off():
    lab = CoreLab(max_dialog_age=10000.0)
    invite, _, _ = answered_call(lab, invite_headers=[("Supported", "timer")],
                                 answer_headers=[("Session-Expires", "1800;refresher=uac")])
    lab.clock.advance(900)
    # the refresh says nothing of timers this time, nor does its 2xx: no session expiration (§8.2)
    _, fwd = in_dialog(lab, invite, "UPDATE", by="alice", cseq=2)
    assert fwd.header("session-expires") == "1800"  # the node still offers one
    lab.feed(lab.bob.answer(fwd, 200), lab.bob)
    assert lab.take_one(lab.alice).status == 200
    lab.clock.advance(2 * 1800)
    assert ended(lab) == []


def test_too_brief_refresh_gets_422_and_the_session_keeps_its_interval():
    lab = CoreLab()
    invite, _, _ = answered_call(lab, invite_headers=[("Supported", "timer")],
                                 answer_headers=[("Session-Expires", "1800;refresher=uac")])
    lab.clock.advance(900)
    req = lab.alice.request("UPDATE", "sip:bob@10.0.0.3:5064", to="sip:bob@lab.test", to_tag="bt",
                            call_id=invite.call_id, cseq=2,
                            headers=[("Route", LAB_RR), ("Session-Expires", "45"), ("Supported", "timer")])
    lab.feed(req, lab.alice)
    resp, peer = lab.net.only()
    assert (resp.status, resp.header("min-se"), peer) == (422, "90", lab.alice.peer)
    lab.clock.advance(900.5)
    assert ended(lab) == [("ended", invite.call_id, "session expired")]


def test_session_expiry_byes_follow_the_route_set_through_the_upstream_inline():
    """Inline, the call spirals node -> upstream -> node: Record-Route [node, upstream, node]. Each
    BYE takes the route the far end would have used from the node's place in it, so the upstream
    registrar sees it too; back at the node it is only forwarded."""
    lab = CoreLab(mode="inline")
    lab.feed(lab.bob.register(600), lab.bob)
    fwd, _ = lab.net.only()
    lab.feed(make_response(fwd, 200, to_tag="u", headers=[("Contact", "<sip:bob@10.0.0.3:5064>;expires=600")]),
             lab.upstream)
    lab.net.take()
    invite = lab.alice.request("INVITE", "sip:bob@lab.test", headers=[("Supported", "timer")])
    lab.feed(invite, lab.alice)
    up = [m for m, p in lab.net.take() if p == lab.upstream][0]
    spiral = up.copy()
    spiral.set_uri("sip:bob@10.0.0.3:5064")
    spiral.add_record_route(UPSTREAM_RR)
    spiral.push_via("SIP/2.0/UDP 10.0.0.50:5060;branch=z9hG4bKup1")
    spiral.set_header("Route", LAB_RR)
    lab.feed(spiral, lab.upstream)
    at_bob = [m for m, p in lab.net.take() if p.address == ("10.0.0.3", 5064)][0]
    assert at_bob.header_values("record-route") == [LAB_RR, UPSTREAM_RR, LAB_RR]
    lab.feed(lab.bob.answer(at_bob, 200, to_tag="bt", headers=[("Session-Expires", "120;refresher=uas")]), lab.bob)
    to_up = [m for m, p in lab.net.take() if p == lab.upstream][0]
    to_up.pop_via()
    lab.feed(to_up, lab.upstream)
    ok = lab.take_one(lab.alice)
    assert ok.status == 200
    lab.ack(invite, ok)  # confirmed (RFC 3261 §13.2.2.4): no ACK timeout, only the session can end it
    lab.net.take()
    lab.clock.advance(120.1)  # before Timer E resends the BYEs (T1 = 0.5 s)
    assert ended(lab) == [("ended", invite.call_id, "session expired")]
    byes = lab.net.take()
    assert [p for _, p in byes] == [lab.upstream, lab.upstream]
    to_bob = next(m for m, _ in byes if m.uri == "sip:bob@10.0.0.3:5064")
    to_alice = next(m for m, _ in byes if m.uri == str(invite.contacts[0].uri))
    assert to_bob.header_values("route") == [UPSTREAM_RR, LAB_RR]  # alice's view, from the node's outer entry
    assert to_alice.header_values("route") == [UPSTREAM_RR, LAB_RR]  # bob's view, from the node's inner entry
    # the upstream loose-routes the BYE for bob back to the node, which forwards it to bob
    relayed = to_bob.copy()
    relayed.pop_route()
    relayed.push_via("SIP/2.0/UDP 10.0.0.50:5060;branch=z9hG4bKup2")
    lab.feed(relayed, lab.upstream)
    at_bob_bye = lab.take_one(lab.bob)
    assert at_bob_bye.method == "BYE" and not at_bob_bye.has_header("route") and len(at_bob_bye.vias) == 3
    assert lab.core.counters.loops_detected == 0
    lab.feed(make_response(at_bob_bye, 200), lab.bob)
    back = [m for m, p in lab.net.take() if p == lab.upstream]
    assert [m.status for m in back] == [200]
    back[0].pop_via()
    lab.feed(back[0], lab.upstream)  # the 200 reaches the node's own BYE and stops there
    assert lab.net.take() == []
    assert ended(lab) == [("ended", invite.call_id, "session expired")]


def test_session_expiry_bye_reaches_a_tcp_caller_through_its_connection():
    lab = CoreLab()
    lab.register(lab.bob)
    alice = Phone("alice", "10.0.0.2", 5062, transport="tcp")
    conn = Peer("tcp", "10.0.0.2", 41000, conn=9)  # alice's connection, ephemeral port
    invite = alice.request("INVITE", "sip:bob@lab.test", headers=[("Supported", "timer")])
    lab.core.receive_datagram(invite.to_bytes(), conn)
    at_bob = [m for m, p in lab.net.take() if p.address == ("10.0.0.3", 5064)][0]
    # inbound TCP, outbound UDP: two Record-Route entries (RFC 5658), both the node's
    assert at_bob.header_values("record-route") == [LAB_RR, "<sip:10.0.0.1:5060;transport=tcp;lr>"]
    lab.feed(lab.bob.answer(at_bob, 200, to_tag="bt", headers=[("Session-Expires", "90")]), lab.bob)
    lab.net.take()
    lab.clock.advance(90.1)
    byes = {m.uri: p for m, p in lab.net.take()}
    assert byes == {"sip:alice@10.0.0.2:5062": Peer("tcp", "10.0.0.2", 5062, conn=9),
                    "sip:bob@10.0.0.3:5064": Peer("udp", "10.0.0.3", 5064)}
