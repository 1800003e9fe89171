"""The H.323 side of the state that survives a restart: the RAS gatekeeper's registrations and
admitted calls, with their charges in the metering join, written behind and put back at start.

The same write-behind as SIP (``meter.store.state``, Kamailio usrloc/dialog ``db_mode=2``): the
gatekeeper's tables (``meter.h323.registrations``, ``meter.h323.calls``) tell the
:class:`~meter.store.state.StateJournal` which endpoint identifier or call key changed (a set
insert on the hot path); ``flush_interval`` later one SQLite transaction writes each one's current
state. The rows live in their own tables in the same ``<state_dir>/licensing.sqlite``, so one
``meter backup`` holds them too.

What is stored, and why:

- a registration: endpoint identifier, aliases, RAS / call signalling / source addresses,
  vendor and endpoint type, time-to-live and wall-clock expiry (a keep-alive RRQ moves it), and each
  alias's licensing decision (charged again as decided, not re-classified). Restored, a keep-alive
  RRQ finds it (RCF, not RRJ ``fullRegistrationRequired``, H.323 §7.2.2), an ARQ is admitted, a full
  re-registration finds it by endpoint identifier or call signalling address and charges nothing new:
  it is the same registration. One expired while the node was down is dropped, never charged.
- an admitted call (a row of the call table with at least one admitted leg): its callIdentifier and
  conferenceID, parties, legs (endpoint, answerCall, CRV, bandwidth, destination), and its charge, so
  that a DRQ after the restart finds it and releases its RMS. A call none of whose parties is still
  registered is dropped (the gatekeeper ends a party's calls when it unregisters).

Inline (``meter.h323.inline``) the upstream gatekeeper holds the registrations, but the node's tables
are what it charges and what it routes the upstream's URQ, DRQ and IRQ by: they are restored the same
way, so the counts are right at once and a DRQ (the endpoint's, relayed, or the upstream's) of a call
in progress releases its RMS. What was forwarded and not yet answered (a reservation, an ARQ whose
ACF had not come) is not carried over: the endpoint retransmits and it is asked, and charged, afresh.

Times: the gatekeeper runs on the loop's monotonic clock; rows hold wall-clock times
(``Gatekeeper.wall_offset`` converts both ways).
"""

from __future__ import annotations

import json
import logging
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from meter.codecs.ras import Alias, TransportAddress, Vendor
from meter.h323.calls import Leg, RasCall
from meter.h323.gatekeeper import Gatekeeper
from meter.h323.hooks import Party
from meter.h323.registrations import Registration, alias_key
from meter.logs import log_event
from meter.metering.h323 import ledger_key
from meter.store.licensing import BUSY_TIMEOUT_MS, DB_NAME, StoreError
from meter.store.state import StateJournal, StateSettings

log = logging.getLogger("meter.store")

PROTOCOL = "h323"
# What a row that cannot be read back raises: a missing field, a wrong type or shape.
_UNREADABLE = (KeyError, TypeError, ValueError, AttributeError, IndexError)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS h323_registrations (endpoint_id TEXT PRIMARY KEY, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS h323_calls (call_key TEXT PRIMARY KEY, record TEXT NOT NULL);
"""


class H323StateStore:
    """The RAS registrations and calls tables; one connection of its own (WAL, like ``StateStore``)."""

    def __init__(self, state_dir: str | Path) -> None:
        self.path = Path(state_dir) / DB_NAME
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # commits survive a killed process
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot open node state: {exc}") from None

    def close(self) -> None:
        self._db.close()

    def write(self, registrations: dict[str, dict | None], calls: dict[bytes, dict | None]) -> None:
        """One transaction: each endpoint's and each call's row replaced (None: gone)."""
        db = self._db
        db.execute("BEGIN")
        try:
            db.executemany("DELETE FROM h323_registrations WHERE endpoint_id = ?", [(e,) for e in registrations])
            db.executemany("INSERT INTO h323_registrations (endpoint_id, record) VALUES (?, ?)",
                           [(e, json.dumps(r)) for e, r in registrations.items() if r is not None])
            db.executemany("DELETE FROM h323_calls WHERE call_key = ?", [(k.hex(),) for k in calls])
            db.executemany("INSERT INTO h323_calls (call_key, record) VALUES (?, ?)",
                           [(k.hex(), json.dumps(r)) for k, r in calls.items() if r is not None])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def registrations(self) -> list[tuple[str, str]]:
        """(endpoint identifier, its row as JSON text): parsed one by one, so one bad row spoils only itself."""
        return self._db.execute("SELECT endpoint_id, record FROM h323_registrations").fetchall()

    def calls(self) -> list[tuple[str, str]]:
        """(call key in hex, its row as JSON text)."""
        return self._db.execute("SELECT call_key, record FROM h323_calls").fetchall()

    def forget_registration(self, endpoint_id: str) -> None:
        self._db.execute("DELETE FROM h323_registrations WHERE endpoint_id = ?", (endpoint_id,))

    def forget_call(self, call_key_hex: str) -> None:
        self._db.execute("DELETE FROM h323_calls WHERE call_key = ?", (call_key_hex,))


@dataclass(slots=True)
class Restored:
    """What a start found in the state database (H.323)."""

    registrations: int = 0
    aliases: int = 0
    calls: int = 0
    expired: int = 0
    """Registrations whose time-to-live ran out while the node was down: dropped (never charged)."""
    orphaned: int = 0
    """Calls none of whose parties was restored: dropped."""
    refused: int = 0
    """Stored charges the ledger refused now (enforce mode, fewer licenses than before the restart)."""
    unreadable: int = 0
    """Rows that could not be read back (edited by hand, another version, a conflict): dropped, logged."""


class H323State:
    """A gatekeeper core's registrations and calls, written behind and restored (see the module doc).

    ``metering``: the metering join (``meter.metering.join.Metering``), or None for a gatekeeper that
    charges nothing. ``clock``: the gatekeeper's monotonic clock (the loop's ``time``)."""

    def __init__(self, store: H323StateStore, settings: StateSettings, core: Gatekeeper, metering, *,
                 call_later: Callable, clock: Callable[[], float]) -> None:
        self.store = store
        self.core = core
        self.metering = metering
        self.clock = clock
        # StateJournal is key-agnostic: here its "AORs" are endpoint identifiers, its "Call-IDs" call keys.
        self.journal = StateJournal(store, settings, call_later=call_later,  # type: ignore[arg-type]
                                    snapshot_registration=self._registration, snapshot_calls=self._calls)

    def attach(self) -> None:
        """From now on every change of the gatekeeper's tables is written behind."""
        self.core.registrations.changed = self.journal.registration_changed
        self.core.calls.changed = self.journal.call_changed

    def close(self) -> None:
        """Write what is waiting, then stop: the node's own shutdown releases are not written."""
        self.journal.close()
        self.core.registrations.changed = None
        self.core.calls.changed = None
        self.store.close()

    # -- writing: the current state of one key ------------------------------------------------------

    def _registration(self, endpoint_id: str) -> dict | None:
        reg = self.core.registrations.get(endpoint_id)
        if reg is None:
            return None
        shift = self.core.wall_offset
        charges = {}
        if self.metering is not None:
            for alias in reg.aliases:
                key = ledger_key(alias)
                charges[key] = self.metering.registration_state(PROTOCOL, key)
        return {
            "aliases": [list(a) for a in reg.aliases], "ras_address": list(reg.ras_address),
            "call_signal_addresses": [list(a) for a in reg.call_signal_addresses], "source": list(reg.source),
            "vendor": _vendor_row(reg.vendor), "endpoint_type": reg.endpoint_type,
            "registered_at": reg.registered_at + shift, "time_to_live": reg.time_to_live,
            "expires_at": None if reg.time_to_live is None else reg.expires_at + shift, "charges": charges,
        }

    def _calls(self, keys: set[bytes]) -> dict[bytes, dict | None]:
        shift = self.core.wall_offset
        out: dict[bytes, dict | None] = {}
        for key in keys:
            call = self.core.calls.get(key)
            if call is None or not call.legs:  # gone, or (inline) still waiting for the upstream's ACF
                out[key] = None
                continue
            charge = None if self.metering is None else self.metering.call_state(PROTOCOL, call.call_key)
            out[key] = {
                "call_identifier": call.call_identifier.hex(), "conference_id": call.conference_id.hex(),
                "created_at": call.created_at + shift, "started_wall": call.started_wall,
                "caller": _party_row(call.caller), "callee": _party_row(call.callee), "resolved": call.resolved,
                "bandwidth": call.bandwidth,
                "legs": [{"endpoint_id": leg.endpoint_id, "answer_call": leg.answer_call,
                          "call_reference_value": leg.call_reference_value, "bandwidth": leg.bandwidth,
                          "dest_address": _address_row(leg.dest_address), "admitted_at": leg.admitted_at + shift}
                         for leg in call.legs.values()],
                "charge": charge,
            }
        return out

    # -- reading back at start ------------------------------------------------------------------------

    def restore(self) -> Restored:
        """Refill the registration and call tables and charge each again as decided. Call once, before
        the gatekeeper handles a datagram (``RasNode(prepare=...)``)."""
        done = Restored()
        core = self.core
        mono = self.clock()
        wall = mono + core.wall_offset
        now = self.metering.clock() if self.metering is not None else wall
        for endpoint_id, text in self.store.registrations():
            try:  # the whole row read before anything is charged: a bad row charges nothing
                row = json.loads(text)
                expires_at = row["expires_at"]
                if expires_at is not None and float(expires_at) <= wall:
                    done.expired += 1
                    self.store.forget_registration(endpoint_id)
                    log_event(log, "state.h323_registration_expired_while_down", endpoint_id=endpoint_id)
                    continue
                reg = _registration_from_row(endpoint_id, row, mono, wall)
                charges = self._charges_of(reg, row)
            except _UNREADABLE as exc:
                done.unreadable += 1
                self.store.forget_registration(endpoint_id)
                log_event(log, "state.row_unreadable", logging.WARNING, endpoint_id=endpoint_id, error=repr(exc))
                continue
            reason = self._charge_registration(charges, now)
            if reason:
                done.refused += 1
                self.store.forget_registration(endpoint_id)
                log_event(log, "state.h323_registration_not_restored", logging.WARNING, endpoint_id=endpoint_id,
                          reason=reason)
                continue
            core.registrations.restore(reg)
            done.registrations += 1
            done.aliases += len(reg.aliases)
        for key_hex, text in self.store.calls():
            try:
                row = json.loads(text)
                call, legs = _call_from_row(key_hex, row, mono, wall)
                charge = row["charge"]
                if core.calls.get(call.key) is not None:
                    raise ValueError("call already restored")
            except _UNREADABLE as exc:
                done.unreadable += 1
                self.store.forget_call(key_hex)
                log_event(log, "state.row_unreadable", logging.WARNING, call=key_hex, error=repr(exc))
                continue
            legs = [leg for leg in legs if core.registrations.get(leg.endpoint_id) is not None]
            if not legs:
                done.orphaned += 1  # its parties expired while the node was down: the call ended with them
                self.store.forget_call(key_hex)
                log_event(log, "state.h323_call_dropped", call=call.call_key, cause="no party registered")
                continue
            if charge is not None and self.metering is not None:
                try:
                    decision = self.metering.restore_call(PROTOCOL, call.call_key, charge, now)
                except _UNREADABLE as exc:
                    done.unreadable += 1
                    self.store.forget_call(key_hex)
                    log_event(log, "state.row_unreadable", logging.WARNING, call=call.call_key, error=repr(exc))
                    continue
                if not decision.ok:
                    done.refused += 1
                    self.store.forget_call(key_hex)
                    log_event(log, "state.h323_call_not_restored", logging.WARNING, call=call.call_key,
                              reason=decision.reason)
                    continue
            core.calls.add(call)
            for leg in legs:
                core.calls.add_leg(call, leg)
            done.calls += 1
        log_event(log, "state.h323_restored", path=str(self.store.path), mode=core.mode,
                  registrations=done.registrations, aliases=done.aliases, calls=done.calls,
                  expired_while_down=done.expired, orphaned_calls=done.orphaned, refused=done.refused,
                  unreadable=done.unreadable)
        return done

    def _charges_of(self, reg: Registration, row: dict) -> list[tuple[str, dict]]:
        """(ledger key, stored decision) of each alias; a registration the table cannot take back (an
        alias or endpoint identifier already held) or an alias charged by nobody is unreadable: restoring
        it would let an alias go uncounted."""
        table = self.core.registrations
        if table.get(reg.endpoint_id) is not None or table.conflicts(reg.aliases, reg.endpoint_id):
            raise ValueError("endpoint identifier or alias already restored")
        if self.metering is None:
            return []
        stored = row["charges"]
        out = []
        for alias in reg.aliases:
            key = ledger_key(alias)
            state = stored[key]
            if state is None:
                raise ValueError(f"alias {key} has no stored charge")
            out.append((key, state))
        return out

    def _charge_registration(self, charges: list[tuple[str, dict]], now: float) -> str:
        """Charge every alias again, all or nothing (R9: one license each); returns a refusal's reason."""
        charged: list[str] = []
        for key, state in charges:
            try:
                decision = self.metering.restore_registration(PROTOCOL, key, state, now)
            except _UNREADABLE as exc:
                reason = f"unreadable charge: {exc!r}"
            else:
                if decision.ok:
                    charged.append(key)
                    continue
                reason = decision.reason or "refused"
            for done_key in charged:
                self.metering.release_registration(PROTOCOL, done_key, "not restored", now)
            return reason
        return ""


def _address_row(address: TransportAddress | None) -> list | None:
    return None if address is None else [address.ip, address.port]


def _address(row) -> TransportAddress | None:
    return None if row is None else TransportAddress(str(row[0]), int(row[1]))


def _aliases(rows) -> tuple[Alias, ...]:
    return tuple(Alias(str(t), str(v)) for t, v in rows)


def _vendor_row(vendor: Vendor | None) -> list | None:
    # Vendor's fields in order (dataclasses.asdict costs more than the rest of a row together)
    return None if vendor is None else [vendor.country_code, vendor.extension, vendor.manufacturer_code,
                                        vendor.product_id, vendor.version_id]


def _vendor(row: list | None) -> Vendor | None:
    return None if row is None else Vendor(*row)


def _party_row(party: Party) -> dict:
    return {"aliases": [list(a) for a in party.aliases], "endpoint_id": party.endpoint_id,
            "registered": party.registered, "address": _address_row(party.address),
            "vendor": _vendor_row(party.vendor)}


def _party(row: dict) -> Party:
    return Party(_aliases(row["aliases"]), row["endpoint_id"], row["registered"], _address(row["address"]),
                 _vendor(row["vendor"]))


def _registration_from_row(endpoint_id: str, row: dict, mono: float, wall: float) -> Registration:
    aliases = _aliases(row["aliases"])
    ttl = row["time_to_live"]
    expires_at = row["expires_at"]
    reg = Registration(endpoint_id, aliases, _address(row["ras_address"]),
                       tuple(_address(a) for a in row["call_signal_addresses"]), _vendor(row["vendor"]),
                       row["endpoint_type"], _address(row["source"]), mono - (wall - row["registered_at"]),
                       None if ttl is None else int(ttl))
    if expires_at is not None:
        reg.expires_at = mono + (float(expires_at) - wall)
    reg.keys = frozenset(map(alias_key, aliases))
    return reg


def _call_from_row(key_hex: str, row: dict, mono: float, wall: float) -> tuple[RasCall, list[Leg]]:
    key = bytes.fromhex(key_hex)
    call = RasCall(key, bytes.fromhex(row["call_identifier"]), bytes.fromhex(row["conference_id"]),
                   mono - (wall - row["created_at"]), float(row["started_wall"]), _party(row["caller"]),
                   _party(row["callee"]), row["resolved"], int(row["bandwidth"]))
    # Seen now: the IRQ polling (irr_frequency) gives each endpoint a full period to confirm the call.
    legs = [Leg(str(leg["endpoint_id"]), bool(leg["answer_call"]), int(leg["call_reference_value"]),
                int(leg["bandwidth"]), _address(leg["dest_address"]), mono - (wall - leg["admitted_at"]),
                last_seen=mono) for leg in row["legs"]]
    return call, legs

