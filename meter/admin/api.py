"""Routes of the admin server: /metrics for Prometheus, the REST API v1 (documented in
``meter.admin.openapi``), the old unversioned /api/... paths as aliases, and the pages.

Handlers read ``node.metering`` at request time (tests swap nodes) and answer JSON; a 4xx is
``{"error": reason}`` (``ApiError``). Reads are GETs; every other method changes state and needs
the bearer token (``meter.admin.http.Access``).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hmac
import logging
from urllib.parse import parse_qs

from aiohttp import web

from meter import __version__
from meter.admin import metrics, openapi, rules, smart_api
from meter.admin.page_frame import page_asset, page_html, page_response
from meter.admin.http import ACCESS, Access, ApiError, application, error_response, json_response, read_json
from meter.admin.paging import CursorError, matching, page, parse_cursor
from meter.licensing.model import POOLED, UNIT_SCALE
from meter.logs import log_event
from meter.metering.join import call_view, registration_view

log = logging.getLogger("meter.admin")

# Route modules beside this one, each with ``add_routes(app, node)`` and ``OPENAPI_PATHS``: one line
# adds one (branch `smart` adds ``meter.admin.smart_api``).
EXTENSIONS: tuple = (smart_api,)

# Page path -> file in meter/admin/pages/ (the nav bar is in pages/meter.js).
PAGES = {
    "/": "usage.html",
    "/registrations": "registrations.html",
    "/calls": "calls.html",
    "/option-keys": "option-keys.html",
    "/alarms": "alarms.html",
    "/history": "history.html",
}
ASSET_TYPES = {".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml"}
KEY_STATUS = {"pending_restart": "restart_required", "inert": "added_not_processed"}  # K3, K4
STEPS = (60, 3600, 86400)


def build_app(node, access: Access, *, metrics_auth: tuple[str, str] | None = None) -> web.Application:
    """``node`` is the running ``meter.app.Node``; ``metrics_auth`` (user, password) puts /metrics
    behind HTTP basic auth (RFC 7617), as Prometheus' ``basic_auth`` sends it."""
    access.open_paths = frozenset({"/api/v1/openapi.json"})
    app = application()
    app[ACCESS] = access
    api = V1(node)
    r = app.router

    async def scrape(request: web.Request) -> web.Response:
        if metrics_auth is not None and not _basic_auth_ok(request.headers.get("Authorization"), *metrics_auth):
            return error_response(401, "HTTP basic auth required for /metrics",
                                  {"WWW-Authenticate": 'Basic realm="meter metrics", charset="UTF-8"'})
        return web.Response(body=metrics.render(node), headers={"Content-Type": metrics.CONTENT_TYPE})

    r.add_get("/metrics", scrape)
    r.add_get("/healthz", _healthz)
    for prefix in ("/api/v1", "/api"):  # the unversioned paths stay as aliases of v1
        r.add_get(f"{prefix}/licenses", api.licenses)
        r.add_get(f"{prefix}/registrations", api.registrations)
        r.add_get(f"{prefix}/calls", api.calls)
        r.add_get(f"{prefix}/sip", api.sip)
        r.add_get(f"{prefix}/cluster", api.cluster)
    r.add_get("/api/alarms", api.active_alarms)  # the old body: a list of the active alarms
    r.add_get("/api/v1/alarms", api.alarms)
    r.add_get("/api/v1/status", api.status)
    r.add_get("/api/v1/usage", api.usage)
    r.add_get("/api/v1/usage/history", api.usage_history)
    r.add_post("/api/v1/usage/reset-peaks", api.reset_peaks)
    r.add_get("/api/v1/option-keys", api.option_keys)
    r.add_post("/api/v1/option-keys", api.add_option_key)
    r.add_delete(r"/api/v1/option-keys/{index:\d+}", api.remove_option_key)
    r.add_get("/api/v1/rules", api.rules)
    r.add_get("/api/v1/rules/{id}", api.rule)
    document = openapi.document([m.OPENAPI_PATHS for m in EXTENSIONS], max_page_size=node.config.admin.max_page_size)

    async def openapi_json(request: web.Request) -> web.Response:
        return json_response(document)

    r.add_get("/api/v1/openapi.json", openapi_json)
    for module in EXTENSIONS:
        module.add_routes(app, node)
    for path, name in PAGES.items():
        r.add_get(path, _page(name))
    r.add_get("/pages/{name}", _asset)
    return app


class V1:
    def __init__(self, node):
        self.node = node

    @property
    def metering(self):
        return self.node.metering

    def _licensing(self):
        licensing = self.metering.licensing
        if licensing is None:
            raise ApiError(409, "this node keeps no licensing state")
        return licensing

    def _usage(self):
        usage = getattr(self.metering, "usage", None)
        if usage is None:
            raise ApiError(409, "usage accounting is not available on this node")
        return usage

    # ---- status and licenses ------------------------------------------------------------

    async def status(self, request: web.Request) -> web.Response:
        m, config = self.metering, self.node.config
        now = m.clock()
        licensing = m.licensing
        mode = "smart" if licensing is not None and licensing.smart else "pak"
        return json_response({
            "node": m.node_name, "role": m.role, "mode": mode, "enforcement": m.ledger.enforcement,
            "version": __version__, "uptime": max(0.0, now - getattr(self.node, "started_at", now)),
            "banner": _banner(m, now),
        })

    async def licenses(self, request: web.Request) -> web.Response:
        return json_response(licenses_view(self.metering))

    # ---- usage (contract A) ------------------------------------------------------------

    async def usage(self, request: web.Request) -> web.Response:
        m = self.metering
        now = m.clock()
        doc = dict(self._usage().view(now))
        snapshot = m.ledger.snapshot(now)
        doc["peers"] = [{"node": p.name, "alive": p.alive,
                         "licenses": {lic: p.usage.get(lic, 0) / UNIT_SCALE[lic] for lic in POOLED}}
                        for p in m.ledger.pool.peers(now)]
        doc["cluster"] = {lic: {"current": u.in_use_cluster, "capacity": u.capacity}
                          for lic, u in snapshot.licenses.items()}
        return json_response(doc)

    async def usage_history(self, request: web.Request) -> web.Response:
        query = request.query
        history = getattr(self.metering, "usage_history", None)
        license = query.get("license", "rms")
        if license not in POOLED:
            raise ApiError(400, f"license: expected one of {', '.join(POOLED)}, got {license!r}")
        step = _number(query, "step", 3600)
        if step not in STEPS:
            raise ApiError(400, f"step: expected one of {', '.join(map(str, STEPS))}, got {step:g}")
        now = self.metering.clock()
        end = _number(query, "to", now)
        start = _number(query, "from", end - 86400)
        if history is None:
            raise ApiError(409, "usage history is not available on this node")
        # Only stored buckets come back (minutes for recent days, hours for older), so a wide range
        # stays small; from after to is an empty range.
        buckets = history.buckets(license, start, end, int(step)) if start <= end else []
        capacity = self.metering.ledger.snapshot(now).licenses[license].capacity
        return json_response({"license": license, "step": int(step), "from": start, "to": end,
                              "capacity": capacity, "buckets": buckets}, compact=True)

    async def reset_peaks(self, request: web.Request) -> web.Response:
        now = self.metering.clock()
        self._usage().reset_peaks(now)
        log_event(log, "usage.peaks_reset", at=now)
        return json_response({"reset_at": now})

    # ---- listings ----------------------------------------------------------------------

    async def registrations(self, request: web.Request) -> web.Response:
        doc = await listing(request, self.metering.registrations, registration_view, self.node.config.admin)
        _with_bindings(self.node, doc["items"])
        return json_response(doc, compact=True)

    async def calls(self, request: web.Request) -> web.Response:
        m = self.metering
        doc = await listing(request, m.calls, call_view, self.node.config.admin)
        for item in doc["items"]:
            scale = UNIT_SCALE.get(item["license"], 1)
            item["licenses"] = item["units"] / scale  # C4: an audio-only SIP call is half an RMS
            item["charged_on"] = _charged_on(m, item)
        _with_durations(self.node, doc["items"], m.clock())
        return json_response(doc, compact=True)

    async def active_alarms(self, request: web.Request) -> web.Response:
        return json_response([alarm_view(a) for a in self.metering.ledger.alarms.active()])

    async def alarms(self, request: web.Request) -> web.Response:
        m = self.metering
        seen = {}
        if m.licensing is not None:  # from state: raised and cleared, K3 restart required included
            for alarm in m.licensing.store.alarms(active_only=False):
                seen[alarm.id] = alarm
        for alarm in m.ledger.alarms.active():
            seen[alarm.id] = alarm
        items = [{"id": a.id, "rule": a.rule, "severity": a.severity, "text": a.reason, "raised_at": a.raised_at,
                  "cleared_at": a.cleared_at, "cleared_reason": a.cleared_reason}
                 for a in sorted(seen.values(), key=lambda a: (a.raised_at, a.id), reverse=True)]
        return json_response({"items": items})

    async def sip(self, request: web.Request) -> web.Response:
        return json_response(self.node.sip.stats() if self.node.sip else {})

    async def cluster(self, request: web.Request) -> web.Response:
        sync = self.node.pool_sync
        return json_response(sync.status()._asdict() if sync else {"store": "memory"})

    # ---- option keys (K1-K6) -----------------------------------------------------------

    async def option_keys(self, request: web.Request) -> web.Response:
        m = self.metering
        now = m.clock()
        view = self._licensing().view(now, m.ledger.pool.peers(now))
        return json_response({
            "items": [key_item(k) for k in view["keys"]], "serial": view["serial"], "mode": view["mode"],
            "quantities": view["quantities"], "features": view["features"], "peers": view["peers"],
            "alarms": view["alarms"],
        })

    async def add_option_key(self, request: web.Request) -> web.Response:
        from meter.licensing.keys import KeyRefused

        body = await read_json(request)
        if not isinstance(body, dict) or not isinstance(body.get("key"), str) or not body["key"].strip():
            raise ApiError(400, 'body: expected {"key": "<option key text>"}')
        m, licensing = self.metering, self._licensing()
        now = m.clock()
        index = body.get("index")  # `xconfiguration option N key K` writes index N (K4: 1..64)
        if index is not None and (isinstance(index, bool) or not isinstance(index, int)):
            raise ApiError(400, f"index: expected an integer 1..64, got {index!r}")
        try:
            result = licensing.add_key(body["key"].strip(), now, index=index)
        except KeyRefused as exc:
            raise ApiError(400, str(exc)) from None  # the verifier's reason first: forged, altered...
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        m.refresh_licenses(now)
        status = next(s for s in licensing.statuses(now) if s.index == result.index)
        return json_response({**key_item(status._asdict()), "warnings": list(result.warnings)}, 201)

    async def remove_option_key(self, request: web.Request) -> web.Response:
        index = int(request.match_info["index"])
        m, licensing = self.metering, self._licensing()
        now = m.clock()
        if licensing.remove_key(index, now) is None:
            raise ApiError(404, f"no option key at index {index}")
        m.refresh_licenses(now)
        return web.Response(status=204)

    # ---- rules -------------------------------------------------------------------------

    async def rules(self, request: web.Request) -> web.Response:
        return json_response({"items": rules.all_rules()})

    async def rule(self, request: web.Request) -> web.Response:
        rule_id = request.match_info["id"]
        found = rules.by_id().get(rule_id.upper())
        if found is None:
            raise ApiError(404, f"no such rule: {rule_id}")
        return json_response(found)


async def listing(request: web.Request, table, view, settings) -> dict:
    """``?limit=&after=&q=``: one page, ``{"items", "next", "total"}``; pass ``next`` as ``after`` for
    the following page (``next`` is null on the last). Built in slices (meter.admin.paging); ``q``
    keeps the records whose view mentions it (case-insensitive), ``total`` is then the matches."""
    query = parse_qs(request.query_string, keep_blank_values=True)
    limit_text = query.get("limit", [str(settings.page_size)])[-1]
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= settings.max_page_size:
        raise ApiError(400, f"limit: expected 1..{settings.max_page_size}, got {limit_text!r}")
    try:
        after = parse_cursor(query["after"][-1]) if "after" in query else None
    except CursorError as err:
        raise ApiError(400, str(err)) from None
    needle = query.get("q", [""])[-1].strip().lower()
    if needle:
        table = await matching(table, view, needle)
    return await page(table, view, limit=int(limit_text), after=after)


def licenses_view(metering) -> dict:
    now = metering.clock()
    snap = metering.ledger.snapshot(now)
    doc = snap.to_dict()
    doc["alarms"] = [alarm_view(a) for a in snap.alarms]
    # Running totals (meter.metering.tallies): the same counts as walking the tables, at any size.
    tallies = metering.tallies
    doc["registrations_by_class"] = _sum_by(tallies.registrations, lambda key: f"{key[0]}/{key[1]}")
    doc["calls_by_class"] = _sum_by(tallies.calls, lambda key: key[0])
    if metering.licensing is not None:
        doc["option_keys"] = metering.licensing.view(now, metering.ledger.pool.peers(now))
    return doc


def _charged_on(m, item: dict) -> str:
    """This node's name, or, for a call the other node of a C/E pair pays for (C3), its role:
    "E" seen from C, "C" seen from E (the call costs nothing here)."""
    record = m.calls.get((item["protocol"], item["call_id"]))
    payer = record.charge.payer if record is not None else ""
    return payer if payer and payer != m.role else m.node_name


def key_item(status: dict) -> dict:
    """One installed key (``KeyStatus._asdict()``) as the API lists it (K6)."""
    from meter.licensing.options import OPTIONS

    option = OPTIONS.get(status["option"])
    feature = option is not None and option.license is None
    return {"index": status["index"], "key": status["text"], "option": status["option"], "title": status["title"],
            "quantity": status["quantity"], "features": [status["title"]] if feature else [],
            "valid_until": status["expires"], "status": KEY_STATUS.get(status["state"], status["state"]),
            "detail": status["detail"], "key_id": status["key_id"]}


def alarm_view(alarm) -> dict:
    return dataclasses.asdict(alarm)


def _banner(metering, now: float) -> str | None:
    """The warning every page shows: enforce mode with no licenses refuses everything."""
    if metering.ledger.enforcement != "enforce":
        return None
    snapshot = metering.ledger.snapshot(now)
    if any(u.capacity for u in snapshot.licenses.values()):
        return None
    return ("enforce mode with no licenses: every registration and RMS call is refused; install option keys "
            "or set [licensing] enforcement = \"observe\"")


def _with_bindings(node, items: list[dict]) -> None:
    """SIP registrations gain their binding's contact, User-Agent and seconds to expiry (only this page's)."""
    core = getattr(node.sip, "core", None) if node.sip else None
    for item in items:
        item.setdefault("contact", "")
        item.setdefault("user_agent", "")
        item.setdefault("expires", None)
    if core is None:
        return
    now = core.registrar.clock.time()
    for item in items:
        if item["protocol"] != "sip":
            continue
        bindings = core.location.lookup(item["alias"], now)
        if bindings:
            b = bindings[0]
            item.update(contact=b.contact, user_agent=b.user_agent, expires=round(b.remaining(now)))


def _with_durations(node, items: list[dict], now: float) -> None:
    core = getattr(node.sip, "core", None) if node.sip else None
    started = {}
    if core is not None:
        ids = {item["call_id"] for item in items if item["protocol"] == "sip"}
        started = {call.call_id: call.started for call in core.dialogs.with_call_ids(ids)}
    for item in items:
        at = started.get(item["call_id"])
        item["started_at"] = at
        item["duration"] = None if at is None else round(max(0.0, now - at), 1)


def _number(query, name: str, default: float) -> float:
    text = query.get(name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        raise ApiError(400, f"{name}: expected a number, got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ApiError(400, f"{name}: expected a finite number, got {text!r}")
    return value


def _basic_auth_ok(header: str | None, user: str, password: str) -> bool:
    scheme, _, value = (header or "").strip().partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        given = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return False
    given_user, sep, given_password = given.partition(":")
    return bool(sep) & hmac.compare_digest(given_user.encode(), user.encode()) \
        & hmac.compare_digest(given_password.encode(), password.encode())


def _sum_by(counts: dict, label) -> dict[str, int]:
    """Counts regrouped under ``label(key)``, in sorted label order."""
    out: dict[str, int] = {}
    for key, count in counts.items():
        k = label(key)
        out[k] = out.get(k, 0) + count
    return dict(sorted(out.items()))


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n", content_type="text/plain")


def _page(name: str):
    async def serve(request: web.Request) -> web.Response:
        return page_response(name)
    return serve


async def _asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    suffix = name[name.rfind("."):] if "." in name else ""
    if "/" in name or name.startswith(".") or suffix not in ASSET_TYPES | {".html": "text/html"}:
        raise ApiError(404, f"no such page file: {name}")
    try:
        body = page_html(name) if suffix == ".html" else page_asset(name)
    except (FileNotFoundError, IsADirectoryError):
        raise ApiError(404, f"no such page file: {name}") from None
    return web.Response(body=body, content_type=(ASSET_TYPES | {".html": "text/html"})[suffix], charset="utf-8")

