"""Durable state (SQLite): identity, keys, alarms, usage, SIP bindings and calls in progress.

- ``licensing``       ``LicensingStore``: option keys, license mode, alarms, node serial, trusted
                      issuer key and the last ledger snapshot in ``<state_dir>/licensing.sqlite``;
                      the lab issuer's PEM key files
- ``usage_history``   ``UsageHistory``: per-minute usage buckets per license (hourly when old), the
                      peaks restored at start, ``[usage]`` settings; read-only for `meter report`
- ``node_licensing``  ``NodeLicensing``: one node's licensing state put together (store, option-key
                      table, alarms), for the running node and the CLI
- ``licensing`` also  the node's identity: ``init_state`` (`meter init`, once), ``check_initialised``
                      (`meter run` never makes a serial up), ``backup_state`` / ``restore_state``
- ``state``           ``StateStore`` and ``StateJournal``: bindings and calls written behind in
                      batches (Kamailio usrloc/dialog db_mode=2), ``[state]`` settings
- ``sip_state``       ``SipState``: a SIP core's bindings and calls with their charges, to rows and
                      back at start

The licensing domain (``meter.licensing``) never imports this package: it is fed from here.
"""
