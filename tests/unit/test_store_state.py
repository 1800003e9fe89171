"""State that survives a restart (issue 10 item 5; docs/design.md principles 4 and 5).

- the node's identity: `meter init` once, `meter run` refuses a missing, empty or unreadable state
  database with one line, `meter backup` / `meter restore` keep serial and issuer key;
- bindings and calls written behind in batches (Kamailio usrloc/dialog db_mode=2) and restored
  with their remaining expiry and their charges (R9 registrations, C2/C6/C7 calls), a binding that
  expired while the node was down released at start, a refresh of a restored binding not charged
  twice, a BYE after restart releasing the RMS.

Sans-I/O: the SIP core on a fake clock and a fake network (tests.sipclient.CoreLab), the real
metering join and ledger, SQLite in a temporary directory.
"""

from __future__ import annotations

import sqlite3

import pytest

from meter import catalogs
from meter.cli import main as meter_main
from meter.codecs.sip import make_response
from meter.licensing.ledger import Ledger
from meter.metering.join import Metering
from meter.metering.sip import SipMetering
from meter.store.licensing import (
    DB_NAME, ISSUER_KEY_NAME, LicensingStore, StoreError, backup_state, check_initialised, init_state, restore_state,
)
from meter.store.sip_state import SipState
from meter.store.state import StateJournal, StateSettings, StateStore, StoredBinding
from meter.zones import ZoneSettings, ZoneTable
from tests.sipclient import LAB_ANSWER, LAB_RR, CoreLab, Phone

# alice (10.0.0.2) is a third-party SIP trunk: her calls to a registered alias cost one RMS on C (C2, C3).
ITSP = ZoneSettings(name="itsp", kind="third_party_sip", peers=["10.0.0.2/32"])

# -- identity: never regenerated silently ------------------------------------------------------------


def test_missing_state_database_stops_run_with_one_line_naming_path_and_meter_init(tmp_path, capsys):
    config = tmp_path / "meter.toml"
    config.write_text(f'[node]\nstate_dir = "{tmp_path / "state"}"\n')
    assert meter_main(["run", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert str(tmp_path / "state" / DB_NAME) in err and "meter init" in err and "restore" in err
    assert not (tmp_path / "state" / DB_NAME).exists()  # nothing was created on the way


@pytest.mark.parametrize("content, words", [(b"", "empty file, 0 bytes"), (b"garbage" * 200, "not a readable")])
def test_empty_or_corrupt_state_database_is_a_clear_error_not_a_new_serial(tmp_path, content, words):
    (tmp_path / DB_NAME).write_bytes(content)
    with pytest.raises(StoreError) as err:
        check_initialised(tmp_path)
    assert str(tmp_path / DB_NAME) in str(err.value) and words in str(err.value) and "meter init" in str(err.value)
    with pytest.raises(StoreError, match="never replaces"):
        init_state(tmp_path)  # not even an empty file is replaced without the operator's say
    assert (tmp_path / DB_NAME).read_bytes() == content


def test_meter_init_creates_serial_and_issuer_once_and_refuses_to_overwrite(tmp_path, capsys):
    assert meter_main(["init", "--state-dir", str(tmp_path)]) == 0
    serial = check_initialised(tmp_path)
    assert serial in capsys.readouterr().out and (tmp_path / ISSUER_KEY_NAME).exists()
    key = (tmp_path / ISSUER_KEY_NAME).read_bytes()
    assert meter_main(["init", "--state-dir", str(tmp_path)]) == 1
    assert "never replaces" in capsys.readouterr().err
    assert meter_main(["init", "--if-missing", "--state-dir", str(tmp_path)]) == 0
    assert check_initialised(tmp_path) == serial and (tmp_path / ISSUER_KEY_NAME).read_bytes() == key


def test_backup_and_restore_keep_serial_issuer_key_and_option_keys(tmp_path):
    node, other = tmp_path / "node", tmp_path / "elsewhere"
    serial = init_state(node)
    with LicensingStore(node) as store:
        store.put_key(1, "MTR1-some-key", 1.0, False)
    backup, backed = backup_state(node, tmp_path / "node.backup")
    assert backed == serial
    with pytest.raises(StoreError, match="never overwrites"):
        backup_state(node, backup)
    assert restore_state(backup, other) == serial
    assert check_initialised(other) == serial
    assert (other / ISSUER_KEY_NAME).read_bytes() == (node / ISSUER_KEY_NAME).read_bytes()
    with LicensingStore(other) as store:
        assert store.key_rows() == [(1, "MTR1-some-key", 1.0, False)]
        assert store.issuer_public_key() is not None
    tables = {r[0] for r in sqlite3.connect(other / DB_NAME).execute("SELECT name FROM sqlite_master")}
    assert "backup_files" not in tables
    # a zero-byte database (the incident) is replaced only on purpose
    (other / DB_NAME).write_bytes(b"")
    with pytest.raises(StoreError, match="--force"):
        restore_state(backup, other)
    assert restore_state(backup, other, force=True) == serial and check_initialised(other) == serial


def test_restore_refuses_a_file_that_is_not_a_backup(tmp_path):
    (tmp_path / "junk").write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(StoreError, match="not a meter backup"):
        restore_state(tmp_path / "junk", tmp_path / "state")


# -- write-behind: batched, off the hot path ----------------------------------------------------------


class Timers:
    """call_later that only records: the test fires what is due."""

    def __init__(self):
        self.pending = []

    def call_later(self, delay, fn):
        handle = Handle(delay, fn)
        self.pending.append(handle)
        return handle

    def fire(self):
        due, self.pending = [h for h in self.pending if not h.cancelled], []
        for handle in due:
            handle.fn()
        return [h.delay for h in due]


class Handle:
    def __init__(self, delay, fn):
        self.delay, self.fn, self.cancelled = delay, fn, False

    def cancel(self):
        self.cancelled = True


class CountingStore(StateStore):
    def __init__(self, state_dir):
        super().__init__(state_dir)
        self.writes = []

    def write(self, registrations, calls):
        self.writes.append((set(registrations), set(calls)))
        super().write(registrations, calls)


def _journal(tmp_path, **settings):
    store = CountingStore(tmp_path)
    timers = Timers()

    def registration(aor):
        return {"license": "room"}, [StoredBinding(aor, f"sip:{aor}@h", {}, 2e9, "c", 1, ("udp", "h", 5060), "ua")]

    journal = StateJournal(store, StateSettings(**settings), call_later=timers.call_later,
                           snapshot_registration=registration, snapshot_calls=lambda ids: {i: [] for i in ids})
    return journal, store, timers


def test_changes_are_batched_into_one_write_after_the_flush_interval(tmp_path):
    journal, store, timers = _journal(tmp_path, flush_interval=0.2, flush_batch=1000)
    for i in range(300):
        journal.registration_changed(f"a{i}")
        journal.registration_changed(f"a{i}")  # twice: still one row
    journal.call_changed("call-1")
    assert store.writes == []  # nothing written on the hot path
    assert timers.fire() == [0.2]  # one timer for the whole batch
    assert len(store.writes) == 1 and len(store.writes[0][0]) == 300 and store.writes[0][1] == {"call-1"}
    assert len(store.registrations()) == 300 and journal.pending == 0


def test_a_full_batch_is_written_at_once_not_after_the_interval(tmp_path):
    journal, store, timers = _journal(tmp_path, flush_interval=0.2, flush_batch=50)
    for i in range(50):
        journal.registration_changed(f"a{i}")
    assert [h.delay for h in timers.pending if not h.cancelled] == [0]
    timers.fire()
    assert len(store.writes) == 1 and len(store.writes[0][0]) == 50


def test_a_failed_write_keeps_its_keys_for_the_next_try(tmp_path):
    journal, store, timers = _journal(tmp_path)
    journal.registration_changed("a1")
    store._db.close()  # the database went away under the node
    timers.fire()
    assert journal.failures == 1 and journal.pending == 1 and timers.pending  # retried later, not lost


def test_journal_close_writes_what_waits_then_records_nothing_more(tmp_path):
    journal, store, timers = _journal(tmp_path)
    journal.registration_changed("a1")
    journal.close()
    assert len(store.writes) == 1
    journal.registration_changed("a2")  # the shutdown's own releases
    assert journal.pending == 0 and not [h for h in timers.pending if not h.cancelled]


@pytest.mark.parametrize("settings", [{"flush_interval": 0}, {"flush_batch": 0}])
def test_state_settings_refuse_nonsense(settings):
    with pytest.raises(ValueError):
        StateSettings(**settings)


# -- restore: bindings, calls and their charges ------------------------------------------------------


class MeteredLab:
    """One node's life: a SIP core with the real metering join and ledger, its state in ``state_dir``."""

    def __init__(self, state_dir, *, down_for: float = 0.0):
        self.metering = Metering(Ledger("m1", "C", catalogs.platform("large_vm"), enforcement="observe", now=0),
                                 catalogs.device_catalog(), ZoneTable([ITSP]), role="C", node_name="m1")
        self.lab = CoreLab(policy=SipMetering(self.metering))
        self.lab.clock.advance(down_for)
        self.timers = Timers()
        self.state = SipState(StateStore(state_dir), StateSettings(), self.lab.core, self.metering,
                              call_later=self.timers.call_later)
        self.restored = self.state.restore()
        self.state.attach()

    def in_use(self, license):
        return self.metering.ledger.in_use(license)

    def crash(self):
        """kill -9: what the journal wrote stays, nothing else happens (no shutdown releases)."""
        self.timers.fire()
        self.state.store.close()


def _call(node):
    """alice (the trunk) calls bob (registered) audio-only, bob answers, alice ACKs: settled at half an
    RMS (C2, C3, C4, C5), frozen (C7)."""
    lab = node.lab
    invite, at_bob = lab.setup_call()
    lab.feed(lab.bob.answer(at_bob, 200, to_tag="bt", body=LAB_ANSWER), lab.bob)
    ok = lab.take_one(lab.alice)
    lab.ack(invite, ok)
    lab.net.take()
    return invite


def test_registrations_and_a_call_are_restored_with_their_charges_after_a_crash(tmp_path):
    first = MeteredLab(tmp_path)
    first.lab.register(Phone("carol", "10.0.0.4", 5066), expires=600)
    first.lab.register(first.lab.bob, expires=600)
    invite = _call(first)
    before = {lic: first.in_use(lic) for lic in ("room", "desktop", "rms")}
    assert before["rms"] == 1  # half an RMS, in half units (C4)
    first.crash()

    second = MeteredLab(tmp_path, down_for=30)
    assert (second.restored.registrations, second.restored.bindings, second.restored.calls) == (2, 2, 1)
    assert {lic: second.in_use(lic) for lic in ("room", "desktop", "rms")} == before
    views = {v["aor"]: v for v in second.lab.core.registrar.views()}
    assert 560 <= views["sip:bob@lab.test"]["expires"] <= 571  # the remaining expiry, not a new one
    assert [c["state"] for c in second.lab.core.calls.views()] == ["confirmed"]
    assert second.metering.call_views()[0]["call_class"] == "audio_sip"  # still settled (C7)
    assert second.metering.call_views()[0]["rules"] == first.metering.call_views()[0]["rules"]

    # RFC 3261 §16.5: an inbound call to a restored alias routes to its contact (no 404)
    lab = second.lab
    carol_invite = lab.alice.request("INVITE", "sip:bob@lab.test", body=b"v=0\r\n")
    lab.feed(carol_invite, lab.alice)  # a second call from alice, as a new call
    assert [m.uri for m, p in lab.net.take() if hasattr(m, "method")] == ["sip:bob@10.0.0.3:5064"]

    # a BYE after the restart finds the restored call and releases its RMS (principle 4)
    bye = lab.bob.request("BYE", "sip:alice@10.0.0.2:5062", to="sip:alice@lab.test", to_tag=invite.from_.tag,
                          call_id=invite.call_id, headers=[("Route", LAB_RR)], cseq=5, from_tag="bt")
    lab.feed(bye, lab.bob)
    at_alice = lab.take_one(lab.alice)
    lab.feed(make_response(at_alice, 200), lab.alice)
    assert second.in_use("rms") == 2  # the new call is set up (as video, C6); the restored one is gone
    assert [c["call_id"] for c in second.metering.call_views()] == [carol_invite.call_id]
    second.timers.fire()
    assert [c.call_id for c in second.state.store.calls()] == []  # the ended call left the database too


def test_a_refresh_of_a_restored_binding_confirms_it_and_is_not_charged_again(tmp_path):
    first = MeteredLab(tmp_path)
    first.lab.register(first.lab.bob, expires=600)
    used = first.in_use("room") + first.in_use("desktop")
    assert used == 1
    first.crash()
    second = MeteredLab(tmp_path, down_for=10)
    bob = second.lab.bob
    second.lab.feed(bob.register(600, cseq=2), bob)  # same Call-ID, next CSeq (RFC 3261 §10.3 step 7)
    resp, _ = second.lab.net.only()
    assert resp.header_values("contact") == ["<sip:bob@10.0.0.3:5064>;expires=600"]
    assert second.in_use("room") + second.in_use("desktop") == used
    assert len(second.metering.registration_views()) == 1


def test_bindings_that_expired_while_the_node_was_down_are_released_at_start(tmp_path):
    first = MeteredLab(tmp_path)
    first.lab.register(first.lab.alice, expires=600)
    first.lab.register(first.lab.bob, expires=3600)
    first.crash()
    second = MeteredLab(tmp_path, down_for=1200)
    assert (second.restored.registrations, second.restored.expired) == (1, 1)
    assert second.in_use("room") + second.in_use("desktop") == 1
    assert [v["aor"] for v in second.lab.core.registrar.views()] == ["sip:bob@lab.test"]
    assert set(second.state.store.registrations()) == {"sip:bob@lab.test"}  # alice's rows are gone


def test_unregister_and_expiry_are_written_so_a_restart_does_not_bring_them_back(tmp_path):
    first = MeteredLab(tmp_path)
    first.lab.register(first.lab.alice, expires=600)
    first.lab.register(first.lab.bob, expires=600)
    first.lab.register(first.lab.alice, expires=0)
    first.lab.net.take()
    first.crash()
    second = MeteredLab(tmp_path)
    assert [v["aor"] for v in second.lab.core.registrar.views()] == ["sip:bob@lab.test"]


def test_a_graceful_stop_keeps_bindings_and_calls_for_the_next_start(tmp_path):
    first = MeteredLab(tmp_path)
    first.lab.register(first.lab.bob, expires=600)
    _call(first)
    first.state.close()  # Node.close's order: the state first, then the SIP core's shutdown releases
    first.lab.core.close()
    assert first.in_use("rms") == 0
    second = MeteredLab(tmp_path)
    assert (second.restored.registrations, second.restored.calls) == (1, 1) and second.in_use("rms") == 1


def test_a_call_still_setting_up_is_not_restored(tmp_path):
    """Its transactions die with the node: the caller retransmits the INVITE and it is charged afresh."""
    first = MeteredLab(tmp_path)
    first.lab.register(first.lab.bob, expires=600)
    first.lab.setup_call()
    assert first.in_use("rms") == 2
    first.crash()
    second = MeteredLab(tmp_path)
    assert second.restored.calls == 0 and second.in_use("rms") == 0


def test_a_restored_call_keeps_its_age_and_its_rfc4028_session_timer(tmp_path):
    """The reaper counts from the call's real start; the session interval runs again from the restart
    and, unrefreshed, ends the call with a BYE each way and releases its RMS (RFC 4028 §10)."""
    first = MeteredLab(tmp_path)
    first.lab.register(first.lab.bob, expires=3600)
    lab = first.lab
    invite, at_bob = lab.setup_call(extra_headers=[("Supported", "timer")])
    ok = lab.bob.answer(at_bob, 200, to_tag="bt", body=LAB_ANSWER,
                        headers=[("Session-Expires", "1800;refresher=uac"), ("Require", "timer")])
    lab.feed(ok, lab.bob)
    lab.ack(invite, lab.take_one(lab.alice))
    lab.net.take()
    first.crash()

    second = MeteredLab(tmp_path, down_for=100)
    [call] = second.lab.core.dialogs
    assert call.session.interval == 1800 and call.session_timer is not None
    assert 99 <= second.lab.core.calls.views()[0]["age"] <= 101
    assert second.in_use("rms") == 1
    second.lab.clock.advance(1801)
    byes = {p.address for m, p in second.lab.net.take() if getattr(m, "method", "") == "BYE"}  # and Timer E copies
    assert byes == {("10.0.0.2", 5062), ("10.0.0.3", 5064)}
    assert second.in_use("rms") == 0 and second.metering.call_views() == []


def test_an_unreadable_row_is_dropped_and_logged_and_charges_nothing(tmp_path):
    first = MeteredLab(tmp_path)
    first.lab.register(first.lab.bob, expires=600)
    first.lab.register(Phone("carol", "10.0.0.4", 5066), expires=600)
    _call(first)
    first.crash()
    with sqlite3.connect(tmp_path / DB_NAME) as db:
        db.execute("UPDATE bindings SET contact = 'not a uri' WHERE aor = 'sip:carol@lab.test'")
        db.execute("UPDATE calls SET record = '{}'")
    db.close()
    second = MeteredLab(tmp_path)
    assert (second.restored.registrations, second.restored.calls, second.restored.unreadable) == (1, 0, 2)
    assert second.in_use("rms") == 0 and second.in_use("room") + second.in_use("desktop") == 1
    assert second.state.store.calls() == [] and list(second.state.store.registrations()) == ["sip:bob@lab.test"]
