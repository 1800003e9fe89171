"""The licensing domain, sans-I/O: no sockets, no tasks, no wall clock (``now`` is an argument).

- ``calls``          classify a call: license, units, paying role, rule IDs (C1-C11)
- ``registrations``  classify a registration (R1-R11) with ``devices`` (devices.toml)
- ``ledger``         charge/settle/release against pools and physical capacity (C4, C6, C7, P3, P4)
- ``platforms``      capacity profiles (platforms.toml)
- ``keys``, ``keytable``, ``options``  option keys (K1-K6)
- ``modes``          PAK / Smart (L1-L4)
- ``alarms``         raised and cleared with a reason
- ``store``, ``node`` durable state in SQLite (the only I/O) and the node's licensing facade
- ``cli``            Expressway-flavoured commands
- ``rules``          one line per rule ID

The cluster pool interface lives in ``meter.cluster.pool``.
"""
