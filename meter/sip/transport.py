"""UDP, TCP and TLS for the SIP core: thin asyncio callbacks, no task per packet (uvicorn style).

UDP: one ``DatagramProtocol``, one message per datagram (RFC 3261 §18.3). TCP and TLS (RFC 3261
§26.2.1: TLS is TCP with ``ssl`` underneath, same framing): one ``Protocol`` per connection framing
by Content-Length with the codec's ``StreamReader``; connections are indexed by id and by
(transport, host, port) so responses and later requests reuse them (RFC 3261 §18.2.2, RFC 5923).
Outbound connections are opened on demand (one task per connection attempt, not per message) and
what was sent meanwhile is queued.

Connections are bounded so that no peer can hold the node's descriptors: a global cap (kept under
RLIMIT_NOFILE by ``meter.sip.descriptors``), a cap per source address, a read timeout for a
message begun and never finished (slowloris), and the idle timeout. A refusal by a cap is logged,
at most once per cap every few seconds.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import ssl
from collections import Counter
from typing import Protocol

from meter.codecs.sip import Limits, SIPError, StreamReader
from meter.logs import log_event
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
# At most one log line per cap this often: a flood of refused connections must not flood the log.
REFUSAL_LOG_SECONDS = 5.0

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
    """One stream connection, TCP or TLS (``kind``); the ssl layer below is asyncio's."""

    def __init__(self, transports: "Transports", target: ConnectionKey | None = None, kind: str = "tcp",
                 handshaking: bool = False) -> None:
        self._t = transports
        # Accepted over TLS and counted by the caps as a handshake in progress until connection_made.
        self.handshaking = handshaking
        self.id = next(transports.ids)
        self.kind = kind
        self.target = target  # the key we dialled, for outbound connections
        self.transport: asyncio.Transport | None = None
        self.peer = Peer(kind, "", 0, self.id)
        self.remote: ConnectionKey = connection_key(self.peer)
        self.reader = StreamReader(transports.limits)
        self.last_active = transports.loop.time()
        # When the message being read began; an accepted connection starts "partial" until its
        # first message (a silent connection is slowloris too). None: between messages.
        self.partial_since: float | None = None if target is not None else self.last_active
        self.registered = False
        self._pings = 0

    @property
    def inbound(self) -> bool:
        return self.target is None

    def connection_made(self, transport) -> None:
        self.transport = transport
        addr = transport.get_extra_info("peername") or ("", 0)
        self.peer = Peer(self.kind, addr[0], addr[1], self.id)
        self.remote = connection_key(self.peer)
        if self.handshaking:  # the handshake's place in the caps becomes the connection's
            self.handshaking = False
            self._t.handshake_ended(self.remote[1])
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
            if self.reader.buffered:
                if self.partial_since is None:
                    self.partial_since = self.last_active
            else:
                self.partial_since = None
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

    def __init__(self, *, loop, limits: Limits, stats: _Stats, tcp_idle_timeout: float, tcp_max_connections: int,
                 tcp_max_connections_per_address: int = 32, tcp_read_timeout: float = 20.0,
                 tls_client: ssl.SSLContext | None = None, tls_handshake_timeout: float = 10.0):
        self.loop = loop
        self.limits = limits
        self.stats = stats
        self.receiver: Receiver | None = None
        self.ids = itertools.count(1)
        self.udp: asyncio.DatagramTransport | None = None
        # With several workers (meter.workers): the port all of them share (SO_REUSEPORT), which
        # receives initial requests and sends the answers to them; ``udp`` is then this worker's
        # own port, named in its Via and Record-Route, from which it sends its requests.
        self.shared_udp: asyncio.DatagramTransport | None = None
        self.tcp_server: asyncio.AbstractServer | None = None
        self.by_id: dict[int, TcpConnection] = {}
        self.by_addr: dict[ConnectionKey, TcpConnection] = {}
        self._connecting: dict[ConnectionKey, list[bytes]] = {}
        self._dns: dict[str, tuple[str, float]] = {}
        self._resolving: dict[str, list[tuple[bytes, Peer]]] = {}
        self._tasks: set[asyncio.Task] = set()
        self._idle = tcp_idle_timeout
        self._read_timeout = tcp_read_timeout
        self._max_conns = tcp_max_connections
        self._max_per_address = tcp_max_connections_per_address
        self._inbound_by_host: Counter[str] = Counter()
        self._tls_client = tls_client
        self._handshake_timeout = tls_handshake_timeout
        self._tls_listener: socket.socket | None = None
        self._tls_accepting: asyncio.Task | None = None
        # TLS handshakes in progress, counted by the caps from accept: each holds a descriptor.
        self._handshakes = 0
        self._handshaking_by_host: Counter[str] = Counter()
        # Connections refused, by cap ("global", "per_address"), and what the log has not told yet.
        self.refused: Counter[str] = Counter()
        self._unlogged: Counter[str] = Counter()
        self._logged_at: dict[str, float] = {}
        self.read_timeouts = 0
        self._sweep_handle = None
        self.port = 0
        self.tls_port = 0

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

    async def start_worker(self, host: str, shared_port: int) -> tuple[int, int]:
        """UDP for one of several workers: join the group on ``shared_port`` (0: a free one, which
        the other workers then join) and bind this worker's own port. Returns (shared, own)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            # Linux hashes each datagram's 4-tuple to one socket of the group: a source stays
            # with one worker for as long as the group is unchanged.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, shared_port))
        except OSError:
            sock.close()
            raise
        self.shared_udp, _ = await self.loop.create_datagram_endpoint(lambda: UdpEndpoint(self), sock=sock)
        enlarge_receive_buffer(self.shared_udp)
        try:
            own = await self.start(host, 0, udp=True, tcp=False)
        except OSError:
            self.shared_udp.close()
            self.shared_udp = None
            raise
        return sock.getsockname()[1], own

    async def start_tls(self, host: str, port: int, context: ssl.SSLContext) -> int:
        """The TLS listener (RFC 3261 §26.2.1). The node accepts itself, so that the caps count a
        connection from accept, its handshake included (a handshake holds a descriptor too); a
        handshake longer than its timeout is dropped."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listener = socket.create_server((host, port), family=family, backlog=511)
        listener.setblocking(False)
        self._tls_listener = listener
        self.tls_port = listener.getsockname()[1]
        self._tls_accepting = self.loop.create_task(self._accept_tls(listener, context))
        if self._sweep_handle is None:
            self._schedule_sweep()
        return self.tls_port

    async def _accept_tls(self, listener: socket.socket, context: ssl.SSLContext) -> None:
        while True:
            try:
                sock, addr = await self.loop.sock_accept(listener)
            except OSError as exc:  # EMFILE and the like: the caps keep it rare; never stop accepting
                log_event(log, "sip.tls.accept_failed", logging.WARNING, error=exc.strerror or str(exc))
                await asyncio.sleep(0.1)
                continue
            host = addr[0]
            if not self._admit(host):
                sock.close()
                continue
            self._handshakes += 1
            self._handshaking_by_host[host] += 1
            self._spawn(self._handshake(sock, host, context))

    async def _handshake(self, sock: socket.socket, host: str, context: ssl.SSLContext) -> None:
        made: list[TcpConnection] = []

        def protocol() -> TcpConnection:
            made.append(TcpConnection(self, kind="tls", handshaking=True))
            return made[0]

        try:
            await self.loop.connect_accepted_socket(protocol, sock, ssl=context,
                                                    ssl_handshake_timeout=self._handshake_timeout)
        except (OSError, ssl.SSLError, asyncio.TimeoutError, EOFError) as exc:
            log.debug("sip.tls.handshake_failed source=%s error=%s", host, exc)
        finally:
            if not made or made[0].handshaking:  # failed, timed out or cancelled before connection_made
                if made:
                    made[0].handshaking = False
                self.handshake_ended(host)
                sock.close()

    def handshake_ended(self, host: str) -> None:
        self._handshakes -= 1
        left = self._handshaking_by_host[host] - 1
        if left > 0:
            self._handshaking_by_host[host] = left
        else:
            del self._handshaking_by_host[host]

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
        if self._tls_accepting is not None:
            self._tls_accepting.cancel()
            self._tls_accepting = None
        if self._tls_listener is not None:
            self._tls_listener.close()
            self._tls_listener = None
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
        if self.shared_udp is not None:
            self.shared_udp.close()
            self.shared_udp = None
        if self.tcp_server is not None:
            await self.tcp_server.wait_closed()
            self.tcp_server = None

    # -- sending -------------------------------------------------------------------------------------

    def send(self, data: bytes, peer: Peer) -> None:
        if not is_ip(peer.host) and peer.transport != "tls":
            # Over TLS the name is kept: the server's certificate is checked against it (RFC 5922 §7.2).
            self._send_by_name(data, peer)
            return
        if peer.transport == "udp":
            if self.udp is None:
                self.send_error()
                return
            if self.shared_udp is not None and data[:4] == b"SIP/":
                # An answer leaves by the port its request arrived at (RFC 3581 §4, NAT bindings);
                # a worker's own requests leave by its own port, where their answers come back.
                self.shared_udp.sendto(data, (peer.host, peer.port))
                return
            self.udp.sendto(data, (peer.host, peer.port))
            return
        if peer.transport not in ("tcp", "tls") or (peer.transport == "tls" and self._tls_client is None):
            self.send_error()  # SCTP/WS are not offered by this node; TLS only when configured
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
        if len(self.by_id) + len(self._connecting) >= self._max_conns:
            self._refuse("global", key[1])
            self.send_error()
            return
        self._connecting[key] = [data]
        self._spawn(self._connect(key))

    async def _connect(self, key: ConnectionKey) -> None:
        transport, host, port = key
        tls = {}
        if transport == "tls":
            # RFC 5922 §7.2: the next hop's certificate must name the host (or IP) it was reached by.
            tls = dict(ssl=self._tls_client, server_hostname=host, ssl_handshake_timeout=self._handshake_timeout)
        try:
            _, conn = await asyncio.wait_for(
                self.loop.create_connection(lambda: TcpConnection(self, key, transport), host, port, **tls),
                TCP_CONNECT_TIMEOUT + (self._handshake_timeout if tls else 0.0))
        except (OSError, asyncio.TimeoutError) as exc:
            dropped = self._connecting.pop(key, [])
            self.stats.send_errors += len(dropped)
            log.info("sip.tcp.connect_failed", extra={"facts": {"peer": f"{transport}:{host}:{port}",
                                                                "error": str(exc)}})
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
        host = conn.remote[1]
        if conn.inbound:
            if not self._admit(host):
                return False
            self._inbound_by_host[host] += 1
        conn.registered = True
        self.by_id[conn.id] = conn
        self.by_addr[conn.remote] = conn
        if conn.target is not None and conn.target != conn.remote:
            self.by_addr[conn.target] = conn
        return True

    def _admit(self, host: str) -> bool:
        """Whether the caps leave room for one more inbound connection from ``host``; TLS
        handshakes in progress count as connections."""
        if len(self.by_id) + len(self._connecting) + self._handshakes >= self._max_conns:
            self._refuse("global", host)
            return False
        if self._inbound_by_host[host] + self._handshaking_by_host[host] >= self._max_per_address:
            self._refuse("per_address", host)
            return False
        return True

    def unregister(self, conn: TcpConnection) -> None:
        if not conn.registered:
            return  # refused by a cap: never counted
        conn.registered = False
        if conn.inbound:
            host = conn.remote[1]
            self._inbound_by_host[host] -= 1
            if self._inbound_by_host[host] <= 0:
                del self._inbound_by_host[host]
        self.by_id.pop(conn.id, None)
        for key in (conn.remote, conn.target):
            if key is not None and self.by_addr.get(key) is conn:
                del self.by_addr[key]

    def _refuse(self, cap: str, host: str) -> None:
        """A cap refused a connection: count it; log it unless this cap was logged moments ago."""
        self.refused[cap] += 1
        self._unlogged[cap] += 1
        now = self.loop.time()
        if now - self._logged_at.get(cap, -REFUSAL_LOG_SECONDS) < REFUSAL_LOG_SECONDS:
            return
        self._logged_at[cap] = now
        limit = self._max_conns if cap == "global" else self._max_per_address
        log_event(log, "sip.tcp.refused", logging.WARNING, cap=cap, limit=limit, source=host,
                  refused=self._unlogged.pop(cap), connections=len(self.by_id))

    def _schedule_sweep(self) -> None:
        # Often enough that a read timeout is enforced within a quarter of itself.
        every = min(self._idle / 2, self._read_timeout / 4, 30.0)
        self._sweep_handle = self.loop.call_later(every, self._sweep)

    def _sweep(self) -> None:
        self._schedule_sweep()
        now = self.loop.time()
        idle_limit, read_limit = now - self._idle, now - self._read_timeout
        timed_out = 0
        for conn in list(self.by_id.values()):
            if conn.transport is None:
                continue
            if conn.partial_since is not None and conn.partial_since < read_limit:
                # A message begun and not finished in time (slowloris, a Content-Length larger
                # than what arrives): nothing of it can be answered, so drop the connection now.
                timed_out += 1
                conn.transport.abort()
            elif conn.last_active < idle_limit:
                conn.transport.close()
        if timed_out:
            self.read_timeouts += timed_out
            log_event(log, "sip.tcp.read_timeout", logging.INFO, closed=timed_out, timeout=self._read_timeout)

    # -- stats -----------------------------------------------------------------------------------------

    def send_error(self) -> None:
        self.stats.send_errors += 1

    def stats_error(self) -> None:
        self.stats.internal_errors += 1

    def keepalive(self, n: int) -> None:
        self.stats.keepalives += n
