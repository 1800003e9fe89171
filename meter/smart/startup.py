"""What a node in Smart mode refuses to start with: product `vcs` (L4), and a cluster configured
while Smart Licensing is in its evaluation period (S1, as X14.0.1 and the seed chapter say)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from meter.licensing.license_mode import SMART
from meter.store.licensing import DB_NAME


def refusal(config, now: float) -> str:
    """Why the node must not start on this config and state directory; "" when it may."""
    path = Path(config.node.state_dir) / DB_NAME
    if not path.exists():
        return ""
    from meter.store.licensing import LicensingStore
    from meter.store.smart_state import SmartStore

    try:
        with LicensingStore(config.node.state_dir) as store:
            if store.license_mode != SMART:
                return ""
            serial = store.serial
    except sqlite3.Error:
        return ""  # the store's own checks name the problem
    if config.node.product == "vcs":
        return (f"L4: {path} is in Smart licensing mode and [node] product is \"vcs\", which cannot run "
                "Smart licensing: set product = \"expressway\", or `meter factory-reset` back to PAK")
    if config.cluster.store == "redis":
        with SmartStore(config.node.state_dir) as smart_store:
            machine, _ = smart_store.load(config.smart.timers(), serial, now)
        if not machine.cluster_configuration_allowed(now):
            return ("S1: cluster configuration is refused while Smart Licensing is in its evaluation period "
                    "(not registered): register the node (`meter smart register <token>`) standalone first, "
                    "then set [cluster] store = \"redis\"")
    return ""
