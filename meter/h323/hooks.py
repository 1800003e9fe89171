"""The RAS gatekeeper's hook contract: where it tells the metering join what happens (docs/design.md principle 4).

Hooks, not policy: the gatekeeper calls a :class:`RasHooks` object at fixed points and the metering
join (``meter.metering.h323``) plugs in there; the licensing decisions stay in the join. The
contract the gatekeeper keeps (standalone and inline alike):

- ``on_register`` before every full RRQ is confirmed (standalone) or forwarded upstream (inline);
  a refusal answers RRJ with the verdict's reason (``resourceUnavailable``). Keep-alive RRQs do not
  ask. An allowed request is followed by exactly one ``on_registered`` (RCF sent or relayed) or
  ``on_register_failed`` (inline: upstream RRJ, no answer, node shutdown).
- ``on_registered`` after an RCF: ``aliases`` is the whole set the endpoint now holds (a re-
  registration repeats the aliases it kept). ``on_unregistered`` when aliases stop being held: URQ
  (either direction), time-to-live expiry, node shutdown, or a re-registration that dropped some.
  Every alias reported by ``on_registered`` is reported by exactly one later ``on_unregistered``.
  Aliases are compared as the registration table does (``registrations.alias_key``): one
  alias, however an endpoint spells it from one RRQ to the next.
- ``on_admission`` for every ARQ of a call, caller's and callee's (``answerCall``); a refusal
  answers ARJ with the verdict's reason. ``first_for_call`` is True for the first ARQ of a call the
  node sees: charge on that one only (a call is one license however many of its parties ask).
  For every call whose first ARQ was allowed, ``on_call_ended`` follows exactly once: DRQ, URQ or
  expiry of a party, missed IRR, node shutdown, or (inline) an upstream ARJ/timeout.

Hooks run on the event loop, inline with message handling: they must be quick and must not block.
The gatekeeper calls them through ``meter.hooks.HookCaller``: an exception is logged
(``ras.hook_error``) and counted (``hook_errors``); ``on_register``/``on_admission`` then answer
RRJ/ARJ ``undefinedReason``.

Not a hook: whether an alias is registered over SIP on this node (interworking, rule C9) is a
lookup the gatekeeper gets at construction (``sip_locator``, see ``meter.h323.gatekeeper``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from meter.codecs.ras import Alias, TransportAddress, Vendor

# Causes passed to on_unregistered / on_call_ended / on_register_failed: a small fixed set, fit for a
# metric label.
URQ = "urq"                          # the endpoint unregistered (or, for a call, a party did)
EXPIRED = "expired"                  # time-to-live ran out
SHUTDOWN = "shutdown"                # node shutdown
REREGISTERED = "reregistered"        # a full RRQ replaced the alias set without these aliases
DRQ = "drq"                          # a party disengaged
MISSED_IRR = "missed_irr"            # no IRR answered the gatekeeper's IRQs
NOT_IN_CALL = "not_in_call"          # the IRR answering an IRQ about the call did not list it
UPSTREAM_URQ = "upstream_urq"        # inline: the upstream gatekeeper unregistered the endpoint
UPSTREAM_DRQ = "upstream_drq"        # inline: the upstream gatekeeper dropped the call
UPSTREAM_REJECT = "upstream_reject"  # inline: the upstream answered RRJ/ARJ/XRS (or RRJ to a keep-alive)
UPSTREAM_TIMEOUT = "upstream_timeout"  # inline: no answer from the upstream within upstream_timeout


@dataclass(frozen=True, slots=True)
class Verdict:
    """Allow, or refuse with a RAS reject reason (an RRJ/ARJ ``rejectReason`` alternative) and a detail for logs."""

    allowed: bool = True
    reason: str = "resourceUnavailable"
    detail: str = ""

    @classmethod
    def refuse(cls, reason: str = "resourceUnavailable", detail: str = "") -> "Verdict":
        return cls(False, reason, detail)


ALLOW = Verdict()


@dataclass(frozen=True, slots=True)
class RegisterInfo:
    """A full RRQ about to be confirmed (standalone) or forwarded (inline)."""

    endpoint_id: str | None
    """The endpointIdentifier it will hold; None in inline mode for a first registration (the upstream assigns it)."""
    aliases: tuple[Alias, ...]
    """Every alias the endpoint will hold after this RRQ (R9: one license each)."""
    new_aliases: tuple[Alias, ...]
    """Those it does not hold yet (all of them for a first registration)."""
    vendor: Vendor | None
    """endpointVendor: productId/versionId, NUL padding stripped."""
    endpoint_type: str | None
    """"terminal", "mcu", "gateway", "gatekeeper" or "undefined"."""
    source: TransportAddress
    """Where the RRQ came from."""
    reregistration: bool
    """The endpoint is already registered (a full RRQ refreshing or changing its registration)."""
    mode: str
    """"standalone" or "inline"."""


@dataclass(frozen=True, slots=True)
class Party:
    """One side of a call as the gatekeeper sees it."""

    aliases: tuple[Alias, ...]
    endpoint_id: str | None = None
    """Its endpointIdentifier when it is registered here over H.323."""
    registered: str | None = None
    """"h323" (registered on this node as an H.323 endpoint), "sip" (its alias is SIP-registered on this
    node: the sip_locator found it) or None (not registered here)."""
    address: TransportAddress | None = None
    """Its call signalling address, when known."""
    vendor: Vendor | None = None


@dataclass(frozen=True, slots=True)
class AdmissionInfo:
    """An ARQ about to be confirmed (standalone) or forwarded (inline)."""

    call_key: str
    """The call: its callIdentifier GUID as text (the conferenceID for pre-v2 endpoints that send none).
    Both parties' ARQs carry the same key."""
    endpoint_id: str
    """Who asks."""
    answer_call: bool
    """True for the called party's ARQ."""
    first_for_call: bool
    """True for the first ARQ of this call the node sees (caller's, or callee's when the caller is
    elsewhere): charge on this one only."""
    caller: Party
    callee: Party
    bandwidth: int
    """Requested bandwidth, both directions, in units of 100 bit/s (H.225.0 BandWidth)."""
    resolved: str | None
    """How the destination was found: "h323" (an H.323 registration here), "sip" (the sip_locator), or None
    (dialled by address, or, inline, left to the upstream)."""
    call_type: str | None
    """"pointToPoint", "oneToN", "nToOne" or "nToN"."""
    source: TransportAddress
    mode: str


class RasHooks(Protocol):
    def on_register(self, info: RegisterInfo) -> Verdict: ...

    def on_register_failed(self, info: RegisterInfo, cause: str) -> None: ...

    def on_registered(self, endpoint_id: str, aliases: tuple[Alias, ...], vendor: Vendor | None,
                      source: TransportAddress, now: float) -> None: ...

    def on_unregistered(self, endpoint_id: str, aliases: tuple[Alias, ...], cause: str) -> None: ...

    def on_admission(self, info: AdmissionInfo) -> Verdict: ...

    def on_call_ended(self, call_key: str, cause: str) -> None: ...


class NoMetering:
    """The default: everything passes, nothing is metered."""

    def on_register(self, info: RegisterInfo) -> Verdict:
        return ALLOW

    def on_register_failed(self, info, cause) -> None:
        pass

    def on_registered(self, endpoint_id, aliases, vendor, source, now) -> None:
        pass

    def on_unregistered(self, endpoint_id, aliases, cause) -> None:
        pass

    def on_admission(self, info: AdmissionInfo) -> Verdict:
        return ALLOW

    def on_call_ended(self, call_key, cause) -> None:
        pass
