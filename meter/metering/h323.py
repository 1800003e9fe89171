"""The metering join for H.323: the RAS gatekeeper's hooks (``meter.h323.hooks``) -> the same ledger as SIP.

Registrations: one room license per alias (R4, R9), whatever the device (an MCU with ten
aliases takes ten); a device registered over SIP too pays both (R8): its SIP AOR and its H.323
aliases are different ledger keys. An alias's ledger key is the gatekeeper's own alias identity
(``ledger_key``), so two spellings of one alias are one license. Calls: charged once per
callIdentifier on the first ARQ the node sees; an H.323 call to an alias registered here over SIP
is interworked (C9: the gatekeeper finds it through its ``sip_locator``); H.323 audio-only calls
take a whole RMS (C4); H.323 to the cloud CMR takes a CMR license (C10).
"""

from __future__ import annotations

from meter.codecs.ras import Alias, TransportAddress
from meter.h323.hooks import ALLOW, AdmissionInfo, Party, RegisterInfo, Verdict
from meter.h323.registrations import alias_key
from meter.licensing.calls import CallFacts
from meter.licensing.ledger import Decision
from meter.licensing.registrations import RegistrationFacts
from meter.metering.join import Metering, zone_registration
from meter.zones import LOCAL, ZoneSettings

# H.225.0 BandWidth is in units of 100 bit/s, both directions together. Up to 1280 (64 kbit/s
# each way: G.711, the widest common voice codec) the call carries no video; the class decides
# nothing about the price of an H.323 call (C4: audio-only H.323 still takes a whole license),
# only how it is shown.
AUDIO_ONLY_BANDWIDTH = 1280
# Zones whose far side is SIP by definition (licensing-rules.md "Terms").
SIP_ZONE_KINDS = frozenset({"third_party_sip", "lync_gateway"})


def ledger_key(alias: Alias) -> str:
    """The ledger's key for an H.323 alias (R9: one license per alias): the registration table's
    identity (``alias_key``), written out. The gatekeeper matches aliases by that identity (E.164 as
    dialledDigits or partyNumber is one number; h323-ID, url-ID and email-ID ignore case), so the
    ledger must too: "Room1" and "room1" are one alias, one license, released once."""
    space, value = alias_key(alias)
    return f"{space}:{value}"


def ras_verdict(decision: Decision) -> Verdict:
    """RRJ/ARJ for a refused charge, worded from the one refusal table (its detail goes to the log)."""
    refusal = decision.refusal
    return Verdict.refuse(refusal.h323_reason, refusal.warning(decision.rules))


class RasMetering:
    """The gatekeeper's hooks (``meter.h323.hooks.RasHooks``): H.323 registrations and calls -> the join."""

    def __init__(self, metering: Metering):
        self.m = metering

    # -- registrations
    def on_register(self, info: RegisterInfo) -> Verdict:
        m = self.m
        now = m.clock()
        vendor = info.vendor
        facts = RegistrationFacts(m.role, "h323", "direct", 1, "",
                                  (vendor.product_id or "") if vendor else "",
                                  (vendor.version_id or "") if vendor else "")
        charged = []
        for alias in info.new_aliases:
            key = ledger_key(alias)
            decision = m.charge_registration("h323", key, facts, now, reserve=True, source=str(info.source))
            if decision is None:
                continue
            if not decision.ok:
                for charged_key in charged:  # all or nothing: an RRQ is one registration
                    m.release_registration("h323", charged_key, "refused with its registration", now)
                return ras_verdict(decision)
            charged.append(key)
        return ALLOW

    def on_register_failed(self, info: RegisterInfo, cause: str) -> None:
        now = self.m.clock()
        for alias in info.new_aliases:
            self.m.release_reservation("h323", ledger_key(alias), cause, now)

    def on_registered(self, endpoint_id, aliases, vendor, source, now) -> None:
        m = self.m
        facts = RegistrationFacts(m.role, "h323", "direct", 1, "",
                                  (vendor.product_id or "") if vendor else "",
                                  (vendor.version_id or "") if vendor else "")
        for alias in aliases:
            m.charge_registration("h323", ledger_key(alias), facts, now, source=str(source))  # confirms the reservation

    def on_unregistered(self, endpoint_id, aliases, cause) -> None:
        now = self.m.clock()
        for alias in aliases:
            self.m.release_registration("h323", ledger_key(alias), cause, now)

    # -- calls
    def on_admission(self, info: AdmissionInfo) -> Verdict:
        if not info.first_for_call:
            return ALLOW  # one call, one charge, however many parties ask
        m = self.m
        caller_zone, caller_reg = self._side(info.caller, info.source)
        callee_zone, callee_reg, zone = self._callee(info.callee)
        # The node interworks when the far side speaks SIP: an alias registered here over SIP, or a
        # zone reached over SIP (C3 rows "C (H.323) | third-party SIP server", C9).
        interworked = (info.callee.registered == "sip" or info.resolved == "sip"
                       or (zone is not None and zone.kind in SIP_ZONE_KINDS))
        facts = CallFacts(
            role=m.role, caller_zone=caller_zone, caller_registered=caller_reg, caller_protocol="h323",
            callee_zone=callee_zone, callee_registered=callee_reg,
            callee_protocol="sip" if interworked else "h323", interworked=interworked,
            transformed=bool(zone and zone.transforms_dialled_string), conductor=zone.conductor if zone else "",
        )
        now = m.clock()
        caller = info.caller.aliases[0].value if info.caller.aliases else ""
        callee = info.callee.aliases[0].value if info.callee.aliases else ""
        vendor = (info.callee if info.answer_call else info.caller).vendor  # who asks: its product names it
        decision = m.charge_call("h323", info.call_key, caller, callee, facts, now, source=str(info.source),
                                 user_agent=(vendor.product_id or "") if vendor else "")
        if not decision.ok:
            return ras_verdict(decision)
        # RAS carries no SDP: the class comes from the bandwidth asked for (see AUDIO_ONLY_BANDWIDTH).
        m.settle_call("h323", info.call_key, 1 if 0 < info.bandwidth <= AUDIO_ONLY_BANDWIDTH else 2, now)
        return ALLOW

    def _side(self, party: Party, source: TransportAddress) -> tuple[str, str]:
        if party.registered:
            return LOCAL, self.m.role
        zone = self.m.zones.for_peer(source.ip if party.address is None else party.address.ip)
        if zone is not None:
            return zone.kind, zone_registration(zone)
        return "external", ""

    def _callee(self, party: Party) -> tuple[str, str, ZoneSettings | None]:
        if party.registered:
            return LOCAL, self.m.role, None
        for alias in party.aliases:
            value = alias.value
            host = value.rpartition("@")[2] if "@" in value else ""
            zone = self.m.zones.for_uri(value if value.startswith(("sip:", "h323:")) else f"h323:{value}", host)
            if zone is not None:
                return zone.kind, zone_registration(zone), zone
        if party.address is not None:  # dialled by address
            zone = self.m.zones.for_peer(party.address.ip)
            if zone is not None:
                # C1, C11: a zone's endpoints are registered or not however they were dialled, and
                # whichever side called (``_side`` says the same of a caller from that zone).
                return zone.kind, zone_registration(zone), zone
        return "external", "", None

    def on_call_ended(self, call_key, cause) -> None:
        self.m.end_call("h323", call_key, cause, self.m.clock())
