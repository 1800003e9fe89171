"""The hook contract (meter.h323.hooks): hook order, every admitted call ends exactly once whatever
releases it, both ARQs of a call reach the hooks but only the first charges, every registered alias
is unregistered exactly once. DESIGN principle 4: after any scenario the counts return to zero."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meter.codecs import ras
from meter.codecs.ras import Alias
from tests.rasclient import GK, RecordingHooks, standalone_net

ALICE = [("h323-ID", "alice"), ("dialledDigits", "1000")]
BOB = [("h323-ID", "bob")]


def two_endpoints(hooks=None, **settings):
    hooks = hooks or RecordingHooks()
    net, gk = standalone_net(hooks, **settings)
    alice, bob = net.endpoint(5001, ALICE), net.endpoint(5002, BOB)
    net.register(alice), net.register(bob)
    return net, gk, hooks, alice, bob


def call_between(net, alice, bob):
    _, call = net.admit(alice, [("h323-ID", "bob")])
    net.admit(bob, [("h323-ID", "bob")], call_id=call.call_id, conference_id=call.conference_id, answer=True)
    return call


def test_hook_order_for_a_whole_session():
    net, gk, hooks, alice, bob = two_endpoints()
    call = call_between(net, alice, bob)
    net.ask(bob, bob.drq(call))
    net.ask(alice, alice.urq())
    assert hooks.called() == ["on_register", "on_registered", "on_register", "on_registered",
                     "on_admission", "on_admission", "on_call_ended", "on_unregistered"]
    registered = hooks.events[1]
    assert registered[1] == "ep1" and registered[2] == tuple(Alias(*a) for a in ALICE)
    assert registered[3].product_id == "TANDBERG EX90" and registered[4] == alice.ras_address
    assert registered[5] == net.now  # wall_offset 0 in unit tests: now + offset


def test_on_registered_gets_wall_clock_time():
    hooks = RecordingHooks()
    net, gk = standalone_net(hooks)
    gk.wall_offset = 1_700_000_000.0
    net.register(net.endpoint(5001, ALICE))
    assert hooks.events[-1][5] == net.now + 1_700_000_000.0


def test_r9_an_alias_spelled_otherwise_is_the_same_alias_to_the_hooks():
    """Aliases compare as the registration table does (alias_key): re-registering "Room1" as "room1"
    adds nothing and drops nothing, and the one alias is unregistered once, in its latest spelling."""
    hooks = RecordingHooks()
    net, gk = standalone_net(hooks)
    room = net.endpoint(5001, [("h323-ID", "Room1")])
    net.register(room)
    net.register(room, aliases=(Alias("h323-ID", "room1"),))
    assert hooks.called() == ["on_register", "on_registered", "on_register", "on_registered"]
    assert hooks.events[2][1].new_aliases == () and hooks.events[3][2] == (Alias("h323-ID", "room1"),)
    net.ask(room, room.urq())
    assert hooks.events[-1][0] == "on_unregistered" and hooks.events[-1][2] == (Alias("h323-ID", "room1"),)
    assert not hooks.held


def test_unregistration_ends_the_calls_before_the_aliases_go():
    net, gk, hooks, alice, bob = two_endpoints()
    call_between(net, alice, bob)
    net.ask(bob, bob.urq())
    assert hooks.called()[-2:] == ["on_call_ended", "on_unregistered"]
    assert hooks.events[-2][2] == "urq" and hooks.events[-1][1] == "ep2"


RELEASES = {
    "caller DRQ": lambda net, gk, a, b, call: net.ask(a, a.drq(call)),
    "callee DRQ": lambda net, gk, a, b, call: net.ask(b, b.drq(b.calls[call.call_id])),
    "both DRQ": lambda net, gk, a, b, call: (net.ask(a, a.drq(call)), net.ask(b, b.drq(b.calls[call.call_id]))),
    "caller URQ": lambda net, gk, a, b, call: net.ask(a, a.urq()),
    "callee URQ": lambda net, gk, a, b, call: net.ask(b, b.urq()),
    "expiry": lambda net, gk, a, b, call: net.tick(net.now + 1801),
    "missed IRR": lambda net, gk, a, b, call: (setattr(a, "answers_requests", False),
                                               *[net.tick(net.now + 7) for _ in range(20)]),
    "shutdown": lambda net, gk, a, b, call: net.deliver_all(GK, gk.close(net.now)),
}
CAUSES = {"caller DRQ": "drq", "callee DRQ": "drq", "both DRQ": "drq", "caller URQ": "urq", "callee URQ": "urq",
          "expiry": "expired", "missed IRR": "missed_irr", "shutdown": "shutdown"}


@pytest.mark.parametrize("path", list(RELEASES))
def test_every_admitted_call_ends_exactly_once(path):
    net, gk, hooks, alice, bob = two_endpoints()
    call = call_between(net, alice, bob)
    RELEASES[path](net, gk, alice, bob, call)
    RELEASES["shutdown"](net, gk, alice, bob, call)  # and shutting down afterwards ends nothing twice
    key = ras.guid_str(call.call_id)
    assert hooks.charged == {key: 1} and hooks.ended == {key: CAUSES[path]}
    assert [e for e in hooks.events if e[0] == "on_call_ended"] == [("on_call_ended", key, CAUSES[path])]
    assert hooks.in_use == 0 and len(gk.calls) == 0 and not gk.calls.by_endpoint and not gk._irqs
    assert not hooks.held  # shutdown unregistered every alias, once


def test_caller_and_callee_arq_charge_once():
    net, gk, hooks, alice, bob = two_endpoints()
    call = call_between(net, alice, bob)
    assert [a.first_for_call for a in hooks.admissions] == [True, False]
    assert hooks.charged == {ras.guid_str(call.call_id): 1}


def test_at_the_license_limit_arq_is_refused_resource_unavailable():
    net, gk, hooks, alice, bob = two_endpoints(RecordingHooks(max_calls=1))
    carol = net.endpoint(5003, [("h323-ID", "carol")])
    net.register(carol)
    call = call_between(net, alice, bob)  # the callee's ARQ of a charged call is not refused
    arj, _ = net.admit(carol, [("h323-ID", "alice")])
    assert (arj.short, arj.reject_reason) == ("ARJ", "resourceUnavailable")
    assert len(gk.calls) == 1 and hooks.in_use == 1
    net.ask(alice, alice.drq(call))
    acf, _ = net.admit(carol, [("h323-ID", "alice")])
    assert acf.short == "ACF" and hooks.in_use == 1


def test_refused_callee_arq_leaves_the_charged_call_to_end_once():
    hooks = RecordingHooks()
    net, gk, hooks, alice, bob = two_endpoints(hooks)
    _, call = net.admit(alice, [("h323-ID", "bob")])
    real = hooks.on_admission
    hooks.on_admission = lambda info: (real(info), hooks._verdict.refuse("requestDenied"))[1]
    arj, _ = net.admit(bob, [("h323-ID", "bob")], call_id=call.call_id, conference_id=call.conference_id,
                       answer=True)
    assert (arj.short, arj.reject_reason) == ("ARJ", "requestDenied")
    assert len(gk.calls.get(call.call_id).legs) == 1
    net.ask(alice, alice.drq(call))
    assert hooks.ended == {ras.guid_str(call.call_id): "drq"}


def test_a_refused_first_arq_leaves_no_call_and_the_next_one_is_first_again():
    net, gk, hooks, alice, bob = two_endpoints(RecordingHooks(max_calls=0))
    arj, call = net.admit(alice, [("h323-ID", "bob")])
    assert arj.short == "ARJ" and len(gk.calls) == 0
    hooks.max_calls = None
    net.admit(bob, [("h323-ID", "bob")], call_id=call.call_id, conference_id=call.conference_id, answer=True)
    assert hooks.admissions[-1].first_for_call and hooks.charged == {ras.guid_str(call.call_id): 1}


def test_notification_hook_errors_are_counted_and_do_not_break_release():
    net, gk, hooks, alice, bob = two_endpoints()
    call = call_between(net, alice, bob)

    def broken(*args):
        raise RuntimeError("metering bug")

    hooks.on_call_ended = broken
    assert net.ask(alice, alice.drq(call)).short == "DCF"
    assert len(gk.calls) == 0 and gk.counters.hook_errors == 1 and gk.counters.internal_errors == 0


# ----------------------------------------------------------------------------- any sequence of events

OPS = st.lists(st.tuples(st.sampled_from(["rrq", "rereg", "keepalive", "urq", "partial_urq", "arq", "answer",
                                          "drq", "tick", "mute"]),
                         st.integers(0, 2), st.integers(0, 2)), max_size=25)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OPS)
def test_any_sequence_returns_every_count_to_zero(ops):
    """Principle 4 and R9: whatever happens, on shutdown every charged call has ended once and every
    registered alias has been unregistered once; the tables are empty."""
    hooks = RecordingHooks(max_calls=2)
    net, gk = standalone_net(hooks, time_to_live=120, irr_frequency=30, irr_timeout=6)
    eps = [net.endpoint(5001 + i, [("h323-ID", f"u{i}"), ("dialledDigits", f"{1000 + i}")]) for i in range(3)]
    for op, i, j in ops:
        ep, other = eps[i], eps[j]
        if op == "rrq":
            net.register(ep)
        elif op == "rereg":
            net.register(ep, aliases=(Alias("h323-ID", f"u{i}"), Alias("url-ID", f"u{i}@lab")))
        elif op == "keepalive" and ep.endpoint_id:
            net.ask(ep, ep.keep_alive())
        elif op == "urq" and ep.endpoint_id:
            net.ask(ep, ep.urq())
            ep.endpoint_id = None
        elif op == "partial_urq" and ep.endpoint_id:
            net.ask(ep, ep.urq((Alias("dialledDigits", f"{1000 + i}"),)))
        elif op == "arq" and ep.endpoint_id:
            net.admit(ep, [("h323-ID", f"u{j}")])
        elif op == "answer" and ep.endpoint_id and other.calls:
            call = next(iter(other.calls.values()))
            net.admit(ep, [("h323-ID", f"u{i}")], call_id=call.call_id, conference_id=call.conference_id,
                      answer=True)
        elif op == "drq" and ep.endpoint_id and ep.calls:
            net.ask(ep, ep.drq(next(iter(ep.calls.values()))))
            ep.calls.pop(next(iter(ep.calls)))
        elif op == "tick":
            net.tick(net.now + 40 * (j + 1))
        elif op == "mute":
            ep.answers_requests = not ep.answers_requests
        assert hooks.in_use == len(gk.calls) <= 2
    net.deliver_all(GK, gk.close(net.now))
    assert hooks.in_use == 0 and not hooks.held
    assert sorted(hooks.charged) == sorted(hooks.ended)
    assert len(gk.calls) == 0 and len(gk.registrations) == 0 and not gk.registrations.by_alias
    assert gk.counters.internal_errors == 0 and gk.counters.hook_errors == 0
