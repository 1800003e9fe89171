"""HTTP digest for SIP (RFC 3261 §22.4, RFC 7616, RFC 8760): HA1, the response, the challenge
header and the parse of credentials. Pure functions, no state, no clock.

RFC 8760 §2: a server offers one challenge per algorithm, most preferred first (SHA-256, then
MD5 for endpoints that know no other); the client answers one of them.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

# RFC 8760 §2.2 / RFC 7616 §6.1: the algorithm token and its hash; SHA-512-256 is left out (no
# endpoint in the lab speaks it and the credentials file stores two HA1 columns).
HASHES = {
    "SHA-256": hashlib.sha256,
    "MD5": hashlib.md5,
}
ALGORITHMS = tuple(HASHES)


class DigestError(ValueError):
    """Credentials that cannot be read (RFC 7616 §3.4): the request is challenged again."""


def h(algorithm: str, text: str) -> str:
    return HASHES[algorithm](text.encode("utf-8")).hexdigest()


def ha1(algorithm: str, user: str, realm: str, password: str) -> str:
    """RFC 7616 §3.4.2: A1 = username ":" realm ":" passwd (the "-sess" variants are not offered)."""
    return h(algorithm, f"{user}:{realm}:{password}")


def response(algorithm: str, ha1_hex: str, nonce: str, method: str, uri: str, qop: str | None = None,
             nc: str = "", cnonce: str = "") -> str:
    """RFC 7616 §3.4.1 (qop=auth) and RFC 2069 / RFC 2617 §3.2.2.1 (no qop): the request-digest.
    A2 = Method ":" request-uri (RFC 3261 §22.4: the method is the SIP method)."""
    ha2 = h(algorithm, f"{method}:{uri}")
    if qop:
        return h(algorithm, f"{ha1_hex}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")
    return h(algorithm, f"{ha1_hex}:{nonce}:{ha2}")


def challenge(realm: str, nonce: str, algorithm: str, *, stale: bool = False) -> str:
    """A WWW-Authenticate / Proxy-Authenticate value (RFC 7616 §3.3; RFC 3261 §22.1: qop="auth")."""
    value = f'Digest realm="{_quote(realm)}", nonce="{nonce}", algorithm={algorithm}, qop="auth"'
    return value + ", stale=true" if stale else value


@dataclass(frozen=True, slots=True)
class Credentials:
    """One Authorization / Proxy-Authorization value (RFC 7616 §3.4)."""

    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str = "MD5"  # RFC 7616 §3.3: absent means MD5
    qop: str | None = None
    nc: str = ""
    cnonce: str = ""


# auth-param = token "=" ( token / quoted-string ) (RFC 7235 §2.1); quoted-pair inside quotes.
_PARAM = re.compile(r'\s*([A-Za-z0-9_-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,]*)\s*(?:,|$)')
_NC = re.compile(r"[0-9a-fA-F]{8}")


def parse_credentials(value: str) -> Credentials:
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "digest":
        raise DigestError(f"scheme {scheme!r} is not Digest")
    params: dict[str, str] = {}
    pos, rest = 0, rest.strip()
    while pos < len(rest):
        m = _PARAM.match(rest, pos)
        if m is None or m.end() == pos:
            raise DigestError("unreadable digest parameters")
        raw = m.group(2)
        if raw.startswith('"'):
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        params[m.group(1).lower()] = raw
        pos = m.end()
    missing = [k for k in ("username", "realm", "nonce", "uri", "response") if k not in params]
    if missing:
        raise DigestError(f"missing {', '.join(missing)}")
    algorithm = _canonical_algorithm(params.get("algorithm", "MD5"))
    qop = params.get("qop") or None
    if qop is not None:
        if qop.lower() != "auth":
            raise DigestError(f"qop {qop!r} is not offered")
        if not _NC.fullmatch(params.get("nc", "")) or not params.get("cnonce"):
            raise DigestError("qop=auth needs nc (8 hex digits) and cnonce")  # RFC 7616 §3.4
        qop = "auth"
    return Credentials(params["username"], params["realm"], params["nonce"], params["uri"],
                       params["response"].lower(), algorithm, qop, params.get("nc", ""), params.get("cnonce", ""))


def _canonical_algorithm(token: str) -> str:
    for name in HASHES:
        if name.lower() == token.lower():
            return name
    raise DigestError(f"algorithm {token!r} is not offered")


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')
