"""Logs an operator can follow at info: each registration accepted, refused or released, each call
with its license, licenses (RMS in licenses: C4) and duration; alarms raised and cleared at warning
(K3, P4); no Python repr in any value."""

from __future__ import annotations

import logging
import re

from meter.logs import TextFormatter
from meter.store.licensing import init_state
from meter.store.node_licensing import NodeLicensing
from tests.unit.test_metering import AUDIO, ROOM_KIT, complete, invite, make_metering, register

REPR = re.compile(r"<[A-Za-z_.]+[:>]|\{'|\('|\[\'|object at 0x")


def lines(caplog, level=logging.INFO) -> list[str]:
    formatter = TextFormatter()
    return [formatter.format(r) for r in caplog.records if r.levelno >= level and r.name.startswith("meter")]


def find(found: list[str], event: str) -> list[str]:
    return [line for line in found if f" {event} " in line]


def test_r1_r11_registrations_accepted_refused_and_released_are_info_lines(caplog):
    caplog.set_level(logging.DEBUG, logger="meter")
    m, policy, clock = make_metering(room=1, enforcement="enforce")
    assert register(policy, "roomkit", ROOM_KIT).allowed
    assert not register(policy, "second", ROOM_KIT).allowed  # R11: the pool is empty
    policy.on_bindings("sip:roomkit@lab.test", (), ROOM_KIT, None, 0)
    info = lines(caplog)
    accepted = find(info, "registration.charged")
    assert len(accepted) == 1 and "alias=sip:roomkit@lab.test" in accepted[0] and "license=room" in accepted[0]
    assert "licenses=1" in accepted[0] and "rules=R1" in accepted[0]
    refused = find(info, "registration.refused")
    assert len(refused) == 1 and "alias=sip:second@lab.test" in refused[0] and "R11" in refused[0]
    released = find(info, "registration.released")
    assert len(released) == 1 and "license=room" in released[0] and "cause=" in released[0]
    assert not [line for line in info if REPR.search(line)], [line for line in info if REPR.search(line)]


def test_c4_c5_each_call_ends_with_one_info_line_license_licenses_and_duration(caplog):
    caplog.set_level(logging.INFO, logger="meter")
    m, policy, clock = make_metering()
    register(policy, "alice", ROOM_KIT)
    invite(policy, "c1", "sip:+1@itsp.example")
    complete(policy, "c1", AUDIO)
    clock.now += 42.5
    policy.on_call_ended("c1", "bye")
    info = lines(caplog)
    settled = find(info, "call.settled")
    assert len(settled) == 1 and "media=audio_sip" in settled[0] and "licenses=0.5" in settled[0]
    ended = find(info, "call.released")
    assert len(ended) == 1
    assert all(fact in ended[0] for fact in ("call_id=c1", "license=rms", "licenses=0.5", "duration=42.5s",
                                             "cause=bye", "callee=sip:+1@itsp.example", "C4"))
    assert not [line for line in info if REPR.search(line)]


def test_k3_alarms_raised_and_cleared_are_warnings(tmp_path, caplog):
    """K3: a restart-required key raises its alarm at warning; the restart clears it at warning."""
    from meter.licensing.keys import issue_key
    from meter.store.licensing import load_issuer

    caplog.set_level(logging.INFO, logger="meter")
    init_state(tmp_path)
    with NodeLicensing.open(tmp_path) as node:
        text = issue_key(load_issuer(node.store.issuer_key_path), serial=node.serial,
                         option="EXPRESSWAY_SERIES", issued_at=1000.0)
        node.add_key(text, 1000.0)
        node.node_started(1001.0)
    warnings = lines(caplog, logging.WARNING)
    raised, cleared = find(warnings, "alarm.raised"), find(warnings, "alarm.cleared")
    assert len(raised) == 1 and "alarm=restart-required" in raised[0] and "rule=K3" in raised[0]
    assert len(cleared) == 1 and "rule=K3" in cleared[0]
    assert all(" warning " in line for line in raised + cleared)


def test_licenses_in_force_are_listed_without_a_repr(caplog):
    caplog.set_level(logging.INFO, logger="meter")
    from meter.metering.join import Metering

    m, _, clock = make_metering()

    class Keys:  # the licensing state's grants, as NodeLicensing gives them
        license_mode, smart = "pak", False

        def grants(self, now):
            from meter.licensing.keytable import Grants
            from meter.licensing.model import License
            return Grants({License.RMS: 10, License.ROOM: 5}, frozenset())

        def next_change(self, now):
            return None

    m.licensing = Keys()
    Metering.refresh_licenses(m, clock.now)
    line = find(lines(caplog), "licenses.in_force")[0]
    assert "quantities=rms:10,room:5" in line and not REPR.search(line)
