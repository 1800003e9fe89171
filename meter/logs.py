"""Structured logs: one line per event, `key=value` text or one JSON object per line.

Callers say what happened and its facts: ``log_event(logger, "call.charged", call="...", rules=["C2"])``.
The formatting lives here only, so every component logs the same way.

Facts often come from the wire (a From, a User-Agent, an H.323 alias): C0/C1 control characters
and DEL in them are written as ``\\xNN`` in both formats, so a crafted header can neither forge a
log line (CR, LF) nor drive a terminal (ESC) - CWE-117.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_RESERVED = frozenset(vars(logging.makeLogRecord({})))

# C0 controls, DEL and C1 controls -> a literal backslash-x escape (str.translate: one C-level pass)
_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, **facts: Any) -> None:
    if logger.isEnabledFor(level):  # cheap when the level is off: this sits on the hot path
        logger.log(level, event, extra={"facts": facts})


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        parts = [f"{ts}.{int(record.msecs):03d}Z", record.levelname.lower(), record.name, escape(record.getMessage())]
        for key, value in getattr(record, "facts", {}).items():
            parts.append(f"{escape(str(key))}={_text(value)}")
        if record.exc_info:
            parts.append("exc=" + json.dumps(self.formatException(record.exc_info)))
        return " ".join(parts)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": record.created,
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": escape(record.getMessage()),
        }
        doc.update((escape(str(k)), _json_safe(v)) for k, v in getattr(record, "facts", {}).items())
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def escape(text: str) -> str:
    """``text`` with every C0/C1 control character and DEL written as ``\\xNN``."""
    return text.translate(_CONTROLS)


def _json_safe(value: Any) -> Any:
    if isinstance(value, (bool, int, float)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {escape(str(k)): _json_safe(v) for k, v in value.items()}
    return escape(str(value))


def _text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(escape(str(v)) for v in value)
    text = escape(str(value))
    return json.dumps(text) if (" " in text or not text) else text


def configure(level: str = "info", as_json: bool = False, stream=None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if as_json else TextFormatter())
    root = logging.getLogger("meter")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
