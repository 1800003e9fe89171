"""The asyncio adapter between a ``RedisPool`` and Redis: the only code of the cluster that waits.

Every ``interval`` seconds one sync publishes this node's record (licenses, usage per license, call
load, capacity, heartbeat) as the hash ``<cluster>:peer:<node>`` and reads every peer's hash back
into the pool's cache (format: ``meter.cluster.redis_pool``). Two round trips per sync:

1. MULTI: DEL + HSET + EXPIRE our hash, SADD + EXPIRE the peer index ``<cluster>:peers``, SMEMBERS
   it, TIME; EXEC. Written whole in one transaction, a hash is never seen half-updated, and a
   license type that went away leaves no stale field behind.
2. HGETALL of every member (our own included: another process writing it means two nodes share
   one name). An index member whose hash has expired is removed (SREM).

An index set rather than SCAN: SCAN walks the whole keyspace of a Redis that may serve other
applications; the set is read in one command. Keys expire after ``PEER_KEY_TTL_SECONDS``, refreshed
by each sync, so a lost peer's record stays readable through P2's 14 days and then disappears.

Lost peers are also kept in the node's own durable state (``lost_store``, the SQLite licensing
store): after every sync the node writes what changed in ``RedisPool.lost_records``; at start it
reads them back (``RedisPool.remember``). A remembered lost peer the store does not hold (Redis
restarted empty) is republished under its own key, only if the key is still absent (one Lua
script: a peer that came back meanwhile always wins), so nodes that never knew it count it too.

When Redis cannot be reached the node goes on with its cache, charging within the outage policy
(``RedisPool.store_down``: its share of the pool, or nothing new), the error is logged once when it
starts, once a minute while it lasts and once when it ends, and ``status()`` shows it. redis-py
reconnects on the next command. Each sync makes one immediate retry (no backoff: a connection left
stale by a Redis restart fails once, the retry reconnects) and is cut off after
``SYNC_TIMEOUT_SECONDS`` whatever happens, so a dead store never delays the next round.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from meter.cluster.redis_pool import RecordError, RedisPool, decode_record, encode_record
from meter.cluster.settings import ClusterSettings, redact
from meter.licensing.pool import PeerRecord
from meter.logs import log_event

log = logging.getLogger("meter.cluster")

# 1 s is the node's tick (meter.app.TICK_SECONDS), when the ledger refreshes its heartbeat and load:
# a sync then always carries fresh data. Between two syncs the cluster can overshoot its pool by what
# other peers charged meanwhile, so shorter is tighter; two small round trips per node per second cost
# Redis nothing (it serves ~100k commands/s), and the 60 s peer timeout is 60 missed syncs away.
SYNC_INTERVAL_SECONDS = 1.0
# A sync is two round trips of a few hundred bytes, well under a millisecond on a lab LAN. 2 s rides
# out a Redis pause (fork for BGSAVE, a Sentinel failover's first seconds) while a hung store costs at
# most two 1 s rounds, far inside the 60 s peer timeout.
SYNC_TIMEOUT_SECONDS = 2.0
# Keys outlive P2's 14 days by two more weeks: a lost peer's contribution stays readable by peers,
# by a survivor restarted meanwhile and by an admin (K6) for the whole grace, whatever the clock skew
# between nodes and Redis; after that the store cleans itself up.
PEER_KEY_TTL_SECONDS = 28 * 24 * 3600
# While the store stays unreachable, repeat the warning this often rather than once per sync.
REPEAT_LOG_SECONDS = 60.0
# Warn when this node's clock and Redis's differ by more than this fraction of the peer timeout:
# liveness compares heartbeats written with different nodes' clocks (P2).
SKEW_WARN_FRACTION = 0.25


# Republish a lost peer's record (P2) only where the store holds none: atomic, so it never overwrites
# the peer's own record. KEYS: the peer's hash, the peer index; ARGV: ttl, peer name, field, value...
_REPUBLISH = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[2])
return 1
"""


class LostPeerStore(Protocol):
    """Where a node keeps its lost peers (``meter.store.licensing.LicensingStore``)."""

    def lost_peers(self, cluster: str) -> list[PeerRecord]: ...
    def save_lost_peer(self, cluster: str, record: PeerRecord) -> None: ...
    def forget_lost_peer(self, cluster: str, peer: str) -> None: ...


class SyncStatus(NamedTuple):
    """What the admin API and metrics show about the shared store."""

    store: str                   # the Redis URL without its password
    connected: bool              # the last sync succeeded
    last_sync: float | None      # wall-clock time of the last successful sync
    last_error: str              # "" after a successful sync
    syncs_total: int
    failures_total: int
    clock_skew: float | None     # this node's clock minus Redis's, seconds, at the last sync
    unreadable: tuple[str, ...]  # "peer: reason" for records skipped at the last sync
    duplicate_name: bool         # another process publishes under this node's name
    outage: str                  # "" while the store answers, else the policy in force ("share", "fail_closed")
    lost_peers_kept: tuple[str, ...]  # lost peers kept in the node's own state (P2)


def _connect(url: str, node: str) -> Any:
    return redis.asyncio.Redis.from_url(
        url, decode_responses=True, socket_timeout=SYNC_TIMEOUT_SECONDS,
        socket_connect_timeout=SYNC_TIMEOUT_SECONDS, retry=Retry(NoBackoff(), 1),
        client_name=f"meter-{node}")


class PoolSync:
    """Keeps ``pool`` in sync with the other peers of cluster ``cluster`` through Redis at ``redis_url``."""

    def __init__(self, pool: RedisPool, redis_url: str, node: str, interval: float = SYNC_INTERVAL_SECONDS, *,
                 cluster: str = "meter", key_ttl: int = PEER_KEY_TTL_SECONDS, client: Any = None,
                 clock: Callable[[], float] = time.time, lost_store: LostPeerStore | None = None) -> None:
        if interval <= 0:
            raise ValueError(f"interval: expected a positive number of seconds, got {interval}")
        if key_ttl <= pool.grace:  # P2: the record must outlive the grace, or the licenses leave early
            raise ValueError(f"key_ttl: expected more than the pool's grace ({pool.grace:g} s), got {key_ttl}")
        self.pool, self.node, self.interval, self.cluster = pool, node, interval, cluster
        self.key_ttl = int(key_ttl)
        self.redis_url = redis_url
        self.instance = uuid.uuid4().hex[:16]
        self._client = client  # injected by tests; else created at the first sync
        self._own_client = client is None
        self._clock = clock
        self._task: asyncio.Task | None = None
        self._key = self.peer_key(node)
        self._index = f"{cluster}:peers"
        self._connected = False
        self._last_sync: float | None = None
        self._last_error = ""
        self._syncs = 0
        self._failures = 0
        self._down_since: float | None = None
        self._last_warned = 0.0
        self._skew: float | None = None
        self._skew_warned = False
        self._unreadable: tuple[str, ...] = ()
        self._duplicate = False
        self._lost_store = lost_store
        self._kept: dict[str, PeerRecord] = {}  # lost peers as last written to lost_store

    @classmethod
    def from_settings(cls, pool: RedisPool, settings: ClusterSettings, node: str, **kw: Any) -> "PoolSync":
        return cls(pool, settings.redis_url, node, settings.sync_interval, cluster=settings.name, **kw)

    def peer_key(self, node: str) -> str:
        return f"{self.cluster}:peer:{node}"

    # ---- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """One sync now (so the node starts knowing the cluster's licenses, if Redis answers), then
        one every ``interval``. Never raises for an unreachable store: the node starts on its own pool
        and the lost peers it kept (P2)."""
        if self._lost_store is not None:
            kept = self._lost_store.lost_peers(self.cluster)
            self.pool.remember(self.node, kept)
            self._kept = {record.name: record for record in kept}
            if kept:
                log_event(log, "cluster.lost_peers_restored", node=self.node, peers=sorted(self._kept))
        await self.sync_once()
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"pool-sync-{self.node}")
        log_event(log, "cluster.sync_started", store=redact(self.redis_url), cluster=self.cluster,
                  node=self.node, interval=self.interval, connected=self._connected)

    async def close(self) -> None:
        """Stop syncing after one last publish (usage is zero once the node has released its calls)."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._client is not None:  # never synced: nothing to publish, nothing to close
            await self.sync_once()
            if self._own_client:
                await self._client.aclose()
            self._client = None
        log_event(log, "cluster.sync_stopped", node=self.node)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.sync_once()

    # ---- one sync -----------------------------------------------------------------------

    async def sync_once(self) -> bool:
        """Publish this node and read the others. True when Redis answered; never raises."""
        try:
            await asyncio.wait_for(self._sync(), SYNC_TIMEOUT_SECONDS)
        except Exception as exc:  # RedisError, OSError, TimeoutError; anything else is a bug, logged too
            self._failed(exc)
            ok = False
        else:
            self._succeeded()
            ok = True
        self._keep_lost_peers()
        return ok

    async def _sync(self) -> None:
        if self._client is None:  # created on first use: connecting waits for nothing until a command
            self._client = _connect(self.redis_url, self.node)
        client = self._client
        record = self.pool.local_record(self.node)
        pipe = client.pipeline(transaction=True)
        if record is not None:
            pipe.delete(self._key)
            pipe.hset(self._key, mapping=encode_record(record, self.instance))
            pipe.expire(self._key, self.key_ttl)
            pipe.sadd(self._index, self.node)
            pipe.expire(self._index, self.key_ttl)
        pipe.smembers(self._index)
        pipe.time()
        replies = await pipe.execute()
        members, server_time = replies[-2], replies[-1]
        self._skew = self._clock() - (server_time[0] + server_time[1] / 1e6)
        names = sorted(members)
        pipe = client.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(self.peer_key(name))
        hashes = await pipe.execute()

        records, unreadable, gone = [], [], []
        duplicate = False
        for name, fields in zip(names, hashes):
            if not fields:
                gone.append(name)  # expired: only the index still names it
                continue
            if name == self.node:
                duplicate = record is not None and fields.get("instance") != self.instance
                continue
            try:
                records.append(decode_record(name, fields))
            except RecordError as exc:
                unreadable.append(exc)
        if gone:
            await client.srem(self._index, *gone)
        self.pool.apply_remote(self.node, records, unreadable=[e.peer for e in unreadable], published=record)
        if record is not None:
            held = {r.name for r in records} | {e.peer for e in unreadable}
            for lost in self.pool.lost_records(self.node):
                if lost.name not in held:
                    await self._republish(client, lost)
        self._report(unreadable, duplicate)

    async def _republish(self, client: Any, lost: PeerRecord) -> None:
        """P2 after the store lost its data: put back the record of a lost peer this node remembers."""
        fields = encode_record(lost, f"republished-by-{self.node}")
        args = [str(self.key_ttl), lost.name, *(x for item in fields.items() for x in item)]
        if await client.eval(_REPUBLISH, 2, self.peer_key(lost.name), self._index, *args):
            log_event(log, "cluster.lost_peer_republished", node=self.node, peer=lost.name,
                      last_seen=lost.last_seen, licenses_until=lost.last_seen + self.pool.grace,
                      contributed=lost.contributed)

    # ---- lost peers in the node's own state (P2) -------------------------------------------

    def _keep_lost_peers(self) -> None:
        """Write to the node's own state what changed among its lost peers since the last sync."""
        if self._lost_store is None:
            return
        current = {record.name: record for record in self.pool.lost_records(self.node)}
        try:
            for name, record in current.items():
                if self._kept.get(name) != record:
                    self._lost_store.save_lost_peer(self.cluster, record)
                    log_event(log, "cluster.lost_peer_kept", node=self.node, peer=name, last_seen=record.last_seen,
                              licenses_until=record.last_seen + self.pool.grace, contributed=record.contributed)
            forgotten = self._kept.keys() - current.keys()
            me = self.pool.local_record(self.node) if forgotten else None
            for name in sorted(forgotten):
                self._lost_store.forget_lost_peer(self.cluster, name)
                over = me is not None and me.last_seen - self._kept[name].last_seen > self.pool.grace
                log_event(log, "cluster.lost_peer_forgotten", node=self.node, peer=name,
                          why="its licenses left the pool (P2)" if over else "reachable again")
        except Exception:  # a state file that cannot be written must not stop the sync loop
            log.exception("cluster.lost_peer_write_failed")
            return
        self._kept = current

    # ---- status and logs ----------------------------------------------------------------

    def _report(self, unreadable: list[RecordError], duplicate: bool) -> None:
        texts = tuple(f"{e.peer}: {e.reason}" for e in unreadable)
        if texts != self._unreadable and texts:
            log_event(log, "cluster.peer_record_unreadable", level=logging.ERROR, records=list(texts))
        self._unreadable = texts
        if duplicate and not self._duplicate:
            log_event(log, "cluster.duplicate_node_name", level=logging.ERROR, node=self.node,
                      key=self._key, hint="another process publishes under this node's name; give each node its own")
        self._duplicate = duplicate
        too_far = self._skew is not None and abs(self._skew) > SKEW_WARN_FRACTION * self.pool.peer_timeout
        if too_far and not self._skew_warned:
            log_event(log, "cluster.clock_skew", level=logging.WARNING, node=self.node,
                      skew_seconds=round(self._skew, 3), peer_timeout=self.pool.peer_timeout,
                      hint="peers compare heartbeats across clocks; synchronise them (NTP)")
        self._skew_warned = too_far

    def _succeeded(self) -> None:
        now = self._clock()
        if self._down_since is not None:
            log_event(log, "cluster.store_reachable", store=redact(self.redis_url),
                      down_seconds=round(now - self._down_since, 1))
        self._down_since = None
        self.pool.store_up()
        self._connected = True
        self._last_sync = now
        self._last_error = ""
        self._syncs += 1

    def _failed(self, exc: BaseException) -> None:
        now = self._clock()
        self.pool.store_down(self.node)  # P1: from now on charge within the outage policy
        self._connected = False
        self._last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        self._failures += 1
        expected = _is_store_error(exc)
        if self._down_since is None or now - self._last_warned >= REPEAT_LOG_SECONDS:
            if self._down_since is None:
                self._down_since = now
            self._last_warned = now
            log_event(log, "cluster.store_unreachable", level=logging.WARNING if expected else logging.ERROR,
                      store=redact(self.redis_url), error=self._last_error,
                      down_seconds=round(now - self._down_since, 1), outage=self.pool.outage_policy,
                      hint="the node goes on with the cluster state it last read, within the outage policy")
            if not expected:  # not a store error: a bug, shown with its traceback
                log.error("cluster.sync_failed_unexpectedly", exc_info=exc)

    def status(self) -> SyncStatus:
        return SyncStatus(
            store=redact(self.redis_url), connected=self._connected, last_sync=self._last_sync,
            last_error=self._last_error, syncs_total=self._syncs, failures_total=self._failures,
            clock_skew=self._skew, unreadable=self._unreadable, duplicate_name=self._duplicate,
            outage=outage.policy if (outage := self.pool.outage()) is not None else "",
            lost_peers_kept=tuple(sorted(self._kept)))


def _is_store_error(exc: BaseException) -> bool:
    return isinstance(exc, (RedisError, OSError, TimeoutError))

