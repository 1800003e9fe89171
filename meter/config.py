"""Configuration: one TOML file, validated at start-up against typed dataclasses.

Each component owns its settings dataclass (``meter.sip.settings.SipSettings`` ...); this module only
maps TOML tables onto them. Anything wrong stops start-up with the file, the key and what was
expected (docs/design.md principle 6): ``meter.toml: [sip] port: expected an integer, got "5o60"``.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

DEFAULT_CONFIG_NAME = "meter.toml"


class ConfigError(Exception):
    """A configuration file that cannot be used; the message names file, key and expectation."""


@dataclass(frozen=True)
class NodeSettings:
    """Who this node is."""

    name: str = "meter-1"
    """Node name, shown in logs, metrics (`node` label) and to cluster peers."""
    role: Literal["C", "E"] = "C"
    """Expressway role: C (inside) or E (edge). Decides where RMS is charged (rule C3)."""
    product: Literal["expressway", "vcs"] = "expressway"
    """Product flavour; `vcs` cannot run Smart licensing (rule L4)."""
    platform: str = "large_vm"
    """Capacity profile from platforms.toml (rule P3, R6)."""
    state_dir: str = "state"
    """Durable state (identity, option keys, mode, usage history, bindings and calls). Relative:
    to the config file's directory; in the embedded default, to ``$XDG_STATE_HOME/meter``."""
    gc_full_interval: float = 300.0
    """Seconds between full passes of Python's cyclic garbage collector, which stop the node for
    tens of milliseconds under load; the node makes no cyclic garbage per message, so they run on
    this timer rather than Python's own schedule. 0 = Python's own schedule."""

    def __post_init__(self) -> None:
        if self.gc_full_interval < 0:
            raise ValueError(f"gc_full_interval: expected 0 or a positive number of seconds, got {self.gc_full_interval}")


@dataclass(frozen=True)
class LicensingSettings:
    enforcement: Literal["enforce", "observe"] = "observe"
    """`observe` (default) lets everything through and counts each would-be refusal: learn what a
    lab's traffic costs before buying keys. `enforce` refuses what does not fit the license pools
    (503 with a Warning naming the license for SIP; RRJ/ARJ resourceUnavailable for H.323)."""


@dataclass(frozen=True)
class AdminSettings:
    host: str = "127.0.0.1"
    """Address of the HTTP admin server (/metrics, REST API, pages)."""
    port: int = 9460
    """Port of the admin server. 9460 is unassigned in the Prometheus default port allocations list."""
    enabled: bool = True
    page_size: int = 500
    """Records per page of /api/registrations and /api/calls when the request gives no `limit`.
    500 is kubectl's --chunk-size default for paged Kubernetes list calls."""
    max_page_size: int = 1000
    """Largest `limit` accepted (400 beyond). One page is encoded as JSON in one go: 1,000 records
    take about 2 ms, so a listing never holds the SIP loop longer than that (GitHub caps at 100)."""

    protect_reads: bool = False
    """API reads need the bearer token on loopback too (beyond loopback they always do; state
    changes always do)."""
    metrics_user: str = ""
    """Non-empty: /metrics wants HTTP basic auth with this user (Prometheus `basic_auth`)."""
    metrics_password_file: str = ""
    """The password for `metrics_user`, read from this file at start (Prometheus `password_file`)."""

    def __post_init__(self) -> None:
        if bool(self.metrics_user) != bool(self.metrics_password_file):
            raise ValueError("metrics_user and metrics_password_file: set both (basic auth on /metrics) or neither")
        if not 1 <= self.page_size <= self.max_page_size:
            raise ValueError(f"page_size: expected 1..max_page_size ({self.max_page_size}), got {self.page_size}")


@dataclass(frozen=True)
class LogSettings:
    level: Literal["debug", "info", "warning", "error"] = "info"
    json: bool = False
    """One JSON object per line instead of `key=value` text."""


def _section_types() -> dict[str, type]:
    # Imported here so that a broken component module names itself, not this loader.
    from meter.cluster.settings import ClusterSettings
    from meter.h323.settings import H323Settings
    from meter.sip.limits import LimitSettings
    from meter.sip.settings import SipSettings
    from meter.sip.tls import TlsSettings
    from meter.sip.auth.settings import AuthSettings
    from meter.store.state import StateSettings
    from meter.store.usage_history import UsageSettings
    from meter.zones import ZoneSettings
    from meter.smart.settings import SmartSettings

    return {
        "node": NodeSettings,
        "licensing": LicensingSettings,
        "sip": SipSettings,
        "limits": LimitSettings,
        "tls": TlsSettings,
        "auth": AuthSettings,
        "h323": H323Settings,
        "cluster": ClusterSettings,
        "admin": AdminSettings,
        "log": LogSettings,
        "state": StateSettings,
        "usage": UsageSettings,
        "smart": SmartSettings,
        "zones": list[ZoneSettings],
    }


@dataclass(frozen=True)
class Config:
    sections: dict[str, Any] = field(default_factory=dict)
    source: str = "<embedded default>"

    def __getattr__(self, name: str) -> Any:
        try:
            return self.sections[name]
        except KeyError:
            raise AttributeError(name) from None


def embedded_default_text() -> str:
    return (resources.files("meter.shipped") / DEFAULT_CONFIG_NAME).read_text(encoding="utf-8")


def load(path: str | Path | None = None) -> Config:
    """Load and validate ``path``, or the embedded default when ``path`` is None. A relative
    ``[node] state_dir`` is anchored where it cannot depend on the working directory (below)."""
    if path is None:
        config = parse(embedded_default_text(), source="<embedded default meter.toml>")
        return _anchor_state_dir(config, default_state_home())
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    return _anchor_state_dir(parse(text, source=str(path)), path.resolve().parent)


def default_state_home() -> Path:
    """Where the embedded default config keeps its state: ``$XDG_STATE_HOME/meter`` (by default
    ``~/.local/state/meter``, the XDG Base Directory spec's place for state), so `make run` and
    every command find the same node from any directory."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "meter"


def _anchor_state_dir(config: Config, base: Path) -> Config:
    # A relative state_dir is relative to the config file's directory (the embedded default's:
    # default_state_home()), never to where a command happens to run: a command run elsewhere
    # must not miss the node's identity, nor make up a new one (K2).
    node = config.sections.get("node")
    if node is not None and not Path(node.state_dir).is_absolute():
        config.sections["node"] = dataclasses.replace(node, state_dir=str(base / node.state_dir))
    return config


def parse(text: str, source: str = "<string>") -> Config:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    types_ = _section_types()
    unknown = sorted(set(raw) - set(types_))
    if unknown:
        raise ConfigError(
            f"{source}: unknown section [{unknown[0]}] (expected one of: {', '.join(sorted(types_))})"
        )
    sections = {}
    for name, hint in types_.items():
        if typing.get_origin(hint) is list:  # an array of tables, e.g. [[zones]]
            sections[name] = _coerce(hint, raw.get(name, []), source=source, where=name)
        else:
            sections[name] = build(hint, raw.get(name, {}), source=source, where=name)
    if sections["sip"].upstream_transport == "tls" and not sections["tls"].enabled:
        raise ConfigError(f'{source}: [sip] upstream_transport: "tls" needs [tls] enabled (its certificate and ca)')
    if sections["sip"].worker_count > 1 and sections["tls"].enabled:
        raise ConfigError(f"{source}: [sip] workers: {sections['sip'].worker_count} workers serve UDP only: "
                          "leave [tls] off (or workers = 1)")
    return Config(sections=sections, source=source)


def build(cls: type, table: Any, *, source: str, where: str) -> Any:
    """Build dataclass ``cls`` from a TOML table, checking every key and value."""
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: [{where}] expected a table, got {_show(table)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in table.items():
        if key not in fields:
            raise ConfigError(
                f"{source}: [{where}] unknown key '{key}' (expected one of: {', '.join(sorted(fields))})"
            )
        kwargs[key] = _coerce(hints[key], value, source=source, where=f"{where}.{key}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:  # a dataclass's own __post_init__ checks
        raise ConfigError(f"{source}: [{where}] {exc}") from None


def _coerce(hint: Any, value: Any, *, source: str, where: str) -> Any:
    section, _, key = where.rpartition(".")
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)

    def fail(expected: str) -> typing.NoReturn:
        place = f"[{section}] {key}" if section else key
        raise ConfigError(f"{source}: {place}: expected {expected}, got {_show(value)}")

    if dataclasses.is_dataclass(hint):
        return build(hint, value, source=source, where=where)
    if origin is Literal:
        if value not in args:
            fail("one of " + ", ".join(repr(a) for a in args))
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, source=source, where=where)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0]
    if origin in (list, tuple):
        if not isinstance(value, list):
            fail("a list")
        item = args[0] if args else Any
        items = [_coerce(item, v, source=source, where=f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if hint is bool:
        if not isinstance(value, bool):
            fail("true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            fail("an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            fail("a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            fail("a string")
        return value
    if hint is Any:
        return value
    fail(getattr(hint, "__name__", str(hint)))


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)
