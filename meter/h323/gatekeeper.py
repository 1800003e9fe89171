"""The H.323 gatekeeper's brain (standalone mode), sans-I/O: datagrams and ``now`` in, datagrams out.

    gk = Gatekeeper(settings, hooks, ras_address=("192.0.2.5", 1719), sip_locator=locate)
    for reply in gk.receive(data, source, now): send(reply.data, reply.address)
    for message in gk.tick(now): ...      # every housekeeping_interval: expiry, IRQ polling
    for message in gk.close(now): ...     # node shutdown: URQ to every endpoint

No sockets, no clock, no tasks (the aioquic shape, see ``meter.h323``): ``now`` is a monotonic time
in seconds chosen by the caller (the asyncio adapter passes ``loop.time()``, tests a number); the
hooks that want a wall-clock time get ``now + wall_offset``. The hooks (``meter.h323.hooks``) and
the ``sip_locator`` are called inline, guarded by ``meter.hooks.HookCaller``.

What it implements (ITU-T H.225.0 §7 RAS, direct call model): GRQ/GCF/GRJ, RRQ/RCF/RRJ (full and
keep-alive), URQ/UCF/URJ from endpoints and URQ to them (expiry, shutdown), ARQ/ACF/ARJ, DRQ/DCF/DRJ,
BRQ/BCF/BRJ, LRQ/LCF/LRJ, IRQ to endpoints and the IRRs they send, XRS for what it does not handle.
The inline forwarder (``meter.h323.inline``) shares the tables and hooks and replaces the handlers.
"""

from __future__ import annotations

import functools
import itertools
import logging
import secrets
from typing import Callable, NamedTuple

from meter.codecs import ras
from meter.codecs.ras import ZERO_GUID, Alias, RasMessage, RASError, TransportAddress
from meter.h323.calls import CallTable, Leg, RasCall, call_key
from meter.h323.counters import RasCounters
from meter.h323.hooks import (
    DRQ, EXPIRED, MISSED_IRR, NOT_IN_CALL, REREGISTERED, SHUTDOWN, URQ, AdmissionInfo, NoMetering, Party,
    RasHooks, RegisterInfo, Verdict,
)
from meter.h323.registrations import (
    Registration, RegistrationTable, alias_key, encodable, unique_aliases, without_nul_padding,
)
from meter.h323.settings import H323Settings
from meter.hooks import HookCaller
from meter.logs import log_event

log = logging.getLogger("meter.h323")


class Datagram(NamedTuple):
    """One RAS message to send."""

    data: bytes
    address: TransportAddress


#: Confirms, rejects and other answers. Never answered with XRS: two gatekeepers answering each
#: other's unexpected answers would loop forever.
ANSWER_KINDS = frozenset({
    "gatekeeperConfirm", "gatekeeperReject", "registrationConfirm", "registrationReject",
    "unregistrationConfirm", "unregistrationReject", "admissionConfirm", "admissionReject",
    "bandwidthConfirm", "bandwidthReject", "disengageConfirm", "disengageReject",
    "locationConfirm", "locationReject", "requestInProgress", "unknownMessageResponse",
    "infoRequestAck", "infoRequestNak", "resourcesAvailableConfirm", "serviceControlResponse",
    "admissionConfirmSequence",
})
#: Answers to what the standalone gatekeeper itself sends (URQ, DRQ); any other answer is stray.
_EXPECTED_ANSWERS = frozenset({
    "unregistrationConfirm", "unregistrationReject", "disengageConfirm", "disengageReject",
    "unknownMessageResponse", "requestInProgress",
})

#: RequestSeqNum ::= INTEGER (1..65535).
MAX_SEQ = 65535

#: An IRQ that gets no IRR is sent once more half-way through irr_timeout: H.225.0 recommends one
#: IRQ retry.
IRQ_ATTEMPTS = 2

#: What on_register/on_admission answer when the hook raised: RRJ/ARJ undefinedReason (the hooks' contract).
_HOOK_FAILED = Verdict.refuse("undefinedReason", "hook error")

#: "Is this alias value registered over SIP on this node, and at which host:port do calls to it go?"
#: None: not registered over SIP here. The composition (``meter.app``) builds it from the metering
#: join and the SIP node; the gatekeeper never sees either (C9 interworking needs only the answer).
SipLocator = Callable[[str], tuple[str, int] | None]


def no_sip(alias_value: str) -> tuple[str, int] | None:
    """The default SIP locator: no alias is registered over SIP (a node without a SIP side, tests)."""
    return None


def random_endpoint_id() -> str:
    """An endpointIdentifier nobody can guess: a keep-alive RRQ or URQ names the endpoint by it alone."""
    return secrets.token_hex(8)


@functools.cache
def _reject_reasons(kind: str) -> frozenset[str]:
    return ras.reject_reasons(kind)


class Gatekeeper:
    """Standalone gatekeeper: the node owns the registrations and admits the calls."""

    mode = "standalone"

    #: RAS message kind -> handler method (h11 style: a table, not an if-chain).
    HANDLERS: dict[str, str] = {
        "gatekeeperRequest": "_grq",
        "registrationRequest": "_rrq",
        "unregistrationRequest": "_urq",
        "admissionRequest": "_arq",
        "disengageRequest": "_drq",
        "bandwidthRequest": "_brq",
        "locationRequest": "_lrq",
        "infoRequestResponse": "_irr",
    }

    def __init__(self, settings: H323Settings, hooks: RasHooks | None = None, *,
                 ras_address: tuple[str, int], sip_locator: SipLocator = no_sip, wall_offset: float = 0.0,
                 counters: RasCounters | None = None,
                 new_endpoint_id: Callable[[], str] = random_endpoint_id) -> None:
        self.settings = settings
        self.hooks: RasHooks = hooks or NoMetering()
        self.sip_locator = sip_locator
        self.ras_address = TransportAddress(*ras_address)
        self.wall_offset = wall_offset
        self.counters = counters or RasCounters()
        self._guard = HookCaller(log, self.counters, "ras.hook_error")
        self.registrations = RegistrationTable()
        self.calls = CallTable()
        self._new_endpoint_id = new_endpoint_id
        self._seqs = itertools.cycle(range(1, MAX_SEQ + 1))
        self._irqs: dict[int, tuple[str, bytes]] = {}  # IRQ seq -> (endpoint_id, call key) while unanswered
        self._handlers = {kind: getattr(self, name) for kind, name in self.HANDLERS.items()}
        self._out: list[Datagram] = []
        ras.load()  # pycrate's H.225 module: imported now, not on the first datagram

    # ------------------------------------------------------------------ entry points

    def receive(self, data: bytes, source: tuple[str, int], now: float) -> list[Datagram]:
        """One datagram in; what to send out. Never raises: bad input is dropped and counted."""
        out = self._out = []
        source = TransportAddress(source[0], source[1])
        try:
            msg = without_nul_padding(ras.decode(data))
        except RASError as err:
            # DESIGN principle 5: a malformed RAS message is dropped and counted (no sequence number to answer).
            self.counters.malformed_dropped += 1
            self.counters.malformed_by_code[err.code] += 1
            log_event(log, "ras.malformed", logging.DEBUG, source=str(source), code=err.code, reason=err.reason)
            return out
        self.counters.received[msg.short] += 1
        try:
            self._dispatch(msg, data, source, now)
        except Exception:
            self.counters.internal_errors += 1
            log.exception("ras.internal_error", extra={"facts": {"kind": msg.short, "source": str(source)}})
        return out

    def tick(self, now: float) -> list[Datagram]:
        """Housekeeping: expire registrations (H.225.0 timeToLive), poll silent calls with IRQ."""
        out = self._out = []
        try:
            for reg in self.registrations.expired(now):
                self.counters.expired += 1
                self._expire(reg, now)
            self._poll_calls(now)
            self._tick_more(now)
        except Exception:
            self.counters.internal_errors += 1
            log.exception("ras.internal_error", extra={"facts": {"where": "tick"}})
        return out

    def close(self, now: float, *, goodbye: bool = True) -> list[Datagram]:
        """Node shutdown: every call ends and every registration goes, through the hooks, exactly once.
        ``goodbye`` False: no URQ to the endpoints, whose registrations the next start restores from the
        state database (``meter.store.h323_state``): a restart is then invisible to them."""
        out = self._out = []
        try:
            for call in self.calls:
                self._end_call(call, SHUTDOWN)
            for reg in self.registrations:
                if goodbye:
                    self._say_goodbye(reg, "maintenance")
                self._unregister(reg, SHUTDOWN)
            self._close_more(now)
        except Exception:
            self.counters.internal_errors += 1
            log.exception("ras.internal_error", extra={"facts": {"where": "close"}})
        return out

    # ------------------------------------------------------------------ dispatch

    def _dispatch(self, msg: RasMessage, data: bytes, source: TransportAddress, now: float) -> None:
        handler = self._handlers.get(msg.kind)
        if handler is not None:
            handler(msg, data, source, now)
        elif msg.kind in ANSWER_KINDS:
            if msg.kind not in _EXPECTED_ANSWERS:
                self.counters.stray_answers += 1
        else:
            self._unknown(msg, data, source)

    def _unknown(self, msg: RasMessage, data: bytes, source: TransportAddress) -> None:
        # H.225.0 UnknownMessageResponse (XRS): the answer to a message the gatekeeper does not handle.
        self.counters.unknown_answered += 1
        self._send(source, ras.unknown_message_response(msg.request_seq_num, data), "XRS")

    def _tick_more(self, now: float) -> None:
        """Inline: time out forwarded requests."""

    def _close_more(self, now: float) -> None:
        """Inline: settle forwarded requests still waiting."""

    # ------------------------------------------------------------------ GRQ

    def _grq(self, msg: RasMessage, data: bytes, source: TransportAddress, now: float) -> None:
        s, seq = self.settings, msg.request_seq_num
        if msg.gatekeeper_identifier and msg.gatekeeper_identifier != s.gatekeeper_id:
            # H.323 §7.2.1 gatekeeper discovery: a GRQ naming another gatekeeperIdentifier is not ours.
            self._send(source, ras.gatekeeper_reject(seq, "terminalExcluded", gatekeeper_id=s.gatekeeper_id), "GRJ")
            return
        self._send(source, ras.gatekeeper_confirm(seq, ras_address=self.ras_address, gatekeeper_id=s.gatekeeper_id),
                   "GCF")

    # ------------------------------------------------------------------ RRQ: registration

    def _rrq(self, msg: RasMessage, data: bytes, source: TransportAddress, now: float) -> None:
        s, seq = self.settings, msg.request_seq_num
        if msg.gatekeeper_identifier and msg.gatekeeper_identifier != s.gatekeeper_id:
            self._rrj(source, seq, "undefinedReason")  # RRQ meant for another gatekeeper
            return
        if msg.keep_alive:
            self._keep_alive(msg, source, now)
            return
        if not msg.call_signal_addresses:
            self._rrj(source, seq, "invalidCallSignalAddress")  # direct call model: calls must reach it
            return
        table = self.registrations
        existing = table.get(msg.endpoint_identifier) or table.at_address(msg.call_signal_addresses)
        aliases = unique_aliases(msg.aliases)
        if existing is not None and msg.additive_registration:
            aliases = unique_aliases(existing.aliases + aliases)  # H.225.0 additiveRegistration: add, keep the rest
        duplicates = table.conflicts(aliases, existing.endpoint_id if existing else None)
        if duplicates:
            # VCS/Expressway "Registration ConflictMode: Reject" (its default): RRJ duplicateAlias naming them.
            self._send(source, ras.registration_reject(seq, "duplicateAlias", duplicate_aliases=encodable(duplicates),
                                                       gatekeeper_id=s.gatekeeper_id), "RRJ")
            return
        endpoint_id = existing.endpoint_id if existing else self._fresh_endpoint_id()
        info = self._register_info(endpoint_id, existing, aliases, msg, source)
        verdict = self._ask(self.hooks.on_register, info)
        if not verdict.allowed:
            self._rrj(source, seq, verdict.reason)
            log_event(log, "ras.rrq_refused", aliases=_alias_texts(aliases), reason=verdict.reason,
                      detail=verdict.detail, source=str(source), user_agent=_product(msg.vendor))
            return
        ras_address = msg.ras_addresses[0] if msg.ras_addresses else source
        reg, dropped = self._store(endpoint_id, existing, aliases, ras_address, msg, source, now)
        ttl = self._grant(msg.time_to_live)
        table.refresh(reg, ttl, now)
        self._send(source, ras.registration_confirm(seq, endpoint_id=endpoint_id, aliases=encodable(aliases),
                                                    gatekeeper_id=s.gatekeeper_id, time_to_live=ttl), "RCF")
        self._registered(reg, dropped, source, now)

    def _keep_alive(self, msg: RasMessage, source: TransportAddress, now: float) -> None:
        seq = msg.request_seq_num
        reg = self.registrations.get(msg.endpoint_identifier)
        if reg is None:
            # H.323 §7.2.2 lightweight RRQ (keepAlive) for a registration we do not hold: register in full.
            self._rrj(source, seq, "fullRegistrationRequired")
            return
        ttl = self._grant(msg.time_to_live)
        self.registrations.refresh(reg, ttl, now)
        self.counters.keepalives += 1
        self._send(source, ras.registration_confirm(seq, endpoint_id=reg.endpoint_id,
                                                    gatekeeper_id=self.settings.gatekeeper_id, time_to_live=ttl),
                   "RCF")

    def _grant(self, requested: int | None) -> int:
        # H.323 §7.2.2 timeToLive: the gatekeeper may shorten what the endpoint asks for, not lengthen it.
        limit = self.settings.time_to_live
        return min(requested, limit) if requested else limit

    def _fresh_endpoint_id(self) -> str:
        while True:
            endpoint_id = self._new_endpoint_id()
            if endpoint_id not in self.registrations.by_id:
                return endpoint_id

    def _register_info(self, endpoint_id: str | None, existing: Registration | None, aliases: tuple[Alias, ...],
                       msg: RasMessage, source: TransportAddress) -> RegisterInfo:
        held = existing.keys if existing is not None else frozenset()
        return RegisterInfo(
            endpoint_id=endpoint_id, aliases=aliases,
            new_aliases=tuple(a for a in aliases if alias_key(a) not in held),
            vendor=msg.vendor, endpoint_type=msg.endpoint_type, source=source,
            reregistration=existing is not None, mode=self.mode)

    def _store(self, endpoint_id: str, existing: Registration | None, aliases: tuple[Alias, ...],
               ras_address: TransportAddress, msg: RasMessage, source: TransportAddress,
               now: float) -> tuple[Registration, tuple[Alias, ...]]:
        """Create or update a registration; returns it and the aliases it no longer holds."""
        addresses = tuple(msg.call_signal_addresses)
        if existing is None:
            reg = Registration(endpoint_id, aliases, ras_address, addresses, msg.vendor, msg.endpoint_type,
                               source, registered_at=now)
            self.registrations.add(reg)
            return reg, ()
        dropped = self.registrations.update(existing, aliases=aliases, call_signal_addresses=addresses)
        existing.ras_address, existing.source = ras_address, source
        existing.vendor = msg.vendor or existing.vendor
        existing.endpoint_type = msg.endpoint_type or existing.endpoint_type
        return existing, dropped

    def _registered(self, reg: Registration, dropped: tuple[Alias, ...], source: TransportAddress,
                    now: float) -> None:
        if dropped:
            self._guard.notify(self.hooks.on_unregistered, reg.endpoint_id, dropped, REREGISTERED)
        self._guard.notify(self.hooks.on_registered, reg.endpoint_id, reg.aliases, reg.vendor, source,
                           now + self.wall_offset)
        log_event(log, "ras.registered", logging.DEBUG, endpoint_id=reg.endpoint_id,
                  aliases=_alias_texts(reg.aliases), ttl=reg.time_to_live)

    def _rrj(self, source: TransportAddress, seq: int, reason: str) -> None:
        reason = reason if reason in _reject_reasons("registrationReject") else "resourceUnavailable"
        self._send(source, ras.registration_reject(seq, reason, gatekeeper_id=self.settings.gatekeeper_id), "RRJ")

    # ------------------------------------------------------------------ URQ: unregistration

    def _urq(self, msg: RasMessage, data: bytes, source: TransportAddress, now: float) -> None:
        seq = msg.request_seq_num
        reg = self._urq_target(msg)
        if reg is None:
            self._send(source, ras.unregistration_reject(seq, "notCurrentlyRegistered"), "URJ")
            return
        self._send(source, ras.unregistration_confirm(seq), "UCF")
        self._apply_urq(reg, msg, URQ)

    def _urq_target(self, msg: RasMessage) -> Registration | None:
        if msg.endpoint_identifier:
            return self.registrations.get(msg.endpoint_identifier)
        return self.registrations.at_address(msg.call_signal_addresses)

    def _apply_urq(self, reg: Registration, msg: RasMessage, cause: str) -> None:
        # H.225.0 URQ endpointAlias: when present, only those aliases are unregistered.
        if msg.aliases and not reg.keys <= frozenset(map(alias_key, msg.aliases)):
            dropped = self.registrations.remove_aliases(reg, msg.aliases)
            if dropped:
                self._guard.notify(self.hooks.on_unregistered, reg.endpoint_id, dropped, cause)
            return
        self._unregister(reg, cause)

    def _unregister(self, reg: Registration, cause: str) -> None:
        """The registration is gone: its calls end first, then its aliases (each hook exactly once)."""
        for call in self.calls.of_endpoint(reg.endpoint_id):
            self._end_call(call, cause)
        if self.registrations.remove(reg.endpoint_id) is None:
            return
        self._guard.notify(self.hooks.on_unregistered, reg.endpoint_id, reg.aliases, cause)
        log_event(log, "ras.unregistered", logging.DEBUG, endpoint_id=reg.endpoint_id, cause=cause)

    def _expire(self, reg: Registration, now: float) -> None:
        self._say_goodbye(reg, "ttlExpired")
        self._unregister(reg, EXPIRED)

    def _say_goodbye(self, reg: Registration, reason: str) -> None:
        """Gatekeeper-initiated URQ (H.323 §7.2.2): the endpoint learns it must register again."""
        self._send(reg.ras_address, ras.unregistration_request(
            self._next_seq(), call_signal_addresses=reg.call_signal_addresses,
            endpoint_id=reg.endpoint_id, gatekeeper_id=self.settings.gatekeeper_id, reason=reason), "URQ")

    # ------------------------------------------------------------------ ARQ: admission

    def _arq(self, msg: RasMessage, data: bytes, source: TransportAddress, now: float) -> None:
        seq = msg.request_seq_num
        reg = self.registrations.get(msg.endpoint_identifier)
        if reg is None:
            self._arj(source, seq, "callerNotRegistered")
            return
        key = call_key(msg.call_identifier, msg.conference_id)
        if key is None:
            self._arj(source, seq, "undefinedReason")  # neither a callIdentifier nor a conferenceID
            return
        answer = bool(msg.answer_call)
        call = self.calls.get(key)
        leg = call.legs.get((reg.endpoint_id, answer)) if call is not None else None
        if leg is not None:
            # The same party asking again (its ACF was lost): the same answer, and no second charge.
            self._acf(source, seq, leg.bandwidth, leg.dest_address)
            return
        route = self._route(msg, reg, call, answer)
        if route is None:
            self._arj(source, seq, "calledPartyNotRegistered")
            return
        caller, callee, resolved, dest_address = route
        bandwidth = msg.bandwidth or 0
        verdict = self._ask(self.hooks.on_admission, AdmissionInfo(
            call_key=ras.guid_str(key), endpoint_id=reg.endpoint_id, answer_call=answer,
            first_for_call=call is None, caller=caller, callee=callee, bandwidth=bandwidth, resolved=resolved,
            call_type=msg.call_type, source=source, mode=self.mode))
        if not verdict.allowed:
            self._arj(source, seq, verdict.reason)
            log_event(log, "ras.arq_refused", call=ras.guid_str(key), reason=verdict.reason, detail=verdict.detail,
                      source=str(source), user_agent=_product(reg.vendor))
            return
        if call is None:
            call = self._new_call(key, msg, caller, callee, resolved, bandwidth, now)
        self._admit(call, reg.endpoint_id, msg, dest_address, now)
        self._acf(source, seq, bandwidth, dest_address)

    def _new_call(self, key: bytes, msg: RasMessage, caller: Party, callee: Party, resolved: str | None,
                  bandwidth: int, now: float) -> RasCall:
        call = RasCall(key, msg.call_identifier or ZERO_GUID, msg.conference_id or ZERO_GUID, now,
                       now + self.wall_offset, caller, callee, resolved, bandwidth)
        self.calls.add(call)
        return call

    def _admit(self, call: RasCall, endpoint_id: str, msg: RasMessage, dest_address: TransportAddress | None,
               now: float) -> None:
        self.calls.add_leg(call, Leg(endpoint_id, bool(msg.answer_call), msg.call_reference_value or 0,
                                     msg.bandwidth or 0, dest_address, admitted_at=now, last_seen=now))

    def _route(self, msg: RasMessage, reg: Registration, call: RasCall | None,
               answer: bool) -> tuple[Party, Party, str | None, TransportAddress | None] | None:
        """(caller, callee, how the destination was resolved, destCallSignalAddress), or None: nobody to call."""
        me = Party(reg.aliases, reg.endpoint_id, "h323", reg.call_signal_address, reg.vendor)
        if answer:
            # The called party asks (answerCall): srcInfo names the caller, who may be registered here or not.
            caller = call.caller if call is not None else self._party(unique_aliases(msg.aliases),
                                                                      msg.src_call_signal_address)
            return caller, me, "h323", reg.call_signal_address
        caller = me if not msg.aliases else Party(unique_aliases(msg.aliases), reg.endpoint_id, "h323",
                                                  reg.call_signal_address, reg.vendor)
        destination = unique_aliases(msg.destination)
        for alias in destination:  # direct call model: the callee's own call signalling address
            owner = self.registrations.owner(alias)
            if owner is not None:
                return caller, _party_of(owner), "h323", owner.call_signal_address
        for alias in destination:  # C9: an alias registered over SIP on this node
            address = self._locate_sip(alias)
            if address is not None:
                return caller, Party(destination, None, "sip", address), "sip", address
        if msg.dest_call_signal_address is not None:  # dialled by address
            owner = self.registrations.at_address((msg.dest_call_signal_address,))
            if owner is not None:
                return caller, _party_of(owner), "h323", msg.dest_call_signal_address
            return caller, Party(destination, None, None, msg.dest_call_signal_address), None, \
                msg.dest_call_signal_address
        return None

    def _party(self, aliases: tuple[Alias, ...], address: TransportAddress | None) -> Party:
        """Whoever these aliases name: an H.323 registration here, a SIP one, or someone elsewhere."""
        for alias in aliases:
            owner = self.registrations.owner(alias)
            if owner is not None:
                return _party_of(owner)
        for alias in aliases:
            sip_address = self._locate_sip(alias)
            if sip_address is not None:
                return Party(aliases, None, "sip", address or sip_address)
        return Party(aliases, None, None, address)

    def _locate_sip(self, alias: Alias) -> TransportAddress | None:
        """C9: where a call to an alias registered over SIP on this node goes (None: it is not)."""
        address = self._guard.call(self.sip_locator, alias.value, default=None)
        return None if address is None else TransportAddress(address[0], int(address[1]))

    def _acf(self, source: TransportAddress, seq: int, bandwidth: int, dest: TransportAddress | None) -> None:
        irr = self.settings.irr_frequency
        self._send(source, ras.admission_confirm(
            seq, bandwidth=bandwidth, dest_call_signal_address=dest or self.ras_address, call_model="direct",
            irr_frequency=irr or None), "ACF")

    def _arj(self, source: TransportAddress, seq: int, reason: str) -> None:
        reason = reason if reason in _reject_reasons("admissionReject") else "resourceUnavailable"
        self._send(source, ras.admission_reject(seq, reason), "ARJ")

    # ------------------------------------------------------------------ DRQ, BRQ

    def _drq(self, msg: RasMessage, data: bytes, source: TransportAddress, now: float) -> None:
        seq = msg.request_seq_num
        reg = self.registrations.get(msg.endpoint_identifier)
        if reg is None:
            self._send(source, ras.disengage_reject(seq, "notRegistered"), "DRJ")
            return
        call = self.calls.get(call_key(msg.call_identifier, msg.conference_id))
        if call is not None and any(endpoint_id == reg.endpoint_id for endpoint_id, _ in call.legs):
            self._end_call(call, DRQ)  # the first party to leave ends the call; the other's DRQ finds none
        self._send(source, ras.disengage_confirm(seq), "DCF")

    def _brq(self, msg: RasMessage, data: bytes, source: TransportAddress, now: float) -> None:
        seq = msg.request_seq_num
        reg = self.registrations.get(msg.endpoint_identifier)
        if reg is None:
            self._send(source, ras.bandwidth_reject(seq, "notBound"), "BRJ")
            return
        key = call_key(msg.call_identifier, msg.conference_id)
        leg = self._leg(key, reg.endpoint_id, msg.answer_call)
        if leg is None:
            self._send(source, ras.bandwidth_reject(seq, "invalidConferenceID"), "BRJ")
            return
        leg.bandwidth = msg.bandwidth or 0  # no bandwidth management: what is asked is granted
        self.calls.touch(key)
        self._send(source, ras.bandwidth_confirm(seq, bandwidth=leg.bandwidth), "BCF")

    def _leg(self, key: bytes | None, endpoint_id: str, answer: bool | None) -> Leg | None:
        call = self.calls.get(key)
        if call is None:
            return None
        leg = call.legs.get((endpoint_id, bool(answer)))
        return leg or next((leg for (e, _), leg in call.legs.items() if e == endpoint_id), None)

    # ------------------------------------------------------------------ LRQ

    def _lrq(self, msg: RasMessage, data: bytes, source: TransportAddress, now: float) -> None:
        seq = msg.request_seq_num
        reply_to = msg.reply_address or source  # H.225.0 LocationRequest.replyAddress: where LCF/LRJ go
        destination = unique_aliases(msg.destination)
        for alias in destination:
            owner = self.registrations.owner(alias)
            if owner is not None and owner.call_signal_address is not None:
                self._send(reply_to, ras.location_confirm(
                    seq, call_signal_address=owner.call_signal_address, ras_address=owner.ras_address,
                    dest_aliases=encodable(owner.aliases)), "LCF")
                return
        for alias in destination:
            address = self._locate_sip(alias)
            if address is not None:  # C9: reachable through this node's interworking
                self._send(reply_to, ras.location_confirm(
                    seq, call_signal_address=address, ras_address=self.ras_address,
                    dest_aliases=encodable((alias,))), "LCF")
                return
        self._send(reply_to, ras.location_reject(seq, "notRegistered"), "LRJ")

    # ------------------------------------------------------------------ IRQ / IRR: is the call still up?

    def _irr(self, msg: RasMessage, data: bytes, source: TransportAddress, now: float) -> None:
        reg = self.registrations.get(msg.endpoint_identifier)
        if reg is None:
            self.counters.stray_answers += 1
            return
        listed = self._refresh_legs(reg.endpoint_id, msg, now)
        polled = self._irqs.pop(msg.request_seq_num, None)
        if polled is not None and polled[0] == reg.endpoint_id and polled[1] not in listed:
            call = self.calls.get(polled[1])
            if call is not None:  # asked about this call, the endpoint says it is not in it
                self._end_call(call, NOT_IN_CALL)
        if msg.need_response:  # H.225.0 InfoRequestResponse.needResponse: answer IACK
            self._send(source, ras.encode_raw("infoRequestAck", {"requestSeqNum": msg.request_seq_num}), "IACK")

    def _refresh_legs(self, endpoint_id: str, msg: RasMessage, now: float) -> set[bytes]:
        """Every call an IRR lists is alive on that endpoint's side; returns the keys listed."""
        listed = set()
        for info in msg.calls:
            key = call_key(info.call_identifier, info.conference_id)
            listed.add(key)
            call = self.calls.get(key)
            if call is None:
                continue
            for (e, _), leg in call.legs.items():
                if e == endpoint_id:
                    leg.last_seen = now
                    if leg.irq_seq is not None:
                        self._irqs.pop(leg.irq_seq, None)
                    leg.irq_seq = leg.irq_sent_at = None
                    leg.irq_attempts = 0
        return listed

    def _poll_calls(self, now: float) -> None:
        s = self.settings
        if not s.irr_frequency:
            return
        # A leg silent for irr_frequency (plus irr_timeout for an IRR still in flight) is asked with IRQ;
        # no IRR within irr_timeout of the first IRQ: the call is gone (VCS "Call time to live").
        quiet = s.irr_frequency + s.irr_timeout
        for call in self.calls:
            for leg in list(call.legs.values()):
                if leg.irq_sent_at is None:
                    if now - leg.last_seen >= quiet:
                        self._send_irq(call, leg, now)
                elif now - leg.irq_sent_at >= s.irr_timeout:
                    self.counters.missed_irr += 1
                    self._drop_call(call, MISSED_IRR)
                    break
                elif leg.irq_attempts < IRQ_ATTEMPTS and now - leg.irq_sent_at >= s.irr_timeout / 2:
                    self._send_irq(call, leg, now, again=True)

    def _send_irq(self, call: RasCall, leg: Leg, now: float, *, again: bool = False) -> None:
        reg = self.registrations.get(leg.endpoint_id)
        if reg is None:
            return
        if not again:
            leg.irq_seq, leg.irq_sent_at, leg.irq_attempts = self._next_seq(), now, 0
            self._irqs[leg.irq_seq] = (leg.endpoint_id, call.key)
        leg.irq_attempts += 1
        self._send(reg.ras_address, ras.info_request(
            leg.irq_seq, call_reference_value=leg.call_reference_value, call_identifier=call.call_identifier), "IRQ")

    def _drop_call(self, call: RasCall, cause: str) -> None:
        """Gatekeeper-initiated DRQ forcedDrop to every party still registered, then the call ends."""
        for leg in call.legs.values():
            reg = self.registrations.get(leg.endpoint_id)
            if reg is not None:
                self._send(reg.ras_address, ras.disengage_request(
                    self._next_seq(), endpoint_id=reg.endpoint_id, conference_id=call.conference_id,
                    call_identifier=call.call_identifier, call_reference_value=leg.call_reference_value,
                    reason="forcedDrop", answered_call=leg.answer_call,
                    gatekeeper_id=self.settings.gatekeeper_id), "DRQ")
        self._end_call(call, cause)

    # ------------------------------------------------------------------ shared

    def _end_call(self, call: RasCall, cause: str) -> None:
        """The one release path of a call: on_call_ended exactly once (DESIGN principle 4)."""
        if self.calls.remove(call.key) is None:
            return
        for leg in call.legs.values():
            if leg.irq_seq is not None:
                self._irqs.pop(leg.irq_seq, None)
        self._guard.notify(self.hooks.on_call_ended, call.call_key, cause)
        log_event(log, "ras.call_ended", logging.DEBUG, call=call.call_key, cause=cause)

    def _send(self, address: TransportAddress, data: bytes, short: str) -> None:
        self._out.append(Datagram(data, address))
        self.counters.sent[short] += 1

    def _next_seq(self) -> int:
        return next(self._seqs)

    def _ask(self, hook: Callable[..., Verdict], info: RegisterInfo | AdmissionInfo) -> Verdict:
        return self._guard.ask(hook, info, on_error=_HOOK_FAILED, expect=Verdict)

    # ------------------------------------------------------------------ read-only views

    def registration_views(self, now: float) -> list[dict]:
        return [
            {"endpoint_id": r.endpoint_id, "aliases": _alias_texts(r.aliases), "ras_address": str(r.ras_address),
             "call_signal_addresses": [str(a) for a in r.call_signal_addresses], "source": str(r.source),
             "endpoint_type": r.endpoint_type,
             "product": r.vendor.product_id if r.vendor else None,
             "version": r.vendor.version_id if r.vendor else None,
             "time_to_live": r.time_to_live,
             "expires_in": None if r.time_to_live is None else max(0.0, round(r.expires_at - now, 1)),
             "registered_at": r.registered_at + self.wall_offset,
             "calls": len(self.calls.by_endpoint.get(r.endpoint_id, ()))}
            for r in self.registrations
        ]

    def call_views(self, now: float) -> list[dict]:
        return [
            {"call_id": c.call_key, "conference_id": ras.guid_str(c.conference_id),
             "caller": _alias_texts(c.caller.aliases), "callee": _alias_texts(c.callee.aliases),
             "caller_registered": c.caller.registered, "callee_registered": c.callee.registered,
             "resolved": c.resolved, "bandwidth": c.bandwidth, "started_at": c.started_wall,
             "duration": round(now - c.created_at, 1),
             "legs": [{"endpoint_id": leg.endpoint_id, "answer_call": leg.answer_call,
                       "call_reference_value": leg.call_reference_value, "bandwidth": leg.bandwidth,
                       "irq_pending": leg.irq_seq is not None} for leg in c.legs.values()]}
            for c in self.calls
        ]


def _party_of(reg: Registration) -> Party:
    return Party(reg.aliases, reg.endpoint_id, "h323", reg.call_signal_address, reg.vendor)


def _alias_texts(aliases) -> list[str]:
    return [f"{a.type}:{a.value}" for a in aliases]


def _product(vendor) -> str:
    """H.323's nearest to a User-Agent, for security-relevant log lines: endpointVendor's productId."""
    return (vendor.product_id or "") if vendor else ""
