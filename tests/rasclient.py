"""A tiny H.323 endpoint for tests: RAS encoded with ``meter.codecs.ras``, over UDP on loopback.

:class:`Endpoint` is sans-I/O (it builds requests and keeps the endpoint's state: identifier, calls,
sequence numbers) so unit tests can hand its bytes straight to a gatekeeper core;
:class:`RasClient` puts it on a UDP socket, waits for answers by sequence number and answers what
the gatekeeper asks (URQ -> UCF, IRQ -> IRR listing its calls, DRQ -> DCF).
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections import deque
from dataclasses import dataclass, field

from meter.codecs import ras
from meter.codecs.ras import Alias, CallInfo, RasMessage, TransportAddress, Vendor

ANSWERS = frozenset({
    "GCF", "GRJ", "RCF", "RRJ", "UCF", "URJ", "ACF", "ARJ", "BCF", "BRJ", "DCF", "DRJ", "LCF", "LRJ",
    "XRS", "IACK", "INAK",
})

EX90 = Vendor(country_code=181, manufacturer_code=1, product_id="TANDBERG EX90\x00\x00", version_id="TC7.3.6\x00")


@dataclass
class Call:
    call_id: bytes
    conference_id: bytes
    crv: int
    answer: bool
    bandwidth: int


@dataclass
class Endpoint:
    """One endpoint's RAS side, sans-I/O."""

    ras_address: TransportAddress
    call_signal_address: TransportAddress
    aliases: tuple[Alias, ...] = ()
    vendor: Vendor = EX90
    endpoint_type: str = "terminal"
    endpoint_id: str | None = None
    calls: dict[bytes, Call] = field(default_factory=dict)
    inbox: list[RasMessage] = field(default_factory=list)  # Net: everything delivered to it
    answers_requests: bool = True  # Net: answer URQ/IRQ/DRQ; False plays dead
    _seq: itertools.count = field(default_factory=lambda: itertools.count(1))
    _crv: itertools.count = field(default_factory=lambda: itertools.count(1))

    def next_seq(self) -> int:
        return (next(self._seq) - 1) % 65535 + 1  # RequestSeqNum ::= INTEGER (1..65535)

    # -- requests (each returns (seq, bytes))

    def grq(self, gatekeeper_id: str | None = None) -> tuple[int, bytes]:
        seq = self.next_seq()
        return seq, ras.gatekeeper_request(seq, ras_address=self.ras_address, aliases=self.aliases,
                                           vendor=self.vendor, gatekeeper_id=gatekeeper_id)

    def rrq(self, aliases=None, *, ttl: int | None = None, additive: bool = False,
            endpoint_id: str | None = None) -> tuple[int, bytes]:
        seq = self.next_seq()
        return seq, ras.registration_request(
            seq, call_signal_addresses=[self.call_signal_address], ras_addresses=[self.ras_address],
            aliases=self.aliases if aliases is None else aliases, vendor=self.vendor,
            endpoint_type=self.endpoint_type, time_to_live=ttl, additive=additive, endpoint_id=endpoint_id)

    def keep_alive(self, *, ttl: int | None = None, endpoint_id: str | None = None) -> tuple[int, bytes]:
        seq = self.next_seq()
        return seq, ras.keep_alive_request(
            seq, endpoint_id=endpoint_id or self.endpoint_id or "unknown", call_signal_addresses=[self.call_signal_address],
            ras_addresses=[self.ras_address], vendor=self.vendor, time_to_live=ttl)

    def urq(self, aliases=(), *, endpoint_id: str | None = None) -> tuple[int, bytes]:
        seq = self.next_seq()
        return seq, ras.unregistration_request(seq, call_signal_addresses=[self.call_signal_address], aliases=aliases,
                                               endpoint_id=endpoint_id or self.endpoint_id)

    def arq(self, dest_aliases=(), *, call_id: bytes | None = None, conference_id: bytes | None = None,
            answer: bool = False, bandwidth: int = 3840, dest_address=None, src_aliases=None,
            endpoint_id: str | None = None) -> tuple[int, bytes, Call]:
        """ARQ for a new call (``call_id`` None) or for answering ``call_id`` (``answer=True``)."""
        seq = self.next_seq()
        call_id = call_id or os.urandom(16)
        call = Call(call_id, conference_id or call_id[::-1], next(self._crv), answer, bandwidth)
        data = ras.admission_request(
            seq, endpoint_id=endpoint_id or self.endpoint_id or "unknown",
            src_aliases=self.aliases if src_aliases is None else src_aliases,
            call_identifier=call.call_id, conference_id=call.conference_id, bandwidth=bandwidth,
            call_reference_value=call.crv, dest_aliases=dest_aliases, dest_call_signal_address=dest_address,
            src_call_signal_address=self.call_signal_address if not answer else None, answer_call=answer)
        return seq, data, call

    def drq(self, call: Call) -> tuple[int, bytes]:
        seq = self.next_seq()
        return seq, ras.disengage_request(seq, endpoint_id=self.endpoint_id or "unknown",
                                          conference_id=call.conference_id, call_identifier=call.call_id,
                                          call_reference_value=call.crv, answered_call=call.answer)

    def brq(self, call: Call, bandwidth: int) -> tuple[int, bytes]:
        seq = self.next_seq()
        return seq, ras.bandwidth_request(seq, endpoint_id=self.endpoint_id or "unknown",
                                          conference_id=call.conference_id, call_identifier=call.call_id,
                                          call_reference_value=call.crv, bandwidth=bandwidth,
                                          answered_call=call.answer)

    def lrq(self, dest_aliases) -> tuple[int, bytes]:
        seq = self.next_seq()
        return seq, ras.location_request(seq, dest_aliases=dest_aliases, reply_address=self.ras_address,
                                         endpoint_id=self.endpoint_id)

    def irr(self, seq: int, *, calls=None, need_response: bool = False, unsolicited: bool = False) -> bytes:
        calls = self.calls.values() if calls is None else calls
        return ras.info_request_response(
            seq, endpoint_id=self.endpoint_id or "unknown", ras_address=self.ras_address,
            call_signal_addresses=[self.call_signal_address], aliases=self.aliases,
            calls=[CallInfo(c.call_id, c.conference_id, c.crv, c.bandwidth, originator=not c.answer) for c in calls],
            need_response=need_response, unsolicited=unsolicited)

    # -- what the gatekeeper asks, answered as an endpoint does

    def answer(self, msg: RasMessage) -> bytes | None:
        if msg.short == "URQ":
            self.endpoint_id = None
            return ras.unregistration_confirm(msg.request_seq_num)
        if msg.short == "DRQ":
            self.calls.pop(msg.call_identifier, None)
            return ras.disengage_confirm(msg.request_seq_num)
        if msg.short == "IRQ":
            wanted = [c for c in self.calls.values()
                      if msg.call_identifier in (None, ras.ZERO_GUID) or c.call_id == msg.call_identifier]
            return self.irr(msg.request_seq_num, calls=wanted)
        return None


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, client: "RasClient") -> None:
        self.client = client

    def datagram_received(self, data, addr) -> None:
        self.client._received(data, addr)


class RasClient:
    """``await RasClient.open(("127.0.0.1", gk_port), aliases=[("h323-ID", "alice")])``."""

    def __init__(self, gatekeeper: tuple[str, int]) -> None:
        self.gatekeeper = TransportAddress(*gatekeeper)
        self.ep: Endpoint | None = None
        self.inbox: list[RasMessage] = []  # what the gatekeeper asked (URQ, IRQ, DRQ...)
        self.stray: list[RasMessage] = []
        self.answer_requests = True  # answer URQ/IRQ/DRQ like an endpoint; False plays dead
        self._waiters: dict[int, asyncio.Future] = {}
        self._event = asyncio.Event()
        self._transport: asyncio.DatagramTransport | None = None

    @classmethod
    async def open(cls, gatekeeper: tuple[str, int], aliases=(), *, vendor: Vendor = EX90,
                   endpoint_type: str = "terminal", call_signal_port: int | None = None) -> "RasClient":
        client = cls(gatekeeper)
        loop = asyncio.get_running_loop()
        client._transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(client),
                                                                   local_addr=("127.0.0.1", 0))
        port = client._transport.get_extra_info("sockname")[1]
        client.ep = Endpoint(TransportAddress("127.0.0.1", port),
                             TransportAddress("127.0.0.1", call_signal_port or 20000 + port % 40000),
                             tuple(Alias(*a) for a in aliases), vendor, endpoint_type)
        return client

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    # -- plumbing

    def send(self, data: bytes) -> None:
        self._transport.sendto(data, self.gatekeeper)

    async def request(self, seq: int, data: bytes, timeout: float = 3.0) -> RasMessage:
        fut = asyncio.get_running_loop().create_future()
        self._waiters[seq] = fut
        self.send(data)
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._waiters.pop(seq, None)

    def _received(self, data: bytes, addr) -> None:
        try:
            msg = ras.decode(data)
        except ras.RASError:
            return
        if msg.short in ANSWERS:
            fut = self._waiters.get(msg.request_seq_num)
            if fut is not None and not fut.done():
                fut.set_result(msg)
            else:
                self.stray.append(msg)
            return
        if msg.short == "RIP":
            return
        self.inbox.append(msg)
        self._event.set()
        if self.answer_requests:
            reply = self.ep.answer(msg)
            if reply is not None:
                self._transport.sendto(reply, addr)

    async def expect(self, short: str, timeout: float = 5.0) -> RasMessage:
        """The next request of that kind the gatekeeper sends (removed from the inbox)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for i, msg in enumerate(self.inbox):
                if msg.short == short:
                    return self.inbox.pop(i)
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"no {short} from the gatekeeper within {timeout} s; inbox: "
                                     f"{[m.short for m in self.inbox]}")
            self._event.clear()
            try:
                await asyncio.wait_for(self._event.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    # -- the endpoint's requests, answered

    async def discover(self, gatekeeper_id: str | None = None) -> RasMessage:
        return await self.request(*self.ep.grq(gatekeeper_id))

    async def register(self, aliases=None, *, ttl: int | None = None, additive: bool = False) -> RasMessage:
        if aliases is not None:
            aliases = tuple(Alias(*a) for a in aliases)
        answer = await self.request(*self.ep.rrq(aliases, ttl=ttl, additive=additive))
        if answer.short == "RCF":
            self.ep.endpoint_id = answer.endpoint_identifier
        return answer

    async def keep_alive(self, *, ttl: int | None = None) -> RasMessage:
        return await self.request(*self.ep.keep_alive(ttl=ttl))

    async def unregister(self, aliases=()) -> RasMessage:
        answer = await self.request(*self.ep.urq(tuple(Alias(*a) for a in aliases)))
        if answer.short == "UCF" and not aliases:
            self.ep.endpoint_id = None
        return answer

    async def admit(self, dest_aliases=(), **kwargs) -> tuple[RasMessage, Call]:
        seq, data, call = self.ep.arq(tuple(Alias(*a) for a in dest_aliases), **kwargs)
        answer = await self.request(seq, data)
        if answer.short == "ACF":
            self.ep.calls[call.call_id] = call
        return answer, call

    async def disengage(self, call: Call) -> RasMessage:
        answer = await self.request(*self.ep.drq(call))
        self.ep.calls.pop(call.call_id, None)
        return answer

    async def change_bandwidth(self, call: Call, bandwidth: int) -> RasMessage:
        return await self.request(*self.ep.brq(call, bandwidth))

    async def locate(self, dest_aliases) -> RasMessage:
        return await self.request(*self.ep.lrq(tuple(Alias(*a) for a in dest_aliases)))


class Net:
    """In-memory UDP for unit tests: gatekeeper cores and :class:`Endpoint` objects by address.

    A datagram is delivered at once, and whatever it causes (answers, forwarded requests, the
    endpoints' own answers to URQ/IRQ/DRQ) is delivered in turn, until the network is quiet.
    ``trace`` keeps (source, destination, kind) of every delivery.
    """

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self.cores: dict[TransportAddress, object] = {}
        self.endpoints: dict[TransportAddress, Endpoint] = {}
        self.trace: list[tuple[TransportAddress, TransportAddress, str]] = []
        self.lost: list[tuple[TransportAddress, str]] = []

    def core(self, core):
        self.cores[core.ras_address] = core
        return core

    def endpoint(self, port: int, aliases=(), *, vendor: Vendor = EX90, endpoint_type: str = "terminal") -> Endpoint:
        ep = Endpoint(TransportAddress("127.0.0.1", port), TransportAddress("127.0.0.1", port + 10000),
                      tuple(Alias(*a) for a in aliases), vendor, endpoint_type)
        ep._crv = itertools.count(port % 1000 * 100 + 1)  # call reference values differ between endpoints
        self.endpoints[ep.ras_address] = ep
        return ep

    def send(self, source: TransportAddress, destination: TransportAddress, data: bytes) -> None:
        queue = deque([(source, destination, data)])
        while queue:
            src, dst, data = queue.popleft()
            core = self.cores.get(dst)
            if core is not None:
                self.trace.append((src, dst, _short(data)))
                for out in core.receive(data, src, self.now):
                    queue.append((dst, out.address, out.data))
                continue
            ep = self.endpoints.get(dst)
            if ep is None:
                self.lost.append((dst, _short(data)))
                continue
            self.trace.append((src, dst, _short(data)))
            msg = ras.decode(data)
            ep.inbox.append(msg)
            if ep.answers_requests:
                reply = ep.answer(msg)
                if reply is not None:
                    queue.append((dst, src, reply))

    def deliver_all(self, source: TransportAddress, datagrams) -> None:
        for out in datagrams:
            self.send(source, out.address, out.data)

    def tick(self, now: float) -> None:
        """Move the clock and run every core's housekeeping."""
        self.now = now
        for address, core in list(self.cores.items()):
            self.deliver_all(address, core.tick(now))

    def ask(self, ep: Endpoint, request, to: TransportAddress | None = None) -> RasMessage:
        """Send one request from ``ep`` (a (seq, bytes[, call]) tuple) and return the answer carrying its seq."""
        seq, data = request[0], request[1]
        mark = len(ep.inbox)
        self.send(ep.ras_address, to or next(iter(self.cores)), data)
        answers = [m for m in ep.inbox[mark:] if m.short in ANSWERS and m.request_seq_num == seq]
        assert len(answers) == 1, f"expected one answer to seq {seq}, got {[m.short for m in ep.inbox[mark:]]}"
        return answers[0]

    def register(self, ep: Endpoint, to: TransportAddress | None = None, **kwargs) -> RasMessage:
        answer = self.ask(ep, ep.rrq(**kwargs), to)
        if answer.short == "RCF":
            ep.endpoint_id = answer.endpoint_identifier
        return answer

    def admit(self, ep: Endpoint, dest_aliases=(), to: TransportAddress | None = None, **kwargs):
        seq, data, call = ep.arq(tuple(Alias(*a) for a in dest_aliases), **kwargs)
        answer = self.ask(ep, (seq, data), to)
        if answer.short == "ACF":
            ep.calls[call.call_id] = call
        return answer, call

    def received(self, ep: Endpoint, short: str) -> list[RasMessage]:
        return [m for m in ep.inbox if m.short == short]


def _short(data: bytes) -> str:
    try:
        return ras.decode(data).short
    except ras.RASError:
        return "malformed"


class RecordingHooks:
    """RasHooks that record every hook call and check the contract as they go (meter.h323.hooks):
    an alias is unregistered only while registered, a call ends only once and only when it was charged.

    ``refuse_aliases``: on_register refuses an RRQ holding any of these alias values;
    ``max_calls``: on_admission refuses a first ARQ beyond that many charged, unended calls.
    """

    def __init__(self, *, refuse_aliases=(), max_calls: int | None = None) -> None:
        from meter.h323.hooks import ALLOW, Verdict  # imported late: the module is the thing under test
        from meter.h323.registrations import alias_key

        self._allow, self._verdict, self._alias_key = ALLOW, Verdict, alias_key
        self.refuse_aliases = set(refuse_aliases)
        self.max_calls = max_calls
        self.events: list[tuple] = []
        self.held: set[tuple[str, tuple[str, str]]] = set()  # (endpoint_id, alias_key): the contract's alias identity
        self.charged: dict[str, int] = {}  # call key -> times charged (first_for_call allowed)
        self.ended: dict[str, str] = {}  # call key -> cause
        self.admissions: list = []

    def called(self) -> list[str]:
        """The names of the hooks called, in order."""
        return [e[0] for e in self.events]

    @property
    def in_use(self) -> int:
        return sum(1 for key in self.charged if key not in self.ended)

    def on_register(self, info):
        self.events.append(("on_register", info))
        if any(a.value in self.refuse_aliases for a in info.aliases):
            return self._verdict.refuse("resourceUnavailable", "test: refused alias")
        return self._allow

    def on_register_failed(self, info, cause):
        self.events.append(("on_register_failed", info, cause))

    def on_registered(self, endpoint_id, aliases, vendor, source, now):
        self.events.append(("on_registered", endpoint_id, aliases, vendor, source, now))
        self.held.update((endpoint_id, self._alias_key(a)) for a in aliases)

    def on_unregistered(self, endpoint_id, aliases, cause):
        self.events.append(("on_unregistered", endpoint_id, aliases, cause))
        for a in aliases:
            held = (endpoint_id, self._alias_key(a))
            assert held in self.held, f"{a.value} of {endpoint_id} unregistered twice or never registered"
            self.held.discard(held)

    def on_admission(self, info):
        self.events.append(("on_admission", info))
        self.admissions.append(info)
        if info.first_for_call:
            if self.max_calls is not None and self.in_use >= self.max_calls:
                return self._verdict.refuse("resourceUnavailable", "test: no license")
            assert info.call_key not in self.charged or info.call_key in self.ended, "charged twice"
            self.charged[info.call_key] = self.charged.get(info.call_key, 0) + 1
            self.ended.pop(info.call_key, None)
        return self._allow

    def on_call_ended(self, call_key, cause):
        self.events.append(("on_call_ended", call_key, cause))
        assert call_key in self.charged, f"call {call_key} ended but never charged"
        assert call_key not in self.ended, f"call {call_key} ended twice ({self.ended.get(call_key)}, {cause})"
        self.ended[call_key] = cause


GK = TransportAddress("127.0.0.1", 1719)
UPSTREAM = TransportAddress("127.0.0.1", 1819)


def ids():
    """Predictable endpoint identifiers for unit tests: ep1, ep2, ..."""
    counter = itertools.count(1)
    return lambda: f"ep{next(counter)}"


def standalone_net(hooks=None, *, sip_locator=None, now: float = 1000.0, **settings):
    """A Net holding one standalone Gatekeeper at GK (fast test timers unless told otherwise);
    ``sip_locator`` as the node's (None: no alias is registered over SIP)."""
    from meter.h323.gatekeeper import Gatekeeper, no_sip
    from meter.h323.settings import H323Settings

    net = Net(now)
    gk = net.core(Gatekeeper(H323Settings(**settings), hooks, ras_address=GK, sip_locator=sip_locator or no_sip,
                             new_endpoint_id=ids()))
    return net, gk


def inline_net(hooks=None, upstream_hooks=None, *, now: float = 1000.0, upstream_settings=None, **settings):
    """A Net holding an InlineGatekeeper at GK forwarding to a standalone Gatekeeper at UPSTREAM."""
    from meter.h323.gatekeeper import Gatekeeper
    from meter.h323.inline import InlineGatekeeper
    from meter.h323.settings import H323Settings

    net = Net(now)
    node = net.core(InlineGatekeeper(H323Settings(mode="inline", upstream=f"{UPSTREAM.ip}:{UPSTREAM.port}", **settings),
                                     hooks, ras_address=GK, upstream=UPSTREAM))
    upstream = net.core(Gatekeeper(H323Settings(gatekeeper_id="upstream-gk", **(upstream_settings or {})),
                                   upstream_hooks, ras_address=UPSTREAM, new_endpoint_id=ids()))
    return net, node, upstream
