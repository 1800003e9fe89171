"""Over real sockets: RFC 4028 session timers at the node (422, the interval it inserts, a session
that runs out ended with a BYE each way), a 2xx arriving after the node's own 408 (metered again),
and, inline behind a real Kamailio, the node's BYEs following the route set through it."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from tests.integration.conftest import run, running_node
from tests.integration.peers import async_wait_until as wait_until
from tests.sipclient import SDP_ANSWER, SDP_OFFER, Recorder, SipUA

pytestmark = pytest.mark.integration

_ids = itertools.count(1)


async def open_uas(node, *specs):
    n = next(_ids)
    return [await SipUA.open(f"{user}{n}", ("127.0.0.1", node.port), domain="lab.test", transport=transport)
            for user, transport in specs]


async def expired_call(node, alice: SipUA, bob: SipUA, policy: Recorder, *, bob_se: str, vias: int) -> None:
    """alice calls bob, who answers with ``bob_se``; nobody refreshes: the node must end the call
    (RFC 4028 §10) with a BYE to each (that arrives with ``vias`` Via entries), answered 200, and
    tell the policy once."""
    invite = alice.request("INVITE", bob.aor, body=SDP_OFFER, content_type="application/sdp",
                           headers=[("Supported", "timer")])
    alice.send(invite)
    at_bob = await bob.expect(method="INVITE", call_id=invite.call_id)
    assert at_bob.header("session-expires") == "1800"  # RFC 4028 §8.1: the node's interval
    bob.reply(at_bob, 200, to_tag="bt", contact=True, body=SDP_ANSWER, content_type="application/sdp",
              headers=[("Session-Expires", bob_se)])
    ok = await alice.expect(status=200, cseq_method="INVITE")
    assert ok.header("session-expires") == bob_se  # RFC 4028 §8.2: not modified
    alice.ack_2xx(alice.dialog_from_response(invite, ok))
    await bob.expect(method="ACK")
    for ua, tag in ((bob, alice.tag), (alice, "bt")):
        bye = await ua.expect(method="BYE", call_id=invite.call_id, timeout=15)
        assert bye.from_.tag == tag and "Session expired" in bye.header("reason") and len(bye.vias) == vias
        ua.reply(bye, 200, record_route=False)
    await wait_until(lambda: node.calls() == [], 10, what="empty dialog table")
    await asyncio.sleep(0.3)  # the 200s reach the node's BYE transactions, nothing goes further
    assert [m for m in alice.inbox + bob.inbox if m.call_id == invite.call_id and m.cseq.method == "BYE"] == []
    assert policy.events("ended") == [("ended", invite.call_id, "session expired")]
    assert node.stats()["sessions_expired"] == 1 and node.stats()["internal_errors"] == 0
    policy.assert_every_allowed_call_ended_once()


def test_unrefreshed_session_is_ended_with_a_bye_to_each_side_udp_caller_tcp_callee():
    policy = Recorder()

    async def scenario():
        async with running_node(policy) as node:
            alice, bob = await open_uas(node, ("alice", "udp"), ("bob", "tcp"))
            assert (await bob.register()).status == 200
            # RFC 4028 §6: a timer-aware caller asking for less than the node's Min-SE gets 422
            brief = alice.request("INVITE", bob.aor, headers=[("Session-Expires", "30"), ("Supported", "timer")])
            alice.send(brief)
            refused = await alice.final("INVITE", call_id=brief.call_id)
            assert (refused.status, refused.header("min-se")) == (422, "90")
            alice.ack_non2xx(brief, refused)
            # bob's 2xx settles a 2 s interval (the node trusts the 2xx, §8.2) that nobody refreshes
            await expired_call(node, alice, bob, policy, bob_se="2;refresher=uac", vias=1)
            alice.close()
            bob.close()

    run(scenario())


def test_late_200_after_the_nodes_408_is_forwarded_and_metered_again():
    """Timer B (64*T1 = 3.2 s here) gives alice a 408; bob's 200 comes later all the same. The node
    forwards it (RFC 3261 §16.7 step 5) and asks the policy again: the call is metered while up."""
    policy = Recorder()

    async def scenario():
        async with running_node(policy, t1=0.05, t2=0.2) as node:
            alice, bob = await open_uas(node, ("alice", "udp"), ("bob", "udp"))
            assert (await bob.register()).status == 200
            invite = alice.invite(bob.aor)
            at_bob = await bob.expect(method="INVITE", call_id=invite.call_id)
            timeout = await alice.final("INVITE", timeout=15, call_id=invite.call_id)
            assert timeout.status == 408
            alice.ack_non2xx(invite, timeout)
            assert policy.events("ended") == [("ended", invite.call_id, "timeout")]
            bob.reply(at_bob, 200, to_tag="bt", contact=True, body=SDP_ANSWER, content_type="application/sdp")
            ok = await alice.expect(status=200, cseq_method="INVITE", call_id=invite.call_id)
            dialog = alice.dialog_from_response(invite, ok)
            alice.ack_2xx(dialog)
            await bob.expect(method="ACK")
            await wait_until(lambda: node.calls() and node.calls()[0]["state"] == "confirmed", 10, what="confirmed")
            alice.send(alice.in_dialog(dialog, "BYE"))
            bye = await bob.expect(method="BYE")
            bob.reply(bye, 200, record_route=False)
            assert (await alice.final("BYE")).status == 200
            await wait_until(lambda: node.calls() == [], 10, what="empty dialog table")
            assert node.stats()["late_answers"] == 1
            alice.close()
            bob.close()
            return invite

    invite = run(scenario())
    assert [e[2] for e in policy.events("ended")] == ["timeout", "bye"]
    assert [e[0] for e in policy.log if e[1] == invite.call_id] == [
        "invite", "ended", "invite", "answered", "confirmed", "ended"]
    policy.assert_every_allowed_call_ended_once()


def test_session_expiry_byes_pass_kamailio_along_the_route_set(kamailio):
    """Inline: Record-Route is [node, Kamailio, node]. The node's BYEs go through Kamailio (which
    loose-routes them back to the node) to both ends, as the ends' own BYEs would."""
    policy = Recorder()

    async def scenario():
        async with running_node(policy, mode="inline", upstream=f"127.0.0.1:{kamailio.port}") as node:
            alice, bob = await open_uas(node, ("alice", "udp"), ("bob", "udp"))
            assert (await alice.register()).status == 200
            assert (await bob.register()).status == 200
            # node -> Kamailio -> node -> end: three Vias on each BYE
            await expired_call(node, alice, bob, policy, bob_se="2;refresher=uas", vias=3)
            alice.close()
            bob.close()

    run(scenario())
