"""Structured logs: one line per event, `key=value` text or one JSON object per line.

Callers say what happened and its facts: ``log_event(logger, "call.charged", call="...", rules=["C2"])``.
The formatting lives here only, so every component logs the same way.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_RESERVED = frozenset(vars(logging.makeLogRecord({})))


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, **facts: Any) -> None:
    if logger.isEnabledFor(level):  # cheap when the level is off: this sits on the hot path
        logger.log(level, event, extra={"facts": facts})


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        parts = [f"{ts}.{int(record.msecs):03d}Z", record.levelname.lower(), record.name, record.getMessage()]
        for key, value in getattr(record, "facts", {}).items():
            parts.append(f"{key}={_text(value)}")
        if record.exc_info:
            parts.append("exc=" + json.dumps(self.formatException(record.exc_info)))
        return " ".join(parts)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": record.created,
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        doc.update(getattr(record, "facts", {}))
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def _text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    text = str(value)
    return json.dumps(text) if (" " in text or not text) else text


def configure(level: str = "info", as_json: bool = False, stream=None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if as_json else TextFormatter())
    root = logging.getLogger("meter")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
