"""Standalone mode over real sockets (UDP and TCP), on asyncio's own loop and on uvloop:
the node is the registrar, answers OPTIONS, refuses malformed requests with a reason, and
proxies calls between its registered endpoints."""

from __future__ import annotations

import asyncio

import pytest

from tests.integration.conftest import run, running_node
from tests.sipclient import SDP_ANSWER, SDP_OFFER, Recorder, SipUA
from tests.integration.peers import async_wait_until as wait_until

pytestmark = pytest.mark.integration

LOOPS = ["asyncio", "uvloop"]


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_register_options_and_malformed_request(loop, transport):
    async def scenario():
        async with running_node(Recorder()) as node:
            ua = await SipUA.open("alice", ("127.0.0.1", node.port), domain="lab.test", transport=transport)
            ok = await ua.register(expires=300)
            assert ok.status == 200
            assert ok.header_values("contact") == [f"<{ua.contact_uri}>;expires=300"]
            assert [b["contact"] for b in node.bindings()] == [ua.contact_uri]
            brief = await ua.register(expires=5)
            assert brief.status == 423 and brief.header("min-expires") == "60"

            options = ua.request("OPTIONS", f"sip:127.0.0.1:{node.port}", contact=False)
            ua.send(options)
            answer = await ua.final("OPTIONS", call_id=options.call_id)
            assert answer.status == 200 and "REGISTER" in answer.header_values("allow")

            broken = ua.request("INVITE", "sip:bob@lab.test").to_bytes().replace(b"Max-Forwards: 70", b"Max-Forwards: 300")
            ua.send_bytes(broken)
            refused = await ua.final("INVITE")
            assert (refused.status, refused.reason) == (400, "Bad Request - malformed Max-Forwards")

            if transport == "udp":
                ua.send_bytes(b"\x16\x03\x01 definitely not SIP")
            ua.send_bytes(b"\r\n\r\n")  # keep-alive (RFC 5626)
            ua.send(options)  # still alive and answering; a retransmission is answered by its transaction
            assert (await ua.final("OPTIONS", call_id=options.call_id)).status == 200
            stats = node.stats()
            assert stats["malformed_answered"] == 1 and stats["internal_errors"] == 0
            assert stats["requests_received"]["REGISTER"] == 2
            ua.close()

    run(scenario(), loop=loop)


@pytest.mark.parametrize("loop", LOOPS)
def test_call_between_registered_endpoints_udp_to_tcp(loop):
    policy = Recorder()

    async def scenario():
        async with running_node(policy) as node:
            alice = await SipUA.open("alice", ("127.0.0.1", node.port), domain="lab.test")
            bob = await SipUA.open("bob", ("127.0.0.1", node.port), domain="lab.test", transport="tcp")
            assert (await alice.register()).status == 200
            assert (await bob.register()).status == 200
            invite = alice.invite(bob.aor, sdp=SDP_OFFER)
            at_bob = await bob.expect(method="INVITE")
            assert at_bob.uri == bob.contact_uri
            bob.reply(at_bob, 180, to_tag="bt", contact=True)
            await alice.expect(status=180)
            bob.reply(at_bob, 200, to_tag="bt", contact=True, body=SDP_ANSWER, content_type="application/sdp")
            ok = await alice.expect(status=200, cseq_method="INVITE")
            dialog = alice.dialog_from_response(invite, ok)
            alice.ack_2xx(dialog)
            await bob.expect(method="ACK")
            # a re-INVITE (hold) passes the node in-dialog, then BYE
            reinvite = alice.in_dialog(dialog, "INVITE", body=SDP_OFFER, content_type="application/sdp")
            alice.send(reinvite)
            at_bob_re = await bob.expect(method="INVITE", call_id=invite.call_id)
            bob.reply(at_bob_re, 200, to_tag="bt", contact=True, body=SDP_ANSWER, content_type="application/sdp",
                      record_route=False)
            re_ok = await alice.expect(status=200, cseq_method="INVITE")
            assert re_ok.cseq.number == reinvite.cseq.number and re_ok.body == SDP_ANSWER
            alice.ack_2xx(dialog_with_cseq(dialog, reinvite))
            await bob.expect(method="ACK")
            await alice.hang_up(dialog, bob)
            await wait_until(lambda: node.calls() == [], what="empty dialog table")
            alice.close()
            bob.close()
        assert policy.events("ended") == [("ended", invite.call_id, "bye")]
        policy.assert_every_allowed_call_ended_once()

    run(scenario(), loop=loop)


def dialog_with_cseq(dialog, request):
    """The ACK of a re-INVITE carries the re-INVITE's CSeq number (RFC 3261 §13.2.2.4)."""
    from dataclasses import replace

    return replace(dialog, invite=request)


def test_node_close_ends_calls_and_bindings_through_the_policy():
    policy = Recorder()

    async def scenario():
        async with running_node(policy) as node:
            alice = await SipUA.open("alice", ("127.0.0.1", node.port), domain="lab.test")
            bob = await SipUA.open("bob", ("127.0.0.1", node.port), domain="lab.test")
            await alice.register()
            await bob.register()
            invite = alice.invite(bob.aor)
            at_bob = await bob.expect(method="INVITE")
            bob.reply(at_bob, 200, to_tag="bt", contact=True, body=SDP_ANSWER, content_type="application/sdp")
            await alice.expect(status=200, cseq_method="INVITE")
            alice.close()
            bob.close()
            return invite

    invite = run(scenario())
    assert policy.events("ended") == [("ended", invite.call_id, "node shutdown")]
    assert sorted(e[1] for e in policy.events("bindings") if e[2] == ()) == ["sip:alice@lab.test", "sip:bob@lab.test"]


def test_registered_tcp_endpoint_that_went_away_gives_503_quickly():
    """RFC 3261 §16.9: the TCP connect to the contact fails -> 503 at once, not 408 after Timer B."""
    policy = Recorder()

    async def scenario():
        async with running_node(policy, t1=0.5, t2=4.0) as node:
            alice = await SipUA.open("alice", ("127.0.0.1", node.port), domain="lab.test")
            bob = await SipUA.open("bob", ("127.0.0.1", node.port), domain="lab.test", transport="tcp")
            assert (await bob.register()).status == 200
            bob.close()
            await wait_until(lambda: node.stats()["tcp_connections"] == 0, what="bob's connection closed")
            invite = alice.invite(bob.aor)
            final = await alice.final("INVITE", timeout=10)  # Timer B would be 32 s with this T1
            assert final.status == 503
            alice.ack_non2xx(invite, final)
            assert node.calls() == []
            alice.close()
            return invite

    invite = run(scenario(), loop="asyncio")
    assert policy.events("ended") == [("ended", invite.call_id, "unreachable")]


def test_tcp_keepalive_pong_and_lost_framing_closes_only_that_connection():
    async def scenario():
        async with running_node(None) as node:
            reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
            writer.write(b"\r\n\r\n")  # RFC 5626 §3.5.1 ping
            assert await asyncio.wait_for(reader.readexactly(2), 5) == b"\r\n"  # pong
            writer.write(b"OPTIONS sip:x SIP/2.0\r\nContent-Length: many\r\n\r\n")
            assert await asyncio.wait_for(reader.read(), 5) == b""  # framing lost: closed
            writer.close()
            ua = await SipUA.open("probe", ("127.0.0.1", node.port), transport="tcp")
            options = ua.request("OPTIONS", f"sip:127.0.0.1:{node.port}", contact=False)
            ua.send(options)
            assert (await ua.final("OPTIONS")).status == 200
            ua.close()
            assert node.stats()["keepalives"] == 1 and node.stats()["internal_errors"] == 0

    run(scenario(), loop="asyncio")
