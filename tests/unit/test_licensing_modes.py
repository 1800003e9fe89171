"""License modes L1-L4, the durable store and the factory reset."""

import sqlite3

import pytest

from meter.licensing import license_mode
from meter.licensing.keys import KeyRefused, issue_key
from meter.licensing.model import License
from meter.store.licensing import StoreError, load_issuer
from meter.store.node_licensing import NodeLicensing

NOW = 1_700_000_000.0


def open_node(path, **kwargs):
    return NodeLicensing.open(path, **kwargs)


def issue(node, option, quantity=1):
    return issue_key(load_issuer(node.store.issuer_key_path), serial=node.serial, option=option,
                     quantity=quantity, issued_at=NOW)


def test_l1_pak_is_the_default_and_exactly_one_mode_is_active(tmp_path):
    """L1: two modes, one active; a fresh node is in PAK mode."""
    node = open_node(tmp_path)
    assert node.license_mode == license_mode.PAK and not node.smart
    node.switch_to_smart()
    assert node.license_mode == license_mode.SMART and node.license_mode in license_mode.LICENSE_MODES
    node.close()


def test_l2_smart_is_one_way_except_through_a_factory_reset_with_backup_and_confirmation(tmp_path):
    """L2: PAK -> Smart at run time; no way back except a factory reset, which writes a backup
    first and needs an explicit confirmation."""
    node = open_node(tmp_path)
    node.add_key(issue(node, "RMS", 50), NOW)
    serial = node.serial
    node.switch_to_smart()
    with pytest.raises(license_mode.ModeRefused, match="L2"):
        license_mode.switch_to_pak(node.license_mode)
    with pytest.raises(StoreError, match="confirmation"):
        node.factory_reset(confirmed=False, backup_path=tmp_path / "never.sqlite")
    assert not (tmp_path / "never.sqlite").exists() and node.license_mode == license_mode.SMART

    backup = node.factory_reset(confirmed=True, backup_path=tmp_path / "backup.sqlite")
    assert node.license_mode == license_mode.PAK and node.statuses(NOW) == []
    assert node.serial == serial  # like a hardware serial, kept
    with sqlite3.connect(backup) as saved:  # the backup holds the state before the reset
        assert saved.execute("SELECT value FROM meta WHERE key='mode'").fetchone() == ("smart",)
        assert saved.execute("SELECT COUNT(*) FROM option_keys").fetchone() == (1,)
    node.close()


def test_l3_in_smart_mode_keys_cannot_be_added_and_have_no_effect(tmp_path):
    """L3: option keys are refused in Smart mode, installed ones stop granting, and key-only
    features (HSM, Advanced Account Security, Microsoft Interoperability) are unavailable."""
    node = open_node(tmp_path)
    node.add_key(issue(node, "RMS", 50), NOW)
    node.add_key(issue(node, "HSM"), NOW)
    assert node.feature("HSM", NOW) and node.grants(NOW).quantities == {License.RMS: 50}
    node.switch_to_smart()
    with pytest.raises(KeyRefused) as caught:
        node.add_key(issue(node, "ROOM", 5), NOW)
    assert caught.value.reason == "smart_mode"
    assert node.grants(NOW) == ({}, frozenset())
    assert not node.feature("HSM", NOW)
    assert {s.state for s in node.statuses(NOW)} == {"no_effect_smart"}
    assert node.next_change(NOW) is None
    node.close()


def test_l4_product_vcs_refuses_smart_mode(tmp_path):
    """L4: the vcs product does not support Smart licensing at all."""
    node = open_node(tmp_path, product="vcs")
    with pytest.raises(license_mode.ModeRefused, match="L4"):
        node.switch_to_smart()
    assert node.license_mode == license_mode.PAK
    node.close()
    assert open_node(tmp_path).product == "vcs"  # the recorded product persists


def test_mode_serial_and_keys_survive_a_restart(tmp_path):
    node = open_node(tmp_path)
    node.switch_to_smart()
    serial, public = node.serial, node.public_key
    node.close()
    again = open_node(tmp_path)
    assert again.license_mode == license_mode.SMART and again.serial == serial
    assert again.public_key.public_bytes_raw() == public.public_bytes_raw()
    again.close()


def test_a_bad_state_directory_is_reported_with_its_path(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match="licensing.sqlite"):
        open_node(blocker / "state")


def test_usage_snapshots_are_kept_for_the_cli(tmp_path):
    node = open_node(tmp_path)
    node.store.record_usage({"calls": 1}, NOW)
    node.store.record_usage({"calls": 2}, NOW + 60)
    assert node.store.latest_usage() == (NOW + 60, {"calls": 2})
    node.close()
