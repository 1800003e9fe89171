"""The SIP node's brain: a stateful proxy (RFC 3261 §16), the registrar or the inline learner,
the call table and the policy hooks. Sans-I/O apart from two injected things: ``send(data, peer)``
and a :class:`~meter.sip.clock.Clock`. The asyncio adapter (``meter.sip.node``) feeds it bytes.

Per request: parse (codec), match a transaction (O(1) by branch), decide, forward with the minimal
edits (Via, Record-Route, Max-Forwards, Request-URI), never re-serialising untouched lines.
"""

from __future__ import annotations

import functools
import itertools
import logging
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

from meter.codecs.sip import (
    DEFAULT_LIMITS, Limits, Request, Response, SIPError, Via, make_request, make_response, new_tag, parse,
    parse_name_addr, unsupported,
)
from meter.logs import log_event
from meter.sip.clock import Clock
from meter.sip.counters import SipCounters, method_label
from meter.sip.dialogs import ANSWERED, CONFIRMED, Call, DialogTable
from meter.sip.peer import Peer
from meter.sip.policy import ALLOW, AllowAll, BindingInfo, CallInfo, RegisterInfo, SipPolicy, Verdict
from meter.sip.registrar import Binding, Change, Registrar, RegistrarError, RegisterRequest, contact_key
from meter.sip.routing import (
    Advertised, LocalAddresses, local_branch, loop_hash, looped, make_branch, stateless_branch, uri_peer,
    uri_transport, via_peer,
)
from meter.sip.session_timer import (
    NO_OFFER, REFRESH_METHODS, Offer, RequestPlan, Session, plan_request, plan_response,
)
from meter.sip.settings import SipSettings
from meter.sip.transaction import (
    PROCEEDING, TERMINATED, ClientTransaction, ServerTransaction, Timers, Transaction, TransactionLayer,
    build_cancel, server_key,
)

log = logging.getLogger("meter.sip")

ALLOW_METHODS = "INVITE, ACK, BYE, CANCEL, OPTIONS, REGISTER, INFO, UPDATE, PRACK, SUBSCRIBE, NOTIFY, REFER, MESSAGE"
# RFC 3327: the node adds Path to REGISTERs it forwards upstream; RFC 4028 §8: it does session
# timers as a proxy (so "timer" in a Proxy-Require is not refused with 420 either).
SUPPORTED = "path, timer"
PROXY_SUPPORTED = ("timer",)
NO_PLAN = RequestPlan()
# RFC 3261 §16.6 step 4: Record-Route on requests that can create a dialog, so that every
# in-dialog request passes the node.
DIALOG_CREATING = frozenset({"INVITE", "SUBSCRIBE", "REFER", "NOTIFY"})


class Target(NamedTuple):
    uri: str | None  # new Request-URI, or None to keep it
    peer: Peer


@dataclass(slots=True)
class InlineRegister:
    """A REGISTER forwarded upstream, remembered to learn the bindings from its 200 OK."""

    aor: str
    sent: set
    call_id: str
    cseq: int
    source: Peer
    user_agent: str


@dataclass(slots=True)
class ResponseContext:
    """RFC 3261 §16: one server transaction, its branches, and the best final answer so far."""

    server: ServerTransaction
    method: str
    branches: list = field(default_factory=list)
    finals: dict = field(default_factory=dict)  # branch key -> final status (or the local 408/487)
    best: Response | None = None
    best_cause: str = ""
    final_sent: bool = False
    cancelled: bool = False
    call: Call | None = None
    owns_call: bool = False  # this pass started the call (a spiral's inner pass does not)
    register: InlineRegister | None = None
    bye_call: Call | None = None
    offer: Offer = NO_OFFER  # RFC 4028 §8.1: what the node forwarded, for §8.2 on the 2xx
    refresh: Call | None = None  # a re-INVITE/UPDATE of this call: its 2xx refreshes the session
    refresh_by_caller: bool = False
    refresh_contact: str = ""  # the refresh request's Contact: a target refresh (RFC 3261 §12.2)
    timer_c: set = field(default_factory=set)  # branches Timer C cancelled (RFC 3261 §16.8)


def _guarded(fn):
    """Nothing a peer sends may take the node down: count and log, keep going."""

    @functools.wraps(fn)
    def wrapper(self, *args):
        try:
            return fn(self, *args)
        except Exception:
            self.counters.internal_errors += 1
            log.exception("sip.internal_error", extra={"facts": {"where": fn.__name__}})
        return None

    return wrapper


def _maybe_ack(req: Request) -> bool:
    """An ACK is never answered (RFC 3261 §17.2.1), even one so broken its method is unreadable."""
    if req.method == "ACK":
        return True
    cseq = req.header("cseq") or ""
    return cseq.rstrip().upper().endswith(" ACK")


def _reason_text(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _rank(status: int) -> tuple[int, int]:
    """RFC 3261 §16.7 step 6: any 6xx first, else the lowest class (3xx before 4xx before 5xx)."""
    return (0, status) if status >= 600 else (status // 100, status)


class SipCore:
    def __init__(
        self,
        settings: SipSettings,
        *,
        clock: Clock,
        send: Callable[[bytes, Peer], None],
        advertised: Advertised,
        policy: SipPolicy | None = None,
        local_names: list[str] = (),
        upstream: Peer | None = None,
        counters: SipCounters | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self._send_raw = send
        self.policy: SipPolicy = policy or AllowAll()
        self.counters = counters or SipCounters()
        self.advertised = advertised
        self.local = LocalAddresses(advertised.port, [advertised.host, *local_names, *settings.aliases])
        self.mode = settings.mode
        self.upstream = upstream
        self.limits = Limits(max_message_bytes=settings.max_message_bytes, max_headers=settings.max_headers,
                             max_header_bytes=min(DEFAULT_LIMITS.max_header_bytes, settings.max_message_bytes))
        self.txns = TransactionLayer(clock, self._send, Timers(
            settings.t1, settings.t2, settings.t4, settings.timer_c, settings.timer_d))
        self.registrar = Registrar(settings.min_expires, settings.max_expires, settings.default_expires)
        self.dialogs = DialogTable()
        self._seq = itertools.count(1)
        self._tick_handle = None
        self._closed = False

    # -- life cycle ----------------------------------------------------------------------------------

    def start(self) -> None:
        self._tick_handle = self.clock.call_later(self.settings.housekeeping_interval, self._tick)

    def close(self, cause: str = "node shutdown") -> None:
        """End every call and binding through the policy, stop every timer."""
        if self._closed:
            return
        self._closed = True
        if self._tick_handle is not None:
            self._tick_handle.cancel()
        for call in self.dialogs.clear():
            self._call_ended(call, cause)
        for change in self.registrar.clear():
            self._bindings_changed(change)
        self.txns.close()

    @_guarded
    def _tick(self) -> None:
        if self._closed:
            return
        self._tick_handle = self.clock.call_later(self.settings.housekeeping_interval, self._tick)
        self.housekeeping()

    def housekeeping(self) -> None:
        now = self.clock.time()
        for change in self.registrar.expire(now):
            log_event(log, "sip.binding.expired", aor=change.aor, left=len(change.bindings))
            self._bindings_changed(change)
        for call in self.dialogs.reap(now, self.settings.max_dialog_age):
            self._call_ended(call, "max dialog age")
        self.dialogs.prune(now)

    # -- input ---------------------------------------------------------------------------------------

    def receive_datagram(self, data: bytes, source: Peer) -> None:
        """One UDP datagram (RFC 3261 §18.3: one message per datagram)."""
        if not data.strip(b"\r\n \t"):
            self.counters.keepalives += 1  # RFC 5626 §4.4.1 CRLF keep-alive
            return
        try:
            msg = parse(data, self.limits)
        except SIPError as err:
            self.receive_error(err, source)
            return
        except Exception:  # the codec promises SIPError only; never let a bug in it stop the node
            self.counters.internal_errors += 1
            self.counters.malformed_dropped += 1
            log.exception("sip.codec_error")
            return
        self.receive_message(msg, source)

    def receive_message(self, msg: Request | Response, source: Peer) -> None:
        try:
            if isinstance(msg, Request):
                self._on_request(msg, source)
            else:
                self._on_response(msg, source)
        except SIPError as err:
            # A value read lazily (a Route, a Contact) turned out malformed.
            err.message = msg
            self.receive_error(err, source)
        except Exception:
            self.counters.internal_errors += 1
            log.exception("sip.internal_error", extra={"facts": {"source": str(source)}})
            if isinstance(msg, Request) and msg.method != "ACK":
                self._answer_stateless(msg, source, 500, "Server Internal Error")

    def receive_error(self, err: SIPError, source: Peer) -> None:
        """A message the codec refused: a request gets its status and reason (DESIGN.md principle 5);
        anything else is dropped and counted."""
        msg = err.message
        if isinstance(msg, Request) and not _maybe_ack(msg) and msg.has_header("via"):
            self.counters.malformed_answered += 1
            log_event(log, "sip.malformed", logging.DEBUG, source=str(source), reason=err.reason)
            self._answer_stateless(msg, source, err.status if 300 <= err.status <= 699 else 400, err.reason)
            return
        self.counters.malformed_dropped += 1
        log_event(log, "sip.malformed.dropped", logging.DEBUG, source=str(source), reason=err.reason)

    def _answer_stateless(self, req: Request, source: Peer, status: int, reason: str) -> None:
        try:
            resp = make_response(req, status, reason, to_tag=new_tag(), headers=[("Server", self.settings.user_agent)])
            data = resp.to_bytes()
        except Exception:
            self.counters.malformed_dropped += 1
            return
        self._send(data, source)  # the Via may be what is broken: answer where it came from

    # -- requests ------------------------------------------------------------------------------------

    def _on_request(self, req: Request, source: Peer) -> None:
        self.counters.requests_received[method_label(req.method)] += 1
        if self._closed:
            return
        if req.method == "ACK":
            self._on_ack(req, source)
            return
        key = server_key(req)
        txn = self.txns.find_server(key)
        if txn is not None:  # RFC 3261 §17.2.3: a retransmission, answered by its transaction
            self.counters.retransmissions_absorbed += 1
            txn.receive_request(req)
            return
        peer = self._response_peer(req.top_via, source)
        self._stamp_via(req, source)
        if req.method == "CANCEL":
            self._on_cancel(req, peer, key)
            return
        txn = self.txns.new_server(req, peer, key, self)
        try:
            self._process(txn, req, source)
        except SIPError as err:  # a header read lazily (Route, Contact...) is malformed
            self.counters.malformed_answered += 1
            self._reply_once(txn, err.status if 300 <= err.status <= 699 else 400, err.reason)
        except Exception:
            self.counters.internal_errors += 1
            log.exception("sip.internal_error", extra={"facts": {"method": req.method, "source": str(source)}})
            self._reply_once(txn, 500, "Server Internal Error")

    def _reply_once(self, txn: ServerTransaction, status: int, reason: str) -> None:
        """A final answer unless one went out already: no server transaction is left unanswered."""
        if not txn.final_sent and not (txn.context is not None and txn.context.branches):
            self._reply(txn, status, reason)

    def _stamp_via(self, req: Request, source: Peer) -> None:
        """RFC 3261 §18.2.1 received, RFC 3581 §4 rport: record where the request really came from."""
        via = req.top_via
        add_received = via.host.strip("[]") != source.host
        if not (add_received or via.has_rport):
            return
        params = dict(via.params)
        params["received"] = source.host
        if via.has_rport:
            params["rport"] = str(source.port)
        req.pop_via()
        req.push_via(str(Via(via.protocol, via.transport, via.host, via.port, params)))

    @staticmethod
    def _response_peer(via: Via, source: Peer) -> Peer:
        """RFC 3261 §18.2.2: over TCP, the connection the request came on, or if it is gone a new one
        to received and the Via port; over UDP, the source address (= received) and the Via port, or
        the source port when rport asks for it (RFC 3581)."""
        if source.transport == "udp" and via.has_rport:
            return source
        return Peer(source.transport, source.host, via.port or 5060, source.conn)

    def _process(self, txn: ServerTransaction, req: Request, source: Peer) -> None:
        method = req.method
        bad = unsupported(req, PROXY_SUPPORTED)
        if bad:  # RFC 3261 §16.3 step 5: no extension needs the node's support
            self._reply(txn, 420, headers=[("Unsupported", ", ".join(bad))])
            return
        hint = self._pop_own_routes(req)  # RFC 3261 §16.4
        has_route = req.has_header("route")
        if method == "OPTIONS" and not has_route and self._for_node(req):
            # RFC 3261 §11.2: the node answers OPTIONS addressed to itself.
            self._reply(txn, 200, headers=[("Allow", ALLOW_METHODS), ("Accept", "application/sdp"),
                                           ("Supported", SUPPORTED)])
            return
        mf = req.max_forwards
        if mf is not None and mf <= 0:
            self._reply(txn, 483)  # RFC 3261 §16.3 step 3
            return
        if looped(req, self.local):
            self.counters.loops_detected += 1
            self._reply(txn, 482)  # RFC 3261 §16.3 step 4
            return
        if method == "REGISTER" and not has_route:
            self._on_register(txn, req, source)
            return
        if req.to.tag is not None:
            self._in_dialog(txn, req, hint)
            return
        self._initial(txn, req, source)

    def _pop_own_routes(self, req: Request) -> str | None:
        """Pop every topmost Route that names this node (two after a double Record-Route, RFC 5658);
        the transport of the last one popped is the one to leave with."""
        hint = None
        while True:
            top = req.header("route")
            if top is None:
                return hint
            uri = parse_name_addr(top).uri
            if not self.local.uri(uri):
                return hint
            req.pop_route()
            hint = uri_transport(uri)

    def _for_node(self, req: Request) -> bool:
        uri = req.request_uri
        if uri.user is None:
            return True
        return self.local.uri(uri) and not self.registrar.is_known(uri.aor)

    # -- REGISTER (RFC 3261 §10.3) -----------------------------------------------------------------------

    def _on_register(self, txn: ServerTransaction, req: Request, source: Peer) -> None:
        aor = req.to.uri.aor
        star = req.is_star_contact
        contacts = tuple(req.contacts)
        expires = 0 if star else self.registrar.expires_for(contacts[0] if contacts else None, req.expires)
        ua = req.user_agent or ""
        info = RegisterInfo(aor, ("*",) if star else tuple(str(c.uri) for c in contacts), ua, source, expires,
                            req.call_id, self.mode)
        verdict = self._ask(self.policy.on_register, info)
        if not verdict.allowed:
            self._refuse(txn, verdict)
            return
        if self.mode == "inline":
            reg = InlineRegister(aor, {contact_key(c.uri) for c in contacts}, req.call_id, req.cseq.number, source, ua)
            self._forward(txn, req, [Target(None, self.upstream)], register=reg)
            return
        now = self.clock.time()
        rr = RegisterRequest(aor, contacts, star, req.expires, req.call_id, req.cseq.number, source, ua)
        try:
            change = self.registrar.register(rr, now)
        except RegistrarError as err:
            self._reply(txn, err.status, err.reason, headers=list(err.headers))
            # The policy was asked (and may have charged) before the registrar refused: tell it
            # what is bound now, so a charge without a binding is released (DESIGN.md principle 4).
            self._bindings_changed(Change(aor, tuple(self.registrar.lookup(aor, now)), ua, source))
            return
        bindings = change.bindings if change is not None else self.registrar.lookup(aor, now)
        headers = [("Contact", b.contact_value(now)) for b in bindings]
        self._reply(txn, 200, headers=headers)
        if change is not None:
            log_event(log, "sip.registered", logging.DEBUG, aor=aor, bindings=len(change.bindings))
            self._bindings_changed(change)

    def _learn(self, reg: InlineRegister, resp: Response) -> None:
        """Inline: the upstream's 200 OK lists the AOR's bindings and their expiries (RFC 3261 §10.3 step 8)."""
        header = resp.expires
        entries = [(c, self.registrar.expires_for(c, header)) for c in resp.contacts]
        change = self.registrar.learn(reg.aor, entries, call_id=reg.call_id, cseq=reg.cseq, source=reg.source,
                                      sent=reg.sent, user_agent=reg.user_agent, now=self.clock.time())
        self._bindings_changed(change)

    # -- routing -------------------------------------------------------------------------------------

    def _initial(self, txn: ServerTransaction, req: Request, source: Peer) -> None:
        targets, refusal, registered = self._locate(req, source)
        if refusal is not None:
            self._reply(txn, *refusal)
            return
        call = None
        owns = False
        plan = NO_PLAN
        if req.method == "INVITE":
            plan = self._session_plan(req)
            if plan.reject_min_se:  # RFC 4028 §6: 422 carries the node's Min-SE; nothing metered yet
                self._reply(txn, 422, headers=[("Min-SE", str(plan.reject_min_se))])
                return
            call = self.dialogs.find(req.call_id, req.from_.tag)
            if call is None:  # a spiral back through the node is the same call, asked about once
                info = CallInfo(req.call_id, req.from_.uri.aor, req.to.uri.aor, req.uri, source, registered, req.body,
                                req.user_agent or "")
                verdict = self._ask(self.policy.on_invite, info)
                if not verdict.allowed:
                    self._refuse(txn, verdict)
                    return
                now = self.clock.time()
                call = Call(req.call_id, req.from_.tag or "", req.from_.uri.aor, req.to.uri.aor, req.uri, source,
                            now, self.clock.wall(), offer_sdp=req.body, info=info, invite_cseq=req.cseq.number,
                            offer=plan.offer, caller_from=req.header("from") or "", caller_cseq=req.cseq.number)
                contacts = req.contacts
                call.caller_target = str(contacts[0].uri) if contacts else str(req.from_.uri)
                self.dialogs.add(call)
                owns = True
                log_event(log, "sip.call.started", call_id=req.call_id, caller=call.from_aor, callee=call.to_aor)
        self._forward(txn, req, targets, call=call, owns_call=owns, record_route=req.method in DIALOG_CREATING,
                      offer=plan.offer, edits=plan.edits)

    def _session_plan(self, req: Request) -> RequestPlan:
        """RFC 4028 §8.1 with the node's settings."""
        s = self.settings
        return plan_request(req, min_se=s.min_se, insert=s.session_expires)

    def _locate(self, req: Request, source: Peer) -> tuple[list[Target], tuple | None, bool]:
        """Where an initial request goes: (targets, refusal (status, reason), callee registered here)."""
        uri = req.request_uri
        now = self.clock.time()
        bindings = self.registrar.lookup(uri.aor, now)
        if req.has_header("route"):  # RFC 3261 §16.6 step 6-7: a pre-loaded route decides
            return [Target(None, uri_peer(parse_name_addr(req.header("route")).uri))], None, bool(bindings)
        hit = self.registrar.by_contact(uri, now)
        if hit is not None:  # the Request-URI already is a registered contact (after the upstream's lookup)
            return [Target(None, self._binding_peer(hit, uri))], None, True
        if self.mode == "standalone" and bindings:  # RFC 3261 §16.5: the contacts are the target set (parallel fork)
            return [Target(str(b.uri), self._binding_peer(b, b.uri)) for b in bindings], None, True
        if not bindings and not self._from_upstream(source):
            zone_hop = self._zone_route(req)
            if zone_hop is not None:
                return [Target(None, zone_hop)], None, False
        if self.mode == "standalone":
            if self.registrar.is_known(uri.aor):
                return [], (480, "Temporarily Unavailable"), False
            return [], (404, "Not Found"), False
        if self._from_upstream(source):  # the upstream already chose the target
            if self.local.uri(uri):
                return [], (404, "Not Found"), False
            return [Target(None, uri_peer(uri))], None, bool(bindings)
        return [Target(None, self.upstream)], None, bool(bindings)

    def _zone_route(self, req: Request) -> Peer | None:
        """The policy's zone routing (search rules): where a request no binding claims goes."""
        route = getattr(self.policy, "route", None)
        if route is None:
            return None
        target = route(req.uri)
        if target is None:
            return None
        if not target:
            return uri_peer(req.request_uri)
        host, _, port = target.rpartition(":")
        return Peer("udp", host.strip("[]"), int(port))

    def _in_dialog(self, txn: ServerTransaction, req: Request, hint: str | None) -> None:
        """RFC 3261 §16.12: in-dialog requests follow Route, then the Request-URI (the remote target)."""
        peer = self._next_hop(req, hint)
        if peer is None:
            self._reply(txn, 404, "Not Found - no route")
            return
        method = req.method
        call = self.dialogs.find(req.call_id, req.from_.tag, req.to.tag)
        if call is None:
            self._forward(txn, req, [Target(None, peer)])
            return
        self.dialogs.saw_cseq(call, req.from_.tag, req.cseq.number)
        if method in REFRESH_METHODS and call.state in (ANSWERED, CONFIRMED):
            plan = self._session_plan(req)  # RFC 4028 §8.1: the same for every session refresh request
            if plan.reject_min_se:
                self._reply(txn, 422, headers=[("Min-SE", str(plan.reject_min_se))])
                return
            contacts = req.contacts
            self._forward(txn, req, [Target(None, peer)], offer=plan.offer, edits=plan.edits, refresh=call,
                          refresh_by_caller=req.from_.tag == call.from_tag,
                          refresh_contact=str(contacts[0].uri) if contacts else "")
            return
        self._forward(txn, req, [Target(None, peer)], bye_call=call if method == "BYE" else None)

    def _next_hop(self, req: Request, hint: str | None) -> Peer | None:
        if req.has_header("route"):
            return uri_peer(parse_name_addr(req.header("route")).uri)
        uri = req.request_uri
        now = self.clock.time()
        hit = self.registrar.by_contact(uri, now)
        if hit is not None:
            return self._binding_peer(hit, uri)
        local = self.local.uri(uri)
        if self.mode == "standalone" or local:
            # RFC 3261 §16.5: an AOR the node registers goes through the location service, as in
            # _locate; a peer that kept the AOR as remote target (a 2xx without Contact) still
            # reaches the callee. In-dialog, no forking: the first binding.
            bindings = self.registrar.lookup(uri.aor, now) if uri.user is not None else []
            if bindings:
                req.set_uri(str(bindings[0].uri))  # §16.6 step 2
                return self._binding_peer(bindings[0], bindings[0].uri)
        if local:
            return None  # the node itself (strict routing, RFC 2543, is not supported)
        return uri_peer(uri, hint or "udp")

    def _binding_peer(self, b: Binding, uri) -> Peer:
        # A binding registered over TCP is reached back through its connection while it lasts
        # (RFC 5923 reuse), else through a new one to the contact.
        peer = uri_peer(uri)
        if b.source is not None and b.source.transport == "tcp" and uri_transport(uri, "tcp") == "tcp":
            return Peer("tcp", peer.host, peer.port, b.source.conn)
        return peer

    def _from_upstream(self, source: Peer) -> bool:
        # Exact address only: over TCP the upstream may dial in from any port, but then its
        # requests carry a registered contact as Request-URI (Path routing) and by_contact decides.
        up = self.upstream
        return up is not None and source.host == up.host and source.port == up.port

    # -- forwarding (RFC 3261 §16.6) ---------------------------------------------------------------------

    def _forward(self, txn: ServerTransaction, req: Request, targets: list[Target], *, call: Call | None = None,
                 owns_call: bool = False, record_route: bool = False, register: InlineRegister | None = None,
                 bye_call: Call | None = None, offer: Offer = NO_OFFER, edits: tuple = (),
                 refresh: Call | None = None, refresh_by_caller: bool = False, refresh_contact: str = "") -> None:
        ctx = ResponseContext(txn, req.method, call=call, owns_call=owns_call, register=register, bye_call=bye_call,
                              offer=offer, refresh=refresh, refresh_by_caller=refresh_by_caller,
                              refresh_contact=refresh_contact)
        txn.context = ctx
        if req.method == "INVITE":
            self._reply(txn, 100)  # RFC 3261 §16.2: a stateful proxy answers INVITE with 100 at once
        h = loop_hash(req)
        inbound = txn.peer.transport
        for target in targets:
            out = req.copy()  # the server transaction keeps the request as received
            if target.uri is not None:
                out.set_uri(target.uri)  # §16.6 step 2
            out.decrement_max_forwards()  # §16.6 step 3
            for name, value in edits:  # RFC 4028 §8.1: the node's say in the session interval
                out.set_header(name, value)
            leaving = target.peer.transport
            if record_route:  # §16.6 step 4; two entries when the transport changes (RFC 5658)
                if inbound != leaving:
                    out.add_record_route(self.advertised.route_uri(inbound))
                out.add_record_route(self.advertised.route_uri(leaving))
            if register is not None:
                # RFC 3327 §5.1: Path, so the upstream registrar routes calls for this AOR through the node.
                out.add_header("Path", self.advertised.route_uri(self.upstream.transport if self.upstream else leaving))
            out.push_via(self.advertised.via(leaving, make_branch(h, next(self._seq))))  # §16.6 step 8
            client = self.txns.new_client(out, target.peer, self)
            client.context = ctx
            ctx.branches.append(client)

    # -- responses -------------------------------------------------------------------------------------

    def _on_response(self, resp: Response, source: Peer) -> None:
        self.counters.responses_received[resp.status] += 1
        txn = self.txns.match_response(resp)
        if txn is not None:
            txn.receive_response(resp)
            return
        # RFC 3261 §16.7 / RFC 6026: a 2xx to INVITE outliving its transaction still goes to the caller.
        top = resp.top_via
        if self.local.via(top) and resp.cseq.method == "INVITE" and 200 <= resp.status < 300 and len(resp.vias) > 1:
            resp.pop_via()
            refused = self._late_answer(resp, source)
            self._send(resp.to_bytes(), via_peer(resp.top_via))
            if refused is not None:
                self._send_byes(*refused)
            return
        self.counters.stray_responses += 1

    def _late_answer(self, resp: Response, source: Peer) -> tuple[Call, str] | None:
        """A 2xx for the initial INVITE of a call the node already ended unanswered (its 408 after
        Timer B, or its 487 after an unanswered CANCEL, crossed the callee's 200).

        The 2xx is forwarded whatever happens: RFC 3261 §16.7 step 5 has a proxy forward every 2xx
        to INVITE, and only the UAC decides about the session it sets up (§13.2.2.4); a proxy that
        swallowed it and ACKed the callee itself would be acting as a B2BUA. The call is up at the
        callee now, so it must be metered again: the policy is asked once more with the same
        CallInfo. Allowed, the call re-opens (one new allowed/ended pair). Refused, the node sends a
        BYE each way once the 2xx is on its way, so no session stays up unmetered; the refused call
        is returned for that, with the Reason (RFC 3326) its BYEs carry."""
        call_id, tag = resp.call_id, resp.from_.tag
        if self.dialogs.find(call_id, tag) is not None:
            return None  # a live call (a retransmitted or a second forked 2xx): forwarded as ever
        call = self.dialogs.buried(call_id, tag)
        if call is None or call.refused or resp.cseq.number != call.invite_cseq:
            return None
        self.counters.late_answers += 1
        session, edits = plan_response(resp, call.offer)  # RFC 4028 §8.2, as for any 2xx
        for name, value in edits:
            resp.set_header(name, value)
        verdict = self._ask(self.policy.on_invite, call.info)
        now = self.clock.time()
        if not verdict.allowed:
            call.refused = True
            self._learn_dialog(call, resp, source, "")
            log_event(log, "sip.call.late_answer_refused", logging.INFO, call_id=call_id, status=verdict.status)
            return call, f'SIP;cause={verdict.status};text="{_reason_text(verdict.reason)}"'
        self.dialogs.reopen(call, now)
        self.dialogs.answered(call, resp.to.tag, resp.body, now)
        self._learn_dialog(call, resp, source, "")
        self._arm_session(call, session)
        log_event(log, "sip.call.reopened", call_id=call_id)
        if call.offer_sdp:
            self._notify(self.policy.on_call_answered, call.call_id, call.offer_sdp, call.answer_sdp)
        return None

    @_guarded
    def on_response(self, client: ClientTransaction, resp: Response) -> None:
        """TU callback: a branch answered (RFC 3261 §16.7)."""
        ctx: ResponseContext | None = client.context
        if ctx is None:
            return  # the answer to our own CANCEL: absorbed
        resp.pop_via()  # §16.7 step 3
        status = resp.status
        if status < 200:
            if ctx.cancelled and ctx.method == "INVITE":
                self._cancel_branch(client)  # RFC 3261 §9.1: CANCEL once the branch has answered
            if status == 100 or ctx.final_sent:
                return  # §16.7 step 5: 100 is hop-by-hop
            if ctx.call is not None:
                self.dialogs.provisional(ctx.call, resp.to.tag, self.clock.time())
            self._relay(ctx, resp)
            return
        ctx.finals[client.key] = status
        if status < 300:
            self._on_success(ctx, resp, client)
            self._relay(ctx, resp)  # §16.7 step 5: every 2xx is forwarded at once
            if not ctx.final_sent:
                ctx.final_sent = True
                self._cancel_others(ctx, client)  # §16.7 step 10
            return
        if ctx.best is None or _rank(status) < _rank(ctx.best.status):
            # RFC 3261 §16.8: the answer to a CANCEL Timer C sent is still a timeout for the call.
            ctx.best, ctx.best_cause = resp, "timeout" if client.key in ctx.timer_c else f"rejected {status}"
        if status >= 600:
            self._cancel_others(ctx, client)  # §16.7 step 10 (RFC 3261 §16.7: 6xx ends the search)
        self._maybe_finish(ctx)

    def _on_success(self, ctx: ResponseContext, resp: Response, client: ClientTransaction) -> None:
        if ctx.call is not None and resp.cseq.method == "INVITE":
            call = ctx.call
            session, edits = plan_response(resp, ctx.offer)  # RFC 4028 §8.2, before the 2xx goes on
            for name, value in edits:
                resp.set_header(name, value)
            if self.dialogs.answered(call, resp.to.tag, resp.body, self.clock.time()):
                log_event(log, "sip.call.answered", call_id=call.call_id)
                self._learn_dialog(call, resp, client.peer, str(client.request.uri) if client.request else "")
                self._arm_session(call, session)
                if call.offer_sdp:
                    self._notify(self.policy.on_call_answered, call.call_id, call.offer_sdp, call.answer_sdp)
                # else a late offer (RFC 3261 §13.2.1: offer in the 2xx, answer in the ACK): told at the ACK
        if ctx.register is not None:
            try:
                self._learn(ctx.register, resp)
            except SIPError as err:
                log_event(log, "sip.upstream.bad_register_answer", logging.WARNING, reason=err.reason)
        if ctx.bye_call is not None:
            self._end_call(ctx.bye_call, "bye")
        if ctx.refresh is not None and resp.cseq.method == ctx.method and self.dialogs.live(ctx.refresh):
            call = ctx.refresh
            session, edits = plan_response(resp, ctx.offer)  # RFC 4028 §8.2 for a refresh
            for name, value in edits:
                resp.set_header(name, value)
            self._target_refresh(call, ctx, resp)
            self._arm_session(call, session)  # RFC 4028 §10: a refresh's 2xx starts a new interval

    @_guarded
    def on_timeout(self, txn: Transaction) -> None:
        """TU callback: Timer B/F (no answer), the CANCEL guard, or Timer H (no ACK)."""
        ctx: ResponseContext | None = txn.context
        if isinstance(txn, ServerTransaction) or ctx is None:
            return
        if ctx.cancelled:  # RFC 3261 §9.1: no answer 64*T1 after CANCEL: consider it terminated
            self._local_final(ctx, txn, 487, None, "cancelled")
        else:  # §16.7 step 6 / §16.8: behave as if a 408 had arrived on that branch
            self._local_final(ctx, txn, 408, None, "timeout")

    @_guarded
    def on_transport_error(self, txn: ClientTransaction) -> None:
        """RFC 3261 §16.9: a branch that could not be sent counts as a 503 from it."""
        ctx: ResponseContext | None = txn.context
        if ctx is None:
            return
        self._local_final(ctx, txn, 503, "Service Unavailable - next hop unreachable", "unreachable")

    def transport_failed(self, peer: Peer) -> None:
        """The transport adapter reports a destination it could not reach."""
        if self.txns.unreachable(peer):
            log_event(log, "sip.next_hop.unreachable", logging.INFO, peer=str(peer))

    def _local_final(self, ctx: ResponseContext, txn: Transaction, status: int, reason: str | None,
                     cause: str) -> None:
        """A branch ended without a response: the node stands in with one of its own."""
        ctx.finals[txn.key] = status
        if ctx.call is not None:
            ctx.call.gave_up = True  # no final from downstream: the callee may still answer
        if ctx.final_sent:  # another branch already answered the caller
            return
        if ctx.best is None or _rank(status) < _rank(ctx.best.status):
            ctx.best = make_response(ctx.server.request, status, reason, to_tag=new_tag(),
                                     headers=[("Server", self.settings.user_agent)])
            ctx.best_cause = cause
        log_event(log, "sip.branch.failed", logging.INFO, method=ctx.method, peer=str(txn.peer), status=status)
        self._maybe_finish(ctx)

    @_guarded
    def on_timer_c(self, client: ClientTransaction) -> None:
        """RFC 3261 §16.8: Timer C fired on a proceeding INVITE branch: cancel it."""
        if client.context is not None:
            client.context.timer_c.add(client.key)
        self._cancel_branch(client)

    @_guarded
    def on_ack(self, txn: ServerTransaction, ack: Request) -> None:
        """An ACK matched an INVITE answered with 2xx (RFC 6026 §7.1): it belongs to the callee."""
        self._forward_ack(ack, txn.peer)

    def _maybe_finish(self, ctx: ResponseContext) -> None:
        """§16.7 step 6: once every branch has a final answer, forward the best one."""
        if ctx.final_sent or len(ctx.finals) < len(ctx.branches):
            return
        best = ctx.best
        if best is None:
            return
        ctx.final_sent = True
        if best.status == 503 and ctx.best_cause == "rejected 503":
            # §16.7 step 6: a 503 from downstream is forwarded as 500 (the node itself is not unavailable).
            best = make_response(ctx.server.request, 500, "Server Internal Error - next hop unavailable",
                                 to_tag=best.to.tag or new_tag())
        self._relay(ctx, best)
        if ctx.register is not None:
            log_event(log, "sip.upstream.register_failed", logging.INFO, aor=ctx.register.aor, status=best.status)
        if ctx.bye_call is not None:
            self._end_call(ctx.bye_call, "bye")
        if ctx.call is not None and ctx.owns_call:
            call = ctx.call
            if self._end_call(call, "cancelled" if ctx.cancelled else ctx.best_cause) and call.gave_up:
                # A branch never answered: its 2xx may still come (crossing the CANCEL, or after
                # Timer B). Remember the call for Timer C + 64*T1: the longest the node lets a
                # branch ring, plus the 2xx's retransmissions (RFC 6026 Timer L at the UAS).
                linger = self.settings.timer_c + 64 * self.settings.t1
                self.dialogs.bury(call, self.clock.time() + linger)

    def _relay(self, ctx: ResponseContext, resp: Response) -> None:
        server = ctx.server
        if server.state != TERMINATED:
            server.respond(resp)
        elif resp.vias:  # the server transaction is gone (RFC 6026 Timer L): forward by Via
            self._send(resp.to_bytes(), via_peer(resp.top_via))

    # -- CANCEL (RFC 3261 §9.2, §16.10) ----------------------------------------------------------------

    def _on_cancel(self, req: Request, peer: Peer, key: tuple) -> None:
        invite = self.txns.find_server(server_key(req, "INVITE"))
        txn = self.txns.new_server(req, peer, key, self)
        if invite is None:
            self._reply(txn, 481)  # §9.2: no transaction to cancel
            return
        self._reply(txn, 200)  # §9.2: the CANCEL itself succeeds
        ctx: ResponseContext | None = invite.context
        if ctx is None or ctx.final_sent or ctx.cancelled:
            return
        ctx.cancelled = True
        for client in ctx.branches:
            self._cancel_branch(client)

    def _cancel_others(self, ctx: ResponseContext, winner: ClientTransaction) -> None:
        if ctx.method != "INVITE":
            return  # RFC 3261 §9.1: CANCEL is for INVITE only
        for client in ctx.branches:
            if client is not winner:
                self._cancel_branch(client)

    def _cancel_branch(self, client: ClientTransaction) -> None:
        # RFC 3261 §9.1: only after a provisional; a branch still Calling is cancelled when it answers.
        if client.cancel_sent or client.state != PROCEEDING:
            return
        client.cancel_sent = True
        self.txns.new_client(build_cancel(client.request), client.peer, None)
        client.start_cancel_guard()

    # -- ACK for 2xx (end to end, RFC 3261 §13.2.2.4, forwarded statelessly §16.11) -----------------------

    def _on_ack(self, req: Request, source: Peer) -> None:
        txn = self.txns.find_server(server_key(req))
        if txn is not None:  # ACK of a non-2xx answer: hop by hop, absorbed (§17.2.1)
            txn.receive_request(req)
            return
        self._forward_ack(req, source)

    def _forward_ack(self, req: Request, source: Peer) -> None:
        incoming_branch = req.top_via.branch or req.call_id
        hint = self._pop_own_routes(req)
        mf = req.max_forwards
        if mf is not None and mf <= 0:
            return
        call = self.dialogs.find(req.call_id, req.from_.tag, req.to.tag)
        if call is not None and self.dialogs.confirmed(call):
            log_event(log, "sip.call.confirmed", call_id=call.call_id)
            if not call.offer_sdp:  # late offer: the 2xx held the offer, the ACK holds the answer
                self._notify(self.policy.on_call_answered, call.call_id, call.answer_sdp, req.body)
            self._notify(self.policy.on_call_confirmed, call.call_id)
        peer = self._next_hop(req, hint)
        if peer is None:
            return
        req.decrement_max_forwards()
        req.push_via(self.advertised.via(peer.transport, stateless_branch(incoming_branch)))
        self._send(req.to_bytes(), peer)

    # -- calls, bindings, policy ---------------------------------------------------------------------

    def _end_call(self, call: Call, cause: str) -> bool:
        if self.dialogs.end(call):
            self._call_ended(call, cause)
            return True
        return False

    def _call_ended(self, call: Call, cause: str) -> None:
        if call.session_timer is not None:
            call.session_timer.cancel()
            call.session_timer = None
        log_event(log, "sip.call.ended", call_id=call.call_id, cause=cause)
        self._notify(self.policy.on_call_ended, call.call_id, cause)

    # -- the confirmed dialog and its session timer (RFC 4028) --------------------------------------------

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

    def _target_refresh(self, call: Call, ctx: ResponseContext, resp: Response) -> None:
        """RFC 3261 §12.2.1.2 / RFC 3311 §5: a re-INVITE or UPDATE and its 2xx may move either target."""
        try:
            contacts = resp.contacts
        except SIPError:
            contacts = []
        answer = str(contacts[0].uri) if contacts else ""
        if ctx.refresh_by_caller:
            call.caller_target = ctx.refresh_contact or call.caller_target
            call.callee_target = answer or call.callee_target
        else:
            call.callee_target = ctx.refresh_contact or call.callee_target
            call.caller_target = answer or call.caller_target

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
        call.session_timer = self.clock.call_later(session.interval, self._session_check, call)

    @_guarded
    def _session_check(self, call: Call) -> None:
        call.session_timer = None
        if not call.session_expires_at or not self.dialogs.live(call):
            return
        left = call.session_expires_at - self.clock.time()
        if left > 0:  # the loop may fire a timer up to its clock resolution early
            call.session_timer = self.clock.call_later(left, self._session_check, call)
            return
        # RFC 4028 §10: the interval ran out without a refresh. The UAs should have hung up
        # min(32 s, interval/3) before; the node, last in line, ends the call at the full interval.
        if self._end_call(call, "session expired"):
            self.counters.sessions_expired += 1
            self._send_byes(call, 'SIP;cause=408;text="Session expired"')

    def _send_byes(self, call: Call, reason: str) -> None:
        """RFC 4028 §10: the element that ends an expired session sends BYE. The node holds no
        dialog of its own, so it sends one to each side, as the other side would (RFC 3261 §15.1.1)."""
        for to_callee in (True, False):
            try:
                self._send_bye(call, to_callee, reason)
            except (SIPError, ValueError):
                log.exception("sip.bye.unbuildable", extra={"facts": {"call_id": call.call_id}})

    def _send_bye(self, call: Call, to_callee: bool, reason: str) -> None:
        routes = list(call.route_set)
        own = [i for i, value in enumerate(routes) if self.local.uri(parse_name_addr(value).uri)]
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
        hint = self._pop_own_routes(bye)
        peer = self._next_hop(bye, hint)
        if (not bye.has_header("route") and direct is not None and direct.transport == "tcp"
                and (peer is None or peer.transport == "tcp")):
            # RFC 5923: a TCP endpoint is reached back through its connection while it lasts,
            # else through a new one to its contact.
            target = peer or direct
            peer = Peer("tcp", target.host, target.port, direct.conn)
        if peer is None:
            log_event(log, "sip.bye.no_route", logging.WARNING, call_id=call.call_id, target=uri)
            return
        bye.push_via(self.advertised.via(peer.transport, local_branch()))
        self.txns.new_client(bye, peer, self)  # no context: its answer (200 or 481) is absorbed
        log_event(log, "sip.bye.sent", call_id=call.call_id, peer=str(peer), side="callee" if to_callee else "caller")

    def _bindings_changed(self, change: Change) -> None:
        now = self.clock.time()
        infos = tuple(BindingInfo(b.contact, b.remaining(now), b.source, b.user_agent) for b in change.bindings)
        self._notify(self.policy.on_bindings, change.aor, infos, change.user_agent, change.source, self.clock.wall())

    def _ask(self, hook, info) -> Verdict:
        try:
            verdict = hook(info)
        except Exception:
            self.counters.policy_errors += 1
            log.exception("sip.policy_error", extra={"facts": {"hook": getattr(hook, "__name__", "?")}})
            return Verdict(False, 500, "Server Internal Error", "policy error")
        return verdict if isinstance(verdict, Verdict) else ALLOW

    def _notify(self, hook, *args) -> None:
        try:
            hook(*args)
        except Exception:
            self.counters.policy_errors += 1
            log.exception("sip.policy_error", extra={"facts": {"hook": getattr(hook, "__name__", "?")}})

    def _refuse(self, txn: ServerTransaction, verdict: Verdict) -> None:
        headers = []
        if verdict.warning:
            # RFC 3261 §20.43: 399 miscellaneous warning, agent = this node.
            text = verdict.warning.replace("\\", "\\\\").replace('"', '\\"')
            headers.append(("Warning", f'399 {self.advertised.hostport} "{text}"'))
        self._reply(txn, verdict.status, verdict.reason, headers=headers)

    # -- output --------------------------------------------------------------------------------------

    def _reply(self, txn: ServerTransaction, status: int, reason: str | None = None, headers=()) -> None:
        headers = list(headers)
        if status > 100:
            headers.append(("Server", self.settings.user_agent))
        resp = make_response(txn.request, status, reason, to_tag=new_tag() if status > 100 else None,
                             headers=headers)
        txn.respond(resp)

    def _send(self, data: bytes, peer: Peer) -> None:
        self.counters.count_sent(data)
        try:
            self._send_raw(data, peer)
        except Exception:
            self.counters.send_errors += 1
            log.exception("sip.send_error", extra={"facts": {"peer": str(peer)}})

    # -- views for the CLI and the API ------------------------------------------------------------------

    def binding_views(self) -> list[dict]:
        now = self.clock.time()
        return [
            {"aor": b.aor, "contact": b.contact, "expires": b.remaining(now), "source": str(b.source) if b.source else "",
             "user_agent": b.user_agent}
            for b in self.registrar.bindings() if b.expires_at > now
        ]

    def call_views(self) -> list[dict]:
        now = self.clock.time()
        return [
            {"call_id": c.call_id, "from": c.from_aor, "to": c.to_aor, "state": c.state, "age": round(now - c.created, 3),
             "dialogs": {tag: d.state for tag, d in c.dialogs.items()}}
            for c in self.dialogs
        ]
