"""A small asyncio HTTP/1.1 server for the admin side: /metrics, the REST API and the pages.

Admin traffic is a scrape every few seconds and an operator's browser, so a plain
`asyncio.Protocol` with one request per connection turn is enough; it keeps the node free of a
web framework. Routes are a table of (method, path) -> handler returning (status, type, body).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Awaitable, Callable

from meter.admin.token import authorized
from meter.logs import log_event

log = logging.getLogger("meter.admin")

Handler = Callable[["HttpRequest"], "HttpReply | Awaitable[HttpReply]"]
# A request head larger than this is refused with 431; 16 KiB is h11's and node.js's default.
MAX_HEAD_BYTES = 16 * 1024
MAX_BODY_BYTES = 1024 * 1024

REASONS = {200: "OK", 201: "Created", 204: "No Content", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
           405: "Method Not Allowed", 409: "Conflict", 413: "Payload Too Large",
           431: "Request Header Fields Too Large", 500: "Internal Server Error"}


class HttpRequest:
    __slots__ = ("method", "path", "query", "headers", "body")

    def __init__(self, method: str, path: str, query: str, headers: dict[str, str], body: bytes):
        self.method, self.path, self.query, self.headers, self.body = method, path, query, headers, body

    def json(self) -> Any:
        try:
            return json.loads(self.body or b"null")
        except ValueError as exc:
            raise HttpError(400, f"body is not JSON: {exc}") from None


class HttpReply:
    __slots__ = ("status", "content_type", "body", "headers")

    def __init__(self, status: int, body: bytes | str, content_type: str = "text/plain; charset=utf-8",
                 headers: tuple[tuple[str, str], ...] = ()):
        self.status = status
        self.body = body.encode() if isinstance(body, str) else body
        self.content_type = content_type
        self.headers = headers

    @classmethod
    def json(cls, doc: Any, status: int = 200, headers: tuple[tuple[str, str], ...] = ()) -> "HttpReply":
        return cls(status, json.dumps(doc, indent=1, default=str) + "\n", "application/json", headers)


class HttpError(Exception):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


class Router:
    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], Handler] = {}
        self.prefixes: list[tuple[str, str, Handler]] = []
        self.protected: set[tuple[str, str]] = set()

    def add(self, method: str, path: str, handler: Handler, *, protected: bool = False) -> None:
        """``protected``: a GET that needs the token when the server has one (listings); every
        other method always does (state changes)."""
        if protected:
            self.protected.add((method, path))
        if path.endswith("/*"):
            self.prefixes.append((method, path[:-1], handler))
        else:
            self.routes[(method, path)] = handler

    def find(self, method: str, path: str) -> Handler:
        handler = self.routes.get((method, path))
        if handler:
            return handler
        for m, prefix, h in self.prefixes:
            if m == method and path.startswith(prefix):
                return h
        if any(p == path for (_, p) in self.routes) or any(path.startswith(p) for (_, p, _) in self.prefixes):
            raise HttpError(405, f"{method} not allowed on {path}")
        raise HttpError(404, f"no such resource: {path}")

    def needs_token(self, method: str, path: str) -> bool:
        return method not in ("GET", "HEAD") or (method, path) in self.protected


class _HttpProtocol(asyncio.Protocol):
    def __init__(self, router: Router, token: str | None):
        self.router = router
        self.token = token
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        head_end = self.buffer.find(b"\r\n\r\n")
        if head_end < 0:
            if len(self.buffer) > MAX_HEAD_BYTES:
                self._reply(HttpReply(431, "request head too large\n"))
            return
        try:
            request = self._parse(head_end)
        except HttpError as exc:
            self._reply(HttpReply(exc.status, exc.reason + "\n"))
            return
        if request is None:
            return  # body still arriving
        asyncio.ensure_future(self._dispatch(request))

    def _parse(self, head_end: int) -> HttpRequest | None:
        head = self.buffer[:head_end].decode("latin-1")
        lines = head.split("\r\n")
        try:
            method, target, _version = lines[0].split(" ", 2)
        except ValueError:
            raise HttpError(400, "malformed request line") from None
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise HttpError(400, f"malformed header line: {line[:40]!r}")
            headers[name.strip().lower()] = value.strip()
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            raise HttpError(400, "bad Content-Length") from None
        if length > MAX_BODY_BYTES:
            raise HttpError(413, "body too large")
        body_start = head_end + 4
        if len(self.buffer) < body_start + length:
            return None
        body = self.buffer[body_start:body_start + length]
        self.buffer = b""
        path, _, query = target.partition("?")
        return HttpRequest(method.upper(), path, query, headers, body)

    async def _dispatch(self, request: HttpRequest) -> None:
        try:
            # before the route is looked up: without the token, no 404/405 tells what exists
            if self.token is not None and self.router.needs_token(request.method, request.path) \
                    and not authorized(request.headers.get("authorization"), self.token):
                peer = self.transport.get_extra_info("peername") if self.transport else None
                log_event(log, "admin.unauthorized", logging.WARNING, method=request.method, path=request.path,
                          source=_address(peer), user_agent=request.headers.get("user-agent", ""))
                self._reply(HttpReply.json({"error": "a bearer token is required (RFC 6750)"}, 401,
                                           headers=(("WWW-Authenticate", 'Bearer realm="meter"'),)))
                return
            handler = self.router.find(request.method, request.path)
            reply = handler(request)
            if asyncio.iscoroutine(reply):
                reply = await reply
        except HttpError as exc:
            reply = HttpReply.json({"error": exc.reason}, exc.status)
        except Exception:  # an admin page must never take the node down
            log.exception("admin handler failed")
            reply = HttpReply.json({"error": "internal error, see the node's log"}, 500)
        self._reply(reply)

    def _reply(self, reply: HttpReply) -> None:
        if not self.transport or self.transport.is_closing():
            return
        reason = REASONS.get(reply.status, "Unknown")
        extra = "".join(f"{name}: {value}\r\n" for name, value in reply.headers)
        head = (f"HTTP/1.1 {reply.status} {reason}\r\nContent-Type: {reply.content_type}\r\n{extra}"
                f"Content-Length: {len(reply.body)}\r\nConnection: close\r\n\r\n")
        self.transport.write(head.encode() + reply.body)
        self.transport.close()


class AdminServer:
    """``token``: required (``Authorization: Bearer``) for listings and state changes; None: open.
    ``token_source`` names where it came from, for the start-up log line (never the token itself)."""

    def __init__(self, router: Router, host: str, port: int, token: str | None = None, token_source: str = ""):
        self.router, self.host, self.port = router, host, port
        self.token, self.token_source = token, token_source
        self.server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _HttpProtocol(self.router, self.token), self.host, self.port)
        self.port = self.server.sockets[0].getsockname()[1]
        if self.token is None:
            log_event(log, "admin.listening", host=self.host, port=self.port, auth="none")
        else:
            log_event(log, "admin.listening", host=self.host, port=self.port, auth="bearer",
                      token_from=self.token_source, protected="listings and state changes")


    async def close(self) -> None:
        if self.server:
            self.server.close()
            await self.server.wait_closed()


def _address(peer) -> str:
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else ""

