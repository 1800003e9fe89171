"""A worker's SIP hooks: questions go to the owner and come back later, outcomes are told in order.

The SIP core (``meter.sip.hooks``) asks ``on_register``/``on_invite`` and gets a
:class:`PendingVerdict` the owner resolves; every other hook is a message on the same link, so the
owner hears a call's answer after its question and its end after its answer. The zone questions
(``trusted_source``, ``route`` ...) depend only on the configuration and are answered here.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable

from meter.logs import log_event
from meter.metering.sip import SipMetering
from meter.sip.hooks import PendingVerdict, Verdict
from meter.zones import ZoneTable

log = logging.getLogger("meter.workers")

# What a question still waiting gets when the owner is gone: nothing is charged, nothing may pass.
OWNER_GONE = Verdict(False, 503, "Service Unavailable", "licensing process unavailable")


class _ZonesOnly:
    """The part of the metering join that the zone questions read."""

    __slots__ = ("zones",)

    def __init__(self, zones: ZoneTable) -> None:
        self.zones = zones


class RemoteHooks(SipMetering):
    """``send`` writes one message to the owner (``meter.workers.link.frame`` is applied by it)."""

    def __init__(self, send: Callable[[tuple], None], zones: ZoneTable, *, inline: bool) -> None:
        super().__init__(_ZonesOnly(zones), inline=inline)  # only the zone questions use it
        self._send = send
        self._ids = itertools.count(1)
        self._waiting: dict[int, PendingVerdict] = {}
        self.location = None  # the worker core's location: each change sends the AOR's whole set
        self.closed = False
        self.siblings: frozenset[tuple[str, int]] = frozenset()  # every worker's own address
        self.replicas_seen = 0  # the number of the owner's last replica applied, told with each change

    def zone_destination(self, host: str, port: int) -> bool:
        """A sibling worker is a place requests may be relayed to: an in-dialog request that
        reached this worker by the shared port follows its Route to the worker holding the dialog."""
        return (host, port) in self.siblings or super().zone_destination(host, port)

    # -- questions ----------------------------------------------------------------------------------

    def on_register(self, info) -> PendingVerdict:
        return self._ask("register", info)

    def on_invite(self, info) -> PendingVerdict:
        return self._ask("invite", info)

    def _ask(self, kind: str, info) -> PendingVerdict:
        pending = PendingVerdict()
        if self.closed:
            pending.resolve(OWNER_GONE)
            return pending
        rid = next(self._ids)
        self._waiting[rid] = pending
        self._send(("ask", kind, rid, info))
        return pending

    def answered(self, rid: int, verdict: Verdict) -> None:
        pending = self._waiting.pop(rid, None)
        if pending is not None:
            pending.resolve(verdict)

    def owner_gone(self) -> None:
        """The link closed: every question still waiting is refused, later ones at once."""
        self.closed = True
        waiting, self._waiting = self._waiting, {}
        if waiting:
            log_event(log, "workers.owner_gone", logging.WARNING, refused=len(waiting))
        for pending in waiting.values():
            pending.resolve(OWNER_GONE)

    def apply(self, message: tuple) -> bool:
        """One message from the owner (``meter.workers.pool``); False for "stop"."""
        kind = message[0]
        if kind == "verdict":
            self.answered(message[1], message[2])
        elif kind == "replica":  # an AOR's bindings as the owner holds them now
            self.location.replace(message[1], message[2])
            self.replicas_seen = message[3]
        elif kind == "siblings":
            self.siblings = message[1]
        elif kind == "stop":
            return False
        return True

    # -- outcomes, in order ------------------------------------------------------------------------

    def on_register_failed(self, aor, call_id, cause) -> None:
        self._send(("register_failed", aor, call_id, cause))

    def on_bindings(self, aor, bindings, user_agent, source, now) -> None:
        whole = self.location.bindings_of(aor) if self.location is not None else []
        self._send(("bindings", aor, whole, tuple(bindings), user_agent, source, now, self.replicas_seen))

    def on_call_answered(self, call_id, offer_sdp, answer_sdp) -> None:
        self._send(("answered", call_id, offer_sdp, answer_sdp))

    def on_call_confirmed(self, call_id) -> None:
        self._send(("confirmed", call_id))

    def on_call_ended(self, call_id, cause) -> None:
        self._send(("ended", call_id, cause))
