"""H.323 registrations and calls that survive a restart (meter.store.h323_state, issue 10 item 5).

A real Gatekeeper core (standalone, and inline in front of a standalone upstream) metered by
RasMetering, on the in-memory Net of ``tests.rasclient`` (every datagram through the real codec),
writing behind to a real SQLite state database in tmp_path. A "restart" is a new metering join (a
new ledger), a new core on a new monotonic clock, restored from the same database. Principle 5
(state survives), R9 (one license per alias, charged again as decided), C2/C7 (a call's RMS, settled).
"""

from __future__ import annotations

import sqlite3

import pytest

from meter.codecs import ras
from meter.codecs.ras import Alias
from meter.h323.calls import call_key
from meter.metering.h323 import RasMetering, ledger_key
from meter.store.h323_state import H323State, H323StateStore
from meter.store.state import StateSettings
from tests.rasclient import GK, inline_net, standalone_net
from tests.unit.test_metering import make_metering

WALL = 1_800_000_000.0  # the wall clock at the first run's start
DOWN = 30.0             # seconds the node was down
FAR = ("192.0.2.9", 1720)  # the "itsp" third-party SIP zone by address: one RMS (C3, C9)


class Timers:
    """call_later for the journal: the test runs the write when it wants it."""

    def __init__(self) -> None:
        self.pending: list = []

    def __call__(self, delay, callback):
        handle = _Handle(callback)
        self.pending.append(handle)
        return handle

    def run(self) -> None:
        pending, self.pending = self.pending, []
        for handle in pending:
            if not handle.cancelled:
                handle.callback()


class _Handle:
    def __init__(self, callback) -> None:
        self.callback, self.cancelled = callback, False

    def cancel(self) -> None:
        self.cancelled = True


def attach(core, metering, state_dir, timers: Timers, net) -> H323State:
    state = H323State(H323StateStore(state_dir), StateSettings(), core, metering, call_later=timers,
                      clock=lambda: net.now)
    state.attach()
    return state


def standalone(metering, now: float, wall: float, **settings):
    net, gk = standalone_net(RasMetering(metering), now=now, **settings)
    gk.wall_offset = wall - now
    metering.clock.now = wall
    return net, gk


def in_use(metering) -> dict[str, int]:
    return {name: metering.ledger.in_use(name) for name in ("room", "desktop", "rms")}


def views(metering):
    return (sorted(map(repr, metering.registration_views())), sorted(map(repr, metering.call_views())))


def first_run(tmp_path, **settings):
    """Three endpoints (four aliases) registered, two calls admitted (one to a far address: one RMS),
    everything written behind; then the process "dies" (nothing released, nothing more written)."""
    m, _, _ = make_metering()
    net, gk = standalone(m, 1000.0, WALL, **settings)
    timers = Timers()
    state = attach(gk, m, tmp_path, timers, net)
    room = net.endpoint(5001, [("h323-ID", "room1"), ("dialledDigits", "1001")])
    desk = net.endpoint(5002, [("h323-ID", "room2")])
    mcu = net.endpoint(5003, [("h323-ID", "conf")], endpoint_type="mcu")
    for ep in (room, desk, mcu):
        assert net.register(ep, ttl=300).short == "RCF"
    acf, local = net.admit(room, [("h323-ID", "room2")])
    assert acf.short == "ACF"
    assert net.admit(desk, [("h323-ID", "room1")], call_id=local.call_id, answer=True)[0].short == "ACF"
    acf, far = net.admit(mcu, [("h323-ID", "someone")], dest_address=FAR)
    assert acf.short == "ACF"
    assert timers.pending  # written behind: nothing written yet, one write scheduled
    timers.run()
    state.store.close()  # kill -9: the connection goes with the process, the journal never closes
    return m, (room, desk, mcu), (local, far)


def restart(tmp_path, endpoints, *, down: float = DOWN, **settings):
    m, _, _ = make_metering()
    net, gk = standalone(m, 50.0, WALL + down, **settings)  # a new process: a new monotonic clock
    for ep in endpoints:
        net.endpoints[ep.ras_address] = ep
    timers = Timers()
    state = H323State(H323StateStore(tmp_path), StateSettings(), gk, m, call_later=timers, clock=lambda: 50.0)
    restored = state.restore()
    state.attach()
    return m, net, gk, state, timers, restored


def test_principle5_r9_registrations_and_calls_come_back_with_their_charges(tmp_path):
    before, endpoints, calls = first_run(tmp_path)
    counts, listing = in_use(before), views(before)
    assert counts["room"] == 4 and counts["rms"] > 0

    m, net, gk, state, timers, restored = restart(tmp_path, endpoints)
    assert (restored.registrations, restored.aliases, restored.calls) == (3, 4, 2)
    assert in_use(m) == counts and views(m) == listing
    # the remaining time-to-live, not a fresh one: 300 s granted, 30 s spent while down
    reg = gk.registrations.get(endpoints[0].endpoint_id)
    assert reg.expires_at - 50.0 == pytest.approx(300 - DOWN)
    assert [str(a) for a in reg.call_signal_addresses] == [str(endpoints[0].call_signal_address)]
    views_out = {v["endpoint_id"]: v for v in gk.registration_views(50.0)}
    assert views_out[endpoints[0].endpoint_id]["calls"] == 1
    assert views_out[endpoints[2].endpoint_id]["product"] == "TANDBERG EX90"


def test_principle5_keep_alive_admission_and_drq_after_restart(tmp_path):
    """H.323 §7.2.2: the keep-alive of a restored endpoint gets RCF, not RRJ fullRegistrationRequired;
    its ARQ is admitted; a DRQ of a restored call releases its RMS (principle 4)."""
    before, (room, desk, mcu), (local, far) = first_run(tmp_path)
    counts = in_use(before)
    m, net, gk, state, timers, _ = restart(tmp_path, (room, desk, mcu))

    rcf = net.ask(room, room.keep_alive(ttl=300))
    assert rcf.short == "RCF" and rcf.endpoint_identifier == room.endpoint_id
    assert gk.registrations.get(room.endpoint_id).expires_at == pytest.approx(50.0 + 300)
    acf, _ = net.admit(desk, [("h323-ID", "conf")])
    assert acf.short == "ACF"
    assert net.ask(mcu, mcu.drq(far)).short == "DCF"
    assert in_use(m)["rms"] == counts["rms"] - 2  # one RMS, in half units
    assert ("h323", ras.guid_str(far.call_id)) not in m.calls
    # the DRQ and the keep-alive are written behind in turn
    timers.run()
    stored = {k for k, _ in H323StateStore(tmp_path).calls()}
    assert far.call_id.hex() not in stored and local.call_id.hex() in stored


def test_r9_full_reregistration_of_a_restored_endpoint_is_not_charged_twice(tmp_path):
    before, endpoints, _ = first_run(tmp_path)
    counts = in_use(before)
    m, net, gk, state, timers, _ = restart(tmp_path, endpoints)
    room, desk, mcu = endpoints
    rcf = net.register(room, ttl=300, endpoint_id=room.endpoint_id)  # full RRQ naming its identifier
    assert rcf.short == "RCF" and rcf.endpoint_identifier == room.endpoint_id
    desk.endpoint_id = None
    rcf = net.register(desk, ttl=300)  # full RRQ without it: found by its call signalling address
    assert rcf.short == "RCF"
    assert in_use(m) == counts and len(gk.registrations) == 3
    # and a restored alias still belongs to its endpoint: another endpoint cannot take it
    intruder = net.endpoint(5009, [("h323-ID", "room1")])
    assert net.register(intruder).reject_reason == "duplicateAlias"


def test_principle5_a_registration_that_expired_while_down_is_dropped_with_its_calls(tmp_path):
    _, endpoints, _ = first_run(tmp_path)
    m, net, gk, state, timers, restored = restart(tmp_path, endpoints, down=400)
    assert (restored.registrations, restored.expired, restored.calls, restored.orphaned) == (0, 3, 0, 2)
    assert in_use(m) == {"room": 0, "desktop": 0, "rms": 0}
    rrj = net.ask(endpoints[0], endpoints[0].keep_alive())
    assert rrj.reject_reason == "fullRegistrationRequired"
    store = H323StateStore(tmp_path)
    assert store.registrations() == [] and store.calls() == []


def test_principle5_restored_registrations_still_expire(tmp_path):
    _, endpoints, _ = first_run(tmp_path)
    m, net, gk, state, timers, _ = restart(tmp_path, endpoints)
    net.tick(50.0 + 300 - DOWN + 1)
    assert len(gk.registrations) == 0 and len(gk.calls) == 0
    assert in_use(m) == {"room": 0, "desktop": 0, "rms": 0}
    assert net.received(endpoints[0], "URQ")  # ttlExpired


def test_r11_a_stored_charge_the_ledger_now_refuses_is_not_restored(tmp_path):
    """Enforce mode with fewer room licenses than before the restart: a registration is all or nothing."""
    _, endpoints, _ = first_run(tmp_path)
    m, _, _ = make_metering(room=2)
    net, gk = standalone(m, 50.0, WALL + DOWN)
    state = H323State(H323StateStore(tmp_path), StateSettings(), gk, m, call_later=Timers(), clock=lambda: 50.0)
    restored = state.restore()
    assert restored.registrations + restored.refused == 3 and restored.refused >= 1
    table = {ledger_key(a) for r in gk.registrations for a in r.aliases}
    assert {alias for _, alias in m.registrations} == table  # no alias charged without its registration
    # two licenses for four aliases: room1 (two aliases) alone, or room2 and conf; never one of room1's
    assert m.ledger.in_use("room") == len(table) == 2


def test_principle5_an_unreadable_row_is_dropped_and_charges_nothing(tmp_path):
    _, endpoints, (local, far) = first_run(tmp_path)
    db = sqlite3.connect(tmp_path / "licensing.sqlite")
    with db:
        db.execute("UPDATE h323_registrations SET record = '{\"aliases\": 5}' WHERE endpoint_id = ?",
                   (endpoints[0].endpoint_id,))
        db.execute("UPDATE h323_calls SET record = 'not json' WHERE call_key = ?", (far.call_id.hex(),))
    db.close()
    m, net, gk, state, timers, restored = restart(tmp_path, endpoints)
    assert restored.unreadable == 2 and restored.registrations == 2
    assert m.ledger.in_use("room") == 2  # room2 and conf; room1's two aliases are not charged
    assert m.ledger.in_use("rms") == 0 and restored.calls == 1  # the local call still has a registered party
    store = H323StateStore(tmp_path)
    assert len(store.registrations()) == 2 and [k for k, _ in store.calls()] == [local.call_id.hex()]


def test_principle4_a_graceful_close_keeps_the_rows_and_writes_no_shutdown_release(tmp_path):
    m, _, _ = make_metering()
    net, gk = standalone(m, 1000.0, WALL)
    timers = Timers()
    state = attach(gk, m, tmp_path, timers, net)
    ep = net.endpoint(5001, [("h323-ID", "room1")])
    assert net.register(ep).short == "RCF"
    state.close()  # written at once, then nothing more
    out = gk.close(1001.0, goodbye=False)
    assert out == [] and m.ledger.in_use("room") == 0  # no URQ; the shutdown released the charge
    assert [e for e, _ in H323StateStore(tmp_path).registrations()] == [ep.endpoint_id]


def test_principle5_the_journal_batches_keep_alives_and_drops_what_ended(tmp_path):
    m, _, _ = make_metering()
    net, gk = standalone(m, 1000.0, WALL)
    timers = Timers()
    state = attach(gk, m, tmp_path, timers, net)
    ep = net.endpoint(5001, [("h323-ID", "room1")])
    net.register(ep, ttl=60)
    for _ in range(5):
        assert net.ask(ep, ep.keep_alive(ttl=60)).short == "RCF"
    assert len(timers.pending) == 1  # one write for everything that changed meanwhile
    timers.run()
    assert state.journal.flushes == 1
    net.ask(ep, ep.urq())
    timers.run()
    assert H323StateStore(tmp_path).registrations() == []


def test_principle5_inline_restores_learned_registrations_and_calls(tmp_path):
    """Inline the upstream holds the registrations; the node's tables (what it charges, and routes the
    upstream's URQ/DRQ/IRQ by) come back, and a DRQ after the restart releases the call's RMS."""
    m, _, _ = make_metering()
    net, node, upstream = inline_net(RasMetering(m))
    node.wall_offset = WALL - net.now
    m.clock.now = WALL
    timers = Timers()
    state = H323State(H323StateStore(tmp_path), StateSettings(), node, m, call_later=timers, clock=lambda: net.now)
    state.attach()
    alice = net.endpoint(5001, [("h323-ID", "alice")])
    assert net.register(alice, to=GK).short == "RCF"
    acf, far = net.admit(alice, [("h323-ID", "x")], dest_address=FAR, to=GK)
    assert acf.short == "ACF"
    counts = in_use(m)
    assert counts["room"] == 1 and counts["rms"] > 0
    timers.run()
    state.store.close()

    m2, _, _ = make_metering()
    net2, node2, _ = inline_net(RasMetering(m2), now=50.0)
    net2.cores[upstream.ras_address] = upstream  # the upstream gatekeeper did not restart
    net2.endpoints[alice.ras_address] = alice
    node2.wall_offset = WALL + DOWN - 50.0
    m2.clock.now = WALL + DOWN
    restored = H323State(H323StateStore(tmp_path), StateSettings(), node2, m2, call_later=Timers(),
                         clock=lambda: 50.0).restore()
    assert (restored.registrations, restored.calls) == (1, 1) and in_use(m2) == counts
    assert net2.ask(alice, alice.keep_alive(), to=GK).short == "RCF"
    assert in_use(m2) == counts
    assert net2.ask(alice, alice.drq(far), to=GK).short == "DCF"
    assert in_use(m2)["rms"] == 0 and call_key(far.call_id, None) not in node2.calls.by_key
    assert m2.ledger.in_use("room") == 1


def test_the_ras_tables_tell_the_journal_every_change():
    """The hooks the write-behind relies on: add, refresh (keep-alive), alias removal, removal; call
    added, leg admitted, bandwidth changed, ended."""
    m, _, _ = make_metering()
    net, gk = standalone(m, 1000.0, WALL)
    regs, calls = [], []
    gk.registrations.changed, gk.calls.changed = regs.append, calls.append
    ep = net.endpoint(5001, [("h323-ID", "a"), ("h323-ID", "b")])
    net.register(ep)
    assert set(regs) == {ep.endpoint_id}
    regs.clear()
    net.ask(ep, ep.keep_alive())
    assert regs == [ep.endpoint_id]
    acf, call = net.admit(ep, [("h323-ID", "x")], dest_address=FAR)
    assert calls and set(calls) == {call.call_id}
    calls.clear()
    assert net.ask(ep, ep.brq(call, 640)).short == "BCF"
    assert calls == [call.call_id]
    regs.clear()
    net.ask(ep, ep.urq((Alias("h323-ID", "b"),)))
    assert regs == [ep.endpoint_id]
    calls.clear()
    net.ask(ep, ep.urq())
    assert calls == [call.call_id] and regs[-1] == ep.endpoint_id


def test_principle5_meter_restore_brings_h323_registrations_back_but_not_calls(tmp_path):
    """As for SIP: a backup's calls in progress are long over when it is restored; its registrations
    come back with their own expiry (and lapse at start when it has passed)."""
    from meter.store.licensing import backup_state, init_state, restore_state

    node, other = tmp_path / "node", tmp_path / "elsewhere"
    init_state(node)
    _, endpoints, _ = first_run(node)
    backup, _ = backup_state(node, tmp_path / "node.backup")
    restore_state(backup, other)
    store = H323StateStore(other)
    assert sorted(e for e, _ in store.registrations()) == sorted(ep.endpoint_id for ep in endpoints)
    assert store.calls() == []
