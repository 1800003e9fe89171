"""Running totals (meter.metering.tallies) equal a full recount of the metering tables.

``/metrics`` and ``/api/v1/licenses`` read the totals instead of walking every record. Random
sequences of charges and releases (register, refresh, unregister, expire, refused reservations,
calls set up, settled and ended, refusals when a pool is exhausted) and restarts (every record
restored into a fresh node, as meter.store does) are run, and after each step the totals are
compared with the counts a walk gives:
- registrations by (protocol, device class): one per charged alias (R9), device class from the
  license taken (R1, R2, R3) or "none" (MRA / no license, R6); released on unregister and expiry,
  and for a reservation the upstream refused (R11 refusals are never counted);
- calls by (class, license): "setup" until set-up completes (C6), then video / audio_sip (C4, C5),
  frozen after (C7); charged RMS (C2), CMR (C10) or nothing (C1).
"""

from __future__ import annotations

import random
from collections import Counter
from types import SimpleNamespace

import pytest

from meter.admin import metrics
from meter.admin.api import licenses_view
from meter.licensing.registrations import RegistrationFacts
from meter.sip.hooks import BindingInfo, RegisterInfo
from tests.unit.test_metering import (AUDIO, DX80, EX90_OLD, PHONE, ROOM_KIT, VIDEO, complete, invite,
                                      make_metering)

USER_AGENTS = (DX80, EX90_OLD, ROOM_KIT, "SomePhone/1.0")
CALLEES = ("sip:+4930{n}@itsp.example", "sip:room{n}@lab.test", "sip:meet{n}@webex.com", "sip:x{n}@partner.example")


def recount(m) -> tuple[dict, dict]:
    """What the scrape used to do: walk every record."""
    regs = Counter((r.protocol, r.device_class) for r in m.registrations.values())
    calls = Counter((str(c.media), str(c.charge.license)) for c in m.calls.values())
    return dict(regs), dict(calls)


def assert_totals_match(m) -> None:
    regs, calls = recount(m)
    assert m.tallies.registrations == regs
    assert m.tallies.calls == calls


def restart(m, policy, clock, mode):
    """A fresh node that charges every stored record again from its stored decision."""
    fresh, fresh_policy, fresh_clock = make_metering(rms=3, room=6, desktop=4, cmr=1, mode=mode)
    fresh_clock.now = clock.now
    for (protocol, alias) in list(m.registrations):
        state = m.registration_state(protocol, alias)
        if state is not None:  # inline: a reservation is not carried over
            fresh.restore_registration(protocol, alias, state, clock.now)
    for (protocol, call_id) in list(m.calls):
        fresh.restore_call(protocol, call_id, m.call_state(protocol, call_id), clock.now)
    m.close()
    assert m.tallies.registrations == {} and m.tallies.calls == {}
    return fresh, fresh_policy, fresh_clock


def _register(policy, mode, user, ua):
    aor = f"sip:{user}@lab.test"
    policy.on_register(RegisterInfo(aor, (f"sip:{user}@127.0.0.1:40000",), ua, PHONE, 600, f"cid-{user}",
                                    mode == "inline"))
    return aor


def _bind(policy, aor, ua):
    policy.on_bindings(aor, (BindingInfo(aor.replace("lab.test", "127.0.0.1"), 600, PHONE, ua),), ua, PHONE, 0)


def _step(rng, m, policy, clock, mode, live_calls):
    clock.now += rng.random()
    user = f"u{rng.randrange(40)}"
    ua = rng.choice(USER_AGENTS)
    action = rng.randrange(10)
    if action <= 2:  # register (R9); standalone binds at once, inline waits for the upstream
        aor = _register(policy, mode, user, ua)
        if mode == "standalone" or rng.random() < 0.6:
            _bind(policy, aor, ua)
    elif action == 3:  # inline: the upstream refused or never answered (only a reservation goes)
        policy.on_register_failed(f"sip:{user}@lab.test", f"cid-{user}", "rejected 401")
    elif action == 4:  # unregister, or expiry (the registrar's timer)
        if rng.random() < 0.5:
            policy.on_bindings(f"sip:{user}@lab.test", (), ua, PHONE, clock.now)
        else:
            m.release_registration("sip", f"sip:{user}@lab.test", "expired", clock.now)
    elif action == 5:  # an H.323 alias (R9 per alias, the product decides the class)
        alias = f"h323:{user}"
        if rng.random() < 0.7:
            m.charge_registration("h323", alias, RegistrationFacts("C", "h323", "direct", 1, "",
                                                                    rng.choice(("Cisco-EX90", "Unknown-GW"))), clock.now)
        else:
            m.release_registration("h323", alias, "unregistered", clock.now)
    elif action <= 7:  # a new call (C1, C2, C10; refused when RMS is exhausted)
        call_id = f"c{rng.randrange(10**9)}"
        callee = rng.choice(CALLEES).format(n=rng.randrange(50))
        if invite(policy, call_id, callee, caller=f"u{rng.randrange(40)}").allowed:
            live_calls.append(call_id)
    elif action == 8 and live_calls:  # set-up completes: settle once (C6), frozen after (C7)
        call_id = rng.choice(live_calls)
        complete(policy, call_id, rng.choice((AUDIO, VIDEO)))
    elif live_calls:  # the call ends (or ends twice: release is idempotent)
        call_id = live_calls.pop(rng.randrange(len(live_calls)))
        for _ in range(rng.choice((1, 2))):
            policy.on_call_ended(call_id, "bye")


@pytest.mark.parametrize("mode", ["standalone", "inline"])
@pytest.mark.parametrize("seed", range(6))
def test_r9_c4_c6_running_totals_equal_a_recount_after_random_charges_releases_and_restarts(mode, seed):
    rng = random.Random(seed)
    m, policy, clock = make_metering(rms=3, room=6, desktop=4, cmr=1, mode=mode)  # small pools: refusals too
    live_calls: list[str] = []
    for step in range(400):
        _step(rng, m, policy, clock, mode, live_calls)
        assert_totals_match(m)
        if step % 97 == 96:
            m, policy, clock = restart(m, policy, clock, mode)
            live_calls = [call_id for (_, call_id) in m.calls]
            assert_totals_match(m)
    assert m.registrations and m.calls  # the sequence left records of both kinds to count


def test_c6_c7_a_settled_call_moves_class_once_and_is_counted_once():
    m, policy, _ = make_metering()
    invite(policy, "c1", "sip:+4930123@itsp.example")
    assert m.tallies.calls == {("setup", "rms"): 1}  # C6: video until set-up completes
    complete(policy, "c1", AUDIO)
    assert m.tallies.calls == {("audio_sip", "rms"): 1}  # C4, C5: one m= line
    complete(policy, "c1", VIDEO)  # C7: no change after set-up
    assert m.tallies.calls == {("audio_sip", "rms"): 1}
    policy.on_call_ended("c1", "bye")
    policy.on_call_ended("c1", "bye")
    assert m.tallies.calls == {}


def test_r9_scrape_and_licenses_api_show_the_recount():
    """What /metrics and /api/v1/licenses print comes from the totals and equals the walk."""
    rng = random.Random(7)
    m, policy, clock = make_metering(mode="standalone")
    live: list[str] = []
    for _ in range(300):
        _step(rng, m, policy, clock, "standalone", live)
    regs, calls = recount(m)
    doc = licenses_view(m)
    walked_regs = Counter()
    for (protocol, device_class), count in regs.items():
        walked_regs[f"{protocol}/{device_class}"] += count
    walked_calls = Counter()
    for (media, _), count in calls.items():
        walked_calls[media] += count
    assert doc["registrations_by_class"] == dict(walked_regs)
    assert doc["calls_by_class"] == dict(walked_calls)

    node = SimpleNamespace(metering=m, sip=None, ras=None, pool_sync=None, latency=None, latency_ras=None)
    text = metrics.render(node).decode()
    for (protocol, device_class), count in regs.items():
        assert f'meter_registrations{{device_class="{device_class}",protocol="{protocol}"}} {float(count)}' in text
    by_class = Counter()
    for (media, lic), count in calls.items():
        by_class[(metrics.CALL_CLASSES.get(media, "video"), lic)] += count
    for (cls, lic), count in by_class.items():
        assert f'meter_calls{{class="{cls}",license="{lic}"}} {float(count)}' in text
