"""Routes of the admin server: /metrics for Prometheus, a small JSON API, and the status page."""

from __future__ import annotations

import dataclasses
import json
from importlib import resources
from urllib.parse import parse_qs

from meter.admin import metrics
from meter.admin.http import HttpError, HttpReply, Router
from meter.admin.paging import CursorError, page, parse_cursor
from meter.metering.join import call_view, registration_view


def build_router(node) -> Router:
    """``node`` is the running ``meter.app.Node``."""
    router = Router()
    metering = lambda: node.metering  # noqa: E731  (read at request time: tests swap nodes)

    router.add("GET", "/metrics", lambda req: HttpReply(200, metrics.render(node), metrics.CONTENT_TYPE))
    router.add("GET", "/healthz", lambda req: HttpReply(200, "ok\n"))
    router.add("GET", "/api/licenses", lambda req: HttpReply.json(licenses_view(metering())))
    settings = node.config.admin

    async def registrations(req):
        return await listing(req, metering().registrations, registration_view, settings)

    async def calls(req):
        return await listing(req, metering().calls, call_view, settings)

    router.add("GET", "/api/registrations", registrations, protected=True)
    router.add("GET", "/api/calls", calls, protected=True)
    router.add("GET", "/api/alarms", lambda req: HttpReply.json(
        [alarm_view(a) for a in metering().ledger.alarms.active()]))
    router.add("GET", "/api/sip", lambda req: HttpReply.json(node.sip.stats() if node.sip else {}))
    router.add("GET", "/api/cluster", lambda req: HttpReply.json(
        node.pool_sync.status()._asdict() if node.pool_sync else {"store": "memory"}))
    router.add("GET", "/", lambda req: HttpReply(200, _page(), "text/html; charset=utf-8"))
    return router


async def listing(req, table, view, settings) -> HttpReply:
    """``?limit=&after=``: one page, ``{"items", "next", "total"}``; pass ``next`` as ``after`` for the
    following page (``next`` is null on the last). Built in slices (meter.admin.paging)."""
    query = parse_qs(req.query)
    limit_text = query.get("limit", [str(settings.page_size)])[-1]
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= settings.max_page_size:
        raise HttpError(400, f"limit: expected 1..{settings.max_page_size}, got {limit_text!r}")
    try:
        after = parse_cursor(query["after"][-1]) if "after" in query else None
    except CursorError as err:
        raise HttpError(400, str(err)) from None
    doc = await page(table, view, limit=int(limit_text), after=after)
    # compact: the C encoder (indent forces the pure-Python one, 4x slower on a full page)
    return HttpReply(200, json.dumps(doc, default=str) + "\n", "application/json")


def licenses_view(metering) -> dict:
    now = metering.clock()
    snap = metering.ledger.snapshot(now)
    doc = snap.to_dict()
    doc["alarms"] = [alarm_view(a) for a in snap.alarms]
    doc["registrations_by_class"] = _count(metering.registrations.values(), lambda r: f"{r.protocol}/{r.device_class}")
    doc["calls_by_class"] = _count(metering.calls.values(), lambda c: str(c.media))
    if metering.licensing is not None:
        doc["option_keys"] = metering.licensing.view(now, metering.ledger.pool.peers(now))
    return doc


def alarm_view(alarm) -> dict:
    return dataclasses.asdict(alarm)


def _count(items, key) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        k = key(item)
        out[k] = out.get(k, 0) + 1
    return out


def _page() -> bytes:
    return (resources.files("meter.admin") / "status.html").read_bytes()
