"""The node's CPU cost per SIP message, without sockets: ``python -m bench.hotpath``.

The load benchmarks (``bench.run``) share 2 cores between the generator, the node and its peers,
so the node's own cost hides in scheduler noise. Here the real SIP core, the real metering policy
and the latency wrapper run in one process on one event loop, and pre-built datagrams are handed
to them as the UDP endpoint would; what the node sends is kept in a list. The figure is process
CPU time per message (median over repeats), and ``--profile`` prints where it goes.

Flows (each message counted once):
- ``register``: a new endpoint's REGISTER to the node standalone (registrar, room/desktop charge).
- ``refresh``: the same endpoints refreshing (CSeq + 1, same Call-ID).
- ``inline``: REGISTER forwarded upstream + the upstream's 200 OK relayed back (2 messages).
- ``call``: INVITE, 180, 200, ACK, BYE, 200 through the node to a registered callee (6 messages).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import pstats
import re
import statistics
import time

from bench.devices import population
from bench.sipmsg import register

CALLER = ("127.0.0.2", 5070)  # a third-party SIP peer (zone below): its video calls take RMS
ENDPOINTS = ("127.0.0.1", 5080)
UPSTREAM = ("127.0.0.3", 5090)

_VIA_RE = re.compile(rb"^(Via|v):[^\r\n]*\r\n", re.I | re.M)
_CONTACT_RE = re.compile(rb"^(Contact|m):[^\r\n]*\r\n", re.I | re.M)


def _config(mode: str):
    from meter import config

    text = f"""
[node]
name = "hotpath"
state_dir = "{_state_dir()}"
[licensing]
enforcement = "observe"
[sip]
host = "127.0.0.1"
port = 5060
mode = "{mode}"
aliases = ["bench.meter.test"]
{'upstream = "%s:%d"' % UPSTREAM if mode == "inline" else ""}
[log]
level = "warning"
[[zones]]
name = "callers"
kind = "third_party_sip"
peers = ["{CALLER[0]}/32"]
"""
    return config.parse(text, "<hotpath>")


def _state_dir() -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="meter-hotpath-")


LAST: "Harness | None" = None  # the latest harness, for the smoke test to look inside


class Harness:
    """One node core with its metering, fed datagrams by hand."""

    def __init__(self, mode: str):
        global LAST
        LAST = self
        from meter.admin.latency import LatencyHistogram, TimedReceiver
        from meter.app import build_metering
        from meter.metering.sip import SipMetering
        from meter.sip.clock import LoopClock
        from meter.sip.core import SipCore
        from meter.sip.peer import Peer
        from meter.sip.routing import Advertised

        cfg = _config(mode)
        self.metering = build_metering(cfg, time.time())
        self.sent: list[tuple[bytes, object]] = []
        upstream = Peer("udp", *UPSTREAM) if mode == "inline" else None
        self.core = SipCore(cfg.sip, clock=LoopClock(asyncio.get_running_loop()), send=self._send,
                            advertised=Advertised("127.0.0.1", 5060), hooks=SipMetering(self.metering, inline=mode == "inline"),
                            local_names=["127.0.0.1"], upstream=upstream)
        self.receiver = TimedReceiver(self.core, LatencyHistogram())
        self.Peer = Peer

    def _send(self, data: bytes, peer) -> None:
        self.sent.append((data, peer))

    def feed(self, data: bytes, source: tuple[str, int]) -> None:
        self.receiver.receive_datagram(data, self.Peer("udp", source[0], source[1]))


def _registers(count: int, cseq: int) -> list[bytes]:
    """One REGISTER per endpoint; a new CSeq is a new transaction (its own Via branch), not a resend."""
    devices = population(count)
    return [register(i, devices[i], seq=cseq * count + i, cseq=cseq, via=ENDPOINTS, contact="%s:%d" % ENDPOINTS)
            for i in range(count)]


def _upstream_ok(forwarded: bytes) -> bytes:
    """What a registrar answers to a forwarded REGISTER: its Vias, From/To/Call-ID/CSeq, Contact."""
    head = forwarded.split(b"\r\n\r\n", 1)[0]
    lines = head.split(b"\r\n")[1:]
    keep = [line for line in lines if line.split(b":", 1)[0].strip().lower() in
            (b"via", b"v", b"from", b"f", b"call-id", b"i", b"cseq", b"contact", b"m")]
    to = next(line for line in lines if line.lower().startswith((b"to:", b"t:")))
    keep.append(to + b";tag=up1")
    return b"SIP/2.0 200 OK\r\n" + b"\r\n".join(keep) + b"\r\nContent-Length: 0\r\n\r\n"


_SDP = (b"v=0\r\no=- 1 1 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.2\r\nt=0 0\r\n"
        b"m=audio 4000 RTP/AVP 0\r\nm=video 4002 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n")


def _request(method: str, n: int, cseq: int, *, to_tag: str = "", route: bytes = b"", body: bytes = b"") -> bytes:
    user = "bench%06d" % n
    # In-dialog requests go to the callee's Contact (its remote target), via the Record-Route.
    target = f"callee@{ENDPOINTS[0]}:{ENDPOINTS[1]}" if to_tag else f"{user}@bench.meter.test"
    head = (f"{method} sip:{target} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {CALLER[0]}:{CALLER[1]};branch=z9hG4bKc{n}x{cseq}{method}\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:caller@peer.test>;tag=c{n}\r\n"
            f"To: <sip:{user}@bench.meter.test>{';tag=' + to_tag if to_tag else ''}\r\n"
            f"Call-ID: call{n}@peer.test\r\nCSeq: {cseq} {method}\r\n"
            f"Contact: <sip:caller@{CALLER[0]}:{CALLER[1]}>\r\n").encode()
    if route:
        head += b"Route: " + route + b"\r\n"
    if body:
        head += b"Content-Type: application/sdp\r\n"
    return head + b"Content-Length: %d\r\n\r\n" % len(body) + body


def _answer(request: bytes, status: bytes, *, to_tag: bytes = b"callee", body: bytes = b"") -> bytes:
    """The callee's response to a request the node forwarded to it."""
    lines = request.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]
    out = [b"SIP/2.0 " + status]
    for line in lines:
        name = line.split(b":", 1)[0].strip().lower()
        if name in (b"via", b"v", b"from", b"f", b"call-id", b"i", b"cseq", b"record-route"):
            out.append(line)
        elif name in (b"to", b"t"):
            out.append(line if b"tag=" in line else line + b";tag=" + to_tag)
    out.append(b"Contact: <sip:callee@%s:%d>" % (ENDPOINTS[0].encode(), ENDPOINTS[1]))
    if body:
        out.append(b"Content-Type: application/sdp")
    out.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(out) + b"\r\n\r\n" + body


def _record_route(forwarded: bytes) -> bytes:
    match = re.search(rb"^Record-Route: ([^\r\n]*)\r\n", forwarded, re.M | re.I)
    return match.group(1) if match else b""


def _calls(h: Harness, count: int) -> None:
    """Each endpoint is called once: INVITE, 180, 200 (SDP), ACK, BYE, 200, all via the node."""
    for n in range(count):
        h.sent.clear()
        h.feed(_request("INVITE", n, 1, body=_SDP), CALLER)
        invite = next(data for data, peer in h.sent if data.startswith(b"INVITE"))
        route = _record_route(invite)
        h.feed(_answer(invite, b"180 Ringing"), ENDPOINTS)
        h.feed(_answer(invite, b"200 OK", body=_SDP), ENDPOINTS)
        h.feed(_request("ACK", n, 1, to_tag="callee", route=route), CALLER)
        h.sent.clear()
        h.feed(_request("BYE", n, 2, to_tag="callee", route=route), CALLER)
        bye = next(data for data, peer in h.sent if data.startswith(b"BYE"))
        h.feed(_answer(bye, b"200 OK"), ENDPOINTS)


def _cpu(fn) -> float:
    """CPU seconds of ``fn`` under the node's own collector policy (meter.gc_timer): what was
    built before the load is frozen, and no automatic full pass runs (the node times those)."""
    from meter.gc_timer import FullCollections

    collections = FullCollections(asyncio.get_running_loop(), 3600)  # no timed pass within a run
    collections.start()
    try:
        start = time.process_time()
        fn()
        return time.process_time() - start
    finally:
        collections.close()


PRELOAD = 0  # --registrations: other endpoints registered before each run (cost must stay flat)
GAP = 0.0  # --gap-ms: seconds between messages, each handled in its own loop wake-up (0: back to back)


async def _spaced(h: Harness, messages: list[bytes]) -> float:
    """CPU seconds to handle ``messages`` GAP seconds apart, as a node in service at a low rate
    does (one datagram per wake-up); the sleeps themselves cost no CPU time of this process."""
    from meter.gc_timer import FullCollections

    collections = FullCollections(asyncio.get_running_loop(), 3600)
    collections.start()
    try:
        start = time.process_time()
        for data in messages:
            h.feed(data, ENDPOINTS)
            await asyncio.sleep(GAP)
        return time.process_time() - start
    finally:
        collections.close()


def _preload(h: Harness, count: int) -> None:
    """Register ``PRELOAD`` endpoints numbered after the measured ones (their own aliases)."""
    if not PRELOAD:
        return
    devices = population(count + PRELOAD)
    for i in range(count, count + PRELOAD):
        h.sent.clear()
        h.feed(register(i, devices[i], seq=10_000_000 + i, cseq=1, via=ENDPOINTS, contact="%s:%d" % ENDPOINTS), ENDPOINTS)
        if h.sent and h.sent[-1][0].startswith(b"REGISTER"):  # inline: the upstream registrar answers
            h.feed(_upstream_ok(h.sent[-1][0]), UPSTREAM)
    h.sent.clear()


async def measure(flow: str, count: int) -> tuple[float, int]:
    """CPU seconds for one run of ``flow`` with ``count`` endpoints, and the messages it handled."""
    h = Harness("inline" if flow == "inline" else "standalone")
    _preload(h, count)
    if flow == "register":
        regs = _registers(count, 1)
        if GAP:
            return await _spaced(h, regs), count
        return _cpu(lambda: [h.feed(r, ENDPOINTS) for r in regs]), count
    if flow == "refresh":
        for r in _registers(count, 1):
            h.feed(r, ENDPOINTS)
        regs = _registers(count, 2)
        if GAP:
            return await _spaced(h, regs), count
        return _cpu(lambda: [h.feed(r, ENDPOINTS) for r in regs]), count
    if flow == "inline":
        regs = _registers(count, 1)

        def run():
            for r in regs:
                h.sent.clear()
                h.feed(r, ENDPOINTS)
                h.feed(_upstream_ok(h.sent[-1][0]), UPSTREAM)
        return _cpu(run), 2 * count
    if flow == "call":
        for r in _registers(count, 1):
            h.feed(r, ENDPOINTS)
        return _cpu(lambda: _calls(h, count)), 6 * count
    raise ValueError(flow)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flows", default="register,refresh,inline,call")
    parser.add_argument("--count", type=int, default=5000, help="endpoints per run (default 5000)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-gc", action="store_true", help="disable the cyclic garbage collector (to see its share)")
    parser.add_argument("--profile", action="store_true", help="print the top functions of one run per flow")
    parser.add_argument("--sort", default="tottime", choices=("tottime", "cumulative"),
                        help="--profile order: own time, or time including callees")
    parser.add_argument("--json", action="store_true", help="print {flow: [us per message, ...]} (for bench.run)")
    parser.add_argument("--codec", choices=("compiled", "python"), default=None,
                        help="SIP parser: the compiled scanner (default when built) or the pure-Python reference")
    parser.add_argument("--gc-stats", action="store_true",
                        help="per flow: tracked objects still alive per message handled (transactions wait out "
                             "RFC 3261 Timer J), and how long one full collection takes with them alive")
    parser.add_argument("--registrations", type=int, default=0,
                        help="register this many other endpoints before each run (per-message cost at scale)")
    parser.add_argument("--gap-ms", type=float, default=0.0,
                        help="register/refresh flows only: this long between messages, each in its own loop "
                             "wake-up (what a node in service at a low rate does; default 0, back to back)")
    args = parser.parse_args(argv)
    global PRELOAD, GAP
    PRELOAD = args.registrations
    GAP = args.gap_ms / 1000
    if GAP and set(args.flows.split(",")) - {"register", "refresh"}:
        parser.error("--gap-ms applies to the register and refresh flows only")
    results: dict[str, list[float]] = {}
    if args.codec is not None:
        from meter.codecs import sip

        if sip.use_codec(args.codec) != args.codec:
            parser.error("the compiled SIP scanner is not built (pip install -e . with a C compiler)")
    import uvloop

    if args.no_gc:
        gc.disable()

    for flow in args.flows.split(","):
        if args.gc_stats:
            per_message, pause, found = uvloop.run(gc_stats(flow, args.count))
            print(f"{flow:9s} {per_message:5.1f} tracked objects alive per message; a full collection then takes "
                  f"{pause * 1000:.1f} ms and finds {found} unreachable ({args.count} endpoints)")
            continue
        if args.profile:
            prof = cProfile.Profile()
            prof.enable()
            uvloop.run(measure(flow, args.count))
            prof.disable()
            print(f"== {flow}")
            pstats.Stats(prof).sort_stats(args.sort).print_stats(25)
            continue
        per_msg = per_message_us(flow, args.count, args.repeats)
        if args.json:
            results[flow] = per_msg
            continue
        print(f"{flow:9s} {statistics.median(per_msg):7.1f} us/message CPU "
              f"(min {min(per_msg):.1f}, max {max(per_msg):.1f}; {args.repeats} runs x {args.count} endpoints)")
    if args.json:
        print(json.dumps(results))
    return 0


async def gc_stats(flow: str, count: int) -> tuple[float, float, int]:
    """What a full garbage collection walks after ``flow``: objects per message, its pause, garbage."""
    gc.collect()
    before = len(gc.get_objects())
    _, messages = await measure(flow, count)
    alive = len(gc.get_objects()) - before  # the transactions' timers still hold them: the loop runs
    start = time.perf_counter()
    found = gc.collect()
    return alive / messages, time.perf_counter() - start, found


def per_message_us(flow: str, count: int, repeats: int) -> list[float]:
    """Microseconds of CPU per message of ``flow``, one figure per repeat (a fresh node each)."""
    import uvloop

    out = []
    for _ in range(repeats):
        seconds, messages = uvloop.run(measure(flow, count))
        out.append(seconds / messages * 1e6)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
