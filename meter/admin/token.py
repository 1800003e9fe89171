"""The admin server's bearer token (RFC 6750), required when it listens beyond loopback.

On loopback only local users reach the API, as before. On any other address the token guards the
listings (aliases and addresses of every endpoint) and every state change. It comes from the
``METER_ADMIN_TOKEN`` environment variable, else from ``<state_dir>/admin-token``, which the node
creates (mode 0600, like an SSH key) when it is missing.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
from pathlib import Path
from typing import Mapping

ENV_VAR = "METER_ADMIN_TOKEN"
FILE_NAME = "admin-token"


class TokenError(OSError):
    """The token file exists but cannot be used. An OSError, so `meter run` stops with it as with a
    port in use (``node.cannot_start``)."""


def for_admin(host: str, state_dir: str | Path, environ: Mapping[str, str] = os.environ) -> tuple[str | None, str]:
    """The token the admin server on ``host`` requires and where it came from; ``(None, "")`` on loopback."""
    if is_loopback(host):
        return None, ""
    return load_or_create(Path(state_dir), environ)


def is_loopback(host: str) -> bool:
    """``host`` (the admin ``[admin] host``) reaches only this machine: 127.0.0.0/8, ::1, localhost."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name or a wildcard ("", "0.0.0.0", "::"): reachable from elsewhere


def load_or_create(state_dir: Path, environ: Mapping[str, str] = os.environ) -> tuple[str, str]:
    """``(token, where it came from)``; creates the file with a fresh random token when missing."""
    token = environ.get(ENV_VAR, "").strip()
    if token:
        return token, ENV_VAR
    path = Path(state_dir) / FILE_NAME
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        token = secrets.token_urlsafe(32)  # 256 bits
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        return token, str(path)
    if not token:
        raise TokenError(f"{path} is empty: put a token in it, or delete it and the node makes one")
    return token, str(path)


def authorized(header: str | None, token: str) -> bool:
    """An ``Authorization: Bearer <token>`` header carrying ``token`` (compared in constant time)."""
    scheme, _, value = (header or "").strip().partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode())


def read_secret_file(path: str) -> str:
    """A password kept in a file (`[admin] metrics_password_file`), as Prometheus' ``password_file``."""
    try:
        secret = Path(path).read_text().strip()
    except OSError as exc:
        raise TokenError(f"[admin] metrics_password_file {path}: cannot read: {exc.strerror}") from None
    if not secret:
        raise TokenError(f"[admin] metrics_password_file {path} is empty")
    return secret
