"""Platform capacity profiles (P3, R6) and the alarm board."""

import pytest

from meter import catalogs
from meter.licensing import platforms
from meter.licensing.alarms import AlarmBoard
from meter.licensing.model import Media
from meter.licensing.platforms import PlatformError


def test_p3_r6_shipped_profiles_carry_the_seed_figures():
    """P3: large VM 500 concurrent video calls; R6: 5000 registrations on large VM, CE1100 and
    CE1200, MRA at most 5000 on CE1200 and 2500 on large VM and CE1100; P1: 150/500 RMS per peer."""
    shipped = catalogs.platforms()
    assert set(shipped) == {"small_vm", "medium_vm", "large_vm", "ce1100", "ce1200"}
    assert shipped["large_vm"].calls_video == 500
    for name in ("large_vm", "ce1100", "ce1200"):
        assert shipped[name].registrations == 5000
    assert shipped["ce1200"].mra_registrations == 5000
    assert shipped["large_vm"].mra_registrations == shipped["ce1100"].mra_registrations == 2500
    assert shipped["small_vm"].max_rms_per_peer == shipped["medium_vm"].max_rms_per_peer == 150
    assert shipped["large_vm"].max_rms_per_peer == 500


def test_p3_video_and_audio_weights_fill_the_same_capacity():
    large = catalogs.platform("large_vm")
    assert large.call_weight(Media.VIDEO) * 500 == large.call_units
    assert large.call_weight(Media.AUDIO_SIP) * 1000 == large.call_units
    assert large.call_weight(Media.SETUP) == large.call_weight(Media.VIDEO)  # C6


@pytest.mark.parametrize("text, message", [
    ("[x]\ncalls_video = 1\n", "calls_audio"),
    ("[x]\ncalls_video = -5\ncalls_audio = 1\nregistrations = 1\nmra_registrations = 1\nmax_rms_per_peer = 1\n",
     "positive integer"),
    ("[x]\ncalls_video = 1\ncalls_audio = 1\nregistrations = 1\nmra_registrations = 2\nmax_rms_per_peer = 1\n",
     "mra_registrations exceeds"),
    ("[x]\nspeed = 3\n", "unknown key 'speed'"),
    ("not toml [", "not valid TOML"),
])
def test_a_bad_platforms_file_names_table_and_key(text, message):
    with pytest.raises(PlatformError, match=message):
        platforms.parse(text, source="lab.toml")


def test_unknown_platform_lists_the_known_ones():
    with pytest.raises(PlatformError, match="large_vm"):
        catalogs.platform("huge_vm")


def test_alarms_are_raised_once_and_cleared_with_a_reason():
    seen = []
    board = AlarmBoard(on_change=seen.append)
    assert board.raise_("capacity-node", "P4", "node at 90%", 1.0)
    assert not board.raise_("capacity-node", "P4", "node at 95%", 2.0)  # keeps its first reason
    assert board.active()[0].reason == "node at 90%"
    assert board.clear("capacity-node", "back under 90%", 3.0)
    assert not board.clear("capacity-node", "again", 4.0)
    assert board.active() == []
    assert [(a.id, a.active, a.cleared_reason) for a in seen] == [
        ("capacity-node", True, ""), ("capacity-node", False, "back under 90%")]
