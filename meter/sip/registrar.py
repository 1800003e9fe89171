"""REGISTER handling (RFC 3261 §10.3; Kamailio's registrar): standalone, the node is the registrar
and writes the location service; inline, it forwards the REGISTER upstream and learns the
bindings from the upstream's 200 OK.

Order matters for the licence: standalone, the registrar's own checks (Min-Expires, contact
limits, out-of-order CSeq) run before the metering hook is asked, so a REGISTER the registrar
refuses never charges. Inline, the hook's charge is a reservation that the upstream's answer
settles: its 2xx confirms it (``on_bindings``), a final non-2xx or no answer releases it at once
(``on_register_failed``).

The verdict may come later (``meter.sip.hooks.PendingVerdict``): what follows it then runs when it
arrives, after the registrar's checks ran again (the bindings may have moved meanwhile).
"""

from __future__ import annotations

import logging
from typing import Callable

from meter.codecs.sip import Request, Response, SIPError
from meter.hooks import HookCaller
from meter.logs import log_event
from meter.sip.clock import Clock
from meter.sip.hooks import HOOK_FAILED, BindingInfo, PendingVerdict, RegisterInfo, SipHooks, Verdict
from meter.sip.location import Change, LocationService, RegistrarError, RegisterPlan, RegisterRequest, contact_key
from meter.sip.outcome import Outcome
from meter.sip.peer import Peer
from meter.sip.transaction import ServerTransaction

log = logging.getLogger("meter.sip")


class Registrar:
    def __init__(self, location: LocationService, *, hooks: SipHooks, guard: HookCaller, clock: Clock,
                 upstream: Peer | None, reply: Callable, refuse: Callable, forward_upstream: Callable,
                 later: Callable, admission=None, limits=None) -> None:
        self.location = location
        self.hooks = hooks
        self.guard = guard
        self.clock = clock
        self.upstream = upstream
        self._reply = reply          # (txn, status, reason=None, headers=())
        self._refuse = refuse        # (txn, verdict)
        self._forward_upstream = forward_upstream  # (txn, req, outcome)
        self._later = later  # (txn, pending verdict, fn, *args): fn(*args, verdict) once it arrives, guarded
        self.closed = False
        self.admission = admission  # meter.sip.auth.admission.Admission, or None
        self.limits = limits  # meter.sip.limits.SourceLimiter (registrations per source), or None
        # A worker's replica of the node's bindings (meter.workers): they expire and end in the
        # owner, which releases them once and tells every worker; here they are only dropped.
        self.replica = False

    def on_register(self, txn: ServerTransaction, req: Request, source: Peer) -> None:
        if req.to.uri.scheme not in ("sip", "sips"):
            # RFC 3261 §10.3 steps 3-4: the To is the address-of-record, a SIP or SIPS URI (RFC 4475 unksm2)
            log_event(log, "sip.register.refused", logging.INFO, reason="to_not_sip_uri", source=str(source),
                      user_agent=req.user_agent or "")
            self._reply(txn, 400, "Bad Request - To is not a SIP or SIPS URI")
            return
        aor = req.to.uri.aor
        star = req.is_star_contact
        contacts = tuple(req.contacts)
        ua = req.user_agent or ""
        rr = RegisterRequest(aor, contacts, star, req.expires, req.call_id, req.cseq.number, source, ua)
        plan = None
        if self.upstream is None and self.admission is not None and not self.admission.register(txn, req, source):
            return  # RFC 3261 §22.2: challenged (401) or not the AOR's owner (403): nothing charged
        if self.upstream is None:
            try:
                plan = self.location.check(rr)  # before the hook: a refused REGISTER never charges
            except RegistrarError as err:
                self._reply(txn, err.status, err.reason, headers=list(err.headers))
                return
        expires = 0 if star else self.location.expires_for(contacts[0] if contacts else None, req.expires)
        info = RegisterInfo(aor, ("*",) if star else tuple(str(c.uri) for c in contacts), ua, source, expires,
                            req.call_id, forwarded=plan is None)
        verdict = self.guard.ask(self.hooks.on_register, info, on_error=HOOK_FAILED, expect=Verdict,
                                 later=PendingVerdict)
        if isinstance(verdict, PendingVerdict):  # another process answers (meter.workers): carry on then
            self._later(txn, verdict, self._decided_later, txn, req, rr, info, plan)
            return
        self._decided(txn, req, info, plan, verdict)

    def _decided(self, txn: ServerTransaction, req: Request, info: RegisterInfo, plan: RegisterPlan | None,
                 verdict: Verdict) -> None:
        if not verdict.allowed:
            self._refuse(txn, verdict)
            return
        aor = info.aor
        if plan is None:
            sent = {contact_key(c.uri) for c in req.contacts}
            self._forward_upstream(txn, req, InlineRegister(self, aor, sent, req.call_id, req.cseq.number,
                                                            info.source, info.user_agent))
            return
        now = self.clock.time()
        change = self.location.apply(plan, now)
        bindings = change.bindings if change is not None else self.location.lookup(aor, now)
        self._reply(txn, 200, headers=[("Contact", b.contact_value(now)) for b in bindings])
        if change is not None:
            log_event(log, "sip.registered", logging.DEBUG, aor=aor, bindings=len(change.bindings))
            self.bindings_changed(change)

    def _decided_later(self, txn: ServerTransaction, req: Request, rr: RegisterRequest, info: RegisterInfo,
                       plan: RegisterPlan | None, verdict: Verdict) -> None:
        """A verdict that came later (meter.sip.hooks): the REGISTER may have been overtaken meanwhile."""
        if self.closed or txn.final_sent:
            if verdict.allowed:
                self._abandoned(info, plan is None)
            return
        if plan is not None and verdict.allowed:
            try:
                plan = self.location.check(rr)  # RFC 3261 §10.3 steps 6-7 again: the bindings may have moved
            except RegistrarError as err:
                self._reply(txn, err.status, err.reason, headers=list(err.headers))
                self._abandoned(info, False)
                return
        self._decided(txn, req, info, plan, verdict)

    def _abandoned(self, info: RegisterInfo, forwarded: bool) -> None:
        """An allowed REGISTER the node does not carry out: inline, its reservation is released;
        standalone, the hooks hear the alias's bindings as they are (none after shutdown), so the
        charge follows the bindings."""
        log_event(log, "sip.register.abandoned", logging.INFO, aor=info.aor, closed=self.closed)
        if forwarded:
            self.guard.notify(self.hooks.on_register_failed, info.aor, info.call_id, "abandoned")
            return
        now = self.clock.time()
        self.bindings_changed(Change(info.aor, tuple(self.location.lookup(info.aor, now)), info.user_agent,
                                     info.source))

    def answer_through(self, wrap) -> None:
        """Send the registrar's own answers through ``wrap(reply)``: a worker of several holds a
        REGISTER's 2xx until every worker can route to the new binding (meter.workers.remote)."""
        self._reply = wrap(self._reply)

    def learn(self, reg: InlineRegister, resp: Response) -> None:
        """Inline: the upstream's 200 OK lists the AOR's bindings and their expiries (RFC 3261 §10.3 step 8)."""
        header = resp.expires
        entries = [(c, self.location.expires_for(c, header)) for c in resp.contacts]
        change = self.location.learn(reg.aor, entries, call_id=reg.call_id, cseq=reg.cseq, source=reg.source,
                                     sent=reg.sent, user_agent=reg.user_agent, now=self.clock.time())
        self.bindings_changed(change)

    def failed_upstream(self, reg: InlineRegister, status: int, cause: str) -> None:
        log_event(log, "sip.upstream.register_failed", logging.INFO, aor=reg.aor, status=status)
        self.guard.notify(self.hooks.on_register_failed, reg.aor, reg.call_id, cause)

    def bindings_changed(self, change: Change) -> None:
        now = self.clock.time()
        if self.limits is not None:  # [limits] registrations: AORs bound per source address
            self.limits.bindings_changed(change.aor, frozenset(b.source.host for b in change.bindings if b.source))
        infos = tuple(BindingInfo(b.contact, b.remaining(now), b.source, b.user_agent) for b in change.bindings)
        self.guard.notify(self.hooks.on_bindings, change.aor, infos, change.user_agent, change.source,
                          self.clock.wall())

    def expire(self, now: float) -> None:
        if self.replica:
            self.location.expire(now)
            return
        for change in self.location.expire(now):
            log_event(log, "sip.binding.expired", aor=change.aor, left=len(change.bindings))
            self.bindings_changed(change)

    def close(self) -> None:
        """Node shutdown: every binding ends through the hooks."""
        self.closed = True
        if self.replica:
            self.location.clear()
            return
        for change in self.location.clear():
            self.bindings_changed(change)

    def views(self) -> list[dict]:
        now = self.clock.time()
        return [
            {"aor": b.aor, "contact": b.contact, "expires": b.remaining(now), "source": str(b.source) if b.source else "",
             "user_agent": b.user_agent}
            for b in self.location.bindings() if b.expires_at > now
        ]


class InlineRegister(Outcome):
    """A REGISTER forwarded upstream: its 2xx teaches the bindings, anything else releases what it
    reserved (RFC 3261 §10.3 step 8; Timer F's 408 included)."""

    __slots__ = ("registrar", "aor", "sent", "call_id", "cseq", "source", "user_agent")

    def __init__(self, registrar: Registrar, aor: str, sent: set, call_id: str, cseq: int, source: Peer,
                 user_agent: str) -> None:
        self.registrar = registrar
        self.aor, self.sent, self.call_id, self.cseq = aor, sent, call_id, cseq
        self.source, self.user_agent = source, user_agent

    def success(self, resp: Response, branch_peer, branch_uri: str) -> None:
        try:
            self.registrar.learn(self, resp)
        except SIPError as err:
            log_event(log, "sip.upstream.bad_register_answer", logging.WARNING, reason=err.reason)

    def failed(self, status: int, cause: str) -> None:
        self.registrar.failed_upstream(self, status, cause)
