"""The cluster's shared license pool: the Redis store behind ``meter.licensing.pool.LicensePool``.

- ``redis_pool``  ``RedisPool``: a ``MemoryPool`` that also caches the other peers' records, and
                  the record's Redis hash format (pure)
- ``sync``        ``PoolSync``: the asyncio adapter that publishes this node's record and reads
                  the others' (the only code here that waits)
- ``settings``    the `[cluster]` section: memory or Redis, where, how often

A node alone keeps its pool in memory (``meter.licensing.pool.MemoryPool``); ``meter.app`` picks
the store.
"""
