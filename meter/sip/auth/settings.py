"""`[auth]` settings: digest authentication and source admission (Kamailio's auth and
permissions modules). Built by ``meter.config`` from the TOML table; every field documented.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Literal

from meter.sip.auth.digest import ALGORITHMS


@dataclass(frozen=True)
class AuthSettings:
    """Who may use the node (standalone: the node authenticates; inline: the upstream does)."""

    enabled: bool = False
    """Standalone: challenge REGISTERs (401) and, by `invite`, requests from sources that are not
    registered (407), RFC 3261 §22. Off by default so that a lab's existing endpoints, which have no
    credentials here yet, keep registering as today: turn it on once `meter users add` holds them.
    Inline, the node never challenges: the upstream registrar's challenges pass through untouched."""
    realm: str = "meter"
    """Digest realm (RFC 3261 §22.1): the realm `meter users add --realm` stored the users under."""
    credentials_file: str = ""
    """Credentials file (`user realm ha1_md5 ha1_sha256` lines, mode 0600), managed with
    `meter users`. "" = `credentials` in the node's state_dir. Changes are picked up within a second."""
    algorithms: list[str] = field(default_factory=lambda: list(ALGORITHMS))
    """Digest algorithms offered, one challenge each, in this order (RFC 8760 §2.4: most preferred
    first): SHA-256 first, MD5 for endpoints that know no other (RFC 8760 keeps it for them). An
    endpoint that fails on an unknown challenge instead of skipping it (baresip 1.0 on libre 1.1,
    measured) needs ["MD5"]."""
    nonce_lifetime: float = 300.0
    """Seconds a nonce stays usable; an older one gets a new challenge with stale=true (RFC 7616
    §3.3). 300 s is Kamailio's auth nonce_expire default and outlasts any client's retry."""
    invite: Literal["challenge", "refuse", "route"] = "challenge"
    """With `enabled`, standalone: initial requests (INVITE, OPTIONS to an alias, MESSAGE...) from a
    source that is neither a registered flow of the From alias, a zone peer nor the upstream:
    `challenge` asks for digest credentials (407, RFC 3261 §22.3), `refuse` answers 403, `route`
    lets them reach configured zones only (403 for anything else). Challenge is what Kamailio's default script and an
    Expressway's "check credentials" do."""
    allow: list[str] = field(default_factory=list)
    """Source allow-list: addresses or CIDRs ("10.1.0.0/16") that may send to the node at all;
    [] = every source. Zone peers and the upstream are always allowed. Applies with `enabled` off
    too, standalone and inline (Kamailio's permissions allow_source_address)."""
    outsiders: Literal["drop", "refuse"] = "drop"
    """A request from outside `allow`: `drop` it silently (a scanner learns nothing, like a
    firewall) or `refuse` it with 403."""

    def __post_init__(self) -> None:
        if not self.realm or any(c.isspace() or c == '"' for c in self.realm):
            raise ValueError(f"realm: expected a non-empty token without spaces or quotes, got {self.realm!r}")
        if not self.algorithms:
            raise ValueError("algorithms: expected at least one of " + ", ".join(ALGORITHMS))
        for name in self.algorithms:
            if name not in ALGORITHMS:
                raise ValueError(f"algorithms: {name!r} is not one of {', '.join(ALGORITHMS)}")
        if self.nonce_lifetime <= 0:
            raise ValueError(f"nonce_lifetime: expected a positive number of seconds, got {self.nonce_lifetime}")
        for entry in self.allow:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"allow: {entry!r} is not an address or CIDR") from None
