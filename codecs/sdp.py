"""SDP session descriptions, sans-I/O (RFC 4566), and the offer/answer counting rule C5 needs (RFC 3264).

Only what metering needs is interpreted (media lines, their ports, directions and connection
addresses); every other line is kept so that :meth:`Session.to_bytes` writes a description that
parses back to an equal one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["SDPError", "Media", "Session", "parse", "negotiated_media_count", "is_audio_only", "DIRECTIONS"]

#: RFC 4566 §6 / RFC 3264 §5.1 direction attributes.
DIRECTIONS = frozenset({"sendrecv", "sendonly", "recvonly", "inactive"})

# A description larger than this is not a SIP body (a SIP message over UDP is at most 65535 octets).
_MAX_LINES = 4096
_LINE_RE = re.compile(r"([a-z])=(.*)")
_MEDIA_RE = re.compile(r"([^ ]+) ([0-9]{1,5})(?:/([0-9]{1,5}))? ([^ ]+)((?: [^ ]+)*) *")
# Session-level line order (RFC 4566 §5): v o s i u e p c b (t r)* z k a, then media sections.
_SESSION_ORDER = {t: i for i, t in enumerate("vosiuepcbtrzka")}
_MEDIA_ORDER = {t: i for i, t in enumerate("micbka")}


class SDPError(ValueError):
    """The only exception the SDP codec raises on bad input; ``reason`` says what is wrong."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _attribute(value: str) -> tuple[str, str | None]:
    name, colon, rest = value.partition(":")
    return (name, rest if colon else None)


@dataclass
class Media:
    """One ``m=`` section (RFC 4566 §5.14)."""

    kind: str                       # audio, video, application, text, message, image...
    port: int
    port_count: int
    proto: str                      # RTP/AVP, RTP/SAVP, UDP/BFCP, udptl...
    formats: list[str]
    connection: str | None = None   # this section's c= value, if it has one
    attributes: list[tuple[str, str | None]] = field(default_factory=list)
    direction: str = "sendrecv"     # own a=sendrecv/... else the session's, else sendrecv
    other: list[tuple[str, str]] = field(default_factory=list)  # i= b= k= lines, kept as is

    @property
    def disabled(self) -> bool:
        """RFC 3264 §5.1 / §6: a zero port rejects or disables the stream."""
        return self.port == 0

    def attribute(self, name: str) -> str | None:
        for n, v in self.attributes:
            if n == name:
                return v if v is not None else ""
        return None

    def _lines(self) -> list[str]:
        ports = f"{self.port}/{self.port_count}" if self.port_count != 1 else str(self.port)
        fmts = "".join(" " + f for f in self.formats)
        lines = [(0, f"m={self.kind} {ports} {self.proto}{fmts}")]
        lines += [(_MEDIA_ORDER[t], f"{t}={v}") for t, v in self.other]
        if self.connection is not None:
            lines.append((_MEDIA_ORDER["c"], f"c={self.connection}"))
        lines += [(_MEDIA_ORDER["a"], f"a={n}" if v is None else f"a={n}:{v}") for n, v in self.attributes]
        return [text for _, text in sorted(lines, key=lambda x: x[0])]


@dataclass
class Session:
    """A session description (RFC 4566 §5)."""

    version: int
    origin: str
    name: str
    connection: str | None = None
    attributes: list[tuple[str, str | None]] = field(default_factory=list)
    media: list[Media] = field(default_factory=list)
    direction: str = "sendrecv"
    other: list[tuple[str, str]] = field(default_factory=list)  # i u e p b t r z k lines, kept as is

    def attribute(self, name: str) -> str | None:
        for n, v in self.attributes:
            if n == name:
                return v if v is not None else ""
        return None

    def to_bytes(self) -> bytes:
        lines = [(0, f"v={self.version}"), (1, f"o={self.origin}"), (2, f"s={self.name}")]
        lines += [(_SESSION_ORDER[t], f"{t}={v}") for t, v in self.other]
        if self.connection is not None:
            lines.append((_SESSION_ORDER["c"], f"c={self.connection}"))
        lines += [(_SESSION_ORDER["a"], f"a={n}" if v is None else f"a={n}:{v}") for n, v in self.attributes]
        out = [text for _, text in sorted(lines, key=lambda x: x[0])]  # stable: t/r pairs keep order
        for m in self.media:
            out += m._lines()
        return ("\r\n".join(out) + "\r\n").encode("utf-8", "surrogateescape")


def parse(body: bytes | str) -> Session:
    """Parse an SDP body. Tolerates LF-only line ends and a missing final line end; raises
    :class:`SDPError` on anything that is not ``<type>=<value>`` lines starting with ``v=0``."""
    if isinstance(body, (bytes, bytearray, memoryview)):
        text = bytes(body).decode("utf-8", "surrogateescape")
    elif isinstance(body, str):
        text = body
    else:
        raise SDPError("SDP body must be bytes or str")
    lines = text.split("\n")
    if len(lines) > _MAX_LINES:
        raise SDPError("SDP too long")
    session: Session | None = None
    media: Media | None = None
    for raw in lines:
        line = raw[:-1] if raw.endswith("\r") else raw
        if not line:
            continue  # blank lines (and the one after the last line end) are tolerated
        m = _LINE_RE.fullmatch(line)
        if m is None:
            raise SDPError(f"malformed SDP line {line[:40]!r}")
        t, value = m.groups()
        if session is None:
            # RFC 4566 §5: "v=" comes first, then o= and s=.
            if t != "v":
                raise SDPError("SDP must start with v=")
            if value != "0":
                raise SDPError("unsupported SDP version")
            session = Session(0, "", "")
            continue
        if t == "m":
            mm = _MEDIA_RE.fullmatch(value)
            if mm is None:
                raise SDPError("malformed m= line")
            kind, port, count, proto, fmts = mm.groups()
            if int(port) > 65535:
                raise SDPError("m= port out of range")
            media = Media(kind, int(port), int(count) if count else 1, proto, fmts.split(),
                          direction=session.direction)
            session.media.append(media)
            continue
        if t == "v":
            raise SDPError("repeated v= line")
        if media is None:
            if t == "o":
                session.origin = value
            elif t == "s":
                session.name = value
            elif t == "c":
                session.connection = value
            elif t == "a":
                attr = _attribute(value)
                session.attributes.append(attr)
                if attr[0] in DIRECTIONS and attr[1] is None:
                    session.direction = attr[0]
            elif t in _SESSION_ORDER:
                session.other.append((t, value))
            else:
                raise SDPError(f"unexpected {t}= line at session level")
        else:
            if t == "c":
                media.connection = value
            elif t == "a":
                attr = _attribute(value)
                media.attributes.append(attr)
                if attr[0] in DIRECTIONS and attr[1] is None:
                    media.direction = attr[0]
            elif t in _MEDIA_ORDER:
                media.other.append((t, value))
            else:
                raise SDPError(f"unexpected {t}= line in a media section")
    if session is None:
        raise SDPError("empty SDP")
    # RFC 4566 §5 puts session-level a= lines before the first m=, so each media section inherited
    # the session's direction when it was opened.
    return session


def _session(x: Session | bytes | str) -> Session:
    return x if isinstance(x, Session) else parse(x)


def negotiated_media_count(offer: Session | bytes | str, answer: Session | bytes | str) -> int:
    """Rule C5: m= lines both sides accepted. RFC 3264 §6: the answer has the offer's m= lines
    in the same order; a zero port on either side means that stream is not used."""
    o, a = _session(offer), _session(answer)
    return sum(1 for mo, ma in zip(o.media, a.media) if mo.port != 0 and ma.port != 0)


def is_audio_only(offer: Session | bytes | str, answer: Session | bytes | str) -> bool:
    """Rule C5: exactly one negotiated m= line, and it is audio."""
    o, a = _session(offer), _session(answer)
    used = [mo for mo, ma in zip(o.media, a.media) if mo.port != 0 and ma.port != 0]
    return len(used) == 1 and used[0].kind == "audio"
