"""RFC 5118 IPv6 torture messages (typed from the RFC's §4 text) against meter.codecs.sip / sdp.

RFC 5118 §4.10's two messages are printed without the empty line that ends a header section;
they are kept so (the codec reads a datagram's end as that line).

The RFC's printed Content-Length values of §4.6, §4.8 and §4.9 (268, 181, 236) do not match their
printed bodies (251, 189 and 245 octets with CRLF line ends; other implementations noted the same).
MESSAGES keeps the RFC's values; :func:`wire` corrects them to the body length, which is what the
tests feed, since RFC 5118 means these as valid messages about IPv6, not about Content-Length.
"""

from __future__ import annotations

import pytest

from meter.codecs import sdp, sip


def _dat(head: list[str], body: list[str] | None = None, *, blank_line: bool = True) -> bytes:
    text = "".join(line + "\r\n" for line in head)
    if blank_line:
        text += "\r\n"
    if body:
        text += "".join(line + "\r\n" for line in body)
    return text.encode()


IPV6_IN_SDP_BODY = [
    "v=0",
    "o=assistant 971731711378798081 0 IN IP6 2001:db8::20",
    "s=Live video feed for today's meeting",
    "c=IN IP6 2001:db8::20",
    "t=3338481189 3370017201",
    "m=audio 6000 RTP/AVP 2",
    "a=rtpmap:2 G726-32/8000",
    "m=video 6024 RTP/AVP 107",
    "a=rtpmap:107 H263-1998/90000",
]
MULT_IP_IN_SDP_BODY = [
    "v=0",
    "o=bob 280744730 28977631 IN IP4 host.example.com",
    "s=",
    "t=0 0",
    "m=audio 22334 RTP/AVP 0",
    "c=IN IP4 192.0.2.1",
    "m=video 6024 RTP/AVP 107",
    "c=IN IP6 2001:db8::1",
    "a=rtpmap:107 H263-1998/90000",
]
MAPPED_BODY = [
    "v=0",
    "o=assistant 971731711378798081 0 IN IP6 ::ffff:192.0.2.2",
    "s=Call me soon, please!",
    "c=IN IP6 ::ffff:192.0.2.2",
    "t=3338481189 3370017201",
    "m=audio 6000 RTP/AVP 2",
    "a=rtpmap:2 G726-32/8000",
    "m=video 6024 RTP/AVP 107",
    "a=rtpmap:107 H263-1998/90000",
]


def _register(ruri: str) -> list[str]:
    return [
        f"REGISTER {ruri} SIP/2.0",
        "To: sip:user@example.com",
        "From: sip:user@example.com;tag=81x2",
        "Via: SIP/2.0/UDP [2001:db8::9:1];branch=z9hG4bKas3-111",
        "Call-ID: SSG9559905523997077@hlau_4100",
        "Max-Forwards: 70",
        'Contact: "Caller" <sip:caller@[2001:db8::1]>',
        "CSeq: 98176 REGISTER",
        "Content-Length: 0",
    ]


def _options_410(host: str) -> list[str]:
    return [
        f"OPTIONS sip:user@[{host}] SIP/2.0",
        f"To: sip:user@[{host}]",
        "From: sip:user@example.com;tag=810x2",
        "Via: SIP/2.0/UDP lab1.east.example.com;branch=z9hG4bKas3-111",
        "Call-ID: G9559905523997077@hlau_4100",
        "CSeq: 689 OPTIONS",
        "Max-Forwards: 70",
        "Content-Length: 0",
    ]


MESSAGES: dict[str, bytes] = {
    # §4.1 Valid SIP message with an IPv6 reference
    "ipv6-good": _dat(_register("sip:[2001:db8::10]")),
    # §4.2 Invalid SIP message with an IPv6 reference (no brackets)
    "ipv6-bad": _dat(_register("sip:2001:db8::10")),
    # §4.3 Port ambiguous in a SIP URI: the 5070 is part of the address
    "port-ambiguous": _dat(_register("sip:[2001:db8::10:5070]")),
    # §4.4 Port unambiguous in a SIP URI
    "port-unambiguous": _dat(_register("sip:[2001:db8::10]:5070")),
    # §4.5 IPv6 reference delimiters in Via header (with and without brackets in received=)
    "via-received-param-with-delim": _dat([
        "BYE sip:[2001:db8::10] SIP/2.0",
        "To: sip:user@example.com;tag=bd76ya",
        "From: sip:user@example.com;tag=81x2",
        "Via: SIP/2.0/UDP [2001:db8::9:1];received=[2001:db8::9:255];branch=z9hG4bKas3-111",
        "Call-ID: SSG9559905523997077@hlau_4100",
        "Max-Forwards: 70",
        "CSeq: 321 BYE",
        "Content-Length: 0",
    ]),
    "via-received-param-no-delim": _dat([
        "OPTIONS sip:[2001:db8::10] SIP/2.0",
        "To: sip:user@example.com",
        "From: sip:user@example.com;tag=81x2",
        "Via: SIP/2.0/UDP [2001:db8::9:1];received=2001:db8::9:255;branch=z9hG4bKas3",
        "Call-ID: SSG95523997077@hlau_4100",
        "Max-Forwards: 70",
        'Contact: "Caller" <sip:caller@[2001:db8::9:1]>',
        "CSeq: 921 OPTIONS",
        "Content-Length: 0",
    ]),
    # §4.6 SIP request with IPv6 addresses in SDP body
    "ipv6-in-sdp": _dat([
        "INVITE sip:user@[2001:db8::10] SIP/2.0",
        "To: sip:user@[2001:db8::10]",
        "From: sip:user@example.com;tag=81x2",
        "Via: SIP/2.0/UDP [2001:db8::20];branch=z9hG4bKas3-111",
        "Call-ID: SSG9559905523997077@hlau_4100",
        'Contact: "Caller" <sip:caller@[2001:db8::20]>',
        "CSeq: 8612 INVITE",
        "Max-Forwards: 70",
        "Content-Type: application/sdp",
        "Content-Length: 268",
    ], IPV6_IN_SDP_BODY),
    # §4.7 Multiple IP addresses in SIP headers
    "mult-ip-in-header": _dat([
        "BYE sip:user@host.example.net SIP/2.0",
        "Via: SIP/2.0/UDP [2001:db8::9:1]:6050;branch=z9hG4bKas3-111",
        "Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKjhja8781hjuaij65144",
        "Via: SIP/2.0/TCP [2001:db8::9:255];branch=z9hG4bK451jj;received=192.0.2.200",
        "Call-ID: 997077@lau_4100",
        "Max-Forwards: 70",
        "CSeq: 89187 BYE",
        "To: sip:user@example.net;tag=9817--94",
        "From: sip:user@example.com;tag=81x2",
        "Content-Length: 0",
    ]),
    # §4.8 Multiple IP addresses in SDP
    "mult-ip-in-sdp": _dat([
        "INVITE sip:user@[2001:db8::10] SIP/2.0",
        "To: sip:user@[2001:db8::10]",
        "From: sip:user@example.com;tag=81x2",
        "Via: SIP/2.0/UDP [2001:db8::9:1];branch=z9hG4bKas3-111",
        "Call-ID: SSG9559905523997077@hlau_4100",
        'Contact: "Caller" <sip:caller@[2001:db8::9:1]>',
        "Max-Forwards: 70",
        "CSeq: 8912 INVITE",
        "Content-Type: application/sdp",
        "Content-Length: 181",
    ], MULT_IP_IN_SDP_BODY),
    # §4.9 IPv4-mapped IPv6 addresses
    "ipv4-mapped-ipv6": _dat([
        "INVITE sip:user@example.com SIP/2.0",
        "To: sip:user@example.com",
        "From: sip:user@east.example.com;tag=81x2",
        "Via: SIP/2.0/UDP [::ffff:192.0.2.10]:19823;branch=z9hG4bKbh19",
        "Via: SIP/2.0/UDP [::ffff:192.0.2.2];branch=z9hG4bKas3-111",
        "Call-ID: SSG9559905523997077@hlau_4100",
        'Contact: "T. desk phone" <sip:ted@[::ffff:192.0.2.2]>',
        "CSeq: 612 INVITE",
        "Max-Forwards: 70",
        "Content-Type: application/sdp",
        "Content-Length: 236",
    ], MAPPED_BODY),
    # §4.10 IPv6 reference bug in RFC 3261 ABNF (printed without the empty line)
    "ipv6-bug-abnf-3-colons": _dat(_options_410("2001:db8:::192.0.2.1"), blank_line=False),
    "ipv6-correct-abnf-2-colons": _dat(_options_410("2001:db8::192.0.2.1"), blank_line=False),
}

PRINTED_CONTENT_LENGTH_WRONG = {"ipv6-in-sdp": (268, 251), "mult-ip-in-sdp": (181, 189), "ipv4-mapped-ipv6": (236, 245)}


def wire(name: str) -> bytes:
    data = MESSAGES[name]
    if name in PRINTED_CONTENT_LENGTH_WRONG:
        printed, actual = PRINTED_CONTENT_LENGTH_WRONG[name]
        data = data.replace(b"Content-Length: %d\r\n" % printed, b"Content-Length: %d\r\n" % actual)
    return data


# name: (valid?, RFC 5118 section, why)
EXPECT = {
    "ipv6-good": (True, "4.1", "IPv6 references in brackets everywhere"),
    "ipv6-bad": (False, "4.2", "IPv6 address without brackets in the Request-URI"),
    "port-ambiguous": (True, "4.3", "[2001:db8::10:5070] is an address (no port)"),
    "port-unambiguous": (True, "4.4", "[2001:db8::10]:5070 is an address and a port"),
    "via-received-param-with-delim": (True, "4.5", "received=[v6] accepted"),
    "via-received-param-no-delim": (True, "4.5", "received=v6 accepted"),
    "ipv6-in-sdp": (True, "4.6", "IPv6 in SDP c=/o="),
    "mult-ip-in-header": (True, "4.7", "IPv4 and IPv6 Vias mixed"),
    "mult-ip-in-sdp": (True, "4.8", "one stream on IPv4, one on IPv6"),
    "ipv4-mapped-ipv6": (True, "4.9", "::ffff:a.b.c.d in Via, Contact, SDP"),
    "ipv6-bug-abnf-3-colons": (True, "4.10", "RFC 5118: tolerate the 3-colon form of RFC 3261's ABNF"),
    "ipv6-correct-abnf-2-colons": (True, "4.10", "the correct form"),
}


def test_table_matches_messages():
    assert set(EXPECT) == set(MESSAGES)


def test_printed_content_lengths():
    """The typed bodies have the lengths other implementers measured; as printed, the §4.6 message
    (Content-Length beyond the datagram) is rejected like RFC 4475's clerr, and corrected it parses."""
    for name, (printed, actual) in PRINTED_CONTENT_LENGTH_WRONG.items():
        assert len(MESSAGES[name].split(b"\r\n\r\n", 1)[1]) == actual
        assert b"Content-Length: %d\r\n" % printed in MESSAGES[name]
        m = sip.parse(wire(name))
        assert int(m.header("Content-Length")) == len(m.body) == actual
    with pytest.raises(sip.SIPError, match="Content-Length larger"):
        sip.parse(MESSAGES["ipv6-in-sdp"])



@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_rfc5118(name):
    valid, section, why = EXPECT[name]
    data = wire(name)
    if not valid:
        with pytest.raises(sip.SIPError) as e:
            sip.parse(data)
        assert e.value.status == 400, (section, why)
        assert isinstance(e.value.message, sip.Request)
        return
    m = sip.parse(data)
    assert sip.parse(m.to_bytes()) == m
    for v in m.vias:
        assert sip.parse_via(str(v)) == v
    for na in (m.from_, m.to, *m.contacts):
        assert sip.parse_name_addr(str(na)) == na
    assert sip.parse_uri(str(m.request_uri)) == m.request_uri
    if m.body:
        s = sdp.parse(m.body)
        assert sdp.parse(s.to_bytes()) == s


def test_port_ambiguous_reads_no_port():
    """RFC 5118 §4.3: the last group is part of the address; there is no port."""
    u = sip.parse(wire("port-ambiguous")).request_uri
    assert (u.host, u.port) == ("[2001:db8::10:5070]", None)


def test_port_unambiguous_reads_the_port():
    """RFC 5118 §4.4."""
    u = sip.parse(wire("port-unambiguous")).request_uri
    assert (u.host, u.port) == ("[2001:db8::10]", 5070)


def test_via_received_both_forms():
    """RFC 5118 §4.5: received= with and without brackets."""
    assert sip.parse(wire("via-received-param-with-delim")).top_via.received == "[2001:db8::9:255]"
    assert sip.parse(wire("via-received-param-no-delim")).top_via.received == "2001:db8::9:255"


def test_mult_ip_in_header_vias():
    """RFC 5118 §4.7: hosts and ports of mixed-family Vias."""
    vias = sip.parse(wire("mult-ip-in-header")).vias
    assert [(v.host, v.port) for v in vias] == [("[2001:db8::9:1]", 6050), ("192.0.2.1", None), ("[2001:db8::9:255]", None)]
    assert vias[2].received == "192.0.2.200"


def test_sdp_connections_per_media():
    """RFC 5118 §4.6 / §4.8: session and media level c= lines in IPv6."""
    s = sdp.parse(sip.parse(wire("ipv6-in-sdp")).body)
    assert s.connection == "IN IP6 2001:db8::20" and [m.kind for m in s.media] == ["audio", "video"]
    s = sdp.parse(sip.parse(wire("mult-ip-in-sdp")).body)
    assert [m.connection for m in s.media] == ["IN IP4 192.0.2.1", "IN IP6 2001:db8::1"]


def test_ipv4_mapped_contact():
    """RFC 5118 §4.9."""
    m = sip.parse(wire("ipv4-mapped-ipv6"))
    assert m.contacts[0].uri.host == "[::ffff:192.0.2.2]" and m.vias[0].port == 19823


def test_three_colon_form_is_kept_verbatim():
    """RFC 5118 §4.10: tolerated, and a forwarded message is not rewritten behind the sender's back."""
    m = sip.parse(wire("ipv6-bug-abnf-3-colons"))
    assert m.request_uri.host == "[2001:db8:::192.0.2.1]"
    assert m.to_bytes().startswith(b"OPTIONS sip:user@[2001:db8:::192.0.2.1] SIP/2.0\r\n")


def test_malformed_ipv6_references_rejected():
    for text in ("sip:[2001:db8::zz]", "sip:[2001:db8::1", "sip:[1:2:3:4:5:6:7:8:9]", "sip:[::1]x"):
        with pytest.raises(sip.SIPError):
            sip.parse_uri(text)
