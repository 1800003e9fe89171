"""The node against sipsak (Debian `sipsak`), a SIP test tool written by others: its OPTIONS ping,
its usrloc mode (REGISTER with a Contact, then Expires: 0), its flood mode and its
randtrash mode (OPTIONS with ever more randomly broken characters, a parser torture).

sipsak's exit status: 0 when a 200 was received, 1 for another final answer, 3 for no answer."""

from __future__ import annotations

import subprocess

import pytest

from tests.integration.conftest import need
from tests.integration.peers import MeterProcess, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(params=[1, 2], ids=["1-worker", "2-workers"])
def node(tmp_path, request):
    sip = {"min_expires": 60} if request.param == 1 else {"min_expires": 60, "workers": 2, "tcp": False}
    meter = MeterProcess(tmp_path / "node", sip=sip).start()
    yield meter
    meter.stop()


def sipsak(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([need("sipsak"), *args], capture_output=True, text=True, timeout=timeout,
                          errors="replace")


def test_options_ping_is_answered_200(node):
    result = sipsak("-vv", "-s", f"sip:127.0.0.1:{node.sip_port}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SIP/2.0 200 OK" in result.stdout and "Allow: " in result.stdout


def test_usrloc_register_query_unregister_cycle_and_its_license(node):
    # R9: one alias, one registration license while bound; R2: sipsak is no EX/DX/Movi, so a room.
    aor = f"sip:sipsak-user@127.0.0.1:{node.sip_port}"
    result = sipsak("-U", "-x", "120", "-C", "sip:sipsak-user@127.0.0.1:5999", "-s", aor, "-v")
    assert result.returncode == 0, result.stdout + result.stderr
    regs = node.api("registrations")
    assert [r["alias"] for r in regs] == ["sip:sipsak-user@127.0.0.1"], regs
    assert regs[0]["license"] == "room" and "R2" in regs[0]["rules"]

    # Unregister (expires 0) as sipsak does it: the binding and its license go.
    result = sipsak("-U", "-x", "0", "-C", "sip:sipsak-user@127.0.0.1:5999", "-s", aor, "-v")
    assert result.returncode == 0, result.stdout + result.stderr
    wait_until(lambda: node.api("registrations") == [], 5, "the unregister to release the alias")


def test_too_brief_registration_is_answered_423_with_min_expires(node):
    # sipsak registers for 15 s unless told otherwise; the node's Min-Expires is 60 (RFC 3261 §10.3).
    result = sipsak("-U", "-vv", "-s", f"sip:brief@127.0.0.1:{node.sip_port}")
    assert result.returncode == 1
    said = result.stdout + result.stderr  # sipsak prints what it received on stderr
    assert "423 Interval Too Brief" in said and "Min-Expires: 60" in said
    assert node.api("registrations") == []


def test_flood_and_randtrash_do_not_hurt_the_node(node):
    flood = sipsak("-F", "-e", "3000", "-s", f"sip:127.0.0.1:{node.sip_port}", timeout=120)
    assert flood.returncode in (0, 3), flood.stdout + flood.stderr
    # randtrash stops at the first request it gets no answer to (an unparseable one, or one whose
    # reply it cannot match); run it a few times for a spread of broken messages.
    for _ in range(5):
        try:
            sipsak("-R", "-s", f"sip:127.0.0.1:{node.sip_port}", timeout=30)
        except subprocess.TimeoutExpired:
            pass  # still torturing after 30 s: enough of it; what counts is the node afterwards
    stats = node.api("sip")
    assert stats["internal_errors"] == 0, stats
    assert stats["malformed_answered"] > 0, stats  # broken requests got their 400 with a reason
    assert node.proc.poll() is None, node.log_tail()
    result = sipsak("-s", f"sip:127.0.0.1:{node.sip_port}")
    assert result.returncode == 0, "the node stopped answering OPTIONS after the torture"
