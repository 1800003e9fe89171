"""The gatekeeper's registration table: O(1) by endpoint identifier, by alias and by call signalling address.

Pure data: no messages, no hooks. Expiry is a heap of (expires_at, endpoint_id) with lazy deletion:
a refresh pushes a new entry, stale ones are skipped when they surface (bounded by the refreshes
made within one time-to-live).
"""

from __future__ import annotations

import dataclasses
import heapq
import math
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from meter.codecs.ras import Alias, RasMessage, TransportAddress, Vendor

# Alias types that name the same thing share one key space; the free-text ones compare without case
# (VCS/Expressway match H.323 IDs and URIs case-insensitively). An E.164 number is the same number
# whether it came as dialledDigits or partyNumber.
_ALIAS_SPACE = {
    "dialledDigits": "e164", "partyNumber": "e164",
    "h323-ID": "h323-ID", "url-ID": "url-ID", "email-ID": "email-ID", "transportID": "transportID",
}
_CASELESS = frozenset({"h323-ID", "url-ID", "email-ID"})

#: Alias types the codec can encode back (RCF terminalAlias, RRJ duplicateAlias, LCF destinationInfo).
ENCODABLE_ALIAS_TYPES = frozenset({"h323-ID", "dialledDigits", "url-ID", "email-ID", "transportID", "partyNumber"})


def without_nul_padding(msg: RasMessage) -> RasMessage:
    """``msg`` with trailing NULs stripped from its endpointIdentifier and aliases.

    OpenH323-based endpoints pad the endpointIdentifier (a BMPString) to 100 characters with NULs in
    their ARQ; "ep1" and "ep1\\0\\0..." name the same registration, and an alias likewise. Only the
    decoded view is normalised: what is relayed (inline) goes on as it came.
    """
    eid = msg.endpoint_identifier
    changes: dict = {}
    if eid and eid.endswith("\0"):
        changes["endpoint_identifier"] = eid.rstrip("\0")
    for name in ("aliases", "destination", "dest_extra_call_info", "duplicate_aliases"):
        aliases = getattr(msg, name)
        if any(a.value.endswith("\0") for a in aliases):
            changes[name] = tuple(Alias(a.type, a.value.rstrip("\0")) for a in aliases)
    return dataclasses.replace(msg, **changes) if changes else msg


def alias_key(alias: Alias) -> tuple[str, str]:
    space = _ALIAS_SPACE.get(alias.type, alias.type)
    return space, alias.value.casefold() if space in _CASELESS else alias.value


def unique_aliases(aliases: Iterable[Alias]) -> tuple[Alias, ...]:
    """The aliases in order, each key once (an RRQ may repeat one)."""
    seen: set[tuple[str, str]] = set()
    out = []
    for alias in aliases:
        key = alias_key(alias)
        if key not in seen:
            seen.add(key)
            out.append(alias)
    return tuple(out)


def encodable(aliases: Iterable[Alias]) -> tuple[Alias, ...]:
    return tuple(a for a in aliases if a.type in ENCODABLE_ALIAS_TYPES)


@dataclass(slots=True, eq=False)
class Registration:
    endpoint_id: str
    aliases: tuple[Alias, ...]
    ras_address: TransportAddress
    call_signal_addresses: tuple[TransportAddress, ...]
    vendor: Vendor | None
    endpoint_type: str | None
    source: TransportAddress
    registered_at: float
    time_to_live: int | None = None
    expires_at: float = math.inf
    keys: frozenset = frozenset()  # alias keys of `aliases`

    @property
    def call_signal_address(self) -> TransportAddress | None:
        return self.call_signal_addresses[0] if self.call_signal_addresses else None


class RegistrationTable:
    def __init__(self) -> None:
        self.by_id: dict[str, Registration] = {}
        self.by_alias: dict[tuple[str, str], str] = {}
        self.by_address: dict[TransportAddress, str] = {}
        self._expiry: list[tuple[float, str]] = []
        # Told the endpoint identifier of every registration that changed (added, refreshed, altered,
        # removed): the write-behind journal (meter.store.h323_state) marks it, None writes nothing.
        self.changed: Callable[[str], None] | None = None

    def _changed(self, endpoint_id: str) -> None:
        if self.changed is not None:
            self.changed(endpoint_id)

    def __len__(self) -> int:
        return len(self.by_id)

    def __iter__(self) -> Iterator[Registration]:
        return iter(list(self.by_id.values()))

    def get(self, endpoint_id: str | None) -> Registration | None:
        return None if endpoint_id is None else self.by_id.get(endpoint_id)

    def owner(self, alias: Alias) -> Registration | None:
        endpoint_id = self.by_alias.get(alias_key(alias))
        return None if endpoint_id is None else self.by_id.get(endpoint_id)

    def at_address(self, addresses: Iterable[TransportAddress]) -> Registration | None:
        for address in addresses:
            endpoint_id = self.by_address.get(address)
            if endpoint_id is not None:
                return self.by_id[endpoint_id]
        return None

    def conflicts(self, aliases: Iterable[Alias], endpoint_id: str | None) -> tuple[Alias, ...]:
        """The aliases another endpoint than ``endpoint_id`` already holds."""
        return tuple(a for a in aliases if self.by_alias.get(alias_key(a), endpoint_id) != endpoint_id)

    def add(self, reg: Registration) -> None:
        self.by_id[reg.endpoint_id] = reg
        self._index_aliases(reg, reg.aliases)
        self._index_addresses(reg, reg.call_signal_addresses)
        self._changed(reg.endpoint_id)

    def restore(self, reg: Registration) -> None:
        """Put back a registration of the last run (meter.store.h323_state) with its own expiry."""
        self.add(reg)
        if reg.time_to_live is not None:
            heapq.heappush(self._expiry, (reg.expires_at, reg.endpoint_id))

    def update(self, reg: Registration, *, aliases: tuple[Alias, ...],
               call_signal_addresses: tuple[TransportAddress, ...]) -> tuple[Alias, ...]:
        """Replace a registration's aliases and addresses; returns the aliases it no longer holds."""
        new_keys = frozenset(map(alias_key, aliases))
        dropped = tuple(a for a in reg.aliases if alias_key(a) not in new_keys)
        self._unindex_aliases(reg, dropped)
        self._unindex_addresses(reg)
        self._index_aliases(reg, aliases)
        self._index_addresses(reg, call_signal_addresses)
        self._changed(reg.endpoint_id)
        return dropped

    def remove_aliases(self, reg: Registration, aliases: Iterable[Alias]) -> tuple[Alias, ...]:
        """Drop some aliases (partial URQ); returns those it actually held."""
        gone = frozenset(map(alias_key, aliases))
        dropped = tuple(a for a in reg.aliases if alias_key(a) in gone)
        self._unindex_aliases(reg, dropped)
        kept = tuple(a for a in reg.aliases if alias_key(a) not in gone)
        reg.aliases, reg.keys = kept, frozenset(map(alias_key, kept))
        self._changed(reg.endpoint_id)
        return dropped

    def remove(self, endpoint_id: str) -> Registration | None:
        reg = self.by_id.pop(endpoint_id, None)
        if reg is not None:
            self._unindex_aliases(reg, reg.aliases)
            self._unindex_addresses(reg)
            self._changed(endpoint_id)
        return reg

    # -- time-to-live

    def refresh(self, reg: Registration, time_to_live: int | None, now: float, grace: float = 0.0) -> None:
        """Restart the time-to-live; the registration expires ``grace`` seconds after it runs out."""
        reg.time_to_live = time_to_live
        reg.expires_at = math.inf if time_to_live is None else now + time_to_live + grace
        if time_to_live is not None:
            heapq.heappush(self._expiry, (reg.expires_at, reg.endpoint_id))
        self._changed(reg.endpoint_id)  # a keep-alive moves the expiry a restart carries over

    def expired(self, now: float) -> list[Registration]:
        """Registrations whose time-to-live has run out (still in the table: the caller removes them)."""
        out = []
        heap = self._expiry
        while heap and heap[0][0] <= now:
            when, endpoint_id = heapq.heappop(heap)
            reg = self.by_id.get(endpoint_id)
            if reg is not None and reg.expires_at == when:  # else refreshed since, or gone
                out.append(reg)
        return out

    # -- indexes

    def _index_aliases(self, reg: Registration, aliases: tuple[Alias, ...]) -> None:
        for alias in aliases:
            self.by_alias[alias_key(alias)] = reg.endpoint_id
        if aliases is not reg.aliases:
            reg.aliases = aliases
        reg.keys = frozenset(map(alias_key, reg.aliases))

    def _unindex_aliases(self, reg: Registration, aliases: Iterable[Alias]) -> None:
        for alias in aliases:
            key = alias_key(alias)
            if self.by_alias.get(key) == reg.endpoint_id:  # inline: the upstream may let two hold one
                del self.by_alias[key]

    def _index_addresses(self, reg: Registration, addresses: tuple[TransportAddress, ...]) -> None:
        reg.call_signal_addresses = addresses
        for address in addresses:
            self.by_address[address] = reg.endpoint_id

    def _unindex_addresses(self, reg: Registration) -> None:
        for address in reg.call_signal_addresses:
            if self.by_address.get(address) == reg.endpoint_id:
                del self.by_address[address]
