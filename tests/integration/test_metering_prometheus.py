"""Live SIP traffic metered and scraped by a real Prometheus (issue 4).

The node runs as a subprocess on its own config (`meter run --config`), with lab option keys
issued and installed through the CLI; endpoints are asyncio SIP user agents on loopback;
Debian's prometheus scrapes `/metrics` every second and the assertions read its query API.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.integration.peers import MeterProcess, PrometheusProcess, promtool_check_metrics
from tests.sipclient import SipUA

pytestmark = pytest.mark.integration

# Fifty endpoints of mixed models (R2, R3): real User-Agent strings from config/devices.toml's sources.
FLEET = [
    ("TANDBERG/529 (ce11.40.1.1.10bdaa53ce2) Cisco-RoomKitMini", "room", 14),
    ("TANDBERG/529 (ce9.15.3.17d0b8c2d7c) Cisco-DX80", "desktop", 8),
    ("TANDBERG/529 (ce9.12.3.2f0a7d4f1c4) Cisco-DX70", "desktop", 3),
    ("TANDBERG/528 (TC7.3.6.ea51021) Cisco-EX90", "desktop", 4),
    ("TANDBERG/528 (TC7.3.2.14ad7cc) Cisco-EX90", "room", 2),          # R3: EX before TC7.3.6 is a room
    ("TANDBERG/775 (MCX 4.8.12.18951) - Windows", "desktop", 3),     # Jabber Video (Movi) is desktop (R2)
    ("PolycomRealPresenceGroup500/5.0.1", "room", 6),
    ("LifeSize Icon 600/LS_RM3_3.7.0 (2421)", "room", 3),
    ("Linphone/5.2.0 (belle-sip/5.2.0)", "room", 4),
    ("Cisco-CSF", "room", 3),                                        # Jabber desktop is not Jabber Video (R2)
]
EXPECTED = {"room": sum(n for _, c, n in FLEET if c == "room"), "desktop": sum(n for _, c, n in FLEET if c == "desktop")}
AUDIO_ONLY = b"v=0\r\no=a 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\n"
AUDIO_PLUS_VIDEO_DECLINED = AUDIO_ONLY + b"m=video 0 RTP/AVP 96\r\n"


def run(coro):
    return asyncio.run(coro)


async def register(ua: SipUA, user_agent: str, expires: int = 300):
    req = ua.request("REGISTER", f"sip:{ua.domain}", to=ua.aor, headers=[("Expires", str(expires))])
    req.set_header("User-Agent", user_agent)
    ua.send(req)
    return await ua.final("REGISTER", call_id=req.call_id)


@pytest.fixture
def prometheus_for(tmp_path):
    started = []

    def start(node: MeterProcess) -> PrometheusProcess:
        prom = PrometheusProcess(tmp_path / f"prom{len(started)}", [f"127.0.0.1:{node.admin_port}"]).start()
        started.append(prom)
        return prom

    yield start
    for prom in started:
        prom.stop()


@pytest.fixture
def node_factory(tmp_path):
    nodes = []

    def make(name: str, **kwargs) -> MeterProcess:
        node = MeterProcess(tmp_path / name, **kwargs)
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        rc = node.stop()
        assert rc == 0, f"node exited with {rc}: {node.log_tail()}"


def test_r1_r2_r3_r9_fifty_endpoints_give_exact_room_and_desktop_series(node_factory, prometheus_for):
    # Fifty endpoints behind one address (loopback), registering at once: more than [limits] allows
    # one source (32 AORs, 64 requests per 2 s), which is what a site behind one NAT configures.
    node = node_factory("standalone", licensing={"enforcement": "enforce"},
                        extra="[limits]\nrequests = 0\nregistrations = 0\n")
    node.install_keys({"ROOM": 40, "DESKTOP": 25, "RMS": 5})
    node.start()
    prom = prometheus_for(node)

    async def scenario():
        uas = []
        for user_agent, _, count in FLEET:
            for i in range(count):
                ua = await SipUA.open(f"ep{len(uas)}", ("127.0.0.1", node.sip_port), domain="lab.test")
                uas.append((ua, user_agent))
        answers = await asyncio.gather(*(register(ua, agent) for ua, agent in uas))
        assert [a.status for a in answers] == [200] * 50
        return uas

    async def unregister_all(uas):
        answers = await asyncio.gather(*(register(ua, agent, expires=0) for ua, agent in uas))
        assert all(a.status == 200 for a in answers)
        for ua, _ in uas:
            ua.close()

    loop = asyncio.new_event_loop()
    try:
        uas = loop.run_until_complete(scenario())
        prom.wait_value('sum(meter_registrations{device_class="room"})', EXPECTED["room"])
        prom.wait_value('sum(meter_registrations{device_class="desktop"})', EXPECTED["desktop"])
        prom.wait_value('meter_licenses_in_use{license="room"}', EXPECTED["room"])
        prom.wait_value('meter_licenses_in_use{license="desktop"}', EXPECTED["desktop"])
        prom.wait_value('meter_licenses_capacity{license="room"}', 40)
        promtool_check_metrics(node.metrics_text())
        loop.run_until_complete(unregister_all(uas))
        prom.wait_value('sum(meter_registrations)', 0)
        prom.wait_value('sum(meter_licenses_in_use)', 0)
    finally:
        loop.close()


def test_r11_enforce_refuses_register_beyond_the_pool_with_503_and_warning(node_factory, prometheus_for):
    node = node_factory("small", licensing={"enforcement": "enforce"})
    node.install_keys({"ROOM": 2, "RMS": 1})
    node.start()
    prom = prometheus_for(node)

    async def scenario():
        uas = [await SipUA.open(f"room{i}", ("127.0.0.1", node.sip_port), domain="lab.test") for i in range(3)]
        answers = [await register(ua, "PolycomRealPresenceGroup500/5.0.1") for ua in uas]
        for ua in uas:
            ua.close()
        return answers

    answers = run(scenario())
    assert [a.status for a in answers] == [200, 200, 503]
    assert "Room System license" in answers[2].reason
    warning = answers[2].header("warning")
    assert warning.startswith(f"399 127.0.0.1:{node.sip_port} ") and "room_exhausted" in warning and "R11" in warning
    prom.wait_value('meter_refusals_total{license="room",reason="room_exhausted",enforcement="enforce"}', 1)
    prom.wait_value('meter_licenses_in_use{license="room"}', 2)
