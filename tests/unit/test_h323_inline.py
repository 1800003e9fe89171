"""Inline mode (sans-I/O): an InlineGatekeeper at GK forwarding to a standalone Gatekeeper at UPSTREAM,
wired in memory. The node rewrites sequence numbers and RAS addresses, relays answers and learns state."""

from __future__ import annotations

from meter.codecs import ras
from meter.codecs.ras import Alias, TransportAddress
from tests.rasclient import GK, UPSTREAM, RecordingHooks, inline_net

ALICE = [("h323-ID", "alice"), ("dialledDigits", "1000")]
BOB = [("h323-ID", "bob")]


def setup(**settings):
    hooks, upstream_hooks = RecordingHooks(), RecordingHooks()
    net, node, upstream = inline_net(hooks, upstream_hooks, **settings)
    alice, bob = net.endpoint(5001, ALICE), net.endpoint(5002, BOB)
    return net, node, upstream, hooks, upstream_hooks, alice, bob


def test_rrq_is_forwarded_with_our_ras_address_and_the_rcf_is_learned():
    net, node, upstream, hooks, _, alice, _ = setup()
    rcf = net.register(alice, ttl=300)
    assert rcf.short == "RCF" and rcf.endpoint_identifier == "ep1" and rcf.gatekeeper_identifier == "upstream-gk"
    up = upstream.registrations.get("ep1")
    assert up.ras_address == GK  # so the upstream answers and asks the node
    assert up.call_signal_addresses == (alice.call_signal_address,)  # call signalling is not touched
    learned = node.registrations.get("ep1")
    assert learned.ras_address == alice.ras_address and learned.time_to_live == 300
    assert node.registrations.owner(Alias("dialledDigits", "1000")) is learned
    assert hooks.called() == ["on_register", "on_registered"]
    info = hooks.events[0][1]
    assert info.endpoint_id is None and info.mode == "inline" and info.new_aliases == info.aliases
    assert node.counters.forwarded == 1 and node.counters.relayed == 1


def test_two_endpoints_with_the_same_sequence_number_get_their_own_answers():
    net, node, upstream, hooks, _, alice, bob = setup()
    _, rrq_a = alice.rrq()
    _, rrq_b = bob.rrq()  # both seq 1
    up_a = node.receive(rrq_a, alice.ras_address, net.now)
    up_b = node.receive(rrq_b, bob.ras_address, net.now)
    seq_a, seq_b = ras.decode(up_a[0].data).request_seq_num, ras.decode(up_b[0].data).request_seq_num
    assert seq_a != seq_b and up_a[0].address == up_b[0].address == UPSTREAM
    # the upstream answers in the opposite order
    answers_b = upstream.receive(up_b[0].data, GK, net.now)
    answers_a = upstream.receive(up_a[0].data, GK, net.now)
    to_bob = node.receive(answers_b[0].data, UPSTREAM, net.now)
    to_alice = node.receive(answers_a[0].data, UPSTREAM, net.now)
    assert to_bob[0].address == bob.ras_address and to_alice[0].address == alice.ras_address
    rcf_a, rcf_b = ras.decode(to_alice[0].data), ras.decode(to_bob[0].data)
    assert rcf_a.request_seq_num == rcf_b.request_seq_num == 1
    assert rcf_a.aliases[0].value == "alice" and rcf_b.aliases[0].value == "bob"
    assert node.registrations.get(rcf_a.endpoint_identifier).ras_address == alice.ras_address


def test_retransmission_while_waiting_is_resent_and_asks_the_hooks_once():
    net, node, upstream, hooks, _, alice, _ = setup()
    _, rrq = alice.rrq()
    first = node.receive(rrq, alice.ras_address, net.now)
    again = node.receive(rrq, alice.ras_address, net.now + 3)
    assert first == again and hooks.called() == ["on_register"] and len(node.pending) == 1


def test_keep_alive_refreshes_the_learned_time_to_live():
    net, node, upstream, hooks, _, alice, _ = setup()
    net.register(alice, ttl=60)
    net.tick(net.now + 50)
    rcf = net.ask(alice, alice.keep_alive(ttl=60))
    assert rcf.short == "RCF" and rcf.time_to_live == 60
    net.tick(net.now + 30)
    assert node.registrations.get("ep1") is not None and node.counters.keepalives == 1


def test_upstream_expiry_urq_is_relayed_before_the_node_forgets_the_endpoint():
    net, node, upstream, hooks, _, alice, _ = setup(upstream_settings={"time_to_live": 60})
    net.register(alice)
    net.tick(net.now + 60)
    urqs = net.received(alice, "URQ")
    assert len(urqs) == 1 and urqs[0].reason == "ttlExpired"  # the upstream's, relayed
    assert node.registrations.get("ep1") is None and hooks.events[-1][3] == "upstream_urq"
    assert not hooks.held


def test_learned_registration_expires_without_a_urq_of_our_own():
    net, node, upstream, hooks, _, alice, _ = setup(upstream_settings={"time_to_live": 60})
    net.register(alice)
    del net.cores[UPSTREAM]  # its expiry URQ never comes
    net.tick(net.now + 74)
    assert node.registrations.get("ep1") is not None  # upstream_timeout of grace for that URQ
    net.tick(net.now + 1)
    assert node.registrations.get("ep1") is None and hooks.events[-1][3] == "expired"
    assert not net.received(alice, "URQ") and node.counters.sent["URQ"] == 0


def test_upstream_urq_is_relayed_and_the_endpoints_ucf_goes_back_up():
    net, node, upstream, hooks, upstream_hooks, alice, _ = setup()
    net.register(alice)
    net.deliver_all(UPSTREAM, upstream.close(net.now))  # the upstream shuts down: URQ maintenance
    assert net.received(alice, "URQ")[-1].reason == "maintenance"
    assert node.registrations.get("ep1") is None and hooks.events[-1][3] == "upstream_urq"
    assert upstream.counters.received["UCF"] == 1  # alice's answer went back through the node


def test_upstream_rrj_is_relayed_and_settles_the_allowed_registration():
    net, node, upstream, hooks, _, alice, bob = setup()
    net.register(alice)
    intruder = net.endpoint(5003, [("h323-ID", "alice")])
    rrj = net.register(intruder)
    assert (rrj.short, rrj.reject_reason) == ("RRJ", "duplicateAlias")
    assert rrj.duplicate_aliases == (Alias("h323-ID", "alice"),)
    failed = hooks.events[-1]
    assert failed[0] == "on_register_failed" and failed[2] == "upstream_reject"
    assert failed[1].aliases == (Alias("h323-ID", "alice"),)


def test_hook_refusal_is_answered_by_the_node_and_nothing_goes_upstream():
    net, node, upstream, hooks, _, alice, _ = setup()
    hooks.refuse_aliases = {"alice"}
    rrj = net.register(alice)
    assert (rrj.short, rrj.reject_reason) == ("RRJ", "resourceUnavailable")
    assert node.counters.forwarded == 0 and upstream.counters.received == {}


def test_keep_alive_refused_upstream_removes_the_learned_registration():
    net, node, upstream, hooks, _, alice, _ = setup()
    net.register(alice)
    upstream.registrations.remove("ep1")  # the upstream forgot it (restart)
    rrj = net.ask(alice, alice.keep_alive())
    assert rrj.reject_reason == "fullRegistrationRequired"
    assert node.registrations.get("ep1") is None and hooks.events[-1][3] == "upstream_reject"


def test_keep_alive_for_a_registration_made_before_the_node_started_is_learned():
    net, node, upstream, hooks, _, alice, _ = setup()
    net.register(alice, to=UPSTREAM)  # registered straight on the upstream
    alice.inbox.clear()
    assert net.ask(alice, alice.keep_alive()).short == "RCF"
    assert node.registrations.get("ep1") is not None and hooks.called() == ["on_registered"]


def call_between(net, alice, bob):
    acf, call = net.admit(alice, [("h323-ID", "bob")])
    assert acf.short == "ACF"
    acf2, _ = net.admit(bob, [("h323-ID", "bob")], call_id=call.call_id, conference_id=call.conference_id,
                        answer=True)
    assert acf2.short == "ACF"
    return call


def test_arq_and_acf_are_learned_as_one_call_charged_once_and_drq_ends_it():
    net, node, upstream, hooks, _, alice, bob = setup()
    net.register(alice), net.register(bob)
    call = call_between(net, alice, bob)
    record = node.calls.get(call.call_id)
    assert set(record.legs) == {("ep1", False), ("ep2", True)}
    assert record.legs[("ep1", False)].dest_address == bob.call_signal_address  # from the upstream's ACF
    assert [a.first_for_call for a in hooks.admissions] == [True, False]
    assert hooks.admissions[0].resolved == "h323"  # bob is learned, so the node knows where he is
    assert net.ask(alice, alice.drq(call)).short == "DCF"
    assert net.ask(bob, bob.drq(bob.calls[call.call_id])).short == "DCF"
    assert hooks.ended == {ras.guid_str(call.call_id): "drq"} and len(node.calls) == 0


def test_arq_refused_upstream_releases_the_charge():
    net, node, upstream, hooks, _, alice, bob = setup()
    net.register(alice)
    arj, call = net.admit(alice, [("h323-ID", "nobody")])
    assert (arj.short, arj.reject_reason) == ("ARJ", "calledPartyNotRegistered")
    assert hooks.ended == {ras.guid_str(call.call_id): "upstream_reject"} and len(node.calls) == 0


def test_arq_refused_by_the_hooks_is_answered_locally():
    net, node, upstream, hooks, _, alice, bob = setup()
    net.register(alice), net.register(bob)
    hooks.max_calls = 0
    arj, _ = net.admit(alice, [("h323-ID", "bob")])
    assert (arj.short, arj.reject_reason) == ("ARJ", "resourceUnavailable")
    assert upstream.counters.received["ARQ"] == 0 and len(node.calls) == 0


def test_silent_upstream_times_out_and_settles_every_charge():
    net, node, upstream, hooks, _, alice, bob = setup()
    net.register(alice), net.register(bob)
    del net.cores[UPSTREAM]  # the upstream goes silent
    seq, arq, call = alice.arq((Alias("h323-ID", "bob"),))
    net.send(alice.ras_address, GK, arq)
    net.send(bob.ras_address, GK, bob.rrq(aliases=(Alias("h323-ID", "bob2"),))[1])
    assert len(node.pending) == 2 and len(node.calls) == 1
    net.tick(net.now + 14)
    assert len(node.pending) == 2
    net.tick(net.now + 1)
    assert not node.pending and node.counters.upstream_timeouts == 2
    assert hooks.ended == {ras.guid_str(call.call_id): "upstream_timeout"}
    assert hooks.events[-1][0] == "on_register_failed" or hooks.events[-2][0] == "on_register_failed"
    assert node.registrations.get("ep2") is not None  # the unanswered re-registration changed nothing


def test_request_in_progress_from_the_upstream_is_relayed_and_extends_the_wait():
    net, node, upstream, hooks, _, alice, _ = setup()
    out = node.receive(alice.rrq()[1], alice.ras_address, net.now)
    up_seq = ras.decode(out[0].data).request_seq_num
    relayed = node.receive(ras.request_in_progress(up_seq, delay_ms=20000), UPSTREAM, net.now)
    rip = ras.decode(relayed[0].data)
    assert (rip.short, rip.request_seq_num, rip.delay) == ("RIP", 1, 20000)
    node.tick(net.now + 30)
    assert len(node.pending) == 1
    node.tick(net.now + 36)
    assert not node.pending and hooks.events[-1][2] == "upstream_timeout"


def test_grq_is_answered_with_the_nodes_ras_address():
    net, node, upstream, hooks, _, alice, _ = setup()
    gcf = net.ask(alice, alice.grq())
    assert gcf.short == "GCF" and gcf.ras_addresses == (GK,) and gcf.gatekeeper_identifier == "upstream-gk"


def test_lcf_goes_to_the_original_reply_address():
    net, node, upstream, hooks, _, alice, bob = setup()
    net.register(bob)
    lcf = net.ask(alice, alice.lrq((Alias("h323-ID", "bob"),)))
    assert lcf.short == "LCF" and lcf.call_signal_addresses == (bob.call_signal_address,)
    assert upstream.counters.sent["LCF"] == 1


def test_upstream_irq_reaches_the_parties_and_their_irrs_go_back_up():
    net, node, upstream, hooks, _, alice, bob = setup(upstream_settings={"irr_frequency": 30, "irr_timeout": 6})
    net.register(alice), net.register(bob)
    call = call_between(net, alice, bob)
    net.tick(net.now + 36)
    assert len(net.received(alice, "IRQ")) == 1 and len(net.received(bob, "IRQ")) == 1
    assert upstream.counters.received["IRR"] == 2 and node.counters.unroutable == 0
    net.tick(net.now + 10)
    assert len(upstream.calls) == 1 and len(node.calls) == 1 and not hooks.ended
    # the node refreshed its legs from the IRRs that passed
    assert all(leg.last_seen == net.now - 10 for leg in node.calls.get(call.call_id).legs.values())


def test_upstream_drq_is_relayed_and_ends_the_call():
    net, node, upstream, hooks, _, alice, bob = setup(upstream_settings={"irr_frequency": 30, "irr_timeout": 6})
    net.register(alice), net.register(bob)
    call = call_between(net, alice, bob)
    alice.answers_requests = False
    for _ in range(3):
        net.tick(net.now + 20)
    assert net.received(bob, "DRQ")[-1].reason == "forcedDrop"  # missed IRR upstream, relayed by the node
    assert hooks.ended == {ras.guid_str(call.call_id): "upstream_drq"} and len(node.calls) == 0


def test_upstream_requests_naming_nobody_we_know_are_counted():
    net, node, upstream, hooks, _, alice, _ = setup()
    node.receive(ras.info_request(9), UPSTREAM, net.now)  # IRQ about all calls: which endpoint?
    node.receive(ras.unregistration_request(10, call_signal_addresses=[("127.0.0.1", 9)], endpoint_id="x"),
                 UPSTREAM, net.now)
    assert node.counters.unroutable == 2
    node.receive(ras.admission_confirm(11, bandwidth=1, dest_call_signal_address=("127.0.0.1", 1)), UPSTREAM, net.now)
    assert node.counters.stray_answers == 1


def test_shutdown_settles_everything_without_urqs():
    net, node, upstream, hooks, _, alice, bob = setup()
    net.register(alice), net.register(bob)
    call = call_between(net, alice, bob)
    node.receive(net.endpoint(5003, [("h323-ID", "late")]).rrq()[1], TransportAddress("127.0.0.1", 5003), net.now)
    out = node.close(net.now)
    assert out == []  # the registrations are the upstream's
    assert hooks.ended == {ras.guid_str(call.call_id): "shutdown"} and not hooks.held
    assert hooks.events[-1][0] == "on_register_failed" and hooks.events[-1][2] == "shutdown"
    assert len(upstream.registrations) == 2  # untouched
