"""The admin HTTP server: aiohttp on the node's own event loop (uvloop), serving /metrics, the REST
API and the pages.

What the node asks of it beyond aiohttp's defaults: a request head too large gets 431 (RFC 6585 §5)
rather than aiohttp's 400, a body too large 413, every error a JSON ``{"error": reason}``, and the
bearer token (RFC 6750) checked before a route is looked up, so that without it no 404/405 tells
what exists. The routes themselves are in ``meter.admin.api``.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.web_protocol import RequestHandler

from meter.admin.token import authorized
from meter.logs import log_event

log = logging.getLogger("meter.admin")

# One header line (or the request line) larger than this is refused with 431; 16 KiB is h11's and
# node.js's default for the whole head. At most MAX_HEADERS header lines (Apache's LimitRequestFields).
MAX_HEAD_BYTES = 16 * 1024
MAX_HEADERS = 100
MAX_BODY_BYTES = 1024 * 1024
# An idle keep-alive connection holds a descriptor from the admin share of `[limits] fd_reserve`:
# closed after a few seconds (a scrape every 15 s opens a fresh one cheaply).
KEEPALIVE_SECONDS = 5.0
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")

ACCESS = web.AppKey("access", "Access")


class Access:
    """Who may do what. ``token``: required on every state change (POST/PUT/DELETE), loopback too;
    on reads of /api/ only when ``protect_reads`` (`[admin] protect_reads`, or an address beyond
    loopback). ``open_paths``: API reads that never need it (the OpenAPI document)."""

    def __init__(self, token: str | None, *, protect_reads: bool = False, source: str = "",
                 open_paths: frozenset[str] = frozenset()):
        self.token, self.protect_reads, self.source, self.open_paths = token, protect_reads, source, open_paths

    def needs_token(self, method: str, path: str) -> bool:
        if method not in SAFE_METHODS:
            return True
        return self.protect_reads and path.startswith("/api/") and path not in self.open_paths

    def allows(self, header: str | None) -> bool:
        return self.token is not None and authorized(header, self.token)


class ApiError(Exception):
    """A 4xx with its reason: the body is ``{"error": reason}``."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


def json_response(doc: Any, status: int = 200, *, compact: bool = False) -> web.Response:
    # compact: the C encoder (indent forces the pure-Python one, 4x slower on a full page)
    text = json.dumps(doc, default=str) if compact else json.dumps(doc, indent=1, default=str)
    # no charset parameter: JSON is UTF-8 by definition (RFC 8259 §8.1)
    return web.Response(status=status, body=(text + "\n").encode(), content_type="application/json")


def error_response(status: int, reason: str, headers: dict[str, str] | None = None) -> web.Response:
    response = json_response({"error": reason}, status)
    response.headers.update(headers or {})
    return response


async def read_json(request: web.Request) -> Any:
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, f"body too large: at most {MAX_BODY_BYTES} bytes") from None
    try:
        return json.loads(body or b"null")
    except ValueError as exc:
        raise ApiError(400, f"body is not JSON: {exc}") from None


@web.middleware
async def _guard(request: web.Request, handler) -> web.StreamResponse:
    access = request.app[ACCESS]
    if access.needs_token(request.method, request.path) and not access.allows(request.headers.get("Authorization")):
        log_event(log, "admin.unauthorized", logging.WARNING, method=request.method, path=request.path,
                  source=_address(request), user_agent=request.headers.get("User-Agent", ""))
        return error_response(401, "a bearer token is required (RFC 6750)",
                              {"WWW-Authenticate": 'Bearer realm="meter"'})
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.reason)
    except web.HTTPRequestEntityTooLarge:
        return error_response(413, f"body too large: at most {MAX_BODY_BYTES} bytes")
    except web.HTTPException as exc:  # aiohttp's own 404/405: the same JSON shape as ours
        if exc.status >= 400:
            reason = {404: f"no such resource: {request.path}",
                      405: f"{request.method} not allowed on {request.path}"}.get(exc.status, exc.reason)
            return error_response(exc.status, reason, {k: v for k, v in exc.headers.items() if k == "Allow"})
        raise
    except Exception:  # an admin page must never take the node down
        log.exception("admin handler failed")
        return error_response(500, "internal error, see the node's log")


def application() -> web.Application:
    """An empty admin application with the node's error handling and token check."""
    return web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[_guard])


class _Handler(RequestHandler):
    def handle_error(self, request, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if not isinstance(exc, BadHttpMessage) or request.writer.output_size > 0:
            return super().handle_error(request, status, exc, message)
        # A request that is not HTTP: one line in the log (aiohttp's own is a traceback), a JSON
        # answer, and 431 for an oversized head (RFC 6585 §5) where aiohttp says 400.
        if isinstance(exc, LineTooLong) or "Too many headers" in str(exc):
            status, reason = 431, "request head too large"
        else:
            status, reason = 400, f"malformed request: {str(exc).strip().splitlines()[0][:200]}"
        log_event(log, "admin.bad_request", status=status, reason=reason, source=_address(request))
        response = error_response(status, reason)
        response.force_close()
        return response


class _Server(web.Server):
    def __call__(self) -> RequestHandler:
        return _Handler(self, loop=self._loop, **self._kwargs)


class _Runner(web.AppRunner):
    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _Server  # same state, our request handler
        return server


class AdminServer:
    """The application on ``host:port``; ``port`` 0 takes a free one (read ``.port`` after start)."""

    def __init__(self, app: web.Application, host: str, port: int):
        self.app, self.host, self.port = app, host, port
        self.runner: web.AppRunner | None = None

    async def start(self) -> None:
        self.runner = _Runner(self.app, access_log=None, keepalive_timeout=KEEPALIVE_SECONDS,
                              max_line_size=MAX_HEAD_BYTES, max_field_size=MAX_HEAD_BYTES, max_headers=MAX_HEADERS)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, self.port)
        try:
            await site.start()  # OSError on a port in use: `meter run` stops with node.cannot_start
        except BaseException:
            await self.runner.cleanup()
            raise
        self.port = self.runner.addresses[0][1]
        access = self.app[ACCESS]
        log_event(log, "admin.listening", host=self.host, port=self.port, auth="bearer",
                  token_from=access.source, protected="state changes and API reads" if access.protect_reads
                  else "state changes")

    async def close(self) -> None:
        if self.runner:
            await self.runner.cleanup()


def _address(request: web.Request) -> str:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else ""
