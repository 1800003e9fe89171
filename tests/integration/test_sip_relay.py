"""Relay policy and "registered" by flow with a real node process (issue 10 item 1).

`meter run` in a subprocess (MeterProcess), SIP endpoints from tests/sipclient.SipUA on loopback,
and a "foreign host": a UDP socket that must never receive anything. Standalone, and inline in
front of the real Kamailio fixture: a pre-loaded Route to the foreign host gets
`403 Forbidden - relay not allowed (...)` (RFC 3261 §16.6), a made-up in-dialog request too
(§16.12), each refusal is logged with the source and User-Agent; a forged From of a registered
alias is charged as the external call it is (C2, C3).
"""

from __future__ import annotations

import asyncio
import re

import pytest

from tests.integration.conftest import run_sipp
from tests.integration.peers import MeterProcess, async_wait_until as wait_until
from tests.sipclient import SDP_OFFER, SipUA

pytestmark = pytest.mark.integration


class Foreign(asyncio.DatagramProtocol):
    """A host the node does not serve: counts what reaches it."""

    def __init__(self) -> None:
        self.received: list[bytes] = []

    def datagram_received(self, data, addr) -> None:
        self.received.append(data)


async def foreign_host() -> tuple[asyncio.DatagramTransport, Foreign, int]:
    transport, proto = await asyncio.get_running_loop().create_datagram_endpoint(
        Foreign, local_addr=("127.0.0.1", 0))
    return transport, proto, transport.get_extra_info("sockname")[1]


async def probe_relay(node: MeterProcess, alice: SipUA) -> None:
    """Pre-loaded Route and a made-up in-dialog request to the foreign host: both 403, nothing
    reaches it, one log line each with alice's address and User-Agent."""
    transport, foreign, port = await foreign_host()
    try:
        route = [f"<sip:127.0.0.1:{port};lr>"]
        invite = alice.request("INVITE", f"sip:victim@127.0.0.1:{port}", body=SDP_OFFER,
                               content_type="application/sdp", route=route)
        alice.send(invite)
        refused = await alice.final("INVITE", call_id=invite.call_id)
        assert (refused.status, refused.reason) == (403, "Forbidden - relay not allowed (pre-loaded Route)")
        alice.ack_non2xx(invite, refused)  # hop by hop (RFC 3261 §17.1.1.3): absorbed by the node
        # a To tag and the node's own Route prove nothing: not a dialog the node record-routed
        bye = alice.request("BYE", f"sip:victim@127.0.0.1:{port}", to=f"sip:victim@127.0.0.1:{port}",
                            to_tag="made-up", route=[f"<sip:127.0.0.1:{node.sip_port};lr>"])
        alice.send(bye)
        refused_bye = await alice.final("BYE", call_id=bye.call_id)
        assert (refused_bye.status, refused_bye.reason) == (
            403, "Forbidden - relay not allowed (not a dialog this node routes)")
        await asyncio.sleep(1.0)  # what a relayed request would take on loopback, many times over
        assert foreign.received == []

        def logged() -> bool:
            lines = [line for line in node.log_path.read_text().splitlines() if "sip.relay.refused" in line]
            return len(lines) == 2 and all(f"127.0.0.1:{alice.port}" in line and alice_agent(alice) in line
                                           for line in lines)

        await wait_until(logged, 10.0, "two sip.relay.refused log lines with source and User-Agent")
    finally:
        transport.close()


def alice_agent(ua: SipUA) -> str:
    return f"sipclient-{ua.user}"


def rms_in_use(node: MeterProcess) -> float:
    match = re.search(r'^meter_licenses_in_use\{license="rms"\} (\S+)$', node.metrics_text(), re.M)
    return float(match.group(1)) if match else 0.0


def test_standalone_preloaded_route_and_made_up_dialog_get_403_and_forged_from_pays_rms(tmp_path):
    # Expressway-E: where an external caller's call costs its RMS (C2, C3)
    node = MeterProcess(tmp_path / "standalone", node={"role": "E"}).start()

    async def scenario():
        proxy = ("127.0.0.1", node.sip_port)
        alice = await SipUA.open("alice", proxy, domain="lab.test")
        bob = await SipUA.open("bob", proxy, domain="lab.test")
        mallory = await SipUA.open("alice", proxy, domain="lab.test")  # alice's From, another flow
        try:
            assert (await alice.register(expires=300)).status == 200
            assert (await bob.register(expires=300)).status == 200
            await probe_relay(node, alice)
            # alice over her own flow: registered to registered (C1), no RMS
            real = alice.invite(bob.aor)
            await bob.expect(method="INVITE", call_id=real.call_id)
            await asyncio.sleep(0.5)
            assert rms_in_use(node) == 0
            # the same From from another address and port: an external caller (C2, C3)
            forged = mallory.invite(bob.aor)
            await bob.expect(method="INVITE", call_id=forged.call_id)
            await wait_until(lambda: rms_in_use(node) > 0, 10.0, "the forged-From call to take an RMS")
        finally:
            for ua in (alice, bob, mallory):
                ua.close()

    try:
        asyncio.run(asyncio.wait_for(scenario(), 60))
    finally:
        rc = node.stop()
    assert rc == 0, node.log_tail()


def test_inline_preloaded_route_gets_403_and_never_bypasses_kamailio(kamailio, tmp_path):
    node = MeterProcess(tmp_path / "inline", sip={"mode": "inline", "upstream": f"127.0.0.1:{kamailio.port}"}).start()

    async def scenario():
        alice = await SipUA.open("relay-alice", ("127.0.0.1", node.sip_port), domain="127.0.0.1")
        try:
            assert (await alice.register(expires=120)).status == 200  # through the node to Kamailio
            assert alice.contact_uri in kamailio.contacts().get("relay-alice", [])
            await probe_relay(node, alice)
            assert (await alice.register(expires=0)).status == 200
        finally:
            alice.close()

    try:
        asyncio.run(asyncio.wait_for(scenario(), 60))
    finally:
        rc = node.stop()
    assert rc == 0, node.log_tail()


# SIPp (Debian sip-tester), a tool written by others: an INVITE with a pre-loaded Route to the
# foreign host, the 403 expected (its reason phrase checked in SIPp's message trace), then the ACK
# of the failure (§17.1.1.3).
SIPP_PRELOADED_ROUTE = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="pre-loaded Route to a foreign host">
  <send retrans="500">
    <![CDATA[
      INVITE sip:victim@127.0.0.1:@FOREIGN@ SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      From: sipp <sip:sipp@lab.test>;tag=[pid]SIPpTag00[call_number]
      To: <sip:victim@127.0.0.1:@FOREIGN@>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Route: <sip:127.0.0.1:@FOREIGN@;lr>
      Contact: <sip:sipp@[local_ip]:[local_port]>
      Max-Forwards: 70
      User-Agent: sipp-relay-probe
      Content-Length: 0

    ]]>
  </send>
  <recv response="100" optional="true"/>
  <recv response="403"/>
  <send>
    <![CDATA[
      ACK sip:victim@127.0.0.1:@FOREIGN@ SIP/2.0
      [last_Via:]
      From: sipp <sip:sipp@lab.test>;tag=[pid]SIPpTag00[call_number]
      [last_To:]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Route: <sip:127.0.0.1:@FOREIGN@;lr>
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
</scenario>
"""


def test_sipp_preloaded_route_to_a_foreign_host_gets_403(tmp_path):
    node = MeterProcess(tmp_path / "sipp-node").start()

    async def scenario():
        transport, foreign, port = await foreign_host()
        try:
            result = await run_sipp(SIPP_PRELOADED_ROUTE.replace("@FOREIGN@", str(port)),
                                    f"127.0.0.1:{node.sip_port}", tmp_path / "sipp")
            result.check()
            assert "403 Forbidden - relay not allowed (pre-loaded Route)" in result.messages
            await asyncio.sleep(1.0)
            assert foreign.received == []
            await wait_until(lambda: "user_agent=sipp-relay-probe" in node.log_path.read_text(), 10.0,
                             "the refusal logged with SIPp's User-Agent")
        finally:
            transport.close()

    try:
        asyncio.run(asyncio.wait_for(scenario(), 60))
    finally:
        rc = node.stop()
    assert rc == 0, node.log_tail()
