"""The metering join for H.323: the RAS gatekeeper's hooks -> the same ledger as SIP.

Registrations: one room license per alias (R4, R9), whatever the device (an MCU with ten
aliases takes ten); a device registered over SIP too pays both (R8): its SIP AOR and its H.323
aliases are different ledger keys. Calls: charged once per callIdentifier on the first ARQ the
node sees; an H.323 call to an alias registered here over SIP is interworked (C9); H.323
audio-only calls take a whole RMS (C4); H.323 to the cloud CMR takes a CMR license (C10).
"""

from __future__ import annotations

from meter.codecs.ras import Alias, TransportAddress
from meter.h323 import policy as ras
from meter.licensing.calls import CallFacts
from meter.licensing.registrations import RegistrationFacts
from meter.metering.join import Metering, zone_registration
from meter.zones import LOCAL

# H.225.0 BandWidth is in units of 100 bit/s, both directions together. Up to 1280 (64 kbit/s
# each way: G.711, the widest common voice codec) the call carries no video; the class decides
# nothing about the price of an H.323 call (C4: audio-only H.323 still takes a whole license),
# only how it is shown.
AUDIO_ONLY_BANDWIDTH = 1280
# Zones whose far side is SIP by definition (licensing-rules.md "Terms").
SIP_ZONE_KINDS = frozenset({"third_party_sip", "lync_gateway"})


def alias_key(alias: Alias) -> str:
    return f"{alias.type}:{alias.value}"


class RasMetering:
    """The gatekeeper's policy."""

    def __init__(self, metering: Metering):
        self.m = metering

    # -- registrations
    def on_register(self, info: ras.RegisterInfo) -> ras.Verdict:
        m = self.m
        now = m.clock()
        vendor = info.vendor
        facts = RegistrationFacts(m.role, "h323", "direct", 1, "",
                                  (vendor.product_id or "") if vendor else "",
                                  (vendor.version_id or "") if vendor else "")
        charged = []
        for alias in info.new_aliases:
            decision = m.charge_registration("h323", alias_key(alias), facts, now, reserve=True)
            if decision is None:
                continue
            if not decision.ok:
                for key in charged:  # all or nothing: an RRQ is one registration
                    m.release_registration("h323", key, "refused with its registration", now)
                return ras.Verdict.refuse("resourceUnavailable", f"{decision.reason} ({','.join(decision.rules)})")
            charged.append(alias_key(alias))
        return ras.ALLOW

    def on_register_failed(self, info: ras.RegisterInfo, cause: str) -> None:
        now = self.m.clock()
        for alias in info.new_aliases:
            record = self.m.registrations.get(("h323", alias_key(alias)))
            if record is not None and record.reserved_until is not None:
                self.m.release_registration("h323", alias_key(alias), cause, now)

    def on_registered(self, endpoint_id, aliases, vendor, source, now) -> None:
        m = self.m
        facts = RegistrationFacts(m.role, "h323", "direct", 1, "",
                                  (vendor.product_id or "") if vendor else "",
                                  (vendor.version_id or "") if vendor else "")
        for alias in aliases:
            m.charge_registration("h323", alias_key(alias), facts, now)  # confirms the reservation

    def on_unregistered(self, endpoint_id, aliases, cause) -> None:
        now = self.m.clock()
        for alias in aliases:
            self.m.release_registration("h323", alias_key(alias), cause, now)

    # -- calls
    def on_admission(self, info: ras.AdmissionInfo) -> ras.Verdict:
        if not info.first_for_call:
            return ras.ALLOW  # one call, one charge, however many parties ask
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
        decision = m.charge_call("h323", info.call_key, caller, callee, facts, now)
        if not decision.ok:
            return ras.Verdict.refuse("resourceUnavailable", f"{decision.reason} ({','.join(decision.rules)})")
        # RAS carries no SDP: the class comes from the bandwidth asked for (see AUDIO_ONLY_BANDWIDTH).
        m.settle_call("h323", info.call_key, 1 if 0 < info.bandwidth <= AUDIO_ONLY_BANDWIDTH else 2, now)
        return ras.ALLOW

    def _side(self, party: ras.Party, source: TransportAddress) -> tuple[str, str]:
        if party.registered:
            return LOCAL, self.m.role
        zone = self.m.zones.for_peer(source.ip if party.address is None else party.address.ip)
        if zone is not None:
            return zone.kind, "unified_cm" if zone.registered and zone.kind == "unified_cm" else ("peer" if zone.registered else "")
        return "external", ""

    def _callee(self, party: ras.Party):
        if party.registered:
            return LOCAL, self.m.role, None
        for alias in party.aliases:
            value = alias.value
            host = value.rpartition("@")[2] if "@" in value else ""
            zone = self.m.zones.for_uri(value if value.startswith(("sip:", "h323:")) else f"h323:{value}", host)
            if zone is not None:
                registered = ("unified_cm" if zone.kind == "unified_cm" else "peer") if zone.registered else ""
                return zone.kind, registered, zone
        if party.address is not None:
            zone = self.m.zones.for_peer(party.address.ip)
            if zone is not None:
                return zone.kind, "", zone
        return "external", "", None

    def on_call_ended(self, call_key, cause) -> None:
        self.m.end_call("h323", call_key, cause, self.m.clock())

    def locate_sip(self, alias: Alias) -> TransportAddress | None:
        """Is this alias registered over SIP here? Then the node interworks the call (C9)."""
        aor = self.m.sip_aor_for(alias.value)
        if aor is None:
            return None
        sip = self.m.sip_node
        if sip is None or sip.core is None:
            return None
        adv = sip.core.advertised
        return TransportAddress(adv.host, adv.port)
