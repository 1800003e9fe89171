"""Inline behind a Kamailio that challenges REGISTERs (digest, RFC 3261 §22): the challenge passes
through untouched and the room license the REGISTER reserved is released as soon as the 401 passes,
not when a timer runs out (R9: no license without a binding)."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.integration.peers import MeterProcess, wait_until
from tests.sipclient import SipUA

pytestmark = pytest.mark.integration

ROOM = "Cisco/SX80 TC7.3.21.3a1d8b3"


def room_in_use(node: MeterProcess) -> int:
    return node.api("licenses")["licenses"]["room"]["in_use"]


def test_r9_inline_register_challenged_401_releases_its_reservation_within_a_second(kamailio, tmp_path):
    node = MeterProcess(tmp_path / "auth", sip={"mode": "inline", "upstream": f"127.0.0.1:{kamailio.port}"})
    node.start()

    async def scenario():
        ua = await SipUA.open("auth-room1", ("127.0.0.1", node.sip_port), domain="127.0.0.1")
        try:
            answer = await ua.register(expires=120, extra=[("User-Agent", ROOM)])
            answered_at = time.monotonic()
            assert answer.status == 401 and (answer.header("www-authenticate") or "").startswith("Digest")
            wait_until(lambda: room_in_use(node) == 0 and not node.api("registrations"), 1.0,
                       "the reservation to be released after the 401")
            assert time.monotonic() - answered_at < 1.0
            assert "auth-room1" not in kamailio.contacts()
            # an alias that is allowed in is charged once Kamailio's 200 OK confirms it
            open_ua = await SipUA.open("room2", ("127.0.0.1", node.sip_port), domain="127.0.0.1")
            assert (await open_ua.register(expires=120, extra=[("User-Agent", ROOM)])).status == 200
            wait_until(lambda: room_in_use(node) == 1, 5, "the confirmed registration to be charged")
            assert (await open_ua.register(expires=0, extra=[("User-Agent", ROOM)])).status == 200
            open_ua.close()
        finally:
            ua.close()

    try:
        asyncio.run(scenario())
    finally:
        rc = node.stop()
    assert rc == 0, node.log_tail()
