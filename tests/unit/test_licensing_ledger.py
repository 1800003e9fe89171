"""The ledger: pools, physical capacity, set-up and settle, enforce and observe (C4, C6, C7, P3, P4, R6, R11)."""

import pytest

from meter import catalogs
from meter.licensing.calls import CallFacts, classify_call
from meter.licensing.ledger import Ledger
from meter.licensing.model import Kind, License, Media
from meter.licensing.platforms import Platform
from meter.licensing.registrations import RegistrationCharge

LARGE = catalogs.platform("large_vm")
B2B = ("local", "E", "sip"), ("external", "", "sip")  # registered endpoint to the Internet, on E


def b2b(m_lines):
    return classify_call(CallFacts("E", *B2B[0], *B2B[1], m_lines=m_lines))


SETUP, AUDIO, VIDEO = b2b(None), b2b(1), b2b(2)
REGISTERED_CALL = classify_call(CallFacts("E", "local", "E", "sip", "local", "E", "sip", m_lines=2))


def ledger(rms=0, platform=LARGE, enforcement="enforce", **licenses):
    book = Ledger("n1", "E", platform, enforcement=enforcement, now=0.0)
    book.set_licenses({License.RMS: rms, **licenses}, 0.0)
    return book


def setup_audio_call(book, key, now=1.0):
    decision = book.charge_call(key, SETUP, now)
    if decision.ok:
        book.settle(key, AUDIO, now)
    return decision


# ---- C4: the seed's example ----------------------------------------------------------------

def test_c4_seed_example_100_rms_carry_90_video_and_20_audio_sip_calls_and_not_one_video_more():
    """C4 (with C6 through settle): 100 RMS allow 90 video and 20 audio-only SIP calls at once."""
    book = ledger(rms=100)
    for i in range(20):
        assert setup_audio_call(book, f"audio-{i}").ok
    for i in range(90):
        assert book.charge_call(f"video-{i}", VIDEO, 2.0).ok
    assert book.in_use(License.RMS) == 200  # half units: 90 * 2 + 20 * 1
    one_more = book.charge_call("video-90", VIDEO, 3.0)
    assert one_more.refused and one_more.reason == "rms_exhausted"
    assert one_more.refusal.sip_status == 503 and "P1" in one_more.rules
    assert one_more.text == "No Rich Media Session license available"
    snap = book.snapshot(3.0)
    assert snap.licenses[License.RMS].in_use == 100.0 and snap.licenses[License.RMS].capacity == 100
    assert snap.calls_by_media[Media.VIDEO] == 90 and snap.calls_by_media[Media.AUDIO_SIP] == 20
    assert snap.refusals == {"rms_exhausted": 1}
    assert book.refusals == {("rms", "rms_exhausted", "enforce"): 1}  # the one count, for the metric


def test_c4_two_audio_calls_share_one_rms():
    """C4: one RMS carries two settled audio-only SIP calls, and not a third."""
    book = ledger(rms=1)
    assert setup_audio_call(book, "first").ok and book.in_use(License.RMS) == 1
    second = book.charge("second", License.RMS, AUDIO.units, 1.0, kind=Kind.CALL, media=Media.AUDIO_SIP)
    assert second.ok and book.in_use(License.RMS) == 2
    third = book.charge("third", License.RMS, AUDIO.units, 1.0, kind=Kind.CALL, media=Media.AUDIO_SIP)
    assert third.refused and third.reason == "rms_exhausted"


# ---- C6, C7 --------------------------------------------------------------------------------

def test_c6_near_the_limit_an_audio_call_is_refused_during_set_up_although_it_would_fit_after():
    """C6: 90 video + 19 audio SIP use 199 half units of 200; the 20th audio call needs a whole
    license while it is set up and is refused, although settled it would take only half."""
    book = ledger(rms=100)
    for i in range(90):
        assert book.charge_call(f"video-{i}", VIDEO, 1.0).ok
    for i in range(19):
        assert setup_audio_call(book, f"audio-{i}").ok
    refused = book.charge_call("audio-19", SETUP, 2.0)
    assert refused.refused and refused.reason == "rms_exhausted" and "C6" in refused.rules
    settled_size = book.charge("audio-19", License.RMS, AUDIO.units, 2.0, kind=Kind.CALL, media=Media.AUDIO_SIP)
    assert settled_size.ok  # it would have fitted once set up


def test_c6_settle_lowers_the_charge_and_the_physical_weight():
    """C6: charged as video during set-up, then settled to audio-only once set-up completes."""
    book = ledger(rms=10)
    book.charge_call("c", SETUP, 1.0)
    assert book.in_use(License.RMS) == 2 and book.snapshot(1.0).calls_by_media[Media.SETUP] == 1
    decision = book.settle("c", AUDIO, 2.0)
    assert decision.ok and decision.units == 1 and "C7" in decision.rules
    snap = book.snapshot(2.0)
    assert book.in_use(License.RMS) == 1
    assert snap.calls_by_media[Media.SETUP] == 0 and snap.calls_by_media[Media.AUDIO_SIP] == 1
    assert snap.call_load == pytest.approx(1 / LARGE.calls_audio)


def test_c7_class_frozen_at_set_up_a_reinvite_changes_nothing():
    """C7: once settled, a re-INVITE that adds (or drops) video changes nothing."""
    book = ledger(rms=10)
    book.charge_call("audio", SETUP, 1.0)
    book.settle("audio", AUDIO, 1.0)
    again = book.settle("audio", VIDEO, 5.0)  # video added mid-call
    assert again.units == 1 and "C7" in again.rules and book.in_use(License.RMS) == 1
    book.charge_call("video", SETUP, 1.0)
    book.settle("video", VIDEO, 1.0)
    book.settle("video", AUDIO, 5.0)  # video dropped mid-call
    assert book.in_use(License.RMS) == 3
    assert book.settle("gone", AUDIO, 5.0) is None


# ---- P3: physical capacity -----------------------------------------------------------------

def test_p3_registered_calls_take_no_rms_but_fill_the_node():
    """P3 with C1's note: registered calls cost no RMS yet count against physical capacity:
    a large VM carries 500 video calls whatever the pool holds."""
    book = ledger(rms=0)
    for i in range(LARGE.calls_video):
        assert book.charge_call(i, REGISTERED_CALL, 1.0).ok
    assert book.in_use(License.RMS) == 0
    full = book.charge_call("one-more", REGISTERED_CALL, 1.0)
    assert full.refused and full.reason == "node_call_capacity" and "P3" in full.rules


def test_p3_video_and_audio_capacities_are_alternatives():
    """P3: 250 video calls use half a large VM, so 500 audio-only calls fill the rest."""
    book = ledger(rms=10_000)
    for i in range(250):
        assert book.charge_call(f"v{i}", REGISTERED_CALL, 1.0).ok
    audio = classify_call(CallFacts("E", "local", "E", "sip", "local", "E", "sip", m_lines=1))
    for i in range(500):
        assert book.charge(f"a{i}", License.NONE, 0, 1.0, kind=Kind.CALL, media=audio.media).ok
    assert book.charge("a500", License.NONE, 0, 1.0, kind=Kind.CALL, media=audio.media).reason == "node_call_capacity"
    assert book.snapshot(1.0).call_load == pytest.approx(1.0)


def test_p3_a_peer_uses_no_more_rms_than_its_platform_allows():
    """P3: the per-peer RMS maximum binds even when the pool holds more."""
    tiny = Platform("tiny", calls_video=1000, calls_audio=2000, registrations=10, mra_registrations=5,
                    max_rms_per_peer=3)
    book = ledger(rms=100, platform=tiny)
    for i in range(3):
        assert book.charge_call(i, VIDEO, 1.0).ok
    refused = book.charge_call(3, VIDEO, 1.0)
    assert refused.reason == "peer_rms_limit" and "P3" in refused.rules


# ---- P4: node capacity alarm ---------------------------------------------------------------

def test_p4_capacity_alarm_at_90_percent_of_the_node_and_cleared_below():
    """P4: the alarm stands when one node reaches 90% of its physical capacity; it clears under
    85% so a node hovering at 90% does not flap."""
    book = ledger()
    for i in range(449):
        book.charge_call(i, REGISTERED_CALL, 1.0)
    assert not book.alarms.is_active("capacity-node")
    book.charge_call(449, REGISTERED_CALL, 2.0)  # 450 of 500
    alarm = book.alarms.active()[0]
    assert (alarm.id, alarm.rule, alarm.raised_at) == ("capacity-node", "P4", 2.0) and "90%" in alarm.reason
    book.release(0, 3.0)  # 449: still above the clear threshold
    assert book.alarms.is_active("capacity-node")
    for i in range(1, 26):  # 424 of 500 = 84.8%
        book.release(i, 4.0)
    assert not book.alarms.is_active("capacity-node")
    assert book.alarms.history[-1].cleared_at == 4.0


def test_charging_an_unknown_license_or_media_is_a_caller_bug():
    book = ledger()
    with pytest.raises(ValueError, match="license"):
        book.charge("x", "turn", 1, 1.0)
    with pytest.raises(ValueError, match="media"):
        book.charge("x", License.NONE, 0, 1.0, kind=Kind.CALL, media="hologram")


# ---- registrations: R5, R6, R11 ------------------------------------------------------------

def registration(license, aliases=1, kind=Kind.REGISTRATION):
    units = aliases if license is not License.NONE else 0
    return RegistrationCharge(license, units, kind, aliases, "", ("R1",))


def test_r5_room_systems_cannot_use_desktop_licenses():
    """R5: an empty room pool refuses a room system even with desktop licenses free."""
    book = ledger(**{License.DESKTOP: 5})
    refused = book.charge_registration("room-1", registration(License.ROOM), 1.0)
    assert refused.refused and refused.reason == "room_exhausted"
    assert book.charge_registration("desk-1", registration(License.DESKTOP), 1.0).ok


def test_r6_registration_and_mra_caps_count_local_proxied_and_mra_together():
    """R6: registrations (local, proxied, MRA) share the cap; MRA ones have their own cap too."""
    small = Platform("lab", calls_video=10, calls_audio=20, registrations=4, mra_registrations=2,
                     max_rms_per_peer=10)
    book = ledger(platform=small, **{License.ROOM: 10})
    assert book.charge_registration("mra-1", registration(License.NONE, kind=Kind.MRA_REGISTRATION), 1.0).ok
    assert book.charge_registration("mra-2", registration(License.NONE, kind=Kind.MRA_REGISTRATION), 1.0).ok
    third_mra = book.charge_registration("mra-3", registration(License.NONE, kind=Kind.MRA_REGISTRATION), 1.0)
    assert third_mra.reason == "node_mra_registration_capacity" and "R6" in third_mra.rules
    assert book.charge_registration("proxied", registration(License.NONE), 1.0).ok
    assert book.charge_registration("local", registration(License.ROOM), 1.0).ok
    full = book.charge_registration("local-2", registration(License.ROOM), 1.0)
    assert full.reason == "node_registration_capacity"
    snap = book.snapshot(1.0)
    assert (snap.registrations, snap.mra_registrations) == (4, 2)


def test_r11_an_exhausted_pool_refuses_the_registration_and_raises_an_alarm():
    """R11: the pool is used up, so the registration is refused; the alarm clears on release."""
    book = ledger(**{License.ROOM: 2})
    assert book.charge_registration("mcu", registration(License.ROOM, aliases=2), 1.0).ok  # R9: 2 aliases
    refused = book.charge_registration("codec", registration(License.ROOM), 2.0)
    assert refused.refused and refused.reason == "room_exhausted" and "R11" in refused.rules
    assert book.alarms.is_active("license-exhausted-room")
    book.release("mcu", 3.0)
    assert not book.alarms.is_active("license-exhausted-room")


def test_r11_blocked_registrations_refuse_new_ones_but_keep_refreshes():
    """R11 (S2 hook): when new registrations are blocked, a refresh of an existing one still fits."""
    book = ledger(**{License.ROOM: 5})
    assert book.charge_registration("kept", registration(License.ROOM), 1.0).ok
    book.block_registrations("Smart evaluation expired, not registered (S2)")
    assert book.charge_registration("new", registration(License.ROOM), 2.0).reason == "registrations_blocked"
    assert book.charge_registration("kept", registration(License.ROOM), 2.0).ok  # refresh
    book.block_registrations("")
    assert book.charge_registration("new", registration(License.ROOM), 3.0).ok


def test_recharging_a_key_replaces_its_charge_and_is_refused_whole():
    """R9: a re-REGISTER with more aliases takes more licenses; one that does not fit keeps the old charge."""
    book = ledger(**{License.ROOM: 3})
    book.charge_registration("mcu", registration(License.ROOM, aliases=2), 1.0)
    assert book.charge_registration("mcu", registration(License.ROOM, aliases=3), 2.0).ok
    assert book.in_use(License.ROOM) == 3
    assert book.charge_registration("mcu", registration(License.ROOM, aliases=4), 3.0).refused
    assert book.in_use(License.ROOM) == 3 and book.snapshot(3.0).registrations == 3


# ---- enforce / observe, release, snapshot --------------------------------------------------

def test_observe_never_refuses_but_counts_each_would_be_refusal_by_reason():
    book = ledger(rms=1, enforcement="observe")
    decisions = [book.charge_call(i, VIDEO, 1.0) for i in range(3)]
    assert all(d.ok for d in decisions)
    assert [d.observed for d in decisions] == [False, True, True]
    assert decisions[1].reason == "rms_exhausted" and "P1" in decisions[1].rules
    snap = book.snapshot(1.0)
    assert snap.would_refuse == {"rms_exhausted": 2} and snap.refusals == {}
    assert book.refusals == {("rms", "rms_exhausted", "observe"): 2}
    assert snap.licenses[License.RMS].in_use == 3.0  # over capacity, as observed
    assert book.release_all(2.0) == 3 and book.in_use(License.RMS) == 0


def test_release_is_idempotent_and_no_count_goes_negative():
    book = ledger(rms=5, **{License.ROOM: 5})
    book.charge_call("call", VIDEO, 1.0)
    book.charge_registration("reg", registration(License.ROOM, aliases=2), 1.0)
    assert book.release("call", 2.0) is True
    assert book.release("call", 2.0) is False
    assert book.release("never-charged") is False
    assert book.release("reg") is True and book.release("reg") is False
    snap = book.snapshot(3.0)
    assert len(book) == 0 and snap.calls == 0 and snap.registrations == 0
    assert all(v == 0 for v in snap.calls_by_media.values())
    assert all(usage.in_use == 0 for usage in snap.licenses.values())


def test_snapshot_is_plain_data_for_metrics_and_the_api():
    book = ledger(rms=10)
    book.charge_call("x", VIDEO, 1.0)
    data = book.snapshot(1.0).to_dict()
    assert data["licenses"]["rms"] == {"license": "rms", "in_use": 1.0, "in_use_cluster": 1.0, "capacity": 10}
    assert data["calls_by_license"]["rms"] == 1 and data["call_capacity"] == 500
    assert data["enforcement"] == "enforce" and data["role"] == "E"


def test_bad_enforcement_is_refused():
    with pytest.raises(ValueError, match="enforcement"):
        Ledger("n1", "E", LARGE, enforcement="lenient")


def test_set_enforcement_switches_between_refusing_and_observing_and_counts_under_each():
    book = ledger(rms=1)
    assert book.charge_call("first", VIDEO, 1.0).ok
    assert book.charge_call("second", VIDEO, 1.0).refused
    book.set_enforcement("observe")
    assert book.charge_call("third", VIDEO, 1.0).observed
    assert book.refusals == {("rms", "rms_exhausted", "enforce"): 1, ("rms", "rms_exhausted", "observe"): 1}
    with pytest.raises(ValueError, match="enforcement"):
        book.set_enforcement("lenient")
