"""What the node does with calls (Kamailio's dialog module), next to the call table
(``meter.sip.dialogs``): a call starts at its initial INVITE (the metering hook is asked once),
is answered, confirmed by the ACK, refreshed (RFC 4028 session timers), and ends exactly once, by
BYE, failure, CANCEL, no ACK within 64*T1 (RFC 3261 §13.3.1.4), session expiry, the reaper or node
shutdown. A 2xx that arrives after the node gave up re-opens the call or is ended with BYEs (a late
answer). When the node itself ends a call it sends a BYE to each side.

The proxy core forwards the messages; this module hands it one :class:`~meter.sip.outcome.Outcome`
per forwarded request (set-up, teardown, refresh) and is told how each ended. When ``on_invite``'s
verdict comes later (``meter.sip.hooks.PendingVerdict``), ``start`` and ``late_answer`` hand the
core what to resume with (:class:`PendingSetup`, :class:`PendingLateAnswer`).
"""

from __future__ import annotations

import logging
from typing import Callable

from meter.codecs.sip import Request, Response, SIPError, make_request, parse_name_addr, parse_uri
from meter.hooks import HookCaller
from meter.logs import log_event
from meter.sip.clock import Clock
from meter.sip.counters import SipCounters
from meter.sip.dialogs import ANSWERED, CONFIRMED, Call, DialogTable
from meter.sip.hooks import HOOK_FAILED, CallInfo, PendingVerdict, SipHooks, Verdict
from meter.sip.outcome import Outcome
from meter.sip.peer import Peer
from meter.sip.router import Router
from meter.sip.routing import Advertised, local_branch, over_flow, uri_peer
from meter.sip.session_timer import NO_OFFER, REFRESH_METHODS, Offer, RequestPlan, Session, plan_request, plan_response
from meter.sip.settings import SipSettings
from meter.sip.transaction import ServerTransaction, TransactionLayer
from meter.sip.timer_wheel import TimerWheel

log = logging.getLogger("meter.sip")


class Forwarding:
    """What the core forwards for a call-related request: the outcome to tell, the RFC 4028 edits."""

    __slots__ = ("outcome", "edits")

    def __init__(self, outcome: Outcome, edits: tuple = ()) -> None:
        self.outcome = outcome
        self.edits = edits


class PendingSetup:
    """``start``'s answer when on_invite's verdict comes later (meter.sip.hooks): what the core keeps
    until then, to call ``admit_later`` with."""

    __slots__ = ("verdict", "txn", "req", "source", "plan", "info")

    def __init__(self, verdict: PendingVerdict, txn: ServerTransaction, req: Request, source: Peer,
                 plan: RequestPlan, info: CallInfo) -> None:
        self.verdict, self.txn, self.req, self.source, self.plan, self.info = verdict, txn, req, source, plan, info


class PendingLateAnswer:
    """``late_answer``'s answer when the re-ask's verdict comes later: for ``late_decided``."""

    __slots__ = ("verdict", "call", "resp", "source", "session")

    def __init__(self, verdict: PendingVerdict, call: Call, resp: Response, source: Peer, session: Session) -> None:
        self.verdict, self.call, self.resp, self.source, self.session = verdict, call, resp, source, session


class CallControl:
    def __init__(self, settings: SipSettings, *, clock: Clock, dialogs: DialogTable, hooks: SipHooks,
                 guard: HookCaller, counters: SipCounters, router: Router, txns: TransactionLayer,
                 advertised: Advertised, reply: Callable, refuse: Callable, wheel: TimerWheel | None = None) -> None:
        self.settings = settings
        self.clock = clock
        self.timers = wheel or clock  # the ACK wait and RFC 4028 checks: one per call, on the core's wheel
        self.dialogs = dialogs
        self.hooks = hooks
        self.guard = guard
        self.counters = counters
        self.router = router
        self.txns = txns
        self.advertised = advertised
        self._reply = reply    # (txn, status, reason=None, headers=())
        self._refuse = refuse  # (txn, verdict)
        self.closed = ""  # the shutdown cause once the core closed
        self._late_pending: set[tuple] = set()  # buried calls whose late answer awaits its verdict

    # -- set-up ------------------------------------------------------------------------------------

    def start(self, txn: ServerTransaction, req: Request, source: Peer, callee_registered: bool,
              from_upstream: bool) -> Forwarding | PendingSetup | None:
        """An initial INVITE: None when it was answered here (422, a refusal), else what to forward,
        or a :class:`PendingSetup` when the verdict comes later."""
        plan = self._session_plan(req)
        if plan.reject_min_se:  # RFC 4028 §6: 422 carries the node's Min-SE; nothing metered yet
            self._reply(txn, 422, headers=[("Min-SE", str(plan.reject_min_se))])
            return None
        spiral = self.dialogs.find(req.call_id, req.from_.tag)
        if spiral is not None:  # a spiral back through the node is the same call, asked about once
            return Forwarding(SetupOutcome(self, spiral, plan.offer, owner=False), plan.edits)
        now = self.clock.time()
        from_aor = req.from_.uri.aor
        # "Registered" is the flow, not the From (RFC 5626 §5.2 style; docs/design.md principle 5).
        caller_registered = self.router.location.registered_over(from_aor, source, now)
        info = CallInfo(req.call_id, from_aor, req.to.uri.aor, req.uri, source, callee_registered,
                        from_upstream, req.body, req.user_agent or "", caller_registered)
        verdict = self.guard.ask(self.hooks.on_invite, info, on_error=HOOK_FAILED, expect=Verdict,
                                 later=PendingVerdict)
        if isinstance(verdict, PendingVerdict):  # another process answers (meter.workers): the core waits
            return PendingSetup(verdict, txn, req, source, plan, info)
        return self._admit(txn, req, source, plan, info, verdict, now)

    def _admit(self, txn: ServerTransaction, req: Request, source: Peer, plan: RequestPlan, info: CallInfo,
               verdict: Verdict, now: float) -> Forwarding | None:
        """The verdict is in: refused, the INVITE is answered; allowed, the call starts."""
        if not verdict.allowed:
            self._refuse(txn, verdict)
            return None
        call = Call(req.call_id, req.from_.tag or "", req.from_.uri.aor, req.to.uri.aor, req.uri, source,
                    now, self.clock.wall(), offer_sdp=req.body, info=info, invite_cseq=req.cseq.number,
                    offer=plan.offer, caller_from=req.header("from") or "", caller_cseq=req.cseq.number)
        contacts = req.contacts
        call.caller_target = str(contacts[0].uri) if contacts else str(req.from_.uri)
        self.dialogs.add(call)
        log_event(log, "sip.call.started", call_id=req.call_id, caller=call.from_aor, callee=call.to_aor)
        return Forwarding(SetupOutcome(self, call, plan.offer, owner=True), plan.edits)

    def admit_later(self, setup: PendingSetup, verdict: Verdict) -> Forwarding | None:
        """``start``'s verdict came later (meter.sip.hooks): None when nothing is to be forwarded.
        Cancelled meanwhile (the core answered 487) or the node closed: an allowed call is over
        before it began, so its one ``on_call_ended`` comes now."""
        txn = setup.txn
        if self.closed or txn.final_sent:
            if verdict.allowed:
                cause = self.closed or "cancelled"
                log_event(log, "sip.call.abandoned", logging.INFO, call_id=setup.info.call_id, cause=cause)
                self.guard.notify(self.hooks.on_call_ended, setup.info.call_id, cause)
            return None
        return self._admit(txn, setup.req, setup.source, setup.plan, setup.info, verdict, self.clock.time())

    def _session_plan(self, req: Request) -> RequestPlan:
        """RFC 4028 §8.1 with the node's settings."""
        s = self.settings
        return plan_request(req, min_se=s.min_se, insert=s.session_expires)

    def answered(self, call: Call, offer: Offer, resp: Response, branch_peer: Peer, branch_uri: str) -> None:
        session, edits = plan_response(resp, offer)  # RFC 4028 §8.2, before the 2xx goes on
        for name, value in edits:
            resp.set_header(name, value)
        if self.dialogs.answered(call, resp.to.tag, resp.body, self.clock.time()):
            log_event(log, "sip.call.answered", call_id=call.call_id)
            self._learn_dialog(call, resp, branch_peer, branch_uri)
            self._arm_session(call, session)
            self._await_ack(call)
            if call.offer_sdp:
                self.guard.notify(self.hooks.on_call_answered, call.call_id, call.offer_sdp, call.answer_sdp)
            # else a late offer (RFC 3261 §13.2.1: offer in the 2xx, answer in the ACK): told at the ACK

    def failed(self, call: Call, cause: str) -> None:
        if self.end(call, cause) and call.gave_up:
            # A branch never answered: its 2xx may still come (crossing the CANCEL, or after
            # Timer B). Remember the call for Timer C + 64*T1: the longest the node lets a
            # branch ring, plus the 2xx's retransmissions (RFC 6026 Timer L at the UAS).
            linger = self.settings.timer_c + 64 * self.settings.t1
            self.dialogs.bury(call, self.clock.time() + linger)

    def acked(self, ack: Request) -> None:
        """An ACK for a 2xx passes: the call is confirmed (RFC 3261 §13.2.2.4)."""
        call = self.dialogs.find(ack.call_id, ack.from_.tag, ack.to.tag)
        if call is not None and self.dialogs.confirmed(call):
            self._stop_ack_wait(call)
            log_event(log, "sip.call.confirmed", call_id=call.call_id)
            if not call.offer_sdp:  # late offer: the 2xx held the offer, the ACK holds the answer
                self.guard.notify(self.hooks.on_call_answered, call.call_id, call.answer_sdp, ack.body)
            self.guard.notify(self.hooks.on_call_confirmed, call.call_id)

    def parties(self, req: Request) -> frozenset[tuple[str, int]] | None:
        """Where the call of this in-dialog request (or ACK) lives, for the relay policy: both
        ends' remote targets (RFC 3261 §12.2.1.1: the Request-URI of an in-dialog request) and the
        addresses their messages came from; None when the node set up no such call."""
        call = self.dialogs.find(req.call_id, req.from_.tag, req.to.tag)
        if call is None:
            return None
        if call.ends[:3] == (call.caller_target, call.callee_target, call.callee_peer):
            return call.ends[3]  # unchanged since the last request: no URI to parse again
        hops = {call.source.address}
        if call.callee_peer is not None:
            hops.add(call.callee_peer.address)
        for target in (call.caller_target, call.callee_target):
            if target:
                try:
                    hops.add(uri_peer(parse_uri(target)).address)
                except SIPError:
                    pass
        call.ends = (call.caller_target, call.callee_target, call.callee_peer, frozenset(hops))
        return call.ends[3]

    # -- the ACK of the 2xx (RFC 3261 §13.3.1.4) ----------------------------------------------------

    def _await_ack(self, call: Call) -> None:
        """The callee retransmits its 2xx until the ACK comes, for 64*T1 at most, then gives up and
        should BYE (RFC 3261 §13.3.1.4). The node, which metered the call, gives up the same way:
        a call answered but never ACKed is ended and released, not held until the reaper."""
        self._stop_ack_wait(call)
        call.ack_timer = self.timers.call_later(64 * self.settings.t1, self._ack_check, call)

    @staticmethod
    def _stop_ack_wait(call: Call) -> None:
        if call.ack_timer is not None:
            call.ack_timer.cancel()
            call.ack_timer = None

    def _ack_check(self, call: Call) -> None:
        try:
            call.ack_timer = None
            if call.state == ANSWERED and self.end(call, "no ACK"):
                log_event(log, "sip.call.ack_timeout", logging.INFO, call_id=call.call_id, caller=call.from_aor,
                          callee=call.to_aor)
                self.send_byes(call, 'SIP;cause=408;text="No ACK for the 2xx"')
        except Exception:  # a timer callback: nothing may escape into the loop
            self.counters.internal_errors += 1
            log.exception("sip.internal_error", extra={"facts": {"where": "ack_check"}})

    # -- in-dialog ---------------------------------------------------------------------------------

    def in_dialog(self, txn: ServerTransaction, req: Request) -> Forwarding | None:
        """A request inside a call: None when answered here (422), else what to forward with it."""
        call = self.dialogs.find(req.call_id, req.from_.tag, req.to.tag)
        if call is None:
            return Forwarding(Outcome())
        self.dialogs.saw_cseq(call, req.from_.tag, req.cseq.number)
        if req.method in REFRESH_METHODS and call.state in (ANSWERED, CONFIRMED):
            plan = self._session_plan(req)  # RFC 4028 §8.1: the same for every session refresh request
            if plan.reject_min_se:
                self._reply(txn, 422, headers=[("Min-SE", str(plan.reject_min_se))])
                return None
            contacts = req.contacts
            return Forwarding(RefreshOutcome(self, call, req.method, plan.offer, req.from_.tag == call.from_tag,
                                             str(contacts[0].uri) if contacts else ""), plan.edits)
        if req.method == "BYE":
            return Forwarding(TeardownOutcome(self, call))
        return Forwarding(Outcome())

    def refreshed(self, refresh: RefreshOutcome, resp: Response) -> None:
        """RFC 4028 §10: a refresh's 2xx starts a new interval; RFC 3261 §12.2.1.2 / RFC 3311 §5:
        a re-INVITE or UPDATE and its 2xx may move either remote target."""
        call = refresh.call
        if resp.cseq.method != refresh.method or not self.dialogs.live(call):
            return
        session, edits = plan_response(resp, refresh.offer)  # RFC 4028 §8.2 for a refresh
        for name, value in edits:
            resp.set_header(name, value)
        try:
            contacts = resp.contacts
        except SIPError:
            contacts = []
        answer = str(contacts[0].uri) if contacts else ""
        if refresh.by_caller:
            call.caller_target = refresh.contact or call.caller_target
            call.callee_target = answer or call.callee_target
        else:
            call.callee_target = refresh.contact or call.callee_target
            call.caller_target = answer or call.caller_target
        self._arm_session(call, session)

    # -- the end ----------------------------------------------------------------------------------

    def end(self, call: Call, cause: str) -> bool:
        """End a call once: True the first time (the hooks hear ``on_call_ended`` exactly once)."""
        if not self.dialogs.end(call):
            return False
        self._ended(call, cause)
        return True

    def reap(self, now: float) -> None:
        for call in self.dialogs.reap(now, self.settings.max_dialog_age):
            self._ended(call, "max dialog age")
        self.dialogs.prune(now)

    def close(self, cause: str) -> None:
        self.closed = cause
        for call in self.dialogs.clear():
            self._ended(call, cause)

    def _ended(self, call: Call, cause: str) -> None:
        """A call the table already removed (reaper, shutdown)."""
        if call.session_timer is not None:
            call.session_timer.cancel()
            call.session_timer = None
        self._stop_ack_wait(call)
        log_event(log, "sip.call.ended", call_id=call.call_id, cause=cause)
        self.guard.notify(self.hooks.on_call_ended, call.call_id, cause)

    def restore(self, call: Call, session: Session) -> None:
        """A call written before a restart (meter.store.state) is back in the table; its RFC 4028
        session runs a full interval from now, as if just refreshed (a refresh since the last write
        is not lost: the endpoints refresh every half interval, §10)."""
        self.dialogs.restore(call)
        self._arm_session(call, session)
        if call.state == ANSWERED:  # answered, not yet ACKed when written: the same 64*T1 from now
            self._await_ack(call)
        log_event(log, "sip.call.restored", call_id=call.call_id, state=call.state)

    # -- a 2xx after the node gave up ----------------------------------------------------------------

    def late_answer(self, resp: Response, source: Peer) -> tuple[Call, str] | PendingLateAnswer | None:
        """A 2xx for the initial INVITE of a call the node already ended unanswered (its 408 after
        Timer B, or its 487 after an unanswered CANCEL, crossed the callee's 200).

        The 2xx is forwarded whatever happens: RFC 3261 §16.7 step 5 has a proxy forward every 2xx
        to INVITE, and only the UAC decides about the session it sets up (§13.2.2.4); a proxy that
        swallowed it and ACKed the callee itself would be acting as a B2BUA. The call is up at the
        callee now, so it must be metered again: the hook is asked once more with the same
        CallInfo. Allowed, the call re-opens (one new allowed/ended pair). Refused, the node sends a
        BYE each way once the 2xx is on its way, so no session stays up unmetered; the refused call
        is returned for that, with the Reason (RFC 3326) its BYEs carry. A verdict to come is returned
        as a :class:`PendingLateAnswer` for the core to pass to ``late_decided`` when it arrives."""
        call_id, tag = resp.call_id, resp.from_.tag
        if self.dialogs.find(call_id, tag) is not None:
            return None  # a live call (a retransmitted or a second forked 2xx): forwarded as ever
        call = self.dialogs.buried(call_id, tag)
        if call is None or call.refused or resp.cseq.number != call.invite_cseq or call.key in self._late_pending:
            return None  # (a retransmission while the re-ask's verdict is on its way: forwarded only)
        self.counters.late_answers += 1
        session, edits = plan_response(resp, call.offer)  # RFC 4028 §8.2, as for any 2xx
        for name, value in edits:
            resp.set_header(name, value)
        verdict = self.guard.ask(self.hooks.on_invite, call.info, on_error=HOOK_FAILED, expect=Verdict,
                                 later=PendingVerdict)
        if isinstance(verdict, PendingVerdict):  # the core forwards the 2xx, then waits (late_decided)
            self._late_pending.add(call.key)
            return PendingLateAnswer(verdict, call, resp, source, session)
        return self._late_verdict(call, resp, source, session, verdict)

    def late_decided(self, late: PendingLateAnswer, verdict: Verdict) -> None:
        """A late answer's verdict came later (meter.sip.hooks); its 2xx went on already."""
        call = late.call
        self._late_pending.discard(call.key)
        if self.closed:  # nothing may be sent any more; an allowed call ends with the node
            if verdict.allowed:
                self.guard.notify(self.hooks.on_call_ended, call.call_id, self.closed)
            return
        refused = self._late_verdict(call, late.resp, late.source, late.session, verdict)
        if refused is not None:
            self.send_byes(*refused)

    def _late_verdict(self, call: Call, resp: Response, source: Peer, session: Session,
                      verdict: Verdict) -> tuple[Call, str] | None:
        now = self.clock.time()
        if not verdict.allowed:
            call.refused = True
            self._learn_dialog(call, resp, source, "")
            log_event(log, "sip.call.late_answer_refused", logging.INFO, call_id=call.call_id, status=verdict.status)
            return call, f'SIP;cause={verdict.status};text="{_quoted(verdict.reason)}"'
        self.dialogs.reopen(call, now)
        self.dialogs.answered(call, resp.to.tag, resp.body, now)
        self._learn_dialog(call, resp, source, "")
        self._arm_session(call, session)
        self._await_ack(call)  # a late answer left "answered" is released like any other (§13.3.1.4)
        log_event(log, "sip.call.reopened", call_id=call.call_id)
        if call.offer_sdp:
            self.guard.notify(self.hooks.on_call_answered, call.call_id, call.offer_sdp, call.answer_sdp)
        return None

    # -- the confirmed dialog and its session timer (RFC 4028) --------------------------------------

    def _learn_dialog(self, call: Call, resp: Response, peer: Peer, branch_uri: str) -> None:
        """The first 2xx fixes what the node needs to BYE both sides itself (RFC 3261 §12.1)."""
        call.callee_to = resp.header("to") or ""
        call.route_set = tuple(resp.header_values("record-route"))
        call.callee_peer = peer
        try:
            contacts = resp.contacts
        except SIPError:
            contacts = []
        call.callee_target = str(contacts[0].uri) if contacts else (branch_uri or call.request_uri)

    def _arm_session(self, call: Call, session: Session) -> None:
        """RFC 4028 §10: the session lasts one interval from the 2xx unless refreshed; a 2xx without
        Session-Expires (and nothing the node could add, §8.2) leaves the call without one."""
        call.session = session
        if call.session_timer is not None:  # one timer per call (refreshes come every interval/2)
            call.session_timer.cancel()
            call.session_timer = None
        if session.interval <= 0:
            call.session_expires_at = 0.0
            return
        call.session_expires_at = self.clock.time() + session.interval
        call.session_timer = self.timers.call_later(session.interval, self._session_check, call)

    def _session_check(self, call: Call) -> None:
        try:
            self._check_session(call)
        except Exception:  # a timer callback: nothing may escape into the loop
            self.counters.internal_errors += 1
            log.exception("sip.internal_error", extra={"facts": {"where": "session_check"}})

    def _check_session(self, call: Call) -> None:
        call.session_timer = None
        if not call.session_expires_at or not self.dialogs.live(call):
            return
        left = call.session_expires_at - self.clock.time()
        if left > 0:  # the loop may fire a timer up to its clock resolution early
            call.session_timer = self.timers.call_later(left, self._session_check, call)
            return
        # RFC 4028 §10: the interval ran out without a refresh. The UAs should have hung up
        # min(32 s, interval/3) before; the node, last in line, ends the call at the full interval.
        if self.end(call, "session expired"):
            self.counters.sessions_expired += 1
            self.send_byes(call, 'SIP;cause=408;text="Session expired"')

    def send_byes(self, call: Call, reason: str) -> None:
        """RFC 4028 §10: the element that ends an expired session sends BYE. The node holds no
        dialog of its own, so it sends one to each side, as the other side would (RFC 3261 §15.1.1)."""
        for to_callee in (True, False):
            try:
                self._send_bye(call, to_callee, reason)
            except (SIPError, ValueError):
                log.exception("sip.bye.unbuildable", extra={"facts": {"call_id": call.call_id}})

    def _send_bye(self, call: Call, to_callee: bool, reason: str) -> None:
        routes = list(call.route_set)
        own = [i for i, value in enumerate(routes) if self.router.local.uri(parse_name_addr(value).uri)]
        if to_callee:
            # the caller's view (RFC 3261 §12.1.2: Record-Route reversed), from the node's outermost entry on
            path = list(reversed(routes[: own[-1] + 1])) if own else []
            uri, from_, to, cseq = call.callee_target, call.caller_from, call.callee_to, call.caller_cseq + 1
            direct = call.callee_peer
        else:
            # the callee's view (RFC 3261 §12.1.1: Record-Route as is), from the node's innermost entry on
            path = routes[own[0]:] if own else []
            uri, from_, to, cseq = call.caller_target, call.callee_to, call.caller_from, call.callee_cseq + 1
            direct = call.source
        headers = [("Max-Forwards", "70"), ("From", from_), ("To", to), ("Call-ID", call.call_id),
                   ("CSeq", f"{cseq} BYE")]
        if path:
            headers.append(("Route", ", ".join(path)))
        # RFC 3326: why the node hung up, for the endpoints' logs.
        headers += [("Reason", reason), ("User-Agent", self.settings.user_agent)]
        bye = make_request("BYE", uri, headers)
        hint = self.router.pop_own_routes(bye)
        peer = self.router.next_hop(bye, hint, self.clock.time())
        if not bye.has_header("route") and direct is not None and direct.conn is not None:
            peer = over_flow(peer or direct, direct)  # a connection endpoint: back over its connection
        if peer is None:
            log_event(log, "sip.bye.no_route", logging.WARNING, call_id=call.call_id, target=uri)
            return
        bye.push_via(self.advertised.via(peer.transport, local_branch()))
        self.txns.new_client(bye, peer, None)  # no transaction user: its answer (200 or 481) is absorbed
        log_event(log, "sip.bye.sent", call_id=call.call_id, peer=str(peer), side="callee" if to_callee else "caller")

    def views(self) -> list[dict]:
        now = self.clock.time()
        return [
            {"call_id": c.call_id, "from": c.from_aor, "to": c.to_aor, "state": c.state, "age": round(now - c.created, 3),
             "dialogs": {tag: d.state for tag, d in c.dialogs.items()}}
            for c in self.dialogs
        ]


def _quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


class SetupOutcome(Outcome):
    """An initial INVITE. On a spiral's inner pass (``owner`` False) the call is the outer pass's:
    the inner pass sees it answered but leaves ending it to the outer one."""

    __slots__ = ("control", "call", "offer", "owner")

    def __init__(self, control: CallControl, call: Call, offer: Offer = NO_OFFER, *, owner: bool) -> None:
        self.control, self.call, self.offer, self.owner = control, call, offer, owner

    def provisional(self, resp: Response) -> None:
        self.control.dialogs.provisional(self.call, resp.to.tag, self.control.clock.time())

    def success(self, resp: Response, branch_peer, branch_uri: str) -> None:
        if resp.cseq.method == "INVITE":
            self.control.answered(self.call, self.offer, resp, branch_peer, branch_uri)

    def gave_up(self) -> None:
        self.call.gave_up = True  # no final from downstream: the callee may still answer

    def failed(self, status: int, cause: str) -> None:
        if self.owner:
            self.control.failed(self.call, cause)


class TeardownOutcome(Outcome):
    """A BYE: the call ends with its answer, whatever the answer (RFC 3261 §15.1.2)."""

    __slots__ = ("control", "call")

    def __init__(self, control: CallControl, call: Call) -> None:
        self.control, self.call = control, call

    def success(self, resp: Response, branch_peer, branch_uri: str) -> None:
        self.control.end(self.call, "bye")

    def failed(self, status: int, cause: str) -> None:
        self.control.end(self.call, "bye")


class RefreshOutcome(Outcome):
    """A re-INVITE or UPDATE of an answered call (RFC 4028 session refresh, RFC 3261 §12.2 target refresh)."""

    __slots__ = ("control", "call", "method", "offer", "by_caller", "contact")

    def __init__(self, control: CallControl, call: Call, method: str, offer: Offer, by_caller: bool,
                 contact: str) -> None:
        self.control, self.call, self.method, self.offer = control, call, method, offer
        self.by_caller, self.contact = by_caller, contact

    def success(self, resp: Response, branch_peer, branch_uri: str) -> None:
        self.control.refreshed(self, resp)
