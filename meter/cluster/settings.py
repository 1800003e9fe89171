"""`[cluster]` settings: where the license pool lives (this node alone, or shared through Redis).

Built by ``meter.config`` from the `[cluster]` TOML table (an unknown key stops start-up), so every
field is a plain type with a docstring; ``__post_init__`` checks what types alone cannot.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from meter.licensing.pool import GRACE_SECONDS, PEER_TIMEOUT_SECONDS

# Faster than this, a sync's two Redis round trips compete with signalling for the event loop
# while the heartbeat they carry only changes at the node's 1 s tick (meter.app.TICK_SECONDS).
MIN_SYNC_INTERVAL = 0.1
# A peer is lost only after it missed at least this many syncs in a row: one dropped packet or a
# slow store (a Redis fork for BGSAVE) must not take its calls out of the pool.
MIN_SYNCS_PER_TIMEOUT = 3
# Cluster names become key prefixes: short, and no ':' (the prefix separator) or spaces, so
# `redis-cli --scan --pattern '<name>:*'` finds exactly one cluster's keys.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_SCHEMES = ("redis", "rediss", "unix")


@dataclass(frozen=True)
class ClusterSettings:
    """The license pool's store (docs/design.md "Cluster"; rules P1, P2)."""

    store: Literal["memory", "redis"] = "memory"
    """`memory` (default): this node alone holds its license pool. `redis`: the pool is shared with
    every node that uses the same `redis_url` and `name` (P1: licenses pool whichever peer holds the
    key); each node publishes its licenses, usage, load and heartbeat there and reads the others'."""
    redis_url: str = "redis://127.0.0.1:6379/0"
    """Store `redis`: the Redis server, as redis://[[user]:password@]host[:port][/db],
    rediss://... (TLS) or unix:///path/to/redis.sock. Logs show it without the password."""
    name: str = "meter"
    """Cluster name: every Redis key of this cluster starts with `<name>:`, so several clusters (or
    labs) can share one Redis. Letters, digits, `_`, `.`, `-`; at most 64 characters."""
    sync_interval: float = 1.0
    """Seconds between two syncs with Redis (publish this node, read the others). 1 s is the node's
    tick, when its heartbeat and load are refreshed; between two syncs the cluster can overshoot its
    pool by what other peers charged meanwhile. Each sync is two round trips of a few hundred bytes."""
    peer_timeout: float = PEER_TIMEOUT_SECONDS
    """A peer not heard from for this many seconds is lost: its calls no longer count, and its
    licenses stay in the pool for 14 days from its last heartbeat (P2). 60 s is twice Redis Sentinel's
    default down-after-milliseconds, so one store failover does not make every peer look lost.
    Peers' clocks must agree (NTP) to well within this."""

    outage: Literal["share", "fail_closed"] = "share"
    """Store `redis`, while Redis cannot be reached (enforcement `enforce`): `share` (default): each
    node charges at most what it used at the last sync plus its equal share of what was then free
    (capacity / live peers), so the nodes together stay within the pool (P1) and a node without
    keys of its own still carries calls; `fail_closed`: no new pooled license on any node until the
    store is back. Either way the alarm `cluster-store-unreachable` stands meanwhile. Kamailio's
    dialog and usrloc modules likewise keep serving from local state when their database is away,
    rather than stop; `fail_closed` is for labs that must never exceed what they bought."""

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ValueError(
                f"name: expected 1-64 letters, digits, '_', '.' or '-' (starting with a letter or digit), "
                f"got {self.name!r}")
        _check_url(self.redis_url)
        if not math.isfinite(self.sync_interval) or self.sync_interval < MIN_SYNC_INTERVAL:
            raise ValueError(f"sync_interval: expected at least {MIN_SYNC_INTERVAL} seconds, got {self.sync_interval}")
        if not math.isfinite(self.peer_timeout) or self.peer_timeout < MIN_SYNCS_PER_TIMEOUT * self.sync_interval:
            raise ValueError(
                f"peer_timeout: expected at least {MIN_SYNCS_PER_TIMEOUT} x sync_interval "
                f"({MIN_SYNCS_PER_TIMEOUT * self.sync_interval:g} s) so a missed sync does not lose a peer, "
                f"got {self.peer_timeout}")
        if self.peer_timeout >= GRACE_SECONDS:
            raise ValueError(f"peer_timeout: expected less than P2's 14-day grace ({GRACE_SECONDS:g} s), "
                             f"got {self.peer_timeout}")


def _check_url(url: str) -> None:
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError when out of range or not a number
    except ValueError as exc:
        raise ValueError(f"redis_url: not a valid URL ({exc}): {redact(url)!r}") from None
    if parts.scheme not in _SCHEMES:
        raise ValueError(f"redis_url: expected a redis://, rediss:// or unix:// URL, got {redact(url)!r}")
    if parts.scheme == "unix":
        if not parts.path.startswith("/"):
            raise ValueError(f"redis_url: unix:// needs an absolute socket path, got {redact(url)!r}")
    elif not parts.hostname:
        raise ValueError(f"redis_url: expected a host, as in redis://127.0.0.1:6379/0, got {redact(url)!r}")
    elif port == 0:
        raise ValueError(f"redis_url: expected a port in 1..65535, got {redact(url)!r}")
    db = parts.path.strip("/")
    if parts.scheme != "unix" and db and not db.isdigit():
        raise ValueError(f"redis_url: the path is a database number (/0), got {redact(url)!r}")


def redact(url: str) -> str:
    """``url`` without its password, for logs and error messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None and "password=" not in parts.query:
        return url
    if parts.password is not None:
        host = parts.netloc.rpartition("@")[2]
        parts = parts._replace(netloc=f"{parts.username or ''}:***@{host}")
    # unix://...?password=secret carries it in the query instead
    query = re.sub(r"(^|&)password=[^&]*", r"\1password=***", parts.query)
    text = parts._replace(query=query).geturl()
    return text.replace("unix:/", "unix:///", 1) if parts.scheme == "unix" and not parts.netloc else text
