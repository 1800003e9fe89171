"""Zones: where the far side of a call leg is (licensing-rules.md, "Terms").

A zone is matched two ways, as on an Expressway: by the peer address a message came from
(CIDRs), and by ordered search rules on the Request-URI (domain suffix or regex). Zones are
tried in file order; the first whose rule matches wins. `local` is not configured: it is
whatever is registered on this node (or, inline, on the lab registrar behind it).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Literal
from meter.sockets import valid_hostport

ZoneKind = Literal[
    "unified_cm", "cisco_conferencing", "cloud_cmr", "traversal", "external",
    "third_party_sip", "third_party_gatekeeper", "lync_gateway", "jabber_guest",
]
LOCAL = "local"


@dataclass(frozen=True)
class ZoneSettings:
    """One `[[zones]]` table of meter.toml."""

    name: str
    """Label shown in logs and the API."""
    kind: ZoneKind
    """What the zone is, for the licensing rules (C1-C3, C9, C10)."""
    peers: list[str] = field(default_factory=list)
    """Source addresses or CIDRs whose messages come from this zone (e.g. "10.1.2.0/24")."""
    match: list[str] = field(default_factory=list)
    """Search rules on the Request-URI, tried in order: "domain:webex.com" (the host or a
    subdomain of it) or "regex:<python regex over the whole URI>"."""
    target: str = ""
    """Where calls for this zone go: "host:port" (UDP), or "" to use the Request-URI's host."""
    registered: bool = False
    """True when the far side's endpoints are registered to Cisco infrastructure (Unified CM,
    cluster peers): calls to them are registered calls (C1, C11)."""
    transforms_dialled_string: bool = False
    """True when this zone's route rewrites the dialled string (C10: no cloud bypass then)."""
    conductor: Literal["", "b2bua", "policy"] = ""
    """For cisco_conferencing behind TelePresence Conductor: its deployment (C8)."""
    allow: list[str] = field(default_factory=list)
    """Sources (addresses or CIDRs) that may send requests into this zone; [] = any source the
    node admits. Keeps a trunk to the lab's own subnets (toll fraud): a request for this zone,
    by search rule or by a pre-loaded Route to its address, from elsewhere gets 403. The zone
    peers of any zone and the upstream are not endpoints and pass (they route for others)."""

    def __post_init__(self) -> None:
        for key in ("peers", "allow"):
            for entry in getattr(self, key):
                try:
                    ipaddress.ip_network(entry, strict=False)
                except ValueError:
                    raise ValueError(f"zone {self.name!r}: {key}: {entry!r} is not an address or CIDR") from None
        for rule in self.match:
            _compile_rule(rule, self.name)
        if self.target and not valid_hostport(self.target):
            raise ValueError(f"zone {self.name!r}: target: expected host:port, got {self.target!r}")



def _target_address(target: str) -> tuple[str, int]:
    host, _, port = target.rpartition(":")
    return host.strip("[]").lower(), int(port)


def _compile_rule(rule: str, zone: str):
    kind, sep, value = rule.partition(":")
    if not sep or not value:
        raise ValueError(f"zone {zone!r}: match: {rule!r} must be 'domain:<name>' or 'regex:<pattern>'")
    if kind == "domain":
        suffix = value.lower().lstrip(".")
        return lambda host, uri: host == suffix or host.endswith("." + suffix)
    if kind == "regex":
        try:
            pattern = re.compile(value)
        except re.error as exc:
            raise ValueError(f"zone {zone!r}: match: bad regex {value!r}: {exc}") from None
        return lambda host, uri: pattern.fullmatch(uri) is not None
    raise ValueError(f"zone {zone!r}: match: unknown rule kind {kind!r} (expected domain or regex)")


class ZoneTable:
    """Answers "which zone" for a peer address and for a Request-URI."""

    def __init__(self, zones: list[ZoneSettings]):
        self.zones = list(zones)
        self._networks = [
            (ipaddress.ip_network(p, strict=False), z) for z in self.zones for p in z.peers
        ]
        # Exact addresses are the common case (a registrar, a gateway): one dict lookup.
        self._exact = {
            str(net.network_address): z for net, z in self._networks if net.num_addresses == 1
        }
        self._rules = [(_compile_rule(r, z.name), z) for z in self.zones for r in z.match]
        self._by_name = {z.name: z for z in self.zones}
        self._targets = {_target_address(z.target): z for z in self.zones if z.target}
        self._allow = {z.name: [ipaddress.ip_network(a, strict=False) for a in z.allow] for z in self.zones}

    def by_name(self, name: str) -> ZoneSettings | None:
        return self._by_name.get(name)

    def for_peer(self, address: str) -> ZoneSettings | None:
        zone = self._exact.get(address)
        if zone or not self._networks:
            return zone
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return None
        for net, z in self._networks:
            if ip in net:
                return z
        return None

    def leads_to(self, host: str, port: int) -> bool:
        """Is (host, port) a zone's: one of its peers, or its target? The relay policy (RFC 3261
        §16.6) lets an endpoint's pre-loaded Route go there and nowhere else."""
        return self.destination(host, port) is not None

    def destination(self, host: str, port: int) -> ZoneSettings | None:
        """The zone whose target or peer (host, port) is, if any."""
        return self._targets.get((host.lower(), port)) or self.for_peer(host)

    def admits(self, zone: ZoneSettings, source: str) -> bool:
        """May ``source`` send requests into ``zone`` (its `allow` list; none = anyone)?"""
        networks = self._allow.get(zone.name)
        if not networks:
            return True
        try:
            ip = ipaddress.ip_address(source)
        except ValueError:
            return False
        return any(ip in net for net in networks)

    def closed_to(self, uri: str, uri_host: str, host: str, port: int, source: str) -> ZoneSettings | None:
        """The zone a request is headed for (by search rule on its Request-URI, else by the
        address it goes to) when that zone's `allow` list leaves ``source`` out; else None."""
        zone = self.for_uri(uri, uri_host) or self.destination(host, port)
        return zone if zone is not None and not self.admits(zone, source) else None

    def for_uri(self, uri: str, host: str) -> ZoneSettings | None:
        host = host.lower()
        for rule, zone in self._rules:
            if rule(host, uri):
                return zone
        return None
