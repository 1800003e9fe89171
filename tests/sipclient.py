"""A tiny asyncio SIP user agent for tests: UDP or TCP, loopback only.

It builds requests and responses with the codec, keeps what it receives in a buffer and lets a
test ``expect`` the next matching message. Just enough UA logic for calls through a proxy:
dialog route sets from Record-Route (RFC 3261 §12.1), ACK and BYE along them.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field

from meter.codecs.sip import (
    Request, Response, SIPError, StreamReader, make_request, make_response, new_branch, new_tag, parse,
)
from meter.sip.hooks import ALLOW, NoMetering, Verdict

SDP_OFFER = (
    b"v=0\r\no=alice 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    b"m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\nm=video 40002 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n"
)
SDP_ANSWER = (
    b"v=0\r\no=bob 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    b"m=audio 41000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\nm=video 41002 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n"
)


@dataclass
class Dialog:
    """RFC 3261 §12: what a UA keeps to send requests inside a dialog."""

    call_id: str
    local_tag: str
    remote_tag: str | None
    local_uri: str
    remote_uri: str
    remote_target: str
    route_set: list[str] = field(default_factory=list)
    cseq: int = 1
    invite: Request | None = None


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, ua: "SipUA") -> None:
        self.ua = ua

    def datagram_received(self, data, addr) -> None:
        self.ua._received(data)


class _Tcp(asyncio.Protocol):
    def __init__(self, ua: "SipUA") -> None:
        self.ua = ua
        self.reader = StreamReader()

    def data_received(self, data) -> None:
        try:
            for msg in self.reader.feed(data):
                self.ua._deliver(msg)
        except SIPError as err:
            self.ua.errors.append(err)


class SipUA:
    """One endpoint: ``await SipUA.open("alice", proxy=("127.0.0.1", 5060))``."""

    def __init__(self, user: str, proxy: tuple[str, int], domain: str, transport: str) -> None:
        self.user = user
        self.proxy = proxy
        self.domain = domain
        self.transport = transport
        self.host = "127.0.0.1"
        self.port = 0
        self.inbox: list[Request | Response] = []
        self.errors: list[SIPError] = []
        self.raw: list[bytes] = []
        self._event = asyncio.Event()
        self._cseq = itertools.count(1)
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Transport | None = None
        self.tag = new_tag()

    @classmethod
    async def open(cls, user: str, proxy: tuple[str, int], *, domain: str | None = None,
                   transport: str = "udp", host: str = "127.0.0.1") -> "SipUA":
        """``host``: the local address (UDP), e.g. 127.0.0.2 for a peer a zone knows by address."""
        ua = cls(user, proxy, domain or f"{proxy[0]}:{proxy[1]}", transport)
        loop = asyncio.get_running_loop()
        if transport == "udp":
            ua.host = host
            ua._udp, _ = await loop.create_datagram_endpoint(lambda: _Udp(ua), local_addr=(host, 0))
            ua.port = ua._udp.get_extra_info("sockname")[1]
        else:
            ua._tcp, _ = await loop.create_connection(lambda: _Tcp(ua), proxy[0], proxy[1])
            ua.port = ua._tcp.get_extra_info("sockname")[1]
        return ua

    def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()

    # -- addresses -------------------------------------------------------------------------------------

    @property
    def aor(self) -> str:
        return f"sip:{self.user}@{self.domain}"

    @property
    def contact_uri(self) -> str:
        tp = "" if self.transport == "udp" else f";transport={self.transport}"
        return f"sip:{self.user}@{self.host}:{self.port}{tp}"

    def via(self, branch: str | None = None) -> str:
        return f"SIP/2.0/{self.transport.upper()} {self.host}:{self.port};branch={branch or new_branch()};rport"

    # -- I/O ---------------------------------------------------------------------------------------------

    def send_bytes(self, data: bytes, to: tuple[str, int] | None = None) -> None:
        if self._udp is not None:
            self._udp.sendto(data, to or self.proxy)
        else:
            self._tcp.write(data)

    def send(self, msg: Request | Response, to: tuple[str, int] | None = None) -> None:
        self.send_bytes(msg.to_bytes(), to)

    def _received(self, data: bytes) -> None:
        self.raw.append(data)
        if not data.strip():
            return
        try:
            self._deliver(parse(data))
        except SIPError as err:
            self.errors.append(err)

    def _deliver(self, msg) -> None:
        self.inbox.append(msg)
        self._event.set()

    async def expect(self, *, method: str | None = None, status: int | None = None, cseq_method: str | None = None,
                     min_status: int | None = None, timeout: float = 5.0, call_id: str | None = None):
        """The first buffered or arriving message that matches; others stay buffered."""

        def matches(m) -> bool:
            if call_id is not None and m.call_id != call_id:
                return False
            if method is not None and not (isinstance(m, Request) and m.method == method):
                return False
            if isinstance(m, Response):
                if method is not None:
                    return False
                if status is not None and m.status != status:
                    return False
                if min_status is not None and m.status < min_status:
                    return False
                if cseq_method is not None and m.cseq.method != cseq_method:
                    return False
            elif status is not None or min_status is not None:
                return False
            return True

        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for i, m in enumerate(self.inbox):
                if matches(m):
                    return self.inbox.pop(i)
            left = deadline - loop.time()
            if left <= 0:
                raise AssertionError(
                    f"{self.user}: no message matching method={method} status={status} min_status={min_status} "
                    f"within {timeout}s; inbox: {[repr(m) for m in self.inbox]}")
            self._event.clear()
            try:
                await asyncio.wait_for(self._event.wait(), left)
            except asyncio.TimeoutError:
                pass

    async def final(self, cseq_method: str, *, timeout: float = 5.0, call_id: str | None = None) -> Response:
        return await self.expect(min_status=200, cseq_method=cseq_method, timeout=timeout, call_id=call_id)

    # -- requests ----------------------------------------------------------------------------------------

    def request(self, method: str, uri: str, *, to: str | None = None, to_tag: str | None = None,
                call_id: str | None = None, cseq: int | None = None, headers=(), body: bytes = b"",
                content_type: str | None = None, contact: bool = True, route: list[str] = ()) -> Request:
        to_value = f"<{to or uri}>" + (f";tag={to_tag}" if to_tag else "")
        hs = [
            ("Via", self.via()),
            ("Max-Forwards", "70"),
            ("From", f"<{self.aor}>;tag={self.tag}"),
            ("To", to_value),
            ("Call-ID", call_id or f"{new_tag()}@{self.host}"),
            ("CSeq", f"{cseq if cseq is not None else next(self._cseq)} {method}"),
        ]
        if route:
            hs.append(("Route", ", ".join(route)))
        if contact:
            hs.append(("Contact", f"<{self.contact_uri}>"))
        hs.append(("User-Agent", f"sipclient-{self.user}"))
        hs.extend(headers)
        return make_request(method, uri, hs, body, content_type)

    async def register(self, *, expires: int = 60, registrar: str | None = None, contact: str | None = None,
                       extra=(), timeout: float = 5.0, password: str | None = None,
                       algorithm: str | None = None) -> Response:
        """REGISTER; with ``password``, answer a 401/407 digest challenge once (RFC 3261 §22.2),
        picking ``algorithm`` among the challenges (default: the first offered)."""
        headers = [("Expires", str(expires)), *extra]
        uri = registrar or f"sip:{self.domain}"
        call_id = f"{new_tag()}@{self.host}"

        def build(auth=()):
            return self.request("REGISTER", uri, to=self.aor, contact=contact is None, call_id=call_id,
                                headers=[*headers, *auth] if contact is None else [("Contact", contact), *headers, *auth])

        req = build()
        self.send(req)
        resp = await self.final("REGISTER", timeout=timeout, call_id=call_id)
        if password is None or resp.status not in (401, 407):
            return resp
        self.send(build([digest_answer(resp, self.user, password, "REGISTER", uri, algorithm)]))
        return await self.final("REGISTER", timeout=timeout, call_id=call_id)

    def invite(self, callee: str, *, sdp: bytes = SDP_OFFER) -> Request:
        req = self.request("INVITE", callee, body=sdp, content_type="application/sdp")
        self.send(req)
        return req

    def dialog_from_response(self, invite: Request, resp: Response) -> Dialog:
        """UAC side (RFC 3261 §12.1.2): route set = Record-Route reversed, target = Contact."""
        rr = resp.header_values("record-route")
        target = resp.contacts[0].uri if resp.contacts else invite.request_uri
        return Dialog(invite.call_id, self.tag, resp.to.tag, self.aor, str(invite.to.uri),
                      str(target), list(reversed(rr)), invite.cseq.number, invite)

    def dialog_from_request(self, invite: Request, local_tag: str) -> Dialog:
        """UAS side (RFC 3261 §12.1.1): route set = Record-Route as is, target = Contact."""
        rr = invite.header_values("record-route")
        target = invite.contacts[0].uri
        return Dialog(invite.call_id, local_tag, invite.from_.tag, str(invite.to.uri), str(invite.from_.uri),
                      str(target), list(rr), 0, invite)

    def in_dialog(self, dialog: Dialog, method: str, *, cseq: int | None = None, body: bytes = b"",
                  content_type: str | None = None, branch: str | None = None) -> Request:
        if cseq is None:
            dialog.cseq += 1
            cseq = dialog.cseq
        hs = [
            ("Via", self.via(branch)),
            ("Max-Forwards", "70"),
            ("From", f"<{dialog.local_uri}>;tag={dialog.local_tag}"),
            ("To", f"<{dialog.remote_uri}>" + (f";tag={dialog.remote_tag}" if dialog.remote_tag else "")),
            ("Call-ID", dialog.call_id),
            ("CSeq", f"{cseq} {method}"),
        ]
        if dialog.route_set:
            hs.append(("Route", ", ".join(dialog.route_set)))
        return make_request(method, dialog.remote_target, hs, body, content_type)

    async def hang_up(self, dialog: Dialog, callee: "SipUA") -> None:
        """BYE along the dialog; ``callee`` answers it 200 and the 200 comes back (RFC 3261 §15.1)."""
        self.send(self.in_dialog(dialog, "BYE"))
        at_callee = await callee.expect(method="BYE")
        callee.reply(at_callee, 200, record_route=False)
        final = await self.final("BYE")
        assert final.status == 200, final

    def ack_2xx(self, dialog: Dialog) -> Request:
        ack = self.in_dialog(dialog, "ACK", cseq=dialog.invite.cseq.number)
        self.send(ack)
        return ack

    def cancel(self, invite: Request) -> Request:
        """RFC 3261 §9.1: same Request-URI, Call-ID, From, To, CSeq number and top Via as the INVITE."""
        hs = [("Via", invite.header("via")), ("Max-Forwards", "70"), ("From", invite.header("from")),
              ("To", invite.header("to")), ("Call-ID", invite.call_id), ("CSeq", f"{invite.cseq.number} CANCEL")]
        req = make_request("CANCEL", invite.uri, hs)
        self.send(req)
        return req

    def ack_non2xx(self, invite: Request, resp: Response) -> None:
        """RFC 3261 §17.1.1.3: ACK for a non-2xx final, same branch as the INVITE."""
        hs = [("Via", invite.header("via")), ("Max-Forwards", "70"), ("From", invite.header("from")),
              ("To", resp.header("to")), ("Call-ID", invite.call_id), ("CSeq", f"{invite.cseq.number} ACK")]
        self.send(make_request("ACK", invite.uri, hs))

    # -- answering -----------------------------------------------------------------------------------------

    def reply(self, req: Request, status: int, *, to_tag: str | None = None, body: bytes = b"",
              content_type: str | None = None, contact: bool = False, record_route: bool = True,
              headers=()) -> Response:
        extra = list(headers)
        headers = []
        if record_route:
            headers += [("Record-Route", v) for v in req.header_values("record-route")]
        if contact:
            headers.append(("Contact", f"<{self.contact_uri}>"))
        headers += extra
        resp = make_response(req, status, to_tag=to_tag, headers=headers, body=body, content_type=content_type)
        self.send(resp, self._response_target(req))
        return resp

    def _response_target(self, req: Request) -> tuple[str, int]:
        # RFC 3261 §18.2.2 / RFC 3581: received + rport of the top Via.
        via = req.top_via
        return (via.received or via.host, via.rport or via.port or 5060)


def digest_answer(challenge: Response, user: str, password: str, method: str, uri: str,
                  algorithm: str | None = None, nc: int = 1) -> tuple[str, str]:
    """The (Proxy-)Authorization header answering a 401/407 (RFC 3261 §22.2-22.3, RFC 7616 §3.4,
    qop=auth), computed here from scratch so the node's own digest code is not what checks itself."""
    import hashlib
    import re

    name = "WWW-Authenticate" if challenge.status == 401 else "Proxy-Authenticate"
    offers = challenge.header_values(name)
    chosen = next(o for o in offers if algorithm is None or f"algorithm={algorithm}," in o)
    params = dict(re.findall(r'(\w+)="?([^",]*)"?', chosen.partition(" ")[2]))
    alg = params.get("algorithm", "MD5")
    hfun = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}[alg]

    def hx(text: str) -> str:
        return hfun(text.encode()).hexdigest()

    cnonce, count = new_tag(), f"{nc:08x}"
    realm, nonce, ha2 = params["realm"], params["nonce"], hx(f"{method}:{uri}")
    ha1 = hx(f"{user}:{realm}:{password}")
    value = f'Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{uri}", algorithm={alg}, '
    if "qop" in params:
        value += f'response="{hx(f"{ha1}:{nonce}:{count}:{cnonce}:auth:{ha2}")}", qop=auth, nc={count}, cnonce="{cnonce}"'
    else:  # RFC 2069 style, as a challenge without qop asks
        value += f'response="{hx(f"{ha1}:{nonce}:{ha2}")}"'
    return ("Authorization" if challenge.status == 401 else "Proxy-Authorization", value)


# -- sans-I/O helpers for unit tests of the core (no sockets) ----------------------------------------------


class FakeNet:
    """Captures what the core sends: ``(parsed message, peer)`` in order."""

    def __init__(self) -> None:
        self.sent: list[tuple[Request | Response, object]] = []

    def send(self, data: bytes, peer) -> None:
        self.sent.append((parse(data), peer))

    def take(self) -> list[tuple[Request | Response, object]]:
        out, self.sent = self.sent, []
        return out

    def only(self):
        """Exactly one message was sent; return it and its peer."""
        out = self.take()
        assert len(out) == 1, f"expected one message, got {[(repr(m), str(p)) for m, p in out]}"
        return out[0]


class Phone:
    """A sans-I/O endpoint for unit tests: builds requests and responses from a fixed address."""

    def __init__(self, user: str, host: str, port: int, domain: str = "lab.test", transport: str = "udp") -> None:
        self.user, self.host, self.port, self.domain, self.transport = user, host, port, domain, transport
        self.tag = new_tag()
        self._cseq = itertools.count(1)

    @property
    def aor(self) -> str:
        return f"sip:{self.user}@{self.domain}"

    @property
    def contact_uri(self) -> str:
        return f"sip:{self.user}@{self.host}:{self.port}"

    @property
    def peer(self):
        from meter.sip.peer import Peer

        return Peer(self.transport, self.host, self.port)

    def request(self, method: str, uri: str, *, to: str | None = None, to_tag: str | None = None,
                call_id: str | None = None, cseq: int | None = None, headers=(), body: bytes = b"",
                branch: str | None = None, contact: bool = True, max_forwards: int | None = 70,
                from_tag: str | None = None) -> Request:
        hs = [("Via", f"SIP/2.0/{self.transport.upper()} {self.host}:{self.port};branch={branch or new_branch()};rport")]
        if max_forwards is not None:
            hs.append(("Max-Forwards", str(max_forwards)))
        hs += [
            ("From", f"<{self.aor}>;tag={from_tag or self.tag}"),
            ("To", f"<{to or uri}>" + (f";tag={to_tag}" if to_tag else "")),
            ("Call-ID", call_id or f"{new_tag()}@{self.host}"),
            ("CSeq", f"{cseq if cseq is not None else next(self._cseq)} {method}"),
        ]
        if contact:
            hs.append(("Contact", f"<{self.contact_uri}>"))
        hs.extend(headers)
        return make_request(method, uri, hs, body, "application/sdp" if body else None)

    def register(self, expires: int | None = 3600, *, contact: str | None = None, headers=(), call_id: str = "",
                 cseq: int | None = None) -> Request:
        hs = list(headers)
        if expires is not None:
            hs.append(("Expires", str(expires)))
        if contact is not None:
            hs.append(("Contact", contact))
        return self.request("REGISTER", f"sip:{self.domain}", to=self.aor, headers=hs, contact=contact is None,
                            call_id=call_id or f"reg-{self.user}@{self.host}", cseq=cseq)

    def answer(self, req: Request, status: int, *, to_tag: str | None = None, body: bytes = b"",
               headers=()) -> Response:
        extra = list(headers)
        headers = [("Record-Route", v) for v in req.header_values("record-route")]
        if 200 <= status < 300 or (status > 100 and status < 200):
            headers.append(("Contact", f"<{self.contact_uri}>"))
        headers += extra
        return make_response(req, status, to_tag=to_tag, headers=headers, body=body,
                             content_type="application/sdp" if body else None)


class Recorder(NoMetering):
    """Metering hooks (``meter.sip.hooks.SipHooks``) that record every call and can refuse or fail on demand."""

    def __init__(self, invite: Verdict = ALLOW, register: Verdict = ALLOW, explode: str = "") -> None:
        self.log: list[tuple] = []
        self._invite, self._register, self._explode = invite, register, explode

    def _maybe_explode(self, name):
        if self._explode == name:
            raise RuntimeError("hook bug")

    def on_register(self, info):
        self._maybe_explode("on_register")
        self.log.append(("register", info.aor, info.expires))
        return self._register

    def on_register_failed(self, aor, call_id, cause):
        self.log.append(("register_failed", aor, cause))

    def on_bindings(self, aor, bindings, user_agent, source, now):
        self.log.append(("bindings", aor, tuple(b.contact for b in bindings)))

    def on_invite(self, info):
        self._maybe_explode("on_invite")
        self.log.append(("invite", info.call_id, info.callee_registered, info.offer_sdp))
        return self._invite

    def on_call_answered(self, call_id, offer, answer):
        self.log.append(("answered", call_id, offer, answer))

    def on_call_confirmed(self, call_id):
        self.log.append(("confirmed", call_id))

    def on_call_ended(self, call_id, cause):
        self.log.append(("ended", call_id, cause))

    def events(self, kind):
        return [e for e in self.log if e[0] == kind]

    def assert_every_allowed_call_ended_once(self):
        allowed = [e[1] for e in self.events("invite")] if self._invite.allowed else []
        ended = [e[1] for e in self.events("ended")]
        assert sorted(ended) == sorted(allowed), self.log
        for call_id in allowed:  # order: invite < answered < confirmed < ended
            kinds = [e[0] for e in self.log if len(e) > 1 and e[1] == call_id]
            assert kinds[0] == "invite" and kinds[-1] == "ended", kinds
            assert kinds.count("answered") <= 1 and kinds.count("confirmed") <= 1, kinds


# -- a SipCore on a fake network and clock, with two phones (unit tests of the node) -------------------------

LAB_NODE_HOST, LAB_NODE_PORT = "10.0.0.1", 5060
LAB_RR = "<sip:10.0.0.1:5060;lr>"
LAB_OFFER = b"v=0\r\no=a 1 1 IN IP4 10.0.0.2\r\ns=-\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"
LAB_ANSWER = b"v=0\r\no=b 1 1 IN IP4 10.0.0.3\r\ns=-\r\nt=0 0\r\nm=audio 5000 RTP/AVP 0\r\n"


class CoreLab:
    """A sans-I/O SipCore at 10.0.0.1:5060 (inline mode: upstream 10.0.0.50:5060), alice at
    10.0.0.2:5062 and bob at 10.0.0.3:5064; ``feed`` delivers, ``net`` captures what the node sends."""

    def __init__(self, mode="standalone", policy=None, admission=None, limits=None, **overrides):
        from meter.sip.clock import FakeClock
        from meter.sip.core import SipCore
        from meter.sip.peer import Peer
        from meter.sip.routing import Advertised
        from meter.sip.settings import SipSettings

        self.upstream = Peer("udp", "10.0.0.50", 5060)
        self.clock = FakeClock()
        self.net = FakeNet()
        self.policy = policy or Recorder()
        kw = dict(host=LAB_NODE_HOST, port=LAB_NODE_PORT, mode=mode, t1=0.5)
        if mode == "inline":
            kw["upstream"] = "10.0.0.50:5060"
        kw.update(overrides)
        self.core = SipCore(SipSettings(**kw), clock=self.clock, send=self.net.send,
                            advertised=Advertised(LAB_NODE_HOST, LAB_NODE_PORT), hooks=self.policy,
                            local_names=[f"{LAB_NODE_HOST}:{LAB_NODE_PORT}"],
                            upstream=self.upstream if mode == "inline" else None, admission=admission,
                            limits=limits)
        self.core.start()
        self.alice = Phone("alice", "10.0.0.2", 5062)
        self.bob = Phone("bob", "10.0.0.3", 5064)

    def feed(self, msg, source):
        data = msg.to_bytes() if not isinstance(msg, bytes) else msg
        self.core.receive_datagram(data, source.peer if isinstance(source, Phone) else source)

    def register(self, phone, expires=3600):
        self.feed(phone.register(expires), phone)
        resp, peer = self.net.only()
        assert resp.status == 200, resp
        return resp

    def sent_to(self, peer) -> list:
        return [m for m, p in self.net.take() if p.address == peer.address]

    def take_one(self, phone):
        """Exactly one message went to ``phone`` (and whatever else went elsewhere is dropped)."""
        msgs = self.net.take()
        mine = [m for m, p in msgs if p.address == (phone.host, phone.port)]
        assert len(mine) == 1, [(repr(m), str(p)) for m, p in msgs]
        return mine[0]

    def setup_call(self, *, body=LAB_OFFER, extra_headers=()):
        """alice INVITEs bob (registered); returns (alice's INVITE, what bob received)."""
        invite = self.alice.request("INVITE", "sip:bob@lab.test", body=body, headers=extra_headers)
        self.feed(invite, self.alice)
        msgs = self.net.take()
        trying = [m for m, p in msgs if isinstance(m, Response)]
        assert [r.status for r in trying] == [100], msgs
        at_bob = [m for m, p in msgs if isinstance(m, Request)]
        assert len(at_bob) == 1
        return invite, at_bob[0]

    def ack(self, invite, ok, phone=None):
        """The caller's ACK for a 2xx, along the route set (RFC 3261 §13.2.2.4)."""
        phone = phone or self.alice
        routes = list(reversed(ok.header_values("record-route")))
        headers = [("Route", ", ".join(routes))] if routes else []
        ack = phone.request("ACK", str(ok.contacts[0].uri), to=str(invite.to.uri), to_tag=ok.to.tag,
                            call_id=invite.call_id, cseq=invite.cseq.number, headers=headers)
        self.feed(ack, phone)
        return ack
