"""Bindings and calls in progress, written behind and restored at start (docs/design.md principles 4, 5).

The precedent is Kamailio's write-back modes: usrloc ``db_mode=2`` and dialog ``db_mode=2`` keep
the tables in memory, mark what changed, and a timer writes the changes to the database in one
batch; at start the tables are loaded back. Here the same: a change only marks a key dirty (a set
insert on the hot path); :class:`StateJournal` writes every dirty key's *current* state in one
SQLite transaction ``flush_interval`` after the first mark, or at once when ``flush_batch`` keys
are waiting. In WAL mode with ``synchronous=NORMAL`` a commit is not an fsync (SQLite fsyncs at
checkpoints), and a committed transaction survives the process being killed (``kill -9``); what
was still waiting in the batch is lost, as in Kamailio's write-back.

The rows live beside the licensing tables in ``<state_dir>/licensing.sqlite``, so one
``meter backup`` holds the node's whole state. What is stored is what the node needs to carry on:

- a registration: the AOR's licensing decision (license, units, kind, rules: charged again as
  decided, not re-classified) and each binding (contact, parameters, wall-clock expiry, Call-ID
  and CSeq for RFC 3261 §10.3 step 7, where it came from, User-Agent);
- a call, once answered (a call still setting up dies with the node's transactions: its caller
  retransmits the INVITE and it is set up, and charged, afresh): its decision (the facts, the
  charge, settled or not for C6/C7) and its dialog (tags, targets, route set, CSeqs, session
  interval) so that a BYE after restart finds it and releases its RMS. The dialog is written when
  the call is charged, settled (the ACK) and ended; a later re-INVITE's new targets and CSeqs are
  not rewritten (they matter only for a BYE the node itself sends, at session expiry).

H.323 RAS registrations and admitted calls are written behind by the same journal into their own
tables (``meter.store.h323_state``), restored before the RAS socket serves anything.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from meter.logs import log_event
from meter.store.licensing import BUSY_TIMEOUT_MS, DB_NAME, StoreError

log = logging.getLogger("meter.store")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS registrations (aor TEXT PRIMARY KEY, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS bindings (
    aor TEXT NOT NULL, contact TEXT NOT NULL, params TEXT NOT NULL, expires_at REAL NOT NULL,
    call_id TEXT NOT NULL, cseq INTEGER NOT NULL, transport TEXT, host TEXT, port INTEGER,
    user_agent TEXT NOT NULL, PRIMARY KEY (aor, contact));
CREATE TABLE IF NOT EXISTS calls (
    call_id TEXT NOT NULL, from_tag TEXT NOT NULL, dialog TEXT NOT NULL, record TEXT NOT NULL,
    PRIMARY KEY (call_id, from_tag));
"""


@dataclass(frozen=True)
class StateSettings:
    """`[state]`: how bindings and calls in progress are written behind (meter.store.state)."""

    flush_interval: float = 0.2
    """Seconds between a change and its write to the state database. Kamailio's write-back timers
    default to 60 s (usrloc `timer_interval`, dialog `db_update_period`); 0.2 s keeps what a `kill -9` can lose to
    a fifth of a second of changes while batching a registration avalanche into few transactions."""
    flush_batch: int = 250
    """Changed keys that trigger a write at once, before `flush_interval`: bounds one write, which runs
    on the event loop at about 50 us per changed AOR (measured: 1,000 AORs in 48-58 ms, JSON and
    SQLite), so one write holds the loop about 15 ms at most."""

    def __post_init__(self) -> None:
        if not self.flush_interval > 0:
            raise ValueError(f"flush_interval: expected a positive number of seconds, got {self.flush_interval}")
        if self.flush_batch < 1:
            raise ValueError(f"flush_batch: expected a positive integer, got {self.flush_batch}")


@dataclass(frozen=True, slots=True)
class StoredBinding:
    aor: str
    contact: str
    params: dict
    expires_at: float
    """Wall-clock seconds since the epoch."""
    call_id: str
    cseq: int
    source: tuple[str, str, int] | None
    """(transport, host, port) the REGISTER came from; the TCP connection itself does not survive."""
    user_agent: str


@dataclass(frozen=True, slots=True)
class StoredCall:
    call_id: str
    from_tag: str
    dialog: dict
    record: dict


class StateStore:
    """The bindings and calls tables. One connection of its own (WAL: the licensing store and the
    CLI read and write the same file meanwhile)."""

    def __init__(self, state_dir: str | Path) -> None:
        self.path = Path(state_dir) / DB_NAME
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
            self._db.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL: commits survive a killed process; only a power cut can lose the last ones.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot open node state: {exc}") from None

    def close(self) -> None:
        self._db.close()

    def write(self, registrations: dict[str, tuple[dict | None, list[StoredBinding]]],
              calls: dict[str, list[StoredCall]]) -> None:
        """One transaction: each AOR's record and bindings replaced (None: gone), each Call-ID's calls
        replaced (an empty list: gone)."""
        db = self._db
        gone = [(aor,) for aor, (record, bindings) in registrations.items() if record is None or not bindings]
        records = [(aor, json.dumps(record)) for aor, (record, bindings) in registrations.items()
                   if record is not None and bindings]
        rows = [(b.aor, b.contact, json.dumps(b.params), b.expires_at, b.call_id, b.cseq, *(b.source or (None, None, None)),
                 b.user_agent) for record, bindings in registrations.values() if record is not None for b in bindings]
        call_rows = [(c.call_id, c.from_tag, json.dumps(c.dialog), json.dumps(c.record))
                     for stored in calls.values() for c in stored]
        db.execute("BEGIN")
        try:  # set-wise statements: one executemany each, whatever the batch's size
            db.executemany("DELETE FROM bindings WHERE aor = ?", [(aor,) for aor in registrations])
            db.executemany("DELETE FROM registrations WHERE aor = ?", gone)
            db.executemany("INSERT OR REPLACE INTO registrations (aor, record) VALUES (?, ?)", records)
            db.executemany("INSERT OR REPLACE INTO bindings (aor, contact, params, expires_at, call_id, cseq, "
                           "transport, host, port, user_agent) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            db.executemany("DELETE FROM calls WHERE call_id = ?", [(call_id,) for call_id in calls])
            db.executemany("INSERT OR REPLACE INTO calls (call_id, from_tag, dialog, record) VALUES (?, ?, ?, ?)",
                           call_rows)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def registrations(self) -> dict[str, tuple[dict, list[StoredBinding]]]:
        out: dict[str, tuple[dict, list[StoredBinding]]] = {
            aor: (json.loads(record), []) for aor, record in self._db.execute("SELECT aor, record FROM registrations")}
        rows = self._db.execute("SELECT aor, contact, params, expires_at, call_id, cseq, transport, host, port, "
                                "user_agent FROM bindings ORDER BY aor, contact")
        for aor, contact, params, expires_at, call_id, cseq, transport, host, port, ua in rows:
            if aor in out:
                source = (transport, host, port) if transport else None
                out[aor][1].append(StoredBinding(aor, contact, json.loads(params), expires_at, call_id, cseq,
                                                 source, ua))
        return out

    def calls(self) -> list[StoredCall]:
        rows = self._db.execute("SELECT call_id, from_tag, dialog, record FROM calls")
        return [StoredCall(c, t, json.loads(d), json.loads(r)) for c, t, d, r in rows]

    def forget_registration(self, aor: str) -> None:
        self.write({aor: (None, [])}, {})

    def forget_call(self, call_id: str) -> None:
        self.write({}, {call_id: []})

    def clear_calls(self) -> None:
        self._db.execute("DELETE FROM calls")


class StateJournal:
    """Write-behind (Kamailio's db_mode=2): ``changed`` marks a key; a timer writes each marked
    key's current state, read through ``snapshot_registration`` / ``snapshot_calls`` at write time.
    Key-agnostic: SIP marks AORs and Call-IDs into a :class:`StateStore`; H.323 endpoint identifiers
    and call keys into ``meter.store.h323_state.H323StateStore`` (any store with the same ``write``)."""

    def __init__(self, store: StateStore, settings: StateSettings, *, call_later: Callable,
                 snapshot_registration: Callable[[str], tuple[dict | None, list[StoredBinding]]],
                 snapshot_calls: Callable[[set[str]], dict[str, list[StoredCall]]]) -> None:
        self.store = store
        self.settings = settings
        self._call_later = call_later
        self._snapshot_registration = snapshot_registration
        self._snapshot_calls = snapshot_calls
        self._aors: set[str] = set()
        self._call_ids: set[str] = set()
        self._handle = None
        self._soon = False  # the pending write was brought forward by a full batch
        self.flushes = 0
        self.rows_written = 0
        self.failures = 0
        self.enabled = True

    def registration_changed(self, aor: str) -> None:
        if self.enabled:
            self._aors.add(aor)
            self._schedule()

    def call_changed(self, call_id: str) -> None:
        if self.enabled:
            self._call_ids.add(call_id)
            self._schedule()

    @property
    def pending(self) -> int:
        return len(self._aors) + len(self._call_ids)

    def _schedule(self) -> None:
        if self._handle is None:
            self._handle = self._call_later(self.settings.flush_interval, self.flush)
        elif not self._soon and self.pending >= self.settings.flush_batch:
            self._handle.cancel()  # a full batch goes at the loop's next turn, once
            self._handle = self._call_later(0, self.flush)
            self._soon = True

    def flush(self) -> None:
        """Write every marked key's current state in one transaction (a timer callback: never raises)."""
        self._handle, self._soon = None, False
        if not self.pending:
            return
        aors, call_ids = self._aors, self._call_ids
        self._aors, self._call_ids = set(), set()
        try:
            registrations = {aor: self._snapshot_registration(aor) for aor in aors}
            calls = self._snapshot_calls(call_ids) if call_ids else {}
            self.store.write(registrations, calls)
        except Exception as exc:  # a full disk must not stop the node; the keys are tried again
            self.failures += 1
            self._aors |= aors
            self._call_ids |= call_ids
            log_event(log, "state.write_failed", logging.ERROR, path=str(self.store.path), error=str(exc),
                      pending=self.pending)
            self._handle = self._call_later(max(1.0, self.settings.flush_interval), self.flush)
            return
        self.flushes += 1
        self.rows_written += len(registrations) + len(calls)

    def close(self) -> None:
        """Node shutdown: write what is waiting, then record nothing more. The shutdown's own
        releases are not written, so a restarted node carries on with the endpoints' bindings and calls."""
        if self._handle is not None:
            self._handle.cancel()
        self.flush()
        if self._handle is not None:  # the last write failed: nothing more will try
            self._handle.cancel()
            self._handle = None
        self.enabled = False
