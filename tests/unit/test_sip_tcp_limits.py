"""meter.sip.transport limits (issue 10 item 4): read timeout for a partial message, per-address
and global connection caps with a rate-limited log line, the cap checked against RLIMIT_NOFILE,
and the TLS names the node writes (RFC 3261 §26, RFC 5630, RFC 5658)."""

from __future__ import annotations

import asyncio
import logging
import resource
from types import SimpleNamespace

import pytest

from meter.codecs.sip import Limits, StreamReader
from meter.codecs.sip_grammar import parse_uri
from meter.sip.descriptors import Budget, connection_budget
from meter.sip.routing import Advertised, LocalAddresses, uri_peer
from meter.sip.settings import SipSettings
from meter.sip.tls import TlsSettings
from meter.sip.transport import Transports

HOST = "127.0.0.1"
OPTIONS = (b"OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:5999;branch=z9hG4bKx\r\n"
           b"From: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:b@127.0.0.1>\r\nCall-ID: c1\r\nCSeq: 1 OPTIONS\r\n"
           b"Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n")


class Received:
    def __init__(self) -> None:
        self.messages = []

    def receive_datagram(self, data, source):
        pass

    def receive_message(self, msg, source):
        self.messages.append((msg, source))

    def receive_error(self, err, source):
        pass

    def transport_failed(self, peer):
        pass


def _transports(loop, **kw) -> Transports:
    stats = SimpleNamespace(internal_errors=0, send_errors=0, keepalives=0)
    args = dict(tcp_idle_timeout=3600.0, tcp_max_connections=100, tcp_max_connections_per_address=32,
                tcp_read_timeout=20.0)
    args.update(kw)
    t = Transports(loop=loop, limits=Limits(), stats=stats, **args)
    t.receiver = Received()
    return t


async def _closed(reader: asyncio.StreamReader, timeout: float) -> bool:
    """True when the node closed the connection (EOF or reset) within ``timeout``."""
    try:
        while True:
            data = await asyncio.wait_for(reader.read(4096), timeout)
            if not data:
                return True
    except asyncio.TimeoutError:  # before OSError: TimeoutError is one
        return False
    except (ConnectionError, OSError):
        return True


async def _until(predicate, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


# -- read timeout (slowloris) ------------------------------------------------------------------------------


def test_stream_reader_reports_a_partial_message_and_none_between_messages():
    r = StreamReader()
    assert r.buffered == 0
    r.feed(OPTIONS[:40])
    assert r.buffered == 40
    assert len(r.feed(OPTIONS[40:])) == 1 and r.buffered == 0
    r.feed(b"\r\n\r\n")  # RFC 5626 keep-alive: no message begun
    assert r.buffered == 0


def test_partial_message_and_silent_connection_closed_after_read_timeout_complete_ones_kept():
    # Issue 10 item 4: a Content-Length larger than what arrives was waited for until the idle timeout.
    async def scenario():
        t = _transports(asyncio.get_running_loop(), tcp_read_timeout=0.4)
        port = await t.start(HOST, 0, udp=False, tcp=True)
        try:
            partial_r, partial_w = await asyncio.open_connection(HOST, port)
            partial_w.write(OPTIONS.replace(b"Content-Length: 0", b"Content-Length: 500") + b"v=0\r\n")
            silent_r, _silent_w = await asyncio.open_connection(HOST, port)
            good_r, good_w = await asyncio.open_connection(HOST, port)
            good_w.write(OPTIONS)
            ping_r, ping_w = await asyncio.open_connection(HOST, port)
            ping_w.write(b"\r\n\r\n")  # RFC 5626 §4.4.1: a flow kept alive, no message begun
            await asyncio.sleep(0.1)
            assert len(t.by_id) == 4
            assert await _closed(partial_r, 3.0) and await _closed(silent_r, 3.0)
            assert not await _closed(good_r, 0.5) and not await _closed(ping_r, 0.1)
            assert len(t.receiver.messages) == 1 and t.read_timeouts == 2
            await _until(lambda: len(t.by_id) == 2)
            for w in (partial_w, good_w, ping_w):
                w.close()
        finally:
            await t.close()

    asyncio.run(scenario())


def test_read_timeout_counts_from_the_first_byte_not_the_last_slowloris():
    # One byte at a time keeps a connection active but never completes a message: it is still closed.
    async def scenario():
        t = _transports(asyncio.get_running_loop(), tcp_read_timeout=0.5)
        port = await t.start(HOST, 0, udp=False, tcp=True)
        try:
            reader, writer = await asyncio.open_connection(HOST, port)
            started = asyncio.get_running_loop().time()
            closed = False
            for byte in OPTIONS[:-4]:
                try:
                    writer.write(bytes([byte]))
                    await writer.drain()
                except (ConnectionError, OSError):
                    closed = True
                    break
                if reader.at_eof():
                    closed = True
                    break
                await asyncio.sleep(0.02)
                if asyncio.get_running_loop().time() - started > 3.0:
                    break
            assert closed or await _closed(reader, 1.0)
            assert t.read_timeouts == 1
        finally:
            await t.close()

    asyncio.run(scenario())


# -- caps ------------------------------------------------------------------------------------------------------


def test_per_address_cap_refuses_the_connection_over_it_and_logs_once(caplog):
    async def scenario():
        t = _transports(asyncio.get_running_loop(), tcp_max_connections_per_address=3)
        port = await t.start(HOST, 0, udp=False, tcp=True)
        try:
            kept = [await asyncio.open_connection(HOST, port) for _ in range(3)]
            await _until(lambda: len(t.by_id) == 3)
            over = [await asyncio.open_connection(HOST, port) for _ in range(4)]
            for reader, _ in over:
                assert await _closed(reader, 2.0)
            assert not await _closed(kept[0][0], 0.2)
            assert t.refused["per_address"] == 4 and len(t.by_id) == 3
            # A slot freed is a slot for the next connection.
            kept[0][1].close()
            await _until(lambda: len(t.by_id) == 2)
            again = await asyncio.open_connection(HOST, port)
            await _until(lambda: len(t.by_id) == 3)
            assert not await _closed(again[0], 0.2)
        finally:
            await t.close()

    with caplog.at_level(logging.WARNING, logger="meter.sip.transport"):
        asyncio.run(scenario())
    refusals = [r for r in caplog.records if r.getMessage() == "sip.tcp.refused"]
    assert len(refusals) == 1  # four refusals within 5 s: one line
    assert refusals[0].facts["cap"] == "per_address" and refusals[0].facts["limit"] == 3
    assert refusals[0].facts["source"] == HOST


def test_global_cap_refuses_inbound_and_outbound_connections_beyond_it():
    async def scenario():
        t = _transports(asyncio.get_running_loop(), tcp_max_connections=2)
        port = await t.start(HOST, 0, udp=False, tcp=True)
        try:
            kept = [await asyncio.open_connection(HOST, port) for _ in range(2)]
            await _until(lambda: len(t.by_id) == 2)
            reader, _ = await asyncio.open_connection(HOST, port)
            assert await _closed(reader, 2.0)
            assert t.refused["global"] == 1
            from meter.sip.peer import Peer

            t.send(b"OPTIONS", Peer("tcp", HOST, 1))  # no descriptor for an outbound connection either
            assert t.refused["global"] == 2 and t.stats.send_errors == 1
            assert kept
        finally:
            await t.close()

    asyncio.run(scenario())


def test_connection_cap_lowered_to_the_descriptor_limit_less_the_reserve():
    budget = connection_budget(10000, 256, getrlimit=lambda _: (1024, 1024), setrlimit=lambda *a: None)
    assert budget.connections == 1024 - 256 and budget.limit == 1024


def test_soft_descriptor_limit_raised_towards_the_hard_one_as_far_as_needed():
    calls = []
    budget = connection_budget(10000, 256, getrlimit=lambda _: (1024, 524288),
                               setrlimit=lambda res, lim: calls.append(lim))
    assert calls == [(10256, 524288)] and budget.connections == 10000 and budget.limit == 10256


def test_descriptor_limit_that_cannot_be_raised_keeps_the_soft_one():
    def refuse(*_):
        raise ValueError("not allowed")

    budget = connection_budget(10000, 256, getrlimit=lambda _: (1024, 4096), setrlimit=refuse)
    assert budget == (768, 1024)


def test_the_node_logs_the_lowered_cap_naming_both(caplog, monkeypatch):
    from meter.sip import node as node_module

    monkeypatch.setattr(node_module, "connection_budget", lambda requested, reserve: Budget(700, 956))

    async def scenario():
        n = node_module.SipNode(SipSettings(host=HOST, port=0, udp=False))
        await n.start()
        try:
            assert n._transports._max_conns == 700
        finally:
            await n.close()

    with caplog.at_level(logging.WARNING, logger="meter.sip"):
        asyncio.run(scenario())
    line = next(r for r in caplog.records if r.getMessage() == "sip.tcp.max_connections_lowered")
    assert line.facts["configured"] == 10000 and line.facts["allowed"] == 700 and line.facts["nofile_limit"] == 956


def test_the_real_process_limit_is_respected():
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    budget = connection_budget(10 ** 9, 256)
    assert budget.connections <= max(1, budget.limit - 256) and budget.limit >= soft


def test_settings_reject_nonsense_caps_and_timeouts():
    with pytest.raises(ValueError):
        SipSettings(tcp_max_connections_per_address=0)
    with pytest.raises(ValueError):
        SipSettings(tcp_read_timeout=0)
    with pytest.raises(ValueError):
        SipSettings(fd_reserve=-1)


# -- TLS names (RFC 3261 §26, RFC 5630, RFC 5658) ---------------------------------------------------------


def test_via_and_record_route_name_the_tls_listener_for_tls_rfc3261_26():
    adv = Advertised("192.0.2.1", 5060, 5061)
    assert adv.via("tls", "z9hG4bKa") == "SIP/2.0/TLS 192.0.2.1:5061;branch=z9hG4bKa;rport;alias"  # RFC 5923 §5
    assert adv.via("udp", "z9hG4bKa").startswith("SIP/2.0/UDP 192.0.2.1:5060;")
    assert adv.route_uri("tls") == "<sip:192.0.2.1:5061;transport=tls;lr>"
    assert adv.route_uri("tcp") == "<sip:192.0.2.1:5060;transport=tcp;lr>"
    assert adv.hostport == "192.0.2.1:5060"


def test_sips_uri_without_transport_is_reached_over_tls_on_5061_rfc5630():
    assert uri_peer(parse_uri("sips:bob@192.0.2.9")) == uri_peer(parse_uri("sip:bob@192.0.2.9;transport=tls"))
    assert uri_peer(parse_uri("sips:bob@192.0.2.9")).port == 5061
    local = LocalAddresses(5060, ["192.0.2.1", "192.0.2.1:5061"])
    assert local.uri(parse_uri("sips:192.0.2.1")) and local.uri(parse_uri("sip:192.0.2.1;transport=tls"))


def test_tls_settings_need_certificate_and_key_when_enabled_and_ca_for_client_certs(tmp_path):
    with pytest.raises(ValueError, match="certificate"):
        TlsSettings(enabled=True)
    with pytest.raises(ValueError, match="ca"):
        TlsSettings(require_client_certificate=True)
    with pytest.raises(ValueError, match="no such file"):
        TlsSettings(enabled=True, certificate=str(tmp_path / "none.pem"), key=str(tmp_path / "none.key"))
    assert not TlsSettings().enabled


def test_a_tls_upstream_without_a_tls_section_stops_start_up():
    from meter.config import ConfigError, parse

    with pytest.raises(ConfigError, match=r"\[sip\] upstream_transport"):
        parse('[sip]\nmode = "inline"\nupstream = "127.0.0.1:5070"\nupstream_transport = "tls"\n')
