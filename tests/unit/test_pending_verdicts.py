"""Verdicts that come later (meter.sip.hooks.PendingVerdict): a worker process's hooks are answered
by the owner over a socket, so on_register/on_invite may return a verdict still to come. The node
waits with the server transaction open, then carries on with the same rules as for an immediate
verdict; a CANCEL or a shutdown meanwhile still leaves every allowed charge released exactly once.
Sans-I/O, fake clock, the real SipCore."""

from __future__ import annotations

import pytest

from meter.codecs.sip import Request, Response, make_response, parse
from meter.sip.hooks import ALLOW, PendingVerdict, Verdict
from tests.sipclient import LAB_ANSWER, LAB_RR, CoreLab, Recorder

UPSTREAM_ADDRESS = ("10.0.0.50", 5060)
ALICE = ("10.0.0.2", 5062)
BOB = ("10.0.0.3", 5064)


class Later(Recorder):
    """Metering hooks whose on_register/on_invite answers come later: each question gets a
    PendingVerdict the test resolves. ``now`` answers the first ``now`` questions at once instead."""

    def __init__(self, now: int = 0) -> None:
        super().__init__()
        self.pending: list[PendingVerdict] = []
        self.now = now
        self.asked = 0

    def _answer(self):
        self.asked += 1
        if self.asked <= self.now:
            return ALLOW
        pending = PendingVerdict()
        self.pending.append(pending)
        return pending

    def on_register(self, info):
        super().on_register(info)
        return self._answer()

    def on_invite(self, info):
        super().on_invite(info)
        return self._answer()


def what(sent) -> list[tuple]:
    return [(m.method if isinstance(m, Request) else m.status, p.address) for m, p in sent]


def cancel_of(invite: Request) -> Request:
    return parse(invite.to_bytes().replace(b"INVITE sip:", b"CANCEL sip:", 1).replace(b" INVITE\r\n", b" CANCEL\r\n"))


def registered_bob(lab: CoreLab) -> None:
    """bob registers (his verdict resolved at once) so that alice can call him."""
    lab.feed(lab.bob.register(3600), lab.bob)
    lab.policy.pending.pop().resolve(ALLOW)
    assert what(lab.net.take()) == [(200, BOB)]


# -- the PendingVerdict itself ----------------------------------------------------------------------------


def test_pending_verdict_runs_its_callbacks_once_in_order_and_at_once_when_resolved():
    pending, seen = PendingVerdict(), []
    assert pending.verdict is None
    pending.add_done_callback(lambda v: seen.append(("first", v)))
    pending.add_done_callback(lambda v: 1 / 0)  # a broken callback is logged; the next still runs
    pending.add_done_callback(lambda v: seen.append(("second", v)))
    refusal = Verdict.refuse(503, "Service Unavailable")
    pending.resolve(refusal)
    pending.resolve(ALLOW)  # ignored
    assert seen == [("first", refusal), ("second", refusal)] and pending.verdict is refusal
    pending.add_done_callback(lambda v: seen.append(("late", v)))
    assert seen[-1] == ("late", refusal)


# -- REGISTER -------------------------------------------------------------------------------------------


def test_standalone_register_allowed_later_is_applied_then_and_a_retransmission_is_absorbed():
    lab = CoreLab(policy=Later())
    reg = lab.alice.register(600)
    lab.feed(reg, lab.alice)
    lab.feed(reg, lab.alice)  # RFC 3261 §17.2.2: the retransmission meets the waiting transaction
    assert lab.net.take() == [] and lab.policy.asked == 1 and lab.core.registrar.views() == []
    assert lab.core.counters.retransmissions_absorbed == 1
    lab.policy.pending[0].resolve(ALLOW)
    ok, peer = lab.net.only()
    assert ok.status == 200 and peer.address == ALICE and [str(c.uri) for c in ok.contacts] == [lab.alice.contact_uri]
    assert lab.policy.events("bindings") == [("bindings", lab.alice.aor, (lab.alice.contact_uri,))]
    assert [b["contact"] for b in lab.core.registrar.views()] == [lab.alice.contact_uri]
    lab.feed(reg, lab.alice)  # now answered: the transaction replays its 200
    assert what(lab.net.take()) == [(200, ALICE)] and lab.policy.asked == 1


def test_standalone_register_refused_later_gets_the_verdicts_answer_and_binds_nothing():
    lab = CoreLab(policy=Later())
    lab.feed(lab.alice.register(600), lab.alice)
    lab.policy.pending[0].resolve(Verdict.refuse(403, "Forbidden", "no licence left"))
    refused, _ = lab.net.only()
    assert (refused.status, refused.reason) == (403, "Forbidden")
    assert refused.header("warning") == '399 10.0.0.1:5060 "no licence left"'
    assert lab.core.registrar.views() == [] and lab.policy.events("bindings") == []


def test_standalone_register_overtaken_while_waiting_is_checked_again_and_the_charge_follows_the_bindings():
    """Two REGISTERs of one Call-ID wait; the newer one's verdict comes first. The older one is then
    out of order (RFC 3261 §10.3 step 7): refused by the registrar, and the hooks hear the
    bindings as they stand, not the older request's."""
    lab = CoreLab(policy=Later())
    older = lab.alice.register(600, call_id="reg-a", cseq=1)
    newer = lab.alice.register(1200, call_id="reg-a", cseq=2)
    lab.feed(older, lab.alice)
    lab.feed(newer, lab.alice)
    lab.policy.pending[1].resolve(ALLOW)
    assert what(lab.net.take()) == [(200, ALICE)]
    lab.policy.pending[0].resolve(ALLOW)
    late, _ = lab.net.only()
    assert late.status == 500 and "out-of-order" in late.reason
    assert [e[2] for e in lab.policy.events("bindings")] == [(lab.alice.contact_uri,)] * 2
    assert [b["expires"] for b in lab.core.registrar.views()] == [1200]


def test_inline_register_allowed_later_goes_upstream_and_its_200_teaches_the_bindings():
    lab = CoreLab(mode="inline", policy=Later())
    reg = lab.alice.register(600)
    lab.feed(reg, lab.alice)
    assert lab.net.take() == []
    lab.policy.pending[0].resolve(ALLOW)
    fwd, peer = lab.net.only()
    assert peer.address == UPSTREAM_ADDRESS and fwd.method == "REGISTER" and fwd.header("path") == LAB_RR
    lab.feed(make_response(fwd, 200, to_tag="up", headers=[("Contact", f"<{lab.alice.contact_uri}>;expires=300")]),
             lab.upstream)
    relayed, peer = lab.net.only()
    assert relayed.status == 200 and peer.address == ALICE
    assert lab.policy.log[-1] == ("bindings", lab.alice.aor, (lab.alice.contact_uri,))
    assert [(b["contact"], b["expires"]) for b in lab.core.registrar.views()] == [(lab.alice.contact_uri, 300)]


def test_register_verdicts_after_shutdown_release_what_they_charged():
    """Nothing is sent after close; an allowed inline REGISTER releases its reservation, an allowed
    standalone one hears that its alias has no bindings (the node that held them is gone)."""
    inline = CoreLab(mode="inline", policy=Later())
    inline.feed(inline.alice.register(600), inline.alice)
    inline.core.close()
    inline.policy.pending[0].resolve(ALLOW)
    assert inline.net.take() == []
    assert inline.policy.events("register_failed") == [("register_failed", inline.alice.aor, "abandoned")]

    standalone = CoreLab(policy=Later())
    standalone.feed(standalone.alice.register(600), standalone.alice)
    standalone.core.close()
    standalone.policy.pending[0].resolve(ALLOW)
    assert standalone.net.take() == [] and standalone.core.registrar.views() == []
    assert standalone.policy.events("bindings") == [("bindings", standalone.alice.aor, ())]


def test_register_refused_after_shutdown_releases_nothing():
    lab = CoreLab(mode="inline", policy=Later())
    lab.feed(lab.alice.register(600), lab.alice)
    lab.core.close()
    lab.policy.pending[0].resolve(Verdict.refuse(403))
    assert lab.net.take() == [] and lab.policy.events("register_failed") == []


def test_a_verdict_that_is_not_a_verdict_counts_as_allow():
    lab = CoreLab(policy=Later())
    lab.feed(lab.alice.register(600), lab.alice)
    lab.policy.pending[0].resolve(None)
    assert what(lab.net.take()) == [(200, ALICE)]


# -- INVITE ---------------------------------------------------------------------------------------------


def test_invite_allowed_later_is_forwarded_then_with_record_route_and_one_100():
    lab = CoreLab(policy=Later())
    registered_bob(lab)
    invite = lab.alice.request("INVITE", "sip:bob@lab.test", body=b"v=0\r\n")
    lab.feed(invite, lab.alice)
    assert what(lab.net.take()) == [(100, ALICE)]  # RFC 3261 §16.2: at once, the verdict may take a while
    lab.feed(invite, lab.alice)  # a retransmission: the 100 again, no second question
    assert what(lab.net.take()) == [(100, ALICE)] and len(lab.policy.events("invite")) == 1
    lab.policy.pending[-1].resolve(ALLOW)
    at_bob, peer = lab.net.only()  # no second 100
    assert at_bob.method == "INVITE" and peer.address == BOB
    assert at_bob.header_values("record-route") == [LAB_RR] and len(at_bob.vias) == 2
    assert [c["state"] for c in lab.core.calls.views()] == ["trying"]
    lab.feed(lab.bob.answer(at_bob, 200, to_tag="bt", body=LAB_ANSWER), lab.bob)
    assert what(lab.net.take()) == [(200, ALICE)]
    lab.core.close()
    assert [e[2] for e in lab.policy.events("ended")] == ["node shutdown"]


@pytest.mark.parametrize("status,reason", [(403, "Forbidden"), (503, "Service Unavailable")])
def test_invite_refused_later_gets_the_verdicts_status(status, reason):
    lab = CoreLab(policy=Later())
    registered_bob(lab)
    lab.feed(lab.alice.request("INVITE", "sip:bob@lab.test"), lab.alice)
    lab.net.take()
    lab.policy.pending[-1].resolve(Verdict.refuse(status, reason, "pool empty"))
    refused, peer = lab.net.only()
    assert (refused.status, refused.reason, peer.address) == (status, reason, ALICE)
    assert refused.header("warning") == '399 10.0.0.1:5060 "pool empty"'
    assert lab.core.calls.views() == [] and lab.policy.events("ended") == []


@pytest.mark.parametrize("later", [ALLOW, Verdict.refuse(403)])
def test_cancel_while_the_verdict_is_pending_answers_487_and_an_allowed_call_ends_once(later):
    lab = CoreLab(policy=Later())
    registered_bob(lab)
    invite = lab.alice.request("INVITE", "sip:bob@lab.test")
    lab.feed(invite, lab.alice)
    lab.net.take()
    lab.feed(cancel_of(invite), lab.alice)
    answers = [(m.status, m.cseq.method) for m, _ in lab.net.take()]
    assert answers == [(200, "CANCEL"), (487, "INVITE")]  # RFC 3261 §9.2
    lab.policy.pending[-1].resolve(later)
    lab.policy.pending[-1].resolve(later)  # a second resolve is ignored
    assert lab.net.take() == [] and lab.core.calls.views() == []
    expected = [("ended", invite.call_id, "cancelled")] if later.allowed else []
    assert lab.policy.events("ended") == expected
    lab.core.close()
    assert lab.policy.events("ended") == expected


def test_invite_allowed_after_shutdown_is_released_and_nothing_is_sent():
    lab = CoreLab(policy=Later())
    registered_bob(lab)
    invite = lab.alice.request("INVITE", "sip:bob@lab.test")
    lab.feed(invite, lab.alice)
    lab.net.take()
    lab.core.close()
    lab.policy.pending[-1].resolve(ALLOW)
    assert lab.net.take() == []
    assert lab.policy.events("ended") == [("ended", invite.call_id, "node shutdown")]


def test_a_continuation_that_raises_is_counted_and_answered_500(monkeypatch):
    lab = CoreLab(policy=Later())
    registered_bob(lab)
    lab.feed(lab.alice.request("INVITE", "sip:bob@lab.test"), lab.alice)
    lab.net.take()

    def broken(*args):
        raise RuntimeError("bug after the verdict")

    monkeypatch.setattr(lab.core.calls.dialogs, "add", broken)
    lab.policy.pending[-1].resolve(ALLOW)  # nothing escapes into the resolver
    failed, peer = lab.net.only()
    assert (failed.status, peer.address) == (500, ALICE) and lab.core.counters.internal_errors == 1

    monkeypatch.setattr(lab.core.location, "apply", broken)
    lab.feed(lab.alice.register(600), lab.alice)
    lab.policy.pending[-1].resolve(ALLOW)
    failed, _ = lab.net.only()
    assert failed.status == 500 and failed.cseq.method == "REGISTER" and lab.core.counters.internal_errors == 2


def test_a_verdict_resolved_before_it_is_returned_carries_on_at_once():
    class Ready(Recorder):
        def on_invite(self, info):
            super().on_invite(info)
            pending = PendingVerdict()
            pending.resolve(ALLOW)
            return pending

    lab = CoreLab(policy=Ready())
    lab.register(lab.bob)
    invite, at_bob = lab.setup_call()  # one 100, the INVITE at bob: as with an immediate verdict
    assert at_bob.header_values("record-route") == [LAB_RR]


# -- a 2xx after the node gave up (late answer) ------------------------------------------------------


def late_answer_pending(lab):
    """bob never answers in time (Timer B: 408 to alice); then his 200 comes and the re-ask waits."""
    lab.feed(lab.bob.register(3600), lab.bob)
    lab.net.take()
    invite = lab.alice.request("INVITE", "sip:bob@lab.test", body=b"v=0\r\n")
    lab.feed(invite, lab.alice)
    at_bob = [m for m, _ in lab.net.take() if isinstance(m, Request)][0]
    lab.clock.advance(64 * 0.5)
    assert [m.status for m, _ in lab.net.take() if isinstance(m, Response)] == [408]
    ok = lab.bob.answer(at_bob, 200, to_tag="bt", body=LAB_ANSWER)
    lab.feed(ok, lab.bob)
    assert what(lab.net.take()) == [(200, ALICE)]  # forwarded at once, whatever the verdict
    lab.feed(ok, lab.bob)  # bob retransmits: forwarded, not asked about a third time
    assert what(lab.net.take()) == [(200, ALICE)] and len(lab.policy.events("invite")) == 2
    return invite


def test_late_answer_refused_later_sends_the_byes_then():
    lab = CoreLab(policy=Later(now=2))  # bob's REGISTER and the first INVITE at once; the re-ask later
    invite = late_answer_pending(lab)
    lab.policy.pending[0].resolve(Verdict.refuse(503, "Service Unavailable"))
    assert what(lab.net.take()) == [("BYE", BOB), ("BYE", ALICE)]
    assert lab.policy.events("ended") == [("ended", invite.call_id, "timeout")]


def test_late_answer_allowed_later_reopens_the_call():
    lab = CoreLab(policy=Later(now=2))
    invite = late_answer_pending(lab)
    lab.policy.pending[0].resolve(ALLOW)
    assert lab.net.take() == [] and [c["state"] for c in lab.core.calls.views()] == ["answered"]
    lab.core.close()
    assert [e[2] for e in lab.policy.events("ended")] == ["timeout", "node shutdown"]
    assert [e[0] for e in lab.policy.log if e[1] == invite.call_id] == [
        "invite", "ended", "invite", "answered", "ended"]


def test_late_answer_allowed_after_shutdown_is_released():
    lab = CoreLab(policy=Later(now=2))
    invite = late_answer_pending(lab)
    lab.core.close()
    lab.policy.pending[0].resolve(ALLOW)
    assert lab.net.take() == []
    assert lab.policy.events("ended") == [("ended", invite.call_id, "timeout"),
                                          ("ended", invite.call_id, "node shutdown")]
