"""Relay policy (RFC 3261 §16.4, §16.6, §16.12) and "registered" by flow (RFC 5626 §5.2 style).

Issue 10 item 1: a pre-loaded Route, or an in-dialog request for a dialog the node does not route,
is no licence to relay: it is refused 403 unless the source is a zone's peer or the upstream, or it
leads to the upstream or (``relay = "zones"``) a configured zone. A caller is registered only when
its INVITE came over a binding's flow; a forged From is metered as what it is (C2/C3: RMS).
Sans-I/O, fake clock (tests/sipclient.CoreLab), the real SipMetering where the charge matters.
"""

from __future__ import annotations

import logging

import pytest

from meter import catalogs
from meter.codecs.sip import Request, Response, parse_name_addr
from meter.config import ConfigError, parse as parse_config
from meter.licensing.ledger import Ledger
from meter.metering.join import Metering
from meter.metering.sip import SipMetering
from meter.sip.location import LocationService, RegisterRequest
from meter.sip.peer import Peer
from meter.sip.router import RELAY_REFUSALS
from meter.zones import ZoneSettings, ZoneTable
from tests.sipclient import LAB_ANSWER, LAB_OFFER, LAB_RR, CoreLab, Phone, Recorder

FOREIGN = ("203.0.113.9", 5060)
FOREIGN_ROUTE = "<sip:203.0.113.9:5060;lr>"
TRUNK = ZoneSettings(name="itsp", kind="third_party_sip", peers=["192.0.2.0/24"], match=["domain:itsp.example"],
                     target="198.51.100.7:5070")
ZONES = ZoneTable([TRUNK])


class Zoned(Recorder):
    """Recorder hooks that know the zones (what SipMetering answers) and keep every CallInfo."""

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.infos = []

    def on_invite(self, info):
        self.infos.append(info)
        return super().on_invite(info)

    def trusted_source(self, host):
        return ZONES.for_peer(host) is not None

    def zone_destination(self, host, port):
        return ZONES.leads_to(host, port)


def addresses(sent) -> list[tuple]:
    return [p.address for _, p in sent]


def preloaded_invite(phone: Phone, route: str = FOREIGN_ROUTE, uri: str = "sip:victim@203.0.113.9") -> Request:
    return phone.request("INVITE", uri, body=LAB_OFFER, headers=[("Route", route)])


# -- pre-loaded Route on an initial request (RFC 3261 §16.6 steps 6-7) -------------------------------------


@pytest.mark.parametrize("mode", ["standalone", "inline"])
def test_preloaded_route_to_a_foreign_host_is_refused_403_and_logged_rfc3261_16_6(mode, caplog):
    lab = CoreLab(mode=mode, policy=Zoned())
    invite = preloaded_invite(lab.alice).copy()
    invite.set_header("User-Agent", "svmap-like/1.0")
    with caplog.at_level(logging.INFO, logger="meter.sip"):
        lab.feed(invite, lab.alice)
    sent = lab.net.take()
    assert [(m.status, m.reason) for m, _ in sent] == [(403, "Forbidden - relay not allowed (pre-loaded Route)")]
    assert addresses(sent) == [("10.0.0.2", 5062)]  # nothing to the foreign host, nothing upstream
    assert lab.policy.infos == []  # never metered: never forwarded
    (record,) = [r for r in caplog.records if r.getMessage() == "sip.relay.refused"]
    assert record.facts["source"] == "udp:10.0.0.2:5062" and record.facts["user_agent"] == "svmap-like/1.0"
    assert record.facts["target"] == "udp:203.0.113.9:5060"


def test_preloaded_route_naming_the_node_first_then_a_foreign_host_is_refused_rfc3261_16_4():
    lab = CoreLab(policy=Zoned())
    lab.feed(preloaded_invite(lab.alice, f"{LAB_RR}, {FOREIGN_ROUTE}"), lab.alice)
    (resp, peer), = lab.net.take()
    assert resp.status == 403 and peer.address == ("10.0.0.2", 5062)


@pytest.mark.parametrize("method", ["OPTIONS", "MESSAGE", "REGISTER", "SUBSCRIBE"])
def test_any_method_with_a_foreign_preloaded_route_is_refused(method):
    lab = CoreLab(policy=Zoned())
    req = lab.alice.request(method, "sip:victim@203.0.113.9", headers=[("Route", FOREIGN_ROUTE)])
    lab.feed(req, lab.alice)
    sent = lab.net.take()
    assert [m.status for m, _ in sent] == [403] and addresses(sent) == [("10.0.0.2", 5062)]


@pytest.mark.parametrize("route", ["<sip:192.0.2.10:5060;lr>", "<sip:198.51.100.7:5070;lr>"])
def test_relay_zones_follows_a_preloaded_route_to_a_zone_peer_or_target(route):
    lab = CoreLab(policy=Zoned())
    lab.feed(preloaded_invite(lab.alice, route, "sip:+15550100@itsp.example"), lab.alice)
    sent = lab.net.take()
    hop = parse_name_addr(route).uri
    assert [m.status if isinstance(m, Response) else m.method for m, _ in sent] == [100, "INVITE"]
    assert sent[1][1].address == (hop.host, hop.port)


def test_relay_refuse_refuses_a_preloaded_route_even_to_a_zone():
    lab = CoreLab(policy=Zoned(), relay="refuse")
    lab.feed(preloaded_invite(lab.alice, "<sip:192.0.2.10:5060;lr>", "sip:+15550100@itsp.example"), lab.alice)
    assert [m.status for m, _ in lab.net.take()] == [403]


@pytest.mark.parametrize("relay", ["zones", "refuse"])
def test_inline_preloaded_route_to_the_upstream_is_followed(relay):
    lab = CoreLab(mode="inline", policy=Zoned(), relay=relay)
    lab.feed(preloaded_invite(lab.alice, "<sip:10.0.0.50:5060;lr>", "sip:bob@lab.test"), lab.alice)
    sent = lab.net.take()
    assert [m.method for m, _ in sent if isinstance(m, Request)] == ["INVITE"]
    assert [p for m, p in sent if isinstance(m, Request)] == [lab.upstream]


@pytest.mark.parametrize("relay", ["zones", "refuse"])
def test_a_trusted_zone_peer_may_preload_any_route(relay):
    lab = CoreLab(policy=Zoned(), relay=relay)
    gateway = Phone("gw", "192.0.2.10", 5060, domain="itsp.example")
    lab.feed(preloaded_invite(gateway), gateway)
    sent = lab.net.take()
    assert [p.address for m, p in sent if isinstance(m, Request)] == [FOREIGN]


def test_inline_endpoint_without_route_reaches_the_upstream_never_the_request_uri_host():
    lab = CoreLab(mode="inline", policy=Zoned())
    lab.feed(lab.alice.request("INVITE", "sip:victim@203.0.113.9", body=LAB_OFFER), lab.alice)
    assert [p for m, p in lab.net.take() if isinstance(m, Request)] == [lab.upstream]


def test_relay_setting_is_checked_at_start_up():
    assert parse_config('[sip]\nrelay = "refuse"\n').sip.relay == "refuse"
    with pytest.raises(ConfigError, match="relay"):
        parse_config('[sip]\nrelay = "open"\n')


# -- in-dialog requests (RFC 3261 §16.12, §12.2.1.1) ---------------------------------------------------------


def forged_in_dialog(lab, method="BYE", *, route: str | None = LAB_RR, uri="sip:victim@203.0.113.9:5060"):
    headers = [("Route", route)] if route else []
    return lab.alice.request(method, uri, to="sip:victim@203.0.113.9", to_tag="made-up", headers=headers)


@pytest.mark.parametrize("route", [LAB_RR, None, FOREIGN_ROUTE, f"{LAB_RR}, {FOREIGN_ROUTE}"])
def test_a_to_tag_is_no_relay_licence_for_a_dialog_the_node_does_not_route(route):
    """Anyone can write a To tag and the node's Route: without a call the node record-routed, an
    in-dialog request goes only where an initial one could."""
    lab = CoreLab(policy=Zoned())
    lab.feed(forged_in_dialog(lab, route=route), lab.alice)
    sent = lab.net.take()
    assert [(m.status, m.reason) for m, _ in sent] == [
        (403, "Forbidden - relay not allowed (not a dialog this node routes)")]
    assert addresses(sent) == [("10.0.0.2", 5062)]


def test_each_relay_refusal_is_counted_by_why_for_meter_sip_relay_refused_total():
    lab = CoreLab(policy=Zoned())
    lab.feed(preloaded_invite(lab.alice), lab.alice)
    lab.feed(forged_in_dialog(lab), lab.alice)
    lab.feed(forged_in_dialog(lab, "INFO"), lab.alice)
    assert [m.status for m, _ in lab.net.take()] == [403, 403, 403]
    assert dict(lab.core.counters.relay_refused) == {"preloaded_route": 1, "in_dialog": 2}
    assert set(lab.core.counters.relay_refused) <= set(RELAY_REFUSALS)


def test_a_forged_ack_is_dropped_not_relayed():
    lab = CoreLab(policy=Zoned())
    lab.feed(forged_in_dialog(lab, "ACK"), lab.alice)
    assert lab.net.take() == []


def confirmed_call(lab):
    lab.register(lab.bob)
    invite, at_bob = lab.setup_call()
    lab.feed(lab.bob.answer(at_bob, 200, to_tag="bt", body=LAB_ANSWER), lab.bob)
    ok = lab.take_one(lab.alice)
    lab.ack(invite, ok)
    assert [m.method for m in lab.sent_to(lab.bob.peer)] == ["ACK"]
    return invite, ok


def test_in_dialog_requests_of_a_recorded_call_follow_the_route_set_both_ways():
    lab = CoreLab(policy=Zoned())
    invite, _ = confirmed_call(lab)
    # bob -> alice: alice is not registered, but this is the dialog the node record-routed
    bye = lab.bob.request("BYE", "sip:alice@10.0.0.2:5062", to="sip:alice@lab.test", to_tag=lab.alice.tag,
                          call_id=invite.call_id, from_tag="bt", headers=[("Route", LAB_RR)])
    lab.feed(bye, lab.bob)
    at_alice = lab.take_one(lab.alice)
    assert at_alice.method == "BYE"


def test_known_call_with_a_foreign_route_on_top_is_a_preloaded_route_rfc3261_12_2_1_1():
    """A UA builds Route from the dialog's route set, whose first entry here is the node: a request
    of a known call arriving with someone else's Route on top did not follow it."""
    lab = CoreLab(policy=Zoned())
    invite, _ = confirmed_call(lab)
    info = lab.alice.request("INFO", "sip:bob@10.0.0.3:5064", to="sip:bob@lab.test", to_tag="bt",
                             call_id=invite.call_id, headers=[("Route", FOREIGN_ROUTE)])
    lab.feed(info, lab.alice)
    assert [(m.status, p.address) for m, p in lab.net.take()] == [(403, ("10.0.0.2", 5062))]


@pytest.mark.parametrize("method", ["INFO", "BYE", "ACK"])
def test_one_real_call_is_no_licence_to_address_another_host(method):
    """alice's call to bob is real, her Route names the node, but the Request-URI is a third host:
    not one of that call's ends (RFC 3261 §12.2.1.1: the Request-URI is the remote target)."""
    lab = CoreLab(policy=Zoned())
    invite, _ = confirmed_call(lab)
    req = lab.alice.request(method, "sip:victim@203.0.113.9:5060", to="sip:bob@lab.test", to_tag="bt",
                            call_id=invite.call_id, cseq=invite.cseq.number if method == "ACK" else 5,
                            headers=[("Route", LAB_RR)])
    lab.feed(req, lab.alice)
    sent = lab.net.take()
    assert FOREIGN not in addresses(sent)
    assert [m.status for m, _ in sent] == ([] if method == "ACK" else [403])
    assert lab.core.calls.views()[0]["state"] == "confirmed"  # and the call goes on


def test_known_call_without_route_uses_the_node_as_outbound_proxy():
    lab = CoreLab(policy=Zoned())
    invite, _ = confirmed_call(lab)
    info = lab.bob.request("INFO", "sip:alice@10.0.0.2:5062", to="sip:alice@lab.test", to_tag=lab.alice.tag,
                           call_id=invite.call_id, from_tag="bt")
    lab.feed(info, lab.bob)
    assert lab.take_one(lab.alice).method == "INFO"


def test_unknown_dialog_to_a_registered_contact_is_served():
    """A dialog the node has no call for (a SUBSCRIBE's NOTIFY) may still reach a registered contact."""
    lab = CoreLab(policy=Zoned())
    lab.register(lab.bob)
    notify = lab.alice.request("NOTIFY", "sip:bob@10.0.0.3:5064", to="sip:bob@lab.test", to_tag="sub1",
                               headers=[("Event", "presence"), ("Subscription-State", "active")])
    lab.feed(notify, lab.alice)
    assert lab.take_one(lab.bob).method == "NOTIFY"


# -- "registered" means the registered flow (RFC 5626 §5.2 style) ---------------------------------------------


def test_location_registered_over_matches_transport_address_port_and_connection():
    loc = LocationService()
    udp = Peer("udp", "10.0.0.2", 5062)
    tcp = Peer("tcp", "10.0.0.4", 40100, conn=7)
    contact = parse_name_addr("<sip:alice@10.0.0.2:5062>")
    loc.register(RegisterRequest("sip:alice@lab.test", (contact,), False, 600, "c1", 1, udp, "ua"), 0.0)
    other = parse_name_addr("<sip:carol@10.0.0.4:40100;transport=tcp>")
    loc.register(RegisterRequest("sip:carol@lab.test", (other,), False, 600, "c2", 1, tcp, "ua"), 0.0)
    assert loc.registered_over("sip:alice@lab.test", udp, 1.0)
    assert not loc.registered_over("sip:alice@lab.test", Peer("udp", "10.0.0.2", 5099), 1.0)  # another port
    assert not loc.registered_over("sip:alice@lab.test", Peer("tcp", "10.0.0.2", 5062, conn=1), 1.0)
    assert not loc.registered_over("sip:bob@lab.test", udp, 1.0)  # another AOR over alice's flow
    assert loc.registered_over("sip:carol@lab.test", tcp, 1.0)
    assert not loc.registered_over("sip:carol@lab.test", Peer("tcp", "10.0.0.4", 40100, conn=8), 1.0)
    assert not loc.registered_over("sip:alice@lab.test", udp, 601.0)  # expired, not yet swept
    # re-registered from a new port: the old flow no longer counts
    loc.register(RegisterRequest("sip:alice@lab.test", (contact,), False, 600, "c1", 2,
                                 Peer("udp", "10.0.0.2", 5070), "ua"), 2.0)
    assert not loc.registered_over("sip:alice@lab.test", udp, 3.0)
    assert loc.registered_over("sip:alice@lab.test", Peer("udp", "10.0.0.2", 5070), 3.0)
    loc.register(RegisterRequest("sip:alice@lab.test", (), True, 0, "c1", 3, Peer("udp", "10.0.0.2", 5070), "ua"), 4.0)
    assert not loc.registered_over("sip:alice@lab.test", Peer("udp", "10.0.0.2", 5070), 5.0)
    assert loc._by_flow.keys() == {(tcp, "sip:carol@lab.test")}  # nothing left behind


def test_callinfo_caller_registered_only_over_the_callers_own_flow():
    lab = CoreLab(policy=Zoned())
    lab.register(lab.alice)
    lab.register(lab.bob)
    lab.feed(lab.alice.request("INVITE", "sip:bob@lab.test", body=LAB_OFFER), lab.alice)
    mallory = Phone("alice", "10.0.0.66", 5062)  # writes alice's From, from elsewhere
    lab.feed(mallory.request("INVITE", "sip:bob@lab.test", body=LAB_OFFER), mallory)
    real, forged = lab.policy.infos
    assert real.from_aor == forged.from_aor == "sip:alice@lab.test"
    assert real.caller_registered and not forged.caller_registered


def make_metering(mode="standalone"):
    # Expressway-E: where a business-to-business call's RMS is charged (C2, C3)
    ledger = Ledger("m1", "E", catalogs.platform("large_vm"), enforcement="enforce", now=1000.0)
    ledger.set_licenses({"rms": 10, "room": 10, "desktop": 10, "cmr": 2}, 1000.0)
    m = Metering(ledger, catalogs.device_catalog(), ZONES, role="E", node_name="m1", sip_mode=mode,
                 clock=lambda: 1000.0)
    return m, SipMetering(m, inline=mode == "inline")


def test_c2_c3_forged_from_of_a_registered_alias_is_charged_rms_c1_real_flow_is_not():
    m, metering = make_metering()
    lab = CoreLab(policy=metering)
    lab.register(lab.alice)
    lab.register(lab.bob)
    lab.feed(lab.alice.request("INVITE", "sip:bob@lab.test", body=LAB_OFFER, call_id="real"), lab.alice)
    assert m.ledger.in_use("rms") == 0
    assert "C1" in [v for v in m.call_views() if v["call_id"] == "real"][0]["rules"]
    mallory = Phone("alice", "10.0.0.66", 5062)
    lab.feed(mallory.request("INVITE", "sip:bob@lab.test", body=LAB_OFFER, call_id="forged"), mallory)
    forged = [v for v in m.call_views() if v["call_id"] == "forged"][0]
    # an external caller's call to a registered alias costs an RMS (as video while set up, C6)
    assert forged["caller_zone"] == "external" and forged["license"] == "rms" and m.ledger.in_use("rms") > 0
    assert "C2" in forged["rules"] and "C3" in forged["rules"]


def test_sip_metering_answers_the_relay_questions_from_its_zones():
    _, metering = make_metering()
    assert metering.trusted_source("192.0.2.99") and not metering.trusted_source("203.0.113.9")
    assert metering.zone_destination("198.51.100.7", 5070) and metering.zone_destination("192.0.2.10", 5060)
    assert not metering.zone_destination("198.51.100.7", 5060) and not metering.zone_destination("203.0.113.9", 5060)


def test_inline_caller_from_the_upstream_is_still_local():
    """Inline, the upstream registrar already placed the caller (Path routing): unchanged."""
    m, metering = make_metering("inline")
    lab = CoreLab(mode="inline", policy=metering)
    spiral = lab.alice.request("INVITE", "sip:bob@10.0.0.3:5064", body=LAB_OFFER, call_id="up")
    spiral.push_via("SIP/2.0/UDP 10.0.0.50:5060;branch=z9hG4bKup1")
    lab.feed(spiral, lab.upstream)
    assert "C1" in [v for v in m.call_views() if v["call_id"] == "up"][0]["rules"]


# -- a zone's allow-list (issue 10 item 2: "an optional source allow-list per zone") -------------------

LAB_ONLY_TRUNK = ZoneSettings(name="itsp", kind="third_party_sip", peers=["192.0.2.0/24"],
                              match=["domain:itsp.example"], target="198.51.100.7:5070", allow=["10.0.0.2/32"])


def zone_locked_lab():
    ledger = Ledger("m1", "C", catalogs.platform("large_vm"), enforcement="enforce", now=1000.0)
    ledger.set_licenses({"rms": 10, "room": 10, "desktop": 10}, 1000.0)
    m = Metering(ledger, catalogs.device_catalog(), ZoneTable([LAB_ONLY_TRUNK]), role="C", node_name="m1",
                 clock=lambda: 1000.0)
    return m, CoreLab(policy=SipMetering(m))


def test_c2_a_zone_allow_list_admits_its_sources_and_keeps_others_off_the_trunk():
    """alice (10.0.0.2) may call out through the ITSP zone and pays its RMS (C2); bob (10.0.0.3),
    outside the zone's allow-list, gets 403 by search rule and by a pre-loaded Route to the trunk's
    address alike, is logged as a relay refusal and charges nothing."""
    m, lab = zone_locked_lab()
    lab.register(lab.alice)
    lab.register(lab.bob)
    lab.net.take()
    lab.feed(lab.alice.request("INVITE", "sip:+1555@itsp.example", body=LAB_OFFER, call_id="ok"), lab.alice)
    charged = m.ledger.in_use("rms")  # in the ledger's half units (C4)
    assert ("198.51.100.7", 5070) in addresses(lab.net.take()) and charged > 0
    lab.feed(lab.bob.request("INVITE", "sip:+1666@itsp.example", body=LAB_OFFER, call_id="no1"), lab.bob)
    by_rule = lab.net.take()
    lab.feed(preloaded_invite(lab.bob, "<sip:198.51.100.7:5070;lr>", "sip:+1777@198.51.100.7"), lab.bob)
    by_route = lab.net.take()
    for sent in (by_rule, by_route):
        assert [(m_.status, m_.reason, p.address) for m_, p in sent if isinstance(m_, Response)] == [
            (403, "Forbidden - source not allowed into this zone", lab.bob.peer.address)]
        assert ("198.51.100.7", 5070) not in addresses(sent)
    assert m.ledger.in_use("rms") == charged and lab.core.counters.relay_refused["zone_closed"] == 2


def test_a_zone_peer_is_not_held_to_another_zones_allow_list():
    """Zone peers route for others (a gateway, a Unified CM): the allow-list is for endpoints."""
    m, lab = zone_locked_lab()
    gateway = Phone("gw", "192.0.2.20", 5060)
    lab.feed(gateway.request("INVITE", "sip:+1888@itsp.example", body=LAB_OFFER, call_id="gw"), gateway)
    assert ("198.51.100.7", 5070) in addresses(lab.net.take())


def test_zone_allow_entries_are_checked_at_start_up():
    with pytest.raises(ValueError, match="allow: 'lab' is not an address or CIDR"):
        ZoneSettings(name="itsp", kind="third_party_sip", allow=["lab"])
