"""Smart Licensing's durable state: the machine's state, the ID certificate, the manager's CA, and
the instance's private key.

The machine's state and the certificates live in the state database (``licensing.sqlite``, table
``smart``), so ``meter backup`` carries them. The instance's ECDSA P-256 private key lives beside
it in ``<state_dir>/smart-instance-key.pem`` (0600), which a backup does *not* carry: it is what
ties a registration to the machine that made it. S13: a backup restored on the machine it came
from finds its key and keeps its registration; restored on another machine (no key, another key,
or another serial) it keeps Smart mode and drops the registration: that machine needs a token.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from meter.licensing.smart import SmartMachine, SmartTimers
from meter.store.licensing import BUSY_TIMEOUT_MS, DB_NAME, StoreError

KEY_NAME = "smart-instance-key.pem"
_SCHEMA = "CREATE TABLE IF NOT EXISTS smart (key TEXT PRIMARY KEY, value TEXT NOT NULL)"


class SmartStore:
    def __init__(self, state_dir: str | Path) -> None:
        self.state_dir = Path(state_dir)
        path = self.state_dir / DB_NAME
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
            self._db.execute(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"{path}: cannot open Smart Licensing state: {exc}") from None

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> SmartStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def get(self, key: str, default: str | None = None) -> str | None:
        row = self._db.execute("SELECT value FROM smart WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def put(self, key: str, value: str) -> None:
        self._db.execute("INSERT INTO smart (key, value) VALUES (?, ?) "
                         "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))

    def clear(self) -> None:
        """Factory reset (L2): Smart state goes with the mode. The instance key file stays unused."""
        self._db.execute("DELETE FROM smart")
        (self.state_dir / KEY_NAME).unlink(missing_ok=True)

    # ---- the machine --------------------------------------------------------------------

    def load(self, timers: SmartTimers, serial: str, now: float) -> tuple[SmartMachine, str]:
        """The machine as saved, and why a registration was dropped ("" if none was: S13)."""
        raw = self.get("machine")
        machine = SmartMachine.from_dict(json.loads(raw), timers) if raw else SmartMachine(timers)
        dropped = ""
        if machine.s.instance_id:
            if self.get("serial") != serial:
                dropped = f"state restored from another system (serial {self.get('serial')}, this one {serial})"
            elif self.get("key_fingerprint") != self.key_fingerprint():
                dropped = "state restored without this registration's instance key (another system)"
            if dropped:  # S13: Smart mode stays; the registration does not
                machine.deregistered(now, manager_told=True)
                machine.s.deregistered_unreported = False
                self.save(machine)
        return machine, dropped

    def save(self, machine: SmartMachine) -> None:
        self.put("machine", json.dumps(machine.to_dict(), sort_keys=True))

    def save_registration(self, serial: str, id_cert_pem: str, ca_cert_pem: str) -> None:
        self.put("serial", serial)
        self.put("key_fingerprint", self.key_fingerprint())
        self.put("id_cert_pem", id_cert_pem)
        if ca_cert_pem:
            self.put("ca_cert_pem", ca_cert_pem)

    # ---- the instance key ---------------------------------------------------------------

    @property
    def key_path(self) -> Path:
        return self.state_dir / KEY_NAME

    def instance_key(self, *, create: bool = True) -> ec.EllipticCurvePrivateKey | None:
        try:
            data = self.key_path.read_bytes()
        except FileNotFoundError:
            if not create:
                return None
            return self.new_instance_key()
        except OSError as exc:
            raise StoreError(f"{self.key_path}: cannot read the Smart instance key: {exc.strerror}") from None
        key = serialization.load_pem_private_key(data, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise StoreError(f"{self.key_path}: not an ECDSA private key")
        return key

    def new_instance_key(self) -> ec.EllipticCurvePrivateKey:
        """A fresh ECDSA P-256 key for a (re)registration, written 0600."""
        key = ec.generate_private_key(ec.SECP256R1())
        self.write_instance_key(key)
        return key

    def write_instance_key(self, key: ec.EllipticCurvePrivateKey) -> None:
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        tmp = self.key_path.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        os.replace(tmp, self.key_path)

    def key_fingerprint(self) -> str:
        key = self.instance_key(create=False)
        if key is None:
            return ""
        der = key.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
        return hashlib.sha256(der).hexdigest()
