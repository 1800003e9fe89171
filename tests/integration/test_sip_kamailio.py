"""Inline mode against a real Kamailio registrar (issue 2, items 5 and 7).

Endpoints register *through the node* to Kamailio; calls go caller -> node -> Kamailio -> node ->
callee (Kamailio routes along the Path the node added, RFC 3327) and back."""

from __future__ import annotations

import asyncio
import itertools
import socket

import pytest

from tests.integration.conftest import run, running_node
from tests.sipclient import SDP_ANSWER, SDP_OFFER, Recorder, SipUA
from tests.integration.peers import async_wait_until as wait_until

pytestmark = pytest.mark.integration

_ids = itertools.count(1)


def names(*roles: str) -> list[str]:
    """User names unique in the session: the Kamailio instance is shared between tests."""
    n = next(_ids)
    return [f"{role}{n}" for role in roles]


async def endpoints(node, *users, transports=None):
    transports = transports or ["udp"] * len(users)
    uas = []
    for user, transport in zip(users, transports):
        uas.append(await SipUA.open(user, ("127.0.0.1", node.port), domain="lab.test", transport=transport))
    return uas


def inline(kamailio, **kw):
    return dict(mode="inline", upstream=f"127.0.0.1:{kamailio.port}", **kw)


def test_register_through_node_reaches_kamailio_and_is_learned(kamailio):
    policy = Recorder()

    async def scenario():
        async with running_node(policy, **inline(kamailio)) as node:
            (alice,) = await endpoints(node, *names("alice"))
            ok = await alice.register(expires=120)
            assert ok.status == 200
            # Kamailio's RPC lists the binding, with the node's Path (RFC 3327)
            assert alice.contact_uri in kamailio.contacts().get(alice.user, [])
            assert f"<sip:127.0.0.1:{node.port};lr>" in kamailio.paths()
            # the node learned it from Kamailio's 200 OK
            assert [(b["aor"], b["contact"]) for b in node.bindings()] == [(alice.aor, alice.contact_uri)]
            assert 0 < node.bindings()[0]["expires"] <= 120
            assert policy.log[-1] == ("bindings", alice.aor, (alice.contact_uri,))
            # unregister: gone upstream and here
            gone = await alice.register(expires=0)
            assert gone.status == 200
            assert alice.user not in kamailio.contacts()
            assert node.bindings() == []
            assert policy.log[-1] == ("bindings", alice.aor, ())
            alice.close()

    run(scenario())


async def call_through(node, kamailio, caller: SipUA, callee: SipUA):
    """Caller INVITEs the callee's AOR; returns (caller's INVITE, INVITE as the callee got it)."""
    assert (await caller.register()).status == 200
    assert (await callee.register()).status == 200
    invite = caller.invite(callee.aor, sdp=SDP_OFFER)
    at_callee = await callee.expect(method="INVITE", call_id=invite.call_id)
    return invite, at_callee


def test_call_setup_and_teardown_through_node_kamailio_node(kamailio):
    policy = Recorder()

    async def scenario():
        async with running_node(policy, **inline(kamailio)) as node:
            alice, bob = await endpoints(node, *names("alice", "bob"))
            invite, at_bob = await call_through(node, kamailio, alice, bob)
            node_rr = f"<sip:127.0.0.1:{node.port};lr>"
            rr = at_bob.header_values("record-route")
            # node (inner pass), Kamailio, node (outer pass): every in-dialog request passes the node
            assert rr[0] == node_rr and rr[-1] == node_rr and any(str(kamailio.port) in v for v in rr[1:-1])
            assert at_bob.uri == bob.contact_uri and at_bob.body == SDP_OFFER
            bob.reply(at_bob, 180, to_tag="bt", contact=True)
            assert (await alice.expect(status=180)).to.tag == "bt"
            assert node.calls()[0]["state"] == "early"
            bob.reply(at_bob, 200, to_tag="bt", contact=True, body=SDP_ANSWER, content_type="application/sdp")
            ok = await alice.expect(status=200, cseq_method="INVITE")
            assert ok.body == SDP_ANSWER and ok.header_values("record-route") == rr
            dialog = alice.dialog_from_response(invite, ok)
            alice.ack_2xx(dialog)
            ack = await bob.expect(method="ACK")
            assert ack.call_id == invite.call_id
            await wait_until(lambda: node.calls() and node.calls()[0]["state"] == "confirmed", what="confirmed")
            await alice.hang_up(dialog, bob)
            await wait_until(lambda: node.calls() == [], what="empty dialog table")
            for ua in (alice, bob):
                ua.close()
        call_id = invite.call_id
        assert [e[0] for e in policy.log if len(e) > 1 and e[1] == call_id] == ["invite", "answered", "confirmed", "ended"]
        assert policy.events("ended") == [("ended", call_id, "bye")]
        assert policy.events("invite")[0][2] is True  # callee registered (through this node)

    run(scenario())


def test_callee_hangs_up_over_tcp_caller_with_double_record_route(kamailio):
    """Caller on TCP, callee on UDP: the node record-routes twice (RFC 5658) and reaches the caller
    back through its TCP connection."""
    policy = Recorder()

    async def scenario():
        async with running_node(policy, **inline(kamailio)) as node:
            alice, bob = await endpoints(node, *names("alice", "bob"), transports=["tcp", "udp"])
            invite, at_bob = await call_through(node, kamailio, alice, bob)
            rr = at_bob.header_values("record-route")
            assert rr[-2:] == [f"<sip:127.0.0.1:{node.port};lr>", f"<sip:127.0.0.1:{node.port};transport=tcp;lr>"]
            bob.reply(at_bob, 200, to_tag="bt", contact=True, body=SDP_ANSWER, content_type="application/sdp")
            ok = await alice.expect(status=200, cseq_method="INVITE")
            alice.ack_2xx(alice.dialog_from_response(invite, ok))
            await bob.expect(method="ACK")
            bob_dialog = bob.dialog_from_request(at_bob, "bt")
            bye = bob.in_dialog(bob_dialog, "BYE")
            bob.send(bye)
            at_alice = await alice.expect(method="BYE")
            alice.reply(at_alice, 200, record_route=False)
            assert (await bob.final("BYE")).status == 200
            await wait_until(lambda: node.calls() == [], what="empty dialog table")
            for ua in (alice, bob):
                ua.close()
        policy.assert_every_allowed_call_ended_once()
        assert policy.events("ended") == [("ended", invite.call_id, "bye")]

    run(scenario())


def test_cancel_before_answer_through_kamailio(kamailio):
    policy = Recorder()

    async def scenario():
        async with running_node(policy, **inline(kamailio)) as node:
            alice, bob = await endpoints(node, *names("alice", "bob"))
            invite, at_bob = await call_through(node, kamailio, alice, bob)
            bob.reply(at_bob, 180, to_tag="bt", contact=True)
            await alice.expect(status=180)
            alice.cancel(invite)
            assert (await alice.final("CANCEL")).status == 200
            cancel = await bob.expect(method="CANCEL")
            bob.reply(cancel, 200, to_tag="bt", record_route=False)
            bob.reply(at_bob, 487, to_tag="bt", record_route=False)
            terminated = await alice.final("INVITE")
            assert terminated.status == 487
            alice.ack_non2xx(invite, terminated)
            hop_ack = await bob.expect(method="ACK")  # the node ACKs the 487 hop by hop
            assert hop_ack.top_via.branch == at_bob.top_via.branch
            await wait_until(lambda: node.calls() == [], what="empty dialog table")
            for ua in (alice, bob):
                ua.close()
        assert policy.events("ended") == [("ended", invite.call_id, "cancelled")]
        policy.assert_every_allowed_call_ended_once()

    run(scenario())


def test_busy_callee_486_through_kamailio(kamailio):
    policy = Recorder()

    async def scenario():
        async with running_node(policy, **inline(kamailio)) as node:
            alice, bob = await endpoints(node, *names("alice", "bob"))
            invite, at_bob = await call_through(node, kamailio, alice, bob)
            bob.reply(at_bob, 486, to_tag="bt", record_route=False)
            await bob.expect(method="ACK")
            busy = await alice.final("INVITE")
            assert busy.status == 486
            alice.ack_non2xx(invite, busy)
            await wait_until(lambda: node.calls() == [], what="empty dialog table")
            for ua in (alice, bob):
                ua.close()
        assert policy.events("ended") == [("ended", invite.call_id, "rejected 486")]

    run(scenario())


def test_unknown_alias_goes_upstream_and_kamailio_404_comes_back(kamailio):
    policy = Recorder()

    async def scenario():
        async with running_node(policy, **inline(kamailio)) as node:
            (alice,) = await endpoints(node, *names("alice"))
            invite = alice.invite("sip:nobody-here@lab.test")
            resp = await alice.final("INVITE")
            assert resp.status == 404
            alice.ack_non2xx(invite, resp)
            await wait_until(lambda: node.calls() == [], what="empty dialog table")
            alice.close()
        assert policy.events("invite")[0][2] is False  # not registered anywhere
        assert policy.events("ended") == [("ended", invite.call_id, "rejected 404")]

    run(scenario())


def test_upstream_that_does_not_answer_gives_408_and_leaves_no_dialog():
    """Timer B (64*T1) at the node: 408 to the caller, nothing left in the dialog table."""
    policy = Recorder()
    black_hole = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # receives, never answers
    black_hole.bind(("127.0.0.1", 0))
    port = black_hole.getsockname()[1]

    async def scenario():
        async with running_node(policy, mode="inline", upstream=f"127.0.0.1:{port}", t1=0.05, t2=0.2) as node:
            (alice,) = await endpoints(node, *names("alice"))
            invite = alice.invite("sip:carol@lab.test")
            assert (await alice.expect(status=100)).status == 100
            timeout = await alice.final("INVITE", timeout=10)
            assert timeout.status == 408
            alice.ack_non2xx(invite, timeout)
            assert node.calls() == []
            reg = await alice.register(timeout=10)  # Timer F for the forwarded REGISTER
            assert reg.status == 408
            assert node.stats()["transaction_timeouts"] >= 2
            alice.close()
        assert policy.events("ended") == [("ended", invite.call_id, "timeout")]

    try:
        run(scenario())
    finally:
        black_hole.close()


def test_sipp_caller_reaches_registered_endpoint_through_node_and_kamailio(kamailio, sipp, tmp_path):
    """A scripted SIPp UAC (real third-party stack) calls a registered endpoint; full dialog with BYE."""
    policy = Recorder()
    (bob_user,) = names("bob")
    scenario_xml = SIPP_UAC.replace("@CALLEE@", bob_user)

    async def scenario():
        async with running_node(policy, **inline(kamailio)) as node:
            (bob,) = await endpoints(node, bob_user)
            assert (await bob.register()).status == 200
            sipp_task = asyncio.create_task(sipp(scenario_xml, f"127.0.0.1:{node.port}", tmp_path / "sipp",
                                                 timeout=20))
            at_bob = await bob.expect(method="INVITE", timeout=15)
            bob.reply(at_bob, 180, to_tag="bt", contact=True)
            bob.reply(at_bob, 200, to_tag="bt", contact=True, body=SDP_ANSWER, content_type="application/sdp")
            await bob.expect(method="ACK")
            bye = await bob.expect(method="BYE")
            bob.reply(bye, 200, record_route=False)
            result = await sipp_task
            result.check()
            await wait_until(lambda: node.calls() == [], what="empty dialog table")
            bob.close()
        policy.assert_every_allowed_call_ended_once()
        assert [e[0] for e in policy.log if e[0] in ("invite", "answered", "confirmed", "ended")] == [
            "invite", "answered", "confirmed", "ended"]

    run(scenario())


SIPP_UAC = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="meter UAC through a record-routing proxy">
  <send retrans="500">
    <![CDATA[
      INVITE sip:@CALLEE@@lab.test SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      From: sipp <sip:sipp@lab.test>;tag=[pid]SIPpTag00[call_number]
      To: <sip:@CALLEE@@lab.test>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: <sip:sipp@[local_ip]:[local_port]>
      Max-Forwards: 70
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=user1 53655765 2353687637 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0
      a=rtpmap:0 PCMU/8000
    ]]>
  </send>
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="200" rrs="true"/>
  <send>
    <![CDATA[
      ACK [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      From: sipp <sip:sipp@lab.test>;tag=[pid]SIPpTag00[call_number]
      To: <sip:@CALLEE@@lab.test>[peer_tag_param]
      Call-ID: [call_id]
      [routes]
      CSeq: 1 ACK
      Max-Forwards: 70
      Content-Length: 0
    ]]>
  </send>
  <pause milliseconds="200"/>
  <send retrans="500">
    <![CDATA[
      BYE [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      From: sipp <sip:sipp@lab.test>;tag=[pid]SIPpTag00[call_number]
      To: <sip:@CALLEE@@lab.test>[peer_tag_param]
      Call-ID: [call_id]
      [routes]
      CSeq: 2 BYE
      Max-Forwards: 70
      Content-Length: 0
    ]]>
  </send>
  <recv response="200"/>
</scenario>
"""
