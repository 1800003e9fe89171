"""The manager's state in SQLite (``ssm.sqlite`` in its state directory): smart and virtual
accounts, license pools per tag, registration tokens, product instances and the usage each
reports. The server and the offline CLI both work on this file (WAL, busy timeout), so nothing
is cached in memory: every request reads what the lab admin last wrote.

Time is passed in (the manager's ``Clock``): ``now`` for timestamps, ``span`` for durations,
so a test compresses a year into seconds with ``time_factor``.
"""

from __future__ import annotations

import math
import secrets
import sqlite3
import uuid
from dataclasses import dataclass
from pathlib import Path

from meter.ssm.clock import Clock
from meter.ssm.errors import AdminError, SmartError

DB_NAME = "ssm.sqlite"
BUSY_TIMEOUT_MS = 5000
# One tag per pooled Expressway license (contract C; docs/licensing-rules.md).
TAGS = ("EXPWY_RMS", "EXPWY_ROOM", "EXPWY_DESKTOP", "EXPWY_CMR")
DEFAULT_TOKEN_DAYS = 30  # Cisco's default token lifetime
MAX_TOKEN_DAYS = 365
# Bounds that keep a typo out of SQLite's 64-bit integers (and out of the page).
MAX_QUANTITY = 1_000_000_000
MAX_TOKEN_USES = 1_000_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    virtual_account TEXT PRIMARY KEY, smart_account TEXT NOT NULL, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS pools (
    virtual_account TEXT NOT NULL REFERENCES accounts(virtual_account), tag TEXT NOT NULL,
    quantity INTEGER NOT NULL, end_at REAL, PRIMARY KEY (virtual_account, tag));
CREATE TABLE IF NOT EXISTS tokens (
    token TEXT PRIMARY KEY, virtual_account TEXT NOT NULL REFERENCES accounts(virtual_account),
    created_at REAL NOT NULL, expires_days REAL NOT NULL, max_uses INTEGER, uses INTEGER NOT NULL DEFAULT 0,
    export_controlled INTEGER NOT NULL, revoked_at REAL, description TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS instances (
    instance_id TEXT PRIMARY KEY, virtual_account TEXT NOT NULL, hostname TEXT NOT NULL,
    serial TEXT NOT NULL, product TEXT NOT NULL, registered_at REAL NOT NULL, last_contact REAL NOT NULL,
    id_cert_pem TEXT NOT NULL, id_cert_expires_at REAL NOT NULL, export_controlled INTEGER NOT NULL,
    authorized_at REAL, authorization_expires_at REAL, usage_reported_at REAL, deregistered_at REAL);
CREATE TABLE IF NOT EXISTS usage (
    instance_id TEXT NOT NULL REFERENCES instances(instance_id), tag TEXT NOT NULL, count REAL NOT NULL,
    PRIMARY KEY (instance_id, tag));
"""


@dataclass(frozen=True)
class Instance:
    instance_id: str
    virtual_account: str
    hostname: str
    serial: str
    product: str
    registered_at: float
    last_contact: float
    id_cert_pem: str
    id_cert_expires_at: float
    export_controlled: bool
    authorized_at: float | None
    authorization_expires_at: float | None
    usage_reported_at: float | None
    deregistered_at: float | None


def _number(value: float) -> float | int:
    """Whole counts as JSON integers."""
    return int(value) if float(value).is_integer() else value


def check_tag(tag: str) -> str:
    if tag not in TAGS:
        raise AdminError(f"unknown tag {tag!r}: expected one of {', '.join(TAGS)}")
    return tag


def check_usage(usage: object) -> dict[str, float]:
    """The ``usage`` object of a request: known tags, finite non-negative counts."""
    if not isinstance(usage, dict):
        raise SmartError("bad_request", "usage must be an object {tag: count}")
    checked = {}
    for tag, count in usage.items():
        if tag not in TAGS:
            raise SmartError("bad_request", f"usage: unknown tag {tag!r} (expected one of {', '.join(TAGS)})")
        if isinstance(count, bool) or not isinstance(count, (int, float)) or not math.isfinite(count) or count < 0:
            raise SmartError("bad_request", f"usage: {tag}: expected a non-negative number, got {count!r}")
        checked[tag] = float(count)
    return checked


class State:
    def __init__(self, state_dir: str | Path) -> None:
        self.path = Path(state_dir) / DB_NAME
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        self.db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        self.db.execute("PRAGMA journal_mode = WAL")
        self.db.execute("PRAGMA foreign_keys = ON")
        self.db.executescript(_SCHEMA)

    def close(self) -> None:
        self.db.close()

    def _transaction(self):
        return _Transaction(self.db)

    # --- accounts and pools (the lab admin) -------------------------------------------------------

    def add_account(self, smart_account: str, virtual_account: str, now: float) -> None:
        if not smart_account or not virtual_account:
            raise AdminError("smart account and virtual account names must not be empty")
        row = self.db.execute("SELECT smart_account FROM accounts WHERE virtual_account = ?", (virtual_account,)).fetchone()
        if row:
            raise AdminError(f"virtual account {virtual_account!r} exists already (in smart account {row[0]!r})")
        self.db.execute("INSERT INTO accounts VALUES (?, ?, ?)", (virtual_account, smart_account, now))

    def _account(self, virtual_account: str) -> sqlite3.Row:
        row = self.db.execute("SELECT * FROM accounts WHERE virtual_account = ?", (virtual_account,)).fetchone()
        if row is None:
            raise AdminError(f"no virtual account {virtual_account!r}")
        return row

    def accounts(self) -> list[dict]:
        return [dict(row) for row in self.db.execute("SELECT * FROM accounts ORDER BY smart_account, virtual_account")]

    def set_pool(self, virtual_account: str, tag: str, quantity: int, end_at: float | None = None) -> None:
        self._account(virtual_account)
        check_tag(tag)
        if isinstance(quantity, bool) or not isinstance(quantity, int) or not 0 <= quantity <= MAX_QUANTITY:
            raise AdminError(f"quantity must be a non-negative integer up to {MAX_QUANTITY}, got {quantity!r}")
        self.db.execute("INSERT OR REPLACE INTO pools VALUES (?, ?, ?, ?)", (virtual_account, tag, quantity, end_at))

    # --- tokens -----------------------------------------------------------------------------------

    def create_token(self, virtual_account: str, clock: Clock, *, expires_days: float = DEFAULT_TOKEN_DAYS,
                     max_uses: int | None = None, export_controlled: bool = False, description: str = "") -> str:
        self._account(virtual_account)
        if not 0 < expires_days <= MAX_TOKEN_DAYS:
            raise AdminError(f"expires-days must be in (0, {MAX_TOKEN_DAYS}], got {expires_days}")
        if max_uses is not None and not 1 <= max_uses <= MAX_TOKEN_USES:
            raise AdminError(f"max-uses must be from 1 to {MAX_TOKEN_USES}, got {max_uses}")
        token = secrets.token_urlsafe(48)
        self.db.execute(
            "INSERT INTO tokens (token, virtual_account, created_at, expires_days, max_uses, export_controlled, description)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (token, virtual_account, clock.now(), expires_days, max_uses, int(export_controlled), description))
        return token

    def revoke_token(self, token: str, now: float) -> None:
        if self.db.execute("UPDATE tokens SET revoked_at = ? WHERE token = ? AND revoked_at IS NULL",
                           (now, token)).rowcount == 0:
            if self.db.execute("SELECT 1 FROM tokens WHERE token = ?", (token,)).fetchone() is None:
                raise AdminError("no such token")

    @staticmethod
    def _token_expires_at(row: sqlite3.Row, clock: Clock) -> float:
        return row["created_at"] + clock.span(row["expires_days"])

    def tokens(self, clock: Clock) -> list[dict]:
        now = clock.now()
        out = []
        for row in self.db.execute("SELECT * FROM tokens ORDER BY created_at"):
            expires_at = self._token_expires_at(row, clock)
            if row["revoked_at"] is not None:
                status = "revoked"
            elif now >= expires_at:
                status = "expired"
            elif row["max_uses"] is not None and row["uses"] >= row["max_uses"]:
                status = "used_up"
            else:
                status = "active"
            out.append({"token": row["token"], "virtual_account": row["virtual_account"],
                        "created_at": row["created_at"], "expires_at": expires_at, "max_uses": row["max_uses"],
                        "uses": row["uses"], "export_controlled": bool(row["export_controlled"]),
                        "revoked_at": row["revoked_at"], "description": row["description"], "status": status})
        return out

    def _take_token(self, token: object, clock: Clock) -> sqlite3.Row:
        """The token a registration spends (S3, S12): refused with the contract's code if it is
        unknown, revoked, expired or used up; otherwise its use is counted."""
        if not isinstance(token, str) or not token:
            raise SmartError("token_invalid", "no registration token given")
        row = self.db.execute("SELECT * FROM tokens WHERE token = ?", (token,)).fetchone()
        if row is None:
            raise SmartError("token_invalid", "this registration token does not exist")
        if row["revoked_at"] is not None:
            raise SmartError("token_revoked", "this registration token was revoked")
        if clock.now() >= self._token_expires_at(row, clock):
            raise SmartError("token_expired", "this registration token has expired")
        if row["max_uses"] is not None and row["uses"] >= row["max_uses"]:
            raise SmartError("token_used_up", f"this registration token was already used {row['uses']} times (its maximum)")
        self.db.execute("UPDATE tokens SET uses = uses + 1 WHERE token = ?", (token,))
        return row

    # --- product instances ------------------------------------------------------------------------

    def register(self, token: object, hostname: str, serial: str, product: str, clock: Clock,
                 issue_cert) -> tuple[Instance, sqlite3.Row]:
        """Register (S3): spends the token and returns the instance with its new ID certificate.
        ``issue_cert(instance_id, expires_at) -> pem`` makes the certificate (the CA's job).
        The same product serial registering again keeps its instance id and moves to the token's
        virtual account (S3's "register again"), keeping its reported usage."""
        with self._transaction():
            row = self._take_token(token, clock)
            now = clock.now()
            expires_at = now + clock.span(365)
            existing = self.db.execute(
                "SELECT instance_id FROM instances WHERE serial = ? AND product = ? AND deregistered_at IS NULL",
                (serial, product)).fetchone()
            instance_id = existing[0] if existing else uuid.uuid4().hex
            cert_pem = issue_cert(instance_id, expires_at)
            if existing:
                self.db.execute(
                    "UPDATE instances SET virtual_account = ?, hostname = ?, registered_at = ?, last_contact = ?,"
                    " id_cert_pem = ?, id_cert_expires_at = ?, export_controlled = ? WHERE instance_id = ?",
                    (row["virtual_account"], hostname, now, now, cert_pem, expires_at, row["export_controlled"], instance_id))
            else:
                self.db.execute(
                    "INSERT INTO instances (instance_id, virtual_account, hostname, serial, product, registered_at,"
                    " last_contact, id_cert_pem, id_cert_expires_at, export_controlled) VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (instance_id, row["virtual_account"], hostname, serial, product, now, now, cert_pem, expires_at,
                     row["export_controlled"]))
        return self.instance(instance_id), self._account(row["virtual_account"])

    def renew_id(self, instance_id: str, hostname: str, clock: Clock, issue_cert) -> Instance:
        """A new ID certificate for another year, and the hostname the node has now (S7, S14)."""
        now = clock.now()
        expires_at = now + clock.span(365)
        cert_pem = issue_cert(instance_id, expires_at)
        self.db.execute(
            "UPDATE instances SET hostname = ?, last_contact = ?, id_cert_pem = ?, id_cert_expires_at = ?"
            " WHERE instance_id = ?", (hostname, now, cert_pem, expires_at, instance_id))
        return self.instance(instance_id)

    def instance(self, instance_id: str) -> Instance:
        row = self.db.execute("SELECT * FROM instances WHERE instance_id = ? AND deregistered_at IS NULL",
                              (instance_id,)).fetchone()
        if row is None:
            raise SmartError("unknown_instance", f"no registered product instance {instance_id!r}")
        return Instance(**{**dict(row), "export_controlled": bool(row["export_controlled"])})

    def instances(self, now: float | None = None) -> list[dict]:
        out = []
        for row in self.db.execute("SELECT * FROM instances WHERE deregistered_at IS NULL ORDER BY registered_at"):
            item = {key: row[key] for key in row.keys() if key not in ("id_cert_pem", "deregistered_at")}
            item["export_controlled"] = bool(row["export_controlled"])
            if now is not None:  # S6, S7: as the manager sees it (90 days without contact lapse it)
                expires = row["authorization_expires_at"]
                item["authorization"] = ("not_authorized" if expires is None
                                         else "authorized" if now < expires else "authorization_expired")
                item["registration"] = "registered" if now < row["id_cert_expires_at"] else "registration_expired"
            item["usage"] = self.usage_of(row["instance_id"])
            out.append(item)
        return out

    def usage_of(self, instance_id: str) -> dict[str, float | int]:
        return {row["tag"]: _number(row["count"]) for row in
                self.db.execute("SELECT tag, count FROM usage WHERE instance_id = ? ORDER BY tag", (instance_id,))}

    def report_usage(self, instance_id: str, usage: dict[str, float], now: float) -> None:
        """The instance's whole usage now: tags it no longer names count zero."""
        with self._transaction():
            self.db.execute("DELETE FROM usage WHERE instance_id = ?", (instance_id,))
            self.db.executemany("INSERT INTO usage VALUES (?, ?, ?)",
                                [(instance_id, tag, count) for tag, count in usage.items() if count > 0])
            self.db.execute("UPDATE instances SET last_contact = ?, usage_reported_at = ? WHERE instance_id = ?",
                            (now, now, instance_id))

    def authorize(self, instance_id: str, usage: dict[str, float], clock: Clock, hostname: str | None = None) -> dict:
        """Record the usage and answer with the compliance of each requested tag (contract C
        authorize; S6, S10): a tag is out of compliance when every instance of the virtual account
        together uses more than its pool holds. Authorization lasts 90 days, renewed after 30 (S7)."""
        now = clock.now()
        self.report_usage(instance_id, usage, now)
        if hostname:
            self.db.execute("UPDATE instances SET hostname = ? WHERE instance_id = ?", (hostname, instance_id))
        instance = self.instance(instance_id)
        compliance = self.compliance(instance.virtual_account, now)
        tags = {}
        for tag, requested in usage.items():
            pool = compliance[tag]
            others = pool["in_use"] - requested
            authorized = min(requested, max(0, pool["quantity"] - others))
            status = "out_of_compliance" if requested > 0 and pool["status"] == "out_of_compliance" else "authorized"
            # Beyond contract C's three fields, what P6 needs: the virtual account's valid pool
            # (the node's capacity in Smart mode), its total use, and what is left for this instance.
            tags[tag] = {"requested": _number(requested), "authorized": _number(authorized), "status": status,
                         "pool": pool["quantity"], "in_use": pool["in_use"],
                         "capacity": _number(max(0, pool["quantity"] - others))}
        overall = "out_of_compliance" if any(t["status"] == "out_of_compliance" for t in tags.values()) else "authorized"
        expires_at, renew_after = now + clock.span(90), now + clock.span(30)
        self.db.execute("UPDATE instances SET authorized_at = ?, authorization_expires_at = ? WHERE instance_id = ?",
                        (now, expires_at, instance_id))
        return {"status": overall, "tags": tags, "authorized_at": now, "expires_at": expires_at,
                "renew_after": renew_after}

    def deregister(self, instance_id: str, now: float) -> dict[str, float | int]:
        """Deregister (S8): the instance's entitlements go back to its virtual account at once
        (its usage no longer counts); the answer says what was returned."""
        self.instance(instance_id)
        with self._transaction():
            returned = self.usage_of(instance_id)
            self.db.execute("DELETE FROM usage WHERE instance_id = ?", (instance_id,))
            self.db.execute("UPDATE instances SET deregistered_at = ?, last_contact = ? WHERE instance_id = ?",
                            (now, now, instance_id))
        return returned

    def transfer(self, instance_id: str, virtual_account: str) -> None:
        """Move an instance to another virtual account (S3): its usage counts there from now on."""
        self._account(virtual_account)
        try:
            self.instance(instance_id)
        except SmartError:
            raise AdminError(f"no registered product instance {instance_id!r}") from None
        self.db.execute("UPDATE instances SET virtual_account = ? WHERE instance_id = ?", (virtual_account, instance_id))

    def touch(self, instance_id: str, now: float) -> None:
        self.db.execute("UPDATE instances SET last_contact = ? WHERE instance_id = ?", (now, instance_id))

    # --- compliance -------------------------------------------------------------------------------

    def compliance(self, virtual_account: str, now: float) -> dict[str, dict]:
        """Per tag: the pool's quantity (zero once its end date has passed), the sum of what every
        instance of the virtual account reports, and whether that sum fits."""
        pools = {row["tag"]: row for row in
                 self.db.execute("SELECT * FROM pools WHERE virtual_account = ?", (virtual_account,))}
        in_use = {row[0]: row[1] for row in self.db.execute(
            "SELECT u.tag, SUM(u.count) FROM usage u JOIN instances i USING (instance_id)"
            " WHERE i.virtual_account = ? AND i.deregistered_at IS NULL GROUP BY u.tag", (virtual_account,))}
        out = {}
        for tag in TAGS:
            pool = pools.get(tag)
            end_at = pool["end_at"] if pool else None
            ended = end_at is not None and now >= end_at
            quantity = 0 if pool is None or ended else pool["quantity"]
            used = in_use.get(tag, 0.0)
            out[tag] = {"quantity": quantity, "purchased": pool["quantity"] if pool else 0, "end_at": end_at,
                        "ended": ended, "in_use": _number(used), "available": _number(max(0, quantity - used)),
                        "status": "in_compliance" if used <= quantity else "out_of_compliance"}
        return out

    def overview(self, clock: Clock) -> dict:
        """Everything the admin API and the page show."""
        now = clock.now()
        accounts = []
        for account in self.accounts():
            accounts.append({**account, "pools": self.compliance(account["virtual_account"], now)})
        return {"at": now, "time_factor": clock.time_factor, "clock_offset": clock.clock_offset,
                "accounts": accounts, "instances": self.instances(now), "tokens": self.tokens(clock)}


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error); nested uses join the outer one."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.outer = False

    def __enter__(self):
        if not self.db.in_transaction:
            self.db.execute("BEGIN IMMEDIATE")
            self.outer = True
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if self.outer:
            self.db.execute("ROLLBACK" if kind else "COMMIT")
