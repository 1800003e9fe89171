"""The running node: wires config, licensing, the SIP node and the admin server on one event loop.

This is the only place that knows every component; each of them stays testable on its own.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time

from meter import logs
from meter.config import Config
from meter.gc_timer import FullCollections
from meter.logs import log_event

log = logging.getLogger("meter.node")
TICK_SECONDS = 1.0


class Node:
    def __init__(self, config: Config):
        self.config = config
        self.sip = None
        self.admin = None
        self.metering = None
        self.latency = None  # SIP's processing-latency histogram
        self.latency_ras = None  # H.323 RAS's, when h323 is enabled
        self.collections = None  # the timed full GC passes (meter.gc_timer), once serving
        self.pool_sync = None
        self.ras = None
        self.state = None  # bindings and calls written behind, restored at start (meter.store.sip_state)
        self.smart = None  # meter.smart.agent.SmartAgent
        self.h323_state = None  # the same for RAS registrations and calls (meter.store.h323_state)
        self.workers = None  # SIP workers 1..N-1 when [sip] workers > 1 (meter.workers.pool)
        self._ticker: asyncio.Task | None = None
        self.started_at = time.time()

    async def start(self) -> None:
        from meter.admin.latency import LatencyHistogram, TimedReceiver
        from meter.metering.sip import SipMetering
        from meter.sip.node import SipNode

        self.metering = build_metering(self.config, time.time())
        from meter.smart.agent import SmartAgent

        # Smart Licensing (S1-S14): idle in PAK mode, follows `meter mode smart` at once.
        self.smart = SmartAgent(self.config.smart, self.metering.licensing, self.metering)
        self.metering.smart = self.smart
        self.metering.refresh_licenses(time.time())
        await self.smart.start()
        if self.config.cluster.store == "redis":
            from meter.cluster.sync import PoolSync

            # Before any listener: the first sync learns the cluster's licenses (P1) before a call.
            self.pool_sync = PoolSync.from_settings(self.metering.ledger.pool, self.config.cluster,
                                                    self.config.node.name, lost_store=self.metering.licensing.store)
            await self.pool_sync.start()
        self.latency = LatencyHistogram()
        latency = self.latency
        hooks = SipMetering(self.metering, inline=self.config.sip.mode == "inline")
        if self.config.sip.worker_count > 1:  # this process is worker 0 and the others' one ledger
            from meter.workers.pool import WorkerPool

            self.workers = WorkerPool(self.config, hooks, self.config.sip.worker_count)
            hooks = self.workers.wrap(hooks)
        self.sip = SipNode(self.config.sip, hooks,
                           wrap_receiver=lambda core: TimedReceiver(core, latency), tls=self.config.tls,
                           admission=build_admission(self.config), limits=self.config.limits)
        await self.sip.start()
        self._restore_state()
        if self.workers is not None:  # after the restore: each worker starts knowing every binding
            self.sip.remote = self.workers
            await self.workers.start(self.sip.core, self.sip.port)
        if self.config.h323.enabled:
            from meter.h323.node import RasNode
            from meter.metering.h323 import RasMetering

            metering, sip = self.metering, self.sip

            def locate_sip(alias_value: str) -> tuple[str, int] | None:
                # C9: an H.323 call to an alias registered here over SIP goes to this node's SIP side.
                return None if metering.sip_aor_for(alias_value) is None else sip.advertised_address

            self.latency_ras = latency_ras = LatencyHistogram()
            self.ras = RasNode(self.config.h323, RasMetering(self.metering), sip_locator=locate_sip,
                               wrap_receiver=lambda node: TimedReceiver(node, latency_ras),
                               prepare=self._restore_h323_state)
            await self.ras.start()
        self._ticker = asyncio.get_running_loop().create_task(self._tick())
        if self.config.admin.enabled:
            self.admin = build_admin_server(self)
            await self.admin.start()
        log_event(log, "node.started", name=self.config.node.name, role=self.config.node.role,
                  mode=self.config.sip.mode, sip_port=self.sip.port, ras_port=self.ras.port if self.ras else 0,
                  admin_port=self.admin.port if self.admin else 0, config=self.config.source,
                  sip_codec=_sip_codec())

    def _restore_state(self) -> None:
        """Before any message is handled: the bindings and calls of the last run, charged again as
        decided; from then on every change is written behind (Kamailio usrloc/dialog db_mode=2)."""
        from meter.store.sip_state import SipState
        from meter.store.state import StateStore

        self.state = SipState(StateStore(self.config.node.state_dir), self.config.state, self.sip.core,
                              self.metering, call_later=asyncio.get_running_loop().call_later)
        self.state.restore()
        self.state.attach()

    def _restore_h323_state(self, core) -> None:
        """The gatekeeper's registrations and calls of the last run, before its socket serves a datagram."""
        from meter.store.h323_state import H323State, H323StateStore

        loop = asyncio.get_running_loop()
        self.h323_state = H323State(H323StateStore(self.config.node.state_dir), self.config.state, core,
                                    self.metering, call_later=loop.call_later, clock=loop.time)
        self.h323_state.restore()
        self.h323_state.attach()

    async def _tick(self) -> None:
        """Once a second: alarms, lost peers, demo-key expiry, usage records, key changes on disk."""
        while True:
            await asyncio.sleep(TICK_SECONDS)
            try:
                self.metering.tick(self.metering.clock())
            except Exception:  # a bug here must not stop metering for good
                log.exception("metering.tick_failed")

    async def close(self) -> None:
        if self._ticker:
            self._ticker.cancel()
        if self.state:  # written before the shutdown's releases, which a restart must not see
            self.state.close()
        if self.h323_state:
            self.h323_state.close()
        if self.metering:  # likewise the usage history's current minute and the peaks
            self.metering.flush_usage(self.metering.clock())
        if self.workers:  # their calls end through this process's ledger as they stop
            await self.workers.close()
        if self.sip:
            await self.sip.close()  # ends every call and binding: releases all charges (principle 4)
        if self.ras:  # no URQ when the registrations are kept for the next start: a restart is invisible
            await self.ras.close(goodbye=self.h323_state is None)
        if self.admin:
            await self.admin.close()
        if self.smart:
            await self.smart.close()
        if self.metering:
            self.metering.close()
        if self.pool_sync:  # after the releases, so the last publish shows this node's usage at zero
            await self.pool_sync.close()
        log_event(log, "node.stopped")


def build_metering(config: Config, now: float):
    """The node's licensing, composed in one place: its durable state, the pool store `[cluster]`
    chooses (memory, or Redis shared with the peers), the ledger over both, and the metering join."""
    from meter import catalogs
    from meter.licensing.ledger import Ledger
    from meter.licensing.usage import UsageMeter
    from meter.metering.join import Metering
    from meter.store.node_licensing import NodeLicensing
    from meter.store.usage_history import UsageHistory
    from meter.zones import ZoneTable

    node, cluster = config.node, config.cluster
    licensing = NodeLicensing.open(node.state_dir, product=node.product)
    licensing.node_started(now)  # K3: restart-pending keys take effect now
    if cluster.store == "redis":  # Node.start's PoolSync keeps it current
        from meter.cluster.redis_pool import RedisPool

        pool = RedisPool(peer_timeout=cluster.peer_timeout, outage=cluster.outage)
    else:
        from meter.licensing.pool import MemoryPool

        pool = MemoryPool(peer_timeout=cluster.peer_timeout)
    history = UsageHistory(node.state_dir, config.usage)
    usage = UsageMeter(node.name, now)
    saved = history.load_peaks()
    if saved is not None:  # the peaks of the previous runs, with their instants
        usage.restore(saved)
    history.maintain(now)
    ledger = Ledger(node.name, node.role, catalogs.platform(node.platform), pool=pool,
                    enforcement=config.licensing.enforcement, alarms=licensing.alarms, now=now, usage=usage)
    metering = Metering(ledger, catalogs.device_catalog(), ZoneTable(config.zones), role=node.role,
                        node_name=node.name, sip_mode=config.sip.mode, licensing=licensing,
                        usage_history=history)
    metering.refresh_licenses(now)
    return metering


def build_admin_server(node: Node):
    """The admin server (aiohttp): the token is always required for state changes (created in the
    state directory at first start), for API reads too beyond loopback or with `protect_reads`."""
    from meter.admin.api import build_app
    from meter.admin.http import Access, AdminServer
    from meter.admin.token import is_loopback, load_or_create, read_secret_file

    admin = node.config.admin
    token, source = load_or_create(node.config.node.state_dir)
    access = Access(token, protect_reads=admin.protect_reads or not is_loopback(admin.host), source=source)
    metrics_auth = None
    if admin.metrics_user:
        metrics_auth = (admin.metrics_user, read_secret_file(admin.metrics_password_file))
    return AdminServer(build_app(node, access, metrics_auth=metrics_auth), admin.host, admin.port)


def build_admission(config: Config):
    """`[auth]`: the credentials file (default: in the state directory) and the zone peers, which
    are admitted without credentials (a lab registrar or gateway carries many users); None when
    `[auth]` asks for nothing."""
    from meter.sip.auth.admission import AdmissionPolicy
    from meter.store.credentials import CredentialsFile, default_path
    from meter.zones import ZoneTable

    auth = config.auth
    if not (auth.enabled or auth.allow):
        return None  # nothing to check: the SIP core admits everyone at no cost (today's behaviour)
    zones = ZoneTable(config.zones)
    path = auth.credentials_file or default_path(config.node.state_dir)
    return AdmissionPolicy(auth, CredentialsFile(path), trusted=lambda host: zones.for_peer(host) is not None)


async def serve(config: Config, started: asyncio.Event | None = None) -> None:
    node = Node(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread
            pass
    await node.start()
    collections = node.collections = FullCollections(loop, config.node.gc_full_interval)
    collections.start()
    if started:
        started.set()
    try:
        await stop.wait()
    finally:
        await node.close()
        collections.close()


def main(config: Config) -> int:
    logs.configure(config.log.level, config.log.json)
    from meter.smart.startup import refusal

    refused = refusal(config, time.time())  # L4, S1
    if refused:
        log_event(log, "node.cannot_start", level=logging.ERROR, error=refused)
        return 2
    try:
        import uvloop
    except ImportError:  # the node also runs on the default loop, slower
        log_event(log, "node.no_uvloop", level=logging.WARNING)
        runner = asyncio.run
    else:
        runner = uvloop.run
    from meter.workers.pool import WorkerStartError

    try:
        runner(serve(config))
    except WorkerStartError as exc:
        log_event(log, "node.cannot_start", level=logging.ERROR, error=str(exc))
        return 1
    except OSError as exc:  # a port in use, an address not on this machine
        from meter.startup import describe_os_error

        log_event(log, "node.cannot_start", level=logging.ERROR, error=describe_os_error(config, exc))
        return 1
    return 0


def _sip_codec() -> str:
    """"compiled" (codecs/_sipscan.c) or "python" (not built, or METER_PURE_CODEC=1): logged at start."""
    from meter.codecs import sip

    return sip.CODEC
