"""`[h323]` settings: the RAS gatekeeper's address, mode and timers.

Built by ``meter.config`` from the `[h323]` TOML table (an unknown key stops start-up), so every
field is a plain type with a docstring; ``__post_init__`` checks what types alone cannot.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal
from meter.sockets import valid_hostport


@dataclass(frozen=True)
class H323Settings:
    """The H.323 RAS gatekeeper: where it listens, what it is (gatekeeper or inline forwarder), its timers."""

    enabled: bool = True
    """Run the RAS gatekeeper at all."""
    host: str = "0.0.0.0"
    """Listen address for RAS over UDP (an IP literal; "0.0.0.0" = every IPv4 interface)."""
    ras_port: int = 1719
    """UDP port for RAS. 1719 is H.225.0's well-known RAS port (gatekeeper unicast discovery and RAS);
    0 picks a free one (tests)."""
    advertised_host: str = ""
    """Address the gatekeeper gives endpoints as its RAS address (GCF rasAddress, and the rasAddress
    written into RRQs forwarded upstream). "" = the listen host, or this machine's primary address
    when listening on 0.0.0.0."""
    mode: Literal["standalone", "inline"] = "standalone"
    """`standalone`: the node is the gatekeeper. `inline`: RAS goes to `upstream` and the node learns
    registrations and calls from its answers."""
    upstream: str = ""
    """Inline mode: the lab gatekeeper as "host:port" (GnuGk, a VCS/Expressway, Unified CM...)."""
    gatekeeper_id: str = "meter"
    """Our gatekeeperIdentifier (GCF, RCF). A GRQ naming another gatekeeper gets GRJ. H.225.0 limits it
    to 1..128 characters (GatekeeperIdentifier ::= BMPString (SIZE(1..128)))."""
    time_to_live: int = 1800
    """Longest registration granted, in seconds (RCF timeToLive): endpoints refresh with a keep-alive RRQ
    before it runs out, or are unregistered. An endpoint asking less gets what it asked (H.225.0 lets the
    gatekeeper shorten, not lengthen). 1800 s is the TANDBERG VCS / Cisco Expressway default
    (`xConfiguration H323 Gatekeeper TimeToLive`, range 60..65534)."""
    irr_frequency: int = 120
    """Seconds between the IRRs an endpoint sends during a call (ACF irrFrequency); a call leg silent
    this long (plus `irr_timeout`) is polled with an IRQ. 0 = neither ask nor poll. 120 s is the VCS /
    Expressway "Call time to live" default (`H323 Gatekeeper CallTimeToLive`) and GnuGk's IRRFrequency."""
    irr_timeout: float = 6.0
    """Seconds to wait for the IRR answering a poll; the IRQ is repeated once half-way, then the call is
    released as dead ("missed IRR"). 6 s = H.225.0's recommended IRQ timer (3 s) and retry count (1)."""
    upstream_timeout: float = 15.0
    """Inline mode: seconds to wait for the upstream's answer to a forwarded request before giving up on
    it (a charge it caused is released), and how long a learned registration outlives its time-to-live so
    that the upstream's own expiry URQ can still be relayed. 15 s outlasts an endpoint's own retries:
    H.225.0 recommends 5 s and 2 retries for ARQ, GRQ and LRQ (3 s and 2 for RRQ)."""
    housekeeping_interval: float = 1.0
    """How often (seconds) registrations are expired, calls polled and upstream requests timed out;
    expiry is accurate to this."""

    def __post_init__(self) -> None:
        for name in ("host",) + (("advertised_host",) if self.advertised_host else ()):
            try:
                ipaddress.ip_address(getattr(self, name))
            except ValueError:
                raise ValueError(f"{name}: expected an IP address, got {getattr(self, name)!r}") from None
        if not 0 <= self.ras_port <= 65535:
            raise ValueError(f"ras_port: expected 0..65535, got {self.ras_port}")
        if self.mode == "inline" and not valid_hostport(self.upstream):
            raise ValueError(f"upstream: inline mode needs the gatekeeper as host:port, got {self.upstream!r}")
        if self.upstream and not valid_hostport(self.upstream):
            raise ValueError(f"upstream: expected host:port, got {self.upstream!r}")
        if not 1 <= len(self.gatekeeper_id) <= 128:
            raise ValueError(f"gatekeeper_id: expected 1..128 characters (H.225.0 GatekeeperIdentifier), "
                             f"got {len(self.gatekeeper_id)}")
        # TimeToLive ::= INTEGER (1..4294967295) seconds.
        if not 1 <= self.time_to_live <= 4294967295:
            raise ValueError(f"time_to_live: expected 1..4294967295 seconds, got {self.time_to_live}")
        # ACF irrFrequency ::= INTEGER (1..65535); 0 is ours for "off".
        if not 0 <= self.irr_frequency <= 65535:
            raise ValueError(f"irr_frequency: expected 0 (off) or 1..65535 seconds, got {self.irr_frequency}")
        for name in ("irr_timeout", "upstream_timeout", "housekeeping_interval"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: expected a positive number of seconds, got {getattr(self, name)}")

    @property
    def upstream_hostport(self) -> tuple[str, int]:
        host, _, port = self.upstream.rpartition(":")
        return host.strip("[]"), int(port)
