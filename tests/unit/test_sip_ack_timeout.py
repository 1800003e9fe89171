"""Release path: a 2xx to INVITE not ACKed within 64*T1 (RFC 3261 §13.3.1.4; issue 10 item 7).

The callee retransmits its 2xx for 64*T1 and then gives up and should BYE; the node, as the proxy
that metered the call, gives up at the same moment: it ends the call (``on_call_ended`` once, the
RMS released) and sends a BYE each way, as for session expiry. One timer per call on the core's
clock, cancelled by the ACK. Sans-I/O, fake clock (T1 = 0.5 s, so 64*T1 = 32 s).
"""

from __future__ import annotations

from meter.codecs.sip import Request, make_response
from meter.sip.dialogs import ANSWERED, Call
from meter.sip.peer import Peer
from meter.sip.session_timer import NO_SESSION
from tests.sipclient import LAB_ANSWER, LAB_OFFER, CoreLab
from tests.unit.test_sip_relay_policy import make_metering

ACK_WAIT = 64 * 0.5


def answered(lab):
    lab.register(lab.bob)
    invite, at_bob = lab.setup_call()
    lab.feed(lab.bob.answer(at_bob, 200, to_tag="bt", body=LAB_ANSWER), lab.bob)
    ok = lab.take_one(lab.alice)
    assert ok.status == 200
    return invite, ok


def ended(lab):
    return lab.policy.events("ended")


def test_2xx_never_acked_ends_the_call_after_64_t1_with_a_bye_each_way_rfc3261_13_3_1_4():
    lab = CoreLab()
    invite, _ = answered(lab)
    lab.clock.advance(ACK_WAIT - 0.1)
    assert ended(lab) == [] and lab.core.calls.views()[0]["state"] == "answered"
    lab.net.take()  # bob's 2xx retransmissions are bob's business (he has no ACK either)
    lab.clock.advance(0.2)
    assert ended(lab) == [("ended", invite.call_id, "no ACK")]
    assert lab.core.calls.views() == []
    byes = {p.address: m for m, p in lab.net.take() if isinstance(m, Request)}
    assert set(byes) == {("10.0.0.2", 5062), ("10.0.0.3", 5064)}
    assert all(m.method == "BYE" and "No ACK" in m.header("reason") for m in byes.values())
    for peer, bye in byes.items():  # the answers to the node's own BYEs stop at the node
        lab.feed(make_response(bye, 200), Peer("udp", *peer))
    assert lab.net.take() == []
    lab.clock.advance(3600)
    lab.policy.assert_every_allowed_call_ended_once()


def test_the_ack_cancels_the_wait():
    lab = CoreLab(max_dialog_age=10000.0, session_expires=0)
    invite, ok = answered(lab)
    lab.clock.advance(ACK_WAIT / 2)
    lab.ack(invite, ok)
    lab.clock.advance(10 * ACK_WAIT)
    assert ended(lab) == [] and lab.core.calls.views()[0]["state"] == "confirmed"
    assert lab.core.dialogs.find(invite.call_id, lab.alice.tag).ack_timer is None


def test_a_late_answer_left_unacked_is_released_the_same_way():
    """Timer B gave up (408), bob's 200 comes after all and re-opens the call; alice never ACKs it."""
    lab = CoreLab()
    lab.register(lab.bob)
    invite, at_bob = lab.setup_call()
    lab.clock.advance(ACK_WAIT)  # Timer B: the node answers 408 and ends the call
    assert ended(lab) == [("ended", invite.call_id, "timeout")]
    lab.net.take()
    lab.feed(lab.bob.answer(at_bob, 200, to_tag="bt", body=LAB_ANSWER), lab.bob)
    assert lab.take_one(lab.alice).status == 200
    assert lab.core.calls.views()[0]["state"] == "answered"
    lab.clock.advance(ACK_WAIT + 0.1)
    assert ended(lab) == [("ended", invite.call_id, "timeout"), ("ended", invite.call_id, "no ACK")]
    lab.policy.assert_every_allowed_call_ended_once()


def test_a_call_restored_answered_waits_for_its_ack_again():
    lab = CoreLab()
    call = Call("restored@x", "ft", "sip:alice@lab.test", "sip:bob@lab.test", "sip:bob@lab.test",
                Peer("udp", "10.0.0.2", 5062), lab.clock.time(), lab.clock.wall(), state=ANSWERED,
                caller_from="<sip:alice@lab.test>;tag=ft", caller_target="sip:alice@10.0.0.2:5062",
                callee_to="<sip:bob@lab.test>;tag=bt", callee_target="sip:bob@10.0.0.3:5064")
    lab.core.calls.restore(call, NO_SESSION)
    lab.clock.advance(ACK_WAIT + 0.1)
    assert ended(lab) == [("ended", "restored@x", "no ACK")]


def test_rms_held_by_an_unacked_call_returns_to_zero():
    m, metering = make_metering()
    lab = CoreLab(policy=metering)
    lab.register(lab.bob)
    caller = lab.alice  # not registered here: an external caller, whose call costs an RMS (C2)
    lab.feed(caller.request("INVITE", "sip:bob@lab.test", body=LAB_OFFER), caller)
    at_bob = [msg for msg, p in lab.net.take() if isinstance(msg, Request)][0]
    lab.feed(lab.bob.answer(at_bob, 200, to_tag="bt", body=LAB_ANSWER), lab.bob)
    assert m.ledger.in_use("rms") > 0
    lab.clock.advance(ACK_WAIT + 0.1)
    assert m.ledger.in_use("rms") == 0 and not m.calls
