"""SIP value grammar, sans-I/O: URIs, name-addr, Via, generic params, comma lists (RFC 3261 §19, §20, §25).

Everything here works on one header *value* that the message layer has already unfolded
(RFC 3261 §7.3.1). Parsers raise :class:`SIPError` and nothing else; serialisers (``__str__``)
produce the canonical form, which parses back to an equal object.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

__all__ = [
    "SIPError", "URI", "NameAddr", "Via",
    "parse_uri", "parse_name_addr", "parse_via", "parse_params", "split_commas",
    "unquote", "quote", "unescape",
]


class SIPError(ValueError):
    """The only exception the SIP codec raises on bad input.

    ``reason`` is fit for a reason phrase, ``status`` is the response to answer with (h11's
    ``error_status_hint``). ``message`` is the message as far as it could be parsed (start line
    and header lines split), so a node can still build the ``400`` with the request's Via, From,
    To, Call-ID and CSeq (RFC 3261 §8.2.6); it is ``None`` when framing itself failed.
    ``fatal`` is true when a stream (TCP/TLS) has lost its framing and must be closed.
    """

    def __init__(self, reason: str, status: int = 400, *, message=None, fatal: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.message = message
        self.fatal = fatal

    def __reduce__(self):  # keep pickling/copy working with keyword-only args
        return (_rebuild_error, (self.reason, self.status, self.fatal))


def _rebuild_error(reason, status, fatal):
    return SIPError(reason, status, fatal=fatal)


# RFC 3261 §25.1: token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~")
_TOKEN_CHARS = r"A-Za-z0-9\-.!%*_+`'~"
_TOKEN_RE = re.compile(rf"[{_TOKEN_CHARS}]+")
# RFC 3261 §25.1: quoted-string, quoted-pair = "\" (%x00-09 / %x0B-0C / %x0E-7F)
_QUOTED = r'"(?:[^"\\\r\n]|\\[\x00-\x09\x0b\x0c\x0e-\x7f])*"'
_QUOTED_RE = re.compile(_QUOTED)
_QPAIR_RE = re.compile(r"\\(.)", re.S)
# gen-value = token / host / quoted-string (RFC 3261 §25.1); host adds "[", "]" and ":" (IPv6).
_PARAM_RE = re.compile(
    rf"[ \t]*;[ \t]*([{_TOKEN_CHARS}]+)(?:[ \t]*=[ \t]*({_QUOTED}|[{_TOKEN_CHARS}:\[\]]+))?[ \t]*"
)
_DISPLAY_TOKENS_RE = re.compile(rf"[{_TOKEN_CHARS}]+(?:[ \t]+[{_TOKEN_CHARS}]+)*")
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*")
_HOSTNAME_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9\-.]*[A-Za-z0-9.])?")
_PORT_RE = re.compile(r"[0-9]{1,5}")
# RFC 3261 §25.1 user = 1*( unreserved / escaped / user-unreserved ); password likewise.
_USER_RE = re.compile(r"(?:[A-Za-z0-9\-_.!~*'()&=+$,;?/]|%[0-9A-Fa-f]{2})+")
_PASSWORD_RE = re.compile(r"(?:[A-Za-z0-9\-_.!~*'()&=+$,]|%[0-9A-Fa-f]{2})*")
# paramchar = param-unreserved / unreserved / escaped (RFC 3261 §25.1)
_URI_PARAM_RE = re.compile(r"(?:[A-Za-z0-9\-_.!~*'()\[\]/:&+$]|%[0-9A-Fa-f]{2})+")
# hname/hvalue = hnv-unreserved / unreserved / escaped; hvalue may be empty
_URI_HEADER_RE = re.compile(r"(?:[A-Za-z0-9\-_.!~*'()\[\]/?:+$]|%[0-9A-Fa-f]{2})*")
_OPAQUE_RE = re.compile(r"[^\s<>\"]+")
_TEL_RE = re.compile(r"[0-9A-Za-z+\-.()*#%]+")
_ESCAPE_RE = re.compile(r"%([0-9A-Fa-f]{2})")
_WS = " \t"
_VIA_HEAD_RE = re.compile(
    rf"([{_TOKEN_CHARS}]+)[ \t]*/[ \t]*([{_TOKEN_CHARS}]+)[ \t]*/[ \t]*([{_TOKEN_CHARS}]+)[ \t]+"
    r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-.]+)(?:[ \t]*:[ \t]*([0-9]{1,5}))?"
)


# The compiled scanner's versions of the fast paths below (codecs/_sipscan.c), set by sip.use_codec:
# same language, same values; ``None`` from them means "not the fast shape", and Python goes on.
_fast_uri = None
_fast_name_addr = None
_fast_via = None


def unquote(text: str) -> str:
    """``"a \\"b\\""`` -> ``a "b"``; text without surrounding quotes is returned as is."""
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        inner = text[1:-1]
        return _QPAIR_RE.sub(_unpair, inner) if "\\" in inner else inner
    return text


def _unpair(m: re.Match) -> str:
    return m.group(1)


def quote(text: str) -> str:
    """Inverse of :func:`unquote` (RFC 3261 §25.1 quoted-pair for ``"`` and ``\\``)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def unescape(text: str) -> str:
    """Decode %HH escapes (RFC 3261 §19.1.2) as UTF-8, keeping undecodable octets escaped."""
    if "%" not in text:
        return text
    try:
        raw = _ESCAPE_RE.sub(lambda m: chr(int(m.group(1), 16)), text)
        return raw.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return text


def split_commas(value: str) -> list[str]:
    """Split a list header value on commas outside quotes and ``<>`` (RFC 3261 §7.3.1)."""
    if "," not in value:
        v = value.strip(_WS)
        return [v] if v else []
    out: list[str] = []
    start = 0
    in_quote = in_angle = False
    i = 0
    n = len(value)
    while i < n:
        c = value[i]
        if in_quote:
            if c == "\\":
                i += 1
            elif c == '"':
                in_quote = False
        elif c == '"':
            in_quote = True
        elif c == "<":
            in_angle = True
        elif c == ">":
            in_angle = False
        elif c == "," and not in_angle:
            out.append(value[start:i].strip(_WS))
            start = i + 1
        i += 1
    out.append(value[start:].strip(_WS))
    return [v for v in out if v]


def parse_params(text: str, pos: int = 0, what: str = "header") -> dict[str, str | None]:
    """``;a=1;b;c="x y"`` from ``pos`` to the end -> ``{"a": "1", "b": None, "c": '"x y"'}``.

    Names are lower-cased (RFC 3261 §7.3.1: parameter names are case-insensitive); values are
    kept as written, quoted strings with their quotes. Empty parameters (``;;``) are an error.
    """
    params: dict[str, str | None] = {}
    n = len(text)
    match = _PARAM_RE.match
    while pos < n:
        m = match(text, pos)
        if m is None:
            raise SIPError(f"Bad Request - malformed {what} parameter")
        params[m.group(1).lower()] = m.group(2)
        pos = m.end()
    return params


def _format_params(params: dict[str, str | None]) -> str:
    if not params:  # most URIs and name-addrs
        return ""
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


def _check_host(host: str, what: str) -> str:
    if host.startswith("["):
        # RFC 5118 §4.1: IPv6 references are bracketed; check the address inside is one.
        if not host.endswith("]"):
            raise SIPError(f"Bad Request - malformed IPv6 reference in {what}")
        addr = host[1:-1]
        try:
            ipaddress.IPv6Address(addr)
        except ValueError:
            # RFC 5118 §4.10: RFC 3261's ABNF let "2001:db8:::192.0.2.1" through; tolerate it.
            try:
                ipaddress.IPv6Address(addr.replace(":::", "::", 1) if ":::" in addr else "-")
            except ValueError:
                raise SIPError(f"Bad Request - malformed IPv6 reference in {what}") from None
        return host
    if not _HOSTNAME_RE.fullmatch(host):
        raise SIPError(f"Bad Request - malformed host in {what}")
    return host


def _check_port(port: str, what: str) -> int:
    if not _PORT_RE.fullmatch(port) or int(port) > 65535:
        raise SIPError(f"Bad Request - malformed port in {what}")
    return int(port)


@dataclass(eq=True, slots=True)
class URI:
    """A SIP, SIPS or tel URI (RFC 3261 §19.1, RFC 3966); other schemes are kept opaque.

    ``user`` and ``password`` are kept as written (escapes included) so that ``str()`` gives the
    same text; :attr:`aor` normalises for comparisons (RFC 3261 §19.1.4).
    """

    scheme: str
    user: str | None = None
    password: str | None = None
    host: str = ""
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    opaque: str | None = None  # everything after "scheme:" for schemes other than sip/sips/tel
    _text: str = field(default="", init=False, compare=False, repr=False)
    """The text this URI was parsed from, when ``str()`` would give exactly it: every Contact and
    Route a proxy copies is then not rebuilt. URIs are values: never edit one after parsing."""

    @property
    def is_sip(self) -> bool:
        return self.scheme in ("sip", "sips")

    @property
    def aor(self) -> str:
        """Address-of-record key: ``scheme:user@host`` with the host lower-cased, escapes in the
        user decoded (RFC 3261 §19.1.4: ``%75ser`` equals ``user``); port and params dropped."""
        if self.opaque is not None:
            return f"{self.scheme}:{self.opaque}"
        if self.scheme == "tel":
            return f"tel:{self.user}"
        user = unescape(self.user) if self.user is not None else None
        host = self.host.lower()
        return f"{self.scheme}:{user}@{host}" if user is not None else f"{self.scheme}:{host}"

    def __str__(self) -> str:
        if self._text:
            return self._text
        if self.opaque is not None:
            return f"{self.scheme}:{self.opaque}"
        if self.scheme == "tel":
            return f"tel:{self.user}{_format_params(self.params)}"
        out = [self.scheme, ":"]
        if self.user is not None:
            out.append(self.user)
            if self.password is not None:
                out += [":", self.password]
            out.append("@")
        out.append(self.host)
        if self.port is not None:
            out += [":", str(self.port)]
        out.append(_format_params(self.params))
        if self.headers:
            out += ["?", "&".join(f"{k}={v}" for k, v in self.headers.items())]
        return "".join(out)


def parse_uri(text: str) -> URI:
    """Parse a URI (RFC 3261 §25.1 SIP-URI / SIPS-URI, RFC 3966 tel, else absoluteURI)."""
    if _fast_uri is not None:
        found = _fast_uri(text)
        if found is not None:
            scheme, user, host, port, params, utext = found
            uri = URI(scheme, user, None, host, port, params, {})
            if utext is not None:
                uri._text = utext
            return uri
    scheme, sep, rest = text.partition(":")
    if not sep or not _SCHEME_RE.fullmatch(scheme):
        raise SIPError("Bad Request - malformed URI")
    s = scheme.lower()
    if s == "sip" or s == "sips":
        return _parse_sip_uri(s, rest)
    if s == "tel":
        number, _, ptext = rest.partition(";")
        if not _TEL_RE.fullmatch(number):
            raise SIPError("Bad Request - malformed tel URI")
        params = _parse_uri_params(ptext.split(";")) if ptext else {}
        return URI("tel", user=number, params=params)
    if not _OPAQUE_RE.fullmatch(rest):
        raise SIPError("Bad Request - malformed URI")
    return URI(s, opaque=rest)


def _parse_uri_params(parts: list[str]) -> dict[str, str | None]:
    params: dict[str, str | None] = {}
    for p in parts:
        name, eq, value = p.partition("=")
        if not _URI_PARAM_RE.fullmatch(name) or (eq and not _URI_PARAM_RE.fullmatch(value)):
            raise SIPError("Bad Request - malformed URI parameter")
        params[name.lower()] = value if eq else None
    return params


# Fast path for the common shape (no escapes, no ";"/"?"/":" in the user part, no ?headers); anything
# else takes the general path below, which accepts exactly the same language plus the rest.
_SIP_URI_FAST = re.compile(
    r"(?:([A-Za-z0-9\-_.!~*'()&=+$,]+)@)?([A-Za-z0-9](?:[A-Za-z0-9\-.]*[A-Za-z0-9.])?)(?::([0-9]{1,5}))?"
    r"((?:;[A-Za-z0-9\-_.!~*'()\[\]/:&+$]+(?:=[A-Za-z0-9\-_.!~*'()\[\]/:&+$]+)?)*)"
)


def _parse_sip_uri(scheme: str, rest: str) -> URI:
    m = _SIP_URI_FAST.fullmatch(rest)
    if m is not None:
        user, host, port, ptext = m.groups()
        if port is not None:
            port = int(port)
            if port > 65535:
                raise SIPError("Bad Request - malformed port in URI")
        params: dict[str, str | None] = {}
        if ptext:
            for p in ptext[1:].split(";"):
                name, eq, value = p.partition("=")
                params[name.lower()] = value if eq else None
        uri = URI(scheme, user, None, host, port, params, {})
        if scheme.islower() and ptext == ptext.lower():  # str() rebuilds exactly this text
            uri._text = f"{scheme}:{rest}"
        return uri
    return _parse_sip_uri_general(scheme, rest)


def _parse_sip_uri_general(scheme: str, rest: str) -> URI:
    # RFC 3261 §19.1.1: the user part may hold ";" and "?" but never an unescaped "@", so the
    # first "@" ends userinfo (RFC 4475 §3.1.1.2 intmeth, §3.1.1.9 semiuri).
    at = rest.find("@")
    user = password = None
    if at >= 0:
        userinfo, rest = rest[:at], rest[at + 1:]
        user, colon, pw = userinfo.partition(":")
        if not _USER_RE.fullmatch(user) or (colon and not _PASSWORD_RE.fullmatch(pw)):
            raise SIPError("Bad Request - malformed user part in URI")
        if colon:
            password = pw
    rest, q, htext = rest.partition("?")
    headers: dict[str, str] = {}
    if q:
        for h in htext.split("&"):
            name, eq, value = h.partition("=")
            if not name or not eq or not _URI_HEADER_RE.fullmatch(name) or not _URI_HEADER_RE.fullmatch(value):
                raise SIPError("Bad Request - malformed URI header")
            headers[name] = value
    hostport, *pparts = rest.split(";")
    params = _parse_uri_params(pparts) if pparts else {}
    port = None
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise SIPError("Bad Request - malformed IPv6 reference in URI")
        host, tail = hostport[: end + 1], hostport[end + 1:]
        if tail:
            if tail[0] != ":":
                raise SIPError("Bad Request - malformed URI host")
            port = _check_port(tail[1:], "URI")
    else:
        host, colon, ptext = hostport.partition(":")
        if colon:
            port = _check_port(ptext, "URI")
    _check_host(host, "URI")
    return URI(scheme, user, password, host, port, params, headers)


@dataclass(eq=True, slots=True)
class NameAddr:
    """``display <uri>;params`` or ``uri;params`` (RFC 3261 §20.10, §25.1 name-addr / addr-spec).

    ``display`` is the decoded display name (quotes and quoted-pairs removed), ``None`` if absent.
    """

    display: str | None
    uri: URI
    params: dict[str, str | None] = field(default_factory=dict)

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    @property
    def expires(self) -> int | None:
        """The ``expires`` contact parameter (RFC 3261 §10.2.1.1), clamped to 2**32-1 as RFC 4475
        §3.1.2.4 allows; ``None`` when absent or not a number."""
        v = self.params.get("expires")
        if v is None or not v.isdigit():
            return None
        return min(int(v), 2**32 - 1)

    def __str__(self) -> str:
        head = f"{quote(self.display)} " if self.display is not None else ""
        return f"{head}<{self.uri}>{_format_params(self.params)}"


# Fast path for the everyday shapes, ``["Name" ]<sip:user@host[:port][;p=v]>[;tag=x]`` without blanks
# inside, escapes or quoted parameter values; everything else takes the general path below.
# quoted values are allowed when they hold no ";", "\\" or line break, so splitting on ";" stays exact
_SIMPLE_PARAMS = rf'(?:;[{_TOKEN_CHARS}]+(?:=(?:[{_TOKEN_CHARS}]+|"[^"\\;\r\n]*"))?)*'
_NAME_ADDR_FAST = re.compile(
    rf'(?:"([^"\\\r\n]*)" ?|([{_TOKEN_CHARS}]+(?: [{_TOKEN_CHARS}]+)*) ?)?<(sips?):(?:([A-Za-z0-9\-_.!~*\'()&=+$,]+)@)?'
    r"([A-Za-z0-9](?:[A-Za-z0-9\-.]*[A-Za-z0-9.])?)(?::([0-9]{1,5}))?"
    r"((?:;[A-Za-z0-9\-_.!~*'()\[\]/:&+$]+(?:=[A-Za-z0-9\-_.!~*'()\[\]/:&+$]+)?)*)>"
    rf"({_SIMPLE_PARAMS})"
)


def _simple_params(text: str) -> dict[str, str | None]:
    params: dict[str, str | None] = {}
    for p in text[1:].split(";"):
        name, eq, value = p.partition("=")
        params[name.lower()] = value if eq else None
    return params


def parse_name_addr(text: str) -> NameAddr:
    """Parse From/To/Contact/Route style values (RFC 3261 §25.1 name-addr / addr-spec + params)."""
    if _fast_name_addr is not None:
        found = _fast_name_addr(text)
        if found is not None:
            display, scheme, user, host, port, uparams, utext, params = found
            uri = URI(scheme, user, None, host, port, uparams, {})
            if utext is not None:
                uri._text = utext
            return NameAddr(display, uri, params)
    s = text.strip(_WS)
    m = _NAME_ADDR_FAST.fullmatch(s)
    if m is not None:
        display, tokens, scheme, user, host, port, uparams, hparams = m.groups()
        if tokens is not None:
            display = tokens
        if port is not None:
            port = int(port)
            if port > 65535:
                raise SIPError("Bad Request - malformed port in URI")
        uri = URI(scheme, user, None, host, port, _simple_params(uparams) if uparams else {}, {})
        if not uparams or uparams == uparams.lower():  # str() rebuilds exactly this text
            uri._text = s[m.start(3):m.end(7)]
        return NameAddr(display, uri, _simple_params(hparams) if hparams else {})
    return _parse_name_addr_general(s)


def _parse_name_addr_general(s: str) -> NameAddr:
    display: str | None = None
    if s.startswith('"'):
        m = _QUOTED_RE.match(s)
        if m is None:
            raise SIPError("Bad Request - unterminated quoted string in display name")
        display = unquote(m.group(0))
        lt = m.end()
        while lt < len(s) and s[lt] in _WS:
            lt += 1
        if lt >= len(s) or s[lt] != "<":
            raise SIPError("Bad Request - quoted display name without <URI>")
        return _angle(s, lt, display)
    lt = s.find("<")
    if lt >= 0:
        head = s[:lt].rstrip(_WS)
        if head:
            if not _DISPLAY_TOKENS_RE.fullmatch(head):
                # RFC 4475 §3.1.2.15 baddn: a display name with non-token characters must be quoted.
                raise SIPError("Bad Request - display name must be quoted")
            display = head
        return _angle(s, lt, display)
    # addr-spec form: RFC 3261 §20.10, ";" starts header params and the URI may not hold ",", "?" or ";".
    semi = s.find(";")
    uri_text = s if semi < 0 else s[:semi]
    if not uri_text or "?" in uri_text or "," in uri_text:
        # RFC 4475 §3.1.2.13 regbadct: such a URI must be enclosed in <>.
        raise SIPError("Bad Request - URI with parameters or headers must be enclosed in <>")
    uri = parse_uri(uri_text.rstrip(_WS))
    params = parse_params(s, semi) if semi >= 0 else {}
    return NameAddr(None, uri, params)


def _angle(s: str, lt: int, display: str | None) -> NameAddr:
    gt = s.find(">", lt)
    if gt < 0:
        raise SIPError("Bad Request - unterminated <URI>")
    # RFC 3261 §25.1: LAQUOT = SWS "<" and RAQUOT = ">" SWS: no whitespace inside (RFC 4475 §3.1.2.14 badaspec).
    uri = parse_uri(s[lt + 1: gt])
    return NameAddr(display, uri, parse_params(s, gt + 1))


@dataclass(eq=True, slots=True)
class Via:
    """One Via value (RFC 3261 §20.42): ``SIP/2.0/UDP host:port;branch=...``."""

    protocol: str
    transport: str
    host: str
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    @property
    def received(self) -> str | None:
        return self.params.get("received")

    @property
    def rport(self) -> int | None:
        """RFC 3581 §4: the rport value filled in by the server; ``None`` if absent or empty."""
        v = self.params.get("rport")
        return int(v) if v is not None and v.isdigit() else None

    @property
    def has_rport(self) -> bool:
        """RFC 3581 §3: the client asked for symmetric response routing (``;rport``)."""
        return "rport" in self.params

    @property
    def sent_by(self) -> tuple[str, int | None]:
        return self.host, self.port

    def __str__(self) -> str:
        port = f":{self.port}" if self.port is not None else ""
        return f"{self.protocol}/{self.transport} {self.host}{port}{_format_params(self.params)}"


_VIA_FAST = re.compile(
    r"SIP/2\.0/([A-Za-z]+) ([A-Za-z0-9](?:[A-Za-z0-9\-.]*[A-Za-z0-9.])?)(?::([0-9]{1,5}))?"
    rf"({_SIMPLE_PARAMS})"
)
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4_RE = re.compile(rf"(?:{_OCTET}\.){{3}}{_OCTET}")


def _check_received(rv: str | None) -> None:
    # RFC 3261 §18.2.1 / RFC 5118 §4.5: received holds an IPv4 or IPv6 address (brackets optional).
    if rv is None:
        raise SIPError("Bad Request - malformed Via received parameter")
    if _IPV4_RE.fullmatch(rv):
        return
    try:
        ipaddress.IPv6Address(rv[1:-1] if rv.startswith("[") else rv)
    except ValueError:
        raise SIPError("Bad Request - malformed Via received parameter") from None


def parse_via(text: str) -> Via:
    """Parse one Via value (not a comma list; see :func:`split_commas`)."""
    if _fast_via is not None:
        found = _fast_via(text)
        if found is not None:
            transport, host, port, params = found
            if "received" in params:
                _check_received(params["received"])
            return Via("SIP/2.0", transport, host, port, params)
    s = text.strip(_WS)
    m = _VIA_FAST.fullmatch(s)
    if m is not None:
        transport, host, port, ptext = m.groups()
        params = _simple_params(ptext) if ptext else {}
        if "received" in params:
            _check_received(params["received"])
        return Via("SIP/2.0", transport.upper(), host, _check_port(port, "Via") if port is not None else None, params)
    return _parse_via_general(s)


def _parse_via_general(s: str) -> Via:
    m = _VIA_HEAD_RE.match(s)
    if m is None:
        raise SIPError("Bad Request - malformed Via")
    name, version, transport, host, port = m.groups()
    _check_host(host, "Via")
    params = parse_params(s, m.end(), "Via")
    if "received" in params:
        _check_received(params["received"])
    return Via(
        f"{name.upper()}/{version}",
        transport.upper(),
        host,
        _check_port(port, "Via") if port is not None else None,
        params,
    )
