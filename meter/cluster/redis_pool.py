"""The Redis-shared license pool: a ``MemoryPool`` that is also a cache of the other peers.

docs/design.md "Cluster": the peers of a cluster share one license pool through Redis. The ledger calls
this object exactly as it calls ``MemoryPool`` (synchronous dict work, O(peers)), so a call set-up
never waits for the network. Only the asyncio adapter (``meter.cluster.sync.PoolSync``) talks to
Redis: at every sync it takes this node's record (``local_record``), publishes it, reads the other
peers' records and hands them back (``apply_remote``). Everything here is pure: a record is the
pool's own ``PeerRecord`` (``meter.licensing.pool``), encoded as the field -> string mapping of one
Redis hash, so tests drive the cache with plain dicts.

One hash per peer, key ``<cluster>:peer:<node>``, written whole by that peer only:

    v             record format version ("1"); a reader skips versions it does not know
    instance      random id of the writing process (two nodes configured with one name show up)
    last_seen     the peer's heartbeat, seconds since the epoch (its ledger's ``now``)
    call_capacity physical video-call capacity (P3)
    calls_load    concurrent calls in video-call equivalents (P4)
    lic.<type>    licenses contributed from this peer's keys, by type (P1)
    use.<type>    units in use on this peer, by type (RMS in half units, C4)

Liveness compares a peer's ``last_seen`` with the reader's ``now``: peers' clocks must agree to
well within ``peer_timeout`` (NTP does; ``PoolSync`` measures each node against Redis's clock).
Because ``last_seen`` is absolute, a node restarted during a lost peer's 14 days still knows when
that peer's licenses leave the pool (P2).

Lost peers outlive the store (P2). Redis may lose its data (a restart without persistence) and a
node may restart too: ``lost_records`` is what a node keeps of its lost peers in its own durable
state (``PoolSync`` writes it to SQLite), ``remember`` brings it back at start, and ``PoolSync``
republishes a remembered record the store no longer holds. Two records of one peer merge to the
later ``last_seen``: that is when contact was last had, so the 14 days run from it.

Store outage (P1 with the store down): the pool freezes what it read at the last sync and the
ledger charges against ``reserved_elsewhere``. Policy ``share``: each node may hold what it used at
the last sync plus its equal share of what was then free,

    mine <= used_mine + (capacity - used_mine - used_others) // live_peers

so the peers' limits add up to the capacity (P1: one pool, whichever peer holds the keys; P2: a
lost peer's licenses still count, its calls do not). An equal share rather than one in proportion
to each peer's keys, because P1 pools licenses whichever peer holds them: a node with no keys of its
own still carries calls. A node that used more than its share keeps its calls and takes no new
ones; when the pool was already overshot at the last sync, a node's limit is what the others left
(capacity - used_others). What peers charged in the last sync interval before the outage is the
one overshoot left (the same as between two syncs). Policy ``fail_closed``: no new pooled licenses
at all. A node that never reached the store knows no live peer: its share is the whole pool it knows.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import replace

from meter.licensing.pool import (
    GRACE_SECONDS, OUTAGE_FAIL_CLOSED, OUTAGE_POLICIES, OUTAGE_SHARE, PEER_TIMEOUT_SECONDS, MemoryPool, PeerRecord,
    PeerView, StoreOutage)

RECORD_VERSION = "1"
_LIC, _USE = "lic.", "use."
# Redis holds untrusted text as far as this node is concerned: bound what one record can make us hold.
MAX_RECORD_FIELDS = 64       # 5 fixed fields + 2 per license type (a handful of types exist)
MAX_NUMBER = 10**9           # no license count or usage is anywhere near a billion


class RecordError(ValueError):
    """A peer record that cannot be used; ``reason`` says which field and why."""

    def __init__(self, peer: str, reason: str) -> None:
        super().__init__(f"peer {peer!r}: {reason}")
        self.peer = peer
        self.reason = reason


def encode_record(record: PeerRecord, instance: str = "") -> dict[str, str]:
    """The Redis hash fields of ``record`` written by process ``instance``; ``repr`` keeps floats
    exact through the round trip."""
    fields = {
        "v": RECORD_VERSION,
        "instance": instance,
        "last_seen": repr(float(record.last_seen)),
        "call_capacity": str(int(record.call_capacity)),
        "calls_load": repr(float(record.calls_load)),
    }
    for license, quantity in record.contributed.items():
        fields[_LIC + license] = str(int(quantity))
    for license, units in record.usage.items():
        fields[_USE + license] = str(int(units))
    return fields


def decode_record(name: str, fields: Mapping[str, str]) -> PeerRecord:
    """A ``PeerRecord`` from a Redis hash, or ``RecordError``. Unknown fields are ignored (a newer
    writer may add some); a different ``v`` is refused rather than misread. ``instance`` is not
    part of the record: ``PoolSync`` reads it from the hash to tell two writers of one name apart."""
    version = fields.get("v")
    if version != RECORD_VERSION:
        raise RecordError(name, f"record version {version!r}, this node reads {RECORD_VERSION!r}")
    if len(fields) > MAX_RECORD_FIELDS:
        raise RecordError(name, f"{len(fields)} fields, at most {MAX_RECORD_FIELDS} expected")
    contributed, usage = {}, {}
    for key, value in fields.items():
        if key.startswith(_LIC):
            contributed[key[len(_LIC):]] = _count(name, key, value)
        elif key.startswith(_USE):
            usage[key[len(_USE):]] = _count(name, key, value)
    return PeerRecord(
        name=name,
        last_seen=_number(name, "last_seen", fields.get("last_seen")),
        call_capacity=_count(name, "call_capacity", fields.get("call_capacity", "0")),
        calls_load=_number(name, "calls_load", fields.get("calls_load", "0")),
        contributed={k: v for k, v in contributed.items() if v > 0},
        usage=usage,
    )


def _count(peer: str, key: str, value: str | None) -> int:
    try:
        number = int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise RecordError(peer, f"{key}: expected a whole number, got {value!r}") from None
    if not 0 <= number <= MAX_NUMBER:
        raise RecordError(peer, f"{key}: expected 0..{MAX_NUMBER}, got {number}")
    return number


def _number(peer: str, key: str, value: str | None) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise RecordError(peer, f"{key}: expected a number, got {value!r}") from None
    if not math.isfinite(number) or number < 0:
        raise RecordError(peer, f"{key}: expected a finite number >= 0, got {value!r}")
    return number


class RedisPool(MemoryPool):
    """``LicensePool`` for a cluster: this node's state is written by its ledger as in ``MemoryPool``;
    the other peers' entries are replaced at each sync from their records in Redis.

    A peer whose record disappears from Redis (a store restarted without persistence, or the key's
    TTL run out long after P2's grace) stays cached until its licenses would have left the pool
    anyway, so losing the store's data never shortens a lost peer's 14 days on the nodes that knew it.
    """

    def __init__(self, *, grace: float = GRACE_SECONDS, peer_timeout: float = PEER_TIMEOUT_SECONDS,
                 outage: str = OUTAGE_SHARE) -> None:
        if outage not in OUTAGE_POLICIES:
            raise ValueError(f"outage: expected one of {OUTAGE_POLICIES}, got {outage!r}")
        super().__init__(grace=grace, peer_timeout=peer_timeout)
        self.outage_policy = outage
        self._unstored: set[str] = set()  # cached peers that had no record in the last read
        # At the last sync: (what this node had published, live peers, the other live peers' usage).
        self._at_sync: tuple[dict[str, int], int, dict[str, int]] | None = None
        self._outage: StoreOutage | None = None
        self._frozen: tuple[dict[str, int], int, dict[str, int]] = ({}, 1, {})

    def local_record(self, me: str) -> PeerRecord | None:
        """A copy of this node's record to publish; None before its ledger has joined the pool."""
        state = self._peers.get(me)
        return None if state is None else _detached(state)

    def apply_remote(self, me: str, records: Iterable[PeerRecord], *, unreadable: Iterable[str] = (),
                     published: PeerRecord | None = None) -> None:
        """Replace the cached state of every other peer by what the store holds now.

        ``records`` is every readable peer record of the cluster (``me``'s own is ignored: this node
        is the only writer of its state). Peers in ``unreadable`` keep their previous cached state.
        ``published`` is this node's record as the sync wrote it: what the others now know of it,
        kept (with the others' usage) as the base of the outage share.
        """
        seen = {me, *unreadable}
        for record in records:
            if record.name == me:
                continue
            seen.add(record.name)
            cached = self._peers.get(record.name)
            if cached is None or record.last_seen >= cached.last_seen:  # merge: the later contact wins (P2)
                self._peers[record.name] = _detached(record)
        self._unstored = set(self._peers) - seen
        mine, live, others = self._live_usage(me)
        self._at_sync = (dict(published.usage) if published is not None else mine, live, others)

    def _live_usage(self, me: str) -> tuple[dict[str, int], int, dict[str, int]]:
        """(this node's usage, live peers counting this node, the other live peers' usage), liveness
        judged against this node's heartbeat: all in the ledgers' time, whatever the adapter's clock."""
        state = self._peers.get(me)
        if state is None:
            return {}, 1, {}
        live, others = 1, {}
        for peer in self._peers.values():
            if peer.name != me and state.last_seen - peer.last_seen <= self.peer_timeout:
                live += 1
                for license, units in peer.usage.items():
                    others[license] = others.get(license, 0) + units
        return dict(state.usage), live, others

    # ---- store outage (P1) --------------------------------------------------------------

    def store_down(self, me: str) -> None:
        """The store stopped answering: freeze the last sync's view until ``store_up``. Idempotent."""
        if self._outage is not None:
            return
        if self._at_sync is None:  # never synced: this node knows no live peer
            usage = dict(self._peers[me].usage) if me in self._peers else {}
            self._at_sync = (usage, 1, {})
        self._frozen = self._at_sync
        state = self._peers.get(me)
        self._outage = StoreOutage(since=state.last_seen if state else 0.0, policy=self.outage_policy,
                                   live_peers=self._frozen[1])

    def store_up(self) -> None:
        self._outage = None

    def outage(self) -> StoreOutage | None:
        return self._outage

    def reserved_elsewhere(self, license: str, now: float, me: str, capacity_units: int) -> int:
        outage = self._outage
        if outage is None:
            return self.usage_elsewhere(license, now, me)
        if outage.policy == OUTAGE_FAIL_CLOSED:
            return capacity_units  # nothing left for a new charge on this node
        mine, live, others = self._frozen
        used = mine.get(license, 0)
        free = capacity_units - used - others.get(license, 0)
        # Overshot at the last sync (free < 0): what the others leave, so the limits still add up to
        # no more than the capacity.
        limit = used + (free // live if free >= 0 else free)
        return capacity_units - max(limit, 0)

    # ---- lost peers in the node's own durable state (P2) ----------------------------------

    def lost_records(self, me: str) -> list[PeerRecord]:
        """The lost peers whose licenses still count, as of this node's last heartbeat: what the node
        keeps in its own state so P2's 14 days survive the store and itself. No usage: a lost peer's
        calls are gone."""
        state = self._peers.get(me)
        if state is None:
            return []
        return [replace(peer, contributed=dict(peer.contributed), usage={}, calls_load=0.0)
                for peer in sorted(self._peers.values(), key=lambda p: p.name)
                if peer.name != me and peer.contributed
                and self.peer_timeout < state.last_seen - peer.last_seen <= self.grace]

    def remember(self, me: str, records: Iterable[PeerRecord]) -> None:
        """Lost peers from the node's durable state: cached (until the store holds them, or their
        licenses leave the pool) unless the cache already heard from them later."""
        for record in records:
            cached = self._peers.get(record.name)
            if record.name == me or (cached is not None and cached.last_seen >= record.last_seen):
                continue
            self._peers[record.name] = _detached(record)
            self._unstored.add(record.name)

    def peers(self, now: float) -> list[PeerView]:
        # Forget a peer gone from the store once its licenses have left the pool (P2): nothing of it counts.
        for name in [n for n in self._unstored if now - self._peers[n].last_seen > self.grace]:
            del self._peers[name]
            self._unstored.discard(name)
        return super().peers(now)


def _detached(record: PeerRecord) -> PeerRecord:
    """A copy of ``record`` that shares no dict with it: the cache and what is published never alias."""
    return replace(record, contributed=dict(record.contributed), usage=dict(record.usage))
