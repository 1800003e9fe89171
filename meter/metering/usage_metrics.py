"""Prometheus families for the usage peaks (``UsageMeter.view``), for the node's /metrics collector.

``usage_families(view)`` turns one view (contracts A: ``metering.usage.view(now)``) into metric
families; the /metrics collector yields them on each scrape, so nothing here runs per message. A
peak's instant is its own gauge (``..._timestamp_seconds``), absent until there is one. Refusals
and would-be refusals are already ``meter_refusals_total{license,reason,enforcement}``, from the
same ledger count, so they are not exported twice. The labels take a small fixed set of values.
"""

from __future__ import annotations

from prometheus_client.core import GaugeMetricFamily


def usage_families(view: dict) -> list:
    licenses = view["licenses"]
    peak = GaugeMetricFamily("meter_license_peak", "Highest licenses in use on this node at any charge, all-time "
                             "(taken at every charge, never sampled; RMS 0.5 per audio-only SIP call, C4).",
                             labels=["license"])
    peak_at = GaugeMetricFamily("meter_license_peak_timestamp_seconds", "When meter_license_peak was reached "
                                "(Unix time).", labels=["license"])
    since = GaugeMetricFamily("meter_license_peak_since_reset", "Highest licenses in use on this node since the "
                              "operator's last peak reset.", labels=["license"])
    since_at = GaugeMetricFamily("meter_license_peak_since_reset_timestamp_seconds", "When "
                                 "meter_license_peak_since_reset was reached (Unix time).", labels=["license"])
    cluster = GaugeMetricFamily("meter_cluster_license_peak", "Highest sum of this node's licenses in use and its "
                                "peers' last published values (a peer's spike shorter than its publish interval "
                                "can be missed here, never on the peer itself).", labels=["license"])
    cluster_at = GaugeMetricFamily("meter_cluster_license_peak_timestamp_seconds", "When "
                                   "meter_cluster_license_peak was reached (Unix time).", labels=["license"])
    for lic, row in sorted(licenses.items()):
        peak.add_metric([lic], row["peak"])
        since.add_metric([lic], row["peak_since_reset"])
        cluster.add_metric([lic], row["cluster_peak"])
        for family, at in ((peak_at, row["peak_at"]), (since_at, row["peak_since_reset_at"]),
                           (cluster_at, row["cluster_peak_at"])):
            if at is not None:
                family.add_metric([lic], at)
    families = [peak, peak_at, since, since_at, cluster, cluster_at]
    reset_at = next((row["reset_at"] for row in licenses.values()), None)
    if reset_at is not None:
        reset = GaugeMetricFamily("meter_license_peaks_reset_timestamp_seconds",
                                  "When the operator last reset the since-reset peaks (Unix time).")
        reset.add_metric([], reset_at)
        families.append(reset)
    calls = GaugeMetricFamily("meter_calls_peak", "Highest concurrent calls by class on this node, all-time "
                              "(a call setting up counts as video, C6).", labels=["class"])
    calls_at = GaugeMetricFamily("meter_calls_peak_timestamp_seconds", "When meter_calls_peak was reached "
                                 "(Unix time).", labels=["class"])
    for cls, row in sorted(view["calls_by_class"].items()):
        calls.add_metric([cls], row["peak"])
        if row["peak_at"] is not None:
            calls_at.add_metric([cls], row["peak_at"])
    return families + [calls, calls_at]
