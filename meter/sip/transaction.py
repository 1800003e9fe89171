"""RFC 3261 §17 transactions for a stateful proxy, as four small state machines in one table.

Each transaction is a state plus a few timers; behaviour lives in :data:`TABLE`, keyed by
``(kind, state, event)`` -> ``(next state, actions)``, in the style of h11's ``_state.py``. Anything
not in the table is absorbed (a retransmission the state no longer cares about, a timer that raced
a transition). Timers live on the layer's :class:`~meter.sip.timer_wheel.TimerWheel` (bucketed
deadlines, one loop timer for all), no task per transaction; every state lists the timers that may
outlive entering it (:data:`LIVE_TIMERS`), the rest are cancelled.

The INVITE machines include RFC 6026's Accepted state: after a 2xx the transactions stay for
64*T1 so retransmitted INVITEs are absorbed and retransmitted 2xx still reach the caller.

Messages are :mod:`meter.codecs.sip` objects; sending is a callable ``send(data, peer)``.
"""

from __future__ import annotations

import logging
from typing import Callable, Protocol

from meter.codecs.sip import BRANCH_MAGIC, Request, Response, make_request
from meter.sip.clock import Clock
from meter.sip.peer import Peer
from meter.sip.timer_wheel import TimerWheel

log = logging.getLogger("meter.sip.transaction")

# -- kinds, states, events ------------------------------------------------------------------------

INVITE_SERVER = "ist"
NON_INVITE_SERVER = "nist"
INVITE_CLIENT = "ict"
NON_INVITE_CLIENT = "nict"

CALLING = "calling"
TRYING = "trying"
PROCEEDING = "proceeding"
COMPLETED = "completed"
CONFIRMED = "confirmed"
ACCEPTED = "accepted"  # RFC 6026 §7.1 / §7.2
TERMINATED = "terminated"

# Events: a message class or a timer firing ("timer_a" ... "timer_m").
REQUEST = "request"  # a retransmission of the server transaction's request
ACK = "ack"
TU_1XX = "tu_1xx"
TU_2XX = "tu_2xx"
TU_FINAL = "tu_final"  # 300-699
R_1XX = "r_1xx"
R_2XX = "r_2xx"
R_FINAL = "r_final"
TRANSPORT_ERROR = "transport_error"  # RFC 3261 §17.1.4: the request could not be sent
CANCEL_GUARD = "timer_cancel"  # RFC 3261 §9.1: 64*T1 after CANCEL without a final response

# -- the table (RFC 3261 §17.1.1.2 fig. 5, §17.1.2.2 fig. 6, §17.2.1 fig. 7, §17.2.2 fig. 8, RFC 6026 §7) --

TABLE: dict[tuple[str, str, str], tuple[str, tuple[str, ...]]] = {
    # INVITE client transaction, RFC 3261 §17.1.1.2 (+ RFC 6026 Accepted, + proxy Timer C §16.8)
    (INVITE_CLIENT, CALLING, "timer_a"): (CALLING, ("resend_request", "start_a")),
    (INVITE_CLIENT, CALLING, "timer_b"): (TERMINATED, ("tu_timeout",)),
    (INVITE_CLIENT, CALLING, "timer_c"): (TERMINATED, ("tu_timeout",)),
    (INVITE_CLIENT, CALLING, TRANSPORT_ERROR): (TERMINATED, ("tu_transport_error",)),  # §17.1.4
    (INVITE_CLIENT, CALLING, R_1XX): (PROCEEDING, ("start_c", "pass_response")),
    (INVITE_CLIENT, CALLING, R_2XX): (ACCEPTED, ("pass_response", "start_m")),
    (INVITE_CLIENT, CALLING, R_FINAL): (COMPLETED, ("send_ack", "pass_response", "start_d")),
    (INVITE_CLIENT, PROCEEDING, R_1XX): (PROCEEDING, ("start_c", "pass_response")),
    (INVITE_CLIENT, PROCEEDING, R_2XX): (ACCEPTED, ("pass_response", "start_m")),
    (INVITE_CLIENT, PROCEEDING, R_FINAL): (COMPLETED, ("send_ack", "pass_response", "start_d")),
    (INVITE_CLIENT, PROCEEDING, "timer_c"): (PROCEEDING, ("tu_timer_c",)),
    (INVITE_CLIENT, PROCEEDING, CANCEL_GUARD): (TERMINATED, ("tu_timeout",)),
    (INVITE_CLIENT, COMPLETED, R_FINAL): (COMPLETED, ("resend_ack",)),
    (INVITE_CLIENT, COMPLETED, "timer_d"): (TERMINATED, ()),
    (INVITE_CLIENT, ACCEPTED, R_2XX): (ACCEPTED, ("pass_response",)),
    (INVITE_CLIENT, ACCEPTED, "timer_m"): (TERMINATED, ()),
    # non-INVITE client transaction, RFC 3261 §17.1.2.2
    (NON_INVITE_CLIENT, TRYING, "timer_e"): (TRYING, ("resend_request", "start_e")),
    (NON_INVITE_CLIENT, TRYING, "timer_f"): (TERMINATED, ("tu_timeout",)),
    (NON_INVITE_CLIENT, TRYING, TRANSPORT_ERROR): (TERMINATED, ("tu_transport_error",)),  # §17.1.4
    (NON_INVITE_CLIENT, TRYING, R_1XX): (PROCEEDING, ("pass_response",)),
    (NON_INVITE_CLIENT, TRYING, R_2XX): (COMPLETED, ("pass_response", "start_k")),
    (NON_INVITE_CLIENT, TRYING, R_FINAL): (COMPLETED, ("pass_response", "start_k")),
    (NON_INVITE_CLIENT, PROCEEDING, "timer_e"): (PROCEEDING, ("resend_request", "start_e_t2")),
    (NON_INVITE_CLIENT, PROCEEDING, "timer_f"): (TERMINATED, ("tu_timeout",)),
    (NON_INVITE_CLIENT, PROCEEDING, R_1XX): (PROCEEDING, ("pass_response",)),
    (NON_INVITE_CLIENT, PROCEEDING, R_2XX): (COMPLETED, ("pass_response", "start_k")),
    (NON_INVITE_CLIENT, PROCEEDING, R_FINAL): (COMPLETED, ("pass_response", "start_k")),
    (NON_INVITE_CLIENT, COMPLETED, "timer_k"): (TERMINATED, ()),
    # INVITE server transaction, RFC 3261 §17.2.1 (+ RFC 6026 §7.1 Accepted)
    (INVITE_SERVER, PROCEEDING, REQUEST): (PROCEEDING, ("resend_response",)),
    (INVITE_SERVER, PROCEEDING, TU_1XX): (PROCEEDING, ("send_response",)),
    (INVITE_SERVER, PROCEEDING, TU_2XX): (ACCEPTED, ("send_response", "start_l")),
    (INVITE_SERVER, PROCEEDING, TU_FINAL): (COMPLETED, ("send_response", "start_g", "start_h")),
    (INVITE_SERVER, ACCEPTED, TU_2XX): (ACCEPTED, ("send_response",)),
    (INVITE_SERVER, ACCEPTED, REQUEST): (ACCEPTED, ()),  # RFC 6026 §7.1: retransmitted INVITE absorbed
    (INVITE_SERVER, ACCEPTED, ACK): (ACCEPTED, ("tu_ack",)),  # RFC 6026 §7.1: pass to the TU
    (INVITE_SERVER, ACCEPTED, "timer_l"): (TERMINATED, ()),
    (INVITE_SERVER, COMPLETED, REQUEST): (COMPLETED, ("resend_response",)),
    (INVITE_SERVER, COMPLETED, "timer_g"): (COMPLETED, ("resend_response", "start_g")),
    (INVITE_SERVER, COMPLETED, "timer_h"): (TERMINATED, ("tu_timeout",)),
    (INVITE_SERVER, COMPLETED, ACK): (CONFIRMED, ("start_i",)),
    (INVITE_SERVER, CONFIRMED, ACK): (CONFIRMED, ()),  # retransmitted ACKs are absorbed
    (INVITE_SERVER, CONFIRMED, REQUEST): (CONFIRMED, ()),
    (INVITE_SERVER, CONFIRMED, "timer_i"): (TERMINATED, ()),
    (INVITE_SERVER, PROCEEDING, ACK): (PROCEEDING, ()),  # an ACK before any final answer: nothing to acknowledge
    # non-INVITE server transaction, RFC 3261 §17.2.2
    (NON_INVITE_SERVER, TRYING, TU_1XX): (PROCEEDING, ("send_response",)),
    (NON_INVITE_SERVER, TRYING, TU_2XX): (COMPLETED, ("send_response", "start_j")),
    (NON_INVITE_SERVER, TRYING, TU_FINAL): (COMPLETED, ("send_response", "start_j")),
    (NON_INVITE_SERVER, PROCEEDING, REQUEST): (PROCEEDING, ("resend_response",)),
    (NON_INVITE_SERVER, PROCEEDING, TU_1XX): (PROCEEDING, ("send_response",)),
    (NON_INVITE_SERVER, PROCEEDING, TU_2XX): (COMPLETED, ("send_response", "start_j")),
    (NON_INVITE_SERVER, PROCEEDING, TU_FINAL): (COMPLETED, ("send_response", "start_j")),
    (NON_INVITE_SERVER, COMPLETED, REQUEST): (COMPLETED, ("resend_response",)),
    (NON_INVITE_SERVER, COMPLETED, "timer_j"): (TERMINATED, ()),
}

# Timers that survive entering a state; entering it cancels every other running timer.
LIVE_TIMERS: dict[tuple[str, str], frozenset[str]] = {
    (INVITE_CLIENT, CALLING): frozenset("abc"),
    (INVITE_CLIENT, PROCEEDING): frozenset({"c", "cancel"}),
    (INVITE_CLIENT, COMPLETED): frozenset("d"),
    (INVITE_CLIENT, ACCEPTED): frozenset("m"),
    (NON_INVITE_CLIENT, TRYING): frozenset("ef"),
    (NON_INVITE_CLIENT, PROCEEDING): frozenset("ef"),
    (NON_INVITE_CLIENT, COMPLETED): frozenset("k"),
    (INVITE_SERVER, PROCEEDING): frozenset(),
    (INVITE_SERVER, COMPLETED): frozenset("gh"),
    (INVITE_SERVER, CONFIRMED): frozenset("i"),
    (INVITE_SERVER, ACCEPTED): frozenset("l"),
    (NON_INVITE_SERVER, TRYING): frozenset(),
    (NON_INVITE_SERVER, PROCEEDING): frozenset(),
    (NON_INVITE_SERVER, COMPLETED): frozenset("j"),
}

_NO_TIMERS: frozenset[str] = frozenset()

# States after the final answer: the transaction only replays bytes or waits for its timer.
_ANSWERED_STATES = frozenset({COMPLETED, CONFIRMED, ACCEPTED, TERMINATED})

INITIAL_STATE = {
    INVITE_CLIENT: CALLING, NON_INVITE_CLIENT: TRYING, INVITE_SERVER: PROCEEDING, NON_INVITE_SERVER: TRYING,
}


class Timers:
    """RFC 3261 Table 4 timer values (seconds)."""

    __slots__ = ("t1", "t2", "t4", "c", "d")

    def __init__(self, t1: float = 0.5, t2: float = 4.0, t4: float = 5.0, c: float = 181.0, d: float = 32.0):
        self.t1, self.t2, self.t4, self.c, self.d = t1, t2, t4, c, d

    @property
    def t64(self) -> float:
        return 64 * self.t1  # RFC 3261 §17.1.1.2: timers B, F, H, J (and RFC 6026 L, M) are 64*T1


class TransactionUser(Protocol):
    """What a transaction reports to its owner (the proxy core)."""

    def on_response(self, txn: "ClientTransaction", response: Response) -> None: ...

    def on_timeout(self, txn: "Transaction") -> None: ...

    def on_timer_c(self, txn: "ClientTransaction") -> None: ...

    def on_transport_error(self, txn: "ClientTransaction") -> None: ...

    def on_ack(self, txn: "ServerTransaction", ack: Request) -> None: ...


def response_event(status: int, server: bool) -> str:
    if status < 200:
        return TU_1XX if server else R_1XX
    if status < 300:
        return TU_2XX if server else R_2XX
    return TU_FINAL if server else R_FINAL


class Transaction:
    __slots__ = ("kind", "state", "key", "request", "peer", "layer", "owner", "_timers", "_interval", "context")

    def __init__(self, kind: str, key: tuple, request: Request, peer: Peer, layer: "TransactionLayer",
                 owner: TransactionUser | None) -> None:
        self.kind = kind
        self.state = INITIAL_STATE[kind]
        self.key = key
        self.request = request
        self.peer = peer
        self.layer = layer
        self.owner = owner
        self._timers: dict[str, object] = {}  # name -> the wheel bucket holding it (or a loop handle)
        self._interval = layer.timers.t1
        self.context = None  # the proxy's response context, or whatever the owner hangs here

    @property
    def terminated(self) -> bool:
        return self.state == TERMINATED

    def handle(self, event: str, msg=None) -> bool:
        """Feed one event; False when the current state absorbs it."""
        entry = TABLE.get((self.kind, self.state, event))
        if entry is None:
            return False
        new_state, actions = entry
        if new_state != self.state:
            self._enter(new_state)
        for action in actions:
            ACTIONS[action](self, msg)
        if new_state in _ANSWERED_STATES and self.request is not None:
            # Only bytes are needed from here on (the last response, the ACK): let the parsed
            # request go, so tens of thousands of lingering transactions stay cheap for the GC.
            self.request = None
            if isinstance(self, ClientTransaction):
                self.data = b""
        if new_state == TERMINATED:
            self.layer._remove(self)
        return True

    def _enter(self, state: str) -> None:
        self.state = state
        timers = self._timers
        if timers:  # most transitions find no timer running: no set, no list built for them
            live = LIVE_TIMERS.get((self.kind, state), _NO_TIMERS)
            for name in [n for n in timers if n not in live]:
                _cancel(self, name, timers.pop(name))

    def _start(self, name: str, delay: float) -> None:
        timers = self._timers
        old = timers.pop(name, None)
        if old is not None:
            _cancel(self, name, old)
        if delay > 0:  # on the wheel, keyed (transaction, timer): no handle object per timer
            timers[name] = self.layer.wheel.schedule(delay, (self, name), _fire_timer)
        else:  # zero over reliable transports (D, I, J, K): the loop's next pass, as RFC 3261 means
            timers[name] = self.layer.clock.call_later(0, self._fire, name)

    def _fire(self, name: str) -> None:
        self._timers.pop(name, None)
        try:
            self.handle("timer_" + name)
        except Exception:  # a timer must never take the event loop's callback down with it
            self.layer.errors += 1
            log.exception("sip.transaction.timer_error")

    def cancel_timers(self) -> None:
        for name, running in self._timers.items():
            _cancel(self, name, running)
        self._timers.clear()

    @property
    def running_timers(self) -> tuple[str, ...]:
        return tuple(sorted(self._timers))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.kind} {self.state} {self.key[0]}>"


def _fire_timer(key: tuple[Transaction, str]) -> None:
    txn, name = key
    txn._fire(name)


def _cancel(txn: Transaction, name: str, running) -> None:
    """Stop one running timer: a wheel bucket holding it under (txn, name), or a loop handle."""
    if type(running) is dict:
        running.pop((txn, name), None)
    else:
        running.cancel()


class ServerTransaction(Transaction):
    __slots__ = ("last_response", "last_status")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.last_response: bytes | None = None
        self.last_status = 0

    def respond(self, response: Response) -> bool:
        """The TU sends a response (RFC 3261 §17.2); False when the state does not allow it."""
        return self.handle(response_event(response.status, server=True), response)

    def receive_request(self, request: Request) -> bool:
        """A retransmission (or, for INVITE, the ACK of a non-2xx) matched this transaction."""
        return self.handle(ACK if request.method == "ACK" else REQUEST, request)

    @property
    def final_sent(self) -> bool:
        return self.last_status >= 200


class ClientTransaction(Transaction):
    __slots__ = ("data", "ack", "last_status", "cancel_sent")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.data = self.request.to_bytes()
        self.ack: bytes | None = None
        self.last_status = 0
        self.cancel_sent = False

    @property
    def branch(self) -> str:
        return self.key[0]

    def receive_response(self, response: Response) -> bool:
        self.last_status = max(self.last_status, response.status)
        return self.handle(response_event(response.status, server=False), response)

    def start_cancel_guard(self) -> None:
        # RFC 3261 §9.1: no final response 64*T1 after the CANCEL -> consider the INVITE cancelled.
        if self.state == PROCEEDING:
            self._start("cancel", self.layer.timers.t64)


# -- actions ---------------------------------------------------------------------------------------


def _send_response(txn: ServerTransaction, resp: Response) -> None:
    txn.last_response = data = resp.to_bytes()
    txn.last_status = resp.status
    txn.layer.send(data, txn.peer)


def _resend_response(txn: ServerTransaction, _msg) -> None:
    if txn.last_response is not None:
        txn.layer.retransmissions += 1
        txn.layer.send(txn.last_response, txn.peer)


def _resend_request(txn: ClientTransaction, _msg) -> None:
    txn.layer.retransmissions += 1
    txn.layer.send(txn.data, txn.peer)


def _send_ack(txn: ClientTransaction, resp: Response) -> None:
    txn.ack = build_ack(txn.request, resp).to_bytes()
    txn.layer.send(txn.ack, txn.peer)


def _resend_ack(txn: ClientTransaction, _msg) -> None:
    if txn.ack is not None:
        txn.layer.send(txn.ack, txn.peer)


def _pass_response(txn: ClientTransaction, resp: Response) -> None:
    if txn.owner is not None:
        txn.owner.on_response(txn, resp)


def _tu_timeout(txn: Transaction, _msg) -> None:
    txn.layer.timeouts += 1
    if txn.owner is not None:
        txn.owner.on_timeout(txn)


def _tu_transport_error(txn: ClientTransaction, _msg) -> None:
    if txn.owner is not None:
        txn.owner.on_transport_error(txn)


def _tu_timer_c(txn: ClientTransaction, _msg) -> None:
    if txn.owner is not None:
        txn.owner.on_timer_c(txn)


def _tu_ack(txn: ServerTransaction, ack: Request) -> None:
    if txn.owner is not None:
        txn.owner.on_ack(txn, ack)


def _retransmit_timer(name: str, *, cap: bool, fixed_t2: bool = False):
    """A, E, G: only over unreliable transports (RFC 3261 §17.1.1.2, §17.1.2.2, §17.2.1)."""

    def start(txn: Transaction, _msg) -> None:
        if txn.peer.reliable:
            return
        timers = txn.layer.timers
        delay = txn._interval
        if fixed_t2:
            delay = timers.t2  # §17.1.2.2: in Proceeding, E fires every T2
        txn._start(name, delay)
        nxt = delay * 2
        txn._interval = min(nxt, timers.t2) if cap else nxt

    return start


def _timeout_timer(name: str, value: Callable[[Timers], float], reliable_zero: bool = False):
    def start(txn: Transaction, _msg) -> None:
        delay = 0.0 if (reliable_zero and txn.peer.reliable) else value(txn.layer.timers)
        txn._start(name, delay)

    return start


ACTIONS: dict[str, Callable] = {
    "send_response": _send_response,
    "resend_response": _resend_response,
    "resend_request": _resend_request,
    "send_ack": _send_ack,
    "resend_ack": _resend_ack,
    "pass_response": _pass_response,
    "tu_timeout": _tu_timeout,
    "tu_timer_c": _tu_timer_c,
    "tu_transport_error": _tu_transport_error,
    "tu_ack": _tu_ack,
    "start_a": _retransmit_timer("a", cap=False),  # §17.1.1.2: A doubles, uncapped, until B
    "start_e": _retransmit_timer("e", cap=True),  # §17.1.2.2: E doubles up to T2
    "start_e_t2": _retransmit_timer("e", cap=True, fixed_t2=True),
    "start_g": _retransmit_timer("g", cap=True),  # §17.2.1: G doubles up to T2
    "start_b": _timeout_timer("b", lambda t: t.t64),
    "start_c": _timeout_timer("c", lambda t: t.c),  # §16.7 step 2: restarted by every provisional
    "start_d": _timeout_timer("d", lambda t: t.d, reliable_zero=True),
    "start_f": _timeout_timer("f", lambda t: t.t64),
    "start_h": _timeout_timer("h", lambda t: t.t64),
    "start_i": _timeout_timer("i", lambda t: t.t4, reliable_zero=True),
    "start_j": _timeout_timer("j", lambda t: t.t64, reliable_zero=True),
    "start_k": _timeout_timer("k", lambda t: t.t4, reliable_zero=True),
    "start_l": _timeout_timer("l", lambda t: t.t64),
    "start_m": _timeout_timer("m", lambda t: t.t64),
}

# What a new client transaction does on creation, after sending its request.
_START_ACTIONS = {
    INVITE_CLIENT: ("start_a", "start_b", "start_c"),
    NON_INVITE_CLIENT: ("start_e", "start_f"),
}


# -- ACK and CANCEL built by the transaction layer -------------------------------------------------


def build_ack(request: Request, response: Response) -> Request:
    """RFC 3261 §17.1.1.3: the ACK for a non-2xx final response, hop by hop."""
    return _same_hop(request, "ACK", response.header("to") or request.header("to") or "")


def build_cancel(request: Request) -> Request:
    """RFC 3261 §9.1: CANCEL with the INVITE's Request-URI, Call-ID, From, To, CSeq number, top Via and Route."""
    return _same_hop(request, "CANCEL", request.header("to") or "")


def _same_hop(request: Request, method: str, to: str) -> Request:
    """A request that follows ``request`` hop by hop: its top Via, Route set, From, Call-ID and
    CSeq number, with ``method`` (RFC 3261 §9.1, §17.1.1.3)."""
    headers = [("Via", request.header("via") or "")]
    routes = request.header_values("route")
    if routes:
        headers.append(("Route", ", ".join(routes)))
    headers += [
        ("Max-Forwards", "70"),
        ("From", request.header("from") or ""),
        ("To", to),
        ("Call-ID", request.call_id),
        ("CSeq", f"{request.cseq.number} {method}"),
    ]
    return make_request(method, request.uri, headers)


# -- the table of live transactions ----------------------------------------------------------------


def server_key(request: Request, method: str | None = None) -> tuple:
    """RFC 3261 §17.2.3: branch + sent-by + method (ACK matches INVITE). ``method`` overrides,
    e.g. "INVITE" to find the transaction a CANCEL cancels (§9.2)."""
    via = request.top_via
    m = method or ("INVITE" if request.method == "ACK" else request.method)
    branch = via.branch
    if branch and branch.startswith(BRANCH_MAGIC):
        return (branch, via.host.lower(), via.port, m)
    # RFC 2543 peers (§17.2.3 fallback, simplified): Call-ID, From tag, CSeq number, top Via, method.
    return ("2543:" + request.call_id, request.from_.tag, request.cseq.number, str(via), m)


class TransactionLayer:
    """Live transactions by key, O(1) lookups; creates, matches and forgets them."""

    def __init__(self, clock: Clock, send: Callable[[bytes, Peer], None], timers: Timers | None = None,
                 wheel: TimerWheel | None = None) -> None:
        self.clock = clock
        self._own_wheel = wheel is None
        self.wheel = wheel or TimerWheel(clock)  # RFC 3261 timers: bucketed deadlines, not a loop handle each
        self.send = send
        self.timers = timers or Timers()
        self.servers: dict[tuple, ServerTransaction] = {}
        self.clients: dict[tuple, ClientTransaction] = {}
        self.retransmissions = 0  # absorbed-and-answered or resent, for the counters
        self.timeouts = 0
        self.errors = 0

    def find_server(self, key: tuple) -> ServerTransaction | None:
        return self.servers.get(key)

    def new_server(self, request: Request, peer: Peer, key: tuple, owner: TransactionUser | None) -> ServerTransaction:
        kind = INVITE_SERVER if request.method == "INVITE" else NON_INVITE_SERVER
        txn = ServerTransaction(kind, key, request, peer, self, owner)
        self.servers[key] = txn
        return txn

    def new_client(self, request: Request, peer: Peer, owner: TransactionUser | None) -> ClientTransaction:
        """Send ``request`` (its top Via already ours, with a unique branch) and track it (RFC 3261 §17.1)."""
        kind = INVITE_CLIENT if request.method == "INVITE" else NON_INVITE_CLIENT
        key = (request.top_via.branch, request.method)
        txn = ClientTransaction(kind, key, request, peer, self, owner)
        self.clients[key] = txn
        self.send(txn.data, peer)
        for action in _START_ACTIONS[kind]:
            ACTIONS[action](txn, None)
        return txn

    def unreachable(self, peer: Peer) -> int:
        """The transport could not reach ``peer`` (TCP connect or name lookup failed): fail the
        client transactions still waiting there (RFC 3261 §17.1.4). O(live clients); rare."""
        failed = [t for t in self.clients.values()
                  if t.peer.transport == peer.transport and t.peer.host == peer.host and t.peer.port == peer.port]
        for txn in failed:
            txn.handle(TRANSPORT_ERROR)
        return len(failed)

    def match_response(self, response: Response) -> ClientTransaction | None:
        """RFC 3261 §17.1.3: top Via branch and CSeq method."""
        return self.clients.get((response.top_via.branch, response.cseq.method))

    def _remove(self, txn: Transaction) -> None:
        txn.cancel_timers()
        table = self.servers if isinstance(txn, ServerTransaction) else self.clients
        if table.get(txn.key) is txn:
            del table[txn.key]

    def close(self) -> None:
        for txn in [*self.servers.values(), *self.clients.values()]:
            txn.cancel_timers()
        self.servers.clear()
        self.clients.clear()
        if self._own_wheel:
            self.wheel.close()
