"""A 2xx that arrives after the node already ended the call (its 408 after Timer B, its 487 after
an unanswered CANCEL) and the cause a Timer C timeout reports. docs/design.md principle 4: every call
that is up at the callee has exactly one allowed on_invite / on_call_ended pair open.
Sans-I/O, fake clock."""

from __future__ import annotations

import pytest

from meter.codecs.sip import Request, Response, make_response, parse
from meter.sip.hooks import ALLOW, Verdict
from tests.sipclient import LAB_ANSWER, LAB_RR, CoreLab, Phone, Recorder

ALICE = ("10.0.0.2", 5062)
BOB = ("10.0.0.3", 5064)


class SecondThoughts(Recorder):
    """Allows a call's first INVITE; answers ``second`` when asked again (the pool may have emptied)."""

    def __init__(self, second: Verdict = ALLOW) -> None:
        super().__init__()
        self.infos = []
        self.second = second

    def on_invite(self, info):
        self.infos.append(info)
        super().on_invite(info)
        return ALLOW if len(self.infos) == 1 else self.second


def what(sent) -> list[tuple]:
    return [(m.method if isinstance(m, Request) else m.status, p.address) for m, p in sent]


def cancel_of(invite: Request) -> Request:
    return parse(invite.to_bytes().replace(b"INVITE sip:", b"CANCEL sip:", 1).replace(b" INVITE\r\n", b" CANCEL\r\n"))


def call_given_up_by_timer_b(lab):
    """bob never answers: Timer B (64*T1) and the node answers alice 408 itself."""
    lab.register(lab.bob)
    invite, at_bob = lab.setup_call()
    lab.clock.advance(64 * 0.5)
    assert [m.status for m, _ in lab.net.take() if isinstance(m, Response)] == [408]
    assert lab.policy.events("ended") == [("ended", invite.call_id, "timeout")]
    return invite, at_bob


def test_late_2xx_after_timer_b_reopens_the_call_with_the_same_callinfo():
    lab = CoreLab(policy=SecondThoughts())
    invite, at_bob = call_given_up_by_timer_b(lab)
    ok = lab.bob.answer(at_bob, 200, to_tag="bt", body=LAB_ANSWER)
    lab.feed(ok, lab.bob)
    fwd = lab.take_one(lab.alice)  # RFC 3261 §16.7 step 5: every 2xx is forwarded
    assert fwd.status == 200 and len(fwd.vias) == 1 and fwd.body == LAB_ANSWER
    infos = lab.policy.infos
    assert len(infos) == 2 and infos[1] is infos[0]  # asked again, about the same call
    assert lab.core.calls.views()[0]["state"] == "answered" and lab.core.counters.late_answers == 1
    lab.feed(ok, lab.bob)  # bob retransmits his 2xx until the ACK: forwarded, not asked about again
    assert lab.take_one(lab.alice).status == 200 and len(infos) == 2
    lab.ack(invite, fwd)
    assert [m.method for m in lab.sent_to(lab.bob.peer)] == ["ACK"]
    assert lab.core.calls.views()[0]["state"] == "confirmed"
    bye = lab.alice.request("BYE", "sip:bob@10.0.0.3:5064", to="sip:bob@lab.test", to_tag="bt",
                            call_id=invite.call_id, headers=[("Route", LAB_RR)])
    lab.feed(bye, lab.alice)
    lab.feed(make_response(lab.take_one(lab.bob), 200), lab.bob)
    assert lab.take_one(lab.alice).status == 200
    kinds = [e[0] + (f" {e[2]}" if e[0] == "ended" else "") for e in lab.policy.log if e[1] == invite.call_id]
    assert kinds == ["invite", "ended timeout", "invite", "answered", "confirmed", "ended bye"]
    lab.policy.assert_every_allowed_call_ended_once()
    assert lab.core.calls.views() == []


def test_late_2xx_refused_on_second_ask_is_forwarded_then_byed_both_ways():
    """Refused now (the pool emptied meanwhile): the 2xx still goes to alice (a proxy forwards
    every 2xx), then the node sends a BYE each way so the session it did not meter comes down."""
    lab = CoreLab(policy=SecondThoughts(Verdict.refuse(503, "Service Unavailable", "no RMS left")))
    invite, at_bob = call_given_up_by_timer_b(lab)
    ok = lab.bob.answer(at_bob, 200, to_tag="bt", body=LAB_ANSWER)
    lab.feed(ok, lab.bob)
    sent = lab.net.take()
    assert what(sent) == [(200, ALICE), ("BYE", BOB), ("BYE", ALICE)]
    to_bob, to_alice = sent[1][0], sent[2][0]
    assert (to_bob.from_.tag, to_bob.to.tag, to_bob.cseq.number) == (lab.alice.tag, "bt", invite.cseq.number + 1)
    assert (to_alice.from_.tag, to_alice.to.tag, to_alice.uri) == ("bt", lab.alice.tag, "sip:alice@10.0.0.2:5062")
    assert to_bob.header("reason") == 'SIP;cause=503;text="Service Unavailable"'
    assert lab.core.calls.views() == [] and lab.policy.events("answered") == []
    assert lab.policy.events("ended") == [("ended", invite.call_id, "timeout")]  # nothing new was allowed
    lab.feed(ok, lab.bob)  # a retransmission: forwarded only, no third ask, no more BYEs
    assert what(lab.net.take()) == [(200, ALICE)] and len(lab.policy.infos) == 2
    lab.feed(make_response(to_bob, 200), lab.bob)
    lab.feed(make_response(to_alice, 200), lab.alice)
    assert lab.net.take() == []


def test_2xx_crossing_an_unanswered_cancel_reopens_the_call():
    lab = CoreLab(policy=SecondThoughts())
    lab.register(lab.bob)
    invite, at_bob = lab.setup_call()
    lab.feed(lab.bob.answer(at_bob, 180, to_tag="bt"), lab.bob)
    lab.net.take()
    lab.feed(cancel_of(invite), lab.alice)
    assert sorted(what(lab.net.take()), key=str) == [("CANCEL", BOB), (200, ALICE)]
    lab.clock.advance(64 * 0.5)  # RFC 3261 §9.1: no final answer 64*T1 after the CANCEL
    assert [m.status for m, p in lab.net.take() if p.address == ALICE] == [487]
    assert lab.policy.events("ended") == [("ended", invite.call_id, "cancelled")]
    lab.feed(lab.bob.answer(at_bob, 200, to_tag="bt", body=LAB_ANSWER), lab.bob)  # it had answered after all
    assert what(lab.net.take()) == [(200, ALICE)]
    assert len(lab.policy.infos) == 2 and lab.core.calls.views()[0]["state"] == "answered"
    lab.core.close()
    lab.policy.assert_every_allowed_call_ended_once()
    assert [e[2] for e in lab.policy.events("ended")] == ["cancelled", "node shutdown"]


def test_late_2xx_on_the_branch_that_timed_out_of_a_fork_reopens_the_call():
    lab = CoreLab(policy=SecondThoughts())
    lab.register(lab.bob)
    desk = Phone("bob", "10.0.0.4", 5066)
    lab.feed(desk.register(3600), desk)
    lab.net.take()
    invite = lab.alice.request("INVITE", "sip:bob@lab.test")
    lab.feed(invite, lab.alice)
    forks = {p.address: m for m, p in lab.net.take() if isinstance(m, Request)}
    lab.feed(lab.bob.answer(forks[BOB], 486, to_tag="busy"), lab.bob)  # bob's phone is busy
    lab.clock.advance(64 * 0.5)  # the desk phone says nothing: Timer B on its branch
    assert [m.status for m, p in lab.net.take() if p.address == ALICE] == [408]
    assert lab.policy.events("ended") == [("ended", invite.call_id, "timeout")]
    lab.feed(desk.answer(forks[("10.0.0.4", 5066)], 200, to_tag="desk"), desk)
    assert what(lab.net.take()) == [(200, ALICE)]
    assert len(lab.policy.infos) == 2 and len(lab.core.calls.views()) == 1


def test_late_2xx_after_the_tombstone_expired_is_only_forwarded():
    """The node remembers a call it gave up on for Timer C + 64*T1 (the longest it lets a branch
    ring, plus the 2xx's retransmissions); a 2xx later than that is forwarded as RFC 3261 asks,
    statelessly, and not metered (a known limit)."""
    lab = CoreLab(policy=SecondThoughts())
    invite, at_bob = call_given_up_by_timer_b(lab)
    assert lab.core.dialogs.tombstones == 1
    lab.clock.advance(lab.core.settings.timer_c + 64 * 0.5 + 1.0)
    lab.net.take()
    assert lab.core.dialogs.tombstones == 0
    lab.feed(lab.bob.answer(at_bob, 200, to_tag="bt"), lab.bob)
    assert what(lab.net.take()) == [(200, ALICE)]
    assert len(lab.policy.infos) == 1 and lab.core.counters.late_answers == 0 and lab.core.calls.views() == []


def test_calls_ended_with_a_real_final_answer_leave_no_tombstone():
    lab = CoreLab()
    lab.register(lab.bob)
    _, at_bob = lab.setup_call()
    lab.feed(lab.bob.answer(at_bob, 486, to_tag="bt"), lab.bob)
    lab.net.take()
    assert lab.core.dialogs.tombstones == 0 and lab.policy.events("ended")[0][2] == "rejected 486"


@pytest.mark.parametrize("callee_answers_the_cancel", [True, False])
def test_timer_c_ends_the_call_as_a_timeout_rfc3261_16_8(callee_answers_the_cancel):
    """Timer C cancels a branch that rings too long; whether the callee then answers 487 or nothing
    (the CANCEL guard), the call ended because nobody answered in time: cause "timeout"."""
    lab = CoreLab()
    lab.register(lab.bob)
    invite, at_bob = lab.setup_call()
    lab.feed(lab.bob.answer(at_bob, 180, to_tag="bt"), lab.bob)
    lab.net.take()
    lab.clock.advance(lab.core.settings.timer_c)
    cancels = [m for m, p in lab.net.take() if isinstance(m, Request) and m.method == "CANCEL"]
    assert len(cancels) == 1 and cancels[0].top_via.branch == at_bob.top_via.branch
    if callee_answers_the_cancel:
        lab.feed(make_response(cancels[0], 200), lab.bob)
        lab.feed(lab.bob.answer(at_bob, 487, to_tag="bt"), lab.bob)
        assert sorted(what(lab.net.take()), key=str) == [("ACK", BOB), (487, ALICE)]
    else:
        lab.clock.advance(64 * 0.5)
        assert [m.status for m, p in lab.net.take() if p.address == ALICE] == [408]
    assert lab.policy.events("ended") == [("ended", invite.call_id, "timeout")]
