"""meter.gc_timer: the node makes no cyclic garbage per message, so Python's automatic full
collections (a stop of tens of milliseconds under load, measured in BENCHMARKS.md) are replaced by
one on a timer. These tests hold the assumption and the mechanism."""

from __future__ import annotations

import asyncio
import gc

import pytest

from bench import hotpath
from meter.gc_timer import FullCollections


@pytest.mark.parametrize("flow", ["register", "refresh", "inline", "call"])
def test_handling_sip_messages_leaves_no_cyclic_garbage(flow):
    # If this fails, some object on the hot path now points back at itself: without automatic full
    # collections it would pile up until the timer's pass. Break the cycle (or weakref it).
    async def scenario():
        gc.collect()
        gc.disable()
        try:
            await hotpath.measure(flow, 200)
            return gc.collect()
        finally:
            gc.enable()

    assert asyncio.run(scenario()) == 0


@pytest.mark.parametrize("datagram", [
    b"OPTIONSsip:x SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.4;branch=z9hG4bK1\r\nCall-ID: a\r\nCSeq: 1 OPTIONS\r\n\r\n",
    b"INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.4;branch=z9hG4bK2\r\nCall-ID: a\r\nCSeq: 1 BYE\r\n"
    b"From: <sip:a@b>;tag=1\r\nTo: <sip:a@b>\r\n\r\n",
    b"\x00 not sip at all",
], ids=["broken-request-line", "cseq-mismatch", "garbage"])
def test_malformed_messages_leave_no_cyclic_garbage_either(datagram):
    # A flood of broken requests must not pile up until the timer's pass (the error once held
    # itself through its traceback in codecs.sip.parse).
    async def scenario():
        h = hotpath.Harness("standalone")
        gc.collect()
        gc.disable()
        try:
            for port in range(4000, 4100):
                h.feed(datagram, ("127.0.0.1", port))
            return gc.collect()
        finally:
            gc.enable()

    assert asyncio.run(scenario()) == 0


def test_full_collections_run_on_the_timer_and_close_restores_python_s_schedule():
    before = gc.get_threshold()

    async def scenario():
        collections = FullCollections(asyncio.get_running_loop(), 0.05)
        collections.start()
        try:
            assert gc.get_threshold()[:2] == before[:2] and gc.get_threshold()[2] >= 2**30
            assert gc.get_freeze_count() > 0  # start-up objects are out of every pass
            await asyncio.sleep(0.3)
            assert collections.runs >= 2 and collections.last_pause > 0
        finally:
            collections.close()
        return collections

    collections = asyncio.run(scenario())
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
    runs = collections.runs
    asyncio.run(asyncio.sleep(0.1))
    assert collections.runs == runs  # closed: no more passes


def test_interval_zero_keeps_python_s_own_schedule():
    before = gc.get_threshold()

    async def scenario():
        collections = FullCollections(asyncio.get_running_loop(), 0)
        collections.start()
        assert gc.get_threshold() == before
        collections.close()

    asyncio.run(scenario())


def test_ras_registrations_and_garbage_datagrams_leave_no_cyclic_garbage():
    # The same assumption for H.225.0 RAS through pycrate: R4 registrations and undecodable bytes.
    import random

    from tests.rasclient import RecordingHooks, standalone_net

    net, gk = standalone_net(RecordingHooks())
    endpoints = [net.endpoint(6000 + i, [("h323-ID", f"u{i}"), ("dialledDigits", str(1000 + i))]) for i in range(40)]
    net.register(endpoints[0])  # pycrate's first use builds its tables: not per-message garbage
    gk.receive(b"\x00" * 5, ("127.0.0.1", 1), 1000.0)
    noise = random.Random(1)
    gc.collect()
    gc.disable()
    try:
        for endpoint in endpoints[1:]:
            assert net.register(endpoint).short == "RCF"
        for _ in range(100):
            gk.receive(bytes(noise.getrandbits(8) for _ in range(noise.randint(1, 60))), ("127.0.0.1", 7000), 1000.0)
        assert gc.collect() == 0
    finally:
        gc.enable()
