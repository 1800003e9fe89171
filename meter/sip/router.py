"""Where a request goes (RFC 3261 §16.4-16.6, §16.12; Kamailio's rr and lookup): the node's own
Route entries, the location service, zone routing (an Expressway's search rules), the upstream
registrar inline, and the next hop of in-dialog requests. Sans-I/O and stateless: it reads the
location service and never sends.
"""

from __future__ import annotations

import logging
from typing import Callable, NamedTuple

from meter.codecs.sip import Request, parse_name_addr
from meter.logs import log_event
from meter.sip.counters import SipCounters
from meter.sip.location import Binding, LocationService
from meter.sip.peer import Peer
from meter.sip.routing import LocalAddresses, over_flow, uri_peer, uri_transport

log = logging.getLogger("meter.sip")

# RFC 3261 §16.6 / §21.4.4: a proxy that will not relay answers 403; the phrase says why.
RELAY_PRELOADED = (403, "Forbidden - relay not allowed (pre-loaded Route)")
RELAY_IN_DIALOG = (403, "Forbidden - relay not allowed (not a dialog this node routes)")
ZONE_CLOSED = (403, "Forbidden - source not allowed into this zone")
# The ``why`` of a refusal (log fact and label of meter_sip_relay_refused_total): a small fixed set.
WHY_PRELOADED = "preloaded_route"
WHY_IN_DIALOG = "in_dialog"
WHY_ZONE_CLOSED = "zone_closed"  # a zone's allow-list left the source out
RELAY_REFUSALS = (WHY_PRELOADED, WHY_IN_DIALOG, WHY_ZONE_CLOSED)


class Target(NamedTuple):
    uri: str | None  # new Request-URI, or None to keep it
    peer: Peer


class Located(NamedTuple):
    """Where an initial request goes: its targets, or the refusal (status, reason) that answers it."""

    targets: list[Target]
    refusal: tuple[int, str] | None
    callee_registered: bool  # the Request-URI's alias has a binding here (standalone or learned inline)


class Router:
    def __init__(self, *, local: LocalAddresses, location: LocationService, inline: bool,
                 upstream: Peer | None, zone_route: Callable[[str], str | None] | None, relay: str = "zones",
                 trusted_source: Callable[[str], bool] | None = None,
                 zone_destination: Callable[[str, int], bool] | None = None,
                 zone_closed: Callable[[str, str, int, str], str | None] | None = None,
                 counters: SipCounters | None = None) -> None:
        self.local = local
        self.location = location
        self.inline = inline
        self.upstream = upstream
        self._zone_route = zone_route
        self.relay = relay
        self._trusted_source = trusted_source
        self._zone_destination = zone_destination
        self._zone_closed = zone_closed
        self.counters = counters if counters is not None else SipCounters()

    @classmethod
    def asking(cls, hooks, **kw) -> Router:
        """A router that asks the metering hooks (``SipHooks``) about zones: routing (``route``)
        and the relay policy's questions."""
        return cls(zone_route=hooks.route, trusted_source=hooks.trusted_source,
                   zone_destination=hooks.zone_destination, zone_closed=hooks.zone_closed, **kw)

    def pop_own_routes(self, req: Request) -> str | None:
        """RFC 3261 §16.4: pop every topmost Route that names this node (two after a double
        Record-Route, RFC 5658); the transport of the last one popped is the one to leave with."""
        hint = None
        while True:
            top = req.header("route")
            if top is None:
                return hint
            uri = parse_name_addr(top).uri
            if not self.local.uri(uri):
                return hint
            req.pop_route()
            hint = uri_transport(uri)

    def for_node(self, req: Request) -> bool:
        """Is the Request-URI the node itself (RFC 3261 §11.2: it answers OPTIONS to itself)?"""
        uri = req.request_uri
        if uri.user is None:
            return True
        return self.local.uri(uri) and not self.location.is_known(uri.aor)

    def from_upstream(self, source: Peer) -> bool:
        # Exact address only: over TCP the upstream may dial in from any port, but then its
        # requests carry a registered contact as Request-URI (Path routing) and by_contact decides.
        up = self.upstream
        return up is not None and source.host == up.host and source.port == up.port

    def locate(self, req: Request, source: Peer, now: float) -> Located:
        """RFC 3261 §16.5-16.6: the target set of an initial request."""
        uri = req.request_uri
        bindings = self.location.lookup(uri.aor, now)
        if req.has_header("route"):  # RFC 3261 §16.6 step 6-7: a pre-loaded route decides, where policy allows
            peer = uri_peer(parse_name_addr(req.header("route")).uri)
            if not (self.trusted(source) or self.may_relay_to(peer)):
                self._relay_refused(req, source, peer, WHY_PRELOADED)
                return Located([], RELAY_PRELOADED, False)
            if self.closed_zone(req, source, peer):
                return Located([], ZONE_CLOSED, False)
            return Located([Target(None, peer)], None, bool(bindings))
        hit = self.location.by_contact(uri, now)
        if hit is not None:  # the Request-URI already is a registered contact (after the upstream's lookup)
            return Located([Target(None, self.binding_peer(hit, uri))], None, True)
        if not self.inline and bindings:  # RFC 3261 §16.5: the contacts are the target set (parallel fork)
            return Located([Target(str(b.uri), self.binding_peer(b, b.uri)) for b in bindings], None, True)
        upstream_sent = self.from_upstream(source)
        if not bindings and not upstream_sent:
            zone_hop = self.zone_hop(req)
            if zone_hop is not None:
                if self.closed_zone(req, source, zone_hop):
                    return Located([], ZONE_CLOSED, False)
                return Located([Target(None, zone_hop)], None, False)
        if not self.inline:
            if self.location.is_known(uri.aor):
                return Located([], (480, "Temporarily Unavailable"), False)
            return Located([], (404, "Not Found"), False)
        if upstream_sent:  # the upstream already chose the target
            if self.local.uri(uri):
                return Located([], (404, "Not Found"), False)
            return Located([Target(None, uri_peer(uri))], None, bool(bindings))
        return Located([Target(None, self.upstream)], None, bool(bindings))

    # -- relay policy (RFC 3261 §16.4, §16.6; docs/design.md principle 5) -------------------------------------

    def trusted(self, source: Peer) -> bool:
        """A zone's peer or the upstream: not an endpoint, its requests may go where they ask."""
        if self.from_upstream(source):
            return True
        return self._trusted_source is not None and self._trusted_source(source.host)

    def closed_zone(self, req: Request, source: Peer, peer: Peer) -> bool:
        """Is ``peer`` (or the Request-URI's search rule) a zone whose allow-list leaves an
        endpoint ``source`` out? Refused and logged when so; a trusted source always passes."""
        if self._zone_closed is None or self.trusted(source):
            return False
        zone = self._zone_closed(str(req.uri), peer.host, peer.port, source.host)
        if zone is None:
            return False
        self._relay_refused(req, source, peer, WHY_ZONE_CLOSED)
        return True

    def trusted_host(self, host: str) -> bool:
        """The upstream's or a zone peer's address (any port): a source that carries many users."""
        up = self.upstream
        return (up is not None and host == up.host) or bool(self._trusted_source and self._trusted_source(host))

    def may_relay_to(self, peer: Peer) -> bool:
        """Where an endpoint's pre-loaded Route may lead: the upstream, and under ``relay = "zones"``
        a configured zone (a peer or its target)."""
        up = self.upstream
        if up is not None and peer.host == up.host and peer.port == up.port:
            return True
        return self.relay == "zones" and self._zone_destination is not None and \
            self._zone_destination(peer.host, peer.port)

    def in_dialog_refusal(self, req: Request, source: Peer, peer: Peer, own_route: bool,
                          parties: Callable[[Request], frozenset | None], now: float) -> tuple[int, str] | None:
        """May an in-dialog request (To tag) from ``source`` go to ``peer``? RFC 3261 §16.12: it
        follows its route set when the node is in it: the node's own Route entry was on top
        (``own_route``, popped) or it came with no Route at all, for a call the node record-routed,
        towards one of that call's ends (``parties(req)``, from the call table, asked last). A To
        tag alone proves nothing (anyone can write one), a Route the node did not record is a
        pre-loaded route (§12.2.1.1 builds Route from the route set only), and one real call is no
        licence to address others; so otherwise the request goes only where an initial one could:
        a registered contact (the Request-URI, after :meth:`next_hop`), the upstream or a zone."""
        has_route = req.has_header("route")
        if not has_route and self.location.by_contact(req.request_uri, now) is not None:
            return None
        if own_route or not has_route:
            ends = parties(req)
            if ends is not None and peer.address in ends:
                return None
        if self.trusted(source) or self.may_relay_to(peer):
            return None
        self._relay_refused(req, source, peer, WHY_IN_DIALOG)
        return RELAY_IN_DIALOG

    def _relay_refused(self, req: Request, source: Peer, peer: Peer, what: str) -> None:
        self.counters.relay_refused[what] += 1
        log_event(log, "sip.relay.refused", logging.INFO, source=str(source), user_agent=req.user_agent or "",
                  method=req.method, target=str(peer), request_uri=str(req.uri), why=what)

    def zone_hop(self, req: Request) -> Peer | None:
        """Zone routing (search rules): where a request no binding claims goes."""
        target = self._zone_route(req.uri) if self._zone_route is not None else None
        if target is None:
            return None
        if not target:
            return uri_peer(req.request_uri)
        host, _, port = target.rpartition(":")
        return Peer("udp", host.strip("[]"), int(port))

    def next_hop(self, req: Request, hint: str | None, now: float) -> Peer | None:
        """RFC 3261 §16.12: in-dialog requests follow Route, then the Request-URI (the remote target)."""
        if req.has_header("route"):
            return uri_peer(parse_name_addr(req.header("route")).uri)
        uri = req.request_uri
        hit = self.location.by_contact(uri, now)
        if hit is not None:
            return self.binding_peer(hit, uri)
        local = self.local.uri(uri)
        if not self.inline or local:
            # RFC 3261 §16.5: an AOR the node registers goes through the location service, as in
            # locate(); a peer that kept the AOR as remote target (a 2xx without Contact) still
            # reaches the callee. In-dialog, no forking: the first binding.
            bindings = self.location.lookup(uri.aor, now) if uri.user is not None else []
            if bindings:
                req.set_uri(str(bindings[0].uri))  # §16.6 step 2
                return self.binding_peer(bindings[0], bindings[0].uri)
        if local:
            return None  # the node itself (strict routing, RFC 2543, is not supported)
        return uri_peer(uri, hint or "udp")

    @staticmethod
    def binding_peer(b: Binding, uri) -> Peer:
        """A contact is reached over the connection it registered through (RFC 5923 reuse); a
        contact without a transport parameter leaves over the transport it registered with."""
        flow = b.source
        return over_flow(uri_peer(uri, flow.transport if flow is not None else "udp"), flow)
