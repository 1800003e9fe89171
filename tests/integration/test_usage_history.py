"""Usage history and peaks with a real node process and real SIP calls (issue 12 items 1-3).

A spike of three calls to a third-party SIP trunk (one RMS each, C2, C3) is set up and hung up at
once. The node is stopped (SIGTERM), started again, gets a new room peak, is killed (SIGKILL) after
its next tick and started again. The state database then holds the first run's minute bucket and
the peaks with their instants, restored at each start rather than started afresh; `meter report`
(offline, read-only) shows the spike and the licenses needed.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
import sys

import pytest

from tests.integration.peers import MeterProcess, wait_until
from tests.integration.test_metering_calls import ROOM, Callee, call, hang_up
from tests.integration.test_metering_prometheus import register
from tests.sipclient import SDP_ANSWER, SDP_OFFER, SipUA

pytestmark = pytest.mark.integration


def stored_peaks(node: MeterProcess) -> dict:
    with sqlite3.connect(node.state_dir / "licensing.sqlite", timeout=5) as db:
        row = db.execute("SELECT state FROM usage_peaks").fetchone()
    db.close()
    return json.loads(row[0]) if row else {}


def rms_buckets(node: MeterProcess) -> list[tuple[float, float, float]]:
    with sqlite3.connect(node.state_dir / "licensing.sqlite", timeout=5) as db:
        rows = db.execute("SELECT at, max, min FROM usage_buckets WHERE license = 'rms' ORDER BY at").fetchall()
    db.close()
    return rows


def report(node: MeterProcess, fmt: str) -> str:
    result = subprocess.run([sys.executable, "-m", "meter", "report", "--config", str(node.config), "--format", fmt],
                            capture_output=True, text=True, timeout=60, cwd=node.workdir)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_c2_spike_of_3_calls_survives_stop_and_kill_9_as_history_peaks_and_report(tmp_path):
    """C2, C3: three calls up for an instant are a peak of 3 RMS, kept across a stop and a kill -9."""
    async def scenario():
        far = await SipUA.open("itsp", ("127.0.0.1", 9), domain="far.example")
        node = MeterProcess(tmp_path / "node", zones=[
            {"name": "itsp", "kind": "third_party_sip", "match": ["domain:itsp.example"],
             "target": f"127.0.0.1:{far.port}"}])
        node.install_keys({"ROOM": 10, "RMS": 10})
        node.start()
        trunk = Callee(far, SDP_ANSWER)
        proxy = ("127.0.0.1", node.sip_port)
        endpoints = [await SipUA.open(f"ep{i}", proxy, domain="lab.test") for i in range(4)]
        try:
            for ua in endpoints[:3]:
                assert (await register(ua, ROOM, expires=600)).status == 200
            # the spike: three calls up at once, then all hung up
            dialogs = []
            for i, ua in enumerate(endpoints[:3]):
                final, dialog = await call(ua, f"sip:+4930{i:04d}@itsp.example", SDP_OFFER)
                assert final.status == 200, final
                dialogs.append(dialog)
            for ua, dialog in zip(endpoints, dialogs):
                await hang_up(ua, dialog)
            wait_until(lambda: node.api("licenses")["licenses"]["rms"]["in_use"] == 0, 10, "the calls released")

            assert node.stop() == 0  # SIGTERM: the current minute and the peaks are written
            first = stored_peaks(node)
            rms_peak, rms_peak_at = first["licenses"]["rms"]["peak"]
            assert rms_peak == 6  # half units: 3 RMS (C4 keeps RMS in halves)
            assert first["calls"]["video"][0] == 3
            buckets = rms_buckets(node)
            assert buckets and max(mx for _, mx, _ in buckets) == 3.0 and buckets[-1][2] == 0.0

            # second run: a new room peak; its peaks are written at the next tick, then kill -9
            node.start()
            assert (await register(endpoints[3], ROOM, expires=600)).status == 200
            wait_until(lambda: stored_peaks(node)["licenses"]["room"]["peak"][0] == 4, 10,
                       "the new room peak written at a tick")
            second = stored_peaks(node)
            assert second["licenses"]["rms"]["peak"] == [6, rms_peak_at]  # restored at start, not started afresh
            node.proc.send_signal(signal.SIGKILL)
            node.proc.wait(10)
            node.log.close()

            node.start()  # third run, then a graceful stop: nothing recorded before is lost
            assert node.stop() == 0
            third = stored_peaks(node)
            assert third["licenses"]["rms"]["peak"] == [6, rms_peak_at]
            assert third["licenses"]["room"]["peak"] == second["licenses"]["room"]["peak"]
            assert [b for b in rms_buckets(node) if b[0] == buckets[0][0]][0][1] == 3.0

            doc = json.loads(report(node, "json"))
            rms = doc["licenses"]["rms"]
            assert (rms["peak"], rms["need"], rms["capacity"]) == (3.0, 3, 10)
            assert doc["licenses"]["room"]["peak"] >= 3.0
            text = report(node, "text")
            assert "RMS >= 3" in text and next(line for line in text.splitlines()
                                               if line.startswith("rms ")).split()[2] == "3"
        finally:
            trunk.close()
            for ua in endpoints:
                ua.close()
            if node.proc is not None and node.proc.poll() is None:
                node.stop()

    asyncio.run(scenario())
