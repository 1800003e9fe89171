"""The metering join: SIP policy hooks -> licensing ledger, with the rule IDs that decided.

Drives `SipMetering` directly with the facts the SIP node hands it (no sockets): each test
names the rule it proves.
"""

import pytest

from meter import catalogs
from meter.licensing.ledger import Ledger
from meter.metering.join import Metering
from meter.metering.sip import SipMetering, negotiated_m_lines
from meter.sip.peer import Peer
from meter.sip.hooks import BindingInfo, CallInfo, RegisterInfo
from meter.zones import ZoneSettings, ZoneTable

EX90_OLD = "TANDBERG/528 (TC7.3.2.14ad7cc) Cisco-EX90"
DX80 = "TANDBERG/529 (ce9.15.3.17d0b8c2d7c) Cisco-DX80"
ROOM_KIT = "TANDBERG/529 (ce11.40.1.1.10bdaa53ce2) Cisco-RoomKitMini"
ITSP = Peer("udp", "192.0.2.10", 5060)
PHONE = Peer("udp", "127.0.0.1", 40000)

AUDIO = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"
VIDEO = AUDIO + b"m=video 4002 RTP/AVP 96\r\n"
VIDEO_REFUSED = AUDIO + b"m=video 0 RTP/AVP 96\r\n"


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def make_metering(*, rms=10, room=10, desktop=10, cmr=2, enforcement="enforce", mode="standalone"):
    clock = Clock()
    ledger = Ledger("m1", "C", catalogs.platform("large_vm"), enforcement=enforcement, now=clock.now)
    ledger.set_licenses({"rms": rms, "room": room, "desktop": desktop, "cmr": cmr}, clock.now)
    zones = ZoneTable([
        ZoneSettings(name="webex", kind="cloud_cmr", match=["domain:webex.com"]),
        ZoneSettings(name="itsp", kind="third_party_sip", peers=["192.0.2.0/24"], match=["domain:itsp.example"]),
        ZoneSettings(name="b2b", kind="external", match=["domain:partner.example"]),
        ZoneSettings(name="cucm", kind="unified_cm", match=["domain:cucm.lab"], registered=True),
    ])
    m = Metering(ledger, catalogs.device_catalog(), zones, role="C", node_name="m1", sip_mode=mode, clock=clock)
    return m, SipMetering(m, inline=mode == "inline"), clock


def register(policy, user, ua, *, expires=600, mode="standalone"):
    aor = f"sip:{user}@lab.test"
    verdict = policy.on_register(RegisterInfo(aor, (f"sip:{user}@127.0.0.1:40000",), ua, PHONE, expires,
                                              f"cid-{user}", mode == "inline"))
    if verdict.allowed and mode == "standalone":
        policy.on_bindings(aor, (BindingInfo(f"sip:{user}@127.0.0.1", expires, PHONE, ua),), ua, PHONE, 0)
    return verdict


def invite(policy, call_id, callee_uri, *, caller="alice", registered=False, source=PHONE, over_flow=None):
    """``over_flow``: the SIP side's finding that the INVITE came over the caller's registered flow;
    by default, as it would be for a registered caller calling from its own address."""
    from_aor = f"sip:{caller}@lab.test"
    if over_flow is None:
        over_flow = ("sip", from_aor) in policy.m.registrations
    return policy.on_invite(CallInfo(call_id, from_aor, callee_uri.split(";")[0], callee_uri,
                                     source, registered, False, VIDEO, "test", over_flow))


def complete(policy, call_id, answer):
    policy.on_call_answered(call_id, VIDEO if answer is not AUDIO else AUDIO, answer)
    policy.on_call_confirmed(call_id)


def test_r2_r3_r9_registrations_charged_per_alias_by_device_class():
    m, policy, _ = make_metering()
    assert register(policy, "dx80", DX80).allowed
    assert register(policy, "ex90", EX90_OLD).allowed      # R3: EX on TC7.3.2 < TC7.3.6 takes a room license
    assert register(policy, "roomkit", ROOM_KIT).allowed
    assert m.ledger.in_use("desktop") == 1
    assert m.ledger.in_use("room") == 2
    views = {v["alias"]: v for v in m.registration_views()}
    assert views["sip:ex90@lab.test"]["device_class"] == "room" and "R3" in views["sip:ex90@lab.test"]["rules"]
    assert views["sip:dx80@lab.test"]["device_class"] == "desktop"


def test_r9_refresh_costs_nothing_new_and_unregister_releases():
    m, policy, _ = make_metering()
    register(policy, "roomkit", ROOM_KIT)
    register(policy, "roomkit", ROOM_KIT)  # refresh
    assert m.ledger.in_use("room") == 1
    policy.on_bindings("sip:roomkit@lab.test", (), ROOM_KIT, PHONE, 0)
    assert m.ledger.in_use("room") == 0 and not m.registrations


def test_r11_enforce_refuses_registration_when_pool_exhausted_with_503_and_warning():
    m, policy, _ = make_metering(room=1)
    assert register(policy, "room1", ROOM_KIT).allowed
    verdict = register(policy, "room2", ROOM_KIT)
    assert not verdict.allowed and verdict.status == 503
    assert "Room System license" in verdict.reason and "room_exhausted" in verdict.warning
    assert "R11" in verdict.warning
    assert m.ledger.refusals[("room", "room_exhausted", "enforce")] == 1
    assert m.ledger.in_use("room") == 1


def test_r11_observe_lets_registration_through_and_counts_would_be_refusal():
    m, policy, _ = make_metering(room=1, enforcement="observe")
    register(policy, "room1", ROOM_KIT)
    assert register(policy, "room2", ROOM_KIT).allowed
    assert m.ledger.refusals[("room", "room_exhausted", "observe")] == 1
    assert m.ledger.in_use("room") == 2


def test_inline_reservation_released_when_upstream_refuses():
    m, policy, clock = make_metering(mode="inline")
    verdict = policy.on_register(RegisterInfo("sip:x@lab.test", ("sip:x@127.0.0.1",), ROOM_KIT, PHONE, 600,
                                              "cid", True))
    assert verdict.allowed and m.ledger.in_use("room") == 1 and m.registration_views()[0]["pending"]
    policy.on_register_failed("sip:x@lab.test", "cid", "rejected 401")
    assert m.ledger.in_use("room") == 0 and not m.registrations


def test_inline_confirmed_registration_survives_a_refused_refresh():
    """A registrar that challenges every REGISTER (401 on each refresh) must not release the alias
    its earlier 200 OK confirmed: only a pending reservation is released (R9, one license per alias)."""
    m, policy, clock = make_metering(mode="inline")
    policy.on_register(RegisterInfo("sip:x@lab.test", ("sip:x@127.0.0.1",), ROOM_KIT, PHONE, 600, "cid", True))
    policy.on_bindings("sip:x@lab.test", (BindingInfo("sip:x@127.0.0.1", 600, PHONE, ROOM_KIT),), ROOM_KIT, PHONE, 0)
    policy.on_register(RegisterInfo("sip:x@lab.test", ("sip:x@127.0.0.1",), ROOM_KIT, PHONE, 600, "cid", True))
    policy.on_register_failed("sip:x@lab.test", "cid", "rejected 401")
    clock.now += 60
    m.tick(clock.now)
    assert m.ledger.in_use("room") == 1 and not m.registration_views()[0]["pending"]


def test_c1_local_to_local_call_takes_no_rms():
    m, policy, _ = make_metering()
    register(policy, "alice", ROOM_KIT)
    register(policy, "bob", ROOM_KIT)
    assert invite(policy, "c1", "sip:bob@lab.test", registered=True).allowed
    assert m.ledger.in_use("rms") == 0
    assert "C1" in m.call_views()[0]["rules"]


def test_c2_c3_call_to_third_party_sip_costs_one_rms_on_c():
    m, policy, _ = make_metering()
    register(policy, "alice", ROOM_KIT)
    assert invite(policy, "c1", "sip:+4930123@itsp.example").allowed
    assert m.ledger.in_use("rms") == 2  # half units: one whole license
    rules = m.call_views()[0]["rules"]
    assert "C3" in rules or "C2" in rules


def test_c3_registered_caller_to_external_costs_nothing_on_c():
    # C3 row "C | external | on C 0 | on E 1": the E pays, this C node draws nothing.
    m, policy, _ = make_metering()
    register(policy, "alice", ROOM_KIT)
    invite(policy, "c1", "sip:guest@partner.example")
    assert m.ledger.in_use("rms") == 0
    assert m.call_views()[0]["callee_zone"] == "external"


def test_c4_c5_c6_audio_only_sip_call_is_video_until_setup_then_half_a_license():
    m, policy, _ = make_metering()
    register(policy, "alice", ROOM_KIT)
    invite(policy, "c1", "sip:+1@itsp.example")
    assert m.ledger.in_use("rms") == 2       # C6: counts as video while set up
    complete(policy, "c1", AUDIO)
    assert m.ledger.in_use("rms") == 1       # C4, C5: one m= line negotiated -> half a license
    assert m.call_views()[0]["call_class"] == "audio_sip"


def test_c5_declined_video_stream_leaves_one_negotiated_m_line():
    assert negotiated_m_lines(VIDEO, VIDEO_REFUSED) == 1
    assert negotiated_m_lines(VIDEO, VIDEO) == 2
    assert negotiated_m_lines(b"", VIDEO) == 2        # late offer: the 2xx carries the offer
    assert negotiated_m_lines(VIDEO, b"garbage") is None


def test_c5_the_rule_counts_m_lines_so_a_lone_negotiated_video_stream_is_one_line():
    """C5 is Expressway's count: one negotiated m= line makes the audio-only class, whatever its
    media type (docs/licensing-rules.md, C5 resolution). A video-only answer to audio+video is one."""
    audio_refused = VIDEO.replace(b"m=audio 4000", b"m=audio 0")
    assert negotiated_m_lines(VIDEO, audio_refused) == 1


def test_c5_phone_call_with_an_extra_m_line_takes_a_video_license():
    m, policy, _ = make_metering()
    invite(policy, "c1", "sip:+1@itsp.example")
    complete(policy, "c1", VIDEO)
    assert m.ledger.in_use("rms") == 2
    assert m.call_views()[0]["call_class"] == "video"


def test_c7_class_frozen_after_setup():
    m, policy, _ = make_metering()
    invite(policy, "c1", "sip:+1@itsp.example")
    complete(policy, "c1", AUDIO)
    complete(policy, "c1", VIDEO)  # a re-INVITE adding video changes nothing
    assert m.ledger.in_use("rms") == 1


def test_c10_cloud_cmr_call_takes_no_rms_but_counts_against_capacity():
    m, policy, _ = make_metering()
    register(policy, "alice", ROOM_KIT)
    invite(policy, "c1", "sip:meeting@site.webex.com")
    assert m.ledger.in_use("rms") == 0
    snap = m.ledger.snapshot(0)
    assert snap.calls == 1 and snap.call_load > 0
    assert "C10" in m.call_views()[0]["rules"]


def test_c4_enforce_refuses_call_when_rms_exhausted_observe_counts_it():
    m, policy, _ = make_metering(rms=1)
    assert invite(policy, "c1", "sip:+1@itsp.example").allowed
    verdict = invite(policy, "c2", "sip:+2@itsp.example")
    assert not verdict.allowed and verdict.status == 503 and "Rich Media Session" in verdict.reason
    observing, opolicy, _ = make_metering(rms=1, enforcement="observe")
    invite(opolicy, "c1", "sip:+1@itsp.example")
    assert invite(opolicy, "c2", "sip:+2@itsp.example").allowed
    assert observing.ledger.refusals[("rms", "rms_exhausted", "observe")] == 1


@pytest.mark.parametrize("cause", ["bye", "cancelled", "486", "timeout", "max dialog age", "node shutdown"])
def test_every_release_path_returns_counts_to_zero(cause):
    m, policy, _ = make_metering()
    invite(policy, "c1", "sip:+1@itsp.example")
    policy.on_call_ended("c1", cause)
    policy.on_call_ended("c1", cause)  # idempotent
    assert m.ledger.in_use("rms") == 0 and not m.calls
    assert m.ledger.snapshot(0).calls == 0


def test_shutdown_releases_registrations_and_calls():
    m, policy, _ = make_metering()
    register(policy, "alice", DX80)
    invite(policy, "c1", "sip:+1@itsp.example")
    m.close()
    assert all(m.ledger.in_use(lic) == 0 for lic in ("rms", "room", "desktop", "cmr"))
