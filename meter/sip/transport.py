"""UDP and TCP for the SIP core: thin asyncio callbacks, no task per packet (uvicorn style).

UDP: one ``DatagramProtocol``, one message per datagram (RFC 3261 §18.3). TCP: one ``Protocol``
per connection framing by Content-Length with the codec's ``StreamReader``; connections are
indexed by id and by (transport, host, port) so responses and later requests reuse them (RFC 3261
§18.2.2, RFC 5923). Outbound connections are opened on demand (one task per connection attempt,
not per message) and what was sent meanwhile is queued.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
from typing import Protocol

from meter.codecs.sip import Limits, SIPError, StreamReader
from meter.sockets import enlarge_receive_buffer
from meter.sip.peer import Peer
from meter.sip.routing import is_ip

log = logging.getLogger("meter.sip.transport")

# A TCP handshake on a LAN takes milliseconds; 5 s covers SYN retransmissions on a lossy path
# (RFC 6298 initial RTO 1 s) and still fails well before Timer B/F (64*T1 = 32 s).
TCP_CONNECT_TIMEOUT = 5.0
# Messages queued for one connection still being opened; beyond this the oldest are the peer's problem
# (they would be retransmitted by the transaction layer anyway over UDP; TCP has no retransmission).
MAX_PENDING_PER_CONNECTION = 256
# Resolved names are kept this long: a lab's names rarely move, and a minute bounds staleness.
DNS_CACHE_SECONDS = 60.0

# A connection's address key: (transport, host, port). The transport is part of it so a TCP and a
# TLS connection to one address never take each other's place: what must go over TLS never
# leaves over plain TCP, and closing one never unindexes the other.
ConnectionKey = tuple[str, str, int]


def connection_key(peer: Peer) -> ConnectionKey:
    return peer.transport, peer.host, peer.port


class Receiver(Protocol):
    def receive_datagram(self, data: bytes, source: Peer) -> None: ...

    def receive_message(self, msg, source: Peer) -> None: ...

    def receive_error(self, err: SIPError, source: Peer) -> None: ...

    def transport_failed(self, peer: Peer) -> None: ...


class _Stats(Protocol):
    internal_errors: int
    send_errors: int
    keepalives: int


class UdpEndpoint(asyncio.DatagramProtocol):
    def __init__(self, transports: "Transports") -> None:
        self._t = transports
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        receiver = self._t.receiver
        if receiver is None:
            return
        try:
            receiver.receive_datagram(data, Peer("udp", addr[0], addr[1]))
        except Exception:  # the core guards itself; this is the last line of defence
            self._t.stats_error()
            log.exception("sip.udp.callback_error")

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and friends, reported on a later call: count, never raise.
        self._t.send_error()


class TcpConnection(asyncio.Protocol):
    def __init__(self, transports: "Transports", target: ConnectionKey | None = None) -> None:
        self._t = transports
        self.id = next(transports.ids)
        self.target = target  # the key we dialled, for outbound connections
        self.transport: asyncio.Transport | None = None
        self.peer = Peer("tcp", "", 0, self.id)
        self.remote: ConnectionKey = connection_key(self.peer)
        self.reader = StreamReader(transports.limits)
        self.last_active = transports.loop.time()
        self._pings = 0

    def connection_made(self, transport) -> None:
        self.transport = transport
        addr = transport.get_extra_info("peername") or ("", 0)
        self.peer = Peer("tcp", addr[0], addr[1], self.id)
        self.remote = connection_key(self.peer)
        if not self._t.register(self):
            transport.abort()

    def data_received(self, data: bytes) -> None:
        self.last_active = self._t.loop.time()
        receiver = self._t.receiver
        if receiver is None:
            return
        chunk = data
        try:
            while True:
                try:
                    messages = self.reader.feed(chunk)
                except SIPError as err:
                    receiver.receive_error(err, self.peer)
                    if err.fatal:  # framing lost: nothing after this point can be trusted
                        self.transport.close()
                        return
                    chunk = b""
                    continue
                for msg in messages:
                    receiver.receive_message(msg, self.peer)
                break
            if self.reader.pings != self._pings:
                # RFC 5626 §4.4.1: answer each CRLFCRLF ping with a CRLF pong.
                self.transport.write(b"\r\n" * (self.reader.pings - self._pings))
                self._t.keepalive(self.reader.pings - self._pings)
                self._pings = self.reader.pings
        except Exception:
            self._t.stats_error()
            log.exception("sip.tcp.callback_error")

    def connection_lost(self, exc) -> None:
        self._t.unregister(self)

    def write(self, data: bytes) -> None:
        self.last_active = self._t.loop.time()
        self.transport.write(data)


class Transports:
    """The node's sockets; ``send(data, peer)`` is what the core calls."""

    def __init__(self, *, loop, limits: Limits, stats: _Stats, tcp_idle_timeout: float, tcp_max_connections: int):
        self.loop = loop
        self.limits = limits
        self.stats = stats
        self.receiver: Receiver | None = None
        self.ids = itertools.count(1)
        self.udp: asyncio.DatagramTransport | None = None
        self.tcp_server: asyncio.AbstractServer | None = None
        self.by_id: dict[int, TcpConnection] = {}
        self.by_addr: dict[ConnectionKey, TcpConnection] = {}
        self._connecting: dict[ConnectionKey, list[bytes]] = {}
        self._dns: dict[str, tuple[str, float]] = {}
        self._resolving: dict[str, list[tuple[bytes, Peer]]] = {}
        self._tasks: set[asyncio.Task] = set()
        self._idle = tcp_idle_timeout
        self._max_conns = tcp_max_connections
        self._sweep_handle = None
        self.port = 0

    # -- binding -------------------------------------------------------------------------------------

    async def start(self, host: str, port: int, *, udp: bool, tcp: bool) -> int:
        """Bind UDP and TCP on the same port (port 0: a free one, tried until both sides get it)."""
        for attempt in range(20):
            bound = port
            try:
                if udp:
                    self.udp, _ = await self.loop.create_datagram_endpoint(
                        lambda: UdpEndpoint(self), local_addr=(host, bound))
                    bound = self.udp.get_extra_info("sockname")[1]
                    enlarge_receive_buffer(self.udp)
                if tcp:
                    self.tcp_server = await self.loop.create_server(
                        lambda: TcpConnection(self), host, bound, reuse_address=True)
                    bound = self.tcp_server.sockets[0].getsockname()[1]
            except OSError:
                await self._unbind()
                if port != 0 or attempt == 19:
                    raise
                continue
            self.port = bound
            self._schedule_sweep()
            return bound
        raise OSError("could not bind UDP and TCP on one free port")  # pragma: no cover

    async def _unbind(self) -> None:
        if self.udp is not None:
            self.udp.close()
            self.udp = None
        if self.tcp_server is not None:
            self.tcp_server.close()
            await self.tcp_server.wait_closed()
            self.tcp_server = None

    async def close(self) -> None:
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
        for task in list(self._tasks):
            task.cancel()
        for conn in list(self.by_id.values()):
            if conn.transport is not None:
                conn.transport.abort()
        self.by_id.clear()
        self.by_addr.clear()
        if self.tcp_server is not None:
            self.tcp_server.close()
        if self.udp is not None:
            self.udp.close()
            self.udp = None
        if self.tcp_server is not None:
            await self.tcp_server.wait_closed()
            self.tcp_server = None

    # -- sending -------------------------------------------------------------------------------------

    def send(self, data: bytes, peer: Peer) -> None:
        if not is_ip(peer.host):
            self._send_by_name(data, peer)
            return
        if peer.transport == "udp":
            if self.udp is None:
                self.send_error()
                return
            self.udp.sendto(data, (peer.host, peer.port))
            return
        if peer.transport != "tcp":
            self.send_error()  # TLS/SCTP/WS are not offered by this node
            return
        conn = self.by_id.get(peer.conn) if peer.conn is not None else None
        if conn is None:
            conn = self.by_addr.get(connection_key(peer))
        if conn is not None and conn.transport is not None and not conn.transport.is_closing():
            conn.write(data)
            return
        self._connect_and_send(connection_key(peer), data)

    def _connect_and_send(self, key: ConnectionKey, data: bytes) -> None:
        queue = self._connecting.get(key)
        if queue is not None:
            if len(queue) < MAX_PENDING_PER_CONNECTION:
                queue.append(data)
            else:
                self.send_error()
            return
        if len(self.by_id) >= self._max_conns:
            self.send_error()
            return
        self._connecting[key] = [data]
        self._spawn(self._connect(key))

    async def _connect(self, key: ConnectionKey) -> None:
        transport, host, port = key
        try:
            _, conn = await asyncio.wait_for(
                self.loop.create_connection(lambda: TcpConnection(self, key), host, port),
                TCP_CONNECT_TIMEOUT)
        except (OSError, asyncio.TimeoutError) as exc:
            dropped = self._connecting.pop(key, [])
            self.stats.send_errors += len(dropped)
            log.info("sip.tcp.connect_failed", extra={"facts": {"peer": f"{host}:{port}", "error": str(exc)}})
            self._unreachable(Peer(transport, host, port))
            return
        for data in self._connecting.pop(key, []):
            conn.write(data)

    def _send_by_name(self, data: bytes, peer: Peer) -> None:
        cached = self._dns.get(peer.host)
        if cached is not None and cached[1] > self.loop.time():
            self.send(data, Peer(peer.transport, cached[0], peer.port, peer.conn))
            return
        waiting = self._resolving.get(peer.host)
        if waiting is not None:
            waiting.append((data, peer))
            return
        self._resolving[peer.host] = [(data, peer)]
        self._spawn(self._resolve(peer.host))

    async def _resolve(self, name: str) -> None:
        try:
            infos = await self.loop.getaddrinfo(name, None, family=socket.AF_INET, type=socket.SOCK_DGRAM)
            address = infos[0][4][0]
        except (OSError, IndexError) as exc:
            dropped = self._resolving.pop(name, [])
            self.stats.send_errors += len(dropped)
            log.info("sip.dns.failed", extra={"facts": {"name": name, "error": str(exc)}})
            for peer in {p for _, p in dropped}:
                self._unreachable(peer)
            return
        self._dns[name] = (address, self.loop.time() + DNS_CACHE_SECONDS)
        for data, peer in self._resolving.pop(name, []):
            self.send(data, Peer(peer.transport, address, peer.port, peer.conn))

    def _unreachable(self, peer: Peer) -> None:
        receiver = self.receiver
        if receiver is None:
            return
        try:
            receiver.transport_failed(peer)
        except Exception:
            self.stats_error()
            log.exception("sip.transport_failed.callback_error")

    def _spawn(self, coro) -> None:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- connection table ------------------------------------------------------------------------------

    def register(self, conn: TcpConnection) -> bool:
        if len(self.by_id) >= self._max_conns:
            self.send_error()
            return False
        self.by_id[conn.id] = conn
        self.by_addr[conn.remote] = conn
        if conn.target is not None and conn.target != conn.remote:
            self.by_addr[conn.target] = conn
        return True

    def unregister(self, conn: TcpConnection) -> None:
        self.by_id.pop(conn.id, None)
        for key in (conn.remote, conn.target):
            if key is not None and self.by_addr.get(key) is conn:
                del self.by_addr[key]

    def _schedule_sweep(self) -> None:
        self._sweep_handle = self.loop.call_later(min(self._idle / 2, 30.0), self._sweep)

    def _sweep(self) -> None:
        self._schedule_sweep()
        limit = self.loop.time() - self._idle
        for conn in list(self.by_id.values()):
            if conn.last_active < limit and conn.transport is not None:
                conn.transport.close()

    # -- stats -----------------------------------------------------------------------------------------

    def send_error(self) -> None:
        self.stats.send_errors += 1

    def stats_error(self) -> None:
        self.stats.internal_errors += 1

    def keepalive(self, n: int) -> None:
        self.stats.keepalives += n
