"""The metering join: what passes the SIP node (and the RAS gatekeeper) is charged in real time.

The signalling cores call hooks (``meter.sip.hooks.SipHooks``, ``meter.h323.hooks.RasHooks``),
whose implementations (``meter.metering.sip``, ``meter.metering.h323``) use this module to turn each into
facts for the pure licensing domain (``classify_call``, ``classify_registration``), charges the
ledger, and answers allow or refuse. It keeps one record per charged alias and per call so the
API and CLI can show what each costs and which rules decided it (docs/design.md principle 2).

Release paths (principle 4): a registration is released on unregister, expiry, node shutdown
(``on_bindings`` with no bindings) or, for a REGISTER or RRQ that the upstream refused or never
answered, as soon as the signalling core says so (``release_reservation``); a call on
``on_call_ended``, which the SIP node calls exactly once per allowed call.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

from meter.licensing.calls import CallFacts, CallCharge, classify_call
from meter.licensing.devices import DeviceCatalog
from meter.licensing.ledger import ENFORCE, Decision, Ledger
from meter.licensing.model import UNIT_SCALE, Kind, License, Media
from meter.licensing.registrations import RegistrationCharge, RegistrationFacts, classify_registration
from meter.licensing.usage import UsageMeter
from meter.logs import log_event
from meter.metering.tallies import RecordTallies
from meter.zones import ZoneSettings, ZoneTable

log = logging.getLogger("meter.metering")

# A REGISTER (or RRQ) forwarded upstream holds its license from the moment it is let through (so
# two racing REGISTERs cannot both take the last license) until the upstream answers: its 2xx
# confirms the reservation, a refusal (a 401 challenge, 403) or no answer (the core's Timer F)
# releases it at once (``release_reservation``).
# The last ledger snapshot kept in the state directory for `meter licenses`.
USAGE_RECORD_SECONDS = 60.0
# The usage history's buckets are a minute (meter.store.usage_history); its roll-up and retention
# run this often.
USAGE_BUCKET_SECONDS = 60.0
USAGE_MAINTAIN_SECONDS = 3600.0
# Option keys set with `meter xconfiguration option N key K` while the node runs land in the
# state directory; the node looks for them this often (one small SQLite read).
KEY_POLL_SECONDS = 5.0


@dataclass(slots=True)
class RegistrationRecord:
    alias: str
    protocol: str
    device_class: str
    license: str
    device: str
    rules: tuple[str, ...]
    pending: bool = False  # inline: reserved, waiting for the upstream's answer
    charge: RegistrationCharge | None = None  # as decided: a restart charges it again as is


@dataclass(slots=True)
class CallRecord:
    call_id: str
    caller: str
    callee: str
    facts: CallFacts
    charge: CallCharge
    state: str = "setup"           # setup -> answered -> confirmed
    m_lines: int | None = None
    rules: tuple[str, ...] = ()
    media: str = Media.SETUP
    started_at: float | None = None  # for the duration in the operator's log line (None: restored)


class Metering:
    def __init__(self, ledger: Ledger, catalog: DeviceCatalog, zones: ZoneTable, *, role: str,
                 node_name: str, sip_mode: str = "standalone", licensing=None,
                 clock: Callable[[], float] = time.time, usage_history=None):
        self.ledger, self.catalog, self.zones = ledger, catalog, zones
        self.role, self.node_name, self.sip_mode = role, node_name, sip_mode
        self.licensing = licensing  # NodeLicensing (durable keys, license mode), None in pure tests
        self.clock = clock
        # Peaks at every charge (meter.licensing.usage), for the API, metrics and the history.
        self.usage: UsageMeter = ledger.usage if ledger.usage is not None \
            else ledger.attach_usage(UsageMeter(node_name, clock()))
        # meter.store.usage_history.UsageHistory: per-minute buckets, written from tick; None in pure tests.
        self.usage_history = usage_history
        self._usage_minute = clock() // USAGE_BUCKET_SECONDS
        self._peaks_saved = self.usage.peak_changes
        self._next_usage_maintain = 0.0
        self.registrations: dict[tuple[str, str], RegistrationRecord] = {}
        self.calls: dict[tuple[str, str], CallRecord] = {}
        # Both tables counted by label as records come and go: a scrape reads these, never walks.
        self.tallies = RecordTallies()
        # SIP AOR by "user" and "user@host": how an H.323 alias finds a SIP registration (C9).
        self._sip_names: dict[str, str] = {}
        self._next_key_change: float | None = None
        self._next_usage_record = 0.0
        self._next_key_poll = 0.0
        self._key_rows: list | None = None
        # meter.store.state.StateJournal: SIP registrations and calls written behind (principle 5).
        self.journal = None
        # meter.smart.agent.SmartAgent: in Smart mode, what the ledger may charge (P6, S2).
        self.smart = None
        self._mode: str | None = None
        self._smart_applied: tuple | None = None

    # ---- licenses ----------------------------------------------------------------------

    def refresh_licenses(self, now: float) -> None:
        """Feed the ledger the quantities of the option keys in force (K1, K5: demo keys expire), or
        in Smart mode what Smart Licensing says (P6, S2; L3: keys count for nothing)."""
        if self.licensing is None:
            return
        self._mode = self.licensing.license_mode
        if self.licensing.smart:
            self._next_key_change = None
            if self.smart is not None:
                self.smart.apply(now)
            else:  # no agent (pure tests, CLI): nothing granted by keys, nothing by Smart yet
                self.ledger.set_licenses({}, now)
            return
        self.ledger.block_registrations("")
        grants = self.licensing.grants(now)
        self.ledger.set_licenses(grants.quantities, now)
        self._next_key_change = self.licensing.next_change(now)
        log_event(log, "licenses.in_force",
                  quantities=[f"{lic}:{n}" for lic, n in sorted(grants.quantities.items())] or "none")
        if not grants.quantities and self.ledger.enforcement == ENFORCE:
            log_event(log, "licenses.none_in_enforce_mode", logging.WARNING,
                      hint="every registration and RMS call will be refused: install option keys "
                           "(meter xconfiguration option 1 key ...) or set [licensing] enforcement = \"observe\"")

    def apply_smart(self, effects, now: float) -> None:
        """Smart mode: the capacity per pooled license (P6) and the S2 block on new registrations."""
        key = (tuple(sorted(effects.capacity.items())), effects.block_registrations)
        self.ledger.set_licenses(effects.capacity, now)  # also the heartbeat of this node's share
        self.ledger.block_registrations(effects.block_registrations)
        if key != self._smart_applied:
            self._smart_applied = key
            log_event(log, "licenses.smart_in_force", capacity=dict(effects.capacity),
                      block_registrations=effects.block_registrations)

    def _reload_keys(self, now: float) -> None:
        if self.licensing.license_mode != self._mode:  # `meter mode smart` on a running node: at once
            if self.smart is not None:
                self.smart.mode_changed(now)
            self.refresh_licenses(now)
        rows = self.licensing.store.key_rows()
        if rows == self._key_rows:
            return
        first = self._key_rows is None
        self._key_rows = rows
        if not first:  # keys changed on disk (the CLI) since the node last looked
            self.licensing.keys.load(rows)
            self.refresh_licenses(now)

    def sip_aor_for(self, name: str) -> str | None:
        """The SIP AOR registered here under ``name`` ("bob", "bob@lab.test" or "sip:bob@lab.test")."""
        if name.startswith(("sip:", "sips:")):
            name = name.partition(":")[2]
        return self._sip_names.get(name.lower())

    def close(self) -> None:
        now = self.clock()
        released = self.ledger.release_all(now)
        if released:
            log_event(log, "metering.released_at_shutdown", charges=released)
        self.registrations.clear()
        self.calls.clear()
        self.tallies.clear()
        self._sip_names.clear()
        if self.licensing is not None:
            self.licensing.close()
        if self.usage_history is not None:
            self.usage_history.close()
            self.usage_history = None

    # ---- periodic work -----------------------------------------------------------------

    def tick(self, now: float) -> None:
        self.ledger.tick(now)
        if self.licensing is not None and now >= self._next_key_poll:
            self._next_key_poll = now + KEY_POLL_SECONDS
            self._reload_keys(now)
        if self._next_key_change is not None and now >= self._next_key_change:
            self.refresh_licenses(now)
        if self.licensing is not None and now >= self._next_usage_record:
            self._next_usage_record = now + USAGE_RECORD_SECONDS
            self.licensing.store.record_usage(self.ledger.snapshot(now).to_dict(), now)
        if self.usage_history is not None:
            self._record_usage(now)

    def _record_usage(self, now: float, *, final: bool = False) -> None:
        """Off the hot path: the minute's window into the history at each new minute (or at
        shutdown, ``final``), the peaks at the first tick after one moved, the roll-up hourly."""
        history, usage = self.usage_history, self.usage
        try:
            minute = now // USAGE_BUCKET_SECONDS
            if final or minute != self._usage_minute:
                self._usage_minute = minute
                history.record(usage.take_window(now))
            if final or usage.peak_changes != self._peaks_saved:
                self._peaks_saved = usage.peak_changes
                history.save_peaks(usage.state(), now)
            if not final and now >= self._next_usage_maintain:
                self._next_usage_maintain = now + USAGE_MAINTAIN_SECONDS
                history.maintain(now)
        except Exception as exc:  # a full disk must not stop metering; the next minute tries again
            log_event(log, "usage.history_write_failed", logging.ERROR, path=str(history.path), error=str(exc))

    def flush_usage(self, now: float) -> None:
        """Node shutdown, before the shutdown's releases: the current minute and the peaks."""
        if self.usage_history is not None:
            self._record_usage(now, final=True)

    # ---- registrations -----------------------------------------------------------------

    def charge_registration(self, protocol: str, alias: str, facts: RegistrationFacts, now: float,
                            *, reserve: bool = False, source: object = "") -> Decision | None:
        """Charge one alias (R9: one license per alias). None when it is already charged (refresh).
        ``source``: where the request came from, for the log line of a refusal (a Peer or a str:
        turned into text only when the line is written)."""
        key = (protocol, alias)
        if self.journal is not None and protocol == "sip":
            self.journal.registration_changed(alias)  # a refresh moves the binding's expiry too
        record = self.registrations.get(key)
        if record is not None:
            if not reserve:
                record.pending = False  # confirmed
            return None
        charge = classify_registration(facts, self.catalog)
        decision = self.ledger.charge_registration(key, charge, now)
        match = self.catalog.match_sip(facts.user_agent) if protocol == "sip" else None
        device = (match.model if match else facts.h323_product) or "unknown"
        self._note(decision, "registration", alias=alias, protocol=protocol, device=device, source=source,
                   user_agent=facts.user_agent or facts.h323_product)
        if decision.ok:
            if protocol == "sip":
                self._index_sip(alias, add=True)
            self._put_registration(key, RegistrationRecord(
                alias, protocol, _device_class(charge.license), str(charge.license), device, decision.rules,
                pending=reserve, charge=charge))
        return decision

    def _release_registration(self, key: tuple[str, str], cause: str, now: float) -> None:
        record = self.registrations.pop(key, None)
        if record is None:
            return
        self.tallies.registration(record, -1)
        if record.protocol == "sip":
            self._index_sip(record.alias, add=False)
            if self.journal is not None:
                self.journal.registration_changed(record.alias)
        self.ledger.release(key, now)
        log_event(log, "registration.released", alias=record.alias, protocol=record.protocol,
                  license=record.license, cause=cause)

    def _put_registration(self, key: tuple[str, str], record: RegistrationRecord) -> None:
        old = self.registrations.get(key)
        if old is not None:
            self.tallies.registration(old, -1)
        self.registrations[key] = record
        self.tallies.registration(record, 1)

    def _index_sip(self, aor: str, *, add: bool) -> None:
        user_host = aor.partition(":")[2].lower()
        names = (user_host, user_host.partition("@")[0])
        for name in names:
            if add:
                self._sip_names[name] = aor
            elif self._sip_names.get(name) == aor:
                del self._sip_names[name]

    def release_registration(self, protocol: str, alias: str, cause: str, now: float) -> None:
        self._release_registration((protocol, alias), cause, now)

    def release_reservation(self, protocol: str, alias: str, cause: str, now: float) -> None:
        """The upstream refused or never answered: release what the request reserved, and only that
        (an alias it confirmed earlier stays charged until it unregisters or expires)."""
        record = self.registrations.get((protocol, alias))
        if record is not None and record.pending:
            self._release_registration((protocol, alias), cause, now)

    # ---- calls -------------------------------------------------------------------------

    def charge_call(self, protocol: str, call_id: str, caller: str, callee: str, facts: CallFacts,
                    now: float, *, source: object = "", user_agent: str = "") -> Decision:
        """Charge a call at its first INVITE/ARQ: as video until set-up completes (C6)."""
        key = (protocol, call_id)
        charge = classify_call(facts)
        decision = self.ledger.charge_call(key, charge, now)
        self._note(decision, "call", call_id=call_id, caller=caller, callee=callee, zone=facts.callee_zone,
                   source=source, user_agent=user_agent)
        if decision.ok:
            self._put_call(key, CallRecord(call_id, caller, callee, facts, charge, rules=decision.rules,
                                           media=charge.media, started_at=now))
            self._call_changed(protocol, call_id)
        return decision

    def settle_call(self, protocol: str, call_id: str, m_lines: int | None, now: float) -> None:
        """Set-up complete: the class is fixed from the negotiated m= lines (C5, C6) and frozen (C7)."""
        record = self.calls.get((protocol, call_id))
        if record is None or record.state == "confirmed":
            return  # C7: nothing changes after set-up
        record.state = "confirmed"
        self._call_changed(protocol, call_id)
        if m_lines is None:
            m_lines = record.m_lines
        if not m_lines:
            return  # no SDP negotiated: stays counted as video (C6)
        final = classify_call(record.facts._replace(m_lines=m_lines))
        decision = self.ledger.settle((protocol, call_id), final, now)
        if decision is not None:
            self.tallies.call(record, -1)  # C6: counted under its negotiated class from now on
            record.charge, record.rules, record.media = final, decision.rules, final.media
            self.tallies.call(record, 1)
            log_event(log, "call.settled", call_id=call_id, media=str(final.media), license=str(final.license),
                      licenses=licenses_of(final.license, decision.units), rules=decision.rules)

    def end_call(self, protocol: str, call_id: str, cause: str, now: float) -> None:
        record = self.calls.pop((protocol, call_id), None)
        if record is not None:
            self.tallies.call(record, -1)
        self.ledger.release((protocol, call_id), now)
        self._call_changed(protocol, call_id)
        if record is not None:  # the operator's line for the call: its license, units and duration
            duration = f"{now - record.started_at:.1f}s" if record.started_at is not None else "unknown"
            log_event(log, "call.released", call_id=call_id, caller=record.caller, callee=record.callee,
                      media=str(record.media), license=str(record.charge.license),
                      licenses=licenses_of(record.charge.license, record.charge.units), duration=duration,
                      rules=record.rules, cause=cause)

    def _put_call(self, key: tuple[str, str], record: CallRecord) -> None:
        old = self.calls.get(key)
        if old is not None:
            self.tallies.call(old, -1)
        self.calls[key] = record
        self.tallies.call(record, 1)

    def _call_changed(self, protocol: str, call_id: str) -> None:
        if self.journal is not None and protocol == "sip":
            self.journal.call_changed(call_id)

    # ---- state that survives a restart (meter.store.state) --------------------------------

    def registration_state(self, protocol: str, alias: str) -> dict | None:
        """What a restart needs to charge this alias again as decided (None: not charged)."""
        record = self.registrations.get((protocol, alias))
        if record is None or record.charge is None or record.pending:
            return None  # inline, a reservation is the upstream's to confirm: not carried over
        c = record.charge
        return {"license": str(c.license), "units": c.units, "kind": str(c.kind), "aliases": c.aliases,
                "model": c.model, "charge_rules": list(c.rules), "rules": list(record.rules),
                "device": record.device}

    def restore_registration(self, protocol: str, alias: str, state: dict, now: float) -> Decision:
        """Charge a stored registration again from its stored decision (not re-classified)."""
        charge = RegistrationCharge(License(state["license"]), state["units"], Kind(state["kind"]),
                                    state["aliases"], state["model"], tuple(state["charge_rules"]))
        key = (protocol, alias)
        decision = self.ledger.charge_registration(key, charge, now)
        if decision.ok:
            if protocol == "sip":
                self._index_sip(alias, add=True)
            self._put_registration(key, RegistrationRecord(
                alias, protocol, _device_class(charge.license), str(charge.license), state["device"],
                tuple(state["rules"]), charge=charge))
        return decision

    def call_state(self, protocol: str, call_id: str) -> dict | None:
        """What a restart needs to charge this call again as decided (None: not charged)."""
        record = self.calls.get((protocol, call_id))
        if record is None:
            return None
        charge = record.charge._asdict()
        charge["license"], charge["call_license"] = str(charge["license"]), str(charge["call_license"])
        charge["media"], charge["rules"] = str(charge["media"]), list(charge["rules"])
        return {"caller": record.caller, "callee": record.callee, "facts": record.facts._asdict(),
                "charge": charge, "state": record.state, "m_lines": record.m_lines, "rules": list(record.rules),
                "media": str(record.media)}

    def restore_call(self, protocol: str, call_id: str, state: dict, now: float) -> Decision:
        """Charge a stored call again as decided; a call set up before the restart stays settled (C7)."""
        c = state["charge"]
        charge = CallCharge(License(c["license"]), c["units"], c["payer"], License(c["call_license"]),
                            Media(c["media"]), c["physical"], tuple(c["rules"]))
        key = (protocol, call_id)
        decision = self.ledger.charge_call(key, charge, now)
        if decision.ok:
            if state["state"] == "confirmed":
                self.ledger.settle(key, charge, now)
            self._put_call(key, CallRecord(call_id, state["caller"], state["callee"], CallFacts(**state["facts"]),
                                           charge, state["state"], state["m_lines"], tuple(state["rules"]),
                                           Media(state["media"])))
        return decision

    # ---- shared ------------------------------------------------------------------------

    def _note(self, decision: Decision, what: str, **facts) -> None:
        """Every decision is logged with its rule IDs (the ledger counts refusals)."""
        # Checked here, not only in log_event: the event name and the texts are built per charge.
        if decision.reason:
            if log.isEnabledFor(logging.INFO):
                facts["source"] = str(facts.get("source", ""))
                log_event(log, f"{what}.{'would_refuse' if decision.observed else 'refused'}", logging.INFO,
                          reason=decision.reason, license=str(decision.license), rules=decision.rules, **facts)
            return
        # A registration accepted is the operator's line (info); a call's comes when it ends.
        level = logging.INFO if what == "registration" else logging.DEBUG
        if log.isEnabledFor(level):
            facts["source"] = str(facts.get("source", ""))
            log_event(log, f"{what}.charged", level, license=str(decision.license),
                      licenses=licenses_of(decision.license, decision.units), rules=decision.rules, **facts)

    # ---- views for the API and CLI -----------------------------------------------------

    def registration_views(self) -> list[dict]:
        return [registration_view(key, r) for key, r in self.registrations.items()]

    def call_views(self) -> list[dict]:
        return [call_view(key, c) for key, c in self.calls.items()]


# One record's view, keyed as its table is (the admin API pages through the tables by key).
def registration_view(key: tuple[str, str], r: RegistrationRecord) -> dict:
    return {"alias": r.alias, "protocol": r.protocol, "device_class": r.device_class, "license": r.license,
            "device": r.device, "rules": list(r.rules), "pending": r.pending}


def call_view(key: tuple[str, str], c: CallRecord) -> dict:
    return {"call_id": c.call_id, "protocol": key[0], "caller": c.caller, "callee": c.callee, "state": c.state,
            "call_class": str(c.media), "license": str(c.charge.license), "units": c.charge.units,
            "caller_zone": c.facts.caller_zone, "callee_zone": c.facts.callee_zone, "rules": list(c.rules)}


def licenses_of(license: str, units: int) -> float:
    """Units as licenses, the operator's unit: RMS is kept in halves (C4), an audio-only SIP call is 0.5."""
    return units / UNIT_SCALE.get(license, 1)


def _device_class(license: str) -> str:
    return {License.ROOM: "room", License.DESKTOP: "desktop"}.get(license, "none")


def zone_registration(zone: ZoneSettings) -> str:
    """The registered side of a zone (C1, C11): "unified_cm" for Unified CM's registered endpoints,
    "peer" for another Cisco system's (a cluster peer, an Expressway pair), "" for everything else.
    The one place that decides it for SIP and H.323 alike."""
    if not zone.registered:
        return ""
    return "unified_cm" if zone.kind == "unified_cm" else "peer"
