"""Dates the commands take: ISO 8601 dates and date-times, UTC unless they say otherwise."""

from __future__ import annotations

import datetime as dt


def iso_timestamp(text: str) -> float:
    """Epoch seconds of ``YYYY-MM-DD[THH:MM[:SS]][zone]`` (a trailing ``Z`` is UTC); ValueError if not."""
    when = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return when.timestamp()
