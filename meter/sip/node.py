"""The SIP node: binds UDP and TCP, wires them to the sans-I/O core, exposes read-only views.

    node = SipNode(settings, hooks)
    await node.start()      # binds; node.port is the port actually bound
    ...
    await node.close()      # ends every call and binding through the hooks ("node shutdown")

Works on uvloop (the lead's runner installs it) and on the default asyncio loop.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from typing import Callable

from meter.sockets import primary_address
from meter.codecs.sip import DEFAULT_LIMITS, Limits
from meter.logs import log_event
from meter.sip.clock import LoopClock
from meter.sip.core import SipCore
from meter.sip.counters import SipCounters
from meter.sip.peer import Peer
from meter.sip.hooks import SipHooks
from meter.sip.routing import Advertised, is_ip
from meter.sip.settings import SipSettings
from meter.sip.transport import Receiver, Transports

log = logging.getLogger("meter.sip")


class SipNode:
    def __init__(self, settings: SipSettings | None = None, hooks: SipHooks | None = None, *,
                 wrap_receiver: Callable[[Receiver], Receiver] | None = None) -> None:
        self.settings = settings or SipSettings()
        self.hooks = hooks
        # What the sockets hand each message to: the core, or a wrapper around it (the app's
        # latency timing), chosen by whoever builds the node rather than patched in afterwards.
        self._wrap_receiver = wrap_receiver
        self.counters = SipCounters()
        self.core: SipCore | None = None
        self._transports: Transports | None = None
        self.port = 0

    async def start(self) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        limits = Limits(max_message_bytes=s.max_message_bytes, max_headers=s.max_headers,
                        max_header_bytes=min(DEFAULT_LIMITS.max_header_bytes, s.max_message_bytes))
        transports = Transports(loop=loop, limits=limits, stats=self.counters, tcp_idle_timeout=s.tcp_idle_timeout,
                                tcp_max_connections=s.tcp_max_connections)
        self.port = await transports.start(s.host, s.port, udp=s.udp, tcp=s.tcp)
        self._transports = transports
        unspecified = ipaddress.ip_address(s.host).is_unspecified
        adv_host = s.advertised_host or (primary_address() if unspecified else s.host)
        advertised = Advertised(adv_host, s.advertised_port or self.port)
        local_names = [f"{adv_host}:{self.port}"]
        if unspecified:
            local_names += ["127.0.0.1", "localhost"]
        else:
            local_names.append(s.host)
        upstream = None
        if s.upstream:
            host, port = s.upstream_hostport
            if not is_ip(host):
                infos = await loop.getaddrinfo(host, port, family=socket.AF_INET, type=socket.SOCK_DGRAM)
                host = infos[0][4][0]
            upstream = Peer(s.upstream_transport, host, port)
        self.core = SipCore(s, clock=LoopClock(loop), send=transports.send, advertised=advertised,
                            hooks=self.hooks, local_names=local_names, upstream=upstream, counters=self.counters)
        transports.receiver = self._wrap_receiver(self.core) if self._wrap_receiver else self.core
        self.core.start()
        log_event(log, "sip.started", host=s.host, port=self.port, mode=s.mode, advertised=advertised.hostport,
                  upstream=str(upstream) if upstream else "", udp=s.udp, tcp=s.tcp)

    async def close(self) -> None:
        if self.core is not None:
            self.core.close("node shutdown")
        if self._transports is not None:
            self._transports.receiver = None
            await self._transports.close()
        log_event(log, "sip.stopped", port=self.port)

    @property
    def advertised_address(self) -> tuple[str, int]:
        """Where calls to this node's SIP side go (the host:port it names in Via and Record-Route)."""
        adv = self.core.advertised
        return adv.host, adv.port

    # -- read-only views for the CLI and the API ----------------------------------------------------------

    def bindings(self) -> list[dict]:
        return self.core.binding_views() if self.core else []

    def calls(self) -> list[dict]:
        return self.core.call_views() if self.core else []

    dialogs = calls

    def stats(self) -> dict:
        out = self.counters.snapshot()
        if self.core is not None:
            out["transactions_server"] = len(self.core.txns.servers)
            out["transactions_client"] = len(self.core.txns.clients)
            out["retransmissions_sent"] = self.core.txns.retransmissions
            out["transaction_timeouts"] = self.core.txns.timeouts
            out["transaction_errors"] = self.core.txns.errors
            out["bindings"] = len(self.core.location)
            out["calls"] = len(self.core.dialogs)
        if self._transports is not None:
            out["tcp_connections"] = len(self._transports.by_id)
        return out
