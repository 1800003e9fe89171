"""The manager's own TOML config (``meter ssm serve --config ssm.toml``), checked whole at start:
an unknown key or a value of the wrong type is named in one line.

    [ssm]
    state_dir = "ssm-state"          # SQLite state, the CA and the admin token (`meter ssm init`)
    listen = "127.0.0.1"
    port = 8443
    hostnames = ["localhost", "127.0.0.1"]   # the server certificate's SANs
    time_factor = 1.0                # 86400 = one simulated day per real second
    clock_offset = 0.0               # seconds added to the manager's clock (simulated skew)

A relative ``state_dir`` is relative to the config file.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from meter.ssm.clock import Clock


class SettingsError(Exception):
    """One line: the file, the key and what was expected."""


@dataclass
class SsmSettings:
    state_dir: Path = Path("ssm-state")
    listen: str = "127.0.0.1"
    port: int = 8443
    hostnames: list[str] = field(default_factory=lambda: ["localhost", "127.0.0.1"])
    time_factor: float = 1.0
    clock_offset: float = 0.0

    @property
    def clock(self) -> Clock:
        return Clock(self.time_factor, self.clock_offset)


def default_text(state_dir: Path, port: int = 8443) -> str:
    return (
        "# The lab Smart Software Manager (`meter ssm serve --config <this file>`).\n"
        "[ssm]\n"
        f"state_dir = {str(state_dir)!r}\n"
        'listen = "127.0.0.1"\n'
        f"port = {port}\n"
        "# The HTTPS certificate's subject alternative names: every name and address the nodes dial.\n"
        'hostnames = ["localhost", "127.0.0.1"]\n'
        "# Compresses the manager's timers: 86400 = one simulated day per real second.\n"
        "time_factor = 1.0\n"
        "# Seconds added to the manager's clock, to simulate a manager whose clock is off (> 3600 = clock_skew).\n"
        "clock_offset = 0.0\n"
    )


def load(path: str | Path) -> SsmSettings:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SettingsError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path}: not TOML: {exc}") from None
    unknown = set(data) - {"ssm"}
    if unknown:
        raise SettingsError(f"{path}: unknown section [{sorted(unknown)[0]}] (expected [ssm])")
    table = data.get("ssm", {})
    settings = SsmSettings()

    def fail(key: str, expected: str) -> SettingsError:
        return SettingsError(f"{path}: [ssm] {key}: expected {expected}, got {table[key]!r}")

    for key, value in table.items():
        if key == "state_dir":
            if not isinstance(value, str) or not value:
                raise fail(key, "a directory path")
            state_dir = Path(value)
            settings.state_dir = state_dir if state_dir.is_absolute() else path.parent / state_dir
        elif key == "listen":
            if not isinstance(value, str) or not value:
                raise fail(key, "an address")
            settings.listen = value
        elif key == "port":
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
                raise fail(key, "a port number 0-65535 (0: any free port)")
            settings.port = value
        elif key == "hostnames":
            if not isinstance(value, list) or not value or not all(isinstance(h, str) and h for h in value):
                raise fail(key, "a non-empty list of host names and addresses")
            settings.hostnames = value
        elif key == "time_factor":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise fail(key, "a positive number")
            settings.time_factor = float(value)
        elif key == "clock_offset":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise fail(key, "a number of seconds")
            settings.clock_offset = float(value)
        else:
            raise SettingsError(f"{path}: [ssm] {key}: unknown key")
    return settings
