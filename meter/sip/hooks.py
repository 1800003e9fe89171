"""The SIP node's hooks: where it asks the metering join what to do (docs/design.md principle 4).

The node calls a :class:`SipHooks` at fixed points; ``meter.metering.sip`` plugs in there. The
contract the node keeps:

- ``on_register`` before a REGISTER is accepted (standalone: after the registrar's own checks,
  Min-Expires and contact limits, so a REGISTER the registrar refuses never charges) or forwarded
  (inline); a refusal answers the REGISTER with the verdict's status, reason and a Warning.
- ``on_register_failed`` (inline) when a REGISTER that ``on_register`` allowed gets no 2xx from the
  upstream: a final non-2xx (a 401/407 digest challenge, 403...) or no answer (Timer F, RFC 3261
  §17.1.2.2). What the REGISTER reserved can be released at once; a binding the upstream confirmed
  earlier is not affected (it ends through ``on_bindings``).
- ``on_bindings`` after a registration change is confirmed: standalone accept, upstream 200 OK,
  expiry, unregister, node shutdown. An empty ``bindings`` means the alias is no longer registered.
- ``on_invite`` once per initial INVITE of a call (a spiral back through the node is the same call);
  a refusal answers with the verdict. For every *allowed* call the node later calls
  ``on_call_ended`` exactly once (BYE, CANCEL, final failure, timeout, a 2xx not ACKed within
  64*T1, RFC 4028 session expiry, reaper, node shutdown), after at most one ``on_call_answered``
  and at most one ``on_call_confirmed``.
- ``on_invite`` again, with the same :class:`CallInfo`, when a 2xx arrives for a call the node had
  already ended unanswered (its 408 or 487 crossed the callee's 200): the call is up at the callee
  after all. Allowed, it is a new call with its own ``on_call_ended`` later; refused, the node
  sends a BYE to both ends and calls nothing more. So ``on_invite`` / ``on_call_ended`` pairs for
  one Call-ID follow each other, never overlap, and one is open whenever the call is up.
- ``on_call_answered`` comes with the first 2xx; for a late offer (an INVITE without SDP, RFC 3261
  §13.2.1) it comes with the ACK instead, offer from the 2xx and answer from the ACK, just before
  ``on_call_confirmed``.
- ``trusted_source`` / ``zone_destination`` / ``zone_closed`` tell the relay policy
  (RFC 3261 §16.6) which sources are a zone's peers, where an endpoint's pre-loaded Route may
  lead, and which zone keeps a source out (its allow-list); ``NoMetering`` knows no zone, so
  only the upstream is trusted or a relay destination.

Hooks run on the event loop, inline with message handling: they must be quick and must not block.
An exception in a hook is logged and counted; ``on_register``/``on_invite`` then answer 500.

A verdict may come later: ``on_register`` and ``on_invite`` may return a :class:`PendingVerdict`
that another process resolves (``meter.workers``: a worker's hooks are answered by the owner). The
node then keeps the request's server transaction waiting (retransmissions absorbed, an INVITE
answered 100 Trying at once, RFC 3261 §16.2) and carries on when the verdict arrives, with the
same rules as for an immediate one; a resolved value that is not a :class:`Verdict` counts as
allow. What may happen meanwhile, and what the node then guarantees:

- the caller CANCELs the INVITE: the INVITE is answered 487 at once (RFC 3261 §9.2); if the
  verdict later allows, ``on_call_ended(call_id, "cancelled")`` follows at once, so the pair closes.
- the node shuts down: an allowed INVITE gets ``on_call_ended`` with the shutdown cause, an allowed
  inline REGISTER ``on_register_failed(aor, call_id, "abandoned")``, an allowed standalone REGISTER
  ``on_bindings`` with the alias's current (after shutdown: no) bindings. Nothing is sent.
- a standalone REGISTER's bindings changed: the registrar's checks run again before the change is
  applied; refused then, the REGISTER gets the registrar's answer and ``on_bindings`` the alias's
  unchanged bindings, so the charge follows the bindings.
- a late answer's re-ask (below): the 2xx is forwarded at once; the re-opened call or the BYEs
  follow the verdict. Its retransmissions are forwarded without a third ask.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from meter.sip.peer import Peer


@dataclass(frozen=True, slots=True)
class Verdict:
    """Allow, or refuse with a status, reason phrase and Warning text (RFC 3261 §20.43)."""

    allowed: bool = True
    status: int = 403
    reason: str = "Forbidden"
    warning: str = ""

    @classmethod
    def refuse(cls, status: int = 403, reason: str = "Forbidden", warning: str = "") -> "Verdict":
        if not 300 <= status <= 699:
            raise ValueError(f"a refusal needs a final non-2xx status, got {status}")
        return cls(False, status, reason, warning)


class PendingVerdict:
    """A verdict another process gives later (meter.workers): on_register/on_invite may return one."""

    __slots__ = ("verdict", "_callbacks")

    def __init__(self) -> None:
        self.verdict: Any = None  # None until resolved
        self._callbacks: list[Callable[[Verdict], None]] | None = []  # None once resolved

    def add_done_callback(self, fn: Callable[[Verdict], None]) -> None:
        """``fn(verdict)`` when resolved; at once if it already is."""
        if self._callbacks is None:
            fn(self.verdict)
        else:
            self._callbacks.append(fn)

    def resolve(self, verdict: Verdict) -> None:
        """Run the callbacks once, in order; a second resolve is ignored. A callback that raises is
        logged and the next one still runs: the resolver (a socket reader) must not fail for it."""
        callbacks = self._callbacks
        if callbacks is None:
            return
        self.verdict, self._callbacks = verdict, None
        for fn in callbacks:
            try:
                fn(verdict)
            except Exception:
                logging.getLogger("meter.sip").exception("sip.verdict_callback_error")


ALLOW = Verdict()
# What ``on_register``/``on_invite`` answer when the hook itself raised (logged and counted).
HOOK_FAILED = Verdict(False, 500, "Server Internal Error", "hook error")


@dataclass(frozen=True, slots=True)
class RegisterInfo:
    """A REGISTER about to be accepted or forwarded."""

    aor: str
    """Address of record from To, normalised (``sip:alice@example.com``)."""
    contacts: tuple[str, ...]
    """Contact URIs in the request; ``("*",)`` for an unregister-all."""
    user_agent: str
    source: Peer
    expires: int
    """Requested lifetime in seconds (Expires header, else the first Contact's expires, else the default); 0 = remove."""
    call_id: str
    forwarded: bool
    """True inline: the upstream registrar decides, so a charge is only a reservation until its 2xx
    (``on_bindings``) or its refusal (``on_register_failed``)."""


@dataclass(frozen=True, slots=True)
class BindingInfo:
    """One current binding of an alias."""

    contact: str
    expires: int
    """Seconds left."""
    source: Peer
    user_agent: str


@dataclass(frozen=True, slots=True)
class CallInfo:
    """An initial INVITE about to be forwarded."""

    call_id: str
    from_aor: str
    to_aor: str
    request_uri: str
    source: Peer
    callee_registered: bool
    """True when the Request-URI's alias has a binding on this node (standalone or learned inline)."""
    from_upstream: bool
    """True when the request came from the upstream registrar (inline): it already placed the caller."""
    offer_sdp: bytes
    user_agent: str
    caller_registered: bool = False
    """True when the INVITE came over a registered flow of its From AOR (RFC 5626 §5.2 style:
    transport, address and port of one of its bindings, and for TCP that binding's connection).
    A From alone proves nothing: a forged From of a registered alias is not a registered caller."""


class SipHooks(Protocol):
    def on_register(self, info: RegisterInfo) -> Verdict: ...

    def on_register_failed(self, aor: str, call_id: str, cause: str) -> None: ...

    def on_bindings(
        self, aor: str, bindings: tuple[BindingInfo, ...], user_agent: str, source: Peer | None, now: float
    ) -> None: ...

    def on_invite(self, info: CallInfo) -> Verdict: ...

    def on_call_answered(self, call_id: str, offer_sdp: bytes, answer_sdp: bytes) -> None: ...

    def on_call_confirmed(self, call_id: str) -> None: ...

    def on_call_ended(self, call_id: str, cause: str) -> None: ...

    def trusted_source(self, host: str) -> bool:
        """Is ``host`` a configured zone's peer? Its requests are not an endpoint's: the relay
        policy (RFC 3261 §16.6) lets them follow their pre-loaded Route anywhere."""
        ...

    def zone_destination(self, host: str, port: int) -> bool:
        """Is (host, port) a configured zone's peer or target: somewhere an endpoint's pre-loaded
        Route may lead under ``relay = "zones"``?"""
        ...

    def zone_closed(self, request_uri: str, host: str, port: int, source: str) -> str | None:
        """The name of the zone a request to ``request_uri`` via (host, port) is headed for, when
        that zone's allow-list leaves ``source`` out; None when it may go."""
        ...

    def route(self, request_uri: str) -> str | None:
        """Zone routing (an Expressway's search rules) for an initial request the node has no
        binding for: "host:port" to send it there, "" to send it to the Request-URI's own host,
        None when no zone claims it (standalone then answers 404/480, inline sends it upstream)."""
        ...


class NoMetering:
    """The default: everything passes, nothing is metered."""

    def on_register(self, info: RegisterInfo) -> Verdict:
        return ALLOW

    def on_register_failed(self, aor, call_id, cause) -> None:
        pass

    def on_bindings(self, aor, bindings, user_agent, source, now) -> None:
        pass

    def on_invite(self, info: CallInfo) -> Verdict:
        return ALLOW

    def on_call_answered(self, call_id, offer_sdp, answer_sdp) -> None:
        pass

    def on_call_confirmed(self, call_id) -> None:
        pass

    def on_call_ended(self, call_id, cause) -> None:
        pass

    def trusted_source(self, host) -> bool:
        return False

    def zone_destination(self, host, port) -> bool:
        return False

    def zone_closed(self, request_uri, host, port, source) -> str | None:
        return None

    def route(self, request_uri) -> str | None:
        return None
