"""Chaos test of license accounting with two SIP workers (issue 11, ``meter.workers``).

The random interleavings of ``test_chaos_accounting`` (REGISTER / refresh / unregister / expiry,
INVITE / answers / ACK / CANCEL / BYE, retransmissions, held messages, silence, restarts), now over
an owner (worker 0, the one ledger) and worker 1, whose questions, verdicts, replicated bindings and
outcomes travel a link that delivers them late: the next one to three messages either way at any
moment, or everything at once. Endpoints are spread over the workers by their address
(SO_REUSEPORT); bob, carol and the trunk send by the shared port, so their in-dialog requests may
reach the worker that does not hold the dialog and are relayed to the one that does. Worker 1 may
be lost (killed) at any moment, with part of what it wrote still unread.

Whenever the link is quiet: the ledger never goes negative and holds exactly what the metering
records imply (R9: one license per alias; C4: RMS in half units), which is exactly the union of
what both workers carry (a call is charged once whichever worker holds it, C2), what the owner's
location holds, and worker 1's replica of it. At the end, once the link has delivered everything
and time has run past every timer, every in-use count is zero.

Then the same over a few dense calls, and the orderings that matter for workers one by one.
``test_bug_*`` reproduce three bugs this world found in meter/workers/pool.py (fixed there; they
stay as regression tests).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

from tests.chaos_workers import OWNER, WORKER, WorkersWorld
from tests.chaos_harness import MEDIA
from tests.unit.test_chaos_accounting import (
    CALL_OPS, CALL_PAIRS, GENEROUS, MAX_BOOTS, PHONES, TINY, AccountingChaos, run_call_ops,
)

MAX_LOSSES = 2


class WorkersChaos(AccountingChaos):
    """Every rule of the one-core chaos test, plus the link's and worker 1's own disorder."""

    def __init__(self) -> None:
        RuleBasedStateMachine.__init__(self)
        self.world = WorkersWorld(licenses=self.LICENSES, enforcement=self.ENFORCEMENT, autocheck=False)
        self.failed = False

    @initialize(names=st.sets(st.sampled_from(PHONES), min_size=2))
    def phones_registered(self, names):
        """As in the one-core test, the phones start registered, whichever worker they reach."""
        super().phones_registered(names)
        self.world.settle()

    @precondition(lambda self: bool(self.world.links[OWNER] or self.world.links[WORKER]))
    @rule(to=st.sampled_from((OWNER, WORKER)), count=st.integers(1, 3))
    def link_delivers(self, to, count):
        """The next few messages one way: a verdict, a replica, an outcome arrives late."""
        self.world.deliver_link(to, count)

    @rule()
    def link_settles(self):
        self.world.settle()

    @precondition(lambda self: bool(self.world.calls))
    @rule(data=st.data(), side=st.sampled_from(("caller", "callee")))
    def call_progresses_with_the_link_quiet(self, data, side):
        """The link catches up, then a call takes its next ordinary step: without it the late
        verdicts keep most calls from ever being answered, and whole call lives on worker 1 (and
        BYEs through the wrong worker) would be rare."""
        self.world.settle()
        self.call_progresses(data, side)

    # Losing worker 1 matters when it holds something: calls charged to it, REGISTERs charged and
    # not yet bound, or messages on the link.
    @precondition(lambda self: self.world.worker_losses < MAX_LOSSES and (
        self.world.pool.workers[1].calls or self.world.pool.workers[1].reservations or not self.world.quiet))
    @rule(written=st.one_of(st.none(), st.integers(0, 3)))
    def worker_lost(self, written):
        """Worker 1 killed: its calls end in the owner, its REGISTERs in flight are released, a new
        worker 1 starts with the owner's bindings (``WorkerPool._lost``, ``_sync_all``)."""
        self.world.lose_worker(written)

    # A node restart restarts both workers; it matters when either carries calls.
    @precondition(lambda self: self.world.boots < MAX_BOOTS and any(len(c.dialogs) for c in self.world.cores.values()))
    @rule(fresh_ledger=st.booleans())
    def node_restarts(self, fresh_ledger):
        left = self.world.restart(fresh_ledger=fresh_ledger)
        if left:
            self.failed = True
        assert not left, f"node shutdown left charges behind: {left}"


class WorkersTinyPoolEnforce(WorkersChaos):
    """R11, C6, P1 across workers: refusals decided by the one ledger, whichever worker asked."""

    LICENSES = TINY


CHAOS_SETTINGS = settings(max_examples=100, stateful_step_count=50, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])

TestWorkersChaosGenerousPoolEnforce = WorkersChaos.TestCase
TestWorkersChaosGenerousPoolEnforce.settings = CHAOS_SETTINGS
TestWorkersChaosTinyPoolEnforce = WorkersTinyPoolEnforce.TestCase
TestWorkersChaosTinyPoolEnforce.settings = CHAOS_SETTINGS


# -- the same checks, dense in calls: the one-core test's call operations plus the link's ----------------

# Calls between the trunk, alice and bob, carol and dave cross the workers both ways; the link
# delivers a few messages one way, or catches up.
WORKER_CALL_OPS = CALL_OPS + ("link", "link", "link", "settle")


@pytest.mark.parametrize("licenses, enforcement", [(GENEROUS, "enforce"), (TINY, "enforce")],
                         ids=["generous-enforce", "tiny-enforce"])
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(calls=st.lists(st.tuples(st.sampled_from(CALL_PAIRS), st.sampled_from(sorted(MEDIA))), min_size=1, max_size=4),
       ops=st.lists(st.tuples(st.sampled_from(WORKER_CALL_OPS), st.integers(0, 7), st.integers(0, 15)),
                    min_size=5, max_size=60))
def test_c2_c4_c6_interleaved_calls_over_two_workers_balance_and_drain_to_zero(licenses, enforcement, calls, ops):
    w = WorkersWorld(licenses=licenses, enforcement=enforcement)
    for name in PHONES:
        w.register(w.endpoint(name), 600)
    w.settle()

    def link(op, choice):
        if op == "link":
            w.deliver_link((OWNER, WORKER)[choice % 2], 1 + choice // 2 % 3)
        elif op == "settle":
            w.settle()

    run_call_ops(w, calls, ops, link)
    assert w.drain() == []


# -- the orderings that matter for workers ----------------------------------------------------------------


def world(licenses=GENEROUS) -> WorkersWorld:
    """alice (room, worker 1) and bob (desktop, worker 0) registered, the link quiet."""
    w = WorkersWorld(licenses=licenses)
    assert (w.worker_of("alice"), w.worker_of("bob"), w.worker_of("carol"), w.worker_of("gw")) == (1, 0, 0, 1)
    w.register(w.endpoint("alice"))
    w.register(w.endpoint("bob"))
    w.settle()
    assert w.in_use() == {"rms": 0, "room": 1, "desktop": 1, "cmr": 0}
    return w


def assert_drains_to_zero(w: WorkersWorld) -> None:
    assert w.drain() == []
    assert w.in_use() == {"rms": 0, "room": 0, "desktop": 0, "cmr": 0}


@pytest.mark.parametrize("verdict", ["allowed", "refused"])
def test_c2_verdict_arriving_after_the_callers_cancel_charges_nothing_in_the_end(verdict):
    """The trunk calls alice through worker 1; the caller CANCELs while worker 1 waits for the
    owner's verdict. Worker 1 answers 487 at once (RFC 3261 §9.2); the owner charged the call (or
    refused it, the pool being full); when the verdict comes, an allowed call is ended at once
    ("cancelled"), so the one ledger gives its RMS back (C2) and nothing is left anywhere."""
    w = world(GENEROUS if verdict == "allowed" else {**GENEROUS, "rms": 0})
    call = w.invite(w.endpoint("gw"), w.endpoint("alice"), "video")
    assert [m for m in w.links[OWNER]][0][:2] == ("ask", "invite")
    w.cancel(call)
    assert call.failure is not None and call.failure.status == 487 and call.at_callee == []
    w.deliver_link(OWNER)  # the owner decides
    assert w.in_use()["rms"] == (2 if verdict == "allowed" else 0)
    w.deliver_link(WORKER)  # the verdict reaches a transaction already answered
    assert call.at_callee == [] and not len(w.worker.dialogs)
    w.settle()
    assert w.in_use()["rms"] == 0 and not w.metering.calls
    w.ack(call)
    assert_drains_to_zero(w)


@pytest.mark.parametrize("order", [
    "owner expires, then hears the refresh",
    "owner hears the refresh before its expiry",
    "refresh applied on worker 1, owner expires before hearing it",
])
def test_bug_r9_register_refresh_on_worker_1_while_the_owner_expires_the_binding(order):
    """alice registers for 60 s through worker 1 and refreshes just before the end. The owner
    expires bindings (worker 1's replica only drops them) and releases the room license; the
    refresh's question, its verdict, the replica the expiry sends and the bindings the refresh
    sends cross on the link. Whatever the order, once the link is quiet the license is held
    exactly while the owner holds the binding (R9), worker 1's replica equals it, and alice, who
    got her 200, is still registered. (The last two orders left worker 1 without alice's binding
    before the replicas were numbered in meter/workers/pool.py.)"""
    w = world()
    alice = w.endpoint("alice")
    w.register(alice, 60)
    w.settle()
    w.advance(59.5)
    w.register(alice, 60)  # the refresh: its question is on the link
    if order.startswith("owner expires"):
        w.advance(1.0)  # the owner's expiry: released, replica [] on its way to worker 1
        assert w.in_use()["room"] == 0
        w.settle()
    elif order.startswith("owner hears"):
        w.deliver_link(OWNER)
        w.advance(1.0)
        w.settle()
    else:
        w.deliver_link(OWNER)
        w.deliver_link(WORKER)  # the verdict: worker 1 binds for 60 s more, answers 200, tells the owner
        assert w.wire[-1][0].status == 200
        w.advance(1.0)  # the owner has not heard yet: it expires the old binding
        w.settle()
    answers = [m.status for m, p in w.wire if p.host == alice.host and m.cseq.method == "REGISTER"
               and m.cseq.number == alice.reg_cseq]
    assert answers == [200]
    owner = [b for b in w.core.location.bindings() if b.aor == alice.aor]
    replica = [b for b in w.worker.location.bindings() if b.aor == alice.aor]
    assert w.in_use()["room"] == (1 if owner else 0)
    assert [(b.contact, b.expires_at) for b in replica] == [(b.contact, b.expires_at) for b in owner]
    assert owner, "alice got 200 for her refresh but is no longer registered"
    assert_drains_to_zero(w)


@pytest.mark.parametrize("held_by", [0, 1], ids=["carol calls the trunk, the trunk hangs up",
                                                   "the trunk calls carol, carol hangs up"])
def test_c2_bye_reaching_the_wrong_worker_follows_its_route_and_releases_once(held_by):
    """Calls between carol (worker 0) and the trunk (worker 1), both of which send every request to
    the shared port: a BYE lands on the worker that does not hold the dialog, which relays it to its
    sibling by the Route; the sibling ends the call and the one RMS comes back once (C2)."""
    w = world()
    carol, gw = w.endpoint("carol"), w.endpoint("gw")
    w.register(carol)
    w.settle()
    # The caller's worker holds the dialog; the callee hangs up by the shared port, so its BYE
    # reaches the other worker.
    call = w.invite(carol, gw, "video") if held_by == 0 else w.invite(gw, carol, "video")
    w.settle()
    holder = w.cores[held_by]
    w.respond(call, 200)
    w.settle()
    w.ack(call)
    w.settle()
    assert [c.call_id for c in holder.dialogs] == [call.call_id] and w.in_use()["rms"] == 2
    other = w.cores[1 - held_by]
    byes_at_other = other.counters.requests_received["BYE"]
    w.bye(call, "callee")
    w.settle()
    assert len(w.byes) == 1, "the BYE went through the sibling to the other end"
    assert other.counters.requests_received["BYE"] == byes_at_other + 1  # it passed the wrong worker first
    w.answer_bye()  # its 200 goes back the same way: to the holder, then to the relaying worker
    w.settle()
    assert not len(holder.dialogs) and w.in_use()["rms"] == 0 and not w.metering.calls
    w.bye(call, "callee")  # a late duplicate: released once
    w.settle()
    w.answer_bye(0, 481)
    assert w.in_use()["rms"] == 0
    assert_drains_to_zero(w)


def test_c2_r9_worker_1_lost_mid_call_releases_its_calls_and_keeps_the_bindings():
    """Worker 1 holds an answered trunk call and a ringing one, and a third call's verdict (charged
    in the owner) is on its way to it, when it is killed. The owner ends what it held (C2: every RMS
    back), the registrations stay (they are the owner's, R9), and the new worker 1, on a new port,
    gets every binding: a refresh through it changes no count."""
    w = world()
    gw, alice, bob = w.endpoint("gw"), w.endpoint("alice"), w.endpoint("bob")
    up = w.invite(gw, alice, "video")
    w.settle()
    w.respond(up, 200)
    w.ack(up)
    w.settle()
    ringing = w.invite(gw, bob, "audio")
    w.settle()
    w.respond(ringing, 180)
    in_flight = w.invite(gw, alice, "audio")
    w.deliver_link(OWNER, len(w.links[OWNER]))  # charged; its verdict never reaches the worker
    assert w.in_use()["rms"] == 6 and len(w.worker.dialogs) == 2
    old_port = w.own_ports[1]
    w.lose_worker()
    assert w.in_use() == {"rms": 0, "room": 1, "desktop": 1, "cmr": 0}
    assert not w.metering.calls and not w.pool.workers[1].calls
    w.settle()
    assert w.own_ports[1] != old_port and not len(w.worker.dialogs)
    assert {b.aor for b in w.worker.location.bindings()} == {alice.aor, bob.aor}
    w.register(alice)  # worker 1 again: a refresh of a binding it learned from the owner
    w.settle()
    assert w.wire[-1][0].status == 200 and w.in_use() == {"rms": 0, "room": 1, "desktop": 1, "cmr": 0}
    w.bye(up, "caller")  # to the dead worker's port: lost (the call is over for the node already)
    w.settle()
    assert w.in_use()["rms"] == 0 and in_flight.at_callee == []
    assert_drains_to_zero(w)


# -- accounting bugs found by this harness --------------------------------------------------------------


@pytest.mark.parametrize("how", ["worker 1 lost", "node shutdown"])
def test_bug_r9_register_allowed_by_the_owner_and_never_applied_by_worker_1_keeps_its_license(how):
    """dave (worker 1) registers; the owner allows and charges his desktop license at once
    (standalone: ``SipMetering.on_register`` charges, the bindings confirm it), and worker 1 dies,
    or is stopped by the node's shutdown, before the verdict reaches it. No binding exists anywhere,
    so the license must come back: with the lost worker's calls (``WorkerPool._lost``), and before
    metering closes at shutdown (its ``release_all`` is only a safety net). (Held before
    ``WorkerPool._lost`` released what ``_Worker.reservations`` records.)"""
    w = WorkersWorld(licenses=GENEROUS, autocheck=False)
    dave = w.endpoint("dave")
    assert w.worker_of("dave") == 1
    w.register(dave)
    if how == "node shutdown":
        # WorkerPool.close writes "stop" first; the owner then answers the question worker 1 had
        # written before it read "stop", and worker 1 never reads that verdict.
        assert w.shutdown() == []
        return
    w.deliver_link(OWNER)  # charged; the verdict is on its way
    assert w.in_use()["desktop"] == 1 and not w.core.location.bindings()
    w.lose_worker()
    w.settle()
    assert w.accounting_problems() == [] and w.in_use()["desktop"] == 0
    assert w.drain() == []


@pytest.mark.parametrize("end", ["hung up", "worker 1 lost"])
def test_bug_c2_a_second_ask_for_a_call_id_whose_first_is_still_on_the_link_is_carried_uncharged(end):
    """alice (worker 1) calls bob; while the owner's verdict is on the link she CANCELs (487 at
    once) and ACKs, and once the INVITE transaction is gone a late duplicate of her INVITE starts a
    new one: worker 1 asks again. The owner charges the first ask and, the Call-ID being charged,
    lets the second through uncharged as if it were a spiral; the first verdict then ends the
    cancelled call ("cancelled"), releasing the only charge, and the second puts the call through.
    One process would have charged that call (C2: every call the node carries is charged). (Fixed
    by counting the passes of a charged Call-ID in ``WorkerPool.call_ended``.)"""
    w = world()
    alice, bob = w.endpoint("alice"), w.endpoint("bob")
    call = w.invite(alice, bob, "audio")
    invite = len(w.history) - 1
    w.cancel(call)
    assert call.failure is not None and call.failure.status == 487
    w.ack(call)
    w.advance(6.0)  # Timer I (T4): the INVITE server transaction is gone
    w.retransmit(invite)  # a late duplicate: a new transaction, a second question
    assert [m[:2] for m in w.links[OWNER]] == [("ask", "invite"), ("ask", "invite")]
    w.settle()
    assert len(call.at_callee) == 1
    assert set(w.metering.calls) == {("sip", call.call_id)} and w.in_use()["rms"] == 0  # C1: phone to phone
    w.respond(call, 200)
    w.settle()
    if end == "hung up":
        w.bye(call, "callee")
        w.settle()
        w.answer_bye()
        w.settle()
    else:
        w.lose_worker()  # the pass it still carried ends with it
    assert not w.metering.calls
    assert_drains_to_zero(w)
