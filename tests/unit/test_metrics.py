"""The /metrics exposition: names, labels and values from the node's state (issue 4)."""

import asyncio
from types import SimpleNamespace

from prometheus_client.parser import text_string_to_metric_families

from meter.admin import metrics
from meter.admin.latency import LatencyHistogram, TimedReceiver
from meter.h323.node import RasNode
from meter.h323.settings import H323Settings
from meter.metering.h323 import RasMetering
from meter.sip.auth.admission import AUTH_FAILURES
from meter.sip.counters import SipCounters
from meter.sip.router import RELAY_REFUSALS
from tests.rasclient import RasClient
from tests.unit.test_metering import ROOM_KIT, DX80, invite, make_metering, register


def scrape(metering, latency=None, *, ras=None, latency_ras=None):
    node = SimpleNamespace(metering=metering, sip=None, ras=ras, pool_sync=None, latency=latency,
                           latency_ras=latency_ras)
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


def test_relay_refusals_and_auth_failures_are_exported_with_every_label_value():
    m, _, _ = make_metering()
    counters = SipCounters()
    counters.relay_refused["in_dialog"] += 2
    counters.auth_failures["wrong_password"] += 3
    sip = SimpleNamespace(counters=counters, core=SimpleNamespace(source_limits=None))
    node = SimpleNamespace(metering=m, sip=sip, ras=None, pool_sync=None, latency=None, latency_ras=None)
    samples = {}
    for family in text_string_to_metric_families(metrics.render(node).decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    relay = {labels: v for (name, labels), v in samples.items() if name == "meter_sip_relay_refused_total"}
    auth = {labels: v for (name, labels), v in samples.items() if name == "meter_sip_auth_failures_total"}
    assert relay == {(("why", why),): 2 if why == "in_dialog" else 0 for why in RELAY_REFUSALS}
    assert auth == {(("reason", r),): 3 if r == "wrong_password" else 0 for r in AUTH_FAILURES}
    assert set(RELAY_REFUSALS) == {"preloaded_route", "in_dialog", "zone_closed"}
    assert "not_owner" in AUTH_FAILURES and "unknown_user" in AUTH_FAILURES


def test_ras_datagrams_are_timed_under_protocol_h323_next_to_sip():
    """An RRQ through a RasNode wired as the app wires it lands in the h323 sample set."""
    m, _, _ = make_metering()
    sip_latency, ras_latency = LatencyHistogram(), LatencyHistogram()
    sip_latency.observe(0.0003)

    async def scenario():
        ras = RasNode(H323Settings(host="127.0.0.1", ras_port=0), RasMetering(m))
        ras.receiver = TimedReceiver(ras, ras_latency)
        await ras.start()
        client = await RasClient.open(("127.0.0.1", ras.port), [("h323-ID", "room1")])
        try:
            assert (await client.register()).short == "RCF"
        finally:
            client.close()
            await ras.close()
        return ras

    ras = asyncio.run(scenario())
    s = scrape(m, sip_latency, ras=ras, latency_ras=ras_latency)
    assert s[("meter_ras_messages_total", (("direction", "in"), ("kind", "RRQ")))] == 1
    assert s[("meter_message_processing_seconds_count", (("protocol", "h323"),))] >= 1
    assert s[("meter_message_processing_seconds_bucket", (("le", "+Inf"), ("protocol", "h323")))] >= 1
    assert s[("meter_message_processing_seconds_sum", (("protocol", "h323"),))] > 0
    assert s[("meter_message_processing_seconds_count", (("protocol", "sip"),))] == 1
    # No RAS histogram (h323 disabled): only the sip sample set.
    assert not any(name.startswith("meter_message_processing_seconds") and ("protocol", "h323") in labels
                   for name, labels in scrape(m, sip_latency))


def test_timed_full_gc_passes_are_exported():
    from meter.gc_timer import FullCollections

    m, _, _ = make_metering(room=1, desktop=1, rms=1)
    node = SimpleNamespace(metering=m, sip=None, ras=None, pool_sync=None, latency=None, latency_ras=None,
                           collections=None)

    async def two_passes():
        collections = FullCollections(asyncio.get_running_loop(), 300)
        collections.start()
        try:
            collections.collect()
            collections.collect()
        finally:
            collections.close()
        return collections

    node.collections = asyncio.run(two_passes())
    samples = {}
    for family in text_string_to_metric_families(metrics.render(node).decode()):
        for sample in family.samples:
            samples[sample.name] = sample.value
    assert samples["meter_gc_full_collections_total"] == 2
    assert 0 < samples["meter_gc_full_pause_seconds"] < 5
    assert samples["meter_gc_unreachable_objects_total"] >= 0
