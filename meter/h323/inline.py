"""Inline mode: RAS forwarded to an upstream gatekeeper, its answers relayed, state learned from them.

The node stands between endpoints and the lab's gatekeeper (GnuGk, a VCS, ...). Every request an
endpoint sends is forwarded upstream with two edits and nothing else re-decided:

- ``requestSeqNum`` is replaced by one the node allocates (two endpoints may use the same number at
  once; the upstream sees one sender, the node); the answer gets the endpoint's number back;
- the endpoint's ``rasAddress`` (RRQ, GRQ, IRR) and an LRQ's ``replyAddress`` become the node's, so
  the upstream answers, and later asks (URQ, DRQ, IRQ), the node; a GCF's ``rasAddress`` becomes the
  node's so the endpoint keeps talking to the node.

What the node learns, and from which answer: RCF (endpointIdentifier, timeToLive, aliases), UCF,
ACF (a call leg), DCF, BCF; upstream URQ and DRQ end what they name. The hooks are asked before a
full RRQ or an ARQ goes upstream (a refusal is answered RRJ/ARJ by the node itself); an allowed one
is settled by the answer, or by ``upstream_timeout`` (the contract is in ``meter.h323.hooks``).

Left to the upstream: alias conflicts, destination resolution, IRQ polling (the node relays the
upstream's IRQs and learns from the IRRs that pass).
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass, field
from typing import Any

from meter.codecs import ras
from meter.codecs.ras import RasMessage, RASError, TransportAddress
from meter.h323.calls import call_key
from meter.h323.gatekeeper import ANSWER_KINDS, MAX_SEQ, Gatekeeper
from meter.h323.hooks import (
    DRQ, EXPIRED, REREGISTERED, SHUTDOWN, UPSTREAM_DRQ, UPSTREAM_REJECT, UPSTREAM_TIMEOUT, UPSTREAM_URQ, URQ,
    AdmissionInfo, Party, RegisterInfo,
)
from meter.h323.registrations import Registration, unique_aliases
from meter.logs import log_event

log = logging.getLogger("meter.h323")

#: Fields naming the sender's RAS address, rewritten to the node's on the way up: (field, is a list).
REWRITE_UP: dict[str, tuple[str, bool]] = {
    "registrationRequest": ("rasAddress", True),
    "gatekeeperRequest": ("rasAddress", False),
    "locationRequest": ("replyAddress", False),
    "infoRequestResponse": ("rasAddress", False),
}
#: ... and on the way down: the gatekeeper's RAS address in a GCF must be the node's.
REWRITE_DOWN: dict[str, tuple[str, bool]] = {
    "gatekeeperConfirm": ("rasAddress", False),
}
#: Requests the upstream sends to "its" endpoints (which all have the node's rasAddress).
_UPSTREAM_REQUESTS = frozenset({"unregistrationRequest", "disengageRequest", "infoRequest"})
_FAILURES = frozenset({
    "gatekeeperReject", "registrationReject", "unregistrationReject", "admissionReject", "bandwidthReject",
    "disengageReject", "locationReject", "unknownMessageResponse",
})


@dataclass(slots=True, eq=False)
class Pending:
    """A request forwarded upstream, waiting for its answer."""

    seq: int                        # the upstream's view of it
    msg: RasMessage                 # as the endpoint sent it
    source: TransportAddress
    reply_to: TransportAddress      # where the answer goes (an LRQ's replyAddress, else the sender)
    wire: bytes                     # what was sent upstream, resent on a retransmission
    deadline: float
    register: RegisterInfo | None = None  # a full RRQ the hooks allowed
    created_call: bytes | None = None     # an ARQ whose allowed admission created this call record
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def origin(self) -> tuple[TransportAddress, int, str]:
        return self.source, self.msg.request_seq_num, self.msg.kind


class InlineGatekeeper(Gatekeeper):
    mode = "inline"

    def __init__(self, settings, hooks=None, *, ras_address: tuple[str, int], upstream: tuple[str, int],
                 **kwargs) -> None:
        super().__init__(settings, hooks, ras_address=ras_address, **kwargs)
        self.upstream = TransportAddress(upstream[0], int(upstream[1]))
        self.pending: dict[int, Pending] = {}
        self._by_origin: dict[tuple[TransportAddress, int, str], int] = {}
        self._upstream_seq = 0
        self._node_address = _pycrate_address(self.ras_address)

    # ------------------------------------------------------------------ dispatch

    def _dispatch(self, msg: RasMessage, data: bytes, source: TransportAddress, now: float) -> None:
        if source == self.upstream:
            if msg.kind in ANSWER_KINDS:
                self._upstream_answer(msg, data, now)
            elif msg.kind in _UPSTREAM_REQUESTS:
                self._upstream_request(msg, data, now)
            else:
                self._unknown(msg, data, source)
        elif msg.kind == "infoRequestResponse":
            reg = self.registrations.get(msg.endpoint_identifier)
            if reg is not None:
                self._refresh_legs(reg.endpoint_id, msg, now)
            # An IRR answers the upstream's IRQ (its sequence number) or is unsolicited: passed up as it is,
            # rasAddress aside.
            self._pass_up(msg, data, rewrite=True)
        elif msg.kind in ANSWER_KINDS:
            self._pass_up(msg, data, rewrite=False)  # an endpoint answering an upstream URQ/DRQ/IRQ
        else:
            self._forward(msg, data, source, now)

    # ------------------------------------------------------------------ endpoint -> upstream

    def _forward(self, msg: RasMessage, data: bytes, source: TransportAddress, now: float) -> None:
        again = self._by_origin.get((source, msg.request_seq_num, msg.kind))
        if again is not None:  # a retransmission: resend what went up, ask nobody twice
            self._up(self.pending[again].wire, msg.short)
            return
        seq = self._next_upstream_seq()
        kind, value = ras.decode_raw(data)
        value["requestSeqNum"] = seq
        _rewrite(value, REWRITE_UP.get(kind), self._node_address)
        try:
            wire = ras.encode_raw(kind, value)
        except RASError as err:  # decodable but not re-encodable by pycrate: cannot be passed on
            self.counters.internal_errors += 1
            log_event(log, "ras.forward_failed", logging.WARNING, kind=msg.short, reason=err.reason)
            return
        pending = Pending(seq, msg, source, msg.reply_address if kind == "locationRequest" and msg.reply_address
                          else source, wire, now + self.settings.upstream_timeout)
        if kind == "registrationRequest" and not msg.keep_alive:
            if not self._ask_register(pending):
                return
        elif kind == "admissionRequest":
            if not self._ask_admission(pending, now):
                return
        self.pending[seq] = pending
        self._by_origin[pending.origin] = seq
        self._up(wire, msg.short)

    def _ask_register(self, pending: Pending) -> bool:
        msg = pending.msg
        existing = self.registrations.get(msg.endpoint_identifier) or \
            self.registrations.at_address(msg.call_signal_addresses)
        aliases = unique_aliases(msg.aliases)
        if existing is not None and msg.additive_registration:
            aliases = unique_aliases(existing.aliases + aliases)
        info = self._register_info(existing.endpoint_id if existing else msg.endpoint_identifier, existing, aliases,
                                   msg, pending.source)
        verdict = self._ask(self.hooks.on_register, info)
        if not verdict.allowed:
            self._rrj(pending.source, msg.request_seq_num, verdict.reason)
            return False
        pending.register = info
        return True

    def _ask_admission(self, pending: Pending, now: float) -> bool:
        msg = pending.msg
        key = call_key(msg.call_identifier, msg.conference_id)
        if key is None:
            return True  # nothing to key a charge on: the upstream decides alone
        answer = bool(msg.answer_call)
        call = self.calls.get(key)
        reg = self.registrations.get(msg.endpoint_identifier)
        caller, callee, resolved = self._inline_route(msg, reg, call, answer)
        bandwidth = msg.bandwidth or 0
        verdict = self._ask(self.hooks.on_admission, AdmissionInfo(
            call_key=ras.guid_str(key), endpoint_id=msg.endpoint_identifier or "", answer_call=answer,
            first_for_call=call is None, caller=caller, callee=callee, bandwidth=bandwidth, resolved=resolved,
            call_type=msg.call_type, source=pending.source, mode=self.mode))
        if not verdict.allowed:
            self._arj(pending.source, msg.request_seq_num, verdict.reason)
            return False
        if call is None:
            self._new_call(key, msg, caller, callee, resolved, bandwidth, now)
            pending.created_call = key
        return True

    def _inline_route(self, msg: RasMessage, reg: Registration | None, call, answer: bool):
        """What the node knows of both parties; the upstream resolves the destination itself."""
        me = Party(reg.aliases if reg else unique_aliases(msg.aliases if not answer else msg.destination),
                   msg.endpoint_identifier, "h323" if reg else None,
                   reg.call_signal_address if reg else None, reg.vendor if reg else None)
        if answer:
            caller = call.caller if call is not None else self._party(unique_aliases(msg.aliases),
                                                                      msg.src_call_signal_address)
            return caller, me, "h323" if reg else None
        callee = self._party(unique_aliases(msg.destination), msg.dest_call_signal_address)
        return me, callee, callee.registered

    def _pass_up(self, msg: RasMessage, data: bytes, *, rewrite: bool) -> None:
        if rewrite and msg.kind in REWRITE_UP:
            kind, value = ras.decode_raw(data)
            _rewrite(value, REWRITE_UP[kind], self._node_address)
            data = ras.encode_raw(kind, value)
        self.counters.relayed += 1
        self._send(self.upstream, data, msg.short)

    def _up(self, wire: bytes, short: str) -> None:
        self.counters.forwarded += 1
        self._send(self.upstream, wire, short)

    def _next_upstream_seq(self) -> int:
        for _ in range(MAX_SEQ):
            self._upstream_seq = self._upstream_seq % MAX_SEQ + 1
            if self._upstream_seq not in self.pending:
                return self._upstream_seq
        raise RuntimeError("65535 requests waiting for the upstream")  # bounded by upstream_timeout long before

    # ------------------------------------------------------------------ upstream -> endpoint: answers

    def _upstream_answer(self, msg: RasMessage, data: bytes, now: float) -> None:
        pending = self.pending.get(msg.request_seq_num)
        if pending is None:
            self.counters.stray_answers += 1
            return
        if msg.kind == "requestInProgress":
            # H.225.0 RequestInProgress: the upstream needs `delay` ms more; the endpoint is told the same.
            pending.deadline = max(pending.deadline, now + (msg.delay or 0) / 1000 + self.settings.upstream_timeout)
        else:
            self._settle(pending)
            self._learn(pending, msg, now)
        kind, value = ras.decode_raw(data)
        value["requestSeqNum"] = pending.msg.request_seq_num
        _rewrite(value, REWRITE_DOWN.get(kind), self._node_address)
        self.counters.relayed += 1
        self._send(pending.reply_to, ras.encode_raw(kind, value), msg.short)

    def _settle(self, pending: Pending) -> None:
        self.pending.pop(pending.seq, None)
        self._by_origin.pop(pending.origin, None)

    def _learn(self, pending: Pending, answer: RasMessage | None, now: float) -> None:
        """State from the upstream's answer (None: it never came)."""
        request = pending.msg
        failed = answer is None or answer.kind in _FAILURES
        cause = UPSTREAM_TIMEOUT if answer is None else UPSTREAM_REJECT
        kind = request.kind
        if kind == "registrationRequest":
            if request.keep_alive:
                self._learn_keep_alive(pending, answer, now)
            elif failed:
                if pending.register is not None:
                    self._guard.notify(self.hooks.on_register_failed, pending.register, cause)
            else:
                self._learn_registration(pending, answer, now)
        elif kind == "unregistrationRequest":  # confirmed, refused or unanswered: the endpoint has left
            reg = self._urq_target(request)
            if reg is not None:
                self._apply_urq(reg, request, URQ)
        elif kind == "admissionRequest":
            key = call_key(request.call_identifier, request.conference_id)
            call = self.calls.get(key)
            if call is None:
                return
            if not failed and request.endpoint_identifier:
                self._admit(call, request.endpoint_identifier, request, answer.dest_call_signal_address, now)
            elif failed and pending.created_call == key and not call.legs:
                self._end_call(call, cause)  # admitted by the hooks, never by the upstream
        elif kind == "disengageRequest":  # the endpoint has left the call whatever the answer
            call = self.calls.get(call_key(request.call_identifier, request.conference_id))
            if call is not None:
                self._end_call(call, DRQ)
        elif kind == "bandwidthRequest" and not failed:
            reg = self.registrations.get(request.endpoint_identifier)
            key = call_key(request.call_identifier, request.conference_id)
            leg = reg and self._leg(key, reg.endpoint_id, request.answer_call)
            if leg:
                leg.bandwidth = answer.bandwidth or 0
                self.calls.touch(key)

    def _learn_registration(self, pending: Pending, rcf: RasMessage, now: float) -> None:
        request = pending.msg
        endpoint_id = rcf.endpoint_identifier
        aliases = unique_aliases(rcf.aliases) if rcf.aliases else pending.register.aliases
        existing = self.registrations.get(endpoint_id) or self.registrations.at_address(request.call_signal_addresses)
        if existing is not None and existing.endpoint_id != endpoint_id:
            self._unregister(existing, REREGISTERED)  # the upstream gave the same endpoint a new identity
            existing = None
        ras_address = request.ras_addresses[0] if request.ras_addresses else pending.source
        reg, dropped = self._store(endpoint_id, existing, aliases, ras_address, request, pending.source, now)
        self._refresh_learned(reg, rcf.time_to_live, now)
        self._registered(reg, dropped, pending.source, now)

    def _refresh_learned(self, reg: Registration, time_to_live: int | None, now: float) -> None:
        # The upstream's own URQ at expiry must still find the endpoint to be relayed to: the node forgets
        # a learned registration upstream_timeout after its time-to-live, unless that URQ came first.
        self.registrations.refresh(reg, time_to_live, now, grace=self.settings.upstream_timeout)

    def _learn_keep_alive(self, pending: Pending, answer: RasMessage | None, now: float) -> None:
        request = pending.msg
        reg = self.registrations.get(request.endpoint_identifier)
        if answer is None:
            return  # unanswered: the registration lives on until its time-to-live says otherwise
        if answer.kind == "registrationConfirm":
            if reg is not None:
                self.counters.keepalives += 1
                self._refresh_learned(reg, answer.time_to_live, now)
            elif answer.endpoint_identifier:
                # Registered upstream before this node started: learned from the keep-alive's answer.
                ras_address = request.ras_addresses[0] if request.ras_addresses else pending.source
                reg = Registration(answer.endpoint_identifier, unique_aliases(answer.aliases), ras_address,
                                   tuple(request.call_signal_addresses), request.vendor, request.endpoint_type,
                                   pending.source, registered_at=now)
                self.registrations.add(reg)
                self._refresh_learned(reg, answer.time_to_live, now)
                self._registered(reg, (), pending.source, now)
        elif answer.reject_reason == "fullRegistrationRequired" and reg is not None:
            self._unregister(reg, UPSTREAM_REJECT)  # the upstream no longer holds it

    # ------------------------------------------------------------------ upstream -> endpoint: requests

    def _upstream_request(self, msg: RasMessage, data: bytes, now: float) -> None:
        """URQ, DRQ, IRQ the upstream sends to an endpoint (whose rasAddress it knows as the node's)."""
        if msg.kind == "infoRequest":
            call = self.calls.get(call_key(msg.call_identifier, None))
            legs = [] if call is None else list(call.legs.values())
            # The upstream asks one party, but every party has the node's rasAddress: the callReferenceValue
            # narrows it down when the parties' differ (Q.931 often gives both sides the same one: then both).
            legs = [leg for leg in legs if leg.call_reference_value == msg.call_reference_value] or legs
            targets = [reg for reg in map(self.registrations.get, dict.fromkeys(leg.endpoint_id for leg in legs))
                       if reg is not None]
            if not targets:
                self.counters.unroutable += 1  # an IRQ about all calls names no endpoint: nobody to ask
                return
            for reg in targets:
                self._relay_down(data, reg, msg.short)
            return
        if msg.kind == "unregistrationRequest":
            reg = self._urq_target(msg)
        else:
            reg = self.registrations.get(msg.endpoint_identifier)
        if reg is None:
            self.counters.unroutable += 1
            return
        self._relay_down(data, reg, msg.short)
        if msg.kind == "unregistrationRequest":
            self._apply_urq(reg, msg, UPSTREAM_URQ)
        else:
            call = self.calls.get(call_key(msg.call_identifier, msg.conference_id))
            if call is not None:
                self._end_call(call, UPSTREAM_DRQ)

    def _relay_down(self, data: bytes, reg: Registration, short: str) -> None:
        self.counters.relayed += 1
        self._send(reg.ras_address, data, short)

    # ------------------------------------------------------------------ housekeeping

    def _expire(self, reg: Registration, now: float) -> None:
        self._unregister(reg, EXPIRED)  # the upstream sends its own URQ; the node only stops counting

    def _poll_calls(self, now: float) -> None:
        """The upstream polls calls; the node learns from the IRRs that pass."""

    def _tick_more(self, now: float) -> None:
        for pending in [p for p in self.pending.values() if p.deadline <= now]:
            self.counters.upstream_timeouts += 1
            self._settle(pending)
            self._learn(pending, None, now)
            log_event(log, "ras.upstream_timeout", logging.INFO, kind=pending.msg.short,
                      upstream=str(self.upstream))

    def _close_more(self, now: float) -> None:
        for pending in list(self.pending.values()):
            self._settle(pending)
            if pending.register is not None:
                self._guard.notify(self.hooks.on_register_failed, pending.register, SHUTDOWN)

    def _say_goodbye(self, reg: Registration, reason: str) -> None:
        """Inline: the registrations are the upstream's; the node sends no URQ of its own."""


def _pycrate_address(address: TransportAddress) -> tuple[str, dict]:
    ip = ipaddress.ip_address(address.ip)
    return ("ipAddress" if ip.version == 4 else "ip6Address", {"ip": ip.packed, "port": address.port})


def _rewrite(value: dict, rule: tuple[str, bool] | None, address: tuple[str, dict]) -> None:
    if rule is not None:
        name, is_list = rule
        value[name] = [address] if is_list else address
