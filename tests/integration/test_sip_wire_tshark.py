"""tshark, an independent decoder, reads what the node puts on the wire: the proxy's edits (Via
pushed, Record-Route added, Max-Forwards decremented) and a refusal's 503 with its Warning."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time

import pytest

from tests.integration.peers import MeterProcess, wait_until
from tests.integration.test_metering_calls import SDP_ANSWER, SDP_OFFER, Callee, call, hang_up
from tests.integration.test_metering_prometheus import register
from tests.sipclient import SipUA

pytestmark = pytest.mark.integration
FIELDS = ["frame.number", "udp.srcport", "udp.dstport", "sip.Method", "sip.Status-Code", "sip.Via",
          "sip.Record-Route", "sip.Max-Forwards", "sip.Warning", "sip.Call-ID"]


def test_c2_proxy_edits_and_refusal_decoded_by_tshark(tmp_path):
    tshark = shutil.which("tshark")
    assert tshark, "tshark not found: install Debian's tshark package (make test does)"
    node = MeterProcess(tmp_path / "wire", licensing={"enforcement": "enforce"}, zones=[])
    node.install_keys({"ROOM": 2, "RMS": 1})
    node.start()
    pcap = tmp_path / "sip.pcap"
    capture = subprocess.Popen([tshark, "-i", "lo", "-f", f"udp port {node.sip_port}", "-w", str(pcap), "-q"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: pcap.exists(), 20, "tshark to start capturing")
        time.sleep(1.0)  # dumpcap writes the file header before its filter is live

        async def scenario():
            proxy = ("127.0.0.1", node.sip_port)
            alice = await SipUA.open("alice", proxy, domain="lab.test")
            bob = await SipUA.open("bob", proxy, domain="lab.test")
            carol = await SipUA.open("carol", proxy, domain="lab.test")
            for ua in (alice, bob):
                assert (await register(ua, "PolycomRealPresenceGroup500/5.0.1")).status == 200
            refused = await register(carol, "PolycomRealPresenceGroup500/5.0.1")
            assert refused.status == 503
            callee = Callee(bob, SDP_ANSWER)
            final, dialog = await call(alice, bob.aor, SDP_OFFER)
            assert final.status == 200
            await hang_up(alice, dialog)
            callee.close()
            for ua in (alice, carol):
                ua.close()
            return final.call_id

        call_id = asyncio.run(scenario())
        time.sleep(1.0)
    finally:
        capture.terminate()
        capture.wait(10)
        node.stop()
    args = [tshark, "-r", str(pcap), "-Y", "sip", "-T", "fields", "-E", "separator=|", "-E", "occurrence=a"]
    for f in FIELDS:
        args += ["-e", f]
    out = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rows = [dict(zip(FIELDS, line.split("|"))) for line in out.stdout.splitlines()]
    sent = [r for r in rows if r["udp.srcport"] == str(node.sip_port)]
    assert sent, f"no SIP from the node in the capture: {out.stdout[:2000]}"
    # The INVITE the node forwarded to bob: two Vias (ours on top), our Record-Route, Max-Forwards 69.
    invite = next(r for r in sent if r["sip.Method"] == "INVITE" and r["sip.Call-ID"] == call_id)
    vias = invite["sip.Via"].split(",")
    assert len(vias) == 2 and f"127.0.0.1:{node.sip_port}" in vias[0]
    assert f"127.0.0.1:{node.sip_port}" in invite["sip.Record-Route"]
    assert invite["sip.Max-Forwards"] == "69"
    # The refusal, as tshark reads it: 503 with a 399 Warning naming the exhausted license.
    refusal = next(r for r in sent if r["sip.Status-Code"] == "503")
    assert refusal["sip.Warning"].startswith(f"399 127.0.0.1:{node.sip_port}") and "room_exhausted" in refusal["sip.Warning"]
    # Every message the node sent decodes without tshark flagging it malformed.
    expert = subprocess.run([tshark, "-r", str(pcap), "-Y", f"_ws.malformed && udp.srcport == {node.sip_port}"],
                            capture_output=True, text=True, timeout=60)
    assert expert.stdout.strip() == "", expert.stdout
