"""The compiled SIP scanner (codecs/_sipscan.c) against the pure-Python codec, the reference.

Issue 11: the scanner may only make parsing cheaper, never different. Every input here goes
through both codecs and everything a node can observe is compared (bench.fuzz_targets.observe_sip):
accepted or rejected, the status and reason of the rejection and the half-parsed message it
carries (RFC 3261 §8.2.6.1 answers), the start line, every header accessor, the parsed Via / From /
To / Contact / Route values and their text, the answers built to the message, the proxy edits of
RFC 3261 §16.6 and the serialised bytes before and after them. Inputs:

* RFC 4475's torture messages (tests/data/rfc4475, byte-exact) and RFC 5118's IPv6 ones
  (tests/data/rfc5118);
* every SIP message written out in the tests' and benchmarks' sources, and the messages the
  benchmark flows send (bench.hotpath: REGISTER, relayed 200, INVITE/180/200/ACK/BYE/200);
* Hypothesis: generated well-formed requests (tests/unit/test_codec_properties.py's strategies),
  those with their lines re-spelt (compact forms, case, folding, blanks), real messages mutated
  by the fuzzer's mutator (bench.mutations), and random bytes.

The scanner must be built for this test to mean anything: it fails, not skips, when it is not.
"""

from __future__ import annotations

import ast
import pathlib
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.fuzz_targets import observe_sip, run_differential, sip_seeds
from bench.mutations import mutated
from meter.codecs import sip
from tests.unit.test_codec_properties import name_addrs, requests, uris, vias

ROOT = pathlib.Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_START = re.compile(rb"^(?:[A-Za-z0-9\-.!%*_+`'~]+ [^\r\n]* SIP/2\.0|SIP/2\.0 [0-9]{3}[^\r\n]*)\r\n")


@pytest.fixture(autouse=True, scope="module")
def _both_codecs():
    """The compiled scanner must be there (``pip install -e .`` builds it); the module's default
    codec is put back afterwards."""
    before = sip.CODEC
    assert sip.use_codec("compiled") == "compiled", "the compiled scanner is not built (pip install -e .)"
    yield
    sip.use_codec(before)


def _files(folder: str) -> list[pathlib.Path]:
    return sorted((DATA / folder).glob("*.dat"))


def _literal_messages() -> list[bytes]:
    """Every str/bytes constant in tests/ and bench/ that is a SIP message (start line + CRLF)."""
    found: set[bytes] = set()
    for path in sorted([*(ROOT / "tests").rglob("*.py"), *(ROOT / "bench").glob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, (str, bytes)):
                value = node.value.encode("utf-8", "surrogateescape") if isinstance(node.value, str) else node.value
                if _START.match(value):
                    found.add(value)
    return sorted(found)


def _flow_messages() -> list[bytes]:
    """What bench.hotpath's flows feed the node, the upstream's and the callee's answers included."""
    from bench import hotpath

    regs = hotpath._registers(3, 1)
    out = list(regs)
    sdp = hotpath._SDP
    invite = hotpath._request("INVITE", 1, 1, body=sdp)
    out += [invite, hotpath._answer(invite, b"180 Ringing"), hotpath._answer(invite, b"200 OK", body=sdp),
            hotpath._request("ACK", 1, 1, to_tag="callee", route=b"<sip:127.0.0.1:5060;lr>"),
            hotpath._request("BYE", 1, 2, to_tag="callee", route=b"<sip:127.0.0.1:5060;lr>")]
    for r in regs:
        relayed = sip.parse(r)
        relayed.push_via("SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKrelay")
        relayed.decrement_max_forwards()
        out.append(hotpath._upstream_ok(relayed.to_bytes()))
    return out


def _same(data: bytes) -> None:
    compiled = observe_sip(sip, data, "compiled")
    python = observe_sip(sip, data, "python")
    sip.use_codec("compiled")
    assert compiled == python, next(f"compiled {a!r} != python {b!r}" for a, b in zip(compiled, python) if a != b)


@pytest.mark.parametrize("path", _files("rfc4475"), ids=lambda p: p.stem)
def test_rfc4475_messages_same_with_both_codecs(path):
    """RFC 4475 §3: every torture message, valid or not, gives the same observations."""
    _same(path.read_bytes())


@pytest.mark.parametrize("path", _files("rfc5118"), ids=lambda p: p.stem)
def test_rfc5118_messages_same_with_both_codecs(path):
    """RFC 5118 §4: the IPv6 messages (brackets, ports, received=, mapped addresses) agree."""
    _same(path.read_bytes())


def test_rfc5118_vendored_files_are_the_transcribed_messages():
    """tests/data/rfc5118 holds exactly the messages test_rfc5118.py checks, byte for byte."""
    from tests.unit import test_rfc5118

    assert {p.stem: p.read_bytes() for p in _files("rfc5118")} == test_rfc5118.MESSAGES


def test_every_message_in_the_sources_same_with_both_codecs():
    """Each SIP message written in tests/ and bench/, the fuzzers' seeds, and the benchmark flows."""
    messages = sorted({*_literal_messages(), *sip_seeds(), *_flow_messages()})
    assert len(messages) > 60  # the sources hold that many: an extraction that found none would prove nothing
    for data in messages:
        _same(data)


def test_scanner_takes_the_everyday_messages():
    """The scanner must actually serve the hot path (else the comparison would compare Python with
    itself): the benchmark flows' messages are all taken by it, none falls back."""
    from meter.codecs import _sipscan

    limits = sip.DEFAULT_LIMITS
    for data in _flow_messages():
        assert _sipscan.scan(data, limits.max_message_bytes, limits.max_headers, limits.max_header_bytes) is not None, data


def test_observations_see_a_difference():
    """The comparison can fail: two messages differing in one Via parameter observe differently."""
    a = next(m for m in _flow_messages() if m.startswith(b"REGISTER"))
    b = a.replace(b";branch=z9hG4bK", b";branch=z9hG4bKx", 1)
    assert observe_sip(sip, a, "compiled") != observe_sip(sip, b, "compiled")
    sip.use_codec("compiled")


@pytest.mark.parametrize("variant", [
    b"REGISTER sip:b SIP/2.0\r\nv: SIP/2.0/UDP h;branch=z9hG4bK1\r\nf: <sip:a@b>;tag=1\r\nt: <sip:a@b>\r\n"
    b"i: x@y\r\nCSeq: 1 REGISTER\r\nm: <sip:a@h>\r\nl: 0\r\n\r\n",  # RFC 3261 §7.3.3 compact forms
    b"OPTIONS sip:b SIP/2.0\r\nVia: SIP/2.0/UDP h\r\n ;branch=z9hG4bK1\r\nFrom: <sip:a@b>\r\n\t;tag=1\r\n"
    b"To: <sip:a@b>\r\nCall-ID: x@y\r\nCSeq: 1\r\n  OPTIONS\r\nContent-Length: 0\r\n\r\n",  # §7.3.1 folding
    b"OPTIONS sip:b SIP/2.0\r\nVIA  :  SIP/2.0/UDP h;branch=z9hG4bK1 \r\nfrom:<sip:a@b>;TAG=1\r\nTo:\t<sip:a@b>\r\n"
    b"CALL-ID: x@y\r\ncseq: 1 OPTIONS\r\nContent-Length:5\r\n\r\nhellothere",  # case, blanks, body cut
    b"SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1;received=[2001:db8::1]\r\nFrom: <sip:a@b>;tag=1\r\n"
    b"To: \"B\" <sip:b@c>;tag=2\r\nCall-ID: x@y\r\nCSeq: 7 INVITE\r\n\r\n",  # no Content-Length: to the end
    b"INVITE sip:b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:a@b>\r\n"
    b"Call-ID: x@y\r\nCSeq: 1 INVITE\r\nContent-Length: 10\r\n\r\nshort",  # §18.3: shorter than it says
    b"INVITE sip:b SIP/2.0\r\nVia: SIP/2.0/UDP h:65536;branch=z9hG4bK1\r\nFrom: <sip:a@b:99999>;tag=1\r\n"
    b"To: <sip:a@b>\r\nCall-ID: x@y\r\nCSeq: 2147483648 INVITE\r\nMax-Forwards: 256\r\nExpires: 4294967296\r\n\r\n",
    b"\r\n\r\nINVITE sip:b SIP/2.0\r\nVia: SIP/2.0/UDP h\r\nFrom: a\r\nTo: b\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n",
], ids=["compact", "folded", "case-blanks", "response-no-length", "short-body", "out-of-range", "leading-crlf"])
def test_edge_shapes_same_with_both_codecs(variant):
    """Shapes at the scanner's edges: compact forms, folding, spelling, framing, numbers past their ranges."""
    _same(variant)


@st.composite
def respelt(draw, message: bytes) -> bytes:
    """A message with its header lines re-spelt the ways RFC 3261 §7.3 allows (and some it does not):
    compact forms, case, blanks around the colon, a fold inside the value."""
    head, sep, body = message.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    out = [lines[0]]
    compact = {b"via": b"v", b"from": b"f", b"to": b"t", b"call-id": b"i", b"contact": b"m", b"content-length": b"l",
               b"content-type": b"c", b"supported": b"k", b"subject": b"s"}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        how = draw(st.sampled_from(["keep", "compact", "upper", "lower", "blanks", "fold", "fold-start"]))
        if how == "compact" and name.lower() in compact:
            name = compact[name.lower()]
        elif how == "upper":
            name = name.upper()
        elif how == "lower":
            name = name.lower()
        elif how == "blanks":
            name, value = name + b" \t", b"  " + value + b" "
        elif how == "fold" and b" " in value.strip():
            value = value.replace(b" ", b"\r\n ", 1)
        elif how == "fold-start":
            value = b"\r\n\t" + value
        out.append(name + colon + value)
    return b"\r\n".join(out) + sep + body


@SETTINGS
@given(requests())
def test_generated_requests_same_with_both_codecs(req):
    """Hypothesis-generated requests, as serialised, and the 200 answered to them."""
    data = req.to_bytes()
    _same(data)
    _same(sip.make_response(sip.parse(data), 200, to_tag="x", body=req.body, content_type=req.content_type).to_bytes())


@SETTINGS
@given(requests().flatmap(lambda r: respelt(r.to_bytes())))
def test_respelt_requests_same_with_both_codecs(data):
    _same(data)


_SEEDS = sorted({*sip_seeds(), *_flow_messages()})


@SETTINGS
@given(st.one_of(mutated(_SEEDS), st.binary(max_size=400)))
def test_mutated_and_random_bytes_same_with_both_codecs(data):
    """The fuzzer's mutations of real messages, and random bytes: same outcome, same reason."""
    run_differential(sip, data)
    sip.use_codec("compiled")


def _codec_in_fresh_process(env_extra: dict[str, str], prelude: str = "") -> str:
    import os
    import subprocess
    import sys

    code = prelude + (
        "from meter.codecs import sip\n"
        "from meter.app import _sip_codec\n"
        "m = sip.parse(b'OPTIONS sip:b SIP/2.0\\r\\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\\r\\nFrom: <sip:a@b>;tag=1\\r\\n"
        "To: <sip:a@b>\\r\\nCall-ID: x\\r\\nCSeq: 1 OPTIONS\\r\\nContent-Length: 0\\r\\n\\r\\n')\n"
        "assert m.top_via.branch == 'z9hG4bK1'\n"
        "print(sip.CODEC, _sip_codec())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "METER_PURE_CODEC"}
    env.update(env_extra)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_codec_choice_at_start():
    """The node starts with the compiled scanner when built (node.started logs sip_codec=compiled),
    METER_PURE_CODEC=1 forces the Python codec, and without the extension the Python codec serves."""
    assert _codec_in_fresh_process({}) == "compiled compiled"
    assert _codec_in_fresh_process({"METER_PURE_CODEC": "1"}) == "python python"
    hide = ("import sys, importlib.abc\n"
            "class Hide(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'meter.codecs._sipscan': raise ImportError('not built')\n"
            "sys.meta_path.insert(0, Hide())\n")
    assert _codec_in_fresh_process({}, hide) == "python python"


@pytest.mark.parametrize("pure", [False, True], ids=["compiled", "python"])
def test_node_logs_its_codec_and_answers_with_it(tmp_path, monkeypatch, pure):
    """A real `meter run`: its node.started line names the codec in use, and an OPTIONS sent over
    UDP gets its 200 with the request's Via, From, To, Call-ID and CSeq back (RFC 3261 §8.2.6.2)."""
    import socket

    from tests.integration.peers import MeterProcess

    if pure:
        monkeypatch.setenv("METER_PURE_CODEC", "1")
    else:
        monkeypatch.delenv("METER_PURE_CODEC", raising=False)
    node = MeterProcess(tmp_path / "node").start()
    try:
        started = [line for line in node.log_path.read_text().splitlines() if "node.started" in line]
        assert started and ("sip_codec=python" if pure else "sip_codec=compiled") in started[0], started
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            s.settimeout(10)
            port = s.getsockname()[1]
            s.sendto(b"OPTIONS sip:127.0.0.1 SIP/2.0\r\nv: SIP/2.0/UDP 127.0.0.1:%d;branch=z9hG4bKlog1;rport\r\n"
                     b"Max-Forwards: 70\r\nf: <sip:probe@test>;tag=p1\r\nt: <sip:127.0.0.1>\r\ni: probe-1\r\n"
                     b"CSeq: 7 OPTIONS\r\nl: 0\r\n\r\n" % port, ("127.0.0.1", node.sip_port))
            answer = sip.parse(s.recv(65535))
        assert answer.status == 200 and answer.call_id == "probe-1" and answer.cseq == (7, "OPTIONS")
        assert answer.top_via.branch == "z9hG4bKlog1" and answer.from_.tag == "p1"
    finally:
        node.stop()


def _values_with(codec: str, fn, text: str):
    sip.use_codec(codec)
    try:
        value = fn(text)
        return ("ok", value, repr(value), str(value))
    except sip.SIPError as e:
        return ("SIPError", e.status, e.reason)
    finally:
        sip.use_codec("compiled")


_VALUE_TEXT = st.one_of(
    st.text(alphabet="sipSIP:@;=<>\"\\ \t,.-_[]0123456789abcxyzXYZ/?&%!~*'()+$`", max_size=60),
    st.sampled_from(["sip:a@b", "sips:x.y:5061;transport=tls", "<sip:a@b;lr>;tag=1", "SIP/2.0/UDP h:5060;branch=z9hG4bK1",
                     "\"A\" <sip:a@[::1]>", "sip:a@b:65536", "A B <sip:a@b-.c>;x=\"y;z\"", "SIP/2.0/tcp h;received=1.2.3.4"]),
)


@SETTINGS
@given(st.one_of(_VALUE_TEXT, st.builds(lambda u, n, v, t: t.join([str(u), str(n), str(v)]),
                                         uris(), name_addrs(), vias(), st.sampled_from(["", ";", " ", ">"]))))
def test_value_fast_paths_same_with_both_codecs(text):
    """parse_uri, parse_name_addr and parse_via (RFC 3261 §19.1, §20.10, §20.42) give equal values,
    equal text and the same errors whether the C fast paths or the regular expressions take them."""
    for fn in (sip.parse_uri, sip.parse_name_addr, sip.parse_via):
        for candidate in (text, text.split(">")[0] + ">" if ">" in text else text, text.strip("<>")):
            assert _values_with("compiled", fn, candidate) == _values_with("python", fn, candidate), (fn, candidate)
