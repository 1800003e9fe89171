"""The SIP proxy core (RFC 3261 §16; Kamailio's tm with its core): transactions in, branches out,
the best answer back. What a request means beyond forwarding lives beside it, each in its module:

- ``router``        where a request goes (own Route entries, location, zones, upstream, next hop)
- ``registrar``     REGISTER (standalone: the registrar; inline: forwarded, bindings learned)
- ``call_control``  calls: set-up, answer, ACK, session timers, BYE, late answers, the end
- ``outcome``       the small object each of them hands the core with a forwarded request

Sans-I/O apart from two injected things, ``send(data, peer)`` and a :class:`~meter.sip.clock.Clock`,
unlike the RAS core's aioquic shape (``now`` in, datagrams out): SIP's transaction timers are many
and fine-grained (RFC 3261 §17: A, B, E, F, G, H, I, J, K, C, D per transaction), so the core
schedules them on the clock it is given (a loop in the node, a fake in tests) rather than returning
deadlines to its caller. The asyncio adapter (``meter.sip.node``) feeds it bytes.

Per request: parse (codec), match a transaction (O(1) by branch), decide, forward with the minimal
edits (Via, Record-Route, Max-Forwards, Request-URI), never re-serialising untouched lines.
"""

from __future__ import annotations

import functools
import itertools
import logging
from typing import Callable

from meter.codecs.sip import (
    DEFAULT_LIMITS, Limits, Request, Response, SIPError, make_response, new_tag, parse, unsupported,
)
from meter.hooks import HookCaller
from meter.logs import log_event
from meter.sip.auth.admission import ADMITTED, Admission, AdmissionPolicy
from meter.sip.call_control import CallControl, PendingLateAnswer, PendingSetup
from meter.sip.clock import Clock
from meter.sip.counters import SipCounters, method_label
from meter.sip.dialogs import DialogTable
from meter.sip.hooks import ALLOW, NoMetering, PendingVerdict, SipHooks, Verdict
from meter.sip.limits import LIMITED, PASS, LimitSettings, SourceLimiter
from meter.sip.location import LocationService
from meter.sip.outcome import NO_OUTCOME, Outcome
from meter.sip.proxy_context import ProxyContext
from meter.sip.peer import Peer
from meter.sip.registrar import Registrar
from meter.sip.router import Router, Target
from meter.sip.routing import (
    Advertised, LocalAddresses, loop_hash, looped, make_branch, response_peer, stamp_received, stateless_branch,
    via_peer,
)
from meter.sip.settings import SipSettings
from meter.sip.timer_wheel import TimerWheel
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
# RFC 3261 §16.6 step 4: Record-Route on requests that can create a dialog, so that every
# in-dialog request passes the node.
DIALOG_CREATING = frozenset({"INVITE", "SUBSCRIBE", "REFER", "NOTIFY"})


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


class SipCore:
    def __init__(
        self,
        settings: SipSettings,
        *,
        clock: Clock,
        send: Callable[[bytes, Peer], None],
        advertised: Advertised,
        hooks: SipHooks | None = None,
        local_names: list[str] = (),
        upstream: Peer | None = None,
        counters: SipCounters | None = None,
        admission: AdmissionPolicy | None = None,
        limits: LimitSettings | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self._send_raw = send
        self.hooks: SipHooks = hooks or NoMetering()
        self.counters = counters or SipCounters()
        guard = HookCaller(log, self.counters, "sip.hook_error")
        self.advertised = advertised
        self.local = LocalAddresses(advertised.port, [advertised.host, *local_names, *settings.aliases])
        self.inline = settings.mode == "inline"
        self.upstream = upstream
        self.limits = Limits(max_message_bytes=settings.max_message_bytes, max_headers=settings.max_headers,
                             max_header_bytes=min(DEFAULT_LIMITS.max_header_bytes, settings.max_message_bytes))
        # One loop timer for all per-message timers (RFC 3261 transactions, the ACK wait, RFC 4028).
        self.wheel = TimerWheel(clock)
        self.txns = TransactionLayer(clock, self._send, Timers(
            settings.t1, settings.t2, settings.t4, settings.timer_c, settings.timer_d), wheel=self.wheel)
        self.location = LocationService(settings.min_expires, settings.max_expires, settings.default_expires)
        self.dialogs = DialogTable()
        self.router = Router.asking(self.hooks, local=self.local, location=self.location, inline=self.inline,
                                    upstream=upstream, relay=settings.relay, counters=self.counters)
        # [auth]: allow-list, digest and the policy for unknown sources (None: everyone is admitted).
        self.admission = None if admission is None else Admission(
            admission, inline=self.inline, upstream=upstream, location=self.location, router=self.router,
            clock=clock, reply=self._reply, counters=self.counters)
        # [limits]: per-source requests and registrations (Kamailio pike); zone peers, upstream exempt.
        self.source_limits = None if limits is None else SourceLimiter(limits, exempt=self.router.trusted_host)
        self.registrar = Registrar(self.location, hooks=self.hooks, guard=guard, clock=clock, upstream=upstream,
                                   reply=self._reply, refuse=self._refuse, forward_upstream=self._forward_upstream,
                                   later=self._await_verdict, admission=self.admission, limits=self.source_limits)
        self.calls = CallControl(settings, clock=clock, dialogs=self.dialogs, hooks=self.hooks, guard=guard,
                                 counters=self.counters, router=self.router, txns=self.txns, advertised=advertised,
                                 reply=self._reply, refuse=self._refuse, wheel=self.wheel)
        self._seq = itertools.count(1)
        self._tick_handle = None
        self._closed = False

    # -- life cycle ----------------------------------------------------------------------------------

    def start(self) -> None:
        self._tick_handle = self.clock.call_later(self.settings.housekeeping_interval, self._tick)

    def close(self, cause: str = "node shutdown") -> None:
        """End every call and binding through the hooks, stop every timer."""
        if self._closed:
            return
        self._closed = True
        if self._tick_handle is not None:
            self._tick_handle.cancel()
        self.calls.close(cause)
        self.registrar.close()
        self.txns.close()
        self.wheel.close()

    @_guarded
    def _tick(self) -> None:
        if self._closed:
            return
        self._tick_handle = self.clock.call_later(self.settings.housekeeping_interval, self._tick)
        self.housekeeping()

    def housekeeping(self) -> None:
        now = self.clock.time()
        self.registrar.expire(now)
        self.calls.reap(now)
        if self.source_limits is not None:
            self.source_limits.expire(now)

    # -- input ---------------------------------------------------------------------------------------

    def receive_datagram(self, data: bytes, source: Peer) -> None:
        """One UDP datagram (RFC 3261 §18.3: one message per datagram)."""
        if not data.strip(b"\r\n \t"):
            self.counters.keepalives += 1  # RFC 5626 §4.4.1 CRLF keep-alive
            return
        limited = PASS
        if self.source_limits is not None and data[:4] != b"SIP/":  # requests (and garbage), not responses
            # [limits] before the parse, like Kamailio's pike: a dropped flood costs a dict lookup.
            limited = self.source_limits.check_rate(source.host, self.clock.time())
            if limited == LIMITED and self.source_limits.settings.rate_action == "drop":
                return
        try:
            msg = parse(data, self.limits)
        except SIPError as err:
            if limited:
                self._limited(err.message, source, limited, "rate")
            else:
                self.receive_error(err, source)
            return
        except Exception:  # the codec promises SIPError only; never let a bug in it stop the node
            self.counters.internal_errors += 1
            self.counters.malformed_dropped += 1
            log.exception("sip.codec_error")
            return
        if limited:
            self._limited(msg, source, limited, "rate")
            return
        self._receive(msg, source)

    def receive_message(self, msg: Request | Response, source: Peer) -> None:
        """One message framed by a stream transport (TCP, TLS): the rate check a datagram gets before its parse."""
        if self.source_limits is not None and isinstance(msg, Request):
            limited = self.source_limits.check_rate(source.host, self.clock.time())
            if limited:
                self._limited(msg, source, limited, "rate")
                return
        self._receive(msg, source)

    def _receive(self, msg: Request | Response, source: Peer) -> None:
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
        """A message the codec refused: a request gets its status and reason (docs/design.md principle 6);
        anything else is dropped and counted."""
        msg = err.message
        if isinstance(msg, Request) and not _maybe_ack(msg) and msg.has_header("via"):
            self.counters.malformed_answered += 1
            log_event(log, "sip.malformed", logging.DEBUG, source=str(source), reason=err.reason,
                      user_agent=msg.user_agent or "")
            self._answer_stateless(msg, source, err.status if 300 <= err.status <= 699 else 400, err.reason)
            return
        self.counters.malformed_dropped += 1
        log_event(log, "sip.malformed.dropped", logging.DEBUG, source=str(source), reason=err.reason,
                  user_agent=(msg.user_agent or "") if msg is not None else "")

    def _answer_stateless(self, req: Request, source: Peer, status: int, reason: str, headers=()) -> None:
        try:
            resp = make_response(req, status, reason, to_tag=new_tag(),
                                 headers=[("Server", self.settings.user_agent), *headers])
            data = resp.to_bytes()
        except Exception:
            self.counters.malformed_dropped += 1
            return
        self._send(data, source)  # the Via may be what is broken: answer where it came from

    def _limited(self, msg: Request | Response | None, source: Peer, verdict: int, reason: str) -> None:
        """Above a per-source limit (meter.sip.limits): dropped, or answered 503 with Retry-After."""
        answer = self.source_limits.refusal(msg, source.host, verdict, reason)
        if answer is not None and isinstance(msg, Request) and not _maybe_ack(msg):
            self._answer_stateless(msg, source, *answer)

    # -- requests ------------------------------------------------------------------------------------

    def _on_request(self, req: Request, source: Peer) -> None:
        self.counters.requests_received[method_label(req.method)] += 1
        if self._closed:
            return
        if self.admission is not None and self.admission.outsider(req, source) is not None:
            if self.admission.settings.outsiders == "refuse" and not _maybe_ack(req):
                self._answer_stateless(req, source, 403, "Forbidden - source not allowed")
            return  # outside [auth] allow: before any transaction, so it costs no state
        if req.method == "ACK":
            self._on_ack(req, source)
            return
        key = server_key(req)
        txn = self.txns.find_server(key)
        if txn is not None:  # RFC 3261 §17.2.3: a retransmission, answered by its transaction
            self.counters.retransmissions_absorbed += 1
            txn.receive_request(req)
            return
        if req.method == "REGISTER" and self.source_limits is not None:
            # [limits] registrations: before any transaction, so a refused REGISTER costs no state.
            verdict = self.source_limits.over_registrations(req, source.host, self.clock.time())
            if verdict != PASS:
                self._limited(req, source, verdict, "registrations")
                return
        peer = response_peer(req.top_via, source)
        stamp_received(req, source)
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

    def _process(self, txn: ServerTransaction, req: Request, source: Peer) -> None:
        method = req.method
        bad = unsupported(req, PROXY_SUPPORTED)
        if bad:  # RFC 3261 §16.3 step 5: no extension needs the node's support
            self._reply(txn, 420, headers=[("Unsupported", ", ".join(bad))])
            return
        hint = self.router.pop_own_routes(req)  # RFC 3261 §16.4
        has_route = req.has_header("route")
        if method == "OPTIONS" and not has_route and self.router.for_node(req):
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
            self.registrar.on_register(txn, req, source)
            return
        if req.to.tag is not None:
            self._in_dialog(txn, req, hint, source)
            return
        self._initial(txn, req, source)

    def _initial(self, txn: ServerTransaction, req: Request, source: Peer) -> None:
        admitted = ADMITTED if self.admission is None else self.admission.initial(txn, req, source)
        if admitted is None:
            return  # challenged (407) or refused (403) by [auth]
        located = self.router.locate(req, source, self.clock.time()) if admitted is ADMITTED else admitted
        if located.refusal is not None:
            self._reply(txn, *located.refusal)
            return
        outcome, edits = NO_OUTCOME, ()
        if req.method == "INVITE":
            forwarding = self.calls.start(txn, req, source, located.callee_registered,
                                          self.router.from_upstream(source))
            if forwarding is None:
                return
            if forwarding.__class__ is PendingSetup:  # on_invite's verdict comes later
                self._await_verdict(txn, forwarding.verdict, self._setup_decided, forwarding, located.targets)
                return
            outcome, edits = forwarding.outcome, forwarding.edits
        self._forward(txn, req, located.targets, outcome, record_route=req.method in DIALOG_CREATING, edits=edits)

    def _setup_decided(self, setup: PendingSetup, targets: list[Target], verdict: Verdict) -> None:
        forwarding = self.calls.admit_later(setup, verdict)
        if forwarding is not None:
            self._forward(setup.txn, setup.req, targets, forwarding.outcome, record_route=True, edits=forwarding.edits)

    # -- verdicts that come later (meter.sip.hooks.PendingVerdict) ------------------------------------

    def _await_verdict(self, txn: ServerTransaction | None, pending: PendingVerdict, fn: Callable, *args) -> None:
        """Carry on with ``fn(*args, verdict)`` once the verdict arrives. Meanwhile the server
        transaction absorbs retransmissions; an INVITE gets its 100 Trying now (RFC 3261 §16.2:
        the answer will take longer than 200 ms), which stops the caller's retransmissions."""
        if txn is not None and txn.request.method == "INVITE" and not txn.last_status:
            self._reply(txn, 100)
        pending.add_done_callback(lambda verdict: self._resume(txn, fn, args, verdict))

    def _resume(self, txn: ServerTransaction | None, fn: Callable, args: tuple, verdict) -> None:
        """The verdict arrived, maybe from another process's reader: what ``_on_request`` does around
        ``_process``, so nothing escapes into the loop and no transaction is left unanswered."""
        if not isinstance(verdict, Verdict):
            verdict = ALLOW  # a non-verdict answer counts as allow (meter.hooks.HookCaller.ask)
        try:
            fn(*args, verdict)
        except SIPError as err:  # a header read lazily is malformed
            self.counters.malformed_answered += 1
            if txn is not None and not self._closed:
                self._reply_once(txn, err.status if 300 <= err.status <= 699 else 400, err.reason)
        except Exception:
            self.counters.internal_errors += 1
            log.exception("sip.internal_error", extra={"facts": {"where": getattr(fn, "__name__", "?")}})
            if txn is not None and not self._closed:
                self._reply_once(txn, 500, "Server Internal Error")

    def _in_dialog(self, txn: ServerTransaction, req: Request, hint: str | None, source: Peer) -> None:
        """RFC 3261 §16.12: in-dialog requests follow Route, then the Request-URI (the remote target)."""
        now = self.clock.time()
        peer = self.router.next_hop(req, hint, now)
        if peer is None:
            self._reply(txn, 404, "Not Found - no route")
            return
        refusal = self.router.in_dialog_refusal(req, source, peer, hint is not None, self.calls.parties, now)
        if refusal is not None:
            self._reply(txn, *refusal)
            return
        forwarding = self.calls.in_dialog(txn, req)
        if forwarding is not None:
            self._forward(txn, req, [Target(None, peer)], forwarding.outcome, edits=forwarding.edits)

    def _forward_upstream(self, txn: ServerTransaction, req: Request, outcome: Outcome) -> None:
        """Inline REGISTER: to the upstream registrar, with Path so that it routes calls for the AOR
        through the node (RFC 3327 §5.1)."""
        path = self.advertised.route_uri(self.upstream.transport)
        self._forward(txn, req, [Target(None, self.upstream)], outcome, edits=(), path=path)

    # -- forwarding (RFC 3261 §16.6) ---------------------------------------------------------------------

    def _forward(self, txn: ServerTransaction, req: Request, targets: list[Target], outcome: Outcome, *,
                 record_route: bool = False, edits: tuple = (), path: str = "") -> None:
        ctx = ProxyContext(txn, req.method, outcome)
        txn.context = ctx
        if req.method == "INVITE" and not txn.last_status:  # (sent already while a verdict was pending)
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
            if path:
                out.add_header("Path", path)
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
            refused = self.calls.late_answer(resp, source)
            self._send(resp.to_bytes(), via_peer(resp.top_via))
            if refused is None:
                return
            if refused.__class__ is PendingLateAnswer:  # the re-ask's verdict comes later
                self._await_verdict(None, refused.verdict, self.calls.late_decided, refused)
                return
            self.calls.send_byes(*refused)
            return
        self.counters.stray_responses += 1

    @_guarded
    def on_response(self, client: ClientTransaction, resp: Response) -> None:
        """TU callback: a branch answered (RFC 3261 §16.7)."""
        ctx: ProxyContext | None = client.context
        if ctx is None:
            return  # the answer to our own CANCEL: absorbed
        resp.pop_via()  # §16.7 step 3
        status = resp.status
        if status < 200:
            if ctx.cancelled and ctx.method == "INVITE":
                self._cancel_branch(client)  # RFC 3261 §9.1: CANCEL once the branch has answered
            if status == 100 or ctx.final_sent:
                return  # §16.7 step 5: 100 is hop-by-hop
            ctx.outcome.provisional(resp)
            self._relay(ctx, resp)
            return
        ctx.finals[client.key] = status
        if status < 300:
            ctx.outcome.success(resp, client.peer, str(client.request.uri) if client.request else "")
            self._relay(ctx, resp)  # §16.7 step 5: every 2xx is forwarded at once
            if not ctx.final_sent:
                ctx.final_sent = True
                self._cancel_others(ctx, client)  # §16.7 step 10
            return
        if ctx.better(status):
            # RFC 3261 §16.8: the answer to a CANCEL Timer C sent is still a timeout for the call.
            ctx.best, ctx.best_cause = resp, "timeout" if client.key in ctx.timer_c else f"rejected {status}"
        if status >= 600:
            self._cancel_others(ctx, client)  # §16.7 step 10 (RFC 3261 §16.7: 6xx ends the search)
        self._maybe_finish(ctx)

    @_guarded
    def on_timeout(self, txn: Transaction) -> None:
        """TU callback: Timer B/F (no answer), the CANCEL guard, or Timer H (no ACK)."""
        ctx: ProxyContext | None = txn.context
        if isinstance(txn, ServerTransaction) or ctx is None:
            return
        if ctx.cancelled:  # RFC 3261 §9.1: no answer 64*T1 after CANCEL: consider it terminated
            self._local_final(ctx, txn, 487, None, "cancelled")
        else:  # §16.7 step 6 / §16.8: behave as if a 408 had arrived on that branch
            self._local_final(ctx, txn, 408, None, "timeout")

    @_guarded
    def on_transport_error(self, txn: ClientTransaction) -> None:
        """RFC 3261 §16.9: a branch that could not be sent counts as a 503 from it."""
        ctx: ProxyContext | None = txn.context
        if ctx is None:
            return
        self._local_final(ctx, txn, 503, "Service Unavailable - next hop unreachable", "unreachable")

    def transport_failed(self, peer: Peer) -> None:
        """The transport adapter reports a destination it could not reach."""
        if self.txns.unreachable(peer):
            log_event(log, "sip.next_hop.unreachable", logging.INFO, peer=str(peer))

    def _local_final(self, ctx: ProxyContext, txn: Transaction, status: int, reason: str | None,
                     cause: str) -> None:
        """A branch ended without a response: the node stands in with one of its own."""
        ctx.finals[txn.key] = status
        ctx.outcome.gave_up()  # no final from downstream: the callee may still answer
        if ctx.final_sent:  # another branch already answered the caller
            return
        if ctx.better(status):
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

    def _maybe_finish(self, ctx: ProxyContext) -> None:
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
        ctx.outcome.failed(best.status, "cancelled" if ctx.cancelled else ctx.best_cause)

    def _relay(self, ctx: ProxyContext, resp: Response) -> None:
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
        ctx: ProxyContext | None = invite.context
        if ctx is None:
            # Not forwarded (its on_invite verdict is still to come): nothing downstream to cancel,
            # so the node ends the INVITE itself (§9.2: 487); the verdict, when it comes, sees it answered.
            if not invite.final_sent:
                self._reply(invite, 487)
            return
        if ctx.final_sent or ctx.cancelled:
            return
        ctx.cancelled = True
        for client in ctx.branches:
            self._cancel_branch(client)

    def _cancel_others(self, ctx: ProxyContext, winner: ClientTransaction) -> None:
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
        hint = self.router.pop_own_routes(req)
        mf = req.max_forwards
        if mf is not None and mf <= 0:
            return
        now = self.clock.time()
        peer = self.router.next_hop(req, hint, now)
        if peer is not None and self.router.in_dialog_refusal(req, source, peer, hint is not None,
                                                              self.calls.parties, now) is not None:
            return  # an ACK is never answered (RFC 3261 §17.2.1): dropped
        self.calls.acked(req)
        if peer is None:
            return
        req.decrement_max_forwards()
        req.push_via(self.advertised.via(peer.transport, stateless_branch(incoming_branch)))
        self._send(req.to_bytes(), peer)

    # -- output --------------------------------------------------------------------------------------

    def _refuse(self, txn: ServerTransaction, verdict: Verdict) -> None:
        headers = []
        if verdict.warning:
            # RFC 3261 §20.43: 399 miscellaneous warning, agent = this node.
            text = verdict.warning.replace("\\", "\\\\").replace('"', '\\"')
            headers.append(("Warning", f'399 {self.advertised.hostport} "{text}"'))
        self._reply(txn, verdict.status, verdict.reason, headers=headers)

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
