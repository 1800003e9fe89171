"""One CLI family, never tied to the current directory: every command run from an empty directory
creates nothing and, with the node down and no state, says why in one line; with a node running,
`--config` (its config file) is all a command needs, and listings come live from its admin API."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.peers import MeterProcess, free_port
from tests.integration.test_metering_calls import AUDIO, Callee, call, hang_up
from tests.integration.test_metering_prometheus import register
from tests.sipclient import SDP_ANSWER, SDP_OFFER, SipUA

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

# Every command that reads or changes a node or its state (init/run/restore excepted: they are the
# ones allowed to create a state directory).
COMMANDS = [
    ["licenses"], ["calls"], ["registrations"],
    *(["xstatus", what] for what in ("licenses", "resourceusage", "registrations", "calls", "alarms", "options")),
    ["xcommand", "resetpeaks"], ["xcommand", "optionkeyadd", "MTR1-AAAA"], ["xcommand", "optionkeydelete", "3"],
    ["xconfiguration", "option", "1", "key", "MTR1-AAAA"], ["xconfiguration", "option", "1", "key", ""],
    ["mode"], ["mode", "smart"], ["factory-reset", "--yes"],
    ["keys", "issue", "--option", "RMS"], ["keys", "issuer-init"], ["keys", "trust", "missing.pub"],
    ["users", "list"], ["users", "remove", "bob"], ["backup", "b.sqlite"],
]


def meter(*args: str, cwd: Path, env: dict | None = None, stdin: str = "") -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("METER_")}
    environ["PYTHONPATH"] = str(ROOT)
    # The embedded default's state lives in $XDG_STATE_HOME/meter: point it at the test's own place.
    environ["XDG_STATE_HOME"] = str(cwd.parent / "xdg-state")
    environ.update(env or {})
    return subprocess.run([sys.executable, "-m", "meter", *args], capture_output=True, text=True,
                          timeout=60, cwd=cwd, env=environ, input=stdin)


def test_every_command_from_an_empty_directory_creates_nothing_and_fails_in_one_line(tmp_path):
    """With no node answering and no state: exit 1, one line on stderr, no traceback, and the
    current directory still empty (no ./state made up with a new serial and issuer key: K2)."""
    empty = tmp_path / "empty"
    empty.mkdir()
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    for argv in COMMANDS:
        result = meter(*argv, cwd=empty, env={"METER_ADMIN": closed})
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1, (argv, result.stdout, result.stderr)
        assert len(lines) == 1 and lines[0].startswith("meter"), (argv, result.stderr)
        assert "Traceback" not in result.stderr
        assert list(empty.iterdir()) == [], (argv, list(empty.iterdir()))
    node_down = meter("xstatus", "options", cwd=empty, env={"METER_ADMIN": closed}).stderr
    assert f"cannot reach the node at {closed}" in node_down and "meter init" in node_down
    assert "licensing.sqlite" in meter("keys", "issue", "--option", "RMS", cwd=empty).stderr


def test_r9_c4_c5_a_running_node_is_asked_through_its_config_from_any_directory(tmp_path):
    """From an empty directory, `--config` (the node's own file) finds the admin API: registrations
    (R9) live right after the REGISTER, calls with RMS as licenses (C4, C5: 1 for video, 0.5 for an
    audio-only SIP call), option keys, alarms, every listing aligned and each with --json. Stopped,
    the same commands read its state directory instead, and say so."""
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    made = []

    async def scenario():
        itsp = await SipUA.open("itsp", ("127.0.0.1", 9), domain="far.example")
        node = MeterProcess(tmp_path / "node", zones=[{"name": "itsp", "kind": "third_party_sip",
                                                         "match": ["domain:itsp.example"],
                                                         "target": f"127.0.0.1:{itsp.port}"}])
        made.append(node)
        node.install_keys({"RMS": 10, "ROOM": 5})
        node.start()
        config = str(node.config)
        proxy = ("127.0.0.1", node.sip_port)
        alice = await SipUA.open("alice", proxy, domain="lab.test")
        bob = await SipUA.open("bob", proxy, domain="lab.test")
        assert (await register(alice, "PolycomRealPresenceGroup500/5.0.1")).status == 200
        assert (await register(bob, "PolycomRealPresenceGroup500/5.0.1")).status == 200
        licenses = meter("licenses", "--config", config, cwd=empty)
        bob_answers, itsp_answers = Callee(bob, SDP_ANSWER), Callee(itsp, SDP_ANSWER)
        dialogs = []
        for uri, offer in ((bob.aor, SDP_OFFER), ("sip:+4930111@itsp.example", SDP_OFFER),
                           ("sip:+4930222@itsp.example", AUDIO)):
            itsp_answers.answer = offer if offer is AUDIO else SDP_ANSWER
            final, dialog = await call(alice, uri, offer)
            assert final.status == 200
            dialogs.append(dialog)
        out = {what: meter("xstatus", what, "--config", config, cwd=empty)
               for what in ("registrations", "calls", "options", "alarms", "licenses")}
        out["calls_json"] = meter("calls", "--json", "--config", config, cwd=empty)
        out["options_json"] = meter("xstatus", "options", "--json", "--config", config, cwd=empty)
        for dialog in dialogs:
            await hang_up(alice, dialog)
        for ua in (bob_answers, itsp_answers, alice):
            ua.close()
        return node, licenses, out

    try:
        node, licenses, out = asyncio.run(scenario())
    finally:
        for n in made:
            n.stop()
    config = str(node.config)
    for result in (licenses, *out.values()):
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""  # asked the node: no fallback note
    room = next(line.split() for line in licenses.stdout.splitlines() if line.startswith("room"))
    assert room[:3] == ["room", "5", "2"], licenses.stdout  # keys 5, in use 2: live, not a 60 s old snapshot
    assert "[live" in licenses.stdout

    header, *rows = out["registrations"].stdout.splitlines()
    assert header.split()[:4] == ["ALIAS", "PROTOCOL", "DEVICE_CLASS", "LICENSE"]
    assert "(2 rows)" in out["registrations"].stdout
    # aligned: every row's LICENSE column starts where its header does
    col = header.index("LICENSE")
    assert all(r[col - 2:col] == "  " for r in rows[:-1])

    calls = {c["callee"]: c for c in json.loads(out["calls_json"].stdout)}
    assert calls["sip:bob@lab.test"]["licenses"] == 0  # C1: registered to registered
    assert calls["sip:+4930111@itsp.example"]["licenses"] == 1
    assert calls["sip:+4930222@itsp.example"]["licenses"] == 0.5  # C4: two audio-only SIP calls share one RMS
    assert "LICENSES" in out["calls"].stdout and " 0.5 " in out["calls"].stdout

    options = json.loads(out["options_json"].stdout)
    assert [item["status"] for item in options["items"]] == ["active", "active"]
    assert "Licenses in force: rms 10, room 5" in out["options"].stdout
    assert out["alarms"].stdout.split()[:3] == ["ID", "RULE", "SEVERITY"]

    stopped = meter("xstatus", "options", "--config", config, cwd=empty)
    assert stopped.returncode == 0 and "Option 2:" in stopped.stdout
    assert "cannot reach the node" in stopped.stderr and str(node.state_dir) in stopped.stderr
    assert list(empty.iterdir()) == []


def test_k4_xcommand_on_a_running_node_65th_and_66th_keys_peaks_reset_and_the_token(tmp_path):
    """K4 through the running node's API (the token read from its state directory): 64 keys in
    place, `xcommand optionkeyadd` puts a 65th (applied) and a 66th (listed as added, not processed);
    an altered spelling is refused with the verifier's reason; `xconfiguration option N` writes
    index N; `optionkeydelete` removes; `resetpeaks` answers; a wrong token is a 401 in one line."""
    from meter.licensing.keys import issue_key
    from meter.store.licensing import load_issuer
    from meter.store.node_licensing import NodeLicensing

    node = MeterProcess(tmp_path / "node")
    with NodeLicensing.open(node.state_dir) as licensing:
        issuer, serial = load_issuer(licensing.store.issuer_key_path), licensing.serial
        keys = [issue_key(issuer, serial=serial, option="RMS", quantity=1, issued_at=1_700_000_000 + n)
                for n in range(68)]
        for text in keys[:64]:
            licensing.add_key(text, 1_700_000_100)
    node.start()
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    config = str(node.config)
    try:
        added = [meter("xcommand", "optionkeyadd", text, "--config", config, cwd=empty) for text in keys[64:66]]
        altered = meter("xcommand", "optionkeyadd", keys[66] + "=" * (-len(keys[66][5:]) % 4 or 4),
                        "--config", config, cwd=empty)
        options = json.loads(meter("xstatus", "options", "--json", "--config", config, cwd=empty).stdout)
        replaced = meter("xconfiguration", "option", "5", "key", keys[67], "--config", config, cwd=empty)
        deleted = meter("xcommand", "optionkeydelete", "66", "--config", config, cwd=empty)
        after = json.loads(meter("xstatus", "options", "--json", "--config", config, cwd=empty).stdout)
        reset = meter("xcommand", "resetpeaks", "--config", config, cwd=empty)
        usage = meter("xstatus", "resourceusage", "--config", config, cwd=empty)
        wrong = meter("xcommand", "resetpeaks", "--config", config, cwd=empty, env={"METER_ADMIN_TOKEN": "nope"})
    finally:
        assert node.stop() == 0
    assert [a.returncode for a in added] == [0, 0], [a.stderr for a in added]
    assert added[0].stdout.startswith("option 65: added (active)")
    assert added[1].stdout.startswith("option 66: added (added_not_processed)")
    assert altered.returncode == 1 and "option key refused: altered" in altered.stderr
    statuses = {item["index"]: item["status"] for item in options["items"]}
    assert len(statuses) == 66 and statuses[65] == "active" and statuses[66] == "added_not_processed"
    assert options["quantities"] == {"rms": 65}
    assert replaced.returncode == 0 and replaced.stdout.startswith("option 5: added"), replaced.stderr
    assert deleted.returncode == 0 and "option 66 removed" in deleted.stdout
    assert sorted(item["index"] for item in after["items"]) == list(range(1, 66))
    assert after["items"][4]["key"] == keys[67]
    assert reset.returncode == 0 and reset.stdout.startswith("peaks reset at ")
    assert usage.returncode == 0 and usage.stdout.splitlines()[1].split()[:3] == ["LICENSE", "CURRENT", "PEAK"]
    wrong_lines = wrong.stderr.strip().splitlines()
    assert wrong.returncode == 1 and len(wrong_lines) == 1 and "admin token" in wrong_lines[0]
