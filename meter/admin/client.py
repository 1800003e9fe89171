"""The CLI's one way to the running node: its admin API v1 (`--admin URL`, bearer token).

One place for the URL, the token and the errors, so every command says the same thing when the
node is down ("cannot reach the node at URL: ...") or wants a token (401). Standard library only:
a command runs once and exits, it needs no event loop.

The node's URL: ``--admin``, else ``$METER_ADMIN``, else the config's ``[admin] host``/``port``.
The token: ``$METER_ADMIN_TOKEN``, else ``<state_dir>/admin-token`` (read only: the node creates it).
A node from before the API v1 serves only the unversioned ``/api/...`` reads: ``get`` falls back
to them when ``/api/v1/...`` answers 404.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from meter.admin.token import ENV_VAR as TOKEN_VAR
from meter.admin.token import FILE_NAME as TOKEN_FILE

ADMIN_VAR = "METER_ADMIN"
TIMEOUT = 5.0


class AdminError(Exception):
    """The node answered, but not with what was asked: ``status`` and the one-line reason."""

    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        self.reason = reason
        super().__init__(reason)


class NodeUnreachable(Exception):
    """Nothing answers at the admin URL (the node is down, or another URL is meant)."""


class NotSupported(AdminError):
    """The node serves no such route (an older node, before the API v1)."""


def admin_url(config, explicit: str | None = None) -> str:
    """``--admin``, else ``$METER_ADMIN``, else ``http://<[admin] host>:<port>`` (a wildcard host
    reached on loopback)."""
    if explicit:
        return explicit.rstrip("/")
    if os.environ.get(ADMIN_VAR):
        return os.environ[ADMIN_VAR].rstrip("/")
    host = config.admin.host
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{config.admin.port}"


def read_token(state_dir: str | Path | None) -> str | None:
    """``$METER_ADMIN_TOKEN``, else the node's ``<state_dir>/admin-token`` when readable; never created."""
    token = os.environ.get(TOKEN_VAR, "").strip()
    if token:
        return token
    if state_dir is None:
        return None
    try:
        return (Path(state_dir) / TOKEN_FILE).read_text().strip() or None
    except OSError:
        return None


class AdminClient:
    def __init__(self, url: str, token: str | None = None, *, timeout: float = TIMEOUT) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    # ---- requests -------------------------------------------------------------------------

    def get(self, path: str, *, legacy: str | None = None) -> Any:
        """``GET /api/v1/<path>``; on a node without it, ``GET /api/<legacy>`` (``legacy`` = the
        unversioned path, when one exists)."""
        try:
            return self.request("GET", path)
        except NotSupported:
            if legacy is None:
                raise
            return self.request("GET", legacy, version="")

    def post(self, path: str, body: dict | None = None) -> Any:
        return self.request("POST", path, body if body is not None else {})

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    def get_all(self, resource: str, *, legacy: str | None = None) -> list[dict]:
        """Every record of a paged listing (``{"items","next","total"}``), page after page."""
        doc = self.get(resource, legacy=legacy)
        rows = list(doc["items"])
        while doc.get("next"):
            after = urllib.parse.quote(doc["next"], safe="")
            doc = self.get(f"{resource}?after={after}", legacy=f"{legacy}?after={after}" if legacy else None)
            rows += doc["items"]
        return rows

    def request(self, method: str, path: str, body: Any = None, *, version: str = "v1") -> Any:
        prefix = f"/api/{version}/" if version else "/api/"
        url = self.url + prefix + path.lstrip("/")
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as reply:
                raw = reply.read()
        except urllib.error.HTTPError as exc:
            raise self._refusal(exc, method, prefix + path.lstrip("/")) from None
        except (urllib.error.URLError, OSError) as exc:
            why = getattr(exc, "reason", exc)
            raise NodeUnreachable(f"cannot reach the node at {self.url}: {_one_line(why)}") from None
        return json.loads(raw) if raw.strip() else None

    def _refusal(self, exc: urllib.error.HTTPError, method: str, path: str) -> AdminError:
        reason = _error_text(exc)
        if exc.code == 401:
            return AdminError(401, f"the node at {self.url} wants its admin token for {method} {path}: "
                                   f"set {TOKEN_VAR}, or run as a user who can read <state_dir>/{TOKEN_FILE}"
                                   + ("" if self.token is None else " (the token sent was refused)"))
        if exc.code in (404, 405) and _no_route(reason):
            return NotSupported(exc.code, f"the node at {self.url} has no {method} {path} (an older node?)")
        return AdminError(exc.code, reason or f"HTTP {exc.code}")


def _no_route(reason: str) -> bool:
    """A 404/405 that says the route is missing (aiohttp's default body, the old server's), not
    a missing record (``{"error": "no option key 7"}``)."""
    text = reason.lower()
    return text in ("", "not found", "method not allowed", "404: not found", "405: method not allowed") \
        or text.startswith("no such resource") or " not allowed on " in text


def _error_text(exc: urllib.error.HTTPError) -> str:
    """The API's ``{"error": "<reason>"}``, else the body's first line."""
    try:
        raw = exc.read().decode("utf-8", "replace")
    except OSError:
        return ""
    try:
        doc = json.loads(raw)
    except ValueError:
        return _one_line(raw)
    if isinstance(doc, dict) and "error" in doc:
        error = doc["error"]
        if isinstance(error, dict):  # a {"code","message"} shape
            return _one_line(error.get("message") or error.get("code") or "")
        return _one_line(error)
    return _one_line(raw)


def _one_line(value: Any) -> str:
    return " ".join(str(value).split())[:300]
