"""/metrics keeps its exposition byte for byte while the node's counting changes underneath (issue 11).

A scripted sequence of SIP messages runs through a real SIP core with its metering (the
``bench.hotpath`` harness: R9 registrations, C2 calls, malformed and unknown requests); the
exposition it yields is compared with the one the node produced for the same script before the
hot-path work (``data/metrics_exposition_golden.txt``, written by the tree at 17f44e6): same metric
names, types, help, labels and values.
"""

from __future__ import annotations

import asyncio
import pathlib
from types import SimpleNamespace

import uvloop

from meter.admin import metrics

GOLDEN = pathlib.Path(__file__).parent / "data" / "metrics_exposition_golden.txt"


async def _scripted_node():
    from bench import hotpath

    h = hotpath.Harness("standalone")
    for data in hotpath._registers(12, 1):
        h.feed(data, hotpath.ENDPOINTS)
    for data in hotpath._registers(5, 2):  # refreshes: no new charge
        h.feed(data, hotpath.ENDPOINTS)
    hotpath._calls(h, 4)  # INVITE, 180, 200, ACK, BYE, 200 each (C2: third-party SIP video takes RMS)
    h.sent.clear()
    h.feed(hotpath._request("INVITE", 5, 1, body=hotpath._SDP), hotpath.CALLER)  # a call left up
    invite = next(data for data, _ in h.sent if data.startswith(b"INVITE"))
    h.feed(hotpath._answer(invite, b"200 OK", body=hotpath._SDP), hotpath.ENDPOINTS)
    h.feed(hotpath._request("INVITE", 6, 1, body=hotpath._SDP), hotpath.CALLER)  # one still ringing
    h.feed(hotpath._request("FROBNICATE", 7, 1), hotpath.CALLER)  # method outside the label set: "other"
    h.feed(hotpath._request("OPTIONS", 8, 1), hotpath.CALLER)
    h.feed(b"NOT SIP AT ALL\r\n\r\n", hotpath.CALLER)  # malformed, dropped
    h.feed(hotpath._request("MESSAGE", 9, 1).replace(b"CSeq: 1 MESSAGE", b"CSeq: x MESSAGE"), hotpath.CALLER)
    return SimpleNamespace(metering=h.metering, sip=SimpleNamespace(counters=h.core.counters, core=h.core),
                           ras=None, pool_sync=None, latency=None, latency_ras=None)


def scripted_exposition(sources: list | None = None) -> str:
    """By default the node's own families only: the sources other parts register (usage peaks with
    their wall-clock instants, Smart Licensing) came later and are tested where they are written.
    ``sources``: the registered sources to keep for this render."""
    node = uvloop.run(_scripted_node())
    registered = metrics.EXTRA_FAMILY_SOURCES[:]
    metrics.EXTRA_FAMILY_SOURCES[:] = sources or []
    try:
        return metrics.render(node).decode()
    finally:
        metrics.EXTRA_FAMILY_SOURCES[:] = registered


def test_r9_c2_exposition_for_a_scripted_sequence_is_unchanged():
    assert scripted_exposition() == GOLDEN.read_text()


if __name__ == "__main__":  # regenerate the golden file (only from the reference tree)
    print(scripted_exposition(), end="")


def test_another_family_source_is_one_line_and_a_failing_one_costs_only_its_own_families(caplog):
    """Other parts of the node (usage peaks, Smart Licensing) add families with ``register_source``."""
    from prometheus_client.core import GaugeMetricFamily

    seen = []

    def peaks(node, now):
        seen.append((node.metering.ledger.node, now))
        family = GaugeMetricFamily("meter_test_peak", "A family from another source.", labels=["license"])
        family.add_metric(["rms"], 2.5)
        yield family

    def broken(node, now):
        yield GaugeMetricFamily("meter_test_half", "Never written: its source fails.", value=1)
        raise RuntimeError("source down")

    metrics.register_source(peaks)
    metrics.register_source(broken)
    metrics.register_source(peaks)  # twice: still one set of its families
    try:
        text = scripted_exposition(sources=[s for s in metrics.EXTRA_FAMILY_SOURCES if s in (peaks, broken)])
        assert metrics.EXTRA_FAMILY_SOURCES.count(peaks) == 1
    finally:
        metrics.EXTRA_FAMILY_SOURCES.remove(peaks)
        metrics.EXTRA_FAMILY_SOURCES.remove(broken)
    golden = GOLDEN.read_text()
    assert text.startswith(golden)  # the node's own families first, unchanged
    assert text[len(golden):] == ('# HELP meter_test_peak A family from another source.\n'
                                  '# TYPE meter_test_peak gauge\n'
                                  'meter_test_peak{license="rms"} 2.5\n')
    assert len(seen) == 1 and seen[0][0] == "hotpath" and seen[0][1] > 0
    assert "metrics.source_failed" in caplog.text
