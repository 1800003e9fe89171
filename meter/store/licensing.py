"""Durable licensing state in SQLite under the node's state directory, and the issuer key files.

Option keys, the license mode, alarms, the node serial, the trusted issuer public key, the
last ledger snapshot (for `meter licenses`; the usage history is ``meter.store.usage_history``) and the lost cluster peers whose licenses still count (P2), all surviving a restart (docs/design.md principle 4). The licensing domain
(``meter.licensing``) never imports this module: it gets key rows, alarms and keys from here.

First use creates what is missing: the node serial (random, like a hardware serial) and, for a
lab, an issuer key pair file ``issuer-ed25519.pem`` whose public key the node then trusts. A
factory reset (L2) keeps both, as a real box keeps its serial and the vendor key in its firmware,
and returns everything else to defaults after writing a backup.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding, NoEncryption, PrivateFormat, PublicFormat, load_pem_private_key, load_pem_public_key,
)

from meter.licensing.alarms import Alarm
from meter.licensing.license_mode import DEFAULT_LICENSE_MODE
from meter.licensing.pool import PeerRecord

DB_NAME = "licensing.sqlite"
ISSUER_KEY_NAME = "issuer-ed25519.pem"
SCHEMA_VERSION = 1
# The last ledger snapshot, for `meter licenses` (a meta row; history: meter.store.usage_history).
USAGE_SNAPSHOT_META = "usage_snapshot"
# A CLI command and the running node may write at the same time; wait rather than fail.
BUSY_TIMEOUT_MS = 5000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS option_keys (
    idx INTEGER PRIMARY KEY, key TEXT NOT NULL, added_at REAL NOT NULL, pending_restart INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS alarms (
    id TEXT PRIMARY KEY, rule TEXT NOT NULL, severity TEXT NOT NULL, reason TEXT NOT NULL,
    raised_at REAL NOT NULL, cleared_at REAL, cleared_reason TEXT NOT NULL DEFAULT '');
DROP TABLE IF EXISTS usage;
CREATE TABLE IF NOT EXISTS lost_peers (
    cluster TEXT NOT NULL, peer TEXT NOT NULL, last_seen REAL NOT NULL, call_capacity INTEGER NOT NULL,
    contributed TEXT NOT NULL, PRIMARY KEY (cluster, peer));
"""


class StoreError(Exception):
    """State that cannot be read or written; the message names the file."""


class LicensingStore:
    def __init__(self, state_dir: str | Path) -> None:
        self.state_dir = Path(state_dir)
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            self.path = self.state_dir / DB_NAME
            self._db = sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"{self.state_dir / DB_NAME}: cannot open licensing state: {exc}") from None
        if self.get_meta("schema_version") is None:
            self.set_meta("schema_version", str(SCHEMA_VERSION))

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> LicensingStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- meta ---------------------------------------------------------------------------

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT INTO meta (key, value) VALUES (?, ?) "
                         "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))

    @property
    def serial(self) -> str:
        """The node serial keys are bound to; created on first use."""
        serial = self.get_meta("serial")
        if serial is None:
            serial = "MTR" + secrets.token_hex(4).upper()
            self.set_meta("serial", serial)
        return serial

    @property
    def license_mode(self) -> str:
        return self.get_meta("mode", DEFAULT_LICENSE_MODE)

    @license_mode.setter
    def license_mode(self, value: str) -> None:
        self.set_meta("mode", value)

    # ---- issuer keys --------------------------------------------------------------------

    @property
    def issuer_key_path(self) -> Path:
        return self.state_dir / ISSUER_KEY_NAME

    def issuer_public_key(self) -> Ed25519PublicKey:
        """The issuer key this node trusts. First use: trust the lab issuer file, creating it if missing."""
        stored = self.get_meta("issuer_public_key")
        if stored is None:
            path = self.issuer_key_path
            private = load_issuer(path) if path.exists() else create_issuer(path)
            self.trust(private.public_key())
            stored = self.get_meta("issuer_public_key")
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(stored))

    def trust(self, public_key: Ed25519PublicKey) -> None:
        self.set_meta("issuer_public_key", public_key.public_bytes(Encoding.Raw, PublicFormat.Raw).hex())

    # ---- option keys --------------------------------------------------------------------

    def key_rows(self) -> list[tuple[int, str, float, bool]]:
        rows = self._db.execute("SELECT idx, key, added_at, pending_restart FROM option_keys ORDER BY idx")
        return [(i, k, a, bool(p)) for i, k, a, p in rows]

    def put_key(self, index: int, key: str, added_at: float, pending_restart: bool) -> None:
        self._db.execute(
            "INSERT INTO option_keys (idx, key, added_at, pending_restart) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(idx) DO UPDATE SET key = excluded.key, added_at = excluded.added_at, "
            "pending_restart = excluded.pending_restart", (index, key, added_at, int(pending_restart)))

    def delete_key(self, index: int) -> None:
        self._db.execute("DELETE FROM option_keys WHERE idx = ?", (index,))

    def clear_restart_flags(self) -> None:
        self._db.execute("UPDATE option_keys SET pending_restart = 0")

    # ---- alarms -------------------------------------------------------------------------

    def save_alarm(self, alarm: Alarm) -> None:
        self._db.execute(
            "INSERT INTO alarms (id, rule, severity, reason, raised_at, cleared_at, cleared_reason) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET rule = excluded.rule, "
            "severity = excluded.severity, reason = excluded.reason, raised_at = excluded.raised_at, "
            "cleared_at = excluded.cleared_at, cleared_reason = excluded.cleared_reason",
            (alarm.id, alarm.rule, alarm.severity, alarm.reason, alarm.raised_at, alarm.cleared_at,
             alarm.cleared_reason))

    def alarms(self, *, active_only: bool = True) -> list[Alarm]:
        sql = "SELECT id, rule, severity, reason, raised_at, cleared_at, cleared_reason FROM alarms"
        if active_only:
            sql += " WHERE cleared_at IS NULL"
        return [Alarm(*row) for row in self._db.execute(sql + " ORDER BY raised_at, id")]

    # ---- the last usage snapshot -----------------------------------------------------------

    def record_usage(self, snapshot: dict, now: float) -> None:
        """Keep the last ledger snapshot (``Snapshot.to_dict()``) for `meter licenses`; the history
        of usage is the per-minute buckets of ``meter.store.usage_history``."""
        self.set_meta(USAGE_SNAPSHOT_META, json.dumps({"at": now, "snapshot": snapshot}))

    def latest_usage(self) -> tuple[float, dict] | None:
        stored = self.get_meta(USAGE_SNAPSHOT_META)
        if stored is None:
            return None
        value = json.loads(stored)
        return value["at"], value["snapshot"]

    # ---- lost cluster peers (P2) ---------------------------------------------------------

    def lost_peers(self, cluster: str) -> list[PeerRecord]:
        """The lost peers of ``cluster`` whose licenses this node keeps in the pool (P2), as
        ``meter.cluster.sync.PoolSync`` last wrote them: when contact was lost and what they held."""
        rows = self._db.execute("SELECT peer, last_seen, call_capacity, contributed FROM lost_peers "
                                "WHERE cluster = ? ORDER BY peer", (cluster,))
        return [PeerRecord(name=peer, last_seen=last_seen, call_capacity=capacity,
                           contributed={str(k): int(v) for k, v in json.loads(contributed).items()})
                for peer, last_seen, capacity, contributed in rows]

    def save_lost_peer(self, cluster: str, record: PeerRecord) -> None:
        self._db.execute(
            "INSERT INTO lost_peers (cluster, peer, last_seen, call_capacity, contributed) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT(cluster, peer) DO UPDATE SET last_seen = excluded.last_seen, "
            "call_capacity = excluded.call_capacity, contributed = excluded.contributed",
            (cluster, record.name, record.last_seen, record.call_capacity, json.dumps(record.contributed)))

    def forget_lost_peer(self, cluster: str, peer: str) -> None:
        self._db.execute("DELETE FROM lost_peers WHERE cluster = ? AND peer = ?", (cluster, peer))

    # ---- backup and factory reset (L2) --------------------------------------------------

    def backup(self, path: str | Path) -> Path:
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with sqlite3.connect(path) as target:
                self._db.backup(target)
            target.close()
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"{path}: cannot write backup: {exc}") from None
        return path

    def default_backup_path(self, now: float | None = None) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
        return self.state_dir / f"backup-{stamp}.sqlite"

    def factory_reset(self, *, confirmed: bool, backup_path: str | Path) -> Path:
        """L2: write a backup, then return keys, mode, alarms and usage to defaults. Keeps the serial
        and the trusted issuer key. Refuses without ``confirmed``."""
        if not confirmed:
            raise StoreError("factory reset needs an explicit confirmation")
        written = self.backup(backup_path)
        keep = {k: self.get_meta(k) for k in ("serial", "issuer_public_key", "schema_version")}
        self._db.execute("BEGIN")
        try:
            # the usage history's tables (meter.store.usage_history), when the node has run
            history = [row[0] for row in self._db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'usage!_%' ESCAPE '!'")]
            for table in ("option_keys", "alarms", "meta", *history):
                self._db.execute(f"DELETE FROM {table}")
            for key, value in keep.items():
                if value is not None:
                    self.set_meta(key, value)
            self._db.execute("COMMIT")
        except sqlite3.Error:
            self._db.execute("ROLLBACK")
            raise
        return written


def create_issuer(path: str | Path) -> Ed25519PrivateKey:
    """A new lab issuer key pair: PKCS#8 PEM private key (mode 0600) and ``<path>.pub``."""
    path = Path(path)
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        path.with_name(path.name + ".pub").write_bytes(
            private.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    except OSError as exc:
        raise StoreError(f"{path}: cannot create issuer key: {exc.strerror}") from None
    return private


def load_issuer(path: str | Path) -> Ed25519PrivateKey:
    return _load_pem(path, lambda data: load_pem_private_key(data, password=None), Ed25519PrivateKey, "private")


def load_public(path: str | Path) -> Ed25519PublicKey:
    return _load_pem(path, load_pem_public_key, Ed25519PublicKey, "public")


def _load_pem(path: str | Path, load, expected: type, kind: str):
    """An Ed25519 key from a PEM file; a StoreError naming the file and what is wrong with it."""
    try:
        key = load(Path(path).read_bytes())
    except OSError as exc:
        raise StoreError(f"{path}: cannot read {'issuer' if kind == 'private' else kind} key: {exc.strerror}") from None
    except ValueError as exc:
        raise StoreError(f"{path}: not a PEM {kind} key: {exc}") from None
    if not isinstance(key, expected):
        raise StoreError(f"{path}: expected an Ed25519 {kind} key")
    return key


# ---- the node's identity: created once, never regenerated silently ----------------------------

INIT_HINT = "run `meter init` for a new node, or `meter restore <backup>`"
BACKUP_FILES_TABLE = "backup_files"
_KEY_FILES = (ISSUER_KEY_NAME, ISSUER_KEY_NAME + ".pub")


def check_initialised(state_dir: str | Path) -> str:
    """The serial of an initialised state directory; a StoreError of one line naming the file and
    what to do when it is missing, empty (0 bytes), unreadable, or holds no serial. A new serial
    would orphan every option key bound to the old one (K2), so the node never makes one up."""
    path = Path(state_dir) / DB_NAME
    if not path.exists():
        raise StoreError(f"{path}: no node state (missing): {INIT_HINT}")
    if path.stat().st_size == 0:
        raise StoreError(f"{path}: no node state (empty file, 0 bytes): {INIT_HINT}")
    try:
        db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000)
        try:
            row = db.execute("SELECT value FROM meta WHERE key = 'serial'").fetchone()
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise StoreError(f"{path}: not a readable node state ({exc}): {INIT_HINT}") from None
    if row is None:
        raise StoreError(f"{path}: holds no node serial: {INIT_HINT}")
    return row[0]


def init_state(state_dir: str | Path) -> str:
    """`meter init`: a new node's serial and trusted issuer key, once. Refuses any existing state
    file, even an empty one: replacing it is the operator's explicit act (remove it, or restore)."""
    path = Path(state_dir) / DB_NAME
    if path.exists():
        raise StoreError(f"{path}: a node state file exists already; `meter init` never replaces one "
                         f"(`meter restore <backup>` brings back a saved one)")
    with LicensingStore(state_dir) as store:
        serial = store.serial
        store.issuer_public_key()  # trusts the lab issuer file, creating it when missing
        store.set_meta("initialised_at", str(time.time()))
    return serial


def backup_state(state_dir: str | Path, target: str | Path) -> tuple[Path, str]:
    """`meter backup`: one SQLite file, a consistent copy (sqlite3 backup API, safe while the node
    writes) of the whole state database, with the issuer key files inside it."""
    serial = check_initialised(state_dir)
    target = Path(target)
    if target.exists():
        raise StoreError(f"{target}: exists already; a backup never overwrites a file")
    with LicensingStore(state_dir) as store:
        store.backup(target)
    try:
        with sqlite3.connect(target) as db:
            db.execute(f"CREATE TABLE {BACKUP_FILES_TABLE} (name TEXT PRIMARY KEY, data BLOB NOT NULL)")
            for name in _KEY_FILES:
                source = Path(state_dir) / name
                if source.exists():
                    db.execute(f"INSERT INTO {BACKUP_FILES_TABLE} VALUES (?, ?)", (name, source.read_bytes()))
        db.close()
    except (OSError, sqlite3.Error) as exc:
        raise StoreError(f"{target}: cannot write backup: {exc}") from None
    return target, serial


def restore_state(source: str | Path, state_dir: str | Path, *, force: bool = False) -> str:
    """`meter restore`: the state database and issuer key files back from a backup; the node keeps
    its serial and keys. Calls in progress are not brought back (their endpoints' dialogs are long
    gone or unknown); bindings come back with their own expiry and lapse at start when it passed.
    Refuses to replace an existing state without ``force``; the node must be stopped."""
    source = Path(source)
    try:
        with sqlite3.connect(f"file:{source}?mode=ro", uri=True) as db:
            serial_row = db.execute("SELECT value FROM meta WHERE key = 'serial'").fetchone()
        db.close()
    except sqlite3.Error as exc:
        raise StoreError(f"{source}: not a meter backup ({exc})") from None
    if serial_row is None:
        raise StoreError(f"{source}: not a meter backup (no node serial)")
    state_dir = Path(state_dir)
    path = state_dir / DB_NAME
    if path.exists() and not force:
        raise StoreError(f"{path}: a node state exists already; stop the node and add --force to replace it")
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        for stale in (path, path.with_name(DB_NAME + "-wal"), path.with_name(DB_NAME + "-shm")):
            stale.unlink(missing_ok=True)
        with sqlite3.connect(f"file:{source}?mode=ro", uri=True) as src:
            target = sqlite3.connect(path)
            src.backup(target)
        src.close()
        files = target.execute(f"SELECT name, data FROM {BACKUP_FILES_TABLE}").fetchall()
        for name, data in files:
            if name not in _KEY_FILES:
                continue  # only the files a backup writes, never a path from the file
            out = state_dir / name
            out.unlink(missing_ok=True)
            fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        target.execute(f"DROP TABLE {BACKUP_FILES_TABLE}")
        if target.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'calls'").fetchone():
            target.execute("DELETE FROM calls")  # meter.store.state's table
        target.commit()
        target.close()
    except (OSError, sqlite3.Error) as exc:
        raise StoreError(f"{path}: cannot restore from {source}: {exc}") from None
    return serial_row[0]
