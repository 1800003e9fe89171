"""The cluster's shared license pool: the Redis store behind ``meter.licensing.pool.LicensePool``.

- ``redis_pool``  ``RedisPool``: a ``MemoryPool`` that also caches the other peers' records, keeps
                  within its share of the pool while the store is away, and the record's Redis
                  hash format (pure)
- ``sync``        ``PoolSync``: the asyncio adapter that publishes this node's record and reads
                  the others' (the only code here that waits), and keeps lost peers in the node's
                  own state (P2)
- ``settings``    the `[cluster]` section: memory or Redis, where, how often, what while it is away

A node alone keeps its pool in memory (``meter.licensing.pool.MemoryPool``); ``meter.app`` picks
the store.
"""
