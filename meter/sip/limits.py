"""Per-source limits, like Kamailio's pike: requests per source address per window, and registrations
(bound AORs) per source address. Sans-I/O: ``now`` is an argument, nothing here sends or sleeps.

The rate is a two-bucket sliding window (the current window's count plus the previous one's,
weighted by how much of it still overlaps the last ``window`` seconds): one small record per
source, no timestamps per request. Every request counts, the limited ones too, so a source is held
back for as long as it keeps sending above the rate (pike's behaviour), and comes back by itself a
window or two after it slows down.

Memory is bounded by :attr:`LimitSettings.max_sources`: the table is kept in least-recently-seen
order; a new source beyond the cap evicts the longest-silent one, and housekeeping drops sources
silent for two windows (whose estimate is zero anyway). A flood from one source touches one
record; a flood from a million spoofed sources keeps the newest ``max_sources``. The registration
counts are bounded by the location service's bindings (one entry per AOR bound, at most).

Trusted zone peers and the upstream registrar are exempt (a lab registrar or a gateway carries
many users): the caller's ``exempt(host)`` is asked once per source record, and only when that
source first goes over a limit, so the common case costs no zone lookup.
"""

from __future__ import annotations

import logging
import math
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Callable, Literal

from meter.codecs.sip import Request, SIPError
from meter.logs import log_event

log = logging.getLogger("meter.sip.limits")

# What a check says. FIRST: the first limited request of this source in this window; the caller
# passes its User-Agent to :meth:`SourceLimiter.report` for the window's one log line.
PASS, LIMITED, FIRST = 0, 1, 2
REASONS = ("rate", "registrations")  # the metric's label values: a small fixed set


@dataclass(frozen=True)
class LimitSettings:
    """`[limits]`: per-source request rate and registrations (Kamailio pike, issue 10)."""

    requests: int = 64
    """Most requests one source address may send per `window` (0 = no rate limit). Kamailio's pike
    defaults to 30 per 2 s; the node allows about twice that because it sees more per user than a
    registrar alone: a digest-authenticated REGISTER is two requests, a call is INVITE, ACK, BYE
    and re-INVITEs or UPDATEs for session timers, and a small office may share one NAT address.
    A one-source REGISTER flood (3,000/s) is held to nothing after its first window."""
    window: float = 2.0
    """Length of the rate window in seconds: pike's `sampling_time_unit` default (2 s). Shorter
    catches bursts sooner but punishes a phone's start-up burst; longer remembers more."""
    rate_action: Literal["drop", "503"] = "drop"
    """Above the rate: `drop` silently (pike's usual script, `exit`: answering a flood doubles the
    traffic and makes the node a reflector for spoofed sources, and is checked before the parse so
    a flood costs a dictionary lookup), or answer `503` with `Retry-After` (RFC 3261 §21.5.4)."""
    registrations: int = 32
    """Most AORs bound from one source address (0 = no cap). A desk phone binds 1-12 lines; 32
    leaves room for a small office behind one NAT, like `[sip] tcp_max_connections_per_address`,
    while `svwar -m REGISTER` from one host no longer takes a license per guessed extension. Refresh
    and unregister of an AOR already bound from the source always pass."""
    registrations_action: Literal["drop", "503"] = "503"
    """Above the registrations cap: `503` with `Retry-After` (default: a real endpoint at the cap
    learns why and backs off instead of retransmitting for 32 s) or `drop` silently."""
    retry_after: int = 4
    """Seconds in the `Retry-After` of a limit's 503 (RFC 3261 §21.5.4): two default windows, the
    time a source that stops needs to fall back under the rate."""
    max_sources: int = 65536
    """Hard cap on source addresses remembered (least recently seen evicted first). About 260 bytes
    each, address string included (measured in tests/unit/test_sip_limits.py), so 65,536 take some
    17 MB at worst; more than a lab has endpoints, so a real source is evicted only by a spoofed
    flood of 65,536 addresses arriving between two of its own requests."""

    def __post_init__(self) -> None:
        if self.requests < 0 or self.registrations < 0:
            raise ValueError("requests and registrations: expected 0 (off) or a positive count")
        if not (self.window > 0 and math.isfinite(self.window)):
            raise ValueError(f"window: expected a positive number of seconds, got {self.window}")
        if self.retry_after < 0:
            raise ValueError(f"retry_after: expected 0 or more seconds, got {self.retry_after}")
        if self.max_sources < 1:
            raise ValueError(f"max_sources: expected at least 1, got {self.max_sources}")


class _Source:
    """One source address: its two rate buckets and when it was last reported, per reason."""

    __slots__ = ("bucket", "current", "previous", "exempt", "reported_rate", "reported_registrations",
                 "limited_until")

    def __init__(self, bucket: int) -> None:
        self.bucket = bucket      # index of the current window: int(now // window)
        self.current = 0          # requests in the current window
        self.previous = 0         # requests in the window before it
        self.exempt: bool | None = None  # asked once, when the source first goes over a limit
        self.reported_rate = -1   # per reason, the window last logged (one line per window)
        self.reported_registrations = -1
        self.limited_until = 0.0  # the sources-limited gauge counts it until then


class SourceLimiter:
    def __init__(self, settings: LimitSettings, *, exempt: Callable[[str], bool] = lambda host: False) -> None:
        self.settings = settings
        self._exempt = exempt
        self._sources: OrderedDict[str, _Source] = OrderedDict()  # least recently seen first
        self.limited: Counter = Counter({reason: 0 for reason in REASONS})  # meter_sip_limited_total
        self.evicted = 0
        # registrations per source: AOR -> hosts it is bound from, host -> how many AORs
        self._aor_hosts: dict[str, frozenset[str]] = {}
        self._per_host: Counter = Counter()

    def __len__(self) -> int:
        return len(self._sources)

    # -- rate ------------------------------------------------------------------------------------------

    def check_rate(self, host: str, now: float) -> int:
        """Count one request from ``host``: PASS, LIMITED, or FIRST (limited, and the first of this
        window: report it). The hot path: one dictionary lookup and a few integer operations."""
        limit = self.settings.requests
        if not limit:
            return PASS
        source = self._touch(host, now)
        source.current += 1
        window = self.settings.window
        overlap = 1.0 - (now / window - source.bucket)  # share of the previous window still inside
        if source.previous * overlap + source.current <= limit:
            return PASS
        return self._over(host, source, 0, now)

    def _touch(self, host: str, now: float) -> _Source:
        bucket = int(now // self.settings.window)
        sources = self._sources
        source = sources.get(host)
        if source is None:
            source = sources[host] = _Source(bucket)
            if len(sources) > self.settings.max_sources:
                sources.popitem(last=False)  # the longest silent: LRU order
                self.evicted += 1
            return source
        sources.move_to_end(host)
        if source.bucket != bucket:
            source.previous = source.current if source.bucket == bucket - 1 else 0
            source.current = 0
            source.bucket = bucket
        return source

    def _over(self, host: str, source: _Source, reason: int, now: float) -> int:
        if source.exempt is None:
            source.exempt = bool(self._exempt(host))
        if source.exempt:
            return PASS
        self.limited[REASONS[reason]] += 1
        source.limited_until = now + self.settings.window
        field = "reported_rate" if reason == 0 else "reported_registrations"
        if getattr(source, field) == source.bucket:
            return LIMITED
        setattr(source, field, source.bucket)
        return FIRST

    def refusal(self, msg, host: str, verdict: int, reason: str) -> tuple[int, str, tuple] | None:
        """A request above a limit: the window's log line on its FIRST, then the stateless answer to
        send (503 with Retry-After, RFC 3261 §21.5.4) or None to drop it."""
        s = self.settings
        action = s.rate_action if reason == "rate" else s.registrations_action
        if verdict == FIRST:
            try:
                user_agent = (msg.user_agent or "") if isinstance(msg, Request) else ""
            except SIPError:
                user_agent = ""
            self.report(host, reason, user_agent, action)
        if action != "503":
            return None
        what = "requests" if reason == "rate" else "registrations"
        return 503, f"Service Unavailable - too many {what} from this address", (("Retry-After", str(s.retry_after)),)

    def over_registrations(self, req: Request, host: str, now: float) -> int:
        """A REGISTER from ``host``: PASS, or the verdict when it would bind one AOR more than the cap."""
        if req.is_star_contact or req.to.uri.scheme not in ("sip", "sips"):
            return PASS
        return self.check_registration(req.to.uri.aor, host, now)

    def report(self, host: str, reason: str, user_agent: str, action: str) -> None:
        """The window's one log line for a limited source (a FIRST), with the first limited
        request's User-Agent: a flood leaves one line per source per window, not one per message."""
        s = self.settings
        limit = f"{s.requests}/{s.window:g}s" if reason == "rate" else str(s.registrations)
        log_event(log, "sip.limited", logging.WARNING, reason=reason, source=host, user_agent=user_agent,
                  limit=limit, action=action)

    # -- registrations per source ----------------------------------------------------------------------

    def check_registration(self, aor: str, host: str, now: float) -> int:
        """A REGISTER for ``aor`` from ``host``: PASS unless it would bind one AOR more than the cap
        from that address (a refresh or unregister of an AOR bound from there always passes)."""
        cap = self.settings.registrations
        if not cap or self._per_host[host] < cap or host in self._aor_hosts.get(aor, ()):
            return PASS
        return self._over(host, self._touch(host, now), 1, now)

    def bindings_changed(self, aor: str, hosts: frozenset[str]) -> None:
        """The AOR is now bound from ``hosts`` (empty: unregistered); keeps the per-host counts."""
        before = self._aor_hosts.get(aor, frozenset())
        if hosts == before:
            return
        for host in before - hosts:
            self._per_host[host] -= 1
            if self._per_host[host] <= 0:
                del self._per_host[host]
        for host in hosts - before:
            self._per_host[host] += 1
        if hosts:
            self._aor_hosts[aor] = hosts
        else:
            self._aor_hosts.pop(aor, None)

    def registrations_from(self, host: str) -> int:
        return self._per_host.get(host, 0)

    # -- housekeeping and views ------------------------------------------------------------------------

    def expire(self, now: float) -> None:
        """Forget sources silent for two windows (their estimate is zero): oldest first, stop at the
        first one still recent, so a pass costs what it removes."""
        oldest = int(now // self.settings.window) - 2
        sources = self._sources
        while sources:
            host, source = next(iter(sources.items()))
            if source.bucket > oldest or source.limited_until > now:
                return
            del sources[host]

    def limited_sources(self, now: float) -> int:
        """Sources limited within the last window (the gauge)."""
        return sum(1 for s in self._sources.values() if s.limited_until > now)
