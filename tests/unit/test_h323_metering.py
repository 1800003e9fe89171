"""The metering join for H.323 (meter.metering.h323): the RAS gatekeeper's hooks -> the ledger.

A real Gatekeeper core with RasMetering as its hooks, on the in-memory Net of ``tests.rasclient``
(every datagram through the real codec), or RasMetering driven directly with the facts the
gatekeeper hands it. Each test names the rule it proves.
"""

from __future__ import annotations

from meter.codecs import ras
from meter.codecs.ras import Alias, TransportAddress
from meter.h323.hooks import AdmissionInfo, Party
from meter.licensing.model import License
from meter.metering.h323 import RasMetering, ledger_key
from meter.metering.join import Metering
from meter.zones import ZoneSettings, ZoneTable
from tests.rasclient import standalone_net
from tests.unit.test_metering import make_metering as make_sip_metering

# A neighbour whose endpoints are registered to Cisco infrastructure (a cluster peer, an Expressway
# pair): its peers' addresses and its domain both lead to it.
NEIGHBOUR = ZoneSettings(name="neighbour", kind="traversal", peers=["198.51.100.0/24"],
                         match=["domain:neighbour.example"], registered=True)
NEIGHBOUR_ENDPOINT = TransportAddress("198.51.100.7", 1720)
SIP_REGISTERED = {"sipper": ("127.0.0.1", 5060)}  # what the node's sip_locator finds


def make_metering() -> Metering:
    """The SIP tests' node (role C, enforcing, ten of each license) with the neighbour as its one zone."""
    m, _, _ = make_sip_metering()
    m.zones = ZoneTable([NEIGHBOUR])
    return m


def metered_net(metering: Metering):
    return standalone_net(RasMetering(metering), sip_locator=SIP_REGISTERED.get)


def h323_keys(metering: Metering) -> set[str]:
    return {alias for protocol, alias in metering.registrations if protocol == "h323"}


# ----------------------------------------------------------------------------- R4, R9: one license per alias

def test_r9_ledger_key_is_the_registration_tables_alias_identity():
    assert ledger_key(Alias("h323-ID", "Room1")) == ledger_key(Alias("h323-ID", "room1")) == "h323-ID:room1"
    assert ledger_key(Alias("url-ID", "Room1@Lab.Test")) == "url-ID:room1@lab.test"
    assert ledger_key(Alias("dialledDigits", "1000")) == ledger_key(Alias("partyNumber", "1000")) == "e164:1000"
    assert ledger_key(Alias("h323-ID", "1000")) != ledger_key(Alias("dialledDigits", "1000"))


def test_r4_r9_two_spellings_of_one_caseless_alias_take_one_license():
    """An endpoint re-registering "Room1" as "room1" (and its E.164 number as partyNumber instead of
    dialledDigits) still holds two aliases: two room licenses, not four, and unregistering frees both."""
    m = make_metering()
    net, gk = metered_net(m)
    room = net.endpoint(5001, [("h323-ID", "Room1"), ("dialledDigits", "1000")])
    assert net.register(room).short == "RCF"
    assert m.ledger.in_use("room") == 2
    again = net.register(room, aliases=(Alias("h323-ID", "room1"), Alias("partyNumber", "1000")))
    assert again.short == "RCF"
    assert m.ledger.in_use("room") == 2 and h323_keys(m) == {"h323-ID:room1", "e164:1000"}
    assert net.ask(room, room.urq()).short == "UCF"
    assert m.ledger.in_use("room") == 0 and not m.registrations


def test_r9_a_released_alias_releases_its_one_license_whatever_the_spelling():
    m = make_metering()
    net, gk = metered_net(m)
    room = net.endpoint(5001, [("h323-ID", "Room1"), ("dialledDigits", "1000")])
    net.register(room)
    # A URQ naming one alias, spelled otherwise: that alias goes, its license with it, the other stays.
    assert net.ask(room, room.urq((Alias("h323-ID", "ROOM1"),))).short == "UCF"
    assert m.ledger.in_use("room") == 1 and h323_keys(m) == {"e164:1000"}
    # Another endpoint may now take the alias in any spelling: one license again, released once.
    other = net.endpoint(5002, [("h323-ID", "ROOM1")])
    assert net.register(other).short == "RCF"
    assert m.ledger.in_use("room") == 2 and h323_keys(m) == {"h323-ID:room1", "e164:1000"}
    net.deliver_all(gk.ras_address, gk.close(net.now))
    assert m.ledger.in_use("room") == 0 and not m.registrations


def test_r9_r11_an_alias_held_in_another_spelling_is_refused_and_charges_nothing():
    m = make_metering()
    net, gk = metered_net(m)
    net.register(net.endpoint(5001, [("h323-ID", "Room1")]))
    rrj = net.register(net.endpoint(5002, [("h323-ID", "room1"), ("h323-ID", "other")]))
    assert (rrj.short, rrj.reject_reason) == ("RRJ", "duplicateAlias")
    assert m.ledger.in_use("room") == 1 and h323_keys(m) == {"h323-ID:room1"}


# ----------------------------------------------------------------------------- C9: interworking via the sip_locator

def test_c1_c9_arq_to_a_sip_registered_alias_is_interworked_and_free_between_registered_ends():
    m = make_metering()
    net, gk = metered_net(m)
    alice = net.endpoint(5001, [("h323-ID", "alice")])
    net.register(alice)
    acf, call = net.admit(alice, [("h323-ID", "sipper")])
    assert acf.short == "ACF" and acf.dest_call_signal_address == TransportAddress("127.0.0.1", 5060)
    record = m.calls[("h323", ras.guid_str(call.call_id))]
    assert record.facts.interworked and record.facts.callee_protocol == "sip"
    assert "C9" in record.rules and "C1" in record.rules and record.charge.call_license is License.NONE
    assert m.ledger.in_use("rms") == 0


# ----------------------------------------------------------------------------- C1, C11: a registered zone

def admission(caller: Party, callee: Party, *, resolved: str | None = None) -> AdmissionInfo:
    return AdmissionInfo(call_key="00000000-0000-0000-0000-000000000001", endpoint_id="ep1", answer_call=False,
                         first_for_call=True, caller=caller, callee=callee, bandwidth=3840, resolved=resolved,
                         call_type="pointToPoint", source=TransportAddress("127.0.0.1", 5001), mode="standalone")


HERE = Party((Alias("h323-ID", "alice"),), "ep1", "h323", TransportAddress("127.0.0.1", 15001))


def charge_of(info: AdmissionInfo):
    m = make_metering()
    assert RasMetering(m).on_admission(info).allowed
    return m.calls[("h323", info.call_key)]


def test_c1_c11_callee_in_a_registered_zone_is_registered_by_alias_and_by_address():
    """C1 ("also when routed through neighbour or traversal zones to endpoints registered in the same
    network"), C11: the zone says its endpoints are registered, however the callee was dialled, and
    whichever side called."""
    by_alias = charge_of(admission(HERE, Party((Alias("url-ID", "bob@neighbour.example"),))))
    by_address = charge_of(admission(HERE, Party((), address=NEIGHBOUR_ENDPOINT)))
    from_there = charge_of(admission(Party((Alias("h323-ID", "bob"),), address=NEIGHBOUR_ENDPOINT), HERE))
    for record in (by_alias, by_address, from_there):
        assert "C1" in record.rules and "C2" not in record.rules, record.facts
        assert record.charge.call_license is License.NONE
    assert by_address.facts.callee_registered == by_alias.facts.callee_registered == "peer"
    assert from_there.facts.caller_registered == "peer"
