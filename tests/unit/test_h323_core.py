"""The standalone gatekeeper core (sans-I/O), message kind by message kind, on a fake clock.

Endpoints are ``tests.rasclient.Endpoint`` objects; every datagram goes through the real codec.
"""

from __future__ import annotations

import pytest

from meter.codecs import ras
from meter.codecs.ras import Alias, TransportAddress
from tests.rasclient import GK, RecordingHooks, standalone_net

ALICE = [("h323-ID", "alice"), ("dialledDigits", "1000")]
BOB = [("h323-ID", "bob"), ("dialledDigits", "2000")]
SIP_REGISTERED = {"carol@lab.test": ("127.0.0.1", 5060)}  # what the node's sip_locator finds


@pytest.fixture
def hooks():
    return RecordingHooks()


@pytest.fixture
def setup(hooks):
    net, gk = standalone_net(hooks, sip_locator=SIP_REGISTERED.get)
    alice = net.endpoint(5001, ALICE)
    bob = net.endpoint(5002, BOB)
    return net, gk, alice, bob


def registered(setup):
    net, gk, alice, bob = setup
    assert net.register(alice).short == "RCF"
    assert net.register(bob).short == "RCF"
    return net, gk, alice, bob


# ----------------------------------------------------------------------------- GRQ

def test_grq_is_confirmed_with_our_ras_address_and_identifier(setup):
    net, gk, alice, _ = setup
    gcf = net.ask(alice, alice.grq())
    assert gcf.short == "GCF"
    assert gcf.ras_addresses == (GK,) and gcf.gatekeeper_identifier == "meter"
    assert net.ask(alice, alice.grq("meter")).short == "GCF"


def test_grq_naming_another_gatekeeper_is_rejected(setup):
    net, gk, alice, _ = setup
    grj = net.ask(alice, alice.grq("someone-else"))
    assert (grj.short, grj.reject_reason) == ("GRJ", "terminalExcluded")


# ----------------------------------------------------------------------------- RRQ

def test_r9_full_rrq_registers_every_alias_and_grants_the_default_ttl(setup, hooks):
    net, gk, alice, _ = setup
    rcf = net.register(alice)
    assert rcf.short == "RCF" and rcf.endpoint_identifier == "ep1"
    assert rcf.time_to_live == 1800 and rcf.gatekeeper_identifier == "meter"
    assert rcf.aliases == tuple(Alias(*a) for a in ALICE)
    reg = gk.registrations.get("ep1")
    assert reg.ras_address == alice.ras_address and reg.call_signal_addresses == (alice.call_signal_address,)
    assert reg.vendor.product_id == "TANDBERG EX90"  # NUL padding stripped by the codec
    # O(1) lookups by alias (h323-IDs without case) and by call signalling address
    assert gk.registrations.owner(Alias("h323-ID", "ALICE")) is reg
    assert gk.registrations.owner(Alias("partyNumber", "1000")) is reg  # the same E.164 number
    assert gk.registrations.at_address([alice.call_signal_address]) is reg
    info = hooks.events[0][1]
    assert hooks.called() == ["on_register", "on_registered"]
    assert info.endpoint_id == "ep1" and info.new_aliases == info.aliases and not info.reregistration
    assert info.vendor.version_id == "TC7.3.6" and info.source == alice.ras_address and info.mode == "standalone"


def test_requested_ttl_is_granted_when_shorter_and_capped_when_longer(setup):
    net, gk, alice, bob = setup
    assert net.register(alice, ttl=60).time_to_live == 60
    assert net.register(bob, ttl=86400).time_to_live == 1800


def test_keep_alive_refreshes_the_time_to_live(setup, hooks):
    net, gk, alice, _ = setup
    net.register(alice, ttl=60)
    net.tick(net.now + 50)
    rcf = net.ask(alice, alice.keep_alive(ttl=60))
    assert (rcf.short, rcf.endpoint_identifier, rcf.time_to_live) == ("RCF", "ep1", 60)
    net.tick(net.now + 50)  # 100 s after the full RRQ, 50 s after the keep-alive
    assert gk.registrations.get("ep1") is not None
    assert gk.counters.keepalives == 1
    assert "on_register" not in hooks.called()[2:]  # keep-alives do not ask the hooks


def test_keep_alive_for_an_unknown_endpoint_needs_a_full_registration(setup):
    net, gk, alice, _ = setup
    rrj = net.ask(alice, alice.keep_alive(endpoint_id="never-registered"))
    assert (rrj.short, rrj.reject_reason) == ("RRJ", "fullRegistrationRequired")


def test_alias_held_by_another_endpoint_is_refused_as_duplicate(setup, hooks):
    net, gk, alice, bob = setup
    net.register(alice)
    intruder = net.endpoint(5003, [("h323-ID", "ALICE"), ("h323-ID", "mallory"), ("partyNumber", "1000")])
    rrj = net.register(intruder)
    assert (rrj.short, rrj.reject_reason) == ("RRJ", "duplicateAlias")
    assert set(rrj.duplicate_aliases) == {Alias("h323-ID", "ALICE"), Alias("partyNumber", "1000")}
    assert gk.registrations.owner(Alias("h323-ID", "mallory")) is None
    assert len(gk.registrations) == 1 and hooks.called() == ["on_register", "on_registered"]


def test_full_rrq_from_a_registered_address_is_a_reregistration(setup, hooks):
    net, gk, alice, _ = setup
    net.register(alice)
    rcf = net.register(alice, aliases=(Alias("h323-ID", "alice"), Alias("h323-ID", "alice2")))
    assert rcf.endpoint_identifier == "ep1" and len(gk.registrations) == 1
    assert gk.registrations.owner(Alias("dialledDigits", "1000")) is None
    assert gk.registrations.owner(Alias("h323-ID", "alice2")).endpoint_id == "ep1"
    register = [e[1] for e in hooks.events if e[0] == "on_register"][1]
    assert register.reregistration and register.new_aliases == (Alias("h323-ID", "alice2"),)
    assert hooks.events[-2][0] == "on_unregistered" and hooks.events[-2][2:] == ((Alias("dialledDigits", "1000"),),
                                                                                   "reregistered")
    assert hooks.events[-1][0] == "on_registered"


def test_additive_registration_adds_to_the_aliases_held(setup):
    net, gk, alice, _ = setup
    net.register(alice)
    rcf = net.register(alice, aliases=(Alias("url-ID", "h323:alice@lab.test"),), additive=True)
    assert len(rcf.aliases) == 3
    assert gk.registrations.get("ep1").keys == {("h323-ID", "alice"), ("e164", "1000"), ("url-ID", "h323:alice@lab.test")}


def test_rrq_without_call_signal_address_or_for_another_gatekeeper_is_refused(setup):
    net, gk, alice, _ = setup
    seq = alice.next_seq()
    bare = ras.registration_request(seq, call_signal_addresses=[], ras_addresses=[alice.ras_address], aliases=ALICE)
    assert net.ask(alice, (seq, bare)).reject_reason == "invalidCallSignalAddress"
    seq = alice.next_seq()
    other = ras.registration_request(seq, call_signal_addresses=[alice.call_signal_address],
                                     ras_addresses=[alice.ras_address], aliases=ALICE, gatekeeper_id="other-gk")
    assert net.ask(alice, (seq, other)).short == "RRJ"
    assert len(gk.registrations) == 0


def test_r11_hook_refusal_answers_rrj_resource_unavailable(setup):
    net, gk, alice, _ = setup
    gk.hooks.refuse_aliases = {"alice"}
    rrj = net.register(alice)
    assert (rrj.short, rrj.reject_reason) == ("RRJ", "resourceUnavailable")
    assert len(gk.registrations) == 0 and "on_registered" not in gk.hooks.called()


def test_hook_exception_refuses_with_undefined_reason_and_is_counted(setup):
    net, gk, alice, _ = setup

    def broken(info):
        raise RuntimeError("licensing is down")

    gk.hooks.on_register = broken
    rrj = net.register(alice)
    assert (rrj.short, rrj.reject_reason) == ("RRJ", "undefinedReason")
    assert gk.counters.hook_errors == 1 and gk.counters.internal_errors == 0


# ----------------------------------------------------------------------------- URQ

def test_urq_from_the_endpoint_unregisters_it(setup, hooks):
    net, gk, alice, _ = setup
    net.register(alice)
    ucf = net.ask(alice, alice.urq())
    assert ucf.short == "UCF" and len(gk.registrations) == 0 and not gk.registrations.by_alias
    assert hooks.events[-1][0] == "on_unregistered" and hooks.events[-1][3] == "urq"
    urj = net.ask(alice, alice.urq())
    assert (urj.short, urj.reject_reason) == ("URJ", "notCurrentlyRegistered")


def test_urq_naming_some_aliases_unregisters_only_those(setup, hooks):
    net, gk, alice, _ = setup
    net.register(alice)
    assert net.ask(alice, alice.urq((Alias("dialledDigits", "1000"),))).short == "UCF"
    reg = gk.registrations.get("ep1")
    assert reg.aliases == (Alias("h323-ID", "alice"),)
    assert hooks.events[-1][2:] == ((Alias("dialledDigits", "1000"),), "urq")


def test_urq_by_call_signal_address_when_no_endpoint_identifier(setup):
    net, gk, alice, _ = setup
    net.register(alice)
    seq = alice.next_seq()
    urq = ras.unregistration_request(seq, call_signal_addresses=[alice.call_signal_address])
    assert net.ask(alice, (seq, urq)).short == "UCF" and len(gk.registrations) == 0


def test_expired_registration_is_removed_and_told_with_urq_ttl_expired(setup, hooks):
    net, gk, alice, bob = registered(setup)
    net.ask(alice, alice.keep_alive(ttl=30))
    answer, call = net.admit(alice, [("h323-ID", "bob")])
    net.tick(net.now + 29)
    assert len(gk.registrations) == 2
    net.tick(net.now + 1)
    assert gk.registrations.get(alice.endpoint_id) is None and gk.registrations.get(bob.endpoint_id) is not None
    urq = net.received(alice, "URQ")[-1]
    assert urq.reason == "ttlExpired" and urq.endpoint_identifier == "ep1"
    assert gk.counters.expired == 1 and gk.counters.received["UCF"] == 1  # the endpoint's answer, absorbed
    assert hooks.ended == {ras.guid_str(call.call_id): "expired"} and len(gk.calls) == 0
    assert hooks.events[-1][0] == "on_unregistered" and hooks.events[-1][3] == "expired"


# ----------------------------------------------------------------------------- ARQ

def test_arq_direct_model_gives_the_callee_call_signal_address(setup, hooks):
    net, gk, alice, bob = registered(setup)
    acf, call = net.admit(alice, [("h323-ID", "BOB")], bandwidth=7680)
    assert acf.short == "ACF" and acf.call_model == "direct"
    assert acf.dest_call_signal_address == bob.call_signal_address
    assert acf.bandwidth == 7680 and acf.irr_frequency == 120
    info = hooks.admissions[0]
    assert info.first_for_call and not info.answer_call and info.resolved == "h323" and info.bandwidth == 7680
    assert info.caller.endpoint_id == "ep1" and info.callee.endpoint_id == "ep2"
    assert info.callee.registered == "h323" and info.call_key == ras.guid_str(call.call_id)


def test_arq_to_an_unknown_alias_is_called_party_not_registered(setup):
    net, gk, alice, bob = registered(setup)
    arj, _ = net.admit(alice, [("h323-ID", "nobody")])
    assert (arj.short, arj.reject_reason) == ("ARJ", "calledPartyNotRegistered")
    assert len(gk.calls) == 0


def test_arq_from_an_unregistered_endpoint_is_caller_not_registered(setup):
    net, gk, alice, bob = setup
    arj, _ = net.admit(alice, [("h323-ID", "bob")], endpoint_id="ghost")
    assert (arj.short, arj.reject_reason) == ("ARJ", "callerNotRegistered")


def test_arq_dialled_by_address(setup, hooks):
    net, gk, alice, bob = registered(setup)
    acf, _ = net.admit(alice, dest_address=bob.call_signal_address)
    assert acf.dest_call_signal_address == bob.call_signal_address and hooks.admissions[-1].resolved == "h323"
    outside = TransportAddress("192.0.2.7", 1720)
    acf, _ = net.admit(alice, dest_address=outside)
    assert acf.dest_call_signal_address == outside
    assert hooks.admissions[-1].resolved is None and hooks.admissions[-1].callee.registered is None


def test_c9_arq_to_a_sip_registered_alias_is_resolved_through_the_sip_locator(setup, hooks):
    net, gk, alice, bob = registered(setup)
    acf, _ = net.admit(alice, [("url-ID", "carol@lab.test")])
    assert acf.short == "ACF" and acf.dest_call_signal_address == TransportAddress("127.0.0.1", 5060)
    info = hooks.admissions[-1]
    assert info.resolved == "sip" and info.callee.registered == "sip" and info.caller.registered == "h323"


def test_c9_sip_locator_error_is_counted_and_the_alias_is_not_found(hooks):
    def broken(alias_value):
        raise RuntimeError("SIP side is down")

    net, gk = standalone_net(hooks, sip_locator=broken)
    alice = net.endpoint(5001, ALICE)
    net.register(alice)
    arj, _ = net.admit(alice, [("url-ID", "carol@lab.test")])
    assert (arj.short, arj.reject_reason) == ("ARJ", "calledPartyNotRegistered")
    assert gk.counters.hook_errors == 1 and gk.counters.internal_errors == 0 and not hooks.admissions


def test_caller_and_callee_arqs_are_one_call(setup, hooks):
    net, gk, alice, bob = registered(setup)
    _, call = net.admit(alice, [("h323-ID", "bob")])
    acf, _ = net.admit(bob, [("h323-ID", "bob")], call_id=call.call_id, conference_id=call.conference_id,
                       answer=True, src_aliases=alice.aliases)
    assert acf.short == "ACF" and acf.dest_call_signal_address == bob.call_signal_address
    assert len(gk.calls) == 1
    record = gk.calls.get(call.call_id)
    assert set(record.legs) == {("ep1", False), ("ep2", True)}
    first, second = hooks.admissions
    assert first.first_for_call and not second.first_for_call and second.answer_call
    assert second.caller.endpoint_id == "ep1" and second.callee.endpoint_id == "ep2"
    assert gk.calls.by_endpoint == {"ep1": {call.call_id}, "ep2": {call.call_id}}


def test_callee_arq_for_a_caller_from_elsewhere_is_first_for_call(setup, hooks):
    net, gk, alice, bob = registered(setup)
    acf, call = net.admit(bob, [("h323-ID", "bob")], answer=True, src_aliases=(Alias("h323-ID", "visitor"),))
    assert acf.short == "ACF"
    info = hooks.admissions[-1]
    assert info.first_for_call and info.answer_call and info.caller.registered is None
    assert info.callee.endpoint_id == "ep2"


def test_retransmitted_arq_gets_the_same_acf_and_asks_the_hooks_once(setup, hooks):
    net, gk, alice, bob = registered(setup)
    seq, data, call = alice.arq((Alias("h323-ID", "bob"),))
    first = net.ask(alice, (seq, data))
    again = net.ask(alice, (seq, data))
    assert first == again and len(hooks.admissions) == 1


def test_arq_without_any_call_identity_is_refused(setup):
    net, gk, alice, bob = registered(setup)
    arj, _ = net.admit(alice, [("h323-ID", "bob")], call_id=ras.ZERO_GUID, conference_id=ras.ZERO_GUID)
    assert (arj.short, arj.reject_reason) == ("ARJ", "undefinedReason")


def test_v1_endpoint_call_is_keyed_by_conference_id(setup):
    net, gk, alice, bob = registered(setup)
    conference = bytes(range(16))
    _, call = net.admit(alice, [("h323-ID", "bob")], call_id=ras.ZERO_GUID, conference_id=conference)
    net.admit(bob, [("h323-ID", "bob")], call_id=ras.ZERO_GUID, conference_id=conference, answer=True)
    assert list(gk.calls.by_key) == [conference] and len(gk.calls.get(conference).legs) == 2


# ----------------------------------------------------------------------------- DRQ, BRQ

def test_drq_ends_the_call_and_the_other_partys_drq_is_confirmed_too(setup, hooks):
    net, gk, alice, bob = registered(setup)
    _, call = net.admit(alice, [("h323-ID", "bob")])
    _, bob_call = net.admit(bob, [("h323-ID", "bob")], call_id=call.call_id, conference_id=call.conference_id,
                            answer=True)
    assert net.ask(alice, alice.drq(call)).short == "DCF"
    assert len(gk.calls) == 0 and hooks.ended == {ras.guid_str(call.call_id): "drq"}
    assert net.ask(bob, bob.drq(bob_call)).short == "DCF"
    assert list(hooks.ended.values()) == ["drq"]  # still once


def test_drq_from_an_unregistered_endpoint_is_rejected(setup):
    net, gk, alice, bob = setup
    seq, data, call = alice.arq((Alias("h323-ID", "bob"),))
    drj = net.ask(alice, alice.drq(call))
    assert (drj.short, drj.reject_reason) == ("DRJ", "notRegistered")


def test_brq_changes_a_legs_bandwidth(setup):
    net, gk, alice, bob = registered(setup)
    _, call = net.admit(alice, [("h323-ID", "bob")], bandwidth=3840)
    bcf = net.ask(alice, alice.brq(call, 7680))
    assert (bcf.short, bcf.bandwidth) == ("BCF", 7680)
    assert gk.calls.get(call.call_id).legs[("ep1", False)].bandwidth == 7680
    _, unknown = alice.arq()[1:]
    assert net.ask(alice, alice.brq(unknown, 100)).reject_reason == "invalidConferenceID"
    stranger = net.endpoint(5009, [("h323-ID", "stranger")])
    assert net.ask(stranger, stranger.brq(call, 100)).reject_reason == "notBound"


# ----------------------------------------------------------------------------- LRQ

def test_lrq_locates_h323_and_sip_registered_aliases(setup):
    net, gk, alice, bob = registered(setup)
    neighbour = net.endpoint(5010)
    lcf = net.ask(neighbour, neighbour.lrq((Alias("dialledDigits", "2000"),)))
    assert lcf.short == "LCF"
    assert lcf.call_signal_addresses == (bob.call_signal_address,) and lcf.ras_addresses == (bob.ras_address,)
    sip = net.ask(neighbour, neighbour.lrq((Alias("url-ID", "carol@lab.test"),)))
    assert sip.call_signal_addresses == (TransportAddress("127.0.0.1", 5060),) and sip.ras_addresses == (GK,)
    lrj = net.ask(neighbour, neighbour.lrq((Alias("h323-ID", "nobody"),)))
    assert (lrj.short, lrj.reject_reason) == ("LRJ", "notRegistered")


def test_lcf_goes_to_the_lrq_reply_address(setup):
    net, gk, alice, bob = registered(setup)
    asker, other = net.endpoint(5011), net.endpoint(5012)
    seq = asker.next_seq()
    lrq = ras.location_request(seq, dest_aliases=[("h323-ID", "bob")], reply_address=other.ras_address)
    net.send(asker.ras_address, GK, lrq)
    assert not asker.inbox and net.received(other, "LCF")[0].request_seq_num == seq


# ----------------------------------------------------------------------------- IRQ / IRR

def admitted_call(setup):
    net, gk, alice, bob = registered(setup)
    _, call = net.admit(alice, [("h323-ID", "bob")])
    net.admit(bob, [("h323-ID", "bob")], call_id=call.call_id, conference_id=call.conference_id, answer=True)
    return net, gk, alice, bob, call


def test_silent_call_is_polled_with_irq_and_an_irr_keeps_it(setup, hooks):
    net, gk, alice, bob, call = admitted_call(setup)
    net.tick(net.now + 120)
    assert not net.received(alice, "IRQ")  # irr_frequency + irr_timeout of silence first
    net.tick(net.now + 6)
    irq = net.received(alice, "IRQ")[-1]
    assert irq.call_identifier == call.call_id and irq.call_reference_value == call.crv
    assert len(net.received(bob, "IRQ")) == 1
    net.tick(net.now + 10)  # both answered (the endpoints answer IRQ with an IRR listing the call)
    assert len(gk.calls) == 1 and not hooks.ended and gk.counters.received["IRR"] == 2


def test_missed_irr_releases_the_call_and_drops_it(setup, hooks):
    net, gk, alice, bob, call = admitted_call(setup)
    alice.answers_requests = False  # alice's side went away without DRQ
    net.tick(net.now + 126)
    assert len(net.received(alice, "IRQ")) == 1
    net.tick(net.now + 3)  # half of irr_timeout: asked once more (H.225.0: one IRQ retry)
    assert len(net.received(alice, "IRQ")) == 2
    assert len({m.request_seq_num for m in net.received(alice, "IRQ")}) == 1
    net.tick(net.now + 3)
    assert len(gk.calls) == 0 and hooks.ended == {ras.guid_str(call.call_id): "missed_irr"}
    assert gk.counters.missed_irr == 1
    drq = net.received(bob, "DRQ")[-1]
    assert drq.reason == "forcedDrop" and drq.call_identifier == call.call_id
    assert net.received(alice, "DRQ")[-1].reason == "forcedDrop"


def test_irr_that_does_not_list_the_polled_call_releases_it(setup, hooks):
    net, gk, alice, bob, call = admitted_call(setup)
    alice.calls.clear()  # alice forgot the call: her IRR lists nothing
    net.tick(net.now + 126)
    assert hooks.ended == {ras.guid_str(call.call_id): "not_in_call"} and len(gk.calls) == 0


def test_unsolicited_irrs_keep_a_call_from_being_polled(setup):
    net, gk, alice, bob, call = admitted_call(setup)
    for _ in range(3):
        net.now += 100
        net.send(alice.ras_address, GK, alice.irr(alice.next_seq(), unsolicited=True))
        net.send(bob.ras_address, GK, bob.irr(bob.next_seq(), unsolicited=True))
        net.tick(net.now)
    assert not net.received(alice, "IRQ") and not net.received(bob, "IRQ") and len(gk.calls) == 1


def test_irr_asking_for_a_response_is_acknowledged(setup):
    net, gk, alice, bob, call = admitted_call(setup)
    seq = alice.next_seq()
    net.send(alice.ras_address, GK, alice.irr(seq, need_response=True, unsolicited=True))
    assert net.received(alice, "IACK")[-1].request_seq_num == seq


def test_irr_frequency_zero_asks_for_no_irr_and_never_polls(hooks):
    net, gk = standalone_net(hooks, irr_frequency=0)
    alice, bob = net.endpoint(5001, ALICE), net.endpoint(5002, BOB)
    net.register(alice), net.register(bob)
    acf, _ = net.admit(alice, [("h323-ID", "bob")])
    assert acf.irr_frequency is None
    net.tick(net.now + 1000)
    assert len(gk.calls) == 1 and not net.received(alice, "IRQ")


# ----------------------------------------------------------------------------- bad input, unknown kinds

@pytest.mark.parametrize("data, code", [
    (b"", "empty"),
    (b"\xff\xff\xff\xff\x00\x13garbage", "undecodable"),
    (b"\x00" * 70000, "too_large"),
])
def test_malformed_datagrams_are_dropped_and_counted(setup, data, code):
    net, gk, alice, _ = setup
    assert gk.receive(data, alice.ras_address, net.now) == []
    assert gk.counters.malformed_dropped == 1 and gk.counters.malformed_by_code == {code: 1}
    assert net.register(alice).short == "RCF"  # still serving


def test_truncated_and_padded_messages_are_dropped(setup):
    net, gk, alice, _ = setup
    _, rrq = alice.rrq()
    assert gk.receive(rrq[:-5], alice.ras_address, net.now) == []
    assert gk.receive(rrq + b"\x00\x00", alice.ras_address, net.now) == []
    assert gk.counters.malformed_dropped == 2 and gk.counters.malformed_by_code["trailing_octets"] == 1
    assert len(gk.registrations) == 0 and gk.counters.internal_errors == 0


def test_a_valid_message_of_a_kind_we_do_not_handle_is_answered_xrs(setup):
    net, gk, alice, _ = setup
    irq = ras.info_request(77)  # gatekeeper-to-endpoint message sent to the gatekeeper
    net.send(alice.ras_address, GK, irq)
    xrs = net.received(alice, "XRS")[-1]
    assert xrs.request_seq_num == 77 and xrs.message_not_understood == irq
    nsm = ras.encode_raw("nonStandardMessage", {"requestSeqNum": 78, "nonStandardData": {
        "nonStandardIdentifier": ("h221NonStandard", {"t35CountryCode": 181, "t35Extension": 0,
                                                      "manufacturerCode": 1}), "data": b"x"}})
    net.send(alice.ras_address, GK, nsm)
    assert net.received(alice, "XRS")[-1].request_seq_num == 78
    assert gk.counters.unknown_answered == 2


def test_unexpected_answers_are_counted_never_answered(setup):
    net, gk, alice, _ = setup
    net.send(alice.ras_address, GK, ras.registration_confirm(5, endpoint_id="x"))
    net.send(alice.ras_address, GK, ras.unknown_message_response(6))
    assert not alice.inbox  # an XRS to an answer could loop between two gatekeepers
    assert gk.counters.stray_answers == 1


# ----------------------------------------------------------------------------- shutdown, views

def test_shutdown_tells_every_endpoint_and_releases_everything(setup, hooks):
    net, gk, alice, bob, call = admitted_call(setup)
    net.deliver_all(GK, gk.close(net.now))
    assert net.received(alice, "URQ")[-1].reason == "maintenance"
    assert net.received(bob, "URQ")[-1].reason == "maintenance"
    assert len(gk.registrations) == 0 and len(gk.calls) == 0
    assert hooks.ended == {ras.guid_str(call.call_id): "shutdown"} and not hooks.held


def test_views_show_registrations_and_calls(setup):
    net, gk, alice, bob, call = admitted_call(setup)
    regs = {r["endpoint_id"]: r for r in gk.registration_views(net.now + 10)}
    assert regs["ep1"]["aliases"] == ["h323-ID:alice", "dialledDigits:1000"]
    assert regs["ep1"]["expires_in"] == 1790 and regs["ep1"]["calls"] == 1
    assert regs["ep1"]["product"] == "TANDBERG EX90"
    (view,) = gk.call_views(net.now + 10)
    assert view["call_id"] == ras.guid_str(call.call_id) and view["duration"] == 10
    assert [leg["answer_call"] for leg in view["legs"]] == [False, True]
