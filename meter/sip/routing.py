"""Small routing rules of a proxy: who "this node" is, next hops from URIs and Vias, our Via
branch (with RFC 3261 §16.6 step 8 loop detection), and the values of Via, Record-Route and Path."""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
from dataclasses import dataclass

from meter.codecs.sip import BRANCH_MAGIC, URI, Request, Via
from meter.sip.peer import Peer

# Our branches: magic cookie, a marker, the loop hash, a per-request counter (RFC 3261 §16.6 step 8).
BRANCH_PREFIX = BRANCH_MAGIC + "mtr"
_HASH_LEN = 12


def default_port(scheme: str, transport: str = "udp") -> int:
    # RFC 3261 §19.1.2: 5060 for sip over UDP/TCP, 5061 for sips / TLS.
    return 5061 if scheme == "sips" or transport == "tls" else 5060


def strip_brackets(host: str) -> str:
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(strip_brackets(host))
    except ValueError:
        return False
    return True


def uri_transport(uri: URI, default: str = "udp") -> str:
    t = uri.params.get("transport")
    if t:
        return t.lower()
    # RFC 3261 §26.2.2 / RFC 5630 §3: a sips: URI is reached over TLS when it names no transport.
    return "tls" if uri.scheme == "sips" else default


def uri_peer(uri: URI, default_transport: str = "udp") -> Peer:
    """Next hop for a URI (RFC 3263 reduced to what a lab needs: no NAPTR/SRV, port default 5060)."""
    transport = uri_transport(uri, default_transport)
    host = strip_brackets(uri.params.get("maddr") or uri.host)
    return Peer(transport, host, uri.port or default_port(uri.scheme, transport))


def over_flow(peer: Peer, flow: Peer | None) -> Peer:
    """The connection-reuse rule, in one place: a message for an endpoint goes back over the
    connection its requests came on (``flow``) while that connection lasts (RFC 3261 §18.2.2 for
    responses, RFC 5923 §6 for requests to it), when it leaves over that same transport; otherwise
    the transport adapter uses or opens a connection keyed by (transport, host, port)."""
    if flow is None or flow.conn is None or flow.transport != peer.transport:
        return peer
    return Peer(peer.transport, peer.host, peer.port, flow.conn)


def stamp_received(req: Request, source: Peer) -> None:
    """RFC 3261 §18.2.1 received, RFC 3581 §4 rport: record where the request really came from."""
    via = req.top_via
    if via.host.strip("[]") == source.host and not via.has_rport:
        return
    params = dict(via.params)
    params["received"] = source.host
    if via.has_rport:
        params["rport"] = str(source.port)
    req.pop_via()
    req.push_via(str(Via(via.protocol, via.transport, via.host, via.port, params)))


def response_peer(via: Via, source: Peer) -> Peer:
    """RFC 3261 §18.2.2: over a connection, the connection the request came on (or, if it is
    gone, a new one to received and the Via port); over UDP, the source address (= received)
    and the Via port, or the source port when rport asks for it (RFC 3581)."""
    if source.transport == "udp" and via.has_rport:
        return source
    return over_flow(Peer(source.transport, source.host, via.port or 5060), source)


def via_peer(via: Via) -> Peer:
    """Where a response goes when its server transaction is gone (RFC 3261 §18.2.2, RFC 3581 §4):
    received/rport, else sent-by."""
    transport = via.transport.lower()
    host = strip_brackets(via.received or via.host)
    port = via.rport or via.port or default_port("sip", transport)
    return Peer(transport, host, port)


class LocalAddresses:
    """Does a URI (Route, Request-URI) or a Via sent-by address this node?"""

    def __init__(self, port: int, names: list[str]) -> None:
        self.port = port
        self._names: set[tuple[str, int]] = set()
        for name in names:
            self.add(name)

    def add(self, name: str) -> None:
        host, port = _split_hostport(name)
        self._names.add((host, port or self.port))

    def matches(self, host: str, port: int | None, transport: str = "udp") -> bool:
        return (strip_brackets(host).lower(), port or default_port("sip", transport)) in self._names

    def uri(self, uri: URI) -> bool:
        return uri.is_sip and self.matches(uri.host, uri.port, uri_transport(uri))

    def via(self, via: Via) -> bool:
        return self.matches(via.host, via.port, via.transport.lower())


def _split_hostport(text: str) -> tuple[str, int | None]:
    text = text.strip().lower()
    if text.startswith("["):
        end = text.find("]")
        host, rest = text[1:end], text[end + 1:]
        return host, int(rest[1:]) if rest.startswith(":") else None
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, int(port)
    return text, None


# -- loop detection (RFC 3261 §16.3 step 4, §16.6 step 8) -----------------------------------------------


def loop_hash(req: Request) -> str:
    """Hash of what decides where a request goes (RFC 3261 §16.6 step 8: Request-URI, tags, Call-ID,
    CSeq number, Route), taken after our own Route entries are popped. A request that comes back
    carrying our Via with the same hash has looped; a different one (a Request-URI rewritten by the
    upstream registrar's lookup, a Route consumed) is a legitimate spiral."""
    cseq = req.cseq.number
    routes = ",".join(req.header_values("route"))
    parts = f"{req.uri}\x00{req.from_.tag}\x00{req.to.tag}\x00{req.call_id}\x00{cseq}\x00{routes}"
    return hashlib.blake2b(parts.encode("utf-8", "surrogateescape"), digest_size=6).hexdigest()


def make_branch(hash_: str, seq: int) -> str:
    return f"{BRANCH_PREFIX}{hash_}.{seq:x}"


def looped(req: Request, local: LocalAddresses) -> bool:
    """RFC 3261 §16.3 step 4: one of our own Vias below the top carries this request's loop hash."""
    mine = [v for v in req.vias if v.branch and v.branch.startswith(BRANCH_PREFIX) and local.via(v)]
    if not mine:
        return False
    h = loop_hash(req)
    return any(v.branch[len(BRANCH_PREFIX): len(BRANCH_PREFIX) + _HASH_LEN] == h for v in mine)


def stateless_branch(incoming_branch: str) -> str:
    """RFC 3261 §16.11: a stateless forward's branch is a function of the incoming one, so a
    retransmission gets the same branch."""
    digest = hashlib.blake2b(incoming_branch.encode("utf-8", "surrogateescape"), digest_size=8).hexdigest()
    return f"{BRANCH_PREFIX}sl{digest}"


def local_branch() -> str:
    """A branch for a request the node sends on its own (a BYE ending a call): unique (64 random
    bits), and "uac" right after the prefix can never pass for a loop hash (hex), so the request is
    not taken for a loop when its route brings it back through the node (RFC 3261 §16.3 step 4)."""
    return f"{BRANCH_PREFIX}uac{secrets.token_hex(8)}"


# -- header values written by the node ------------------------------------------------------------------


@dataclass(frozen=True)
class Advertised:
    """How the node names itself in Via, Record-Route and Path: ``port`` for UDP and TCP,
    ``tls_port`` for TLS (0 when the node has no TLS listener)."""

    host: str
    port: int
    tls_port: int = 0

    @property
    def hostport(self) -> str:
        return self.hostport_for("udp")

    def hostport_for(self, transport: str) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = self.tls_port if transport == "tls" and self.tls_port else self.port
        return f"{host}:{port}"

    def via(self, transport: str, branch: str) -> str:
        # RFC 3581 §3: ask for rport so responses come back to the port we sent from. Over TLS the
        # sent-by names the TLS listener, and alias (RFC 5923 §5, for TLS only: the peer knows who
        # we are from our certificate) lets the next hop send its requests for us back over this
        # connection instead of dialling the listener: an upstream's requests then arrive from it.
        alias = ";alias" if transport == "tls" else ""
        return f"SIP/2.0/{transport.upper()} {self.hostport_for(transport)};branch={branch};rport{alias}"

    def route_uri(self, transport: str) -> str:
        # RFC 3261 §16.6 step 4: lr marks a loose router; transport when it is not UDP (transport=tls,
        # not sips:, so the hop is TLS without demanding TLS end to end: RFC 5630 §3.1.3, RFC 5658).
        tp = "" if transport == "udp" else f";transport={transport}"
        return f"<sip:{self.hostport_for(transport)}{tp};lr>"
