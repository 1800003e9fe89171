"""SIP messages, sans-I/O (RFC 3261 §7, §18.3, §20).

Bytes in, :class:`Request` / :class:`Response` out, bytes back; no sockets, no clocks.

Hot path (docs/design.md principle 3): :func:`parse` finds the start line, splits the header lines once
(unfolding continuation lines, RFC 3261 §7.3.1) and indexes them by canonical lower-case long name
(compact forms folded in, §7.3.3). Header values are decoded and parsed only when asked, and
cached. A proxy edit (push a Via, add a Record-Route, decrement Max-Forwards) touches only its own
line: every other line goes back out with the bytes it came in with.

What :func:`parse` checks eagerly, and why (everything else is checked when first read):

* start line: exactly ``Method SP Request-URI SP SIP/2.0`` (RFC 3261 §7.1, RFC 4475 §3.1.2.8-10);
  any other version -> 505 (§21.5.6, RFC 4475 §3.1.2.16); status code of three digits (§7.2).
* Request-URI: sip/sips must be well formed and carry no ``?headers`` (§19.1.1 table, RFC 4475
  §3.1.2.11 escruri -> 400); tel is accepted; any other scheme -> 416 (§8.2.2.1, RFC 4475 §3.3.2-3).
* Via, From, To, Call-ID and CSeq present (§8.1.1, RFC 4475 §3.3.1 insuf -> 400), and From, To,
  Call-ID, CSeq, Max-Forwards, Content-Length at most once (§7.3.1, RFC 4475 §3.3.8 multi01,
  §3.3.9 mcl01). Max-Forwards is *not* required: RFC 2543 peers omit it (RFC 4475 §3.4.1 inv2543)
  and a proxy inserts it (§16.6 step 3).
* The values a node always reads, so parsing them now costs nothing extra: every Via, From, To,
  CSeq (number < 2**31, method equal to the request's, §8.1.1.5 / RFC 4475 §3.1.2.17-18),
  Max-Forwards (0-255, §20.22), Expires (< 2**32, §20.19), Contact, Content-Length (§18.3, RFC 4475
  §3.1.2.2-3 clerr/ncl).

On failure :class:`SIPError` carries ``status`` and, when the lines could be split, ``message`` (the
half-checked message) so the node can still answer ``400``/``416``/``505`` with the right Via,
From, To, Call-ID and CSeq (RFC 3261 §8.2.6.1). What stays with the node: unknown Require /
Proxy-Require (420, see :func:`unsupported`), Max-Forwards 0 (483), unsupported media types.
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass
from typing import Iterable, NamedTuple

from . import sip_grammar as _grammar
from .sip_grammar import (
    URI, NameAddr, SIPError, Via, parse_name_addr, parse_params, parse_uri, parse_via, split_commas,
    quote, unquote,
)
from .sip_names import (
    COMPACT_FORMS, LIST_HEADERS, REASON_PHRASES, SINGLE_HEADERS, canonical, reason_phrase, spelling,
)

__all__ = [
    "SIPError", "Limits", "DEFAULT_LIMITS", "parse", "StreamReader",
    "Message", "Request", "Response", "CSeq", "URI", "NameAddr", "Via",
    "parse_uri", "parse_name_addr", "parse_via", "parse_params", "split_commas", "quote", "unquote",
    "make_response", "make_request", "header_key", "new_branch", "new_tag", "unsupported",
    "REASON_PHRASES", "reason_phrase", "BRANCH_MAGIC", "COMPACT_FORMS", "LIST_HEADERS",
    "parse_python", "use_codec", "CODEC",
]

#: RFC 3261 §8.1.1.7: branches of RFC 3261 transactions start with this magic cookie.
BRANCH_MAGIC = "z9hG4bK"


@dataclass(frozen=True)
class Limits:
    """Size limits. Past the byte limits the codec answers 513 Message Too Large (RFC 3261 §21.5.9),
    past max_headers 400 Bad Request."""

    # 65535: the largest datagram UDP over IPv4 can carry (RFC 3261 §18.1.1: "65,535 ... or more");
    # a stream message gets the same ceiling so both transports accept the same messages. Kamailio's
    # receive buffer (BUF_SIZE) is 65535 as well.
    max_message_bytes: int = 65535
    # 256 header lines: RFC 4475's longreq (its longest torture message) has 43; Apache httpd's
    # LimitRequestFields default is 100. 256 leaves room for Via/Record-Route chains through many
    # proxies while bounding the per-message index a peer can make us build.
    max_headers: int = 256
    # 16 KiB of header section: h11's max_incomplete_event_size default, which h11 chose after
    # node.js, Tomcat, IIS and Apache (8-16 KiB). SIP heads are usually under 2 KiB; large ones
    # (Identity, long Record-Route sets) stay well under 16 KiB.
    max_header_bytes: int = 16384


DEFAULT_LIMITS = Limits()


class CSeq(NamedTuple):
    number: int
    method: str


_TOKEN_B = re.compile(rb"[A-Za-z0-9\-.!%*_+`'~]+")
_TOKEN_S = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
_FOLD_RE = re.compile(r"[ \t]*\r\n[ \t]+")
_CSEQ_RE = re.compile(r"([0-9]+)[ \t]+([A-Za-z0-9\-.!%*_+`'~]+)")
_DIGITS_RE = re.compile(r"[0-9]{1,10}")
_VERSION_RE = re.compile(r"SIP/[0-9]+\.[0-9]+", re.I)
_STATUS_RE = re.compile(r"[1-6][0-9][0-9]")
_CRLF = b"\r\n"
_MAX_CSEQ = 2**31 - 1   # RFC 3261 §8.1.1.5: the sequence number MUST be less than 2**31
_MAX_DELTA = 2**32 - 1  # RFC 3261 §20.19/§25.1 delta-seconds; larger -> 400 (RFC 4475 §3.1.2.4 scalar02)
_KEY_CACHE: dict[bytes, str] = {}
_NAME_CACHE: dict[str, str] = {}
_MADE_NAMES: dict[str, tuple[str, int]] = {}  # header names _Line.make checked: (key, value start)


def header_key(name: str) -> str:
    """The index key of a header name: lower-case long form (``"l"`` -> ``"content-length"``)."""
    return _key_of(name)


def _key_of(name: str) -> str:
    k = _NAME_CACHE.get(name)
    if k is None:
        k = canonical(name)
        if len(_NAME_CACHE) < 1024:
            _NAME_CACHE[name] = k
    return k


def _check_text(value: str) -> str:
    if "\r" in value or "\n" in value:
        raise ValueError("header values and start-line fields must not contain CR or LF")
    return value


class _Line:
    """One header line as received (continuation lines included) or as written by this codec."""

    __slots__ = ("key", "raw", "vstart", "_value")

    def __init__(self, key: str, raw: bytes, vstart: int, value: str | None = None):
        self.key = key          # canonical lower-case long name
        self.raw = raw          # the line's bytes, without the final CRLF
        self.vstart = vstart    # where the value starts (just after the colon)
        self._value = value

    @classmethod
    def make(cls, name: str, value: str) -> "_Line":
        known = _MADE_NAMES.get(name)
        if known is None:
            if not _TOKEN_S.fullmatch(name):
                raise ValueError(f"header name must be a token: {name!r}")
            known = (_key_of(name), len(name.encode("utf-8", "surrogateescape")) + 1)
            if len(_MADE_NAMES) < 256:  # the node writes a handful of names; peers' names pass too
                _MADE_NAMES[name] = known
        _check_text(value)
        value = value.strip(" \t")
        raw = f"{name}: {value}".encode("utf-8", "surrogateescape")
        return cls(known[0], raw, known[1], value)

    @property
    def name(self) -> str:
        """The name as written on the wire (``v``, ``Via  ``...), without trailing blanks."""
        return self.raw[: self.vstart - 1].rstrip(b" \t").decode("utf-8", "surrogateescape")

    @property
    def value(self) -> str:
        v = self._value
        if v is None:
            v = self.raw[self.vstart:].decode("utf-8", "surrogateescape")
            if "\n" in v:
                v = _FOLD_RE.sub(" ", v)  # RFC 3261 §7.3.1: a fold is equivalent to one SP
            v = self._value = v.strip(" \t")
        return v


class Message:
    """What :class:`Request` and :class:`Response` share: header lines, body, proxy edits."""

    __slots__ = ("_lines", "_index", "body", "_cache", "_data", "_end", "_body0", "_clen", "_start")
    __hash__ = None  # mutable

    def __init__(self, lines: list[_Line], body: bytes = b""):
        self._lines = lines
        index: dict[str, list[_Line]] = {}
        for line in lines:
            lst = index.get(line.key)
            if lst is None:
                index[line.key] = [line]
            else:
                lst.append(line)
        self._index = index
        self.body = body
        self._cache: dict[str, object] = {}
        self._data: bytes | None = None  # received bytes, returned as is while nothing changed
        self._end = 0
        self._body0 = body
        self._clen: int | None = None
        self._start: bytes | None = None

    # ---- reading -------------------------------------------------------------------------------

    def _first(self, key: str) -> str | None:
        lines = self._index.get(key)
        return lines[0].value if lines else None

    def header(self, name: str) -> str | None:
        """First value of ``name`` (any spelling or compact form); for list headers the first
        element of the list; ``None`` if absent."""
        key = _key_of(name)
        lines = self._index.get(key)
        if not lines:
            return None
        if key in LIST_HEADERS:
            for line in lines:
                vals = split_commas(line.value)
                if vals:
                    return vals[0]
            return ""
        return lines[0].value

    def header_values(self, name: str) -> list[str]:
        """All values of all lines of ``name``; list headers split on commas outside quotes and
        ``<>`` (RFC 3261 §7.3.1)."""
        key = _key_of(name)
        lines = self._index.get(key)
        if not lines:
            return []
        if key in LIST_HEADERS:
            out: list[str] = []
            for line in lines:
                out.extend(split_commas(line.value))
            return out
        return [line.value for line in lines]

    def has_header(self, name: str) -> bool:
        return bool(self._index.get(_key_of(name)))

    @property
    def headers(self) -> list[tuple[str, str]]:
        """``(name as written, value)`` for every line, in order."""
        return [(line.name, line.value) for line in self._lines]

    def _required(self, key: str) -> str:
        v = self._first(key)
        if v is None:
            raise SIPError(f"Bad Request - missing {spelling(key)}")
        return v

    @property
    def call_id(self) -> str:
        return self._required("call-id")

    @property
    def cseq(self) -> CSeq:
        c = self._cache.get("cseq")
        if c is None:
            m = _CSEQ_RE.fullmatch(self._required("cseq"))
            if m is None:
                raise SIPError("Bad Request - malformed CSeq")
            n = int(m.group(1))
            if n > _MAX_CSEQ:
                raise SIPError("Bad Request - CSeq number too large")
            c = self._cache["cseq"] = CSeq(n, m.group(2))
        return c  # type: ignore[return-value]

    @property
    def vias(self) -> list[Via]:
        v = self._cache.get("via")
        if v is None:
            v = self._cache["via"] = [parse_via(x) for x in self.header_values("via")]
        return v  # type: ignore[return-value]

    @property
    def top_via(self) -> Via:
        vias = self.vias
        if not vias:
            raise SIPError("Bad Request - missing Via")
        return vias[0]

    def _name_addr(self, key: str) -> NameAddr:
        v = self._cache.get(key)
        if v is None:
            v = self._cache[key] = parse_name_addr(self._required(key))
        return v  # type: ignore[return-value]

    @property
    def from_(self) -> NameAddr:
        return self._name_addr("from")

    @property
    def to(self) -> NameAddr:
        return self._name_addr("to")

    @property
    def contacts(self) -> list[NameAddr]:
        """Parsed Contact values; ``[]`` when absent or ``*`` (see :attr:`is_star_contact`)."""
        v = self._cache.get("contact")
        if v is None:
            values = self.header_values("contact")
            if "*" in values:
                # RFC 3261 §10.2.2 / §20.10: "*" stands alone.
                if len(values) != 1:
                    raise SIPError("Bad Request - Contact * must be the only Contact")
                v = []
            else:
                v = [parse_name_addr(x) for x in values]
            self._cache["contact"] = v
        return v  # type: ignore[return-value]

    @property
    def is_star_contact(self) -> bool:
        return self.header_values("contact") == ["*"]

    def _number(self, key: str, limit: int) -> int | None:
        cache = self._cache
        if key in cache:  # every edit of the header drops it (_touch)
            return cache[key]  # type: ignore[return-value]
        v = self._first(key)
        if v is None:
            n = None
        elif not _DIGITS_RE.fullmatch(v) or int(v) > limit:
            raise SIPError(f"Bad Request - malformed {spelling(key)}")
        else:
            n = int(v)
        cache[key] = n
        return n

    @property
    def expires(self) -> int | None:
        return self._number("expires", _MAX_DELTA)  # RFC 3261 §20.19 delta-seconds

    @property
    def max_forwards(self) -> int | None:
        return self._number("max-forwards", 255)  # RFC 3261 §20.22: 0-255

    @property
    def content_type(self) -> str | None:
        return self._first("content-type")

    @property
    def user_agent(self) -> str | None:
        return self._first("user-agent") or self._first("server")

    @property
    def routes(self) -> list[NameAddr]:
        return [parse_name_addr(x) for x in self.header_values("route")]

    @property
    def record_routes(self) -> list[NameAddr]:
        return [parse_name_addr(x) for x in self.header_values("record-route")]

    # ---- editing (each edit touches only its own line) -------------------------------------------

    def _touch(self, key: str) -> None:
        self._data = None
        self._cache.pop(key, None)
        if key == "content-length":
            self._clen = None

    def _insert_top(self, key: str, line: _Line) -> None:
        """Insert ``line`` above the first line of ``key`` (or first among all headers)."""
        lst = self._index.get(key)
        if lst:
            pos = self._position(lst[0])
            lst.insert(0, line)
        else:
            pos = 0
            self._index[key] = [line]
        self._lines.insert(pos, line)
        self._touch(key)

    def _position(self, line: _Line) -> int:
        for i, x in enumerate(self._lines):
            if x is line:
                return i
        raise AssertionError("line not in message")  # pragma: no cover

    def _replace(self, old: _Line, new: _Line | None) -> None:
        pos = self._position(old)
        lst = self._index[old.key]
        j = next(i for i, x in enumerate(lst) if x is old)
        if new is None:
            del self._lines[pos]
            del lst[j]
            if not lst:
                del self._index[old.key]
        else:
            self._lines[pos] = new
            lst[j] = new
        self._touch(old.key)

    def _pop_top_value(self, key: str) -> str | None:
        lst = self._index.get(key)
        while lst:
            first = lst[0]
            values = split_commas(first.value)
            if not values:  # an empty line of a list header: drop it and look further
                self._replace(first, None)
                lst = self._index.get(key)
                continue
            rest = values[1:]
            self._replace(first, _Line.make(first.name, ", ".join(rest)) if rest else None)
            return values[0]
        return None

    def push_via(self, value: str) -> None:
        """New topmost Via line (RFC 3261 §16.6 step 8)."""
        self._insert_top("via", _Line.make("Via", value))

    def pop_via(self) -> Via:
        """Remove the topmost Via *value* (RFC 3261 §16.7 step 3) and return it parsed."""
        top = self.top_via
        self._pop_top_value("via")
        return top

    def replace_top_via(self, value: "Via | str") -> None:
        """Swap the topmost Via value for ``value`` (e.g. with ``received``/``rport`` filled in,
        RFC 3261 §18.2.1, RFC 3581 §4); it gets a line of its own, other values stay untouched."""
        self._pop_top_value("via")
        self.push_via(str(value))

    def add_record_route(self, value: str) -> None:
        """New topmost Record-Route line (RFC 3261 §16.6 step 4)."""
        self._insert_top("record-route", _Line.make("Record-Route", value))

    def pop_route(self) -> NameAddr | None:
        """Remove the topmost Route value and return it (RFC 3261 §16.4 loose routing)."""
        v = self._pop_top_value("route")
        return parse_name_addr(v) if v is not None else None

    def decrement_max_forwards(self) -> int:
        """RFC 3261 §16.6 step 3: decrement Max-Forwards; when absent, add it with 70 (the value
        the RFC says the proxy adds, not decremented). Returns the new value; a request that
        arrived with 0 raises ``SIPError`` 483 (§16.3 step 2)."""
        lst = self._index.get("max-forwards")
        if not lst:
            self._insert_top("max-forwards", _Line.make("Max-Forwards", "70"))
            return 70
        mf = self.max_forwards
        assert mf is not None
        if mf <= 0:
            raise SIPError("Too Many Hops", 483)
        self._replace(lst[0], _Line.make(lst[0].name, str(mf - 1)))
        return mf - 1

    def set_header(self, name: str, value: str) -> None:
        """Replace all lines of ``name`` with one line (at the place of the first)."""
        key = _key_of(name)
        new = _Line.make(spelling(key), value)
        lst = self._index.get(key)
        if not lst:
            self.add_header(spelling(key), value)
            return
        for old in lst[1:]:
            self._replace(old, None)
        self._replace(lst[0], new)
        if key == "content-length":
            self._clen = int(value) if _DIGITS_RE.fullmatch(value) else None

    def remove_header(self, name: str) -> None:
        key = _key_of(name)
        for old in list(self._index.get(key, ())):
            self._replace(old, None)
        self._touch(key)

    def add_header(self, name: str, value: str) -> None:
        """Append a line after all the others."""
        line = _Line.make(name, value)
        self._lines.append(line)
        self._index.setdefault(line.key, []).append(line)
        self._touch(line.key)
        if line.key == "content-length":
            self._clen = int(value) if _DIGITS_RE.fullmatch(value.strip()) else None

    def set_body(self, body: bytes, content_type: str | None = None) -> None:
        """Set the body; Content-Type is set when given (and removed for an empty body without one),
        Content-Length always follows."""
        self.body = bytes(body)
        if content_type is not None:
            self.set_header("Content-Type", content_type)
        elif not body:
            self.remove_header("content-type")
        self.set_header("Content-Length", str(len(body)))

    def copy(self):
        """An independent copy (for forking): lines are shared (they are never mutated), lists are not."""
        other = object.__new__(type(self))
        Message.__init__(other, list(self._lines), self.body)
        other._clen = self._clen
        self._copy_start(other)
        return other

    # ---- writing -------------------------------------------------------------------------------

    def _start_line(self) -> bytes:  # pragma: no cover - overridden
        raise NotImplementedError

    def _copy_start(self, other) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        """Start line, header lines, CRLF, body. Content-Length always matches the body."""
        body = self.body
        if self._data is not None and body is self._body0:
            return self._data if self._end == len(self._data) else self._data[: self._end]
        n = len(body)
        if self._clen != n or len(self._index.get("content-length", ())) != 1:
            self.set_header("Content-Length", str(n))
        parts = [self._start_line()]
        parts.extend([line.raw for line in self._lines])
        return _CRLF.join(parts) + b"\r\n\r\n" + body

    __bytes__ = to_bytes

    def _fields(self):
        return (self._start_line(), [(l.key, l.value) for l in self._lines], self.body)

    def __eq__(self, other):
        if type(other) is not type(self):
            return NotImplemented
        return self._fields() == other._fields()


class _StartField:
    """A start-line field: assigning it makes :meth:`Message.to_bytes` write the new start line."""

    __slots__ = ("slot",)

    def __set_name__(self, owner, name: str) -> None:
        self.slot = "_" + name

    def __get__(self, obj, owner=None):
        return self if obj is None else getattr(obj, self.slot)

    def __set__(self, obj, value) -> None:
        if isinstance(value, str):
            _check_text(value)
        setattr(obj, self.slot, value)
        obj._start = None
        obj._data = None


class Request(Message):
    """A SIP request (RFC 3261 §7.1). ``uri`` is the Request-URI as written."""

    __slots__ = ("_method", "_uri", "_version")
    method = _StartField()
    version = _StartField()

    def __init__(self, method: str, uri: str, version: str, lines: list[_Line], body: bytes = b""):
        super().__init__(lines, body)
        self._method = method
        self._uri = uri
        self._version = version

    @property
    def uri(self) -> str:
        return self._uri

    @uri.setter
    def uri(self, value: str) -> None:
        self.set_uri(value)

    @property
    def request_uri(self) -> URI:
        u = self._cache.get("@ruri")
        if u is None:
            u = self._cache["@ruri"] = parse_uri(self._uri)
        return u  # type: ignore[return-value]

    def set_uri(self, uri: str) -> None:
        """Replace the Request-URI (RFC 3261 §16.5/§16.6 step 2 retargeting)."""
        uri = _check_text(str(uri)).strip()
        if not uri or " " in uri or "\t" in uri:
            raise ValueError("a Request-URI holds no whitespace")
        self._uri = uri
        self._start = None
        self._data = None
        self._cache.pop("@ruri", None)

    def _start_line(self) -> bytes:
        s = self._start
        if s is None:
            s = self._start = f"{self._method} {self._uri} {self._version}".encode("utf-8", "surrogateescape")
        return s

    def _copy_start(self, other) -> None:
        other._method, other._uri, other._version = self._method, self._uri, self._version

    def __repr__(self) -> str:
        return f"<Request {self._method} {self._uri}>"


class Response(Message):
    """A SIP response (RFC 3261 §7.2)."""

    __slots__ = ("_status", "_reason", "_version")
    status = _StartField()
    reason = _StartField()
    version = _StartField()

    def __init__(self, status: int, reason: str, version: str, lines: list[_Line], body: bytes = b""):
        super().__init__(lines, body)
        self._status = status
        self._reason = reason
        self._version = version

    def _start_line(self) -> bytes:
        s = self._start
        if s is None:
            s = self._start = f"{self._version} {self._status} {self._reason}".encode("utf-8", "surrogateescape")
        return s

    def _copy_start(self, other) -> None:
        other._status, other._reason, other._version = self._status, self._reason, self._version

    def __repr__(self) -> str:
        return f"<Response {self._status} {self._reason}>"


# ---- parsing ---------------------------------------------------------------------------------------


def _split_lines(head: bytes, limits: Limits) -> tuple[bytes, list[_Line], SIPError | None]:
    """The start line, the header lines, and the first fault found in them.

    A broken line is left out rather than failing the whole message at once, so the caller can
    still build a ``400`` carrying the reason from the lines that are sound (Via, From, To...).
    """
    error = None
    # RFC 3261 §7: lines end in CRLF; a bare CR or LF is not a line end and not allowed in a value.
    crlf = head.count(b"\r\n")
    bare = head.count(b"\r") != crlf or head.count(b"\n") != crlf
    if bare:
        error = SIPError("Bad Request - bare CR or LF in header section")
    raw_lines = head.split(_CRLF)
    lines: list[_Line] = []
    append = lines.append
    cache = _KEY_CACHE
    dropped = False  # the last header line was left out: so are its continuation lines
    for raw in raw_lines[1:]:
        if bare and (b"\r" in raw or b"\n" in raw):
            dropped = True  # never copied into an answer: a bare LF there would forge a header
            continue
        c = raw[0]
        if c == 32 or c == 9:  # RFC 3261 §7.3.1 continuation line
            if not lines and not dropped:
                error = error or SIPError("Bad Request - continuation line before the first header")
                dropped = True
            if not dropped:
                prev = lines[-1]
                prev.raw = prev.raw + b"\r\n" + raw
            continue
        dropped = True
        colon = raw.find(b":")
        if colon <= 0:
            error = error or SIPError("Bad Request - malformed header line")
            continue
        name = raw[:colon]
        key = cache.get(name)
        if key is None:
            bare_name = name.rstrip(b" \t")
            if not _TOKEN_B.fullmatch(bare_name):
                error = error or SIPError("Bad Request - malformed header name")
                continue
            key = canonical(bare_name.decode("ascii"))
            if len(cache) < 1024:  # bounded: names are chosen by peers
                cache[name] = key
        dropped = False
        append(_Line(key, raw, colon + 1))
    if len(lines) > limits.max_headers:
        # 400, not 513: the message may be small; Apache's LimitRequestFields answers 400 too. The
        # lines stay (max_header_bytes bounds them) so the 400 can carry Via/From/To (RFC 3261 §8.2.6).
        error = error or SIPError("Bad Request - too many header fields")
    return raw_lines[0], lines, error


def _start_fields(start: bytes):
    """Request-Line or Status-Line fields (RFC 3261 §7.1, §7.2): ``(is_request, fields, error)``.

    A broken Request-Line whose parts can still be told apart yields fields *and* an error, so the
    caller can attach the half-parsed request to the error and the node can answer 400/505 to it.
    """
    s = start.decode("utf-8", "surrogateescape")
    if s[:4].upper() == "SIP/":
        parts = s.split(" ", 2)
        if len(parts) < 2 or not _STATUS_RE.fullmatch(parts[1]):
            raise SIPError("Bad Request - malformed Status-Line")  # RFC 4475 §3.1.2.19 bigcode
        version = parts[0]
        if version.upper() != "SIP/2.0":
            raise SIPError("Version Not Supported", 505 if _VERSION_RE.fullmatch(version) else 400)
        return False, (int(parts[1]), parts[2] if len(parts) > 2 else "", version), None
    parts = s.split(" ")
    error = None
    # RFC 3261 §7.1: exactly single SPs, no trailing blanks (RFC 4475 §3.1.2.9 lwsstart, §3.1.2.10 trws,
    # §3.1.2.8 lwsruri).
    if len(parts) != 3 or not parts[1]:
        error = SIPError("Bad Request - malformed Request-Line")
        parts = s.split()
        if len(parts) == 2 and _VERSION_RE.fullmatch(parts[1]):
            # "OPTIONSsip:host SIP/2.0": method and URI run together, yet plainly a request to answer
            method = _TOKEN_S.match(parts[0])
            if method is None:
                raise error
            parts = [method.group(), parts[0][method.end():], parts[1]]
        elif len(parts) < 3:
            raise error
        else:
            parts = [parts[0], " ".join(parts[1:-1]), parts[-1]]
    if not _TOKEN_S.fullmatch(parts[0]):
        if not (_TOKEN_S.match(parts[0]) and _VERSION_RE.fullmatch(parts[2])):
            raise SIPError("Bad Request - malformed Request-Line")
        error = error or SIPError("Bad Request - malformed method")  # a request still: answer it
    version = parts[2]
    if version.upper() != "SIP/2.0" and error is None:
        if _VERSION_RE.fullmatch(version):
            error = SIPError("Version Not Supported", 505)  # RFC 3261 §21.5.6; RFC 4475 §3.1.2.16 badvers
        else:
            error = SIPError("Bad Request - malformed Request-Line")
    return True, (parts[0], parts[1], version), error


def parse(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Request | Response:
    """Parse one datagram (or one framed stream message).

    RFC 3261 §18.3: with Content-Length, the body is that many octets and anything after it is
    discarded (RFC 4475 §3.1.1.8 dblreq); fewer octets than it says -> ``SIPError`` (RFC 4475
    §3.1.2.2 clerr). Without it (datagrams only) the body is the rest of the datagram.

    With the compiled scanner (:data:`CODEC` ``"compiled"``) the splitting and the eager checks of
    the fields every message needs run in C; whatever it is not sure of takes the pure-Python path
    below, the reference, so both give the same messages and the same errors.
    """
    if not isinstance(data, bytes):
        data = bytes(data)
    if _scan is not None:
        found = _scan(data, limits.max_message_bytes, limits.max_headers, limits.max_header_bytes)
        if found is not None:
            return _from_scan(data, found)
    return parse_python(data, limits)


def parse_python(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Request | Response:
    """:func:`parse` in pure Python: the reference (and the path of every message the scanner leaves)."""
    if not isinstance(data, bytes):
        data = bytes(data)
    if len(data) > limits.max_message_bytes:
        raise SIPError("Message Too Large", 513)
    if data[:2] == _CRLF:  # RFC 3261 §7.5: ignore CRLFs before the start line
        data = data.lstrip(b"\r\n")
    end = data.find(b"\r\n\r\n")
    if end < 0:
        if not data.endswith(_CRLF):
            raise SIPError("Bad Request - header section not terminated by an empty line")
        # A datagram that stops right after a header line's CRLF: the datagram's end frames it, so
        # read it as if the empty line were there (robustness; RFC 4475's baddn.dat and RFC 5118
        # §4.10's messages are printed so). Streams never get here: StreamReader waits for it.
        end = len(data) - 2
        data = data + _CRLF
    if end > limits.max_header_bytes:
        raise SIPError("Message Too Large - header section too large", 513)
    start, lines, line_error = _split_lines(data[:end], limits)
    is_request, fields, error = _start_fields(start)
    error = error or line_error
    msg: Request | Response = Request(*fields, lines) if is_request else Response(*fields, lines)
    msg._start = start
    try:
        if error is not None:
            raise error
        index = msg._index
        body_start = end + 4
        cl_lines = index.get("content-length")
        if cl_lines:
            if len(cl_lines) > 1:
                raise SIPError("Bad Request - multiple Content-Length")  # RFC 4475 §3.3.9 mcl01
            v = cl_lines[0].value
            if not _DIGITS_RE.fullmatch(v):
                raise SIPError("Bad Request - malformed Content-Length")  # RFC 4475 §3.1.2.3 ncl
            n = int(v)
            if body_start + n > len(data):
                raise SIPError("Bad Request - Content-Length larger than the message")  # §18.3, clerr
            msg._clen = n
            msg._end = body_start + n
        else:
            msg._end = len(data)
        msg.body = msg._body0 = data[body_start: msg._end]
        _validate(msg, is_request)
    except SIPError as e:
        e.message = msg
        raise
    finally:
        # The error held in a local would tie itself to this frame through its traceback: a cycle
        # only the cyclic collector could free (meter.gc_timer keeps that off the hot path).
        error = line_error = None
    msg._data = data
    return msg


def _from_scan(data: bytes, found: tuple) -> Request | Response:
    """The message the compiled scanner found: lines split and indexed, Call-ID, CSeq, Max-Forwards,
    Expires, Content-Length and the mandatory/single headers checked (their values cached as
    :func:`_validate` leaves them); the rest of :func:`_validate`
    (Vias, From, To, Contacts, Request-URI) runs here, in Python, exactly as on the reference path."""
    is_request, f1, f2, version, start, lines, index, body_start, end, clen, cseq_n, cseq_m, mf, expires = found
    msg: Request | Response
    if is_request:
        msg = _new_request(Request)
        msg._method = f1
        msg._uri = f2
    else:
        msg = _new_response(Response)
        msg._status = f1
        msg._reason = f2
    msg._version = version
    msg._lines = lines
    msg._index = index
    msg._cache = {"cseq": CSeq(cseq_n, cseq_m), "max-forwards": mf, "expires": expires}
    msg._clen = clen
    msg._start = start
    msg._end = end
    msg.body = msg._body0 = data[body_start:end]
    msg._data = None
    try:
        msg.vias
        msg.from_
        msg.to
        if "contact" in index:
            msg.contacts
        if is_request:
            uri = msg.request_uri  # type: ignore[union-attr]
            if uri.scheme == "sip" or uri.scheme == "sips":
                if uri.headers:
                    raise SIPError("Bad Request - headers not allowed in Request-URI")  # §19.1.1 table
            elif uri.scheme != "tel":
                raise SIPError(f"Unsupported URI Scheme - {uri.scheme}", 416)  # RFC 3261 §8.2.2.1
    except SIPError as e:
        e.message = msg
        raise
    msg._data = data
    return msg


_new_request = object.__new__
_new_response = object.__new__

_MANDATORY = ("via", "from", "to", "call-id", "cseq")  # RFC 3261 §8.1.1


def _validate(msg: Request | Response, is_request: bool) -> None:
    index = msg._index
    for key in _MANDATORY:
        if not index.get(key):
            raise SIPError(f"Bad Request - missing {spelling(key)}")
    for key in SINGLE_HEADERS:
        lst = index.get(key)
        if lst is not None and len(lst) > 1:
            raise SIPError(f"Bad Request - multiple {spelling(key)}")
    cid = index["call-id"][0].value
    if not cid or " " in cid or "\t" in cid:
        raise SIPError("Bad Request - malformed Call-ID")
    cseq = msg.cseq
    msg.vias
    msg.from_
    msg.to
    msg.max_forwards
    msg.expires
    if "contact" in index:
        msg.contacts
    if is_request:
        assert isinstance(msg, Request)
        if cseq.method != msg.method:
            # RFC 3261 §8.1.1.5; RFC 4475 §3.1.2.17 mismatch01 / §3.1.2.18 mismatch02
            raise SIPError("Bad Request - CSeq method does not match the request method")
        uri = msg.request_uri
        if uri.scheme == "sip" or uri.scheme == "sips":
            if uri.headers:
                raise SIPError("Bad Request - headers not allowed in Request-URI")  # §19.1.1 table
        elif uri.scheme != "tel":
            raise SIPError(f"Unsupported URI Scheme - {uri.scheme}", 416)  # RFC 3261 §8.2.2.1


class StreamReader:
    """Frames messages on a stream (TCP/TLS) by Content-Length (RFC 3261 §18.3: mandatory there).

    ``feed`` returns the complete messages so far. CRLF keep-alives between messages are skipped
    (RFC 5626 §3.5.1; each ``CRLFCRLF`` ping is counted in :attr:`pings` so the node can answer
    with a ``CRLF`` pong). Errors:

    * framing lost (bad/duplicate Content-Length, header or message too large): ``SIPError`` with
      ``fatal=True``; the buffer is dropped and the connection should be closed.
    * one framed message is malformed: ``SIPError`` with ``fatal=False`` and ``message`` when it
      could be split (answer it with ``e.status``). The reader has consumed that message; messages
      parsed before it in the same call are kept and returned by the next ``feed`` (``feed(b"")``).
    """

    _CL_RE = re.compile(rb"\r\n(?:content-length|l)[ \t]*:[ \t]*([^\r\n]*)", re.I)

    def __init__(self, limits: Limits = DEFAULT_LIMITS):
        self.limits = limits
        self._buf = bytearray()
        self._need: int | None = None  # total length of the message being framed, once known
        self._ready: list[Request | Response] = []
        self._crlfs = 0
        self.pings = 0

    @property
    def buffered(self) -> int:
        """Bytes of a message begun but not complete yet (0 between messages): where a read timeout starts."""
        return len(self._buf)

    def _fatal(self, reason: str, status: int = 400) -> SIPError:
        self._buf.clear()
        self._need = None
        return SIPError(reason, status, fatal=True)

    def feed(self, data: bytes) -> list[Request | Response]:
        buf = self._buf
        buf += data
        out, self._ready = self._ready, []
        limits = self.limits
        while buf:
            if self._need is None:
                # RFC 3261 §7.5 / RFC 5626 §3.5.1: CRLFs between messages are keep-alives.
                i = 0
                while buf[i: i + 2] == b"\r\n":
                    i += 2
                if i:
                    self._crlfs += i // 2
                    self.pings += self._crlfs // 2
                    self._crlfs %= 2
                    del buf[:i]
                    if not buf:
                        break
                if buf[:1] == b"\r":
                    if len(buf) < 2:
                        break
                self._crlfs = 0
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > limits.max_header_bytes:
                        raise self._fatal("Message Too Large - header section too large", 513)
                    break
                if end > limits.max_header_bytes:
                    raise self._fatal("Message Too Large - header section too large", 513)
                found = self._CL_RE.findall(buf, 0, end + 2)
                if len(found) > 1:
                    raise self._fatal("Bad Request - multiple Content-Length")
                clen = 0  # absent on a stream: RFC 3261 §18.3 requires it; read as no body
                if found:
                    text = found[0].strip(b" \t")
                    if not text.isdigit() or len(text) > 10:
                        raise self._fatal("Bad Request - malformed Content-Length")
                    clen = int(text)
                self._need = end + 4 + clen
                if self._need > limits.max_message_bytes:
                    raise self._fatal("Message Too Large", 513)
            need = self._need
            if len(buf) < need:
                break
            chunk = bytes(buf[:need])
            del buf[:need]
            self._need = None
            try:
                out.append(parse(chunk, limits))
            except SIPError as e:
                e.fatal = False
                self._ready = out
                raise
        return out


# ---- building --------------------------------------------------------------------------------------


def make_response(
    request: Request,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    content_type: str | None = None,
) -> Response:
    """RFC 3261 §8.2.6.2: copy every Via line, From, To (adding ``to_tag`` if given and To has no
    tag), Call-ID and CSeq; §8.2.6.1: a 100 copies Timestamp. Best effort on a request that failed
    validation (missing headers are skipped), so a ``400`` can always be built."""
    if not 100 <= status <= 699:
        raise ValueError("status must be 100-699")
    reason = reason_phrase(status) if reason is None else " ".join(reason.split())
    index = request._index
    lines: list[_Line] = list(index.get("via", ()))
    for key in ("from", "to", "call-id", "cseq"):
        lst = index.get(key)
        if not lst:
            continue
        line = lst[0]
        if key == "to" and to_tag is not None:
            try:
                has_tag = parse_name_addr(line.value).tag is not None
            except SIPError:
                has_tag = True  # unparseable To: copy as is
            if not has_tag:
                line = _Line.make(line.name, f"{line.value};tag={to_tag}")
        lines.append(line)
    if status == 100 and index.get("timestamp"):
        lines.append(index["timestamp"][0])
    for name, value in headers:
        lines.append(_Line.make(name, value))
    resp = Response(status, reason, "SIP/2.0", lines)
    if body or content_type is not None:
        resp.set_body(body, content_type)
    else:
        resp.set_header("Content-Length", "0")
    return resp


def make_request(
    method: str,
    uri: str,
    headers: Iterable[tuple[str, str]],
    body: bytes = b"",
    content_type: str | None = None,
) -> Request:
    """A request from parts; adds Max-Forwards: 70 when missing (RFC 3261 §8.1.1.6) and
    Content-Length always. Mandatory headers are the caller's (the builder does not invent a
    Call-ID or tag)."""
    if not _TOKEN_S.fullmatch(method):
        raise ValueError("method must be a token")
    req = Request(method, _check_text(uri), "SIP/2.0", [_Line.make(n, v) for n, v in headers])
    req.set_uri(uri)
    if "max-forwards" not in req._index:
        req.add_header("Max-Forwards", "70")
    req.set_body(body, content_type) if (body or content_type) else req.set_header("Content-Length", "0")
    return req


def new_branch() -> str:
    """RFC 3261 §8.1.1.7: magic cookie + a token unique in space and time (64 random bits)."""
    return BRANCH_MAGIC + secrets.token_hex(8)


# ---- the compiled scanner (codecs/_sipscan.c), when built ----------------------------------------

_scan = None
CODEC = "python"
"""Which parser :func:`parse` uses: ``"compiled"`` (the C scanner, falling back per message) or ``"python"``."""


def use_codec(name: str) -> str:
    """Select ``"compiled"`` or ``"python"``; returns what is in use (``"python"`` when the extension
    is not built). ``METER_PURE_CODEC=1`` in the environment makes the module start with ``"python"``."""
    global _scan, CODEC
    if name not in ("compiled", "python"):
        raise ValueError("codec must be 'compiled' or 'python'")
    _scan, CODEC = None, "python"
    _grammar._fast_via = _grammar._fast_name_addr = _grammar._fast_uri = None
    if name == "compiled":
        try:
            from . import _sipscan
        except ImportError:  # not built (no compiler at install): the pure-Python codec serves
            return CODEC
        _sipscan.init(_Line, COMPACT_FORMS, _KNOWN_KEYS)
        _scan, CODEC = _sipscan.scan, "compiled"
        _grammar._fast_via, _grammar._fast_name_addr, _grammar._fast_uri = _sipscan.via, _sipscan.name_addr, _sipscan.uri
    return CODEC


# Names the scanner hands out as shared (interned) strings; any other name gets a fresh one.
_KNOWN_KEYS = tuple(sorted({*COMPACT_FORMS.values(), *LIST_HEADERS, *SINGLE_HEADERS, "expires", "content-type",
                            "user-agent", "server", "authorization", "www-authenticate", "proxy-authenticate",
                            "proxy-authorization", "timestamp", "date", "subject", "session-expires", "min-se",
                            "min-expires", "organization", "rseq", "rack", "authentication-info", "retry-after",
                            "priority", "mime-version", "accept-language"}))

use_codec("python" if os.environ.get("METER_PURE_CODEC") == "1" else "compiled")


_TAG_POOL = bytearray()


def new_tag() -> str:
    """RFC 3261 §19.3: at least 32 bits of cryptographic randomness; 48 here. Drawn from a pool
    filled 4 KiB at a time: one ``getrandom`` call per ~680 tags instead of one per tag."""
    if len(_TAG_POOL) < 6:
        _TAG_POOL.extend(secrets.token_bytes(4096))
    tag = _TAG_POOL[-6:].hex()
    del _TAG_POOL[-6:]
    return tag


def unsupported(msg: Message, supported: Iterable[str] = (), header: str = "Proxy-Require") -> list[str]:
    """Option tags of ``header`` (Require / Proxy-Require) not in ``supported``: answer ``420 Bad
    Extension`` with them in an ``Unsupported`` header (RFC 3261 §8.2.2.3, §16.3 step 5; RFC 4475
    §3.3.5 bext01)."""
    known = {s.lower() for s in supported}
    return [t for t in msg.header_values(header) if t.lower() not in known]
