"""Durable state (SQLite): keys, alarms, usage; later usage history, bindings and calls,
smart-licensing state.

- ``licensing``       ``LicensingStore``: option keys, license mode, alarms, node serial, trusted
                      issuer key and usage snapshots in ``<state_dir>/licensing.sqlite``; the lab
                      issuer's PEM key files
- ``node_licensing``  ``NodeLicensing``: one node's licensing state put together (store, option-key
                      table, alarms), for the running node and the CLI

The licensing domain (``meter.licensing``) never imports this package: it is fed from here.
"""
