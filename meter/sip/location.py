"""The location service (RFC 3261 §10, §16.5; Kamailio's usrloc): bindings per address of record,
written by the standalone registrar's rules (RFC 3261 §10.3) or, inline, learned from the upstream
registrar's 200 OK. Sans-I/O: ``now`` is an argument. REGISTER handling is ``meter.sip.registrar``.

Lookups are O(1) by AOR, by contact and by flow (where a binding's REGISTER came from); expiry
pops a heap, so a housekeeping tick costs only what actually expired.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field

from meter.codecs.sip import URI, NameAddr
from meter.sip.peer import Peer

# One AOR with more bindings than this is refused (503): it bounds the memory one client can take.
# Kamailio's max_contacts is unlimited by default; real devices register 1-3 contacts, a room system
# with shared lines fewer than 10.
MAX_BINDINGS_PER_AOR = 32


class RegistrarError(Exception):
    """A REGISTER the registrar refuses: status, reason phrase and extra response headers."""

    def __init__(self, status: int, reason: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.headers = headers


def contact_key(uri: URI) -> tuple:
    """What identifies a contact for binding updates and Request-URI matches (RFC 3261 §10.3
    step 7 compares URIs per §19.1.4; user, host and port decide for the URIs devices send)."""
    default = 5061 if uri.scheme == "sips" else 5060
    return (uri.scheme, uri.user, uri.host.lower(), uri.port or default)


@dataclass(slots=True)
class Binding:
    aor: str
    uri: URI
    params: dict[str, str | None]
    """Contact parameters other than expires (q, +sip.instance, reg-id...), reflected in the 200."""
    expires_at: float
    call_id: str
    cseq: int
    source: Peer | None
    """Where the REGISTER came from; a TCP binding is reached back through that connection."""
    user_agent: str
    key: tuple = field(default=())
    contact: str = ""
    """The contact URI as text."""
    _value: str = ""  # "<uri>;params" without expires, built once: every 200 OK lists it

    def __post_init__(self) -> None:
        if not self.contact:
            self.contact = str(self.uri)
        self._value = str(NameAddr(None, self.uri, self.params))

    def remaining(self, now: float) -> int:
        return max(0, int(self.expires_at - now + 0.5))

    def contact_value(self, now: float) -> str:
        """The binding as a Contact value for a 200 OK (RFC 3261 §10.3 step 8)."""
        return f"{self._value};expires={self.remaining(now)}"


@dataclass(frozen=True, slots=True)
class RegisterRequest:
    """What the registrar needs from a REGISTER (RFC 3261 §10.3)."""

    aor: str
    contacts: tuple[NameAddr, ...]
    star: bool
    expires: int | None
    """The Expires header, if any."""
    call_id: str
    cseq: int
    source: Peer | None
    user_agent: str


@dataclass(frozen=True, slots=True)
class Change:
    """The bindings of one AOR after a change (empty: no longer registered)."""

    aor: str
    bindings: tuple[Binding, ...]
    user_agent: str
    source: Peer | None


@dataclass(frozen=True, slots=True)
class RegisterPlan:
    """A REGISTER the registrar's checks passed: what :meth:`LocationService.apply` will do."""

    request: RegisterRequest
    updates: tuple[tuple[tuple, NameAddr, int], ...]  # (contact key, contact, expires; 0 = remove)


class LocationService:
    def __init__(self, min_expires: int = 60, max_expires: int = 3600, default_expires: int = 3600) -> None:
        self.min_expires = min_expires
        self.max_expires = max_expires
        self.default_expires = default_expires
        self._aors: dict[str, dict[tuple, Binding]] = {}
        self._by_contact: dict[tuple, Binding] = {}
        # (flow, AOR) -> contact keys of the AOR's bindings registered over that flow: "registered"
        # means the request came over a binding's flow (RFC 5626 §5.2 style), an O(1) question.
        self._by_flow: dict[tuple[Peer, str], set[tuple]] = {}
        self._known: set[str] = set()  # AORs that ever had a binding: 480 rather than 404 for them
        self._heap: list[tuple[float, int, str, tuple]] = []
        self._seq = itertools.count()

    # -- reading --------------------------------------------------------------------------------

    def lookup(self, aor: str, now: float) -> list[Binding]:
        """Live bindings of ``aor``, highest q first (RFC 3261 §16.6: the order to try)."""
        table = self._aors.get(aor)
        if not table:
            return []
        live = [b for b in table.values() if b.expires_at > now]
        live.sort(key=lambda b: -_q(b))
        return live

    def by_contact(self, uri: URI, now: float) -> Binding | None:
        b = self._by_contact.get(contact_key(uri))
        return b if b is not None and b.expires_at > now else None

    def registered_over(self, aor: str, flow: Peer, now: float) -> bool:
        """Did a request from ``flow`` come over a live binding of ``aor``: the transport, address
        and port its REGISTER came from, and for TCP the same connection (RFC 5626 §5.2)?"""
        keys = self._by_flow.get((flow, aor))
        if not keys:
            return False
        table = self._aors.get(aor, {})
        return any(b.expires_at > now for b in (table.get(k) for k in keys) if b is not None)

    def is_known(self, aor: str) -> bool:
        return aor in self._known

    def bindings(self) -> list[Binding]:
        return [b for table in self._aors.values() for b in table.values()]

    def __len__(self) -> int:
        return len(self._by_contact)

    @property
    def aor_count(self) -> int:
        return len(self._aors)

    # -- standalone REGISTER (RFC 3261 §10.3) ------------------------------------------------------

    def expires_for(self, contact: NameAddr | None, header: int | None) -> int:
        """RFC 3261 §10.3 step 6: the contact's expires parameter, else the Expires header, else the default."""
        if contact is not None and contact.expires is not None:
            return contact.expires
        if header is not None:
            return header
        return self.default_expires

    def register(self, req: RegisterRequest, now: float) -> Change | None:
        """Check and apply one REGISTER atomically (:meth:`check`, then :meth:`apply`)."""
        return self.apply(self.check(req), now)

    def check(self, req: RegisterRequest) -> RegisterPlan:
        """RFC 3261 §10.3 steps 6-7 without changing anything: raises :class:`RegistrarError` for
        400/423/500/503, so a refused REGISTER is refused before anyone charges for it."""
        table = self._aors.get(req.aor, {})
        if req.star:
            # RFC 3261 §10.3 step 6: "*" only with Expires: 0 and no other Contact.
            if req.expires != 0 or req.contacts:
                raise RegistrarError(400, "Bad Request - Contact * needs Expires: 0 and no other Contact")
            return RegisterPlan(req, ())
        plan: list[tuple[tuple, NameAddr, int]] = []
        for contact in req.contacts:
            expires = self.expires_for(contact, req.expires)
            if 0 < expires < self.min_expires:
                # RFC 3261 §10.3 step 6: 423 Interval Too Brief with Min-Expires.
                raise RegistrarError(423, "Interval Too Brief", (("Min-Expires", str(self.min_expires)),))
            key = contact_key(contact.uri)
            old = table.get(key)
            if old is not None and old.call_id == req.call_id and req.cseq <= old.cseq:
                # RFC 3261 §10.3 step 7: same Call-ID and not a higher CSeq: abort the whole update.
                raise RegistrarError(500, "Server Internal Error - out-of-order REGISTER")
            plan.append((key, contact, min(expires, self.max_expires)))
        adding = sum(1 for key, _, e in plan if e and key not in table)
        if len(table) + adding > MAX_BINDINGS_PER_AOR:
            raise RegistrarError(503, "Service Unavailable - too many contacts for this address")
        return RegisterPlan(req, tuple(plan))

    def apply(self, plan: RegisterPlan, now: float) -> Change | None:
        """The AOR's bindings after a checked REGISTER, or None for a query (no Contact)."""
        req = plan.request
        if req.star:
            for key, b in list(self._aors.get(req.aor, {}).items()):
                if b.call_id == req.call_id and req.cseq <= b.cseq:
                    continue  # step 6: only bindings this request is newer than
                self._drop(req.aor, key)
            return self._change(req.aor, now, req.user_agent, req.source)
        if not req.contacts:
            return None  # RFC 3261 §10.2.3: a query; the 200 lists the bindings
        for key, contact, expires in plan.updates:
            if expires == 0:
                self._drop(req.aor, key)
            else:
                params = {k: v for k, v in contact.params.items() if k != "expires"}
                self._put(Binding(req.aor, contact.uri, params, now + expires, req.call_id, req.cseq,
                                  req.source, req.user_agent, key))
        return self._change(req.aor, now, req.user_agent, req.source)

    # -- inline: learned from the upstream's 200 OK --------------------------------------------------

    def learn(self, aor: str, contacts: list[tuple[NameAddr, int]], *, call_id: str, cseq: int,
              source: Peer | None, sent: set[tuple], user_agent: str, now: float) -> Change:
        """The upstream's 200 OK lists every binding of ``aor`` (RFC 3261 §10.3 step 8): replace ours.
        Contacts the forwarded REGISTER carried (``sent`` keys) are reached through ``source``."""
        old = self._aors.get(aor, {})
        fresh: dict[tuple, Binding] = {}
        for contact, expires in contacts:
            if expires <= 0:
                continue
            key = contact_key(contact.uri)
            prev = old.get(key)
            src = source if key in sent else (prev.source if prev is not None else None)
            ua = user_agent if key in sent else (prev.user_agent if prev is not None else "")
            params = {k: v for k, v in contact.params.items() if k != "expires"}
            fresh[key] = Binding(aor, contact.uri, params, now + expires, call_id, cseq, src, ua, key)
        for key in list(old):
            if key not in fresh:
                self._drop(aor, key)
        for b in fresh.values():
            self._put(b)
        return self._change(aor, now, user_agent, source)

    # -- expiry and shutdown ---------------------------------------------------------------------

    def expire(self, now: float) -> list[Change]:
        """Drop bindings whose time is up; one Change per AOR that lost any."""
        touched: dict[str, Binding] = {}
        heap = self._heap
        while heap and heap[0][0] <= now:
            when, _, aor, key = heapq.heappop(heap)
            b = self._aors.get(aor, {}).get(key)
            if b is None or b.expires_at != when:
                continue  # refreshed or removed since: a stale heap entry
            self._drop(aor, key)
            touched[aor] = b
        return [self._change(aor, now, b.user_agent, b.source) for aor, b in touched.items()]

    def clear(self) -> list[Change]:
        """Forget every binding (node shutdown): one empty Change per AOR."""
        changes = []
        for aor, table in list(self._aors.items()):
            last = next(iter(table.values()), None)
            changes.append(Change(aor, (), last.user_agent if last else "", last.source if last else None))
        self._aors.clear()
        self._by_contact.clear()
        self._by_flow.clear()
        self._heap.clear()
        return changes

    # -- restart (meter.store.state) -------------------------------------------------------------

    def bindings_of(self, aor: str) -> list[Binding]:
        """Every binding of ``aor``, expired or not (what the state journal writes)."""
        return list(self._aors.get(aor, {}).values())

    def restore(self, b: Binding) -> None:
        """A binding written before a restart, with its remaining expiry (Kamailio usrloc's
        preload): lookups route to it and a refresh from its contact updates it (RFC 3261 §10.3
        step 7 compares the stored Call-ID and CSeq)."""
        self._put(b)

    def replace(self, aor: str, bindings: list[Binding]) -> None:
        """``aor``'s bindings as another worker of this node now has them (meter.workers): the
        whole set, so a contact it removed goes here too."""
        keep = {b.key for b in bindings}
        for key in [k for k in self._aors.get(aor, {}) if k not in keep]:
            self._drop(aor, key)
        for b in bindings:
            self._put(b)

    def refresh(self, aor: str, updates) -> bool:
        """A refresh another worker made: (contact key, expires_at, cseq, call_id) for each of
        ``aor``'s bindings, the set unchanged. False, changing nothing, when the keys differ
        from the ones held here (then the whole set is needed: :meth:`replace`)."""
        table = self._aors.get(aor)
        if table is None or len(table) != len(updates) or any(key not in table for key, *_ in updates):
            return False
        for key, expires_at, cseq, call_id in updates:
            b = table[key]
            if b.expires_at != expires_at:
                b.expires_at = expires_at
                heapq.heappush(self._heap, (expires_at, next(self._seq), aor, key))
            b.cseq, b.call_id = cseq, call_id
        return True

    # -- internals -------------------------------------------------------------------------------

    def _put(self, b: Binding) -> None:
        table = self._aors.setdefault(b.aor, {})
        old = table.get(b.key)
        if old is not None:
            self._unflow(old)
        table[b.key] = b
        if b.source is not None:
            self._by_flow.setdefault((b.source, b.aor), set()).add(b.key)
        self._by_contact[b.key] = b
        self._known.add(b.aor)
        heapq.heappush(self._heap, (b.expires_at, next(self._seq), b.aor, b.key))

    def _drop(self, aor: str, key: tuple) -> None:
        table = self._aors.get(aor)
        if table is None:
            return
        b = table.pop(key, None)
        if not table:
            del self._aors[aor]
        if b is not None:
            self._unflow(b)
        if b is not None and self._by_contact.get(key) is b:
            del self._by_contact[key]

    def _unflow(self, b: Binding) -> None:
        if b.source is None:
            return
        flow = (b.source, b.aor)
        keys = self._by_flow.get(flow)
        if keys is not None:
            keys.discard(b.key)
            if not keys:
                del self._by_flow[flow]

    def _change(self, aor: str, now: float, user_agent: str, source: Peer | None) -> Change:
        return Change(aor, tuple(self.lookup(aor, now)), user_agent, source)


def _q(b: Binding) -> float:
    try:
        return float(b.params.get("q") or 1.0)
    except ValueError:
        return 1.0
