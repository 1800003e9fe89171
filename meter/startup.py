"""Start-up checks with one-line answers, before anything listens (docs/design.md principle 6).

What the config parser cannot see stops `meter check-config` and `meter run` as clearly as a bad
key does: a platform that is not in the capacity profiles, a state directory the node cannot use,
a listen port another process holds (the config key named, "address already in use"), and a second
node on the same state directory (an fcntl lock on ``<state_dir>/meter.lock``, held while running).
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from pathlib import Path

LOCK_NAME = "meter.lock"


class StartupError(Exception):
    """Why the node cannot start, in one line."""


def check_references(config) -> None:
    """What the config names from elsewhere exists: the platform profile (P3, R6)."""
    from meter import catalogs
    from meter.licensing.platforms import PlatformError

    try:
        catalogs.platform(config.node.platform)
    except PlatformError as exc:
        raise StartupError(f"{config.source}: [node] platform: {exc}") from None


def check_state_dir(state_dir: str | Path) -> None:
    """The node can write its state directory (its database, the token, the lock)."""
    path = Path(state_dir)
    if not path.exists():
        return  # `check_initialised` answers a missing state with `meter init`
    if not path.is_dir():
        raise StartupError(f"[node] state_dir {path.resolve()}: not a directory")
    if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
        raise StartupError(f"[node] state_dir {path.resolve()}: not readable and writable by this user "
                           f"(uid {os.getuid()}): fix its owner or mode")
    for name in ("licensing.sqlite", LOCK_NAME):
        file = path / name
        if file.exists() and not os.access(file, os.R_OK | os.W_OK):
            raise StartupError(f"[node] state_dir: {file.resolve()}: not readable and writable by this user "
                               f"(uid {os.getuid()})")


class StateLock:
    """An exclusive fcntl lock on ``<state_dir>/meter.lock`` for the node's lifetime: two nodes on
    one state directory would both write its database and both claim its serial (K2). The kernel
    drops the lock when the process ends, however it ends."""

    def __init__(self, state_dir: str | Path) -> None:
        self.path = Path(state_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> StateLock:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StartupError(f"[node] state_dir: cannot open {self.path.resolve()}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_pid(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN):
                raise StartupError(f"another node is running on the state directory {self.path.parent.resolve()} "
                                   f"({'pid ' + holder if holder else 'a process'} holds {LOCK_NAME})") from None
            raise StartupError(f"[node] state_dir: cannot lock {self.path.resolve()}: {exc.strerror}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _read_pid(fd: int) -> str:
    try:
        return os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""


def listeners(config) -> list[tuple[str, str, str, int]]:
    """``(config key, protocol, host, port)`` for every socket the node will listen on (port 0:
    the kernel picks a free one, nothing to check)."""
    out = []
    sip = config.sip
    if sip.udp:
        out.append(("[sip] port", "udp", sip.host, sip.port))
    if sip.tcp:
        out.append(("[sip] port", "tcp", sip.host, sip.port))
    if config.tls.enabled:
        out.append(("[tls] port", "tcp", sip.host, config.tls.port))
    if config.h323.enabled:
        out.append(("[h323] ras_port", "udp", config.h323.host, config.h323.ras_port))
    if config.admin.enabled:
        out.append(("[admin] port", "tcp", config.admin.host, config.admin.port))
    return [entry for entry in out if entry[3]]


def check_ports(config) -> None:
    """Each listen address can be bound now; the first that cannot names its config key."""
    for key, proto, host, port in listeners(config):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
        with socket.socket(family, kind) as probe:
            if proto == "tcp":  # as the servers bind (asyncio's reuse_address): TIME_WAIT is no conflict
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                raise StartupError(bind_error(key, proto, host, port, exc)) from None


def bind_error(key: str, proto: str, host: str, port: int, exc: OSError) -> str:
    what = "address already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc)).lower()
    return f"{key} = {port}: {proto} {host}:{port}: {what}"


def describe_os_error(config, exc: OSError) -> str:
    """A listener's failure at start (the port taken between the check and the bind) in the same
    words, naming the key whose port the error is about; any other error as it is."""
    text = exc.strerror or str(exc)
    for key, proto, host, port in listeners(config):
        if f", {port})" in str(exc) or f":{port}" in str(exc):
            return bind_error(key, proto, host, port, exc)
    return text if exc.errno != errno.EADDRINUSE else f"address already in use: {exc}"
