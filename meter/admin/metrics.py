"""Prometheus exposition: built from the node's state when /metrics is scraped.

Nothing here runs per message: the ledger, the SIP counters and the latency histograms keep plain
numbers, and this collector turns them into metric families on each scrape. Names follow the
prometheus-client conventions (snake_case, unit suffix, `_total` on counters) and every label
takes values from a small fixed set: never a Call-ID or an alias.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from meter.licensing.model import POOLED, Media
from meter.sip.auth.admission import AUTH_FAILURES
from meter.sip.counters import METHODS
from meter.sip.limits import REASONS as LIMIT_REASONS
from meter.sip.router import RELAY_REFUSALS

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
CALL_CLASSES = {Media.SETUP: "setup", Media.VIDEO: "video", Media.AUDIO_SIP: "audio_sip",
                Media.AUDIO_OTHER: "audio_other"}

log = logging.getLogger("meter.admin.metrics")

# More families, from other parts of the node (usage peaks, Smart Licensing): ``source(node, now)``
# yields prometheus_client metric families at each scrape, after the node's own. One line adds one:
# ``metrics.register_source(my_families)`` (or ``@metrics.register_source`` on the function).
FamilySource = Callable[[Any, float], Iterable[Any]]
EXTRA_FAMILY_SOURCES: list[FamilySource] = []


def register_source(source: FamilySource) -> FamilySource:
    if source not in EXTRA_FAMILY_SOURCES:
        EXTRA_FAMILY_SOURCES.append(source)
    return source


class NodeCollector:
    def __init__(self, node):
        self.node = node  # meter.app.Node

    def collect(self):
        metering = self.node.metering
        now = metering.clock()
        snap = metering.ledger.snapshot(now)
        name = snap.node

        in_use = GaugeMetricFamily("meter_licenses_in_use", "Licenses in use on this node (RMS in steps of 0.5: two audio-only SIP calls share one, C4).", labels=["license"])
        cluster = GaugeMetricFamily("meter_licenses_in_use_cluster", "Licenses in use in the whole cluster pool.", labels=["license"])
        capacity = GaugeMetricFamily("meter_licenses_capacity", "Licenses in the cluster pool from option keys in force (P1, P2).", labels=["license"])
        for lic in POOLED:
            usage = snap.licenses[lic]
            in_use.add_metric([str(lic)], usage.in_use)
            cluster.add_metric([str(lic)], usage.in_use_cluster)
            capacity.add_metric([str(lic)], usage.capacity)
        yield in_use
        yield cluster
        yield capacity

        calls = GaugeMetricFamily("meter_calls", "Calls in progress by class (setup counts as video until set-up completes, C6).", labels=["class", "license"])
        by_class: dict[tuple[str, str], int] = {(c, lic): 0 for c in CALL_CLASSES.values() for lic in ("rms", "cmr", "none")}
        for (media, lic), count in metering.tallies.calls.items():  # running totals: no walk
            key = (CALL_CLASSES.get(media, "video"), lic)
            by_class[key] = by_class.get(key, 0) + count
        for (cls, lic), count in sorted(by_class.items()):
            calls.add_metric([cls, lic], count)
        yield calls

        cap = GaugeMetricFamily("meter_capacity", "Physical capacity of this node's platform (P3, R6).", labels=["resource"])
        cap.add_metric(["video_calls"], snap.call_capacity)
        cap.add_metric(["registrations"], snap.registration_capacity)
        cap.add_metric(["mra_registrations"], snap.mra_registration_capacity)
        yield cap
        load = GaugeMetricFamily("meter_call_load_ratio", "Fraction of the node's physical call capacity in use (P3, P4 alarms at 0.9).")
        load.add_metric([], snap.call_load)
        yield load

        regs = GaugeMetricFamily("meter_registrations", "Registered aliases by protocol and device class (R1-R9).", labels=["protocol", "device_class"])
        counts = {(p, c): 0 for p in ("sip", "h323") for c in ("room", "desktop", "none")}
        for key, count in metering.tallies.registrations.items():  # running totals (R9: per alias)
            counts[key] = counts.get(key, 0) + count
        for (protocol, device_class), count in sorted(counts.items()):
            regs.add_metric([protocol, device_class], count)
        yield regs

        refusals = CounterMetricFamily("meter_refusals", "Charges that did not fit: refused (enforce) or let through and counted (observe).", labels=["license", "reason", "enforcement"])
        for (lic, reason, enforcement), count in sorted(metering.ledger.refusals.items()):
            refusals.add_metric([lic, reason, enforcement], count)
        yield refusals

        alarms = GaugeMetricFamily("meter_alarm_active", "1 while an alarm stands (P4 capacity, K3 restart required, exhausted pools...).", labels=["alarm", "rule"])
        for alarm in snap.alarms:
            # Alarm ids are few and fixed: capacity-node, capacity-cluster, restart-required, one per
            # license pool (license-exhausted-rms...) and one per cluster peer (at most six).
            alarms.add_metric([alarm.id, alarm.rule], 1)
        yield alarms

        info = GaugeMetricFamily("meter_node_info", "Static facts about this node.", labels=["node", "role", "enforcement", "sip_mode"])
        info.add_metric([name, snap.role, snap.enforcement, metering.sip_mode], 1)
        yield info

        yield from self._cluster_families()
        yield from self._sip_families()
        yield from self._ras_families()
        yield from self._latency_families()
        yield from self._gc_families()
        for source in EXTRA_FAMILY_SOURCES:
            yield from _families_of(source, self.node, now)

    def _gc_families(self):
        collections = getattr(self.node, "collections", None)
        if collections is None or collections.interval <= 0:
            return
        runs = CounterMetricFamily("meter_gc_full_collections", "Timed full passes of the cyclic garbage collector (node.gc_full_interval).")
        runs.add_metric([], collections.runs)
        yield runs
        pause = GaugeMetricFamily("meter_gc_full_pause_seconds", "How long the last timed full garbage collection stopped the node.")
        pause.add_metric([], collections.last_pause)
        yield pause
        found = CounterMetricFamily("meter_gc_unreachable_objects", "Cyclic garbage the timed full passes found (the hot path makes none).")
        found.add_metric([], collections.collected)
        yield found

    def _cluster_families(self):
        sync = getattr(self.node, "pool_sync", None)
        if sync is None:
            return
        status = sync.status()
        up = GaugeMetricFamily("meter_cluster_store_up", "1 when the last sync with the shared license pool (Redis) succeeded.")
        up.add_metric([], 1 if status.connected else 0)
        yield up
        failures = CounterMetricFamily("meter_cluster_sync_failures", "Syncs with the shared license pool that failed.")
        failures.add_metric([], status.failures_total)
        yield failures

    def _sip_families(self):
        sip = self.node.sip
        if sip is None:
            return
        stats = sip.counters
        workers = getattr(self.node, "workers", None)
        if workers is not None:  # one /metrics for the node: every worker's counts added up
            from meter.workers.stats import summed_counters

            stats = summed_counters(stats, workers.snapshots())
            alive = GaugeMetricFamily("meter_sip_workers", "SIP worker processes serving ([sip] workers), this one included.")
            alive.add_metric([], workers.alive())
            yield alive
            restarts = CounterMetricFamily("meter_sip_worker_restarts", "SIP worker processes lost and started again.")
            restarts.add_metric([], workers.restarts)
            yield restarts
            per_worker = CounterMetricFamily("meter_sip_worker_requests", "SIP requests received, per worker (how the kernel spread the sources).", labels=["worker"])
            per_worker.add_metric(["0"], sum(sip.counters.requests_received.values()))
            for index, snapshot in workers.indexed_snapshots():
                per_worker.add_metric([str(index)], sum(snapshot.counters.get("requests_received", {}).values()))
            yield per_worker
        requests = CounterMetricFamily("meter_sip_requests", "SIP requests by direction and method (retransmissions included).", labels=["direction", "method"])
        for direction, counter in (("in", stats.requests_received), ("out", stats.requests_sent)):
            for method, count in sorted(counter.items()):
                requests.add_metric([direction, method if method in METHODS else "other"], count)
        yield requests
        responses = CounterMetricFamily("meter_sip_responses", "SIP responses by direction and status code.", labels=["direction", "status"])
        for direction, counter in (("in", stats.responses_received), ("out", stats.responses_sent)):
            for status, count in sorted(counter.items()):
                responses.add_metric([direction, str(status)], count)
        yield responses
        malformed = CounterMetricFamily("meter_sip_malformed", "Malformed SIP messages: answered with 4xx/5xx and a reason, or dropped.", labels=["outcome"])
        malformed.add_metric(["answered"], stats.malformed_answered)
        malformed.add_metric(["dropped"], stats.malformed_dropped)
        yield malformed
        relay = CounterMetricFamily("meter_sip_relay_refused", "Requests refused 403 by the relay policy ([sip] relay), by why.", labels=["why"])
        for why in RELAY_REFUSALS:
            relay.add_metric([why], stats.relay_refused[why])
        yield relay
        auth = CounterMetricFamily("meter_sip_auth_failures", "Digest authentication failures ([auth]), by reason.", labels=["reason"])
        for reason in AUTH_FAILURES:
            auth.add_metric([reason], stats.auth_failures[reason])
        yield auth
        yield from self._limit_families(sip.core)

    def _limit_families(self, core):
        limits = getattr(core, "source_limits", None)
        if limits is None:
            return
        limited = CounterMetricFamily("meter_sip_limited", "SIP requests above a per-source limit ([limits]): dropped or answered 503.", labels=["reason"])
        for reason in LIMIT_REASONS:
            limited.add_metric([reason], limits.limited[reason])
        yield limited
        sources = GaugeMetricFamily("meter_sip_limited_sources", "Source addresses limited within the last [limits] window.")
        sources.add_metric([], limits.limited_sources(core.clock.time()))
        yield sources
        tracked = GaugeMetricFamily("meter_sip_limit_tracked_sources", "Source addresses the per-source limiter remembers (at most [limits] max_sources).")
        tracked.add_metric([], len(limits))
        yield tracked

    def _ras_families(self):
        ras = getattr(self.node, "ras", None)
        if ras is None:
            return
        stats = ras.counters
        messages = CounterMetricFamily("meter_ras_messages", "H.225.0 RAS messages by direction and kind (RRQ, ARQ, ...).", labels=["direction", "kind"])
        for direction, counter in (("in", stats.received), ("out", stats.sent)):
            for kind, count in sorted(counter.items()):
                messages.add_metric([direction, kind], count)
        yield messages
        malformed = CounterMetricFamily("meter_ras_malformed", "RAS datagrams that decode to no message, dropped, by codec error.", labels=["code"])
        for code, count in sorted(stats.malformed_by_code.items()):
            malformed.add_metric([code], count)
        yield malformed

    def _latency_families(self):
        # One family, one sample set per protocol the node times (RAS only when h323 is enabled).
        sip_latency = self.node.latency
        workers = getattr(self.node, "workers", None)
        if workers is not None:
            from meter.workers.stats import summed_latency

            sip_latency = summed_latency(sip_latency, workers.snapshots())
        timed = [(protocol, histogram) for protocol, histogram in
                 (("sip", sip_latency), ("h323", getattr(self.node, "latency_ras", None)))
                 if histogram is not None]
        if not timed:
            return
        family = HistogramMetricFamily("meter_message_processing_seconds", "Time from a message's arrival to the end of its handling, per protocol.", labels=["protocol"])
        for protocol, histogram in timed:
            family.add_metric([protocol], histogram.cumulative(), histogram.sum)
        yield family


def _families_of(source: FamilySource, node, now: float) -> list:
    # Taken whole before any is written: a source that fails costs its own families, not the scrape.
    try:
        return list(source(node, now))
    except Exception:
        log.exception("metrics.source_failed")
        return []


def render(node) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(node))
    return generate_latest(registry)


def _usage_peaks(node, now: float) -> Iterable:
    """Peaks per license and call class, taken at every charge (meter.licensing.usage)."""
    from meter.metering.usage_metrics import usage_families

    return usage_families(node.metering.usage.view(now))


def _smart_licensing(node, now: float) -> Iterable:
    """Registration, authorization, evaluation and per-tag compliance (S5, S6, S10)."""
    from meter.smart.metrics import smart_families

    return smart_families(node, now)


register_source(_usage_peaks)
register_source(_smart_licensing)
