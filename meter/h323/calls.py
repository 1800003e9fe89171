"""The gatekeeper's call table: one row per call, keyed by its callIdentifier GUID, O(1) by endpoint too.

One call is what both parties' ARQs name with the same callIdentifier (the caller's ARQ and the
callee's ARQ with answerCall TRUE): each admitted ARQ is a *leg* of the one :class:`RasCall`.
(What a call costs is the metering join's ``meter.metering.join.CallRecord``, keyed by the same GUID.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator

from meter.codecs.ras import ZERO_GUID, TransportAddress, guid_str
from meter.h323.hooks import Party


def call_key(call_identifier: bytes | None, conference_id: bytes | None) -> bytes | None:
    """callIdentifier (H.225.0 v2 and later); a v1 endpoint sends none (zero GUID): its conferenceID then."""
    if call_identifier and call_identifier != ZERO_GUID:
        return call_identifier
    if conference_id and conference_id != ZERO_GUID:
        return conference_id
    return None


@dataclass(slots=True, eq=False)
class Leg:
    """One party's admitted ARQ."""

    endpoint_id: str
    answer_call: bool
    call_reference_value: int
    bandwidth: int
    dest_address: TransportAddress | None  # what its ACF said (repeated to a retransmitted ARQ)
    admitted_at: float
    last_seen: float  # ARQ, or the last IRR that listed the call
    irq_seq: int | None = None  # the IRQ polling it, while unanswered
    irq_sent_at: float | None = None
    irq_attempts: int = 0


@dataclass(slots=True, eq=False)
class RasCall:
    """A row of the gatekeeper's call table: the parties as the first ARQ named them, and its legs."""

    key: bytes
    call_identifier: bytes  # as the ARQ sent it (the zero GUID from a v1 endpoint)
    conference_id: bytes
    created_at: float
    started_wall: float
    caller: Party
    callee: Party
    resolved: str | None
    bandwidth: int
    legs: dict[tuple[str, bool], Leg] = field(default_factory=dict)  # (endpoint_id, answer_call) -> leg

    @property
    def call_key(self) -> str:
        """The key the hooks see."""
        return guid_str(self.key)


class CallTable:
    def __init__(self) -> None:
        self.by_key: dict[bytes, RasCall] = {}
        self.by_endpoint: dict[str, set[bytes]] = {}
        # Told the key of every call that changed (added, a leg admitted, its bandwidth, ended): the
        # write-behind journal (meter.store.h323_state) marks it, None writes nothing.
        self.changed: Callable[[bytes], None] | None = None

    def touch(self, key: bytes) -> None:
        """A call changed in place (a leg's bandwidth)."""
        if self.changed is not None:
            self.changed(key)

    def __len__(self) -> int:
        return len(self.by_key)

    def __iter__(self) -> Iterator[RasCall]:
        return iter(list(self.by_key.values()))

    def get(self, key: bytes | None) -> RasCall | None:
        return None if key is None else self.by_key.get(key)

    def add(self, call: RasCall) -> None:
        self.by_key[call.key] = call
        self.touch(call.key)

    def add_leg(self, call: RasCall, leg: Leg) -> None:
        call.legs[(leg.endpoint_id, leg.answer_call)] = leg
        self.by_endpoint.setdefault(leg.endpoint_id, set()).add(call.key)
        self.touch(call.key)

    def of_endpoint(self, endpoint_id: str) -> list[RasCall]:
        return [self.by_key[k] for k in self.by_endpoint.get(endpoint_id, ()) if k in self.by_key]

    def remove(self, key: bytes) -> RasCall | None:
        call = self.by_key.pop(key, None)
        if call is not None:
            for endpoint_id, _ in call.legs:
                keys = self.by_endpoint.get(endpoint_id)
                if keys is not None:
                    keys.discard(key)
                    if not keys:
                        del self.by_endpoint[endpoint_id]
            self.touch(key)
        return call
