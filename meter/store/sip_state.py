"""The SIP side of the state that survives a restart: a SIP core's bindings and calls, with their
charges in the metering join, written behind (``meter.store.state``) and put back at start.

Times: the core's expiries and timers are monotonic (``clock.time()``), which means nothing to
the next process; rows hold wall-clock times and are converted both ways here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from meter.codecs.sip import SIPError, parse_uri
from meter.logs import log_event
from meter.sip.dialogs import ANSWERED, CONFIRMED, Call, Dialog
from meter.sip.location import Binding, contact_key
from meter.sip.peer import Peer
from meter.sip.session_timer import Session
from meter.store.state import StateJournal, StateSettings, StateStore, StoredBinding, StoredCall

log = logging.getLogger("meter.store")

PROTOCOL = "sip"
# What a row that cannot be read back raises: a missing field, a wrong type, a bad URI or enum value.
_UNREADABLE = (KeyError, TypeError, ValueError, AttributeError, SIPError)


@dataclass(slots=True)
class Restored:
    """What a start found in the state database."""

    registrations: int = 0
    bindings: int = 0
    calls: int = 0
    expired: int = 0
    """Registrations whose every binding expired while the node was down: released (never charged)."""
    refused: int = 0
    """Stored charges the ledger refused now (enforce mode, fewer licenses than before the restart)."""
    unreadable: int = 0
    """Rows that could not be read back (edited by hand, or from another version): dropped, logged."""


class SipState:
    def __init__(self, store: StateStore, settings: StateSettings, core, metering, *, call_later) -> None:
        self.store = store
        self.core = core
        self.metering = metering
        self.journal = StateJournal(store, settings, call_later=call_later,
                                    snapshot_registration=self._registration, snapshot_calls=self._calls)

    def attach(self) -> None:
        """From now on every change of a SIP registration or call is written behind."""
        self.metering.journal = self.journal

    def close(self) -> None:
        """Write what is waiting, then stop: the node's own shutdown releases are not written."""
        self.journal.close()
        self.metering.journal = None
        self.store.close()

    # -- writing: the current state of one key ------------------------------------------------------

    def _registration(self, aor: str) -> tuple[dict | None, list[StoredBinding]]:
        record = self.metering.registration_state(PROTOCOL, aor)
        if record is None:
            return None, []
        clock = self.core.clock
        shift = clock.wall() - clock.time()
        return record, [
            StoredBinding(aor, b.contact, dict(b.params), b.expires_at + shift, b.call_id, b.cseq,
                          _peer_row(b.source), b.user_agent)
            for b in self.core.location.bindings_of(aor)]

    def _calls(self, call_ids: set[str]) -> dict[str, list[StoredCall]]:
        out: dict[str, list[StoredCall]] = {call_id: [] for call_id in call_ids}
        clock = self.core.clock
        shift = clock.wall() - clock.time()
        for call in self.core.dialogs.with_call_ids(call_ids):
            record = self.metering.call_state(PROTOCOL, call.call_id)
            if record is None or call.state not in (ANSWERED, CONFIRMED):
                continue  # still setting up: its transactions die with the node, the caller retransmits
            out[call.call_id].append(StoredCall(call.call_id, call.from_tag, _dialog_row(call, shift), record))
        return out

    # -- reading back at start ------------------------------------------------------------------------

    def restore(self) -> Restored:
        """Refill the location service and the call table and charge each again as decided. Call
        once, before the node handles traffic."""
        done = Restored()
        clock = self.core.clock
        mono, wall = clock.time(), clock.wall()
        now = self.metering.clock()
        for aor, (record, stored) in self.store.registrations().items():
            live = [b for b in stored if b.expires_at > wall]
            if not live:
                done.expired += 1
                self.store.forget_registration(aor)
                log_event(log, "state.binding_expired_while_down", aor=aor)
                continue
            try:  # every row read before anything is charged: a bad row charges nothing
                bindings = [_binding_from_row(b, mono, wall) for b in live]
                decision = self.metering.restore_registration(PROTOCOL, aor, record, now)
            except _UNREADABLE as exc:
                done.unreadable += 1
                self.store.forget_registration(aor)
                log_event(log, "state.row_unreadable", logging.WARNING, aor=aor, error=f"{type(exc).__name__}: {exc}")
                continue
            if not decision.ok:
                done.refused += 1
                self.store.forget_registration(aor)
                log_event(log, "state.registration_not_restored", logging.WARNING, aor=aor, reason=decision.reason)
                continue
            for binding in bindings:
                self.core.location.restore(binding)
            done.bindings += len(bindings)
            done.registrations += 1
        # oldest first: the reaper walks the call table in creation order (DialogTable.reap)
        for stored in sorted(self.store.calls(), key=lambda c: c.dialog.get("created", 0.0)):
            try:
                call, session = _call_from_row(stored, mono, wall)
                decision = self.metering.restore_call(PROTOCOL, stored.call_id, stored.record, now)
            except _UNREADABLE as exc:
                done.unreadable += 1
                self.store.forget_call(stored.call_id)
                log_event(log, "state.row_unreadable", logging.WARNING, call_id=stored.call_id, error=f"{type(exc).__name__}: {exc}")
                continue
            if not decision.ok:
                done.refused += 1
                self.store.forget_call(stored.call_id)
                log_event(log, "state.call_not_restored", logging.WARNING, call_id=stored.call_id,
                          reason=decision.reason)
                continue
            self.core.calls.restore(call, session)
            done.calls += 1
        log_event(log, "state.restored", path=str(self.store.path), registrations=done.registrations,
                  bindings=done.bindings, calls=done.calls, expired_while_down=done.expired, refused=done.refused,
                  unreadable=done.unreadable)
        return done


def _binding_from_row(b: StoredBinding, mono: float, wall: float) -> Binding:
    uri = parse_uri(b.contact)
    return Binding(b.aor, uri, dict(b.params), mono + (b.expires_at - wall), b.call_id, b.cseq,
                   Peer(*b.source) if b.source else None, b.user_agent, contact_key(uri))


def _peer_row(peer: Peer | None) -> tuple[str, str, int] | None:
    return None if peer is None else (peer.transport, peer.host, peer.port)


def _dialog_row(call: Call, shift: float) -> dict:
    """What the node needs to route the call's in-dialog requests and BYE both sides (RFC 3261 §12)."""
    return {
        "from_aor": call.from_aor, "to_aor": call.to_aor, "request_uri": call.request_uri,
        "source": _peer_row(call.source), "created": call.created + shift, "started": call.started,
        "offer_sdp": call.offer_sdp.decode("latin-1"), "answer_sdp": call.answer_sdp.decode("latin-1"),
        "state": call.state, "dialogs": {tag: d.state for tag, d in call.dialogs.items()},
        "invite_cseq": call.invite_cseq, "caller_from": call.caller_from, "caller_target": call.caller_target,
        "callee_to": call.callee_to, "callee_target": call.callee_target,
        "callee_peer": _peer_row(call.callee_peer), "route_set": list(call.route_set),
        "caller_cseq": call.caller_cseq, "callee_cseq": call.callee_cseq,
        "session": [call.session.interval, call.session.refresher],
    }


def _call_from_row(stored: StoredCall, mono: float, wall: float) -> tuple[Call, Session]:
    d = stored.dialog
    source = Peer(*d["source"]) if d["source"] else Peer("udp", "0.0.0.0", 0)
    call = Call(stored.call_id, stored.from_tag, d["from_aor"], d["to_aor"], d["request_uri"], source,
                mono - (wall - d["created"]), d["started"], offer_sdp=d["offer_sdp"].encode("latin-1"),
                answer_sdp=d["answer_sdp"].encode("latin-1"), state=d["state"],
                dialogs={tag: Dialog(tag, state, mono) for tag, state in d["dialogs"].items()},
                invite_cseq=d["invite_cseq"], caller_from=d["caller_from"], caller_target=d["caller_target"],
                callee_to=d["callee_to"], callee_target=d["callee_target"],
                callee_peer=Peer(*d["callee_peer"]) if d["callee_peer"] else None,
                route_set=tuple(d["route_set"]), caller_cseq=d["caller_cseq"], callee_cseq=d["callee_cseq"])
    return call, Session(*d["session"])
