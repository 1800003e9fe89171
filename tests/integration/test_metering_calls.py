"""Calls metered live through a running node, scraped by a real Prometheus (issue 4).

Each call class of the rules, with exact RMS half units: local-to-local (C1), to external
(C3: paid on E), to third-party SIP (C2, C3), audio-only SIP (C4, C5, C6), "phone" with an
extra m= line (C5), to the cloud CMR (C10). Then the limit: enforce refuses with 503 and a
Warning, observe lets the call through and counts it. Also inline behind a real Kamailio.
"""

from __future__ import annotations

import asyncio

import pytest

from meter.codecs.sip import new_tag
from tests.integration.peers import MeterProcess, PrometheusProcess, promtool_check_metrics
from tests.integration.test_metering_prometheus import register
from tests.sipclient import SDP_ANSWER, SDP_OFFER, SipUA

pytestmark = pytest.mark.integration

ROOM = "TANDBERG/529 (ce11.40.1.1.10bdaa53ce2) Cisco-RoomKitMini"
SDP_HEAD = b"v=0\r\no=x 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
AUDIO = SDP_HEAD + b"m=audio 40000 RTP/AVP 0\r\n"
# C5: a call placed as "phone" that also carries a BFCP/application stream is not audio-only.
AUDIO_PLUS_APP = AUDIO + b"m=application 40010 UDP/BFCP *\r\n"


class Callee:
    """A far end that answers every INVITE with 200 and a given SDP, and BYE with 200."""

    def __init__(self, ua: SipUA, answer: bytes):
        self.ua, self.answer = ua, answer
        loop = asyncio.get_running_loop()
        self.tasks = [loop.create_task(self._answer_invites()), loop.create_task(self._answer_byes())]

    async def _answer_invites(self):
        while True:
            req = await self.ua.expect(method="INVITE", timeout=3600)
            self.ua.reply(req, 200, to_tag=new_tag(), body=self.answer, content_type="application/sdp", contact=True)

    async def _answer_byes(self):
        while True:
            req = await self.ua.expect(method="BYE", timeout=3600)
            self.ua.reply(req, 200, record_route=False)

    def close(self):
        for task in self.tasks:
            task.cancel()
        self.ua.close()


async def call(caller: SipUA, uri: str, offer: bytes):
    invite = caller.request("INVITE", uri, body=offer, content_type="application/sdp")
    caller.send(invite)
    final = await caller.final("INVITE", call_id=invite.call_id, timeout=10)
    if final.status != 200:
        caller.ack_non2xx(invite, final)
        return final, None
    dialog = caller.dialog_from_response(invite, final)
    caller.ack_2xx(dialog)
    return final, dialog


async def hang_up(caller: SipUA, dialog):
    bye = caller.in_dialog(dialog, "BYE")
    caller.send(bye)
    final = await caller.final("BYE", call_id=dialog.call_id, timeout=10)
    assert final.status == 200


@pytest.fixture(params=[1, 2], ids=["1-worker", "2-workers"])
def lab(tmp_path, request):
    """Node + Prometheus, torn down whatever happens; the node with one process or two SIP workers
    (issue 11: every rule's count is the same whichever worker a call goes through)."""
    made = []

    def start(name: str, far_ends: dict[str, int], *, role="C", enforcement="enforce", rms=10):
        zones = [
            {"name": "itsp", "kind": "third_party_sip", "match": ["domain:itsp.example"],
             "target": f"127.0.0.1:{far_ends['itsp']}"},
            {"name": "b2b", "kind": "external", "match": ["domain:partner.example"],
             "target": f"127.0.0.1:{far_ends['b2b']}"},
            {"name": "webex", "kind": "cloud_cmr", "match": ["domain:webex.com"],
             "target": f"127.0.0.1:{far_ends['webex']}"},
        ]
        sip = {} if request.param == 1 else {"workers": request.param, "tcp": False}
        node = MeterProcess(tmp_path / name, node={"role": role}, licensing={"enforcement": enforcement},
                            zones=zones, sip=sip)
        node.install_keys({"ROOM": 10, "RMS": rms})
        node.start()
        prom = PrometheusProcess(tmp_path / f"{name}-prom", [f"127.0.0.1:{node.admin_port}"]).start()
        made.append((node, prom))
        return node, prom

    yield start
    for node, prom in made:
        prom.stop()
        rc = node.stop()
        assert rc == 0, f"node exited with {rc}: {node.log_tail()}"


def test_c1_c2_c3_c4_c5_c6_c10_each_call_class_costs_its_exact_half_units(lab):
    async def scenario():
        far = {name: await SipUA.open(name, ("127.0.0.1", 9), domain="far.example") for name in ("itsp", "b2b", "webex")}
        node, prom = lab("classes", {k: ua.port for k, ua in far.items()})
        answers = {"itsp": SDP_ANSWER, "b2b": SDP_ANSWER, "webex": SDP_ANSWER}
        callees = [Callee(ua, answers[k]) for k, ua in far.items()]
        proxy = ("127.0.0.1", node.sip_port)
        alice = await SipUA.open("alice", proxy, domain="lab.test")
        bob = await SipUA.open("bob", proxy, domain="lab.test")
        for ua in (alice, bob):
            assert (await register(ua, ROOM)).status == 200
        local_callee = Callee(bob, SDP_ANSWER)
        calls = {}
        # C1: registered to registered, no RMS.
        calls["local"] = await call(alice, bob.aor, SDP_OFFER)
        prom.wait_value('meter_licenses_in_use{license="rms"}', 0)
        # C2, C3 (C | third-party SIP | 1 on C): a video call, one whole RMS.
        calls["itsp_video"] = await call(alice, "sip:+4930111@itsp.example", SDP_OFFER)
        # An audio-only offer and answer: C4, C5, C6 -> half an RMS once set up.
        far_itsp_answer = callees[0]
        far_itsp_answer.answer = AUDIO
        calls["itsp_audio"] = await call(alice, "sip:+4930222@itsp.example", AUDIO)
        # C5: "phone" plus one more m= line: a video license.
        far_itsp_answer.answer = AUDIO_PLUS_APP
        calls["itsp_phone_extra"] = await call(alice, "sip:+4930333@itsp.example", AUDIO_PLUS_APP)
        # C3 row "C | external | 0 on C | 1 on E": this C node draws nothing.
        calls["b2b"] = await call(alice, "sip:guest@partner.example", SDP_OFFER)
        # C10: the cloud CMR, dialled as is: no RMS, but a call against capacity.
        calls["webex"] = await call(alice, "sip:meet@site.webex.com", SDP_OFFER)
        assert all(final.status == 200 for final, _ in calls.values()), {k: f.status for k, (f, _) in calls.items()}
        # 2 (video) + 1 (audio-only SIP) + 2 (phone with an extra m= line) half units.
        prom.wait_value('meter_licenses_in_use{license="rms"}', 2.5)
        prom.wait_value('sum(meter_calls)', 6)
        prom.wait_value('sum(meter_calls{class="audio_sip"})', 1)
        prom.wait_value('sum(meter_calls{license="none"})', 3)  # local, b2b (paid on E), webex
        api = {c["callee"]: c for c in node.api("calls")}
        assert "C10" in api["sip:meet@site.webex.com"]["rules"]
        assert "C1" in api[bob.aor]["rules"]
        promtool_check_metrics(node.metrics_text())
        for _, dialog in calls.values():
            await hang_up(alice, dialog)
        prom.wait_value('sum(meter_calls)', 0)
        prom.wait_value('meter_licenses_in_use{license="rms"}', 0)
        for c in callees + [local_callee]:
            c.close()
        alice.close()

    asyncio.run(scenario())


def test_c3_edge_node_charges_the_b2b_call_to_external(lab):
    async def scenario():
        far = {name: await SipUA.open(name, ("127.0.0.1", 9), domain="far.example") for name in ("itsp", "b2b", "webex")}
        node, prom = lab("edge", {k: ua.port for k, ua in far.items()}, role="E")
        callee = Callee(far["b2b"], SDP_ANSWER)
        alice = await SipUA.open("alice", ("127.0.0.1", node.sip_port), domain="lab.test")
        assert (await register(alice, ROOM)).status == 200
        final, dialog = await call(alice, "sip:guest@partner.example", SDP_OFFER)
        assert final.status == 200
        prom.wait_value('meter_licenses_in_use{license="rms"}', 1)  # C3: "E (SIP) | external | 1 on E"
        await hang_up(alice, dialog)
        prom.wait_value('meter_licenses_in_use{license="rms"}', 0)
        callee.close()
        alice.close()
        for ua in far.values():
            ua.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("enforcement", ["enforce", "observe"])
def test_c2_r11_at_the_limit_enforce_refuses_503_observe_counts(lab, enforcement):
    async def scenario():
        far = {name: await SipUA.open(name, ("127.0.0.1", 9), domain="far.example") for name in ("itsp", "b2b", "webex")}
        node, prom = lab(f"limit-{enforcement}", {k: ua.port for k, ua in far.items()}, enforcement=enforcement, rms=1)
        callee = Callee(far["itsp"], SDP_ANSWER)
        alice = await SipUA.open("alice", ("127.0.0.1", node.sip_port), domain="lab.test")
        assert (await register(alice, ROOM)).status == 200
        first, d1 = await call(alice, "sip:+1@itsp.example", SDP_OFFER)
        second, d2 = await call(alice, "sip:+2@itsp.example", SDP_OFFER)
        assert first.status == 200
        if enforcement == "enforce":
            assert second.status == 503 and "Rich Media Session" in second.reason
            assert "rms_exhausted" in second.header("warning")
            prom.wait_value('meter_refusals_total{license="rms",reason="rms_exhausted",enforcement="enforce"}', 1)
            prom.wait_value('meter_licenses_in_use{license="rms"}', 1)
        else:
            assert second.status == 200
            prom.wait_value('meter_refusals_total{license="rms",reason="rms_exhausted",enforcement="observe"}', 1)
            prom.wait_value('meter_licenses_in_use{license="rms"}', 2)  # observe counts beyond the pool
            await hang_up(alice, d2)
        await hang_up(alice, d1)
        prom.wait_value('meter_licenses_in_use{license="rms"}', 0)
        callee.close()
        alice.close()
        for ua in far.values():
            ua.close()

    asyncio.run(scenario())


def test_r9_c1_inline_behind_kamailio_registrations_and_call_metered_then_zero(kamailio, tmp_path):
    """Endpoints register through the node to a real Kamailio; the node learns and charges them
    from Kamailio's 200 OK (R9, R2), a call between two of them is a registered call (C1), and
    when everything hangs up and unregisters every in-use series is back to zero."""
    node = MeterProcess(tmp_path / "inline", sip={"mode": "inline", "upstream": f"127.0.0.1:{kamailio.port}"},
                        licensing={"enforcement": "enforce"})
    node.install_keys({"ROOM": 5, "DESKTOP": 5, "RMS": 2})
    node.start()
    prom = PrometheusProcess(tmp_path / "inline-prom", [f"127.0.0.1:{node.admin_port}"]).start()

    async def scenario():
        proxy = ("127.0.0.1", node.sip_port)
        carol = await SipUA.open("carol-m", proxy, domain="127.0.0.1")
        dave = await SipUA.open("dave-m", proxy, domain="127.0.0.1")
        assert (await register(carol, ROOM)).status == 200
        assert (await register(dave, "TANDBERG/529 (ce9.15.3.17d0b8c2d7c) Cisco-DX80")).status == 200
        assert carol.contact_uri in kamailio.contacts().get("carol-m", [])
        prom.wait_value('sum(meter_registrations{device_class="room"})', 1)
        prom.wait_value('sum(meter_registrations{device_class="desktop"})', 1)
        callee = Callee(dave, SDP_ANSWER)
        final, dialog = await call(carol, dave.aor, SDP_OFFER)
        assert final.status == 200
        prom.wait_value('sum(meter_calls)', 1)
        prom.wait_value('meter_licenses_in_use{license="rms"}', 0)  # C1: registered to registered
        await hang_up(carol, dialog)
        for ua, agent in ((carol, ROOM), (dave, "TANDBERG/529 (ce9.15.3.17d0b8c2d7c) Cisco-DX80")):
            assert (await register(ua, agent, expires=0)).status == 200
        prom.wait_value('sum(meter_calls)', 0)
        prom.wait_value('sum(meter_licenses_in_use)', 0)
        prom.wait_value('sum(meter_registrations)', 0)
        assert "carol-m" not in kamailio.contacts()
        callee.close()
        carol.close()

    try:
        asyncio.run(scenario())
    finally:
        prom.stop()
        rc = node.stop()
    assert rc == 0, node.log_tail()
