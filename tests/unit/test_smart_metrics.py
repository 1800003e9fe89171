"""Smart Licensing's Prometheus families (meter.smart.metrics): S5/S6 states, S1 time left, S7 time
until authorization expiry, S10 compliance per tag, in the exposition format Prometheus reads."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from meter.licensing import smart
from meter.smart.metrics import smart_families
from tests.unit.test_smart_node import NOW, node_with_rms_key


class Collector:
    def __init__(self, node, now):
        self.node, self.now = node, now

    def collect(self):
        return smart_families(self.node, self.now)


def scrape(node, now) -> str:
    registry = CollectorRegistry()
    registry.register(Collector(node, now))
    return generate_latest(registry).decode()


def value(text: str, name: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    raise AssertionError(f"{name} not exposed")


def test_s1_s5_s6_s7_s10_smart_families(tmp_path):
    metering, agent, clock = node_with_rms_key(tmp_path)
    agent.licensing.switch_to_smart(NOW)
    agent.mode_changed(NOW)
    node = SimpleNamespace(smart=agent)
    text = scrape(node, NOW + 10 * smart.DAY)
    assert 'meter_smart_registration_state{state="Unregistered"} 1.0' in text
    assert 'meter_smart_authorization_state{state="Evaluation mode"} 1.0' in text
    assert value(text, "meter_smart_evaluation_remaining_seconds") == 80 * smart.DAY
    assert "meter_smart_authorization_remaining_seconds" not in text  # never authorized
    agent.machine.request_registration("tok", NOW + 10 * smart.DAY)
    agent.machine.registered_with({"instance_id": "i"}, NOW + 10 * smart.DAY)
    agent.machine.authorized({"status": "out_of_compliance", "tags": {
        "EXPWY_RMS": {"requested": 3, "authorized": 1, "status": "out_of_compliance", "pool": 1}},
        "expires_at": NOW + 100 * smart.DAY}, NOW + 10 * smart.DAY)
    text = scrape(node, NOW + 10 * smart.DAY)
    assert 'meter_smart_registration_state{state="Registered"} 1.0' in text
    assert 'meter_smart_authorization_state{state="Out of compliance"} 1.0' in text
    assert value(text, "meter_smart_authorization_remaining_seconds") == 90 * smart.DAY
    assert 'meter_smart_tag_compliant{license="rms",status="Out of compliance",tag="EXPWY_RMS"} 0.0' in text
    assert smart_families(SimpleNamespace(), NOW) == []  # no agent: nothing
    asyncio.run(agent.close())
