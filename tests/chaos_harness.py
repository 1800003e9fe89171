"""A sans-I/O world for chaos tests of license accounting (issue 6 item 2).

One SIP node (``SipCore``, standalone registrar and proxy) metered by ``SipMetering`` over a
licensing ``Ledger``, a fake clock, and scripted endpoints on a fake network. Endpoints act only
when a test tells them to, so a test (or Hypothesis) chooses every interleaving: who answers,
who stays silent, what is retransmitted, held back or delivered late, when time moves, when the
node restarts. Nothing here opens a socket or reads the wall clock.

``World.accounting_problems()`` lists every way the ledger, the metering records and the node's
own call and binding tables disagree (docs/design.md principle 4); ``World.drain()`` advances time
past every timer and lists what is still held afterwards.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from meter.codecs.sip import Request, Response, make_request, make_response, parse
from meter import catalogs
from meter.licensing.ledger import Ledger
from meter.licensing.model import POOLED, UNIT_SCALE
from meter.metering.join import Metering
from meter.metering.sip import SipMetering
from meter.sip.clock import FakeClock
from meter.sip.core import SipCore
from meter.sip.peer import Peer
from meter.sip.routing import Advertised
from meter.sip.settings import SipSettings
from meter.zones import ZoneSettings, ZoneTable

NODE = Advertised("10.0.0.1", 5060)
RR = "<sip:10.0.0.1:5060;lr>"
POOLS = tuple(str(lic) for lic in POOLED)  # rms (half units, C4), room, desktop, cmr
NODE_NAME = "chaos"

# User-Agent strings from config/devices.toml's sources: the device class they register as.
ROOM_KIT = "TANDBERG/529 (ce11.40.1.1.10bdaa53ce2) Cisco-RoomKitMini"  # room (R2)
DX80 = "TANDBERG/529 (ce9.15.3.17d0b8c2d7c) Cisco-DX80"               # desktop (R2, R3: CE8.2+)
EX90_OLD = "TANDBERG/528 (TC7.3.2.14ad7cc) Cisco-EX90"               # room: TC before 7.3.6 (R3)
ITSP_UA = "lab-sbc/1.0"

# The ITSP trunk: calls from its addresses, or to its domain, are third-party SIP calls and cost
# one RMS on C (C2, C3); calls between registered phones cost none (C1).
ITSP_ZONE = ZoneSettings(name="itsp", kind="third_party_sip", peers=["192.0.2.0/24"], match=["domain:itsp.example"])
ITSP_ROUTE = "<sip:192.0.2.10:5060;lr>"

# Short registrations and a short dialog age keep the final drain to ~2000 fake seconds; every
# other timer keeps its RFC 3261 default (T1 0.5 s: B, F, H, J = 32 s; Timer C 180 s).
SETTINGS = dict(host="10.0.0.1", port=5060, t1=0.5, min_expires=60, default_expires=600, max_expires=600,
                max_dialog_age=900.0, housekeeping_interval=1.0)

AUDIO_OFFER = (b"v=0\r\no=a 1 1 IN IP4 10.0.0.2\r\ns=-\r\nc=IN IP4 10.0.0.2\r\nt=0 0\r\n"
               b"m=audio 4000 RTP/AVP 0\r\n")
VIDEO_OFFER = AUDIO_OFFER + b"m=video 4002 RTP/AVP 96\r\n"
AUDIO_ANSWER = (b"v=0\r\no=b 1 1 IN IP4 10.0.0.3\r\ns=-\r\nc=IN IP4 10.0.0.3\r\nt=0 0\r\n"
                b"m=audio 5000 RTP/AVP 0\r\n")
VIDEO_ANSWER = AUDIO_ANSWER + b"m=video 5002 RTP/AVP 96\r\n"
VIDEO_DECLINED = AUDIO_ANSWER + b"m=video 0 RTP/AVP 96\r\n"  # C5: one negotiated m= line

# (INVITE body, body of the 2xx, body of the ACK): late offers put the offer in the 2xx (RFC 3261 §13.2.1).
MEDIA = {
    "video": (VIDEO_OFFER, VIDEO_ANSWER, b""),
    "audio": (AUDIO_OFFER, AUDIO_ANSWER, b""),
    "video_declined": (VIDEO_OFFER, VIDEO_DECLINED, b""),
    "late_video": (b"", VIDEO_OFFER, VIDEO_ANSWER),
    "late_audio": (b"", AUDIO_OFFER, AUDIO_ANSWER),
}

_CATALOG = catalogs.device_catalog()
_ZONES = ZoneTable([ITSP_ZONE])


@dataclass
class Endpoint:
    """A SIP device at a fixed address: a phone that registers, or the ITSP trunk."""

    name: str
    host: str
    port: int
    user_agent: str
    domain: str = "lab.test"
    reg_call_id: str = ""
    reg_cseq: int = 0
    reboots: int = 0

    def __post_init__(self) -> None:
        self.reg_call_id = self.reg_call_id or f"reg-{self.name}-0"

    @property
    def aor(self) -> str:
        return f"sip:{self.name}@{self.domain}"

    @property
    def contact_uri(self) -> str:
        return f"sip:{self.name}@{self.host}:{self.port}"

    @property
    def tag(self) -> str:
        return f"{self.name}-tag"

    @property
    def peer(self) -> Peer:
        return Peer("udp", self.host, self.port)

    @property
    def is_trunk(self) -> bool:
        return self.user_agent == ITSP_UA


def default_endpoints() -> list[Endpoint]:
    return [
        Endpoint("alice", "10.0.0.2", 5062, ROOM_KIT),
        Endpoint("bob", "10.0.0.3", 5062, DX80),
        Endpoint("carol", "10.0.0.4", 5062, EX90_OLD),
        Endpoint("dave", "10.0.0.5", 5062, DX80),
        Endpoint("gw", "192.0.2.10", 5060, ITSP_UA, domain="itsp.example"),
    ]


@dataclass
class CallSim:
    """One call as its two ends see it."""

    call_id: str
    caller: Endpoint
    callee: Endpoint
    media: str
    invite: Request                                     # as the caller sent it
    to_uri: str
    to_tag: str
    at_callee: list = field(default_factory=list)       # INVITEs the node forwarded, one per branch
    callee_finals: dict = field(default_factory=dict)   # branch -> final status the callee sent
    callee_2xx: Request | None = None                   # the INVITE copy the callee answered 2xx
    cancels: list = field(default_factory=list)         # CANCELs the node forwarded to the callee
    cancels_answered: set = field(default_factory=set)  # their branches
    ok: Response | None = None                          # first 2xx the caller got
    failure: Response | None = None                     # first non-2xx final the caller got
    caller_cseq: int = 1
    callee_cseq: int = 0
    rung: bool = False
    acks: int = 0
    byes_sent: int = 0

    @property
    def offer(self) -> bytes:
        return MEDIA[self.media][0]


@dataclass
class PendingBye:
    """A BYE the node forwarded to ``to``, not yet answered by it."""

    request: Request
    to: Endpoint


class World:
    def __init__(self, *, licenses: dict[str, int], enforcement: str = "enforce", autocheck: bool = True,
                 endpoints: list[Endpoint] | None = None, **settings) -> None:
        self.clock = FakeClock()
        self.licenses = dict(licenses)
        self.enforcement = enforcement
        self.settings = SipSettings(**{**SETTINGS, **settings})
        self.autocheck = autocheck  # check accounting after every action (deterministic tests)
        self.endpoints = endpoints or default_endpoints()
        self._by_address = {(e.host, e.port): e for e in self.endpoints}
        self.calls: dict[str, CallSim] = {}
        self.history: list[tuple[bytes, Peer]] = []  # everything endpoints sent: retransmission material
        self.held: list[tuple[bytes, Peer]] = []     # sent but not yet delivered (reordering, loss)
        self.byes: list[PendingBye] = []
        self.wire: list[tuple[Request | Response, Peer]] = []  # what the node sent, for failure messages
        self.boots = 0
        self._branches = itertools.count(1)
        self._call_ids = itertools.count(1)
        self.ledger: Ledger | None = None
        self.boot(fresh_ledger=True)

    # -- the node ---------------------------------------------------------------------------------------

    def boot(self, *, fresh_ledger: bool) -> None:
        """Start a node. ``meter.app.Node`` builds a new Metering and a new Ledger at every start;
        ``fresh_ledger=False`` keeps the old ledger (and its pool) to show it is left empty."""
        self._boot_metering(fresh_ledger)
        self.core = SipCore(self.settings, clock=self.clock, send=self._node_sent, advertised=NODE,
                            hooks=self.policy, local_names=["10.0.0.1:5060"])
        self.core.start()
        self.boots += 1

    def _boot_metering(self, fresh_ledger: bool) -> None:
        """The ledger (kept when asked), a new metering join and the SIP policy over it."""
        now = self.clock.time()
        if fresh_ledger or self.ledger is None:
            self.ledger = Ledger(NODE_NAME, "C", catalogs.platform("large_vm"), enforcement=self.enforcement, now=now)
            self.ledger.set_licenses(self.licenses, now)
        self.metering = Metering(self.ledger, _CATALOG, _ZONES, role="C", node_name=NODE_NAME, clock=self.clock.time)
        self.policy = SipMetering(self.metering, inline=self.settings.mode == "inline")

    def shutdown(self) -> list[str]:
        """What ``Node.close`` does: the SIP node ends every call and binding through the policy, then
        metering closes (its ``release_all`` is a safety net). Returns what the SIP node's own
        shutdown path left charged: principle 4 says nothing."""
        self.core.close("node shutdown")
        left = self._held_charges()
        self.metering.close()
        return left

    def restart(self, *, fresh_ledger: bool = True) -> list[str]:
        left = self.shutdown()
        self.boot(fresh_ledger=fresh_ledger)
        self._after()
        return left

    def advance(self, seconds: float) -> None:
        """Move time: RFC 3261 timers, binding expiry and the dialog reaper fire; metering ticks."""
        self.clock.advance(seconds)
        self.metering.tick(self.clock.time())
        self._after()

    @property
    def drain_seconds(self) -> float:
        s = self.settings
        # Past the last binding, the oldest possible call, Timer C plus the CANCEL guard, and the
        # 64*T1 timers (B, F, H, J, L, M) that follow; twice over for margin.
        return 2 * (s.max_expires + s.max_dialog_age + s.timer_c + s.timer_d + 4 * 64 * s.t1) + s.housekeeping_interval

    def drain(self) -> list[str]:
        """Everyone goes silent, held messages are lost, time runs past every timer: list what is
        still charged or still tracked (should be nothing)."""
        self.held.clear()
        self.clock.advance(self.drain_seconds)
        self.metering.tick(self.clock.time())
        problems = self.accounting_problems()
        problems += self._held_charges()
        if self.metering.calls or self.metering.registrations:
            problems.append(f"metering records left: calls {sorted(self.metering.calls)}, "
                            f"registrations {sorted(self.metering.registrations)}")
        if len(self.core.dialogs) or len(self.core.location):
            problems.append(f"node tables left: calls {[c.call_id for c in self.core.dialogs]}, "
                            f"bindings {[b.aor for b in self.core.location.bindings()]}")
        txns = self.core.txns
        if txns.servers or txns.clients:
            problems.append(f"transactions left: {list(txns.servers.values()) + list(txns.clients.values())}")
        return problems

    # -- the checks --------------------------------------------------------------------------------------

    def _held_charges(self) -> list[str]:
        problems = [f"{lic} in use: {self.ledger.in_use(lic)}" for lic in POOLS if self.ledger.in_use(lic)]
        snap = self.ledger.snapshot(self.clock.time())
        if snap.calls or snap.registrations or len(self.ledger):
            problems.append(f"ledger holds {len(self.ledger)} charges: calls {snap.calls}, "
                            f"registrations {snap.registrations}")
        return problems

    def accounting_problems(self) -> list[str]:
        """Every disagreement between the ledger, the metering records and the node's tables."""
        ledger, m, now = self.ledger, self.metering, self.clock.time()
        snap = ledger.snapshot(now)
        problems = []
        # Never negative (the ledger clamps at zero, so check its inputs agree as well, below).
        for lic in POOLS:
            if ledger.in_use(lic) < 0:
                problems.append(f"{lic} in use is negative: {ledger.in_use(lic)}")
        counts = {"calls": snap.calls, "registrations": snap.registrations, "mra": snap.mra_registrations,
                  **{f"calls_by_media.{k}": v for k, v in snap.calls_by_media.items()},
                  **{f"calls_by_license.{k}": v for k, v in snap.calls_by_license.items()}}
        problems += [f"snapshot {name} is negative: {v}" for name, v in counts.items() if v < 0]
        # The ledger clamps its counters at zero, which would hide a release of more than was
        # charged: its counters must equal the sum of its own entries (white box, on purpose).
        entries = getattr(ledger, "_entries", {})
        for lic in POOLS:
            own = sum(e.units for e in entries.values() if e.license == lic)
            if ledger.in_use(lic) != own:
                problems.append(f"{lic}: ledger counter {ledger.in_use(lic)} != its entries' sum {own} (clamped?)")
        # The ledger holds exactly what the metering records imply: one license per registered
        # alias of its device class (R2, R9), each call's units (RMS in half units, C4).
        expected = dict.fromkeys(POOLS, 0)
        for r in m.registrations.values():
            if r.license in expected:
                expected[r.license] += 1
        for c in m.calls.values():
            if c.charge.license in expected:
                expected[c.charge.license] += c.charge.units
        for lic in POOLS:
            if ledger.in_use(lic) != expected[lic]:
                problems.append(f"{lic}: ledger in use {ledger.in_use(lic)}, metering records imply {expected[lic]}")
        if snap.calls != len(m.calls):
            problems.append(f"ledger counts {snap.calls} calls, metering has {len(m.calls)}")
        if snap.registrations != len(m.registrations):
            problems.append(f"ledger counts {snap.registrations} registrations, metering has {len(m.registrations)}")
        if len(ledger) != len(m.calls) + len(m.registrations):
            problems.append(f"ledger has {len(ledger)} charges, metering {len(m.calls)} calls + "
                            f"{len(m.registrations)} registrations")
        # Enforce never lets a pool run over (R11, P1); observe may, and counts it.
        if self.enforcement == "enforce":
            for lic in POOLS:
                cap = snap.licenses[lic].capacity * UNIT_SCALE[lic]
                if ledger.in_use(lic) > cap:
                    problems.append(f"enforce: {lic} in use {ledger.in_use(lic)} > capacity {cap}")
        return problems + self.node_problems()

    def node_problems(self) -> list[str]:
        """The node's own tables: every call it carries is charged, every registered alias holds
        its license, and nothing is charged that the node no longer carries."""
        m = self.metering
        problems = []
        node_calls = {c.call_id for c in self.core.dialogs}
        metered_calls = {cid for (_, cid) in m.calls}
        if node_calls != metered_calls:
            problems.append(f"calls on the node {sorted(node_calls)} != calls metered {sorted(metered_calls)}")
        node_aors = {b.aor for b in self.core.location.bindings()}
        metered_aors = {alias for (_, alias) in m.registrations}
        if node_aors != metered_aors:
            problems.append(f"aliases bound on the node {sorted(node_aors)} != aliases metered {sorted(metered_aors)}")
        c = self.core.counters
        if c.internal_errors or c.hook_errors or self.core.txns.errors:
            problems.append(f"node errors: internal {c.internal_errors}, policy {c.hook_errors}, "
                            f"timers {self.core.txns.errors}")
        return problems

    def check(self) -> None:
        problems = self.accounting_problems()
        assert not problems, "\n".join(problems + self._recent_wire())

    def _recent_wire(self, n: int = 8) -> list[str]:
        return ["last sent by the node:"] + [f"  {m!r} -> {p}" for m, p in self.wire[-n:]]

    def _after(self) -> None:
        if self.autocheck:
            self.check()

    # -- the network ---------------------------------------------------------------------------------------

    def _node_sent(self, data: bytes, peer: Peer) -> None:
        msg = parse(data)
        self.wire.append((msg, peer))
        del self.wire[:-64]
        ep = self._by_address.get((peer.host, peer.port))
        if ep is not None:
            self._deliver(msg, ep)

    def _deliver(self, msg: Request | Response, ep: Endpoint) -> None:
        """What an endpoint learns from what the node sent it (it acts only when told to)."""
        call = self.calls.get(msg.call_id)
        if isinstance(msg, Request):
            branch = msg.top_via.branch
            if msg.method == "BYE":
                if all(b.request.top_via.branch != branch for b in self.byes):
                    self.byes.append(PendingBye(msg, ep))
            elif call is not None and ep is call.callee:
                if msg.method == "INVITE" and all(r.top_via.branch != branch for r in call.at_callee):
                    call.at_callee.append(msg)
                elif msg.method == "CANCEL" and all(r.top_via.branch != branch for r in call.cancels):
                    call.cancels.append(msg)
            return
        if call is not None and ep is call.caller and msg.cseq.method == "INVITE" and msg.status >= 200:
            if msg.status < 300:
                call.ok = call.ok or msg
            else:
                call.failure = call.failure or msg

    def send(self, msg: Request | Response, ep: Endpoint, *, hold: bool = False) -> None:
        data = msg.to_bytes()
        self.history.append((data, ep.peer))
        if hold:
            self.held.append((data, ep.peer))
            return
        self._to_node(data, ep.peer)
        self._after()

    def retransmit(self, index: int) -> None:
        """Any message an endpoint ever sent, again (RFC 3261 §17 retransmission, or a late duplicate)."""
        data, peer = self.history[index]
        self._to_node(data, peer)
        self._after()

    def release_held(self, index: int) -> None:
        data, peer = self.held.pop(index)
        self._to_node(data, peer)
        self._after()

    def _to_node(self, data: bytes, source: Peer) -> None:
        """An endpoint's datagram reaches the node (``tests.chaos_workers``: one of its workers)."""
        self.core.receive_datagram(data, source)

    def branch(self) -> str:
        return f"z9hG4bKchaos{next(self._branches)}"

    # -- endpoints' requests ---------------------------------------------------------------------------------

    def _request(self, ep: Endpoint, method: str, uri: str, *, from_uri: str, from_tag: str, to_uri: str,
                 to_tag: str | None, call_id: str, cseq: int, branch: str | None = None, headers=(),
                 body: bytes = b"", contact: bool = True) -> Request:
        hs = [("Via", f"SIP/2.0/UDP {ep.host}:{ep.port};branch={branch or self.branch()};rport"),
              ("Max-Forwards", "70"),
              ("From", f"<{from_uri}>;tag={from_tag}"),
              ("To", f"<{to_uri}>" + (f";tag={to_tag}" if to_tag else "")),
              ("Call-ID", call_id),
              ("CSeq", f"{cseq} {method}")]
        if contact:
            hs.append(("Contact", f"<{ep.contact_uri}>"))
        hs.append(("User-Agent", ep.user_agent))
        hs.extend(headers)
        return make_request(method, uri, hs, body, "application/sdp" if body else None)

    def register_request(self, ep: Endpoint, expires: int, *, star: bool = False, reboot: bool = False,
                         contacts: str | None = None, with_contact: bool = True) -> Request:
        """RFC 3261 §10.2: same Call-ID and a higher CSeq for each refresh; a reboot starts a new Call-ID."""
        if reboot:
            ep.reboots += 1
            ep.reg_call_id = f"reg-{ep.name}-{ep.reboots}"
        ep.reg_cseq += 1
        headers = [("Expires", str(expires))]
        if star:
            headers.insert(0, ("Contact", "*"))
        elif contacts is not None:
            headers.insert(0, ("Contact", contacts))
        return self._request(ep, "REGISTER", f"sip:{ep.domain}", from_uri=ep.aor, from_tag=ep.tag, to_uri=ep.aor,
                             to_tag=None, call_id=ep.reg_call_id, cseq=ep.reg_cseq, headers=headers,
                             contact=with_contact and not star and contacts is None)

    def register(self, ep: Endpoint, expires: int = 600, *, hold: bool = False, reboot: bool = False) -> Request:
        req = self.register_request(ep, expires, reboot=reboot)
        self.send(req, ep, hold=hold)
        return req

    def unregister(self, ep: Endpoint, *, star: bool = False, hold: bool = False) -> Request:
        """Expires 0 for its contact, or ``Contact: *`` (RFC 3261 §10.2.2)."""
        req = self.register_request(ep, 0, star=star)
        self.send(req, ep, hold=hold)
        return req

    def invite(self, caller: Endpoint, callee: Endpoint, media: str = "video", *, hold: bool = False) -> CallSim:
        """A new call. A phone calls a phone by its AOR; a call to the trunk goes out by a pre-loaded
        Route to the ITSP (RFC 3261 §16.6 step 6)."""
        n = next(self._call_ids)
        call_id = f"call-{n}@{caller.host}"
        headers = []
        if callee.is_trunk:
            to_uri = f"sip:+1555000{n}@itsp.example"
            headers.append(("Route", ITSP_ROUTE))
        else:
            to_uri = callee.aor
        offer = MEDIA[media][0]
        req = self._request(caller, "INVITE", to_uri, from_uri=caller.aor, from_tag=caller.tag, to_uri=to_uri,
                            to_tag=None, call_id=call_id, cseq=1, headers=headers, body=offer)
        call = CallSim(call_id, caller, callee, media, req, to_uri, f"{callee.name}-{n}")
        self.calls[call_id] = call
        self.send(req, caller, hold=hold)
        return call

    def ack(self, call: CallSim, *, hold: bool = False) -> Request | None:
        """The caller acknowledges its final answer: a new transaction along the route set for a
        2xx (RFC 3261 §13.2.2.4, with the late offer's answer), hop by hop for a failure (§17.1.1.3)."""
        caller = call.caller
        if call.ok is not None:
            ok = call.ok
            target = str(ok.contacts[0].uri) if ok.contacts else call.to_uri
            routes = list(reversed(ok.header_values("record-route")))
            headers = [("Route", ", ".join(routes))] if routes else []
            req = self._request(caller, "ACK", target, from_uri=caller.aor, from_tag=caller.tag, to_uri=call.to_uri,
                                to_tag=ok.to.tag, call_id=call.call_id, cseq=call.invite.cseq.number,
                                headers=headers, body=MEDIA[call.media][2], contact=False)
        elif call.failure is not None:
            req = self._request(caller, "ACK", call.invite.uri, from_uri=caller.aor, from_tag=caller.tag,
                                to_uri=call.to_uri, to_tag=call.failure.to.tag, call_id=call.call_id,
                                cseq=call.invite.cseq.number, branch=call.invite.top_via.branch,
                                headers=[("Route", r) for r in call.invite.header_values("route")], contact=False)
        else:
            return None
        call.acks += 1
        self.send(req, caller, hold=hold)
        return req

    def cancel(self, call: CallSim, *, hold: bool = False) -> Request:
        """RFC 3261 §9.1: the INVITE's Request-URI, Call-ID, From, To, CSeq number, top Via and Route."""
        inv = call.invite
        headers = [("Via", inv.header("via")), ("Max-Forwards", "70"), ("From", inv.header("from")),
                   ("To", inv.header("to")), ("Call-ID", inv.call_id), ("CSeq", f"{inv.cseq.number} CANCEL")]
        headers += [("Route", r) for r in inv.header_values("route")]
        req = make_request("CANCEL", inv.uri, headers)
        self.send(req, call.caller, hold=hold)
        return req

    def bye(self, call: CallSim, side: str, *, hold: bool = False) -> Request | None:
        """A BYE from ``side`` ("caller" or "callee") along its route set (RFC 3261 §12.2.1.1, §15.1.1);
        every call of this makes a new BYE transaction (a duplicate BYE when the call is over)."""
        if side == "caller":
            ok = call.ok
            if ok is None:
                return None
            target = str(ok.contacts[0].uri) if ok.contacts else call.to_uri
            routes = list(reversed(ok.header_values("record-route")))
            call.caller_cseq += 1
            call.byes_sent += 1
            req = self._request(call.caller, "BYE", target, from_uri=call.caller.aor, from_tag=call.caller.tag,
                                to_uri=call.to_uri, to_tag=ok.to.tag, call_id=call.call_id, cseq=call.caller_cseq,
                                headers=[("Route", ", ".join(routes))] if routes else [], contact=False)
            self.send(req, call.caller, hold=hold)
            return req
        inv = call.callee_2xx
        if inv is None:
            return None
        target = str(inv.contacts[0].uri) if inv.contacts else call.caller.contact_uri
        routes = inv.header_values("record-route")
        call.callee_cseq += 1
        call.byes_sent += 1
        req = self._request(call.callee, "BYE", target, from_uri=call.to_uri, from_tag=call.to_tag,
                            to_uri=call.caller.aor, to_tag=call.caller.tag, call_id=call.call_id,
                            cseq=call.callee_cseq, headers=[("Route", ", ".join(routes))] if routes else [],
                            contact=False)
        self.send(req, call.callee, hold=hold)
        return req

    # -- endpoints' responses ----------------------------------------------------------------------------------

    def respond(self, call: CallSim, status: int, *, index: int = 0) -> Response | None:
        """The callee answers the ``index``-th INVITE the node forwarded it (one final per branch)."""
        if not call.at_callee:
            return None
        inv = call.at_callee[index % len(call.at_callee)]
        branch = inv.top_via.branch
        if branch in call.callee_finals:
            return None  # a UAS answers once; its retransmissions come from `retransmit`
        headers = [("Record-Route", v) for v in inv.header_values("record-route")]
        body = b""
        if status < 300:
            headers.append(("Contact", f"<{call.callee.contact_uri}>"))
            body = MEDIA[call.media][1] if status >= 200 else b""
        resp = make_response(inv, status, to_tag=call.to_tag, headers=headers, body=body,
                             content_type="application/sdp" if body else None)
        if status < 200:
            call.rung = True
        else:
            call.callee_finals[branch] = status
            if status < 300 and call.callee_2xx is None:
                call.callee_2xx = inv
        self.send(resp, call.callee)
        return resp

    def answer_cancel(self, call: CallSim, index: int = 0) -> None:
        """The callee got a CANCEL: 200 for it, and 487 for the INVITE unless that was answered (§9.2)."""
        cancel = call.cancels[index % len(call.cancels)]
        branch = cancel.top_via.branch
        call.cancels_answered.add(branch)
        self.send(make_response(cancel, 200, to_tag=call.to_tag), call.callee)
        inv = next((r for r in call.at_callee if r.top_via.branch == branch), None)
        if inv is not None and branch not in call.callee_finals:
            call.callee_finals[branch] = 487
            self.send(make_response(inv, 487, to_tag=call.to_tag), call.callee)

    def answer_bye(self, index: int = 0, status: int = 200) -> None:
        """The end that got a BYE answers it (481 when it no longer knows the dialog)."""
        pending = self.byes.pop(index % len(self.byes))
        self.send(make_response(pending.request, status), pending.to)

    def progress(self, call: CallSim, side: str = "caller") -> None:
        """The next step of an ordinary call: ring, answer, ACK, hang up, answer the BYE. Chaos
        tests mix it in so that whole call lives happen among the disorder."""
        mine = [i for i, b in enumerate(self.byes) if b.request.call_id == call.call_id]
        if call.at_callee and not call.callee_finals:
            self.respond(call, 200 if call.rung else 180)
        elif (call.ok or call.failure) and not call.acks:
            self.ack(call)
        elif call.ok and not call.byes_sent:
            self.bye(call, side)
        elif mine:
            self.answer_bye(mine[0])

    # -- small queries for tests --------------------------------------------------------------------------------

    def endpoint(self, name: str) -> Endpoint:
        return next(e for e in self.endpoints if e.name == name)

    def in_use(self) -> dict[str, int]:
        return {lic: self.ledger.in_use(lic) for lic in POOLS}
