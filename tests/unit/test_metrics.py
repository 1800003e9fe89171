"""The /metrics exposition: names, labels and values from the node's state (issue 4)."""

from types import SimpleNamespace

from prometheus_client.parser import text_string_to_metric_families

from meter.admin import metrics
from meter.admin.latency import LatencyHistogram
from tests.unit.test_metering import ROOM_KIT, DX80, invite, make_metering, register


def scrape(metering, latency=None):
    node = SimpleNamespace(metering=metering, sip=None, ras=None, pool_sync=None, latency=latency)
    samples = {}
    for family in text_string_to_metric_families(metrics.render(node).decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_r11_c4_series_show_pools_registrations_calls_refusals_and_one_alarm_per_pool():
    m, policy, _ = make_metering(room=1, desktop=1, rms=1)
    register(policy, "room1", ROOM_KIT)
    register(policy, "dx1", DX80)
    register(policy, "room2", ROOM_KIT)   # refused: room pool full
    register(policy, "dx2", DX80)         # refused: desktop pool full
    invite(policy, "c1", "sip:+1@itsp.example")
    latency = LatencyHistogram()
    latency.observe(0.0003)
    s = scrape(m, latency)
    assert s[("meter_licenses_in_use", (("license", "room"),))] == 1
    assert s[("meter_licenses_in_use", (("license", "rms"),))] == 1
    assert s[("meter_registrations", (("device_class", "desktop"), ("protocol", "sip")))] == 1
    assert s[("meter_calls", (("class", "setup"), ("license", "rms")))] == 1
    assert s[("meter_refusals_total", (("enforcement", "enforce"), ("license", "room"), ("reason", "room_exhausted")))] == 1
    # Two exhausted pools stand as two distinct alarm series (no duplicate label sets).
    assert s[("meter_alarm_active", (("alarm", "license-exhausted-room"), ("rule", "R11")))] == 1
    assert s[("meter_alarm_active", (("alarm", "license-exhausted-desktop"), ("rule", "R11")))] == 1
    assert s[("meter_message_processing_seconds_count", (("protocol", "sip"),))] == 1
    assert s[("meter_message_processing_seconds_bucket", (("le", "0.0005"), ("protocol", "sip")))] == 1
    assert s[("meter_message_processing_seconds_bucket", (("le", "0.00025"), ("protocol", "sip")))] == 0
