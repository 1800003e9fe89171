"""The sizing report (`meter report`) and the peak metrics, from injected history (C4, P1)."""

import json
import xml.etree.ElementTree as ET

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from meter.admin.report import build_report, render, weighted_percentile
from meter.cli import main
from meter.licensing.usage import UsageMeter
from meter.metering.usage_metrics import usage_families
from meter.store.usage_history import UsageHistory
from tests.integration.peers import promtool_check_metrics

T0 = 1_700_000_040.0


def minute(history, lic, at, mx, mn=0.0, capacity=10, refusals=0, would=0, cluster=None):
    history.record({lic: {"start": at, "max": mx, "min": mn, "cluster_max": mx if cluster is None else cluster,
                          "capacity": capacity, "refusals": refusals, "would_refuse": would}})


@pytest.fixture
def history(tmp_path):
    with UsageHistory(tmp_path) as h:
        for i in range(100):  # 100 minutes of RMS: 2 most of the time, 5 for 4 minutes, one spike of 12.5
            value = 12.5 if i == 50 else 5.0 if i % 25 == 0 else 2.0
            minute(h, "rms", T0 + 60 * i, value)
        minute(h, "room", T0, 3.0, capacity=3, refusals=2)
        minute(h, "desktop", T0, 0.0, capacity=0, would=4, cluster=1.0)
        yield h


def test_p1_c4_report_peak_percentiles_hours_above_capacity_and_the_answer(history):
    """P1, C4: peak with its minute, time-weighted p95/p99 of the minute maxima, hours above capacity, need."""
    report = build_report(history, {"rms": 10, "room": 3, "desktop": 0}, T0, T0 + 6000)
    rms = report["licenses"]["rms"]
    assert (rms["peak"], rms["peak_at"], rms["need"]) == (12.5, T0 + 3000, 13)  # 12.5 RMS -> 13 to buy
    assert (rms["p95"], rms["p99"]) == (2.0, 5.0)  # 96 of 100 minutes at 2, 3 at 5, one at 12.5
    assert rms["hours_above_capacity"] == pytest.approx(1 / 60)
    room = report["licenses"]["room"]
    assert (room["need"], room["need_is_lower_bound"], room["refusals"]) == (4, True, 2)  # refused at 3: needs 4+
    desktop = report["licenses"]["desktop"]
    assert (desktop["would_refuse"], desktop["need"]) == (4, 1)
    assert (report["licenses"]["cmr"]["peak"], report["licenses"]["cmr"]["peak_at"]) == (0.0, None)  # never used
    assert report["answer"].startswith(
        "to carry this traffic with no refusal you need RMS >= 13, room >= 4, desktop >= 1")
    assert "at least: room" in report["answer"]


def test_weighted_percentile_weighs_each_bucket_by_the_time_it_covers():
    rows = [{"cluster_max": 9.0, "seconds": 3600}, {"cluster_max": 1.0, "seconds": 60}]
    assert weighted_percentile(rows, 0.95) == 9.0  # the hour of 9 is 98% of the time
    assert weighted_percentile([], 0.99) == 0.0


def test_renderers_text_csv_json_and_a_self_contained_html_with_svg_plots(history):
    report = build_report(history, {"rms": 10, "room": 3}, T0, T0 + 6000)
    text = render(report, "text")
    assert "time-weighted" in text and report["answer"] in text
    rms_line = next(line for line in text.splitlines() if line.startswith("rms "))
    assert rms_line.split()[:3] == ["rms", "10", "12.5"]
    csv_lines = render(report, "csv").splitlines()
    assert csv_lines[0].startswith("license,capacity,peak,peak_at") and csv_lines[1].startswith("rms,10,12.5,")
    assert json.loads(render(report, "json"))["need"]["rms"] == 13
    page = render(report, "html")
    assert "http://" not in page and "https://" not in page  # nothing fetched when opened
    assert "<script" not in page and "<link" not in page and "<style>" in page
    svgs = [page[i:page.index("</svg>", i) + 6] for i in range(len(page)) if page.startswith("<svg", i)]
    assert len(svgs) == 4
    plot = ET.fromstring(svgs[0])  # well-formed SVG: the RMS use line and its capacity line
    assert plot.find("polyline").get("class") == "use" and len(plot.find("polyline").get("points").split()) == 100
    assert plot.find("line[@class='capacity']") is not None
    with pytest.raises(ValueError, match="format"):
        render(report, "pdf")


def test_meter_report_reads_a_state_directory_read_only_and_refuses_a_missing_one(history, tmp_path, capsys):
    assert main(["report", "--state-dir", str(tmp_path / "none")]) == 2
    assert "no such state directory" in capsys.readouterr().err and not (tmp_path / "none").exists()
    assert main(["report", "--state-dir", str(tmp_path), "--from", str(T0), "--to", "2023-11-15T00:00",
                 "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["licenses"]["rms"]["peak"] == 12.5
    assert main(["report", "--state-dir", str(tmp_path), "--from", "yesterday"]) == 2
    assert "expected YYYY-MM-DD" in capsys.readouterr().err


def test_peak_metrics_pass_promtool_and_carry_the_peaks_and_their_instants():
    usage = UsageMeter("n1", T0)
    usage.license_changed("rms", 3, T0 + 1)  # 1.5 RMS in half units
    usage.call_changed("video", 1, T0 + 1)
    usage.reset_peaks(T0 + 2)
    registry = CollectorRegistry()

    class Collector:
        def collect(self):
            return usage_families(usage.view(T0 + 3))

    registry.register(Collector())
    text = generate_latest(registry).decode()
    promtool_check_metrics(text)
    assert 'meter_license_peak{license="rms"} 1.5' in text
    assert 'meter_license_peak_timestamp_seconds{license="rms"} 1.700000041e+09' in text
    assert 'meter_cluster_license_peak{license="rms"} 1.5' in text
    assert 'meter_license_peak_since_reset{license="rms"} 1.5' in text
    assert 'meter_calls_peak{class="video"} 1.0' in text
    assert "meter_license_peaks_reset_timestamp_seconds" in text
    assert 'meter_license_peak_timestamp_seconds{license="room"}' not in text  # no peak yet: no instant
