"""No log formatting on the hot path below the active level (issue 11 item 2).

A call's charge (C2) is logged at DEBUG (its operator line comes when it ends): with the node at its
usual INFO level the facts of that line are not turned into text. A registration accepted (R9) is
the operator's INFO line (issue 12): below that level (WARNING) it builds nothing, at INFO it names
its source. A refusal (R11) is logged at INFO and always names its source as text.
"""

from __future__ import annotations

import logging

from meter.logs import log_event
from tests.unit.test_metering import ROOM_KIT, invite, make_metering, register


class CountingSource:
    """A source address that counts how often it is turned into text."""

    host, port, transport = "192.0.2.7", 5060, "udp"

    def __init__(self) -> None:
        self.texts = 0

    def __str__(self) -> str:
        self.texts += 1
        return "udp:192.0.2.7:5060"


def _charge(m, alias: str, source) -> None:
    from meter.licensing.registrations import RegistrationFacts

    facts = RegistrationFacts(m.role, "sip", "direct", 1, ROOM_KIT)
    m.charge_registration("sip", alias, facts, m.clock(), source=source)


def test_r9_charge_below_the_active_level_builds_no_text(caplog):
    m, _, _ = make_metering()
    source = CountingSource()
    with caplog.at_level(logging.WARNING, logger="meter"):
        _charge(m, "sip:alice@lab.test", source)
    assert ("sip", "sip:alice@lab.test") in m.registrations  # charged all the same
    assert source.texts == 0
    assert not [r for r in caplog.records if r.getMessage() == "registration.charged"]


def test_r9_charge_at_info_is_the_operators_line_with_its_source_as_text(caplog):
    m, _, _ = make_metering()
    source = CountingSource()
    with caplog.at_level(logging.INFO, logger="meter"):
        _charge(m, "sip:alice@lab.test", source)
    (record,) = [r for r in caplog.records if r.getMessage() == "registration.charged"]
    assert record.facts["source"] == "udp:192.0.2.7:5060" and source.texts == 1
    assert record.facts["license"] == "room" and "R9" in record.facts["rules"]


def test_r11_refusal_at_info_names_its_source_as_text(caplog):
    m, _, _ = make_metering(room=0, desktop=0)
    source = CountingSource()
    with caplog.at_level(logging.INFO, logger="meter"):
        _charge(m, "sip:bob@lab.test", source)
    (record,) = [r for r in caplog.records if r.getMessage() == "registration.refused"]
    assert record.facts["source"] == "udp:192.0.2.7:5060"


def test_c2_call_charge_below_the_active_level_builds_no_text(caplog):
    _, policy, _ = make_metering(rms=1)
    source = CountingSource()
    with caplog.at_level(logging.INFO, logger="meter"):
        assert invite(policy, "c1", "sip:+1@itsp.example", source=source).allowed
    assert source.texts == 0


def test_log_event_below_the_level_touches_no_fact():
    source = CountingSource()
    logger = logging.getLogger("meter.test.laziness")
    logger.setLevel(logging.WARNING)
    log_event(logger, "x.happened", logging.INFO, source=source)
    assert source.texts == 0
