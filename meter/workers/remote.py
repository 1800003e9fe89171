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
from meter.sip.hooks import ALLOW, PendingVerdict, Verdict
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

    def __init__(self, send: Callable[[tuple], None], zones: ZoneTable, *, inline: bool,
                 clock: Callable[[], float] = lambda: 0.0, settled: float = 32.0) -> None:
        super().__init__(_ZonesOnly(zones), inline=inline)  # only the zone questions use it
        self._send = send
        self._clock = clock  # the core's monotonic clock: the owner's too (one machine)
        # A binding with more than this left cannot expire in the owner before this worker's
        # answer to a refresh reaches it: Timer F (64*T1), the longest an inline REGISTER waits.
        self._settled = settled
        self._ids = itertools.count(1)
        self._waiting: dict[int, PendingVerdict] = {}
        self.location = None  # the worker core's location: each change sends the AOR's whole set
        self.closed = False
        self.siblings: frozenset[tuple[str, int]] = frozenset()  # every worker's own address
        # AOR -> what the owner holds of its bindings (keys, sources, User-Agents, parameters), as
        # last sent or received: a change that leaves it alone is a refresh, sent in a few bytes.
        self._known: dict[str, tuple] = {}
        # A standalone REGISTER's 200 that adds or changes a contact waits for the owner's "ack":
        # by then the owner has sent the bindings on to every other worker, so a call placed the
        # moment the phone sees its 200 finds it whichever worker it reaches (one process: at once).
        self._held: tuple | None = None  # the 200 just asked for, until on_bindings claims it
        self._acks: dict[int, tuple] = {}  # ack id -> a held 200
        self.replicas_seen = 0  # the number of the owner's last replica applied, told with each change
        self._refreshing: str | None = None  # the alias whose refresh this worker allowed itself

    def zone_destination(self, host: str, port: int) -> bool:
        """A sibling worker is a place requests may be relayed to: an in-dialog request that
        reached this worker by the shared port follows its Route to the worker holding the dialog."""
        return (host, port) in self.siblings or super().zone_destination(host, port)

    # -- questions ----------------------------------------------------------------------------------

    def on_register(self, info) -> PendingVerdict | Verdict:
        if not info.contacts or info.contacts == ("*",) or (info.expires == 0 and len(info.contacts) == 1):
            return ALLOW  # a query, a removal: nothing to charge (as SipMetering.on_register)
        if self._charged(info.aor):
            self._refreshing = info.aor
            return ALLOW  # a refresh: the alias is charged (R9, once per alias) and stays so
        return self._ask("register", info)

    def _charged(self, aor: str) -> bool:
        """Does the node charge ``aor`` now, for longer than this REGISTER can take? A live binding
        means the owner charged it (a charged alias is never reclassified, meter.metering.join);
        only the owner's expiry or an unregister releases it, and its "bindings" answer comes first."""
        location = self.location
        if location is None:
            return False
        limit = self._clock() + self._settled
        return any(b.expires_at > limit for b in location.bindings_of(aor))

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
        held, self._acks = list(self._acks.values()), {}
        for answer in held:  # bound here already: the phone is told, as one process would
            _send_reply(answer)

    def hold_register_answers(self, reply: Callable, call_soon: Callable) -> Callable:
        """The registrar's ``reply``, wrapped: a REGISTER's 2xx is held for :meth:`on_bindings`."""

        def reply_when_known(txn, status, reason=None, headers=()) -> None:
            if 200 <= status < 300 and txn.request.method == "REGISTER" and not self.closed:
                if self._held is not None:  # unclaimed: on_bindings follows its 200 at once or never
                    _send_reply(self._held)
                held = self._held = (reply, txn, status, reason, headers)
                call_soon(self._release_unclaimed, held)  # a query changes nothing: answered at once
                return
            reply(txn, status, reason, headers)

        return reply_when_known

    def _release_unclaimed(self, held: tuple) -> None:
        if self._held is held:
            self._held = None
            _send_reply(held)

    def apply(self, message: tuple) -> bool:
        """One message from the owner (``meter.workers.pool``); False for "stop"."""
        kind = message[0]
        if kind == "verdict":
            self.answered(message[1], message[2])
        elif kind == "ack":
            held = self._acks.pop(message[1], None)
            if held is not None:
                _send_reply(held)
        elif kind == "replica":  # an AOR's bindings as the owner holds them now
            aor = message[1]
            self.location.replace(aor, message[2])
            self.replicas_seen = message[3]
            self._remember(aor, self.location.bindings_of(aor))
        elif kind == "refreshed":  # another worker's refresh: new expiries, same bindings
            if not self.location.refresh(message[1], message[2]):
                self._send(("want", message[1]))  # this replica differs: the whole set, please
        elif kind == "resend":  # the owner's set differs from what this worker thought it held
            self._send_whole(message[1])
        elif kind == "siblings":
            self.siblings = message[1]
        elif kind == "stop":
            return False
        return True

    # -- outcomes, in order ------------------------------------------------------------------------

    def on_register_failed(self, aor, call_id, cause) -> None:
        self._send(("register_failed", aor, call_id, cause))

    def on_bindings(self, aor, bindings, user_agent, source, now) -> None:
        held, self._held = self._held, None
        refreshing, self._refreshing = self._refreshing == aor, None
        whole = self.location.bindings_of(aor)
        # Only a refresh this worker allowed itself (far from expiry) travels as expiries: one the
        # owner answered may cross the owner's own change (its expiry), and goes whole.
        if refreshing and whole and self._known.get(aor) == binding_signature(whole):
            # A refresh (the usual REGISTER): new expiry, CSeq and Call-ID only; every worker can
            # reach the alias already, so its 200 goes at once.
            updates = tuple((b.key, b.expires_at, b.cseq, b.call_id) for b in whole)
            self._send(("refresh", aor, updates, user_agent, source, now, self.replicas_seen))
            if held is not None:
                _send_reply(held)
            return
        self._remember(aor, whole)
        ack = None
        if held is not None:
            ack = next(self._ids)
            self._acks[ack] = held
        self._send(("bindings", aor, whole, tuple(bindings), user_agent, source, now, self.replicas_seen, ack))

    def _send_whole(self, aor: str) -> None:
        """The owner asked again ("resend"): the whole set; it tells the metering what it now holds."""
        whole = self.location.bindings_of(aor)
        last = whole[-1] if whole else None
        self._remember(aor, whole)
        self._send(("bindings", aor, whole, (), last.user_agent if last else "", last.source if last else None,
                    None, self.replicas_seen, None))

    def _remember(self, aor: str, whole) -> None:
        if whole:
            self._known[aor] = binding_signature(whole)
        else:
            self._known.pop(aor, None)

    def on_call_answered(self, call_id, offer_sdp, answer_sdp) -> None:
        self._send(("answered", call_id, offer_sdp, answer_sdp))

    def on_call_confirmed(self, call_id) -> None:
        self._send(("confirmed", call_id))

    def on_call_ended(self, call_id, cause) -> None:
        self._send(("ended", call_id, cause))


def _send_reply(held: tuple) -> None:
    reply, txn, status, reason, headers = held
    reply(txn, status, reason, headers)


def binding_signature(bindings) -> tuple:
    """What a refresh leaves unchanged: which contacts, from where, by what, with what parameters."""
    return tuple((b.key, b.source, b.user_agent, tuple(b.params.items())) for b in bindings)
