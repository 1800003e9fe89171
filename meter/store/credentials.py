"""The credentials file the operator manages with `meter users` (Kamailio's subscriber table with
its ha1 and ha1b columns, as a file): one line per user and realm,

    alice lab.test <HA1 MD5 hex> <HA1 SHA-256 hex>

HA1 = H(user ":" realm ":" password) (RFC 7616 §3.4.2): the password itself is never stored, and
both hashes are kept so a user can answer either challenge (RFC 8760 §2). Written atomically with
mode 0600 (an HA1 is as good as the password within its realm). The running node reads it through
:class:`CredentialsFile`, which reloads it when its modification time or size changes.
"""

from __future__ import annotations

import logging
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from meter.logs import log_event
from meter.sip.auth.digest import ha1

log = logging.getLogger("meter.auth")

FILE_NAME = "credentials"
# How often (seconds) the node looks at the file's mtime: changes apply within a second, and a
# stat a second costs nothing next to the traffic.
RELOAD_CHECK_INTERVAL = 1.0


class CredentialsError(Exception):
    """A credentials file that cannot be read or a user that cannot be stored."""


@dataclass(frozen=True, slots=True)
class UserEntry:
    user: str
    realm: str
    ha1_md5: str
    ha1_sha256: str

    def ha1(self, algorithm: str) -> str:
        return self.ha1_sha256 if algorithm == "SHA-256" else self.ha1_md5

    def line(self) -> str:
        return f"{self.user} {self.realm} {self.ha1_md5} {self.ha1_sha256}\n"


def default_path(state_dir: str | os.PathLike) -> Path:
    return Path(state_dir) / FILE_NAME


def make_entry(user: str, realm: str, password: str) -> UserEntry:
    for what, value in (("user", user), ("realm", realm)):
        if not value or any(c.isspace() for c in value) or value.startswith("#"):
            raise CredentialsError(f"{what}: expected a non-empty name without spaces, got {value!r}")
    if not password:
        raise CredentialsError("the password is empty")
    return UserEntry(user, realm, ha1("MD5", user, realm, password), ha1("SHA-256", user, realm, password))


def read_entries(path: str | os.PathLike) -> list[UserEntry]:
    """Every entry of the file; a missing file is an empty one."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise CredentialsError(f"{path}: cannot read: {exc.strerror}") from None
    entries = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) != 4 or len(fields[2]) != 32 or len(fields[3]) != 64:
            raise CredentialsError(f"{path}:{number}: expected 'user realm ha1_md5 ha1_sha256'")
        entries.append(UserEntry(*fields))
    return entries


def write_entries(path: str | os.PathLike, entries: list[UserEntry]) -> None:
    """Replace the file atomically (a reader sees the old or the new one), mode 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mkstemp creates it 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write("# meter credentials: user realm ha1_md5 ha1_sha256 (managed by `meter users`)\n")
            out.writelines(e.line() for e in entries)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def add_user(path, user: str, realm: str, password: str) -> bool:
    """Add or replace ``user`` in ``realm``; True when it was new."""
    entry = make_entry(user, realm, password)
    entries = read_entries(path)
    kept = [e for e in entries if (e.user, e.realm) != (user, realm)]
    write_entries(path, [*kept, entry])
    return len(kept) == len(entries)


def remove_user(path, user: str, realm: str) -> bool:
    entries = read_entries(path)
    kept = [e for e in entries if (e.user, e.realm) != (user, realm)]
    if len(kept) == len(entries):
        return False
    write_entries(path, kept)
    return True


class CredentialsFile:
    """The node's view of the file: ``lookup`` reloads it when it changed (checked at most once
    per RELOAD_CHECK_INTERVAL of the ``now`` it is given). A file that turns unreadable keeps the
    last good contents and logs why."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._users: dict[tuple[str, str], UserEntry] = {}
        self._signature: tuple | None = None
        self._checked_at: float | None = None
        self._reload_if_changed()  # at start: the log says how many users, or why the file is unusable

    def lookup(self, user: str, realm: str, now: float) -> UserEntry | None:
        if self._checked_at is None or now - self._checked_at >= RELOAD_CHECK_INTERVAL:
            self._checked_at = now
            self._reload_if_changed()
        return self._users.get((user, realm))

    def __len__(self) -> int:
        return len(self._users)

    def _reload_if_changed(self) -> None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            signature = None
        except OSError as exc:
            log_event(log, "auth.credentials.unreadable", logging.ERROR, path=str(self.path), error=exc.strerror)
            return
        else:
            signature = (st.st_mtime_ns, st.st_size, st.st_ino)
            if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO) and signature != self._signature:
                log_event(log, "auth.credentials.permissive", logging.WARNING, path=str(self.path),
                          mode=oct(st.st_mode & 0o777), expected="0600")
        if signature == self._signature:
            return
        try:
            entries = read_entries(self.path)
        except CredentialsError as exc:
            log_event(log, "auth.credentials.unreadable", logging.ERROR, path=str(self.path), error=str(exc))
            return
        self._signature = signature
        self._users = {(e.user, e.realm): e for e in entries}
        log_event(log, "auth.credentials.loaded", path=str(self.path), users=len(self._users))
