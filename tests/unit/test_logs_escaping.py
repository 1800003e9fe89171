"""meter.logs: control bytes from SIP/H.323 fields are escaped as \\xNN in text and JSON lines (CWE-117),
so a crafted header cannot forge a log line or drive a terminal (issue 10 item 8)."""

from __future__ import annotations

import io
import json
import logging

import pytest

from meter import logs

CRAFTED = "alice\r\n2026-01-01T00:00:00.000Z info meter.sip call.charged rules=C2\x1b[31m\x7f\x85\x00"


def _emit(as_json: bool, **facts) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter() if as_json else logs.TextFormatter())
    logger = logging.getLogger("test_logs_escaping")  # outside "meter": the node's logging is untouched
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        logs.log_event(logger, "sip.malformed", **facts)
    finally:
        logger.removeHandler(handler)
    return stream.getvalue()


def test_escape_writes_c0_del_and_c1_as_backslash_x():
    assert logs.escape("a\nb\rc\td\x00e\x1bf\x7fg\x80h\x9fi") == (
        "a\\x0ab\\x0dc\\x09d\\x00e\\x1bf\\x7fg\\x80h\\x9fi")
    assert logs.escape("plain é ü \xa0 ok") == "plain é ü \xa0 ok"  # printable non-ASCII stays


@pytest.mark.parametrize("as_json", [False, True])
def test_a_crafted_header_stays_on_one_line(as_json):
    out = _emit(as_json, user_agent=CRAFTED, aliases=["bob\n", "carol"], source="udp:10.0.0.2:5062")
    assert out.count("\n") == 1 and out.endswith("\n")
    for byte in ("\r", "\x1b", "\x7f", "\x85", "\x00"):
        assert byte not in out
    assert "\\x0d\\x0a" in out.replace("\\\\", "\\") and "\\x1b[31m" in out.replace("\\\\", "\\")


def test_json_line_keeps_types_and_escapes_strings():
    doc = json.loads(_emit(True, ua="x\ny", n=3, ok=True, rules=["C2", "a\x1b"], nested={"k\n": "v\r"}))
    assert doc["ua"] == "x\\x0ay" and doc["n"] == 3 and doc["ok"] is True
    assert doc["rules"] == ["C2", "a\\x1b"] and doc["nested"] == {"k\\x0a": "v\\x0d"}


def test_text_line_escapes_values_and_lists():
    out = _emit(False, ua="x\ny", rules=["C2", "a\x1b"])
    assert "ua=x\\x0ay" in out and "rules=C2,a\\x1b" in out
