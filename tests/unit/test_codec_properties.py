"""Property tests (hypothesis) of the SIP and SDP codecs.

* Any bytes (random, or real messages mutated by bench.mutations, the fuzzer's own mutator) into
  sip.parse / StreamReader.feed / sdp.parse raise nothing but SIPError / SDPError ("the node never
  crashes on input").
* Generated well-formed messages round-trip: parse(serialise(m)) == m.
* The stream reader frames concatenated messages identically for any chunking.
"""

from __future__ import annotations

import pathlib
import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.mutations import mutated
from meter.codecs import sdp, sip

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

CORPUS = sorted(p.read_bytes() for p in (pathlib.Path(__file__).resolve().parents[1] / "data" / "rfc4475").glob("*.dat"))
SEED_SDP = [
    b"v=0\r\no=a 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\na=sendonly\r\nm=video 0 RTP/AVP 97\r\n",
]


def _exercise(m: sip.Message) -> None:
    """Touch everything a node reads or edits; only SIPError may come out."""
    for fn in (
        lambda: m.vias, lambda: m.top_via, lambda: m.from_, lambda: m.to, lambda: m.contacts,
        lambda: m.cseq, lambda: m.call_id, lambda: m.expires, lambda: m.max_forwards,
        lambda: m.routes, lambda: m.record_routes, lambda: m.header_values("Supported"),
        lambda: m.request_uri if isinstance(m, sip.Request) else None,
        lambda: m.pop_route(), lambda: m.decrement_max_forwards(), lambda: m.pop_via(),
    ):
        try:
            fn()
        except sip.SIPError:
            pass
    m.push_via("SIP/2.0/UDP fuzz.example;branch=z9hG4bKfz")
    out = m.to_bytes()
    assert isinstance(out, bytes)


@SETTINGS
@given(st.one_of(st.binary(max_size=600), mutated(CORPUS)))
def test_parse_raises_only_sip_error(data):
    try:
        m = sip.parse(data)
    except sip.SIPError as e:
        assert isinstance(e.status, int) and 400 <= e.status <= 599 and e.reason
        if e.message is not None:
            _exercise(e.message)  # the half-parsed message must be safe to answer from
            if isinstance(e.message, sip.Request):
                sip.make_response(e.message, e.status, e.reason).to_bytes()
        return
    _exercise(m)


@SETTINGS
@given(st.lists(st.one_of(st.binary(max_size=200), mutated(CORPUS)), max_size=5))
def test_stream_reader_raises_only_sip_error(chunks):
    r = sip.StreamReader()
    for chunk in chunks:
        try:
            for m in r.feed(chunk):
                _exercise(m)
        except sip.SIPError as e:
            assert e.reason
            if e.fatal:
                r = sip.StreamReader()


@SETTINGS
@given(st.one_of(st.binary(max_size=400), st.text(max_size=300), mutated(SEED_SDP)))
def test_sdp_parse_raises_only_sdp_error(data):
    try:
        s = sdp.parse(data)
    except sdp.SDPError as e:
        assert e.reason
        return
    assert sdp.parse(s.to_bytes()) == s
    sdp.negotiated_media_count(s, s)


# ---- generated well-formed messages ---------------------------------------------------------------------

TOKEN = st.text(alphabet=string.ascii_letters + string.digits + "-.!%*_+`'~", min_size=1, max_size=12)
LABEL = st.text(alphabet=string.ascii_lowercase + string.digits, min_size=1, max_size=8)
HOST = st.one_of(
    st.lists(LABEL, min_size=1, max_size=3).map(".".join),
    st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t))),
    st.sampled_from(["[2001:db8::1]", "[::1]", "[::ffff:192.0.2.1]"]),
)
USER = st.text(alphabet=string.ascii_letters + string.digits + "-_.!~*'()&=+$,;?/", min_size=1, max_size=10)
PNAME = st.text(alphabet=string.ascii_lowercase + "-", min_size=1, max_size=6).filter(lambda s: s.strip("-"))
PVALUE = st.one_of(st.none(), st.text(alphabet=string.ascii_letters + string.digits + "-_.", min_size=1, max_size=8))
PARAMS = st.dictionaries(PNAME, PVALUE, max_size=3)


@st.composite
def uris(draw):
    return sip.URI(
        draw(st.sampled_from(["sip", "sips"])), draw(st.one_of(st.none(), USER)), None, draw(HOST),
        draw(st.one_of(st.none(), st.integers(1, 65535))), draw(PARAMS), {},
    )


@st.composite
def name_addrs(draw, tag=True):
    display = draw(st.one_of(st.none(), st.text(alphabet=string.printable.strip() + ' "\\', max_size=12)))
    params = draw(PARAMS)
    params.pop("tag", None)
    if tag:
        params["tag"] = draw(TOKEN)
    return sip.NameAddr(display, draw(uris()), params)


@st.composite
def vias(draw):
    params = draw(PARAMS)
    params.pop("received", None)
    params.pop("rport", None)
    params["branch"] = "z9hG4bK" + draw(TOKEN)
    return sip.Via("SIP/2.0", draw(st.sampled_from(["UDP", "TCP", "TLS", "SCTP", "WS"])), draw(HOST),
                   draw(st.one_of(st.none(), st.integers(1, 65535))), params)


SAFE_VALUE = st.text(alphabet=string.ascii_letters + string.digits + " -_.:/=@", min_size=1, max_size=30).map(str.strip).filter(bool)
EXTRA_NAMES = st.sampled_from(["Subject", "X-Thing", "Supported", "Allow", "User-Agent", "Organization", "P-Custom"])


@st.composite
def requests(draw):
    method = draw(st.one_of(st.sampled_from(["INVITE", "REGISTER", "OPTIONS", "BYE", "ACK"]), TOKEN))
    headers = [("Via", str(v)) for v in draw(st.lists(vias(), min_size=1, max_size=3))]
    headers += [
        ("From", str(draw(name_addrs()))),
        ("To", str(draw(name_addrs(tag=False)))),
        ("Call-ID", draw(TOKEN) + "@" + draw(LABEL)),
        ("CSeq", f"{draw(st.integers(0, 2**31 - 1))} {method}"),
        ("Max-Forwards", str(draw(st.integers(0, 255)))),
    ]
    headers += [("Contact", str(c)) for c in draw(st.lists(name_addrs(tag=False), max_size=2))]
    headers += draw(st.lists(st.tuples(EXTRA_NAMES, SAFE_VALUE), max_size=4))
    headers = draw(st.permutations(headers))
    body = draw(st.binary(max_size=60))
    return sip.make_request(method, str(draw(uris())), headers, body, "application/sdp" if body else None)


def test_generated_structures_round_trip_examples():
    u = sip.URI("sip", "a", None, "h", 1, {"x": None}, {})
    assert sip.parse_uri(str(u)) == u


@SETTINGS
@given(uris(), name_addrs(), vias())
def test_structured_values_round_trip(u, na, v):
    assert sip.parse_uri(str(u)) == u
    assert sip.parse_name_addr(str(na)) == na
    assert sip.parse_via(str(v)) == v


@SETTINGS
@given(requests())
def test_request_round_trip(req):
    data = req.to_bytes()
    parsed = sip.parse(data)
    assert parsed == req
    assert parsed.to_bytes() == data
    assert parsed.vias == req.vias and parsed.from_ == req.from_ and parsed.contacts == req.contacts
    resp = sip.make_response(parsed, 200, to_tag=sip.new_tag(), body=parsed.body,
                             content_type=parsed.content_type)
    again = sip.parse(resp.to_bytes())
    assert again == resp and again.cseq == parsed.cseq and again.vias == parsed.vias


@SETTINGS
@given(st.lists(requests(), min_size=1, max_size=4), st.data())
def test_stream_reader_any_chunking(reqs, data):
    wire = b"".join((b"\r\n\r\n" if data.draw(st.booleans()) else b"") + r.to_bytes() for r in reqs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=12)))
    r = sip.StreamReader()
    out = []
    prev = 0
    for c in cuts + [len(wire)]:
        out += r.feed(wire[prev:c])
        prev = c
    assert out == reqs


@SETTINGS
@given(uris(), name_addrs(), vias())
def test_fast_paths_agree_with_the_general_grammar(u, na, v):
    """The hot-path regexes (URI, name-addr, Via) accept a subset of the general parsers' language
    and must build the very same values."""
    from meter.codecs import sip_grammar as g

    text = str(u)
    assert g._parse_sip_uri_general(u.scheme, text.split(":", 1)[1]) == sip.parse_uri(text)
    assert g._parse_name_addr_general(str(na)) == sip.parse_name_addr(str(na))
    assert g._parse_via_general(str(v)) == sip.parse_via(str(v))
