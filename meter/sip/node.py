"""The SIP node: binds UDP, TCP and TLS, wires them to the sans-I/O core, exposes read-only views.

    node = SipNode(settings, hooks, tls=tls_settings)
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
from meter.sip.counters import SipCounters, add_snapshots
from meter.sip.descriptors import connection_budget
from meter.sip.peer import Peer
from meter.sip.hooks import SipHooks
from meter.sip.limits import LimitSettings
from meter.sip.routing import Advertised, is_ip
from meter.sip.settings import SipSettings
from meter.sip.auth.admission import AdmissionPolicy
from meter.sip.tls import TlsSettings, client_context, server_context
from meter.sip.transport import Receiver, Transports

log = logging.getLogger("meter.sip")


class SipNode:
    def __init__(self, settings: SipSettings | None = None, hooks: SipHooks | None = None, *,
                 wrap_receiver: Callable[[Receiver], Receiver] | None = None,
                 tls: TlsSettings | None = None, admission: AdmissionPolicy | None = None,
                 limits: LimitSettings | None = None) -> None:
        self.settings = settings or SipSettings()
        self.limits = limits  # [limits]: per-source rate and registrations (meter.sip.limits), None = none
        self.admission = admission  # [auth]: allow-list and digest (meter.sip.auth), None = admit all
        self.tls = tls or TlsSettings()
        self.hooks = hooks
        # What the sockets hand each message to: the core, or a wrapper around it (the app's
        # latency timing), chosen by whoever builds the node rather than patched in afterwards.
        self._wrap_receiver = wrap_receiver
        self.counters = SipCounters()
        self.core: SipCore | None = None
        self._transports: Transports | None = None
        self.port = 0
        self.tls_port = 0
        self.own_port = 0  # with several workers: this one's port, in its Via and Record-Route
        self.remote = None  # worker 0 of several: the other workers' views (meter.workers.pool)

    async def start(self) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        limits = Limits(max_message_bytes=s.max_message_bytes, max_headers=s.max_headers,
                        max_header_bytes=min(DEFAULT_LIMITS.max_header_bytes, s.max_message_bytes))
        budget = connection_budget(s.tcp_max_connections, s.fd_reserve)
        if budget.connections < s.tcp_max_connections:
            log_event(log, "sip.tcp.max_connections_lowered", logging.WARNING, configured=s.tcp_max_connections,
                      allowed=budget.connections, nofile_limit=budget.limit, fd_reserve=s.fd_reserve)
        tls = self.tls if self.tls.enabled else None
        if s.upstream_transport == "tls" and tls is None:  # meter.config refuses such a file
            raise ValueError('upstream_transport "tls" needs TLS settings with enabled = true')
        transports = Transports(loop=loop, limits=limits, stats=self.counters, tcp_idle_timeout=s.tcp_idle_timeout,
                                tcp_max_connections=budget.connections,
                                tcp_max_connections_per_address=s.tcp_max_connections_per_address,
                                tcp_read_timeout=s.tcp_read_timeout,
                                tls_client=client_context(tls) if tls else None,
                                tls_handshake_timeout=self.tls.handshake_timeout)
        if s.worker_count > 1:  # meter.workers: the shared port and this worker's own
            self.port, self.own_port = await transports.start_worker(s.host, s.port)
        else:
            self.port = await transports.start(s.host, s.port, udp=s.udp, tcp=s.tcp)
        self._transports = transports
        if tls is not None:
            try:
                self.tls_port = await transports.start_tls(s.host, tls.port, server_context(tls))
            except BaseException:
                await transports.close()
                raise
        unspecified = ipaddress.ip_address(s.host).is_unspecified
        adv_host = s.advertised_host or (primary_address() if unspecified else s.host)
        advertised = Advertised(adv_host, s.advertised_port or self.own_port or self.port, self.tls_port)
        local_names = [f"{adv_host}:{self.port}"]
        if self.own_port:
            local_names.append(f"{adv_host}:{self.own_port}")
        if self.tls_port:
            local_names.append(f"{adv_host}:{self.tls_port}")
        if unspecified:
            local_names += ["127.0.0.1", "localhost"]
            if self.tls_port:
                local_names += [f"127.0.0.1:{self.tls_port}", f"localhost:{self.tls_port}"]
        else:
            local_names.append(s.host)
            if self.tls_port:
                local_names.append(f"{s.host}:{self.tls_port}")
        upstream = None
        if s.upstream:
            host, port = s.upstream_hostport
            if not is_ip(host):
                infos = await loop.getaddrinfo(host, port, family=socket.AF_INET, type=socket.SOCK_DGRAM)
                host = infos[0][4][0]
            upstream = Peer(s.upstream_transport, host, port)
        self.core = SipCore(s, clock=LoopClock(loop), send=transports.send, advertised=advertised,
                            hooks=self.hooks, local_names=local_names, upstream=upstream, counters=self.counters,
                            admission=self.admission, limits=self.limits)
        transports.receiver = self._wrap_receiver(self.core) if self._wrap_receiver else self.core
        self.core.start()
        log_event(log, "sip.started", host=s.host, port=self.port, own_port=self.own_port, mode=s.mode, advertised=advertised.hostport,
                  upstream=str(upstream) if upstream else "", udp=s.udp, tcp=s.tcp, tls_port=self.tls_port,
                  max_connections=budget.connections)

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
        return self.core.registrar.views() if self.core else []

    def calls(self) -> list[dict]:
        own = self.core.calls.views() if self.core else []
        return own + self.remote.calls() if self.remote is not None else own

    dialogs = calls

    def stats(self) -> dict:
        out = self.counters.snapshot()
        if self.remote is not None:  # the other workers' counts, as each last reported them (every second)
            for snapshot in self.remote.counter_snapshots():
                out = add_snapshots(out, snapshot)
        if self.core is not None:
            out["transactions_server"] = len(self.core.txns.servers)
            out["transactions_client"] = len(self.core.txns.clients)
            out["retransmissions_sent"] = self.core.txns.retransmissions
            out["transaction_timeouts"] = self.core.txns.timeouts
            out["transaction_errors"] = self.core.txns.errors
            out["bindings"] = len(self.core.location)
            out["calls"] = len(self.core.dialogs)
        if self._transports is not None:
            t = self._transports
            out["tcp_connections"] = len(t.by_id)
            out["tcp_refused_global"] = t.refused["global"]
            out["tcp_refused_per_address"] = t.refused["per_address"]
            out["tcp_read_timeouts"] = t.read_timeouts
        return out
