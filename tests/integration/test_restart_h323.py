"""H.323 RAS registrations and calls that survive a restart, with a real node process (issue 10 item 5).

ENDPOINTS endpoints register over RAS (one of them with two aliases), CALLS of them are admitted to
a third-party SIP zone (one RMS each, C3/C9) and two more place a call to each other (C1, no RMS);
the node is killed with SIGKILL and started again on the same state directory. Then: the admin
API's registrations, calls and licenses in use are what they were; a keep-alive RRQ is answered RCF
(not RRJ fullRegistrationRequired, H.323 §7.2.2) and tshark reads that RCF as well-formed H.225.0;
an ARQ from a restored endpoint is admitted; a DRQ of a restored call releases its RMS; every
endpoint registering again in full changes no count (R9: the restored registration is the same
one). Last, a graceful restart (SIGTERM) keeps them too and sends the endpoints no URQ.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import sqlite3

import pytest

from meter.codecs import ras
from tests.integration.peers import MeterProcess, wait_until
from tests.integration.test_ras_tshark import _h225, _kind, _problems, _shows, _tshark_packets, pcap
from tests.rasclient import RasClient

pytestmark = pytest.mark.integration

ENDPOINTS = 6
CALLS = 3
ITSP = [("url-ID", "+4930@itsp.example")]
ITSP_ADDRESS = ("127.0.0.1", 5070)


def in_use(node: MeterProcess) -> dict[str, float]:
    licenses = node.api("licenses")["licenses"]
    return {name: licenses[name]["in_use"] for name in ("room", "desktop", "rms")}


def registrations(node: MeterProcess) -> list[tuple]:
    return sorted((r["alias"], r["protocol"], r["license"], r["device"], tuple(r["rules"]), r["pending"])
                  for r in node.api("registrations"))


def calls(node: MeterProcess) -> list[tuple]:
    return sorted((c["call_id"], c["protocol"], c["caller"], c["callee"], c["state"], c["call_class"], c["units"],
                   tuple(c["rules"])) for c in node.api("calls"))


def stored(node: MeterProcess) -> tuple[int, int]:
    """(registrations, calls) the node has written to its state database so far."""
    db = sqlite3.connect(node.state_dir / "licensing.sqlite", timeout=5)
    try:
        return tuple(db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
                     for table in ("h323_registrations", "h323_calls"))
    finally:
        db.close()


def raw_answer(gatekeeper: tuple[str, int], data: bytes) -> tuple[bytes, tuple[str, int], tuple[str, int]]:
    """Send one RAS request from a plain UDP socket; the answer's bytes as they came, and both addresses."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.bind(("127.0.0.1", 0))
        sock.sendto(data, gatekeeper)
        answer, source = sock.recvfrom(65535)
        return answer, sock.getsockname(), source


def test_principle5_r9_c3_kill_9_then_restart_keeps_h323_registrations_calls_and_counts(tmp_path):
    node = MeterProcess(tmp_path / "node", licensing={"enforcement": "enforce"}, zones=[
        {"name": "itsp", "kind": "third_party_sip", "match": ["domain:itsp.example"]}])
    node.install_keys({"ROOM": ENDPOINTS + 5, "RMS": 10})
    node.start()
    gk = ("127.0.0.1", node.ras_port)

    async def scenario():
        endpoints = [await RasClient.open(gk, [("h323-ID", f"room{i}"), ("dialledDigits", f"10{i:02d}")][:1 + (i == 0)])
                     for i in range(ENDPOINTS)]
        try:
            for ep in endpoints:
                assert (await ep.register(ttl=600)).short == "RCF"
            itsp_calls = []
            for ep in endpoints[:CALLS]:
                acf, call = await ep.admit(ITSP, dest_address=ITSP_ADDRESS)
                assert acf.short == "ACF", acf
                itsp_calls.append(call)
            caller, callee = endpoints[-2], endpoints[-1]  # C1: registered to registered, no RMS
            acf, local = await caller.admit([("h323-ID", f"room{ENDPOINTS - 1}")])
            assert acf.short == "ACF"
            acf, _ = await callee.admit([("h323-ID", f"room{ENDPOINTS - 2}")], call_id=local.call_id, answer=True)
            assert acf.short == "ACF"

            before = in_use(node)
            assert before == {"room": ENDPOINTS + 1, "desktop": 0, "rms": CALLS}
            regs, admitted = registrations(node), calls(node)
            assert len(regs) == ENDPOINTS + 1 and len(admitted) == CALLS + 1
            # write-behind: every change reaches the database within a flush interval (0.2 s)
            wait_until(lambda: stored(node) == (ENDPOINTS, CALLS + 1), 10, "the state database to hold every change")

            node.proc.send_signal(signal.SIGKILL)  # kill -9 mid-call: no shutdown, no release, no URQ
            node.proc.wait(10)
            node.log.close()
            node.start()
            assert "state.h323_restored" in node.log_path.read_text()

            assert in_use(node) == before
            assert registrations(node) == regs and calls(node) == admitted

            # H.323 §7.2.2: a keep-alive of a restored endpoint is confirmed, not fullRegistrationRequired
            for ep in endpoints:
                answer = await ep.keep_alive(ttl=600)
                assert answer.short == "RCF", answer
            # ... and its RCF, as the node sends it, is well-formed H.225.0 for Wireshark's dissector
            seq, data = endpoints[0].ep.keep_alive(ttl=600)
            rcf, ep_address, gk_address = raw_answer(gk, data)
            # (tshark knows RAS by its well-known port 1719: the frame says the node's answer came from there)
            [packet] = _tshark_packets([pcap.Datagram(rcf, src=(gk_address[0], 1719), dst=ep_address)], tmp_path)
            proto = _h225(packet)
            assert _kind(proto) == "registrationConfirm" and not _problems(packet)
            assert _shows(proto, "h225.requestSeqNum") == [str(seq)]
            assert _shows(proto, "h225.endpointIdentifier") == [endpoints[0].ep.endpoint_id]
            assert ras.decode(rcf).endpoint_identifier == endpoints[0].ep.endpoint_id

            # an ARQ from a restored endpoint is admitted (not ARJ callerNotRegistered), and charged
            acf, extra = await endpoints[CALLS].admit(ITSP, dest_address=ITSP_ADDRESS)
            assert acf.short == "ACF", acf
            wait_until(lambda: in_use(node)["rms"] == CALLS + 1, 10, "the new call's RMS")
            assert (await endpoints[CALLS].disengage(extra)).short == "DCF"

            # a DRQ of a call admitted before the restart releases its RMS (principle 4)
            assert (await endpoints[0].disengage(itsp_calls[0])).short == "DCF"
            wait_until(lambda: in_use(node)["rms"] == CALLS - 1, 10, "the DRQ to release one RMS")
            assert len(calls(node)) == CALLS

            # R9: every endpoint registers again in full: the same registrations, nothing charged twice
            for ep in endpoints:
                answer = await ep.register(ttl=600)
                assert answer.short == "RCF", answer
            assert in_use(node) == {"room": ENDPOINTS + 1, "desktop": 0, "rms": CALLS - 1}
            assert registrations(node) == regs

            # a graceful restart keeps them as well, and tells the endpoints nothing (no URQ)
            wait_until(lambda: stored(node) == (ENDPOINTS, CALLS), 10, "the state database to catch up")
            after = in_use(node)
            assert node.stop() == 0, node.log_tail()
            node.start()
            assert in_use(node) == after and registrations(node) == regs
            await asyncio.sleep(0.5)  # anything the shutdown sent has arrived by now
            assert not any(m.short == "URQ" for ep in endpoints for m in ep.inbox)
            assert (await endpoints[1].disengage(itsp_calls[1])).short == "DCF"
            wait_until(lambda: in_use(node)["rms"] == CALLS - 2, 10, "the DRQ to release one RMS")
        finally:
            for ep in endpoints:
                ep.close()

    try:
        asyncio.run(scenario())
    finally:
        rc = node.stop()
    assert rc == 0, node.log_tail()
