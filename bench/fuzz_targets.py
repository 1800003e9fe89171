"""Fuzz targets, one per codec entry point, shared by both engines of :mod:`bench.fuzz`.

A target takes arbitrary bytes and must raise nothing but its codec's error class (docs/design.md
principle 5: bad input gets a clear answer, never a crash). Anything else is a finding. What a
node does with a message that parsed (read its headers, edit it, serialise it) is exercised too,
since a crash there is as fatal as one in ``parse``.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import Callable

from bench.devices import DEVICES
from bench.services import REPO_DIR

RFC4475_DIRS = (REPO_DIR / "tests" / "data" / "rfc4475",)  # vendored, see its README.md
RFC5118_DIR = REPO_DIR / "tests" / "data" / "rfc5118"  # transcribed, see its README.md


@dataclass(frozen=True)
class Target:
    name: str
    module: str
    """The codec module (imported lazily, so atheris can instrument it first)."""
    what: str
    run: Callable[[object, bytes], None]
    """``run(module, data)``: raises only ``allowed(module)`` on bad input."""
    allowed: Callable[[object], tuple[type, ...]]
    seeds: Callable[[], list[bytes]]

    def available(self) -> bool:
        try:
            return importlib.util.find_spec(self.module) is not None
        except ModuleNotFoundError:
            return False

    def load(self):
        return importlib.import_module(self.module)


# ---- seeds ---------------------------------------------------------------------------------------

_INVITE = (
    "INVITE sip:bench000001@bench.meter.test SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:5062;rport;branch=z9hG4bK-1\r\n"
    "Via: SIP/2.0/TCP [2001:db8::1]:5061;branch=z9hG4bK-2;received=192.0.2.1\r\n"
    "Max-Forwards: 70\r\n"
    "Route: <sip:127.0.0.1:5060;lr>\r\n"
    "Record-Route: <sip:proxy.example;lr>, <sip:[2001:db8::2];lr>\r\n"
    'From: "Room \\"A\\"" <sip:caller@bench.meter.test>;tag=abc\r\n'
    "To: <sip:bench000001@bench.meter.test>\r\n"
    "Call-ID: 1-2@127.0.0.1\r\n"
    "CSeq: 1 INVITE\r\n"
    "Contact: <sip:caller@127.0.0.1:5062;transport=udp>;+sip.instance=\"<urn:uuid:1>\"\r\n"
    "Supported: timer, replaces\r\n"
    "Session-Expires: 1800;refresher=uac\r\n"
    "User-Agent: TANDBERG/529 (ce9.15.3.22) Cisco-RoomKit\r\n"
    "Content-Type: application/sdp\r\n"
    "Content-Length: {length}\r\n\r\n{body}"
)

SDP_SEEDS = [
    b"v=0\r\no=tandberg 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nb=AS:6000\r\nt=0 0\r\n"
    b"m=audio 6000 RTP/AVP 108 0 101\r\na=rtpmap:108 MP4A-LATM/90000\r\na=rtpmap:101 telephone-event/8000\r\n"
    b"a=sendrecv\r\nm=video 6002 RTP/AVP 97\r\nb=TIAS:6000000\r\na=rtpmap:97 H264/90000\r\n"
    b"a=fmtp:97 profile-level-id=42e016;max-mbps=490000;packetization-mode=1\r\na=content:main\r\n",
    b"v=0\r\no=- 0 0 IN IP6 ::1\r\ns=call\r\nc=IN IP6 ::1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\na=sendonly\r\n"
    b"m=video 0 RTP/AVP 31\r\nm=application 5000 UDP/BFCP *\r\na=floorctrl:c-s\r\n",
]


def sip_seeds() -> list[bytes]:
    from bench import sipmsg

    out = []
    for d in RFC4475_DIRS:
        if d.is_dir():
            out += [p.read_bytes() for p in sorted(d.glob("*.dat"))]
            break
    out += [p.read_bytes() for p in sorted(RFC5118_DIR.glob("*.dat"))]
    body = SDP_SEEDS[0].decode()
    out.append(_INVITE.format(length=len(body), body=body).encode())
    for i, device in enumerate(DEVICES[:4]):
        out.append(sipmsg.register(i, device, seq=i, cseq=1, via=("127.0.0.1", 5062), contact="127.0.0.1:5999"))
    out.append(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bKbm1;received=127.0.0.1\r\n"
               b"From: <sip:a@b>;tag=1\r\nTo: <sip:a@b>;tag=2\r\nCall-ID: x\r\nCSeq: 1 REGISTER\r\n"
               b"Contact: <sip:a@127.0.0.1:5999>;expires=3600\r\nContent-Length: 0\r\n\r\n")
    return out


def ras_seeds() -> list[bytes]:
    """Valid RAS messages from the codec's own encoders; a signature it no longer has is skipped."""
    try:
        ras = importlib.import_module("meter.codecs.ras")
    except ImportError:
        return []
    guid = bytes(range(16))
    ras_addr, call_addr = ("127.0.0.1", 1719), ("127.0.0.1", 1720)
    room1, room2, e164 = ("h323-ID", "room1"), ("h323-ID", "room2"), ("dialledDigits", "1001")
    makers = [
        lambda: ras.gatekeeper_request(1, ras_address=ras_addr, aliases=[room1]),
        lambda: ras.registration_request(2, call_signal_addresses=[call_addr], ras_addresses=[ras_addr],
                                         aliases=[room1, e164, ("url-ID", "h323:room1@lab.test"),
                                                  ("transportID", "127.0.0.1:1720")]),
        lambda: ras.registration_confirm(2, endpoint_id="EP1", aliases=[room1], time_to_live=300),
        lambda: ras.keep_alive_request(3, endpoint_id="EP1", call_signal_addresses=[call_addr],
                                       ras_addresses=[ras_addr]),
        lambda: ras.admission_request(4, endpoint_id="EP1", src_aliases=[room1], call_identifier=guid,
                                      conference_id=guid, bandwidth=7680, call_reference_value=5,
                                      dest_aliases=[room2]),
        lambda: ras.admission_confirm(4, bandwidth=7680, dest_call_signal_address=call_addr),
        lambda: ras.disengage_request(5, endpoint_id="EP1", conference_id=guid, call_identifier=guid,
                                      call_reference_value=5),
        lambda: ras.location_request(6, dest_aliases=[room2], reply_address=ras_addr),
        lambda: ras.unregistration_request(7, call_signal_addresses=[call_addr]),
        lambda: ras.registration_reject(8),
        lambda: ras.admission_reject(9),
        lambda: ras.disengage_confirm(10),
    ]
    out = []
    for make in makers:
        try:
            out.append(make())
        except Exception:  # an encoder whose signature moved: one seed fewer, not a broken fuzzer
            continue
    return out


# ---- what each target does ------------------------------------------------------------------------


def _exercise_sip(sip, msg) -> None:
    """Read and edit a parsed message the way the node does; only SIPError may come out."""
    readers = ("vias", "top_via", "from_", "to", "contacts", "cseq", "call_id", "expires", "max_forwards",
               "routes", "record_routes", "user_agent", "content_type", "is_star_contact")
    for name in readers:
        try:
            getattr(msg, name)
        except sip.SIPError:
            pass
    if isinstance(msg, sip.Request):
        try:
            msg.request_uri
        except sip.SIPError:
            pass
    for edit in (lambda: msg.decrement_max_forwards(), lambda: msg.pop_route(),
                 lambda: msg.push_via("SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKfuzz"),
                 lambda: msg.add_record_route("<sip:127.0.0.1:5060;lr>")):
        try:
            edit()
        except sip.SIPError:
            pass
    out = msg.to_bytes()
    if not isinstance(out, bytes):
        raise AssertionError(f"to_bytes returned {type(out).__name__}")


def run_sip(sip, data: bytes) -> None:
    _exercise_sip(sip, sip.parse(data))


def run_stream(sip, data: bytes) -> None:
    """The same bytes through StreamReader, cut into chunks at points the data itself picks."""
    reader = sip.StreamReader()
    cuts = sorted({b % (len(data) + 1) for b in data[:4]}) + [len(data)]
    start = 0
    for end in cuts:
        chunk = data[start:end]
        start = end
        for attempt in range(2):
            try:
                for msg in reader.feed(chunk if attempt == 0 else b""):
                    _exercise_sip(sip, msg)
                break
            except sip.SIPError as exc:
                if exc.fatal:
                    reader = sip.StreamReader()
                    break
                # non-fatal: the messages framed before it come out of the next feed(b"")


# ---- the two SIP codecs side by side (issue 11: the compiled scanner changes nothing observable) ----

_NAMES = ("Via", "v", "From", "To", "Call-ID", "CSeq", "Contact", "m", "Max-Forwards", "Expires", "Route",
          "Record-Route", "Content-Length", "l", "Content-Type", "Supported", "Require", "Proxy-Require",
          "User-Agent", "Server", "Allow", "Timestamp", "Authorization", "Subject", "X-Unknown")


def _shown(value) -> object:
    """A value in a form that compares everything a caller can see (``str()`` of parsed values too:
    a URI keeps the text it came from, which dataclass equality leaves out)."""
    if isinstance(value, list):
        return [_shown(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_shown(v) for v in value)
    if isinstance(value, (bytes, str, int, bool, type(None))):
        return value
    uri = getattr(value, "uri", None)
    return (type(value).__name__, repr(value), str(value), str(uri) if uri is not None else None)


def observe_sip(sip, data: bytes, codec: str) -> list:
    """Everything a node can observe of ``data`` with one codec: the outcome of ``parse`` (or the
    error's status, reason and half-parsed message), every accessor, the answer built to it, the
    proxy edits and the serialised bytes before and after them."""
    sip.use_codec(codec)
    out: list = []

    def see(name, fn):
        try:
            out.append((name, _shown(fn())))
        except sip.SIPError as e:
            out.append((name, "SIPError", e.status, e.reason))

    try:
        msg = sip.parse(data)
        out.append(("parse", "ok"))
    except sip.SIPError as e:
        out.append(("parse", "SIPError", e.status, e.reason, e.fatal, e.message is not None))
        msg = e.message
        if msg is None:
            return out
    request = isinstance(msg, sip.Request)
    out.append(("type", type(msg).__name__))
    if request:
        see("method", lambda: msg.method)
        see("uri", lambda: msg.uri)
        see("request_uri", lambda: msg.request_uri)
    else:
        see("status", lambda: msg.status)
        see("reason", lambda: msg.reason)
    see("version", lambda: msg.version)
    see("headers", lambda: msg.headers)
    for name in _NAMES:
        see("header " + name, lambda: msg.header(name))
        see("header_values " + name, lambda: msg.header_values(name))
        see("has_header " + name, lambda: msg.has_header(name))
    for attr in ("vias", "top_via", "from_", "to", "contacts", "is_star_contact", "cseq", "call_id", "expires",
                 "max_forwards", "content_type", "user_agent", "routes", "record_routes", "body"):
        see(attr, lambda: getattr(msg, attr))
    see("to_tag", lambda: msg.to.tag)
    see("from_tag", lambda: msg.from_.tag)
    see("branch", lambda: msg.top_via.branch)
    see("sent_by", lambda: msg.top_via.sent_by)
    see("to_bytes", msg.to_bytes)
    see("copy", lambda: msg.copy().to_bytes())
    if request:
        see("400", lambda: sip.make_response(msg, 400, "Bad Request").to_bytes())
        see("200", lambda: sip.make_response(msg, 200, to_tag="t1").to_bytes())
    for name, edit in (("decrement_max_forwards", msg.decrement_max_forwards), ("pop_route", msg.pop_route),
                       ("pop_via", msg.pop_via),
                       ("push_via", lambda: msg.push_via("SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKdiff")),
                       ("add_record_route", lambda: msg.add_record_route("<sip:127.0.0.1:5060;lr>"))):
        see(name, edit)
    see("edited", msg.to_bytes)
    return out


def run_differential(sip, data: bytes) -> None:
    """Both codecs over the same bytes must let the node observe exactly the same things."""
    compiled = observe_sip(sip, data, "compiled")
    python = observe_sip(sip, data, "python")
    if compiled != python:
        for a, b in zip(compiled, python):
            if a != b:
                raise AssertionError(f"codecs differ: compiled {a!r} python {b!r}")
        raise AssertionError(f"codecs differ in length: {len(compiled)} vs {len(python)}")


def _differential_available(sip) -> tuple[type, ...]:
    if sip.use_codec("compiled") != "compiled":
        raise SystemExit("the compiled SIP scanner is not built: pip install -e . with a C compiler")
    return (sip.SIPError,)


def run_sdp(sdp, data: bytes) -> None:
    session = sdp.parse(data)
    for fn in ("negotiated_media_count", "is_audio_only"):
        if hasattr(sdp, fn):
            getattr(sdp, fn)(session, session)


def run_ras(ras, data: bytes) -> None:
    ras.decode(data)


TARGETS: dict[str, Target] = {
    "sip": Target("sip", "meter.codecs.sip", "sip.parse + header reads/edits + to_bytes", run_sip,
                  lambda m: (m.SIPError,), sip_seeds),
    "stream": Target("stream", "meter.codecs.sip", "sip.StreamReader.feed in data-chosen chunks", run_stream,
                     lambda m: (m.SIPError,), sip_seeds),
    "differential": Target("differential", "meter.codecs.sip",
                           "compiled scanner vs pure-Python codec: every accessor, edit and serialisation",
                           run_differential, _differential_available, sip_seeds),
    "sdp": Target("sdp", "meter.codecs.sdp", "sdp.parse + negotiated_media_count/is_audio_only", run_sdp,
                  lambda m: (m.SDPError,), lambda: list(SDP_SEEDS)),
    "ras": Target("ras", "meter.codecs.ras", "ras.decode (H.225.0 RAS, aligned PER via pycrate)", run_ras,
                  lambda m: (m.RASError,), ras_seeds),
}
