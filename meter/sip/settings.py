"""`[sip]` settings: transports, mode, registrar limits and RFC 3261 timers.

Built by ``meter.config`` from the `[sip]` TOML table (an unknown key stops start-up), so every
field is a plain type with a docstring; ``__post_init__`` checks what types alone cannot.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from typing import Literal

from meter.sockets import valid_hostport
from meter.sip.session_timer import MIN_SE_FLOOR


@dataclass(frozen=True)
class SipSettings:
    """The SIP node: where it listens, what it is (registrar or inline proxy), its timers."""

    host: str = "0.0.0.0"
    """Listen address for UDP and TCP (an IP literal; "0.0.0.0" = every IPv4 interface)."""
    port: int = 5060
    """Listen port for UDP and TCP. 5060 is SIP's registered port (RFC 3261 §18.1.1); 0 picks a free one (tests)."""
    udp: bool = True
    """Listen on UDP."""
    tcp: bool = True
    """Listen on TCP (RFC 3261 §18: a proxy MUST implement both UDP and TCP)."""
    advertised_host: str = ""
    """Address written into Via, Record-Route and Path. "" = the listen host, or this machine's
    primary address when listening on 0.0.0.0."""
    advertised_port: int = 0
    """Port written into Via, Record-Route and Path. 0 = the listen port."""
    aliases: list[str] = field(default_factory=list)
    """Other "host" or "host:port" names that mean this node in Route and Request-URIs (like Kamailio's `alias=`)."""
    mode: Literal["standalone", "inline"] = "standalone"
    """`standalone`: the node is the registrar and routes to its own bindings.
    `inline`: REGISTER and calls for aliases it cannot place go to `upstream`; bindings are learned from its answers."""
    upstream: str = ""
    """Inline mode: the lab registrar as "host:port" (Kamailio, Asterisk, Unified CM...)."""
    upstream_transport: Literal["udp", "tcp", "tls"] = "udp"
    """Transport towards `upstream` ("tls" needs `[tls] enabled`; the upstream is verified against `[tls] ca`)."""
    relay: Literal["zones", "refuse"] = "zones"
    """Relay policy (RFC 3261 §16.4, §16.6) for requests from endpoints (not a `[[zones]]` peer,
    not the upstream) whose pre-loaded Route names another host: `zones` follows such a Route only
    to the upstream or a configured zone (a `peers` address or its `target`), `refuse` only to the
    upstream; anything else is answered 403 "Forbidden - relay not allowed (...)" and logged.
    In-dialog requests follow their route set to the ends of a call the node record-routed, else
    the same rule. The default `zones` keeps what an Expressway does (calls go only where a zone's
    search rule leads) and an ITSP trunk reached by a pre-loaded Route working; Kamailio's
    precedent is `loose_route()` followed by a `permissions`/`dispatcher` check of the next hop."""
    min_expires: int = 60
    """Shortest registration accepted; shorter ones get 423 with Min-Expires (RFC 3261 §10.3 step 6).
    60 s is Kamailio's (registrar min_expires) and Asterisk's (minexpiry) default."""
    max_expires: int = 3600
    """Longest registration granted; longer requests are shortened to it (RFC 3261 §10.3 step 6).
    3600 s is the RFC's default registration interval (§10.2.1.1) and Kamailio's max_expires."""
    default_expires: int = 3600
    """Registration interval when the REGISTER names none (RFC 3261 §10.2.1.1 suggests 3600 s)."""
    t1: float = 0.5
    """RFC 3261 §17.1.1.1 T1, the round-trip estimate in seconds (default 500 ms); timers B, F, H, J are 64*T1."""
    t2: float = 4.0
    """RFC 3261 §17.1.2.2 T2, the cap on non-INVITE and response retransmit intervals (default 4 s)."""
    t4: float = 5.0
    """RFC 3261 §17.1.2.2 T4, how long a message can stay in the network (default 5 s): timers I and K."""
    timer_c: float = 181.0
    """RFC 3261 §16.6 step 11 Timer C: an INVITE branch with no final answer this long after its last
    provisional is cancelled. The RFC requires more than 3 minutes, hence 181 s."""
    timer_d: float = 32.0
    """RFC 3261 §17.1.1.2 Timer D: how long an INVITE client transaction absorbs retransmitted final
    responses over UDP (at least 32 s)."""
    session_expires: int = 1800
    """Session-Expires (seconds) the node adds to an INVITE, re-INVITE or UPDATE that has none
    (RFC 4028 §8.1); 0 = add none. A callee that does session timers then refreshes the call, and
    a call whose refreshes stop (a lost BYE, a crashed endpoint) is ended after one interval instead
    of `max_dialog_age`. Endpoints without the extension are unaffected (no Require is added).
    1800 s is RFC 4028 §4's recommended interval and Asterisk's default (timers_sess_expires)."""
    min_se: int = 90
    """Shortest session interval accepted (RFC 4028 §5 Min-SE): shorter ones get 422 with Min-SE
    when the caller supports timers, else are raised to it (§8.1). 90 s is the RFC's floor (the
    least any element may demand, so refreshes cost little) and Asterisk's default (timers_min_se)."""
    max_dialog_age: float = 86400.0
    """Calls older than this (seconds) are ended by the reaper: a lost BYE must not hold a session
    license forever. 24 h: longer than any real meeting, short enough that a lost BYE frees its
    license within a day."""
    housekeeping_interval: float = 1.0
    """How often (seconds) registrations are expired and old calls reaped; expiry is accurate to this."""
    max_message_bytes: int = 65535
    """Largest SIP message accepted, in bytes (513 beyond). 65535 is the UDP datagram limit and Kamailio's BUF_SIZE."""
    max_headers: int = 256
    """Most header lines in one message (400 beyond). Real requests carry 10-40; 256 leaves room for
    long Via/Record-Route chains while bounding the work one datagram can cause (the codec's default)."""
    tcp_idle_timeout: float = 3600.0
    """Close a TCP connection idle this long (seconds). As long as the longest registration (max_expires),
    so an endpoint registered over TCP stays reachable through its connection (RFC 5923 reuse)."""
    tcp_max_connections: int = 10000
    """Most simultaneous TCP and TLS connections; further accepts are closed at once. Bounds file
    descriptors: lowered at start, with a warning, to the process's limit (RLIMIT_NOFILE) less `fd_reserve`."""
    tcp_max_connections_per_address: int = 32
    """Most simultaneous inbound TCP and TLS connections from one IP address; further ones are closed at
    once. An endpoint needs one or two (RFC 5626 §4.2: two flows); 32 leaves room for a small NAT or
    PBX while one host cannot take the node's connections (Kamailio's pike and Asterisk's tcpauthlimit
    bound the same abuse)."""
    tcp_read_timeout: float = 20.0
    """A connection whose message has begun but not completed (or that sent nothing yet) this long
    (seconds) is closed: slowloris, a Content-Length larger than what arrives. 20 s is Kamailio's
    tcp_msg_read_timeout and Apache mod_reqtimeout's header timeout; a real message arrives in milliseconds."""
    fd_reserve: int = 256
    """File descriptors kept from SIP connections for everything else: the admin server and
    /metrics, the state database, logs, Redis, UDP sockets. HAProxy derives maxconn from the
    descriptor limit the same way, less what its listeners and checks need."""
    user_agent: str = "meter"
    """Server header in responses the node answers itself."""
    workers: int = 1
    """SIP worker processes sharing `port` (SO_REUSEPORT; the kernel spreads sources over them).
    1 = one process, as before. N > 1: the node's process keeps the licensing, state, admin and H.323
    and is worker 0; N-1 more processes run their own SIP core and ask it (meter.workers). Each
    worker names its own port in Via, Record-Route and Path, so answers and in-dialog requests
    come back to it. UDP only: with N > 1 set `tcp = false` and leave `[tls]` off. 0 = one per CPU core."""

    def __post_init__(self) -> None:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            raise ValueError(f"host: expected an IP address, got {self.host!r}") from None
        for name in ("port", "advertised_port"):
            value = getattr(self, name)
            if not 0 <= value <= 65535:
                raise ValueError(f"{name}: expected 0..65535, got {value}")
        if not (self.udp or self.tcp):
            raise ValueError("udp and tcp are both false: the node would not listen at all")
        if self.mode == "inline" and not valid_hostport(self.upstream):
            raise ValueError(f"upstream: inline mode needs the registrar as host:port, got {self.upstream!r}")
        if self.upstream and not valid_hostport(self.upstream):
            raise ValueError(f"upstream: expected host:port, got {self.upstream!r}")
        if not 1 <= self.min_expires <= self.default_expires <= self.max_expires:
            raise ValueError(
                "expected 1 <= min_expires <= default_expires <= max_expires, got "
                f"{self.min_expires}, {self.default_expires}, {self.max_expires}"
            )
        for name in ("t1", "t2", "t4", "timer_c", "timer_d", "max_dialog_age", "housekeeping_interval",
                     "tcp_idle_timeout", "tcp_read_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: expected a positive number of seconds, got {getattr(self, name)}")
        if self.min_se < MIN_SE_FLOOR:
            raise ValueError(f"min_se: RFC 4028 §5 allows no Min-SE under {MIN_SE_FLOOR} seconds, got {self.min_se}")
        if self.session_expires and self.session_expires < self.min_se:
            raise ValueError(
                f"session_expires: expected 0 or at least min_se ({self.min_se}), got {self.session_expires}")
        if self.t2 < self.t1:
            raise ValueError(f"t2 ({self.t2}) must not be shorter than t1 ({self.t1})")
        if self.tcp_max_connections < 1 or self.tcp_max_connections_per_address < 1 or self.fd_reserve < 0:
            raise ValueError("tcp_max_connections and tcp_max_connections_per_address must be >= 1, fd_reserve >= 0")
        if not 0 <= self.workers <= 64:
            raise ValueError(f"workers: expected 0 (one per core) or 1..64, got {self.workers}")
        if self.worker_count > 1 and self.tcp:
            raise ValueError(f"workers: {self.worker_count} workers serve UDP only: set tcp = false (or workers = 1)")
        if self.worker_count > 1 and self.advertised_port:
            raise ValueError("workers: each worker names its own port in Via and Record-Route: "
                             "advertised_port needs workers = 1")
        if self.max_message_bytes < 1024 or self.max_headers < 16:
            raise ValueError("max_message_bytes must be >= 1024 and max_headers >= 16")

    @property
    def worker_count(self) -> int:
        """`workers`, with 0 resolved to the machine's CPU count."""
        return self.workers or (os.cpu_count() or 1)

    @property
    def upstream_hostport(self) -> tuple[str, int]:
        host, _, port = self.upstream.rpartition(":")
        return host.strip("[]"), int(port)
