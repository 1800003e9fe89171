"""The Redis-shared license pool: a ``MemoryPool`` that is also a cache of the other peers.

DESIGN.md "Cluster": the peers of a cluster share one license pool through Redis. The ledger calls
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
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import replace

from meter.licensing.pool import GRACE_SECONDS, PEER_TIMEOUT_SECONDS, MemoryPool, PeerRecord, PeerView

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

    def __init__(self, *, grace: float = GRACE_SECONDS, peer_timeout: float = PEER_TIMEOUT_SECONDS) -> None:
        super().__init__(grace=grace, peer_timeout=peer_timeout)
        self._unstored: set[str] = set()  # cached peers that had no record in the last read

    def local_record(self, me: str) -> PeerRecord | None:
        """A copy of this node's record to publish; None before its ledger has joined the pool."""
        state = self._peers.get(me)
        return None if state is None else _detached(state)

    def apply_remote(self, me: str, records: Iterable[PeerRecord], *, unreadable: Iterable[str] = ()) -> None:
        """Replace the cached state of every other peer by what the store holds now.

        ``records`` is every readable peer record of the cluster (``me``'s own is ignored: this node
        is the only writer of its state). Peers in ``unreadable`` keep their previous cached state.
        """
        seen = {me, *unreadable}
        for record in records:
            if record.name == me:
                continue
            seen.add(record.name)
            self._peers[record.name] = _detached(record)
        self._unstored = set(self._peers) - seen

    def peers(self, now: float) -> list[PeerView]:
        # Forget a peer gone from the store once its licenses have left the pool (P2): nothing of it counts.
        for name in [n for n in self._unstored if now - self._peers[n].last_seen > self.grace]:
            del self._peers[name]
            self._unstored.discard(name)
        return super().peers(now)


def _detached(record: PeerRecord) -> PeerRecord:
    """A copy of ``record`` that shares no dict with it: the cache and what is published never alias."""
    return replace(record, contributed=dict(record.contributed), usage=dict(record.usage))
