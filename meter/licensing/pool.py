"""The license pool a ledger charges against: the interface, one peer's record, the in-memory pool.

A node's ledger (``meter.licensing.ledger``) asks its pool two things on every charge: how many
licenses of a type the cluster holds (P1 pooling, P2 grace for a lost peer) and how many the
*other* peers are using. It tells the pool its own usage after every change. Everything here is
synchronous and O(peers) (a cluster has at most six peers), so the sans-I/O core can call it on
the hot path. The shared store (``meter.cluster.redis_pool``) is a ``MemoryPool`` whose other
peers' records its asyncio adapter replaces at each sync, publishing this node's record and
reading the others'. Between two syncs a cluster can overshoot by what peers charged meanwhile;
that is the price of never waiting for the network on a call set-up.

One peer has two shapes: ``PeerRecord``, the state the pool holds (and the Redis store publishes
as a hash), and ``PeerView``, a frozen read of it at a moment, with what ``now`` and the pool's
timeouts make of it (alive or lost, until when its licenses count: P2).

While a shared store is unreachable, a peer's view of the others freezes: their calls would look
gone after ``peer_timeout`` and every node could charge the whole pool. ``reserved_elsewhere`` is
what the ledger holds back for the others: their usage when the store answers, and during an outage
what the store's policy (``meter.cluster.redis_pool``) leaves them; ``outage()`` says which holds.

Units: usage is in the ledger's units (RMS in half units, C4); contributions and capacity are
whole licenses. License types are plain strings ("rms", "room", ...).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

# P2: a lost peer's licenses stay in the pool for two weeks from the loss of contact.
GRACE_SECONDS = 14 * 24 * 3600.0
# A peer not heard from for this long is lost: its calls are gone and no longer count as usage.
# Twice Redis Sentinel's default down-after-milliseconds (30 s), so one store failover does not
# make every peer look lost.
PEER_TIMEOUT_SECONDS = 60.0


@dataclass(slots=True)
class PeerRecord:
    """One peer's state in the pool: written by its own ledger, published whole by a shared store."""

    name: str
    last_seen: float                # the peer's heartbeat (its ledger's ``now``)
    call_capacity: int = 0          # physical video-call capacity (P3)
    calls_load: float = 0.0         # concurrent calls in video-call equivalents (P4)
    contributed: dict[str, int] = field(default_factory=dict)  # licenses from this peer's keys (P1)
    usage: dict[str, int] = field(default_factory=dict)        # units in use on this peer, by type


class PeerView(NamedTuple):
    """One peer as the pool sees it at ``now`` (K6: the current licenses of every cluster peer)."""

    name: str
    alive: bool
    last_seen: float
    licenses_until: float | None  # lost peer: when its licenses leave the pool (P2); alive: None
    contributed: dict[str, int]    # licenses from this peer's keys, by type
    usage: dict[str, int]          # units in use on this peer, by type
    calls_load: float              # concurrent calls in video-call equivalents
    call_capacity: int             # physical video-call capacity (P3)


OUTAGE_SHARE, OUTAGE_FAIL_CLOSED = "share", "fail_closed"
OUTAGE_POLICIES = (OUTAGE_SHARE, OUTAGE_FAIL_CLOSED)


class StoreOutage(NamedTuple):
    """The shared store unreachable: how this node charges its pooled licenses until it is back."""

    since: float     # this node's last heartbeat when the outage was seen (its ledger's ``now``)
    policy: str      # OUTAGE_SHARE or OUTAGE_FAIL_CLOSED
    live_peers: int  # peers alive at the last sync, this node included: the share's divisor


class LicensePool(Protocol):
    """What a ledger needs from the cluster's pool. All methods are synchronous and cheap."""

    grace: float
    peer_timeout: float

    def join(self, peer: str, now: float, *, call_capacity: int = 0) -> None: ...
    def heartbeat(self, peer: str, now: float) -> None: ...
    def contribute(self, peer: str, quantities: Mapping[str, int], now: float) -> None: ...
    def set_usage(self, peer: str, license: str, units: int) -> None: ...
    def set_load(self, peer: str, calls_load: float) -> None: ...
    def capacity(self, license: str, now: float, me: str) -> int: ...
    def usage_elsewhere(self, license: str, now: float, me: str) -> int: ...
    def reserved_elsewhere(self, license: str, now: float, me: str, capacity_units: int) -> int: ...
    def outage(self) -> StoreOutage | None: ...
    def cluster_load(self, now: float, me: str) -> tuple[float, int]: ...
    def peers(self, now: float) -> list[PeerView]: ...


class MemoryPool:
    """The default pool: one process, or several ledgers sharing this object (tests, P5)."""

    def __init__(self, *, grace: float = GRACE_SECONDS, peer_timeout: float = PEER_TIMEOUT_SECONDS) -> None:
        self.grace = grace
        self.peer_timeout = peer_timeout
        self._peers: dict[str, PeerRecord] = {}

    def _peer(self, name: str) -> PeerRecord:
        try:
            return self._peers[name]
        except KeyError:
            raise KeyError(f"peer {name!r} has not joined the pool") from None

    def join(self, peer: str, now: float, *, call_capacity: int = 0) -> None:
        state = self._peers.get(peer)
        if state is None:
            self._peers[peer] = PeerRecord(name=peer, last_seen=now, call_capacity=call_capacity)
        else:
            state.last_seen = max(state.last_seen, now)
            state.call_capacity = call_capacity

    def heartbeat(self, peer: str, now: float) -> None:
        state = self._peer(peer)
        state.last_seen = max(state.last_seen, now)

    def contribute(self, peer: str, quantities: Mapping[str, int], now: float) -> None:
        state = self._peer(peer)
        state.contributed = {str(k): int(v) for k, v in quantities.items() if v > 0}
        state.last_seen = max(state.last_seen, now)

    def set_usage(self, peer: str, license: str, units: int) -> None:
        self._peer(peer).usage[license] = units

    def set_load(self, peer: str, calls_load: float) -> None:
        self._peer(peer).calls_load = calls_load

    def _alive(self, state: PeerRecord, now: float, me: str) -> bool:
        return state.name == me or now - state.last_seen <= self.peer_timeout

    def capacity(self, license: str, now: float, me: str) -> int:
        # P1: every peer's licenses, whichever peer holds the key; P2: a lost peer's for `grace`.
        total = 0
        for state in self._peers.values():
            if state.name == me or now - state.last_seen <= self.grace:
                total += state.contributed.get(license, 0)
        return total

    def usage_elsewhere(self, license: str, now: float, me: str) -> int:
        total = 0
        for state in self._peers.values():
            if state.name != me and now - state.last_seen <= self.peer_timeout:
                total += state.usage.get(license, 0)
        return total

    def reserved_elsewhere(self, license: str, now: float, me: str, capacity_units: int) -> int:
        """Units of ``license`` this node must leave to the other peers: here, what they use."""
        return self.usage_elsewhere(license, now, me)

    def outage(self) -> StoreOutage | None:
        """The shared store's outage, if any; a pool in memory has no store to lose."""
        return None

    def cluster_load(self, now: float, me: str) -> tuple[float, int]:
        """(calls in video-call equivalents, physical video-call capacity) over live peers (P4)."""
        load, capacity = 0.0, 0
        for state in self._peers.values():
            if self._alive(state, now, me):
                load += state.calls_load
                capacity += state.call_capacity
        return load, capacity

    def peers(self, now: float) -> list[PeerView]:
        views = []
        for state in sorted(self._peers.values(), key=lambda s: s.name):
            alive = now - state.last_seen <= self.peer_timeout
            views.append(PeerView(
                name=state.name, alive=alive, last_seen=state.last_seen,
                licenses_until=None if alive else state.last_seen + self.grace,
                contributed=dict(state.contributed), usage=dict(state.usage),
                calls_load=state.calls_load, call_capacity=state.call_capacity,
            ))
        return views
