"""The metering join for SIP: the SIP node's hooks -> the shared ledger (``meter.metering.join``).

Registrations per AOR (R9), calls per Call-ID (C1-C11); the call class comes from the SDP both
sides negotiated (C5, C6), fixed at the ACK (C7).
"""

from __future__ import annotations

from meter.codecs import sdp
from meter.licensing.calls import CallFacts
from meter.licensing.registrations import RegistrationFacts
from meter.licensing.ledger import Decision
from meter.metering.join import Metering, zone_registration
from meter.sip.hooks import ALLOW, CallInfo, RegisterInfo, Verdict
from meter.zones import LOCAL, ZoneSettings


def sip_verdict(decision: Decision) -> Verdict:
    """ALLOW, or the refusal table's answer (``meter.licensing.refusals``): 503 with its words."""
    if decision.ok:
        return ALLOW
    refusal = decision.refusal
    # The SIP node wraps the warning as `Warning: 399 <its host:port> "<text>"` (RFC 3261 §20.43).
    return Verdict.refuse(refusal.sip_status, refusal.sip_phrase, refusal.warning(decision.rules))


class SipMetering:
    """The SIP node's hooks: registrations per AOR (R9), calls per Call-ID (C1-C11). ``inline``:
    the node fronts a lab registrar, which places every alias it does not know itself."""

    def __init__(self, metering: Metering, *, inline: bool = False):
        self.m = metering
        self.inline = inline

    # -- registrations
    def on_register(self, info: RegisterInfo) -> Verdict:
        if not info.contacts or info.contacts == ("*",):
            return ALLOW  # a query (RFC 3261 §10.2.3) or remove-all: nothing to charge
        if info.expires == 0 and len(info.contacts) == 1:
            return ALLOW  # removing its one binding never costs anything
        # Several contacts: `expires` is the first one's, and another may still bind: charge.
        m = self.m
        facts = RegistrationFacts(m.role, "sip", "direct", 1, info.user_agent)
        decision = m.charge_registration("sip", info.aor, facts, m.clock(), reserve=info.forwarded,
                                         source=info.source)
        return ALLOW if decision is None else sip_verdict(decision)

    def on_register_failed(self, aor: str, call_id: str, cause: str) -> None:
        self.m.release_reservation("sip", aor, f"upstream {cause}", self.m.clock())

    def on_bindings(self, aor, bindings, user_agent, source, now) -> None:
        m = self.m
        if not bindings:
            m.release_registration("sip", aor, "unregistered", now)
            return
        facts = RegistrationFacts(m.role, "sip", "direct", 1, user_agent)
        m.charge_registration("sip", aor, facts, now, source=source)  # confirms a reservation, or charges learned bindings

    # -- calls
    def on_invite(self, info: CallInfo) -> Verdict:
        m = self.m
        caller_zone, caller_reg = self._caller_side(info)
        callee_zone, callee_reg, zone = self._callee_side(info)
        facts = CallFacts(
            role=m.role, caller_zone=caller_zone, caller_registered=caller_reg, caller_protocol="sip",
            callee_zone=callee_zone, callee_registered=callee_reg, callee_protocol="sip",
            transformed=bool(zone and zone.transforms_dialled_string),
            conductor=zone.conductor if zone else "",
        )
        return sip_verdict(m.charge_call("sip", info.call_id, info.from_aor, info.to_aor, facts, m.clock(),
                                         source=info.source, user_agent=info.user_agent))

    def _caller_side(self, info: CallInfo) -> tuple[str, str]:
        zone = self.m.zones.for_peer(info.source.host)
        if zone is not None:
            return zone.kind, zone_registration(zone)
        if info.caller_registered:  # it came over its alias's registered flow (the SIP side knows)
            return LOCAL, self.m.role
        if self.inline and info.from_upstream:
            return LOCAL, self.m.role  # registered on the lab registrar the node fronts
        return "external", ""

    def _callee_side(self, info: CallInfo) -> tuple[str, str, ZoneSettings | None]:
        if info.callee_registered:
            return LOCAL, self.m.role, None
        zone = self.m.zones.for_uri(info.request_uri, _uri_host(info.request_uri))
        if zone is not None:
            return zone.kind, zone_registration(zone), zone
        if self.inline:
            return LOCAL, self.m.role, None  # the lab registrar behind the node places it
        return "external", "", None

    def trusted_source(self, host: str) -> bool:
        return self.m.zones.for_peer(host) is not None

    def zone_destination(self, host: str, port: int) -> bool:
        return self.m.zones.leads_to(host, port)

    def zone_closed(self, request_uri: str, host: str, port: int, source: str) -> str | None:
        """The zone this request is headed for, when its `allow` list leaves ``source`` out."""
        zone = self.m.zones.closed_to(request_uri, _uri_host(request_uri), host, port, source)
        return None if zone is None else zone.name

    def route(self, request_uri: str) -> str | None:
        zone = self.m.zones.for_uri(request_uri, _uri_host(request_uri))
        return None if zone is None else zone.target

    def on_call_answered(self, call_id, offer_sdp, answer_sdp) -> None:
        record = self.m.calls.get(("sip", call_id))
        if record is None or record.state == "confirmed":
            return  # C7: an answer after set-up (a re-INVITE's) changes neither the class nor the counts
        record.state = "answered"
        record.m_lines = negotiated_m_lines(offer_sdp, answer_sdp)

    def on_call_confirmed(self, call_id) -> None:
        self.m.settle_call("sip", call_id, None, self.m.clock())

    def on_call_ended(self, call_id, cause) -> None:
        self.m.end_call("sip", call_id, cause, self.m.clock())


def _uri_host(uri: str) -> str:
    """The host of a SIP URI, cheaply (no full parse on the hot path): sip:user@HOST:port;params."""
    rest = uri.partition(":")[2]
    rest = rest.rpartition("@")[2]
    host = rest.split(";", 1)[0].split("?", 1)[0]
    if host.startswith("["):
        return host[1:host.find("]")]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def negotiated_m_lines(offer: bytes, answer: bytes) -> int | None:
    """m= lines both sides kept (C5). Late offer (INVITE without SDP): the 2xx carries the offer,
    and its enabled streams are what the call can have. Unreadable SDP: None (stays video, C6)."""
    try:
        if offer and answer:
            return sdp.negotiated_media_count(offer, answer)
        if answer:
            return sum(1 for media in sdp.parse(answer).media if not media.disabled)
    except sdp.SDPError:
        return None
    return None
