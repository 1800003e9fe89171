"""The RAS node: binds UDP, feeds the sans-I/O gatekeeper, sends what it returns, runs its housekeeping.

    node = RasNode(settings, hooks, sip_locator=locate, wrap_receiver=lambda r: TimedReceiver(r, histogram))
    await node.start()      # binds; node.port is the port actually bound
    ...
    await node.close()      # URQ to every endpoint (standalone); every call and registration ends
                            # through the hooks ("shutdown"); goodbye=False: no URQ (the app keeps
                            # the registrations in the state database for the next start)

One ``DatagramProtocol`` callback per datagram, no task per packet; housekeeping is one
``loop.call_later`` chain. Works on uvloop (the lead's runner installs it) and on asyncio's own loop.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from typing import Callable, Protocol

from meter.codecs.ras import TransportAddress
from meter.h323.counters import RasCounters
from meter.h323.gatekeeper import Datagram, Gatekeeper, SipLocator, no_sip
from meter.h323.hooks import RasHooks
from meter.h323.inline import InlineGatekeeper
from meter.h323.settings import H323Settings
from meter.logs import log_event
from meter.sockets import enlarge_receive_buffer, primary_address

log = logging.getLogger("meter.h323")


class DatagramReceiver(Protocol):
    """What the socket hands each datagram to."""

    def receive_datagram(self, data: bytes, addr: tuple[str, int]) -> None: ...


class _RasProtocol(asyncio.DatagramProtocol):
    def __init__(self, node: RasNode, receiver: DatagramReceiver) -> None:
        self.node = node
        self.receive_datagram = receiver.receive_datagram  # the node, or a TimedReceiver around it

    def datagram_received(self, data: bytes, addr) -> None:
        self.receive_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from an endpoint that went away, and the like: nothing to undo.
        self.node.counters.send_errors += 1


class RasNode:
    def __init__(self, settings: H323Settings | None = None, hooks: RasHooks | None = None, *,
                 sip_locator: SipLocator = no_sip,
                 wrap_receiver: Callable[[RasNode], DatagramReceiver] | None = None,
                 prepare: Callable[[Gatekeeper], None] | None = None) -> None:
        self.settings = settings or H323Settings()
        # Called with the core once it exists, before the socket hands it any datagram: the app
        # restores the last run's registrations and calls there (meter.store.h323_state).
        self.prepare = prepare
        self.hooks = hooks
        self.sip_locator = sip_locator
        # What the socket hands each datagram to: the node, or what wrap_receiver makes of it (the
        # app's TimedReceiver, which times each datagram's handling).
        self.receiver: DatagramReceiver = self if wrap_receiver is None else wrap_receiver(self)
        self.counters = RasCounters()
        self.core: Gatekeeper | None = None
        self.port = 0
        self.ras_address: TransportAddress | None = None
        self.upstream: TransportAddress | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._timer: asyncio.TimerHandle | None = None

    async def start(self) -> None:
        s = self.settings
        if not s.enabled:
            log_event(log, "h323.disabled")
            return
        loop = self._loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ipaddress.ip_address(s.host).version == 6 else socket.AF_INET
        self._transport, _ = await loop.create_datagram_endpoint(
            lambda: _RasProtocol(self, self.receiver), local_addr=(s.host, s.ras_port), family=family)
        self.port = self._transport.get_extra_info("sockname")[1]
        enlarge_receive_buffer(self._transport)
        unspecified = ipaddress.ip_address(s.host).is_unspecified
        host = s.advertised_host or (primary_address() if unspecified else s.host)
        self.ras_address = TransportAddress(host, self.port)
        # Hooks get wall-clock times; the core runs on the loop's monotonic clock.
        common = dict(ras_address=self.ras_address, sip_locator=self.sip_locator,
                      wall_offset=time.time() - loop.time(), counters=self.counters)
        if s.mode == "inline":
            upstream_host, upstream_port = s.upstream_hostport
            try:
                ipaddress.ip_address(upstream_host)
            except ValueError:
                infos = await loop.getaddrinfo(upstream_host, upstream_port, family=family, type=socket.SOCK_DGRAM)
                upstream_host = infos[0][4][0]
            self.upstream = TransportAddress(upstream_host, upstream_port)
            self.core = InlineGatekeeper(s, self.hooks, upstream=self.upstream, **common)
        else:
            self.core = Gatekeeper(s, self.hooks, **common)
        if self.prepare is not None:  # no await since the core was set: nothing was served yet
            self.prepare(self.core)
        self._timer = loop.call_later(s.housekeeping_interval, self._housekeeping)
        log_event(log, "h323.started", host=s.host, port=self.port, mode=s.mode, ras_address=str(self.ras_address),
                  gatekeeper_id=s.gatekeeper_id, upstream=str(self.upstream) if self.upstream else "")

    async def close(self, *, goodbye: bool = True) -> None:
        """``goodbye`` False: no URQ to the endpoints (their registrations survive in the state database)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.core is not None:
            self._send_all(self.core.close(self._loop.time(), goodbye=goodbye))
            self.core = None
        if self._transport is not None:
            self._transport.close()
            self._transport = None
            await asyncio.sleep(0)  # let the loop run the transport's close callbacks
        log_event(log, "h323.stopped", port=self.port)

    def receive_datagram(self, data: bytes, addr) -> None:
        """One RAS datagram in: the core decides, its answers go out before this returns."""
        if self.core is not None:
            self._send_all(self.core.receive(data, addr, self._loop.time()))

    def _housekeeping(self) -> None:
        if self.core is None:
            return
        try:
            self._send_all(self.core.tick(self._loop.time()))
        finally:
            self._timer = self._loop.call_later(self.settings.housekeeping_interval, self._housekeeping)

    def _send_all(self, datagrams: list[Datagram]) -> None:
        transport = self._transport
        for data, address in datagrams:
            try:
                transport.sendto(data, address)
            except (OSError, AttributeError, ValueError):
                self.counters.send_errors += 1

    # -- read-only views for the CLI, the API and the metrics ---------------------------------------------

    def registrations(self) -> list[dict]:
        return self.core.registration_views(self._loop.time()) if self.core else []

    def calls(self) -> list[dict]:
        return self.core.call_views(self._loop.time()) if self.core else []

    def stats(self) -> dict:
        out = self.counters.snapshot()
        if self.core is not None:
            out["registrations"] = len(self.core.registrations)
            out["aliases"] = len(self.core.registrations.by_alias)
            out["calls"] = len(self.core.calls)
            out["pending_upstream"] = len(getattr(self.core, "pending", ()))
        return out
