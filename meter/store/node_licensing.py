"""One node's licensing state, put together: durable store, option keys, license mode and alarms.

Used by the CLI (one command, then exit) and by the running node (at start-up, on key changes,
and when a demo key expires: see ``next_change``). The ledger is separate and fed from here:
``ledger.set_licenses(node.grants(now).quantities, now)``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from meter.licensing.alarms import Alarm, AlarmBoard
from meter.licensing.keytable import AddResult, Grants, Installed, KeyStatus, OptionKeyTable
from meter.licensing.license_mode import PRODUCTS, SMART, switch_to_smart
from meter.licensing.options import KEY_ONLY_FEATURES, OPTIONS
from meter.logs import log_event
from meter.store.licensing import LicensingStore

log = logging.getLogger("meter.licensing")

RESTART_ALARM = "restart-required"


class NodeLicensing:
    def __init__(self, store: LicensingStore, *, product: str | None = None) -> None:
        self.store = store
        if product is not None:
            if product not in PRODUCTS:
                raise ValueError(f"product: expected one of {PRODUCTS}, got {product!r}")
            store.set_meta("product", product)
        self.serial = store.serial
        self.public_key = store.issuer_public_key()
        self.keys = OptionKeyTable(self.public_key, self.serial)
        self.keys.load(store.key_rows())
        self.alarms = AlarmBoard(on_change=self._alarm_changed)
        self.alarms.restore(store.alarms(active_only=True))

    @classmethod
    def open(cls, state_dir: str | Path, *, product: str | None = None) -> NodeLicensing:
        return cls(LicensingStore(state_dir), product=product)

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> NodeLicensing:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def license_mode(self) -> str:
        return self.store.license_mode

    @property
    def product(self) -> str:
        return self.store.get_meta("product", "expressway")

    @property
    def smart(self) -> bool:
        return self.license_mode == SMART

    def _alarm_changed(self, alarm: Alarm) -> None:
        """Persist, and tell the operator at warning: every alarm raised and cleared (K3, P4...)."""
        self.store.save_alarm(alarm)
        if alarm.active:
            log_event(log, "alarm.raised", logging.WARNING, alarm=alarm.id, rule=alarm.rule,
                      severity=alarm.severity, reason=alarm.reason)
        else:
            log_event(log, "alarm.cleared", logging.WARNING, alarm=alarm.id, rule=alarm.rule,
                      reason=alarm.cleared_reason)

    # ---- start-up -----------------------------------------------------------------------

    def node_started(self, now: float) -> list[int]:
        """Call once at node start: restart-pending keys take effect and the K3 alarm clears."""
        started = self.keys.node_started()
        self.store.clear_restart_flags()
        self.alarms.clear(RESTART_ALARM, "node restarted: pending option keys in force (K3)", now)
        return started

    # ---- option keys --------------------------------------------------------------------

    def add_key(self, text: str, now: float, *, index: int | None = None) -> AddResult:
        """Install a key (L3: refused in Smart mode). Raises keys.KeyRefused or ValueError."""
        result = self.keys.add(text, now, index=index, smart_mode=self.smart)
        self.store.put_key(result.index, result.key.text, now, result.pending_restart)
        if result.pending_restart:
            self.alarms.raise_(RESTART_ALARM, "K3",
                               f"restart required: {OPTIONS[result.key.option].title} (option {result.index}) "
                               f"takes effect after a restart", now)
        return result

    def remove_key(self, index: int, now: float) -> Installed | None:
        removed = self.keys.remove(index)
        if removed is not None:
            self.store.delete_key(index)
            if not self.keys.restart_pending():
                self.alarms.clear(RESTART_ALARM, "no option key waits for a restart any more", now)
        return removed

    def grants(self, now: float) -> Grants:
        return self.keys.grants(now, smart_mode=self.smart)

    def statuses(self, now: float) -> list[KeyStatus]:
        return self.keys.statuses(now, smart_mode=self.smart)

    def feature(self, code: str, now: float) -> bool:
        """Is a key-granted feature in force? L3: key-only features are unavailable in Smart mode."""
        if self.smart and code in KEY_ONLY_FEATURES:
            return False
        return code in self.grants(now).features

    def next_change(self, now: float) -> float | None:
        return None if self.smart else self.keys.next_change(now)

    # ---- license mode (L1-L4) -----------------------------------------------------------

    def switch_to_smart(self, now: float | None = None) -> str:
        new = switch_to_smart(self.license_mode, self.product)  # raises ModeRefused for vcs (L4)
        if now is not None and self.license_mode != new:
            self._start_evaluation(now)  # S1: the evaluation starts with the switch
        self.store.license_mode = new
        return new

    def _start_evaluation(self, now: float) -> None:
        from meter.store.smart_state import SmartStore

        with SmartStore(self.store.state_dir) as smart_store:
            machine, _ = smart_store.load(None, self.serial, now)
            machine.start_evaluation(now)
            smart_store.save(machine)

    def factory_reset(self, *, confirmed: bool, backup_path: str | Path | None = None,
                      now: float | None = None) -> Path:
        """L2: the only way back from Smart to PAK. Writes the backup first."""
        path = backup_path or self.store.default_backup_path(now)
        written = self.store.factory_reset(confirmed=confirmed, backup_path=path)
        from meter.store.smart_state import SmartStore

        with SmartStore(self.store.state_dir) as smart_store:  # Smart state goes with the mode (L2)
            smart_store.clear()
        self.keys.load([])
        self.alarms = AlarmBoard(on_change=self._alarm_changed)
        return written

    # ---- K6: the option-key view ----------------------------------------------------------

    def view(self, now: float, peers=()) -> dict:
        """Every installed key with its validity, the features and quantities in force, and the
        current licenses of every cluster peer (``pool.peers(now)``; empty when offline)."""
        grants = self.grants(now)
        return {
            "serial": self.serial,
            "mode": self.license_mode,
            "product": self.product,
            "keys": [status._asdict() for status in self.statuses(now)],
            "quantities": {str(k): v for k, v in sorted(grants.quantities.items())},
            "features": sorted(grants.features),
            "peers": [
                {"name": p.name, "alive": p.alive, "licenses": dict(p.contributed),
                 "licenses_until": p.licenses_until}
                for p in peers
            ],
            "alarms": [a.id for a in self.alarms.active()],
        }
