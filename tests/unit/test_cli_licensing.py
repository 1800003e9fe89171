"""The licensing commands on a state directory (`--state-dir` / $METER_STATE_DIR: no node asked),
run through the `meter` command's own parser."""

import io

import pytest

from meter.admin.licensing_cli import parse_expiry
from meter.cli import build_parser
from meter.store.licensing import LicensingStore, init_state


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


@pytest.fixture
def state(tmp_path, monkeypatch):
    monkeypatch.setenv("METER_STATE_DIR", str(tmp_path / "state"))
    init_state(tmp_path / "state")  # `meter init`: the node's serial and the lab issuer key it trusts
    return tmp_path / "state"


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def issue(capsys, *argv):
    rc, out, err = run(capsys, "keys", "issue", *argv)
    assert rc == 0, err
    return out.strip()


def test_issue_install_and_list_keys_k4_k6(state, capsys):
    """K4, K6: keys issued by the lab issuer are set by index and listed with their validity."""
    rc, _, err = run(capsys, "keys", "issuer-init")  # `meter init` made it: never replaced by accident
    assert rc == 1 and "exists" in err
    rc, out, _ = run(capsys, "keys", "issuer-init", "--state-dir", str(state.parent / "lab"))
    assert rc == 0 and "fingerprint" in out
    rms = issue(capsys, "--option", "rms", "--quantity", "100")
    demo = issue(capsys, "--option", "HSM", "--expires", "30d")
    assert run(capsys, "xconfiguration", "option", "1", "key", rms)[0] == 0
    rc, out, _ = run(capsys, "xConfiguration", "Option", "2", "Key:", demo)
    assert rc == 0 and "HSM" in out
    rc, out, _ = run(capsys, "xstatus", "options")
    assert rc == 0
    assert "Option 1:" in out and '"100 Rich Media Sessions"' in out and "Status: active" in out
    assert "Option 2:" in out and "Expiry: never" in out.split("Option 2:")[0]
    assert "Licenses in force: rms 100" in out and "Features in force: HSM" in out


def test_refused_keys_exit_1_with_the_reason(state, capsys):
    """Forged, other-serial and expired keys: refused, reason on stderr, nothing installed."""
    other_state = state.parent / "other"
    run(capsys, "keys", "issuer-init", "--state-dir", str(other_state))
    with LicensingStore(state) as store:
        serial = store.serial
    forged = issue(capsys, "--option", "RMS", "--state-dir", str(other_state), "--serial", serial)
    other_serial = issue(capsys, "--option", "RMS", "--serial", "MTRELSEWHERE")
    expired = issue(capsys, "--option", "RMS", "--expires", "2001-01-01")
    for text, reason in ((forged, "forged"), (other_serial, "other_serial"), (expired, "expired")):
        rc, _, err = run(capsys, "xconfiguration", "option", "1", "key", text)
        assert rc == 1 and f"refused: {reason}" in err
    rc, out, _ = run(capsys, "xstatus", "options")
    assert "Option 1:" not in out


def test_xconfiguration_index_out_of_range_and_removal(state, capsys):
    """K4: indexes are 1..64; an empty key removes the option."""
    rms = issue(capsys, "--option", "RMS", "--quantity", "5")
    rc, _, err = run(capsys, "xconfiguration", "option", "65", "key", rms)
    assert rc == 1 and "1..64" in err
    assert run(capsys, "xconfiguration", "option", "7", "key", rms)[0] == 0
    rc, out, _ = run(capsys, "xconfiguration", "option", "7", "key", "")
    assert rc == 0 and "removed" in out
    assert run(capsys, "xconfiguration", "option", "7", "key", "")[0] == 1


def test_restart_required_key_shows_an_alarm_in_licenses(state, capsys):
    """K3: the 'restart required' alarm is listed by `meter licenses`."""
    run(capsys, "xconfiguration", "option", "1", "key", issue(capsys, "--option", "EXPRESSWAY_SERIES"))
    rc, out, _ = run(capsys, "licenses")
    assert rc == 0 and "restart-required [K3" in out
    assert "no usage recorded" in out


def test_licenses_shows_pools_in_use_and_capacity_from_the_last_snapshot(state, capsys):
    run(capsys, "xconfiguration", "option", "1", "key", issue(capsys, "--option", "RMS", "--quantity", "40"))
    with LicensingStore(state) as store:
        store.record_usage({
            "licenses": {"rms": {"license": "rms", "in_use": 12.5, "in_use_cluster": 20.0, "capacity": 80}},
            "calls": 14, "call_capacity": 500, "call_load": 0.028, "registrations": 3,
            "registration_capacity": 5000, "mra_registrations": 1, "mra_registration_capacity": 2500,
        }, 1_700_000_000.0)
    rc, out, _ = run(capsys, "licenses")
    rms_row = next(line for line in out.splitlines() if line.startswith("rms"))
    assert rms_row.split() == ["rms", "40", "12.5", "20", "80"]
    assert "calls: 14 of 500" in out and "alarms: none" in out


def test_mode_smart_then_keys_refused_then_factory_reset_l2_l3(state, capsys, monkeypatch):
    """L2, L3: switch to Smart; keys are refused; back to PAK only by a confirmed factory reset."""
    key = issue(capsys, "--option", "RMS")
    assert run(capsys, "mode")[1].startswith("license mode: PAK")
    monkeypatch.setattr("sys.stdin", io.StringIO("no\n"))
    rc, out, err = run(capsys, "mode", "smart")  # L3: asks, saying option keys stop applying
    assert rc == 1 and "option keys stop applying" in out and "factory reset" in out and "cancelled" in err
    assert run(capsys, "mode")[1].startswith("license mode: PAK")
    monkeypatch.setattr("sys.stdin", io.StringIO("yes\n"))
    rc, out, _ = run(capsys, "mode", "smart")
    assert rc == 0 and "evaluation" in out and "(L3)" in out
    rc, _, err = run(capsys, "xconfiguration", "option", "1", "key", key)
    assert rc == 1 and "smart_mode" in err
    rc, _, err = run(capsys, "mode", "pak")
    assert rc == 1 and "L2" in err

    monkeypatch.setattr("sys.stdin", io.StringIO("no\n"))
    rc, out, err = run(capsys, "factory-reset")
    assert rc == 1 and "Type 'yes'" in out and "cancelled" in err
    assert "SMART" in run(capsys, "mode")[1]

    monkeypatch.setattr("sys.stdin", io.StringIO("yes\n"))
    rc, out, _ = run(capsys, "factory-reset")
    assert rc == 0 and "backup written" in out
    backup = out.split("backup written: ")[1].splitlines()[0]
    assert (state / backup.rsplit("/", 1)[-1]).exists()
    assert "PAK" in run(capsys, "mode")[1]
    assert run(capsys, "xconfiguration", "option", "1", "key", key)[0] == 0


def test_mode_smart_refused_for_vcs_l4(state, capsys):
    """L4: product vcs refuses Smart."""
    rc, _, err = run(capsys, "mode", "smart", "--product", "vcs")
    assert rc == 1 and "L4" in err


def test_issue_refuses_unknown_options_unless_asked(state, capsys):
    rc, _, err = run(capsys, "keys", "issue", "--option", "TURN")
    assert rc == 1 and "unknown option" in err
    text = issue(capsys, "--option", "TURN", "--any-option")
    rc, _, err = run(capsys, "xconfiguration", "option", "1", "key", text)
    assert rc == 1 and "unknown_option" in err


def test_trust_another_issuer(state, capsys, tmp_path):
    lab = tmp_path / "lab-issuer"
    run(capsys, "keys", "issuer-init", "--state-dir", str(lab))
    with LicensingStore(state) as store:
        serial = store.serial
    text = issue(capsys, "--option", "ROOM", "--state-dir", str(lab), "--serial", serial)
    assert run(capsys, "xconfiguration", "option", "1", "key", text)[0] == 1
    assert run(capsys, "keys", "trust", str(lab / "issuer-ed25519.pem.pub"))[0] == 0
    assert run(capsys, "xconfiguration", "option", "1", "key", text)[0] == 0


def test_node_commands_refuse_a_state_without_an_identity(tmp_path, capsys):
    """Identity never made up on the way: xstatus, xconfiguration, licenses, mode and issuing for
    "this node" on an uninitialised (or emptied) state directory fail, naming the file and `meter init`."""
    empty = tmp_path / "empty"
    for argv in (["xstatus", "options"], ["licenses"], ["mode"], ["keys", "issue", "--option", "RMS"]):
        rc, _, err = run(capsys, *argv, "--state-dir", str(empty))
        assert rc == 1 and "licensing.sqlite" in err and "meter init" in err, argv
    assert not (empty / "licensing.sqlite").exists()


def test_expiry_forms():
    now = 1_000_000.0
    assert parse_expiry("none", now) is None
    assert parse_expiry("30d", now) == now + 30 * 86400
    assert parse_expiry("12h", now) == now + 12 * 3600
    assert parse_expiry("2001-01-01", now) == 978307200.0
    with pytest.raises(ValueError, match="--expires"):
        parse_expiry("soon", now)


def test_k4_optionkeyadd_takes_the_next_free_place_so_a_66th_key_is_added_not_processed(state, capsys):
    """K4 (CSCvf78728): `xcommand optionkeyadd` puts each key at the next free index, past 64, so a
    65th and a 66th key exist; the 65th applies, the 66th is listed as added but not processed."""
    import json

    from meter.licensing.keys import issue_key
    from meter.store.licensing import load_issuer

    with LicensingStore(state) as store:
        issuer, serial = load_issuer(store.issuer_key_path), store.serial
    for n in range(66):
        text = issue_key(issuer, serial=serial, option="RMS", quantity=1, issued_at=1_700_000_000 + n)
        rc, out, err = run(capsys, "xcommand", "optionkeyadd", text)
        assert rc == 0, err
        assert out.startswith(f"option {n + 1}: 1 Rich Media Sessions")
    assert "added_not_processed" in out and "K4" in err
    rc, out, _ = run(capsys, "xstatus", "options", "--json")
    doc = json.loads(out)
    statuses = {item["index"]: item["status"] for item in doc["items"]}
    assert len(statuses) == 66 and statuses[65] == "active" and statuses[66] == "added_not_processed"
    assert doc["quantities"] == {"rms": 65}
    rc, out, _ = run(capsys, "xstatus", "options")
    assert "Option 66:" in out and "Status: added_not_processed" in out and "Licenses in force: rms 65" in out
    # deleting one brings the 66th among the first 65 (K4), and the next add takes the freed place
    assert run(capsys, "xcommand", "optionkeydelete", "3")[0] == 0
    assert json.loads(run(capsys, "xstatus", "options", "--json")[1])["quantities"] == {"rms": 65}
    rc, _, err = run(capsys, "xcommand", "optionkeydelete", "3")
    assert rc == 1 and "option 3 is not set" in err


def test_k4_a_non_canonical_key_is_refused_as_altered_by_optionkeyadd(state, capsys):
    """K4 strict decoding through the command: the key with '=' padding added is refused as altered."""
    text = issue(capsys, "--option", "ROOM", "--quantity", "3")
    rc, _, err = run(capsys, "xcommand", "optionkeyadd", text + "=" * (-len(text[5:]) % 4 or 4))
    assert rc == 1 and "refused: altered" in err
    assert run(capsys, "xcommand", "optionkeyadd", text)[0] == 0


def test_s1_no_switch_to_smart_on_a_node_configured_for_a_cluster(state, capsys, tmp_path):
    """S1: the switch starts the evaluation period, during which cluster configuration is refused."""
    clustered = tmp_path / "clustered.toml"
    clustered.write_text('[cluster]\nstore = "redis"\n')
    rc, _, err = run(capsys, "mode", "smart", "--yes", "--config", str(clustered))
    assert rc == 1 and err.startswith("meter: S1:"), err
    with LicensingStore(state) as store:
        assert store.license_mode == "pak"
    standalone = tmp_path / "standalone.toml"
    standalone.write_text('[cluster]\nstore = "memory"\n')
    rc, out, err = run(capsys, "mode", "smart", "--yes", "--config", str(standalone))
    assert rc == 0 and "SMART" in out, err



def test_a_listing_read_by_a_reader_that_leaves_early_ends_quietly():
    """`meter explain | head -1`: a reader that closed its end is no error (no traceback, exit 0)."""
    import os
    import subprocess
    import sys

    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the command writes anything
    try:
        done = subprocess.run([sys.executable, "-m", "meter", "explain"], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write_end)
    assert done.returncode == 0 and done.stderr == "", (done.returncode, done.stderr)
