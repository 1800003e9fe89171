"""Durable usage history: per-minute buckets per license, hourly for old data, and the peaks.

The node's tick (``meter.metering.join.Metering.tick``) takes the usage meter's window once a
minute (``meter.licensing.usage.UsageMeter.take_window``: max and min of what the ledger held at
every charge of that minute, the cluster max, the pool's capacity, refusals and would-be
refusals) and writes it here in one small transaction, off the hot path. The peaks (all-time,
since reset, cluster, with their instants) are written at the first tick after one moves, and
restored at start.

What a stop loses: nothing (``Node.close`` writes the current minute and the peaks before the
shutdown's releases). What a ``kill -9`` loses: the current minute's bucket (at most 60 s of
max/min/refusals) and at most the last second of peaks; every committed row survives (WAL,
``synchronous=NORMAL``, as ``meter.store.state``).

Retention (``[usage]``): minute buckets older than ``fine_days`` are rolled up into hourly
buckets (max of max, min of min, sums of refusals), and buckets older than ``retention_days`` are
deleted, once an hour and at start. The rows live in ``<state_dir>/licensing.sqlite`` beside the
licensing tables, so one ``meter backup`` holds them; they replace the old table of ledger
snapshots (``usage``), which is dropped.
"""

from __future__ import annotations

import json
import math
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from meter.store.licensing import BUSY_TIMEOUT_MS, DB_NAME, StoreError

MINUTE, HOUR, DAY = 60, 3600, 86400
STEPS = (MINUTE, HOUR, DAY)
DAY_SECONDS = 86400.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS usage_buckets (
    license TEXT NOT NULL, step INTEGER NOT NULL, at REAL NOT NULL,
    max REAL NOT NULL, min REAL NOT NULL, cluster_max REAL NOT NULL, capacity INTEGER NOT NULL,
    refusals INTEGER NOT NULL, would_refuse INTEGER NOT NULL,
    PRIMARY KEY (license, step, at));
CREATE TABLE IF NOT EXISTS usage_peaks (id INTEGER PRIMARY KEY CHECK (id = 1), saved_at REAL NOT NULL,
    state TEXT NOT NULL);
"""
TABLES = ("usage_buckets", "usage_peaks")

# Writing a bucket again (a restart within the same minute, a roll-up into an existing hour)
# merges: max of max, min of min, sums of counts; the capacity is the latest.
_UPSERT = (
    "INSERT INTO usage_buckets (license, step, at, max, min, cluster_max, capacity, refusals, would_refuse) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(license, step, at) DO UPDATE SET "
    "max = MAX(max, excluded.max), min = MIN(min, excluded.min), "
    "cluster_max = MAX(cluster_max, excluded.cluster_max), capacity = excluded.capacity, "
    "refusals = refusals + excluded.refusals, would_refuse = would_refuse + excluded.would_refuse")


@dataclass(frozen=True)
class UsageSettings:
    """`[usage]`: how long the usage history is kept (meter.store.usage_history)."""

    retention_days: int = 400
    """Days of usage history kept in the state directory: a year and a month, so a yearly true-up
    or renewal sees the same month of last year. Older buckets are deleted."""
    fine_days: int = 30
    """Days kept at one bucket per minute; older minutes are rolled up into hourly buckets (max of
    the maxima, min of the minima, sum of refusals). About 4 x 1,440 rows a day at minute grain."""

    def __post_init__(self) -> None:
        if self.fine_days < 1:
            raise ValueError(f"fine_days: expected a positive number of days, got {self.fine_days}")
        if self.retention_days < self.fine_days:
            raise ValueError(f"retention_days: expected at least fine_days ({self.fine_days}), "
                             f"got {self.retention_days}")


class UsageHistory:
    """The usage tables of one state directory. One connection of its own (WAL), like StateStore.

    ``readonly``: for `meter report`, which never creates or changes a state directory."""

    def __init__(self, state_dir: str | Path, settings: UsageSettings | None = None, *,
                 readonly: bool = False) -> None:
        self.path = Path(state_dir) / DB_NAME
        self.settings = settings or UsageSettings()
        self.readonly = readonly
        try:
            if readonly:
                if not self.path.is_file():
                    raise StoreError(f"{self.path}: no node state (missing): nothing to report")
                self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None,
                                           timeout=BUSY_TIMEOUT_MS / 1000)
                self._has_tables = self._db.execute(
                    "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'usage_buckets'"
                ).fetchone()[0] == 1
            else:
                self._db = sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")  # commits survive a killed process
                self._db.executescript(SCHEMA)
                self._has_tables = True
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot open usage history: {exc}") from None

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> UsageHistory:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- writing (the node's tick) -----------------------------------------------------------

    def record(self, windows: dict[str, dict]) -> None:
        """One minute's window per license (``UsageMeter.take_window``), into the bucket of the
        minute it started in; a bucket written before (a restart within the minute) is merged."""
        rows = [(lic, MINUTE, math.floor(w["start"] / MINUTE) * MINUTE, w["max"], w["min"], w["cluster_max"],
                 w["capacity"], w["refusals"], w["would_refuse"]) for lic, w in windows.items()]
        self._transaction(lambda db: db.executemany(_UPSERT, rows))

    def save_peaks(self, state: dict, now: float) -> None:
        """The usage meter's ``state()`` (peaks with instants, reset, refusal counts)."""
        self._db.execute("INSERT INTO usage_peaks (id, saved_at, state) VALUES (1, ?, ?) ON CONFLICT(id) "
                         "DO UPDATE SET saved_at = excluded.saved_at, state = excluded.state",
                         (now, json.dumps(state)))

    def load_peaks(self) -> dict | None:
        if not self._has_tables:
            return None
        row = self._db.execute("SELECT state FROM usage_peaks WHERE id = 1").fetchone()
        return json.loads(row[0]) if row else None

    def maintain(self, now: float) -> tuple[int, int]:
        """Roll minute buckets older than ``fine_days`` into hourly ones (whole hours only) and
        delete buckets older than ``retention_days``. Returns (minute rows rolled up, rows deleted)."""
        fine_cut = math.floor((now - self.settings.fine_days * DAY_SECONDS) / HOUR) * HOUR
        keep_cut = now - self.settings.retention_days * DAY_SECONDS
        result = [0, 0]

        def work(db: sqlite3.Connection) -> None:
            hours = db.execute(
                "SELECT license, CAST(at / 3600 AS INTEGER) * 3600 AS hour, MAX(max), MIN(min), MAX(cluster_max), "
                "(SELECT capacity FROM usage_buckets AS last WHERE last.license = b.license AND last.step = 60 "
                " AND CAST(last.at / 3600 AS INTEGER) * 3600 = CAST(b.at / 3600 AS INTEGER) * 3600 "
                " ORDER BY last.at DESC LIMIT 1), SUM(refusals), SUM(would_refuse), COUNT(*) "
                "FROM usage_buckets AS b WHERE step = 60 AND at < ? GROUP BY license, hour", (fine_cut,)).fetchall()
            db.executemany(_UPSERT, [(lic, HOUR, float(hour), mx, mn, cmx, cap, ref, would)
                                     for lic, hour, mx, mn, cmx, cap, ref, would, _ in hours])
            db.execute("DELETE FROM usage_buckets WHERE step = 60 AND at < ?", (fine_cut,))
            result[0] = sum(row[-1] for row in hours)
            result[1] = db.execute("DELETE FROM usage_buckets WHERE at < ?", (keep_cut,)).rowcount

        self._transaction(work)
        return result[0], result[1]

    def clear(self) -> None:
        """Factory reset (L2): no history, no peaks."""
        self._transaction(lambda db: [db.execute(f"DELETE FROM {table}") for table in TABLES])

    def _transaction(self, work) -> None:
        if self.readonly:
            raise StoreError(f"{self.path}: opened read-only")
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            work(db)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    # ---- reading (API, report) -----------------------------------------------------------------

    def buckets(self, license: str, start: float, end: float, step: int = MINUTE) -> list[dict]:
        """Buckets of ``license`` starting in [start, end), grouped by ``step`` seconds (60, 3600,
        86400): {"at", "max", "min", "refusals"} plus "would_refuse", "cluster_max", "capacity" (the
        last in the group) and "seconds" (time the group's stored buckets cover: an hourly bucket of
        old data covers 3600 s even at step 60)."""
        if step not in STEPS:
            raise ValueError(f"step: expected one of {STEPS}, got {step!r}")
        if not self._has_tables:
            return []
        rows = self._db.execute(
            "SELECT CAST(at / ? AS INTEGER) * ? AS grp, MAX(max), MIN(min), SUM(refusals), SUM(would_refuse), "
            "MAX(cluster_max), SUM(step), MAX(at) FROM usage_buckets "
            "WHERE license = ? AND at >= ? AND at < ? GROUP BY grp ORDER BY grp",
            (step, step, license, start, end)).fetchall()
        capacities = self._capacities(license, start, end)
        return [{"at": float(grp), "max": mx, "min": mn, "refusals": ref, "would_refuse": would,
                 "cluster_max": cmx, "seconds": seconds, "capacity": capacities.get(last, 0)}
                for grp, mx, mn, ref, would, cmx, seconds, last in rows]

    def _capacities(self, license: str, start: float, end: float) -> dict[float, int]:
        rows = self._db.execute("SELECT at, capacity FROM usage_buckets WHERE license = ? AND at >= ? AND at < ?",
                                (license, start, end))
        return {at: cap for at, cap in rows}

    def span(self) -> tuple[float, float] | None:
        """(first bucket's start, last bucket's end) over every license, None when empty."""
        if not self._has_tables:
            return None
        row = self._db.execute("SELECT MIN(at), MAX(at + step) FROM usage_buckets").fetchone()
        return None if row[0] is None else (row[0], row[1])

    def latest_capacities(self) -> dict[str, int]:
        """The pool's capacity per license as recorded in the last bucket (P1: the cluster's pool)."""
        if not self._has_tables:
            return {}
        rows = self._db.execute(
            "SELECT license, capacity FROM usage_buckets AS b WHERE at = "
            "(SELECT MAX(at) FROM usage_buckets AS l WHERE l.license = b.license)")
        return {lic: cap for lic, cap in rows}
