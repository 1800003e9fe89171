"""Pages of a big table for the admin API, built in slices so the SIP loop keeps answering.

A page is the ``limit`` smallest keys after the cursor, in key order: a key that stays in the table
is listed exactly once across pages however the table changes between them (Kubernetes' list
``continue`` tokens and GitHub's cursors behave the same). Finding them scans every key, so the
scan and the views are done ``SLICE`` items at a time with a yield to the event loop between slices:
one listing of 60,000 registrations never holds the loop for more than one slice.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Mapping

#: Keys compared, or views built, between two yields to the loop: about a millisecond of work.
SLICE = 2000


class CursorError(ValueError):
    """An ``after`` cursor this API did not hand out."""


def cursor(key: tuple[str, str]) -> str:
    """A table key (``(protocol, id)``) as the ``next`` cursor: ``protocol:id``."""
    return f"{key[0]}:{key[1]}"


def parse_cursor(text: str) -> tuple[str, str]:
    protocol, sep, rest = text.partition(":")
    if not sep or not protocol:
        raise CursorError(f"after: expected a cursor as returned in 'next' (protocol:id), got {text!r}")
    return protocol, rest


async def page(table: Mapping[tuple[str, str], Any], view: Callable[[tuple[str, str], Any], dict], *,
               limit: int, after: tuple[str, str] | None = None) -> dict:
    """``{"items": [...], "next": cursor or None, "total": len(table)}``: the next ``limit`` records."""
    keys = list(table)  # one C-level copy: the table may change while this yields
    total = len(keys)
    best: list[tuple[str, str]] = []  # the limit + 1 smallest keys after the cursor seen so far
    low = after if after is not None else ("",)  # every key (protocol, id) sorts after ("",)
    for start in range(0, len(keys), SLICE):
        chunk = keys[start:start + SLICE]
        if len(best) > limit:  # full: only keys before the current last can still get in
            high = best[-1]
            chunk = [k for k in chunk if low < k < high]
        else:
            chunk = [k for k in chunk if k > low]
        if chunk:
            best = sorted(best + chunk)[:limit + 1]
        if start + SLICE < len(keys):
            await asyncio.sleep(0)
    chosen = best[:limit]
    items = []
    for start in range(0, len(chosen), SLICE):
        for key in chosen[start:start + SLICE]:
            record = table.get(key)
            if record is not None:  # gone since the scan
                items.append(view(key, record))
        await asyncio.sleep(0)
    more = len(best) > limit
    return {"items": items, "next": cursor(chosen[-1]) if more else None, "total": total}


async def matching(table: Mapping[tuple[str, str], Any], view: Callable[[tuple[str, str], Any], dict],
                   needle: str) -> dict[tuple[str, str], Any]:
    """The records whose view mentions ``needle`` (lower case), looked at ``SLICE`` at a time with a
    yield between slices, like ``page``: a filtered listing of 60,000 does not hold the loop either."""
    keys = list(table)
    found = {}
    for start in range(0, len(keys), SLICE):
        for key in keys[start:start + SLICE]:
            record = table.get(key)
            if record is not None and needle in " ".join(map(str, view(key, record).values())).lower():
                found[key] = record
        await asyncio.sleep(0)
    return found
