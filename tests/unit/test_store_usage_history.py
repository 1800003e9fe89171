"""The durable usage history: minute buckets from the tick, roll-up, retention, peaks kept (principle 4)."""

import pytest

from meter import catalogs
from meter.config import ConfigError, parse
from meter.licensing.calls import CallFacts, classify_call
from meter.licensing.ledger import Ledger
from meter.licensing.model import License
from meter.licensing.usage import UsageMeter
from meter.metering.join import Metering
from meter.store.licensing import LicensingStore, StoreError
from meter.store.usage_history import UsageHistory, UsageSettings
from meter.zones import ZoneTable

VIDEO = classify_call(CallFacts("E", "local", "E", "sip", "external", "", "sip", m_lines=2))
T0 = 1_700_000_040.0  # on a minute boundary
DAY = 86400.0


class Clock:
    def __init__(self, now):
        self.now = now

    def __call__(self):
        return self.now


def node(state_dir, clock, settings=None):
    history = UsageHistory(state_dir, settings)
    usage = UsageMeter("n1", clock())
    saved = history.load_peaks()
    if saved:
        usage.restore(saved)
    ledger = Ledger("n1", "E", catalogs.platform("large_vm"), enforcement="enforce", now=clock(), usage=usage)
    ledger.set_licenses({License.RMS: 2}, clock())
    return Metering(ledger, catalogs.device_catalog(), ZoneTable([]), role="E", node_name="n1", clock=clock,
                    usage_history=history)


def test_the_tick_writes_each_minute_max_min_and_refusals_and_a_stop_loses_nothing(tmp_path):
    clock = Clock(T0 + 1)
    m = node(tmp_path, clock)
    m.ledger.charge_call("a", VIDEO, T0 + 5)
    m.ledger.charge_call("b", VIDEO, T0 + 5.1)
    m.ledger.charge_call("c", VIDEO, T0 + 5.2)  # refused: 2 RMS
    m.ledger.release("a", T0 + 5.3)
    m.ledger.release("b", T0 + 5.4)
    m.tick(T0 + 30)
    assert m.usage_history.buckets("rms", T0 - 60, T0 + 600) == []  # the minute is not over
    m.tick(T0 + 60.5)
    m.ledger.charge_call("d", VIDEO, T0 + 70)
    m.flush_usage(T0 + 75)  # a stop in the middle of the second minute
    m.close()
    with UsageHistory(tmp_path) as history:
        rows = history.buckets("rms", T0 - 60, T0 + 600)
        assert [(r["at"], r["max"], r["min"], r["refusals"], r["capacity"]) for r in rows] == [
            (T0, 2.0, 0.0, 1, 2), (T0 + 60, 1.0, 0.0, 0, 2)]
        peaks = history.load_peaks()
    assert peaks["licenses"]["rms"]["peak"] == [4, T0 + 5.1]  # half units
    assert peaks["licenses"]["rms"]["refused"] == 1


def test_peaks_survive_a_restart_and_a_restart_within_the_minute_merges_its_bucket(tmp_path):
    clock = Clock(T0 + 1)
    m = node(tmp_path, clock)
    for key in ("a", "b"):
        m.ledger.charge_call(key, VIDEO, T0 + 2)
    m.ledger.release("a", T0 + 3)
    m.usage.reset_peaks(T0 + 3)
    m.flush_usage(T0 + 5)
    m.close()
    clock.now = T0 + 20
    again = node(tmp_path, clock)
    view = again.usage.view(T0 + 20)["licenses"]["rms"]
    assert (view["peak"], view["peak_at"], view["peak_since_reset"], view["reset_at"]) == (2.0, T0 + 2, 1.0, T0 + 3)
    again.tick(T0 + 61)
    rows = again.usage_history.buckets("rms", T0, T0 + 60)
    assert [(r["max"], r["min"]) for r in rows] == [(2.0, 0.0)]  # both runs' windows, merged


def test_minutes_older_than_fine_days_roll_up_into_hours_and_older_than_retention_go(tmp_path):
    """Retention: fine_days of minutes, then hours (max of max, min of min, sum of refusals), then gone."""
    settings = UsageSettings(retention_days=10, fine_days=2)
    hour = 1_700_000_000 // 3600 * 3600.0
    with UsageHistory(tmp_path, settings) as history:
        def window(at, mx, mn, refusals):
            history.record({"rms": {"start": at, "max": mx, "min": mn, "cluster_max": mx + 1, "capacity": 5,
                                    "refusals": refusals, "would_refuse": 0}})
        window(hour + 60, 3.0, 1.0, 1)
        window(hour + 120, 7.5, 2.0, 2)
        window(hour + 3540, 4.0, 0.5, 0)
        window(hour + 3600, 1.0, 1.0, 0)     # the next hour
        window(hour - 11 * DAY, 9.0, 9.0, 4)  # beyond retention
        rolled, deleted = history.maintain(hour + 2 * DAY + 3630)  # the next hour is not yet all 2 days old
        assert (rolled, deleted) == (4, 1)
        rows = history.buckets("rms", hour - 12 * DAY, hour + 3 * DAY, 60)
        assert [(r["at"], r["max"], r["min"], r["refusals"], r["cluster_max"], r["seconds"]) for r in rows] == [
            (hour, 7.5, 0.5, 3, 8.5, 3600), (hour + 3600, 1.0, 1.0, 0, 2.0, 60)]
        history.maintain(hour + 10 * DAY + 60)  # the first hour now starts beyond retention
        assert [r["at"] for r in history.buckets("rms", 0, hour + 20 * DAY, 3600)] == [hour + 3600]


def test_buckets_group_by_step_and_refuse_a_step_they_do_not_know(tmp_path):
    with UsageHistory(tmp_path) as history:
        for i in range(120):
            history.record({"room": {"start": T0 + 60 * i, "max": float(i % 7), "min": 0.0, "cluster_max": 0.0,
                                     "capacity": 3, "refusals": 1, "would_refuse": 2}})
        hours = history.buckets("room", 0, T0 + DAY, 3600)
        assert sum(h["refusals"] for h in hours) == 120 and sum(h["would_refuse"] for h in hours) == 240
        assert max(h["max"] for h in hours) == 6.0 and sum(h["seconds"] for h in hours) == 7200
        assert len(history.buckets("room", 0, T0 + DAY, 86400)) in (1, 2)
        with pytest.raises(ValueError, match="step"):
            history.buckets("room", 0, 1, 61)


def test_read_only_never_creates_a_state_directory(tmp_path):
    with pytest.raises(StoreError, match="missing"):
        UsageHistory(tmp_path / "nowhere", readonly=True)
    assert not (tmp_path / "nowhere").exists()
    with UsageHistory(tmp_path) as history:
        history.record({"cmr": {"start": T0, "max": 1.0, "min": 0.0, "cluster_max": 1.0, "capacity": 1,
                                "refusals": 0, "would_refuse": 0}})
    with UsageHistory(tmp_path, readonly=True) as history:
        assert history.buckets("cmr", 0, T0 + 60)[0]["max"] == 1.0
        with pytest.raises(StoreError, match="read-only"):
            history.maintain(T0)


def test_the_old_snapshot_table_is_replaced_and_meter_licenses_keeps_its_last_snapshot(tmp_path):
    with LicensingStore(tmp_path) as store:
        store.record_usage({"calls": 1}, T0)
        store.record_usage({"calls": 2}, T0 + 60)
        assert store.latest_usage() == (T0 + 60, {"calls": 2})
        tables = {r[0] for r in store._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "usage" not in tables


def test_usage_config_keys_are_validated_and_named():
    assert parse("[usage]\nretention_days = 500\nfine_days = 10\n").usage == UsageSettings(500, 10)
    with pytest.raises(ConfigError, match=r"\[usage\] fine_days"):
        parse("[usage]\nfine_days = 0\n")
    with pytest.raises(ConfigError, match=r"\[usage\] retention_days: expected at least fine_days"):
        parse("[usage]\nretention_days = 5\n")
    with pytest.raises(ConfigError, match=r"\[usage\] retention_days: expected an integer"):
        parse('[usage]\nretention_days = "a year"\n')
    with pytest.raises(ConfigError, match=r"\[usage\] unknown key 'days'"):
        parse("[usage]\ndays = 3\n")
