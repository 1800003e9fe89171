"""The licensing domain, pure: what a registration or a call costs, and whether it fits.

Sans-I/O (docs/design.md principle 1): no sockets, tasks, files or databases, no wall clock. Facts
and ``now`` go in, decisions with their rule IDs come out, so every rule is tested exhaustively
with plain values and the same code runs in the node, the CLI and the benchmarks. Durable state
lives in ``meter.store``, the Redis pool store in ``meter.cluster``; they feed this package, never
the other way round (tests/unit/test_import_boundaries.py holds it to that).

- ``calls``          classify a call: license, units, paying role, rule IDs (C1-C11)
- ``registrations``  classify a registration (R1-R11) with ``devices``
- ``devices``        the device catalog: model and software from a User-Agent or RRQ (R2-R4)
- ``ledger``         charge/settle/release against the pool and physical capacity (C4, C6, C7, P3,
                     P4); its enforcement (enforce / observe) and the one count of refusals
- ``refusals``       the one table of refusal reasons: rule, SIP/H.323 answer, wording
- ``pool``           the pool interface a ledger charges against, a peer's record, the in-memory pool (P1, P2)
- ``platforms``      physical capacity profiles (P3, R6)
- ``keys``           option-key format, signing and verification (K1, K2)
- ``keytable``       the installed option keys by index, and what they grant (K3-K6)
- ``options``        the option types a key can grant
- ``license_mode``   PAK or Smart, and when the license mode may change (L1-L4)
- ``alarms``         raised and cleared with a reason and a rule
- ``model``          license types, units, call media, charge kinds
- ``rules``          one line per rule ID

``devices`` and ``platforms`` parse the TOML text they are given; ``meter.catalogs`` reads the
shipped tables (``meter.shipped``) or a lab's file.

Smart Licensing (S1-S14) will live as a pure state machine in ``meter/licensing/smart.py`` (time
injected, no I/O), with its HTTPS transports (Direct, On-Prem, Proxy) in ``meter/smart/``, beside
``meter/cluster/``.
"""
