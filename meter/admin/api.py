"""Routes of the admin server: /metrics for Prometheus, a small JSON API, and the status page."""

from __future__ import annotations

import dataclasses
from importlib import resources

from meter.admin import metrics
from meter.admin.http import HttpReply, Router


def build_router(node) -> Router:
    """``node`` is the running ``meter.app.Node``."""
    router = Router()
    metering = lambda: node.metering  # noqa: E731  (read at request time: tests swap nodes)

    router.add("GET", "/metrics", lambda req: HttpReply(200, metrics.render(node), metrics.CONTENT_TYPE))
    router.add("GET", "/healthz", lambda req: HttpReply(200, "ok\n"))
    router.add("GET", "/api/licenses", lambda req: HttpReply.json(licenses_view(metering())))
    router.add("GET", "/api/registrations", lambda req: HttpReply.json(metering().registration_views()))
    router.add("GET", "/api/calls", lambda req: HttpReply.json(metering().call_views()))
    router.add("GET", "/api/alarms", lambda req: HttpReply.json(
        [alarm_view(a) for a in metering().ledger.alarms.active()]))
    router.add("GET", "/api/sip", lambda req: HttpReply.json(node.sip.stats() if node.sip else {}))
    router.add("GET", "/api/cluster", lambda req: HttpReply.json(
        node.pool_sync.status()._asdict() if node.pool_sync else {"store": "memory"}))
    router.add("GET", "/", lambda req: HttpReply(200, _page(), "text/html; charset=utf-8"))
    return router


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
