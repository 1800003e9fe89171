"""Usage accounting through the ledger: peaks taken at every charge, resets, refusals, cluster sums (C4, C6, P1)."""

from meter import catalogs
from meter.licensing.calls import CallFacts, classify_call
from meter.licensing.ledger import Ledger
from meter.licensing.model import Kind, License, Media
from meter.licensing.pool import MemoryPool
from meter.licensing.usage import UsageMeter

LARGE = catalogs.platform("large_vm")
B2B = ("local", "E", "sip"), ("external", "", "sip")
SETUP = classify_call(CallFacts("E", *B2B[0], *B2B[1], m_lines=None))
AUDIO = classify_call(CallFacts("E", *B2B[0], *B2B[1], m_lines=1))
VIDEO = classify_call(CallFacts("E", *B2B[0], *B2B[1], m_lines=2))
T0 = 1_700_000_000.0


def metered(rms=10, enforcement="enforce", pool=None, node="n1", **licenses):
    usage = UsageMeter(node, T0)
    book = Ledger(node, "E", LARGE, pool=pool, enforcement=enforcement, now=T0, usage=usage)
    book.set_licenses({License.RMS: rms, **licenses}, T0)
    return book, usage


def test_c2_a_spike_of_3_calls_lasting_200_ms_shows_as_a_peak_of_3_with_its_instant():
    """C2: three video calls up for 200 ms between two ticks: the peak is 3, at the third charge."""
    book, usage = metered()
    book.charge_call("a", VIDEO, T0 + 10.0)
    book.charge_call("b", VIDEO, T0 + 10.1)
    book.charge_call("c", VIDEO, T0 + 10.2)
    for key in ("a", "b", "c"):
        book.release(key, T0 + 10.4)
    book.tick(T0 + 11.0)  # the tick comes after the spike is gone: nothing sampled it
    rms = usage.view(T0 + 11.0)["licenses"]["rms"]
    assert rms["current"] == 0.0
    assert (rms["peak"], rms["peak_at"]) == (3.0, T0 + 10.2)
    assert (rms["peak_since_reset"], rms["peak_since_reset_at"]) == (3.0, T0 + 10.2)
    video = usage.view(T0 + 11.0)["calls_by_class"]["video"]
    assert (video["current"], video["peak"], video["peak_at"]) == (0, 3, T0 + 10.2)


def test_c4_two_audio_only_sip_calls_are_one_rms_in_the_view():
    """C4: RMS is shown in licenses: two settled audio-only SIP calls are 1, not 2 (nor 4 half units)."""
    book, usage = metered()
    for key in ("x", "y"):
        book.charge_call(key, SETUP, T0 + 1)
    for key in ("x", "y"):
        book.settle(key, AUDIO, T0 + 2)
    view = usage.view(T0 + 3)
    assert view["licenses"]["rms"]["current"] == 1.0
    # C6: each was video while set up, so the set-up peak is 2 licenses (both up as video at once)
    assert view["licenses"]["rms"]["peak"] == 2.0
    assert view["calls_by_class"]["audio_sip"]["current"] == 2
    assert view["calls_by_class"]["video"] == {"current": 0, "peak": 2, "peak_at": T0 + 1}


def test_reset_peaks_keeps_the_all_time_peak_and_restarts_the_since_reset_one_from_now():
    book, usage = metered()
    for i in range(4):
        book.charge_call(f"v{i}", VIDEO, T0 + 1)
    for i in range(3):
        book.release(f"v{i}", T0 + 2)
    usage.reset_peaks(T0 + 5)
    rms = usage.view(T0 + 5)["licenses"]["rms"]
    assert (rms["peak"], rms["peak_since_reset"], rms["peak_since_reset_at"], rms["reset_at"]) == (4.0, 1.0, T0 + 5, T0 + 5)
    book.charge_call("w", VIDEO, T0 + 6)
    rms = usage.view(T0 + 6)["licenses"]["rms"]
    assert (rms["peak"], rms["peak_since_reset"], rms["peak_since_reset_at"]) == (4.0, 2.0, T0 + 6)


def test_p1_refusals_and_would_be_refusals_are_counted_per_license():
    """P1: a refusal (enforce) and a would-be refusal (observe) counted where the ledger counts them."""
    book, usage = metered(rms=1)
    book.charge_call("a", VIDEO, T0 + 1)
    assert book.charge_call("b", VIDEO, T0 + 2).refused
    book.set_enforcement("observe")
    assert book.charge_call("c", VIDEO, T0 + 3).ok
    rms = usage.view(T0 + 3)["licenses"]["rms"]
    assert (rms["refused"], rms["would_refuse"], rms["capacity"]) == (1, 1, 1)
    assert rms["peak"] == 2.0  # observing let it through: the demand shows in the peak


def test_p1_cluster_peak_is_the_highest_sum_of_this_node_and_the_peers_last_published_values():
    """P1: cluster = this node's value at each charge plus the peers' values as published at the last tick."""
    pool = MemoryPool()
    n1, u1 = metered(pool=pool, node="n1")
    n2, _ = metered(pool=pool, node="n2")
    for i in range(3):
        n2.charge_call(f"p{i}", VIDEO, T0 + 1)
    n1.tick(T0 + 2)  # n1 learns n2's 3
    n1.charge_call("a", VIDEO, T0 + 3)
    rms = u1.view(T0 + 3)["licenses"]["rms"]
    assert (rms["current"], rms["cluster_current"], rms["cluster_peak"], rms["cluster_peak_at"]) == (1.0, 4.0, 4.0, T0 + 3)
    for i in range(3):
        n2.release(f"p{i}", T0 + 4)
    n1.charge_call("b", VIDEO, T0 + 4.5)  # n1 still holds n2's last value (3) until its next tick
    n1.tick(T0 + 5)
    rms = u1.view(T0 + 5)["licenses"]["rms"]
    assert (rms["cluster_current"], rms["cluster_peak"], rms["cluster_peak_at"]) == (2.0, 5.0, T0 + 4.5)
    assert rms["peak"] == 2.0  # this node's own peak never includes the peers


def test_the_window_gives_minute_max_min_and_refusals_then_starts_from_the_current_values():
    book, usage = metered(rms=2)
    book.charge_call("a", VIDEO, T0 + 1)
    book.charge_call("b", VIDEO, T0 + 2)
    book.charge_call("c", VIDEO, T0 + 3)  # refused
    book.release("a", T0 + 4)
    book.release("b", T0 + 5)
    window = usage.take_window(T0 + 60)["rms"]
    assert (window["max"], window["min"], window["refusals"], window["start"]) == (2.0, 0.0, 1, T0)
    book.charge_call("d", VIDEO, T0 + 61)
    window = usage.take_window(T0 + 120)["rms"]
    assert (window["max"], window["min"], window["refusals"], window["start"]) == (1.0, 0.0, 0, T0 + 60)
    window = usage.take_window(T0 + 180)["rms"]
    assert (window["max"], window["min"]) == (1.0, 1.0)


def test_state_and_restore_keep_peaks_instants_reset_and_counts():
    book, usage = metered(rms=1)
    book.charge_call("a", VIDEO, T0 + 1)
    book.charge_call("b", VIDEO, T0 + 2)  # refused
    usage.reset_peaks(T0 + 3)
    book.release("a", T0 + 4)
    again = UsageMeter("n1", T0 + 10)
    again.restore(usage.state())
    rms = again.view(T0 + 10)["licenses"]["rms"]
    assert (rms["peak"], rms["peak_at"], rms["refused"], rms["reset_at"]) == (1.0, T0 + 1, 1, T0 + 3)
    assert (rms["peak_since_reset"], rms["peak_since_reset_at"]) == (1.0, T0 + 3)
    assert again.view(T0 + 10)["calls_by_class"]["video"]["peak"] == 1


def test_a_ledger_with_charges_attached_later_starts_from_what_it_holds():
    book = Ledger("n1", "E", LARGE, enforcement="observe", now=T0)
    book.charge("r", License.ROOM, 1, T0 + 1, kind=Kind.REGISTRATION)
    usage = book.attach_usage(UsageMeter("n1", T0 + 2))
    book.charge("s", License.ROOM, 1, T0 + 3, kind=Kind.REGISTRATION)
    room = usage.view(T0 + 3)["licenses"]["room"]
    assert (room["current"], room["peak"], room["peak_at"], room["would_refuse"]) == (2.0, 2.0, T0 + 3, 1)


def test_the_view_has_the_contract_shape():
    _, usage = metered()
    view = usage.view(T0)
    assert set(view) == {"at", "node", "licenses", "calls_by_class"}
    assert set(view["licenses"]) == {"rms", "room", "desktop", "cmr"}
    assert set(view["licenses"]["cmr"]) == {
        "current", "peak", "peak_at", "peak_since_reset", "peak_since_reset_at", "reset_at", "would_refuse",
        "refused", "capacity", "cluster_current", "cluster_peak", "cluster_peak_at"}
    assert set(view["calls_by_class"]) == {"video", "audio_sip", "audio_other"}
    assert Media.AUDIO_OTHER == "audio_other"
