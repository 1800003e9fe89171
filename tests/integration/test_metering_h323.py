"""H.323 endpoints metered live (issue 5): RAS encoded with our codec over UDP to a running node,
the counts read back through a real Prometheus scraping it.

R4/R9: one room license per H.323 alias (an MCU with ten aliases takes ten); R8: a device also
registered over SIP pays its SIP license too; C1/C9/C4: ARQ/DRQ pairs move RMS as the rules say;
R11/C2: at the limit RRJ/ARJ carry resourceUnavailable.
"""

from __future__ import annotations

import asyncio

import pytest

from meter.codecs.ras import Vendor
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.peers import MeterProcess, PrometheusProcess, promtool_check_metrics
from tests.integration.test_metering_prometheus import register as sip_register
from tests.rasclient import RasClient
from tests.sipclient import SipUA

pytestmark = pytest.mark.integration

DX80_SIP = "TANDBERG/529 (ce9.15.3.17d0b8c2d7c) Cisco-DX80"
ROOM_SIP = "TANDBERG/529 (ce11.40.1.1.10bdaa53ce2) Cisco-RoomKitMini"
MCU = Vendor(country_code=181, manufacturer_code=1, product_id="Cisco TelePresence MCU 5310\x00", version_id="4.5\x00")


def test_r4_r8_r9_c1_c9_c4_h323_registrations_and_admissions_metered(tmp_path):
    node = MeterProcess(tmp_path / "h323", licensing={"enforcement": "enforce"}, zones=[
        {"name": "tpgk", "kind": "third_party_gatekeeper", "match": ["domain:tpgk.example"]},
        {"name": "itsp", "kind": "third_party_sip", "match": ["domain:itsp.example"]}])
    node.install_keys({"ROOM": 17, "DESKTOP": 2, "RMS": 2})
    node.start()
    prom = PrometheusProcess(tmp_path / "prom", [f"127.0.0.1:{node.admin_port}"]).start()
    gk = ("127.0.0.1", node.ras_port)

    async def scenario():
        e1 = await RasClient.open(gk, [("h323-ID", "room1"), ("dialledDigits", "1001")])
        e2 = await RasClient.open(gk, [("h323-ID", "room2"), ("dialledDigits", "1002"), ("url-ID", "room2@lab.test")])
        dual = await RasClient.open(gk, [("h323-ID", "dx80")])
        mcu = await RasClient.open(gk, [("h323-ID", f"mcu-conf-{i}") for i in range(10)], vendor=MCU,
                                   endpoint_type="mcu")
        for ep in (e1, e2, dual, mcu):
            answer = await ep.register()
            assert answer.short == "RCF", answer
        # R8: the DX80 also registers over SIP (desktop, R2); a SIP-only room system for C9 below.
        sip_dx80 = await SipUA.open("dx80", ("127.0.0.1", node.sip_port), domain="lab.test")
        sipper = await SipUA.open("sipper", ("127.0.0.1", node.sip_port), domain="lab.test")
        assert (await sip_register(sip_dx80, DX80_SIP)).status == 200
        assert (await sip_register(sipper, ROOM_SIP)).status == 200

        # 2 + 3 + 1 + 10 H.323 aliases, one room license each (R4, R9); SIP: one desktop, one room.
        prom.wait_value('meter_registrations{protocol="h323",device_class="room"}', 16)
        prom.wait_value('meter_registrations{protocol="sip",device_class="desktop"}', 1)
        prom.wait_value('meter_licenses_in_use{license="room"}', 17)
        prom.wait_value('meter_licenses_in_use{license="desktop"}', 1)

        # R11: the room pool is full; the next RRQ is refused.
        extra = await RasClient.open(gk, [("h323-ID", "one-too-many")])
        refused = await extra.register()
        assert refused.short == "RRJ" and refused.reject_reason == "resourceUnavailable"

        # C1: H.323 registered to H.323 registered: no RMS; the callee's ARQ does not charge again.
        acf, local = await e1.admit([("h323-ID", "room2")])
        assert acf.short == "ACF"
        acf2, _ = await e2.admit([("h323-ID", "room1")], call_id=local.call_id, answer=True)
        assert acf2.short == "ACF"
        # C9: H.323 to an alias registered here over SIP is interworked, but both ends are
        # registered to Cisco infrastructure: no RMS.
        acf, interworked = await e2.admit([("h323-ID", "sipper")])
        assert acf.short == "ACF"
        calls = {c["callee"]: c for c in node.api("calls")}
        assert "C9" in calls["sipper"]["rules"] and calls["sipper"]["units"] == 0
        # C3 row "C (H.323) | third-party SIP server | 1 on C", C9: interworked to an ITSP, one RMS.
        acf, itsp = await mcu.admit([("url-ID", "+4930@itsp.example")], dest_address=("127.0.0.1", 5070))
        assert acf.short == "ACF"
        prom.wait_value('meter_licenses_in_use{license="rms"}', 1)
        # C4: an audio-only H.323 call (64 kbit/s each way) to a third-party gatekeeper takes a whole RMS.
        acf, audio = await dual.admit([("url-ID", "ext@tpgk.example")], bandwidth=1280,
                                      dest_address=("127.0.0.1", 1720))
        assert acf.short == "ACF"
        prom.wait_value('meter_licenses_in_use{license="rms"}', 2)
        prom.wait_value('meter_calls{class="audio_other",license="rms"}', 1)
        # C2 at the limit: ARJ resourceUnavailable.
        arj, _ = await e1.admit([("url-ID", "+4931@itsp.example")], dest_address=("127.0.0.1", 5070))
        assert arj.short == "ARJ" and arj.reject_reason == "resourceUnavailable"
        prom.wait_value('meter_refusals_total{license="rms",reason="rms_exhausted",enforcement="enforce"}', 1)

        # Everything hangs up and unregisters: every in-use series back to zero.
        for ep, call in ((e1, local), (e2, interworked), (mcu, itsp), (dual, audio)):
            assert (await ep.disengage(call)).short == "DCF"
        prom.wait_value('sum(meter_calls)', 0)
        prom.wait_value('meter_licenses_in_use{license="rms"}', 0)
        for ep in (e1, e2, dual, mcu):
            assert (await ep.unregister()).short == "UCF"
        for ua, agent in ((sip_dx80, DX80_SIP), (sipper, ROOM_SIP)):
            assert (await sip_register(ua, agent, expires=0)).status == 200
        prom.wait_value('sum(meter_registrations)', 0)
        prom.wait_value('sum(meter_licenses_in_use)', 0)
        for c in (e1, e2, dual, mcu, extra):
            c.close()
        sip_dx80.close()
        sipper.close()

    try:
        asyncio.run(scenario())
        metrics = node.metrics_text()
        assert 'meter_ras_messages_total{direction="in",kind="RRQ"} 5.0' in metrics
        # Every RAS datagram handled is timed in the same histogram family as SIP's.
        counts = {sample.labels["protocol"]: sample.value
                  for family in text_string_to_metric_families(metrics) for sample in family.samples
                  if sample.name == "meter_message_processing_seconds_count"}
        assert counts.get("h323", 0) > 0 and counts.get("sip", 0) > 0, counts
        promtool_check_metrics(metrics)
    finally:
        prom.stop()
        rc = node.stop()
    assert rc == 0, node.log_tail()
