"""Unit tests of meter.codecs.sip: every public function, compact forms, comma lists, escapes,
folding, proxy edits that keep untouched lines byte-exact, stream framing and limits."""

from __future__ import annotations

import pytest

from meter.codecs import sip
from meter.codecs.sip import SIPError

INVITE = (
    b"INVITE sip:bob@example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP pc33.example.com:5060;branch=z9hG4bK776asdhds;rport\r\n"
    b"Via: SIP/2.0/TCP p1.example.net;branch=z9hG4bK1, SIP/2.0/UDP [2001:db8::1]:5062;branch=z9hG4bK2;received=192.0.2.7\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: Bob <sip:bob@example.com>\r\n"
    b'From: "Alice, the \\"first\\"" <sip:alice@example.com>;tag=1928301774\r\n'
    b"Call-ID: a84b4c76e66710@pc33.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Route: <sip:p1.example.net;lr>, <sip:p2.example.net;lr>\r\n"
    b"Route: <sip:p3.example.net;lr>\r\n"
    b'Contact: "Al, A" <sip:alice@pc33.example.com;transport=tcp>;expires=60, <sip:a2@192.0.2.4>;q=0.5\r\n'
    b"Supported: timer,\r\n 100rel\r\n"
    b"Date: Sat, 13 Nov 2010 23:29:00 GMT\r\n"
    b"User-Agent: Cisco-Room-Kit/ce11\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 4\r\n"
    b"\r\n"
    b"v=0\n"
)

RESPONSE = (
    b"SIP/2.0 180 Ringing\r\n"
    b"v: SIP/2.0/UDP pc33.example.com;branch=z9hG4bK776asdhds\r\n"
    b"t: <sip:bob@example.com>;tag=a6c85cf\r\n"
    b"f: <sip:alice@example.com>;tag=1928301774\r\n"
    b"i: a84b4c76e66710\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"m: <sip:bob@192.0.2.4>\r\n"
    b"Server: Kamailio (5.7)\r\n"
    b"l: 0\r\n"
    b"\r\n"
)


def minimal(method="OPTIONS", uri="sip:bob@example.com", extra=b"", body=b"", cl=True):
    head = (
        f"{method} {uri} SIP/2.0\r\n"
        "Via: SIP/2.0/UDP h.example.com;branch=z9hG4bKx\r\n"
        "To: <sip:bob@example.com>\r\n"
        "From: <sip:alice@example.com>;tag=1\r\n"
        "Call-ID: c1\r\n"
        f"CSeq: 1 {method}\r\n"
    ).encode() + extra
    if cl:
        head += b"Content-Length: %d\r\n" % len(body)
    return head + b"\r\n" + body


# ---- reading ---------------------------------------------------------------------------------------


def test_request_start_line_and_basic_properties():
    m = sip.parse(INVITE)
    assert isinstance(m, sip.Request)
    assert (m.method, m.uri, m.version) == ("INVITE", "sip:bob@example.com", "SIP/2.0")
    assert m.call_id == "a84b4c76e66710@pc33.example.com"
    assert m.cseq == sip.CSeq(314159, "INVITE") and m.cseq.number == 314159
    assert m.max_forwards == 70 and m.expires is None
    assert m.content_type == "application/sdp" and m.user_agent == "Cisco-Room-Kit/ce11"
    assert m.body == b"v=0\n"
    assert m.request_uri == sip.URI("sip", "bob", None, "example.com")


def test_response_compact_forms_equal_long_forms():
    m = sip.parse(RESPONSE)
    assert isinstance(m, sip.Response) and (m.status, m.reason) == (180, "Ringing")
    for compact, long in [("v", "Via"), ("t", "To"), ("f", "From"), ("i", "Call-ID"), ("m", "Contact"), ("l", "Content-Length")]:
        assert m.header(compact) == m.header(long) == m.header(long.upper()) is not None
        assert m.has_header(compact) and m.has_header(long.lower())
    assert m.to.tag == "a6c85cf" and m.from_.tag == "1928301774"
    assert m.user_agent == "Kamailio (5.7)"  # Server, for responses


def test_more_compact_forms():
    m = sip.parse(minimal(extra=b"k: path\r\ns: hi\r\ne: gzip\r\no: presence\r\nu: dialog\r\nr: <sip:c@d>\r\nb: <sip:e@f>\r\nx: 1800\r\ny: abc\r\nc: text/plain\r\n"))
    assert m.header("Supported") == "path" and m.header("Subject") == "hi"
    assert m.header("Content-Encoding") == "gzip" and m.header("Event") == "presence"
    assert m.header("Allow-Events") == "dialog" and m.header("Refer-To") == "<sip:c@d>"
    assert m.header("Referred-By") == "<sip:e@f>" and m.header("Session-Expires") == "1800"
    assert m.header("Identity") == "abc" and m.content_type == "text/plain"


def test_header_values_comma_split_honours_quotes_and_angles():
    m = sip.parse(INVITE)
    assert m.header_values("Contact") == [
        '"Al, A" <sip:alice@pc33.example.com;transport=tcp>;expires=60',
        "<sip:a2@192.0.2.4>;q=0.5",
    ]
    assert m.header_values("Route") == ["<sip:p1.example.net;lr>", "<sip:p2.example.net;lr>", "<sip:p3.example.net;lr>"]
    assert m.header_values("Supported") == ["timer", "100rel"]  # folded line
    assert m.header("Via") == "SIP/2.0/UDP pc33.example.com:5060;branch=z9hG4bK776asdhds;rport"
    # not list headers: kept whole
    assert m.header_values("Date") == ["Sat, 13 Nov 2010 23:29:00 GMT"]
    assert m.header_values("From") == ['"Alice, the \\"first\\"" <sip:alice@example.com>;tag=1928301774']
    assert m.header_values("X-Absent") == [] and m.header("X-Absent") is None


def test_split_commas_edge_cases():
    assert sip.split_commas('"a,\\",b" <sip:x@y;p=",">, <sip:z,1@w>') == ['"a,\\",b" <sip:x@y;p=",">', "<sip:z,1@w>"]
    assert sip.split_commas(" , a ,, b ,") == ["a", "b"]
    assert sip.split_commas("") == []


def test_vias_parsed():
    m = sip.parse(INVITE)
    assert [(v.transport, v.host, v.port, v.branch) for v in m.vias] == [
        ("UDP", "pc33.example.com", 5060, "z9hG4bK776asdhds"),
        ("TCP", "p1.example.net", None, "z9hG4bK1"),
        ("UDP", "[2001:db8::1]", 5062, "z9hG4bK2"),
    ]
    top = m.top_via
    assert top.protocol == "SIP/2.0" and top.has_rport and top.rport is None and top.received is None
    assert m.vias[2].received == "192.0.2.7" and m.vias[2].sent_by == ("[2001:db8::1]", 5062)


def test_from_to_contacts():
    m = sip.parse(INVITE)
    assert m.from_.display == 'Alice, the "first"' and m.from_.tag == "1928301774"
    assert m.to.display == "Bob" and m.to.tag is None
    c1, c2 = m.contacts
    assert c1.display == "Al, A" and c1.uri.params == {"transport": "tcp"} and c1.expires == 60
    assert c2.display is None and c2.params == {"q": "0.5"} and c2.expires is None
    assert not m.is_star_contact


def test_star_contact():
    m = sip.parse(minimal("REGISTER", "sip:example.com", b"Contact: *\r\nExpires: 0\r\n"))
    assert m.is_star_contact and m.contacts == [] and m.expires == 0
    with pytest.raises(SIPError):
        sip.parse(minimal("REGISTER", "sip:example.com", b"Contact: *, <sip:a@b>\r\n"))


def test_no_contact_is_empty_list():
    assert sip.parse(minimal()).contacts == []


def test_folding_is_unfolded_to_one_space():
    m = sip.parse(minimal(extra=b"Subject: hello\r\n\t world\r\n  again\r\n"))
    assert m.header("Subject") == "hello world again"


def test_headers_list_and_equality():
    a, b = sip.parse(INVITE), sip.parse(INVITE)
    assert a == b and a.headers[0] == ("Via", "SIP/2.0/UDP pc33.example.com:5060;branch=z9hG4bK776asdhds;rport")
    b.set_header("Subject", "x")
    assert a != b


def test_non_utf8_octets_survive():
    data = minimal(extra=b"Subject: caf\xe9 \xff\r\n")
    m = sip.parse(data)
    assert m.to_bytes() == data
    m.add_header("X", "1")
    assert b"Subject: caf\xe9 \xff\r\n" in m.to_bytes()


# ---- URIs, name-addr, Via ---------------------------------------------------------------------------


@pytest.mark.parametrize("text, scheme, user, password, host, port, params, headers", [
    ("sip:alice@example.com", "sip", "alice", None, "example.com", None, {}, {}),
    ("sips:alice:secret@example.com:5061;transport=tcp;lr", "sips", "alice", "secret", "example.com", 5061, {"transport": "tcp", "lr": None}, {}),
    ("sip:example.com", "sip", None, None, "example.com", None, {}, {}),
    ("sip:%61lice@EXAMPLE.com;Maddr=239.255.255.1", "sip", "%61lice", None, "EXAMPLE.com", None, {"maddr": "239.255.255.1"}, {}),
    ("sip:u@[2001:db8::1]:5070", "sip", "u", None, "[2001:db8::1]", 5070, {}, {}),
    ("sip:u@h?subject=project%20x&priority=urgent", "sip", "u", None, "h", None, {}, {"subject": "project%20x", "priority": "urgent"}),
    ("sip:+1-212-555-1212:1234@gateway.com;user=phone", "sip", "+1-212-555-1212", "1234", "gateway.com", None, {"user": "phone"}, {}),
])
def test_parse_uri(text, scheme, user, password, host, port, params, headers):
    u = sip.parse_uri(text)
    assert (u.scheme, u.user, u.password, u.host, u.port, u.params, u.headers) == (scheme, user, password, host, port, params, headers)
    assert sip.parse_uri(str(u)) == u


def test_uri_aor_normalises_escapes_and_host_case():
    assert sip.parse_uri("sip:%61lice@EXAMPLE.com:5070;transport=tcp").aor == "sip:alice@example.com"
    assert sip.parse_uri("sips:Bob@Example.Org").aor == "sips:Bob@example.org"  # user part is case-sensitive
    assert sip.parse_uri("sip:example.com").aor == "sip:example.com"
    assert sip.parse_uri("sip:%E2%82%AC@x").aor == "sip:\u20ac@x"


def test_tel_and_other_schemes():
    t = sip.parse_uri("tel:+1-201-555-0123;phone-context=example.com")
    assert (t.scheme, t.user, t.params) == ("tel", "+1-201-555-0123", {"phone-context": "example.com"})
    assert str(t) == "tel:+1-201-555-0123;phone-context=example.com" and t.aor == "tel:+1-201-555-0123"
    o = sip.parse_uri("urn:service:sos")
    assert (o.scheme, o.opaque, str(o)) == ("urn", "service:sos", "urn:service:sos")
    assert not o.is_sip and sip.parse_uri("sips:a@b").is_sip


@pytest.mark.parametrize("bad", [
    "", "alice@example.com", "sip:", "sip:alice@", "sip:a b@c", "sip:a@b:99999", "sip:a@b:x",
    "sip:a@b;;lr", "sip:a@[::1", "sip:a@-bad-", "1sip:a@b", "sip:a@b?x", "sip:%zz@b", "tel:", "http:",
])
def test_parse_uri_rejects(bad):
    with pytest.raises(SIPError) as e:
        sip.parse_uri(bad)
    assert e.value.status == 400 and e.value.reason.startswith("Bad Request")


def test_parse_name_addr_forms():
    na = sip.parse_name_addr('"A \\"B\\"" <sip:a@b;lr>;tag=x;q="0.5"')
    assert na.display == 'A "B"' and na.uri.params == {"lr": None} and na.params == {"tag": "x", "q": '"0.5"'}
    assert sip.parse_name_addr(str(na)) == na
    na = sip.parse_name_addr("John Q Public <sip:j@b>")
    assert na.display == "John Q Public"
    na = sip.parse_name_addr("sip:a@b;tag=1")  # addr-spec: params belong to the header
    assert na.display is None and na.tag == "1" and na.uri.params == {}
    na = sip.parse_name_addr("<sip:a@b;x=1>")
    assert na.uri.params == {"x": "1"} and na.params == {}
    assert str(sip.parse_name_addr("Bob <sip:b@c>;tag=9")) == '"Bob" <sip:b@c>;tag=9'


@pytest.mark.parametrize("bad", [
    '"unterminated <sip:a@b>', "Bad, Name <sip:a@b>", "< sip:a@b>", "<sip:a@b", "sip:a@b?x=1",
    "<sip:a@b>;;", "<sip:a@b>;tag=", '"x" sip:a@b', "", "<sip:a@b> junk",
])
def test_parse_name_addr_rejects(bad):
    with pytest.raises(SIPError):
        sip.parse_name_addr(bad)


def test_parse_via_forms():
    v = sip.parse_via("SIP / 2.0 / udp  host.example.com : 5060 ; branch = z9hG4bKx ; rport=5061 ; received=192.0.2.1")
    assert (v.protocol, v.transport, v.host, v.port) == ("SIP/2.0", "UDP", "host.example.com", 5060)
    assert (v.branch, v.rport, v.received) == ("z9hG4bKx", 5061, "192.0.2.1")
    assert sip.parse_via(str(v)) == v
    assert str(sip.Via("SIP/2.0", "TLS", "h", None, {"branch": "z9hG4bK1"})) == "SIP/2.0/TLS h;branch=z9hG4bK1"


@pytest.mark.parametrize("bad", [
    "SIP/2.0 host", "SIP/2.0/UDP", "SIP/2.0/UDP host;;", "SIP/2.0/UDP host:99999",
    "SIP/2.0/UDP host;received=not-an-ip", "SIP/2.0/UDP [zz::1]",
])
def test_parse_via_rejects(bad):
    with pytest.raises(SIPError):
        sip.parse_via(bad)


# ---- validation at parse --------------------------------------------------------------------------


@pytest.mark.parametrize("data, status, fragment", [
    (minimal().replace(b"SIP/2.0\r\n", b"SIP/3.0\r\n", 1), 505, "Version"),
    (minimal().replace(b"Call-ID: c1\r\n", b""), 400, "missing Call-ID"),
    (minimal().replace(b"CSeq: 1 OPTIONS\r\n", b""), 400, "missing CSeq"),
    (minimal().replace(b"Via: SIP/2.0/UDP h.example.com;branch=z9hG4bKx\r\n", b""), 400, "missing Via"),
    (minimal().replace(b"CSeq: 1 OPTIONS", b"CSeq: 1 INVITE"), 400, "CSeq method"),
    (minimal().replace(b"CSeq: 1 OPTIONS", b"CSeq: 2147483648 OPTIONS"), 400, "CSeq"),
    (minimal().replace(b"CSeq: 1 OPTIONS", b"CSeq: x OPTIONS"), 400, "CSeq"),
    (minimal(extra=b"Max-Forwards: 256\r\n"), 400, "Max-Forwards"),
    (minimal(extra=b"Expires: soon\r\n"), 400, "Expires"),
    (minimal(extra=b"Expires: 4294967296\r\n"), 400, "Expires"),
    (minimal(extra=b"Call-ID: c2\r\n"), 400, "multiple Call-ID"),
    (minimal(uri="mailto:bob@example.com"), 416, "Unsupported URI Scheme"),
    (minimal(uri="sip:bob@example.com?Subject=x"), 400, "Request-URI"),
    (minimal(uri="<sip:bob@example.com>"), 400, "URI"),
    (minimal().replace(b"Content-Length: 0", b"Content-Length: 10"), 400, "Content-Length larger"),
    (minimal().replace(b"Content-Length: 0", b"Content-Length: -1"), 400, "Content-Length"),
    (minimal(extra=b"Content-Length: 0\r\n"), 400, "multiple Content-Length"),
])
def test_parse_rejects_with_status_and_keeps_the_request(data, status, fragment):
    with pytest.raises(SIPError) as e:
        sip.parse(data)
    assert e.value.status == status and fragment in e.value.reason
    assert isinstance(e.value.message, sip.Request) and not e.value.fatal
    resp = sip.make_response(e.value.message, e.value.status, e.value.reason)
    assert resp.to_bytes().startswith(b"SIP/2.0 %d " % status)


@pytest.mark.parametrize("data, fragment", [
    (b"", "empty line"),
    (b"garbage\r\n\r\n", "Request-Line"),
    (b"OPTIONS sip:a@b SIP/2.0\r\nVia: x\nTo: y\r\n\r\n", "bare CR or LF"),
    (b"OPTIONS sip:a@b SIP/2.0\r\n folded-first: x\r\n\r\n", "continuation"),
    (b"OPTIONS sip:a@b SIP/2.0\r\nNo colon here\r\n\r\n", "header line"),
    (b"OPTIONS sip:a@b SIP/2.0\r\nBad Name: x\r\n\r\n", "header name"),
    (b"OPTIONS sip:a@b SIP/2.0\r\nTo: x", "empty line"),
    (b"SIP/2.0 1000 Huh\r\n\r\n", "Status-Line"),
    (b"HTTP/1.1 200 OK\r\n\r\n", "Request-Line"),
])
def test_parse_rejects_unsplittable_input(data, fragment):
    with pytest.raises(SIPError) as e:
        sip.parse(data)
    assert fragment in e.value.reason and e.value.status == 400


def test_sip_error_is_a_value_error_with_defaults():
    e = SIPError("Bad Request - x")
    assert isinstance(e, ValueError) and e.status == 400 and e.message is None and e.reason == "Bad Request - x"


def test_max_forwards_not_required_and_leading_crlf_ignored():
    m = sip.parse(b"\r\n\r\n" + minimal())
    assert m.max_forwards is None and m.to_bytes() == minimal()


def test_datagram_without_content_length_takes_the_rest():
    m = sip.parse(minimal(body=b"hello", cl=False))
    assert m.body == b"hello"
    assert b"Content-Length: 5\r\n" in m.to_bytes() or m.to_bytes().endswith(b"hello")
    again = sip.parse(m.to_bytes())
    assert again.body == b"hello"


def test_extra_octets_after_content_length_are_discarded():
    m = sip.parse(minimal(body=b"abc") + b"junk")
    assert m.body == b"abc" and m.to_bytes() == minimal(body=b"abc")


def test_limits():
    lim = sip.Limits(max_message_bytes=200, max_headers=6, max_header_bytes=150)
    assert sip.DEFAULT_LIMITS == sip.Limits() and sip.DEFAULT_LIMITS.max_message_bytes == 65535
    with pytest.raises(SIPError) as e:
        sip.parse(minimal(body=b"x" * 300), lim)
    assert e.value.status == 513
    with pytest.raises(SIPError) as e:
        sip.parse(minimal(extra=b"A: 1\r\n"), sip.Limits(max_headers=6))
    # too many header lines: 400, as config/meter.toml documents, with the request attached so the
    # node can answer it (RFC 3261 §8.2.6)
    assert e.value.status == 400 and "too many header fields" in e.value.reason
    assert isinstance(e.value.message, sip.Request)
    with pytest.raises(SIPError) as e:
        sip.parse(minimal(extra=b"X-Long: " + b"y" * 200 + b"\r\n"), sip.Limits(max_header_bytes=150))
    assert e.value.status == 513


# ---- proxy edits --------------------------------------------------------------------------------------


def _lines(data: bytes) -> list[bytes]:
    return data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")


def test_proxy_edits_keep_untouched_lines_byte_exact():
    m = sip.parse(INVITE)
    m.push_via("SIP/2.0/UDP proxy.example.org;branch=z9hG4bKp1")
    m.add_record_route("<sip:proxy.example.org;lr>")
    assert m.decrement_max_forwards() == 69
    out = m.to_bytes()
    before, after = _lines(INVITE), _lines(out)
    added = [l for l in after if l not in before]
    removed = [l for l in before if l not in after]
    assert sorted(added) == [b"Max-Forwards: 69", b"Record-Route: <sip:proxy.example.org;lr>", b"Via: SIP/2.0/UDP proxy.example.org;branch=z9hG4bKp1"]
    assert removed == [b"Max-Forwards: 70"]
    assert out.endswith(b"\r\n\r\nv=0\n")
    again = sip.parse(out)
    assert again.top_via.host == "proxy.example.org" and len(again.vias) == 4
    assert again.header_values("Record-Route") == ["<sip:proxy.example.org;lr>"]


def test_push_via_goes_above_existing_vias():
    m = sip.parse(minimal(extra=b"X-Before: 1\r\n"))
    m.push_via("SIP/2.0/TCP p;branch=z9hG4bKq")
    names = [n for n, _ in m.headers]
    assert names.index("Via") == 0 and [v.host for v in m.vias] == ["p", "h.example.com"]


def test_pop_via_removes_only_the_top_value():
    m = sip.parse(INVITE)
    assert m.pop_via().host == "pc33.example.com"
    top = m.pop_via()
    assert top.host == "p1.example.net"
    # the line that held two values now holds the remaining one; other lines untouched
    assert [v.host for v in m.vias] == ["[2001:db8::1]"]
    assert b"Via: SIP/2.0/UDP [2001:db8::1]:5062;branch=z9hG4bK2;received=192.0.2.7\r\n" in m.to_bytes()
    assert m.pop_via().host == "[2001:db8::1]" and m.vias == [] and not m.has_header("Via")
    with pytest.raises(SIPError):
        m.pop_via()


def test_pop_route_loose_routing():
    m = sip.parse(INVITE)
    assert str(m.pop_route().uri) == "sip:p1.example.net;lr"
    assert m.header_values("Route") == ["<sip:p2.example.net;lr>", "<sip:p3.example.net;lr>"]
    assert m.routes[0].uri.host == "p2.example.net"
    m.pop_route()
    assert b"Route: <sip:p3.example.net;lr>\r\n" in m.to_bytes()
    m.pop_route()
    assert m.pop_route() is None and not m.has_header("Route")


def test_decrement_max_forwards_absent_and_zero():
    m = sip.parse(minimal())
    assert m.decrement_max_forwards() == 70 and m.max_forwards == 70  # RFC 3261 §16.6 step 3
    assert m.decrement_max_forwards() == 69
    m = sip.parse(minimal(extra=b"Max-Forwards: 0\r\n"))
    with pytest.raises(SIPError) as e:
        m.decrement_max_forwards()
    assert e.value.status == 483


def test_set_remove_add_header():
    m = sip.parse(minimal(extra=b"X-A: 1\r\nX-B: 2\r\nx-a: 3\r\n"))
    m.set_header("x-a", "9")
    assert m.header_values("X-A") == ["9"]
    names = [n for n, _ in m.headers]
    assert names.index("X-A") < names.index("X-B")  # replaced at the first one's place
    m.remove_header("X-B")
    assert not m.has_header("x-b")
    m.add_header("X-C", "last")
    assert m.headers[-1] == ("X-C", "last")
    with pytest.raises(ValueError):
        m.add_header("X-Evil", "a\r\nVia: injected")
    assert sip.parse(m.to_bytes()).header("X-A") == "9"


def test_set_body_keeps_content_length_right():
    m = sip.parse(minimal())
    m.set_body(b"v=0\r\n", "application/sdp")
    out = sip.parse(m.to_bytes())
    assert out.body == b"v=0\r\n" and out.header("Content-Length") == "5" and out.content_type == "application/sdp"
    m.set_body(b"")
    out = sip.parse(m.to_bytes())
    assert out.body == b"" and out.content_type is None and out.header("Content-Length") == "0"
    m.body = b"direct"  # assigning body directly: to_bytes still writes the right length
    assert sip.parse(m.to_bytes()).header("Content-Length") == "6"


def test_set_uri():
    m = sip.parse(minimal())
    m.set_uri("sip:bob@192.0.2.9:5070;transport=tcp")
    assert m.request_uri.host == "192.0.2.9" and m.request_uri.port == 5070
    assert m.to_bytes().startswith(b"OPTIONS sip:bob@192.0.2.9:5070;transport=tcp SIP/2.0\r\n")
    m.uri = "sip:carol@example.com"
    assert m.request_uri.user == "carol"
    with pytest.raises(ValueError):
        m.set_uri("sip:a@b SIP/2.0\r\nVia: x")


def test_copy_is_independent():
    m = sip.parse(INVITE)
    c = m.copy()
    c.push_via("SIP/2.0/UDP fork;branch=z9hG4bKf")
    c.set_uri("sip:other@example.com")
    assert len(m.vias) == 3 and len(c.vias) == 4 and m.uri == "sip:bob@example.com"
    assert m.to_bytes() == INVITE


def test_untouched_message_returns_its_own_bytes():
    assert sip.parse(INVITE).to_bytes() == INVITE
    assert bytes(sip.parse(RESPONSE)) == RESPONSE


# ---- building ---------------------------------------------------------------------------------------


def test_make_response_copies_rfc3261_8_2_6_2_headers():
    req = sip.parse(INVITE)
    r = sip.make_response(req, 180, to_tag="abc")
    assert (r.status, r.reason, r.version) == (180, "Ringing", "SIP/2.0")
    assert r.header_values("Via") == req.header_values("Via")
    assert r.from_ == req.from_ and r.to.tag == "abc" and r.call_id == req.call_id and r.cseq == req.cseq
    raw = r.to_bytes()
    for line in _lines(INVITE):
        if line.startswith((b"Via:", b"From:", b"Call-ID:", b"CSeq:")):
            assert line in _lines(raw)  # copied verbatim
    assert b"To: Bob <sip:bob@example.com>;tag=abc\r\n" in raw and raw.endswith(b"Content-Length: 0\r\n\r\n")
    again = sip.parse(raw)
    assert again == r


def test_make_response_keeps_existing_to_tag_and_custom_parts():
    req = sip.parse(minimal().replace(b"To: <sip:bob@example.com>", b"To: <sip:bob@example.com>;tag=old"))
    r = sip.make_response(req, 200, "Fine", to_tag="new", headers=[("Contact", "<sip:b@h>")],
                          body=b"v=0\r\n", content_type="application/sdp")
    assert r.to.tag == "old" and r.reason == "Fine" and r.contacts[0].uri.user == "b"
    assert sip.parse(r.to_bytes()).body == b"v=0\r\n"


def test_make_response_100_copies_timestamp_and_unknown_codes():
    req = sip.parse(minimal(extra=b"Timestamp: 54\r\n"))
    assert sip.make_response(req, 100).header("Timestamp") == "54"
    assert not sip.make_response(req, 200).has_header("Timestamp")
    assert sip.make_response(req, 499).reason == "Bad Request"  # RFC 3261 §21: unknown x99 acts as x00
    with pytest.raises(ValueError):
        sip.make_response(req, 99)


def test_reason_phrases():
    assert sip.REASON_PHRASES[200] == "OK" and sip.REASON_PHRASES[483] == "Too Many Hops"
    assert sip.REASON_PHRASES[416] == "Unsupported URI Scheme" and sip.REASON_PHRASES[420] == "Bad Extension"
    assert sip.reason_phrase(299) == "OK"


def test_make_request():
    req = sip.make_request("OPTIONS", "sip:bob@example.com", [
        ("Via", "SIP/2.0/UDP me;branch=" + sip.new_branch()),
        ("From", "<sip:meter@example.com>;tag=" + sip.new_tag()),
        ("To", "<sip:bob@example.com>"),
        ("Call-ID", "k1"),
        ("CSeq", "1 OPTIONS"),
    ])
    parsed = sip.parse(req.to_bytes())
    assert parsed == req and parsed.max_forwards == 70 and parsed.header("Content-Length") == "0"
    inv = sip.make_request("INVITE", "sip:b@c", [("Max-Forwards", "10")], b"v=0\r\n", "application/sdp")
    assert inv.max_forwards == 10 and inv.content_type == "application/sdp" and inv.body == b"v=0\r\n"
    with pytest.raises(ValueError):
        sip.make_request("BAD METHOD", "sip:b@c", [])


def test_new_branch_and_tag():
    branches = {sip.new_branch() for _ in range(100)}
    assert len(branches) == 100 and all(b.startswith("z9hG4bK") and len(b) > 7 + 8 for b in branches)
    tags = {sip.new_tag() for _ in range(100)}
    assert len(tags) == 100 and all(len(t) >= 8 for t in tags)


def test_unsupported_extensions():
    m = sip.parse(minimal(extra=b"Proxy-Require: foo, Bar\r\nRequire: 100rel\r\n"))
    assert sip.unsupported(m, ["bar"]) == ["foo"]
    assert sip.unsupported(m, ["100rel"], header="Require") == []


# ---- stream framing -------------------------------------------------------------------------------------


def test_stream_reader_frames_by_content_length():
    a, b = minimal(body=b"12345"), minimal("INFO", body=b"")
    r = sip.StreamReader()
    out = r.feed(a + b[:10])
    assert [m.method for m in out] == ["OPTIONS"] and out[0].body == b"12345"
    assert [m.method for m in r.feed(b[10:])] == ["INFO"]
    assert r.feed(b"") == []


def test_stream_reader_byte_by_byte_and_keepalives():
    data = b"\r\n\r\n" + minimal(body=b"ab") + b"\r\n\r\n\r\n\r\n" + minimal("BYE") + b"\r\n"
    r = sip.StreamReader()
    out = []
    for i in range(len(data)):
        out += r.feed(data[i:i + 1])
    assert [m.method for m in out] == ["OPTIONS", "BYE"] and out[0].body == b"ab"
    assert r.pings == 3  # RFC 5626 §3.5.1 CRLFCRLF pings between messages


def test_stream_reader_missing_content_length_reads_no_body():
    r = sip.StreamReader()
    out = r.feed(minimal(cl=False) + minimal("BYE"))
    assert [m.method for m in out] == ["OPTIONS", "BYE"] and out[0].body == b""


@pytest.mark.parametrize("data", [
    minimal().replace(b"Content-Length: 0", b"Content-Length: -5"),
    minimal().replace(b"Content-Length: 0", b"Content-Length: 0\r\nl: 3"),
    b"OPTIONS sip:a@b SIP/2.0\r\nX: " + b"y" * 20000,
    minimal().replace(b"Content-Length: 0", b"Content-Length: 70000"),
])
def test_stream_reader_fatal_framing_errors(data):
    r = sip.StreamReader()
    with pytest.raises(SIPError) as e:
        r.feed(data)
    assert e.value.fatal and e.value.status in (400, 513)


def test_stream_reader_bad_message_is_not_fatal_and_earlier_messages_survive():
    good, bad = minimal(), minimal().replace(b"CSeq: 1 OPTIONS", b"CSeq: 1 INVITE")
    r = sip.StreamReader()
    with pytest.raises(SIPError) as e:
        r.feed(good + bad + minimal("BYE"))
    assert not e.value.fatal and isinstance(e.value.message, sip.Request)
    assert [m.method for m in r.feed(b"")] == ["OPTIONS", "BYE"]


def test_replace_top_via_fills_received_and_rport():
    """RFC 3261 §18.2.1 / RFC 3581 §4: the server rewrites only the top Via value."""
    m = sip.parse(INVITE)
    v = m.top_via
    v.params["received"] = "198.51.100.7"
    v.params["rport"] = "40000"
    m.replace_top_via(v)
    again = sip.parse(m.to_bytes())
    assert again.top_via.received == "198.51.100.7" and again.top_via.rport == 40000
    assert [x.host for x in again.vias] == ["pc33.example.com", "p1.example.net", "[2001:db8::1]"]
    assert b"Via: SIP/2.0/TCP p1.example.net;branch=z9hG4bK1, SIP/2.0/UDP [2001:db8::1]:5062" in m.to_bytes()


def test_start_line_fields_are_written_back():
    r = sip.parse(RESPONSE)
    r.reason = "Ringing Loudly"
    assert r.to_bytes().startswith(b"SIP/2.0 180 Ringing Loudly\r\n")
    r.status = 183
    assert sip.parse(r.to_bytes()).status == 183
    q = sip.parse(minimal())
    q.method = "INFO"
    assert q.to_bytes().startswith(b"INFO sip:bob@example.com SIP/2.0\r\n")
    with pytest.raises(ValueError):
        r.reason = "x\r\nVia: injected"


def test_headers_the_node_may_not_read_are_parsed_lazily():
    """DESIGN principle 3: a malformed Route/Record-Route/Date does not stop parse(); reading it does."""
    m = sip.parse(minimal(extra=b"Route: <sip:broken@@>\r\nRecord-Route: nonsense\r\nDate: whenever\r\n"))
    assert m.header("Date") == "whenever"
    with pytest.raises(SIPError):
        m.routes
    with pytest.raises(SIPError):
        m.record_routes
    assert m.to_bytes() == minimal(extra=b"Route: <sip:broken@@>\r\nRecord-Route: nonsense\r\nDate: whenever\r\n")
