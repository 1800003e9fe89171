"""meter.sip.transport: connections are indexed by (transport, host, port), so a TCP and a TLS
connection to one address never take each other's place."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from meter.codecs.sip import Limits
from meter.sip.peer import Peer
from meter.sip.transport import TcpConnection, Transports, connection_key

HOST, PORT = "127.0.0.1", 5061


class FakeTransport:
    """The asyncio.Transport side of one connection: records what is written to it."""

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return False


def _transports(loop) -> Transports:
    stats = SimpleNamespace(internal_errors=0, send_errors=0, keepalives=0)
    return Transports(loop=loop, limits=Limits(), stats=stats, tcp_idle_timeout=60.0, tcp_max_connections=8)


def _connection(transports: Transports, transport: str) -> TcpConnection:
    # TLS arrives in a later issue: its connection is stood in for by one whose key says "tls".
    conn = TcpConnection(transports)
    conn.transport = FakeTransport()
    conn.remote = (transport, HOST, PORT)
    return conn


def test_one_address_under_two_transports_keeps_two_entries():
    loop = asyncio.new_event_loop()
    try:
        transports = _transports(loop)
        tcp, tls = _connection(transports, "tcp"), _connection(transports, "tls")
        assert transports.register(tcp) and transports.register(tls)
        assert transports.by_addr[("tcp", HOST, PORT)] is tcp
        assert transports.by_addr[("tls", HOST, PORT)] is tls

        # A TCP send to that address takes the TCP connection, never the TLS one.
        transports.send(b"OPTIONS", Peer("tcp", HOST, PORT))
        assert tcp.transport.written == [b"OPTIONS"] and tls.transport.written == []

        # Closing one leaves the other indexed.
        transports.unregister(tls)
        assert transports.by_addr == {("tcp", HOST, PORT): tcp}
    finally:
        loop.close()


def test_a_dialled_connection_is_keyed_by_transport_host_and_port():
    # Over loopback: the node dials itself over TCP; the outbound connection is found under its
    # ("tcp", host, port) key, the inbound side under the dialler's own address.
    async def scenario():
        transports = _transports(asyncio.get_running_loop())
        port = await transports.start(HOST, 0, udp=False, tcp=True)
        try:
            target = Peer("tcp", HOST, port)
            transports.send(b"\r\n\r\n", target)
            for _ in range(100):
                if len(transports.by_id) == 2:
                    break
                await asyncio.sleep(0.01)
            outbound = transports.by_addr[connection_key(target)]
            assert outbound.target == ("tcp", HOST, port)
            assert all(key[0] == "tcp" for key in transports.by_addr)
            return len(transports.by_id)
        finally:
            await transports.close()

    assert asyncio.run(scenario()) == 2
