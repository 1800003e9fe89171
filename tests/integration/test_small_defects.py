"""Issue 10 item 8 against a running `meter run` process: an RFC 4475 unksm2 REGISTER sent by sipsak
gets 400; a User-Agent with control bytes cannot forge log lines; an H.323 ARQ whose endpointIdentifier
is NUL-padded to 100 characters (as OpenH323-based endpoints send it) is admitted and metered; the
admin server beyond loopback asks for its bearer token, and the `meter` CLI passes it."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.integration.conftest import need
from tests.integration.peers import MeterProcess, wait_until
from tests.rasclient import RasClient

pytestmark = pytest.mark.integration

RFC4475 = str(Path(__file__).resolve().parents[1] / "data" / "rfc4475")


def sipsak(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([need("sipsak"), *args], capture_output=True, timeout=60)


@pytest.fixture
def node(tmp_path):
    meter = MeterProcess(tmp_path / "node").start()
    yield meter
    meter.stop()


def test_unksm2_register_sent_by_sipsak_gets_400(node):
    """RFC 4475 §3.3.4 unksm2 (RFC 3261 §10.3): a REGISTER whose To is not a SIP/SIPS URI."""
    result = sipsak("-vv", "-f", f"{RFC4475}/unksm2.dat", "-s", f"sip:127.0.0.1:{node.sip_port}")
    said = (result.stdout + result.stderr).decode(errors="replace")
    assert "SIP/2.0 400 Bad Request - To is not a SIP or SIPS URI" in said, said
    assert node.api("registrations") == []
    wait_until(lambda: "sip.register.refused" in node.log_path.read_text(), 10, "the refusal's log line")
    line = next(x for x in node.log_path.read_text().splitlines() if "sip.register.refused" in x)
    assert "source=udp:127.0.0.1:" in line and "user_agent=" in line


def test_too_many_header_lines_sent_by_sipsak_get_the_documented_400(node, tmp_path):
    """[sip] max_headers (256, config/meter.toml: "400 beyond"): answered, not dropped."""
    pad = "".join(f"X{i}:1\r\n" for i in range(260))  # short lines: sipsak sends at most 4096 bytes
    message = ("OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKmany1\r\n"
               "Max-Forwards: 70\r\nFrom: <sip:scan@lab.test>;tag=1\r\nTo: <sip:127.0.0.1>\r\n"
               f"Call-ID: many1@127.0.0.1\r\nCSeq: 1 OPTIONS\r\n{pad}Content-Length: 0\r\n\r\n")
    path = tmp_path / "many.sip"
    path.write_bytes(message.encode())
    result = sipsak("-vv", "-L", "-f", str(path), "-s", f"sip:127.0.0.1:{node.sip_port}")
    said = (result.stdout + result.stderr).decode(errors="replace")
    assert "SIP/2.0 400 Bad Request - too many header fields" in said, said[-2000:]


def test_control_bytes_in_a_user_agent_stay_escaped_on_one_log_line(node, tmp_path):
    """A REGISTER (sent by sipsak as is) with ESC, BEL, DEL and C1 NEL in its User-Agent: the log line
    about it carries them as \\xNN, and nothing in the log starts a line the node did not write."""
    message = (
        "REGISTER sip:lab.test SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKctl1\r\n"
        "Max-Forwards: 70\r\nFrom: <sip:mallory@lab.test>;tag=1\r\nTo: <soap.beep://mallory@lab.test>\r\n"
        "Call-ID: ctl1@127.0.0.1\r\nCSeq: 1 REGISTER\r\nContact: <sip:mallory@127.0.0.1:9>\r\n"
        "User-Agent: evil\x1b[2J\x07\x7f\u0085 2026-01-01T00:00:00.000Z info meter.sip forged\r\n"
        "Content-Length: 0\r\n\r\n")
    path = tmp_path / "ctl.sip"
    path.write_bytes(message.encode())
    sipsak("-L", "-f", str(path), "-s", f"sip:127.0.0.1:{node.sip_port}")
    wait_until(lambda: b"evil" in node.log_path.read_bytes(), 10, "the node to log the User-Agent")
    log = node.log_path.read_bytes()
    for raw in (b"\x1b", b"\x07", b"\x7f", "\u0085".encode()):
        assert raw not in log
    (line,) = [x for x in log.decode().splitlines() if "evil" in x]
    # a value with a space is written as a JSON string (meter.logs): decoded, the escapes are \xNN text
    value = json.loads(line.split(" user_agent=", 1)[1])
    assert value == "evil\\x1b[2J\\x07\\x7f\\x85 2026-01-01T00:00:00.000Z info meter.sip forged"
    assert not any(x.startswith("2026-01-01T00:00:00.000Z") for x in log.decode().splitlines())


def test_h323_arq_with_an_endpoint_identifier_padded_with_nuls_is_admitted(node):
    """Before: ARJ callerNotRegistered for the padded form of an endpointIdentifier the node assigned."""
    gk = ("127.0.0.1", node.ras_port)

    async def scenario():
        alice = await RasClient.open(gk, [("h323-ID", "alice")])
        bob = await RasClient.open(gk, [("h323-ID", "bob")])
        try:
            assert (await alice.register()).short == "RCF" and (await bob.register()).short == "RCF"
            eid = alice.ep.endpoint_id
            acf, _ = await alice.admit([("h323-ID", "bob")], endpoint_id=eid + "\0" * (100 - len(eid)))
            return acf
        finally:
            alice.close()
            bob.close()

    acf = asyncio.run(scenario())
    assert acf.short == "ACF", acf
    calls = node.api("calls")
    assert [(c["protocol"], c["caller"], c["callee"]) for c in calls] == [("h323", "alice", "bob")]


def _get(url: str, token: str | None = None) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status
    except urllib.error.HTTPError as err:
        return err.code


def test_admin_beyond_loopback_requires_the_token_and_says_so(tmp_path):
    meter = MeterProcess(tmp_path / "open", admin={"host": "0.0.0.0"}).start()
    try:
        token_file = meter.state_dir / "admin-token"
        assert stat.S_IMODE(os.stat(token_file).st_mode) == 0o600
        token = token_file.read_text().strip()
        log = meter.log_path.read_text()
        assert "admin.listening" in log and "auth=bearer" in log and f"token_from={token_file}" in log
        assert token not in log
        assert _get(meter.url("/api/registrations")) == 401
        assert _get(meter.url("/api/calls"), "wrong") == 401
        assert _get(meter.url("/api/registrations"), token) == 200
        assert _get(meter.url("/metrics")) == 200  # Prometheus scrapes as before
        admin = f"http://127.0.0.1:{meter.admin_port}"
        cli = [sys.executable, "-m", "meter", "registrations", "--admin", admin, "--json"]
        env = {k: v for k, v in os.environ.items() if k != "METER_ADMIN_TOKEN"}
        assert subprocess.run(cli, capture_output=True, text=True, timeout=60, env=env).returncode == 1
        ok = subprocess.run(cli, capture_output=True, text=True, timeout=60, env={**env, "METER_ADMIN_TOKEN": token})
        assert ok.returncode == 0 and json.loads(ok.stdout) == []
    finally:
        meter.stop()


def test_admin_on_loopback_reads_are_open_state_changes_need_the_token(node):
    """Contract B (issue 12): on loopback reads stay open; a state change needs the token there too,
    so the node makes one (0600) at first start."""
    assert _get(node.url("/api/registrations")) == 200
    token_file = node.state_dir / "admin-token"
    assert stat.S_IMODE(os.stat(token_file).st_mode) == 0o600
    request = urllib.request.Request(node.url("/api/v1/usage/reset-peaks"), data=b"", method="POST")
    try:
        urllib.request.urlopen(request, timeout=10)
        status = 200
    except urllib.error.HTTPError as err:
        status = err.code
    assert status == 401
    assert 'protected="state changes"' in node.log_path.read_text()
