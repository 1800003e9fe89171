"""What every admin command shares: where it asks (the running node through its admin API v1, or a
state directory) and how it prints (aligned columns, or JSON).

``ask(args, online, offline)``: by default the running node, ``--admin URL``, else ``$METER_ADMIN``,
else the ``[admin] host``/``port`` of ``--config`` (the node's own config file; default
``$METER_CONFIG``, else ``/etc/meter/meter.toml`` when it exists, else the embedded one). When
nothing answers there, a command that can work offline reads the config's state directory instead
(and says so on stderr). With ``--state-dir DIR`` (or ``$METER_STATE_DIR``) and no ``--admin``:
that state directory only. No command creates a state directory.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from meter.admin.client import AdminClient, AdminError, NodeUnreachable, admin_url, read_token

SYSTEM_CONFIG = "/etc/meter/meter.toml"
CONFIG_VAR = "METER_CONFIG"
STATE_VAR = "METER_STATE_DIR"


class CliError(Exception):
    """One line for stderr; the command exits 1."""


# ---- where a command asks ------------------------------------------------------------------

def add_target_args(parser: argparse.ArgumentParser, *, json_flag: bool = True) -> None:
    parser.add_argument("--admin", help="the node's admin URL (default: $METER_ADMIN, else the config's [admin] host:port)")
    parser.add_argument("--config", "-c", help=f"the node's config file (default: ${CONFIG_VAR}, else {SYSTEM_CONFIG} "
                                               "when it exists, else the embedded one)")
    parser.add_argument("--state-dir", help=f"work on this state directory, without asking a node (default: ${STATE_VAR})")
    if json_flag:
        parser.add_argument("--json", action="store_true", help="print JSON (the API's document)")


def target_parent(*, json_flag: bool = True) -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    add_target_args(parent, json_flag=json_flag)
    return parent


@dataclass
class Target:
    state_dir: Path
    client: AdminClient | None   # None: the state directory only (--state-dir)


def config_path(args) -> str | None:
    if getattr(args, "config", None):
        return args.config
    if os.environ.get(CONFIG_VAR):
        return os.environ[CONFIG_VAR]
    return SYSTEM_CONFIG if os.path.exists(SYSTEM_CONFIG) else None


def load_config(args):
    from meter.config import ConfigError, load

    try:
        return load(config_path(args))
    except ConfigError as exc:
        raise CliError(f"bad config: {exc}") from None


def target_of(args) -> Target:
    explicit = getattr(args, "state_dir", None) or os.environ.get(STATE_VAR)
    admin = getattr(args, "admin", None)
    if explicit and not admin:
        return Target(Path(explicit), None)
    config = load_config(args)
    state_dir = Path(explicit or config.node.state_dir)
    return Target(state_dir, AdminClient(admin_url(config, admin), read_token(state_dir)))


def ask(args, online: Callable[[AdminClient], int], offline: Callable[[Path], int] | None = None) -> int:
    """Run ``online`` against the node; when nothing answers (or with ``--state-dir``), ``offline``
    on the state directory, if the command has one. Every failure is one line on stderr, exit 1."""
    try:
        target = target_of(args)
        if target.client is not None:
            try:
                return online(target.client)
            except NodeUnreachable as exc:
                if offline is None:
                    raise CliError(str(exc)) from None
                if not target.state_dir.is_dir():
                    raise CliError(f"{exc}; and no node state at {target.state_dir.resolve()} "
                                   f"(--config names the node's config; `meter init` makes a new node)") from None
                print(f"meter: {exc}; reading the state directory {target.state_dir.resolve()}", file=sys.stderr)
        elif offline is None:
            raise CliError("this command asks the running node: give --admin URL (or --config), not --state-dir")
        return offline(target.state_dir)
    except AdminError as exc:
        return fail(exc.reason)
    except CliError as exc:
        return fail(str(exc))


def fail(message: str) -> int:
    print(f"meter: {message}", file=sys.stderr)
    return 1


# ---- output -------------------------------------------------------------------------------

def print_json(doc) -> None:
    json.dump(doc, sys.stdout, indent=1, default=str)
    print()


def print_table(rows: list[dict], columns: tuple[str, ...], *, count: bool = True) -> None:
    """Aligned columns, headed by the column names in capitals; numbers right-aligned."""
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    numeric = [bool(rows) and all(isinstance(row.get(c), (int, float)) and not isinstance(row.get(c), bool)
                                  for row in rows) for c in columns]
    def line(values):
        return "  ".join(v.rjust(w) if n else v.ljust(w) for v, w, n in zip(values, widths, numeric)).rstrip()
    print(line([c.upper() for c in columns]))
    for r in cells:
        print(line(r))
    if count:
        print(f"({len(rows)} {'row' if len(rows) == 1 else 'rows'})")


def when(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value) or "-"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


POOLS = ("rms", "room", "desktop", "cmr")
ALARM_COLUMNS = ("id", "rule", "severity", "raised", "cleared", "text")


def alarm_row(alarm: dict) -> dict:
    return {"id": alarm.get("id"), "rule": alarm.get("rule"), "severity": alarm.get("severity"),
            "raised": when(alarm.get("raised_at")),
            "cleared": when(alarm["cleared_at"]) if alarm.get("cleared_at") else "-",
            "text": alarm.get("text") or alarm.get("reason") or ""}


# ---- option keys (K4, K6) ------------------------------------------------------------------

def print_options(doc: dict) -> None:
    """xStatus Options, Expressway's layout, from the API's document (or the same built offline)."""
    print("*s Options:")
    for item in doc.get("items", []):
        print(f"    Option {item['index']}:")
        print(f"        Key: \"{item.get('key', '')}\"")
        print(f"        Description: \"{_description(item)}\"")
        detail = item.get("detail")
        print(f"        Status: {item.get('status')}" + (f" ({detail})" if detail else ""))
        print(f"        Expiry: {when(item.get('valid_until'))}")
    print("*s/end")
    extra = "".join(f"  {name.capitalize()}: {doc[name] if name != 'mode' else str(doc[name]).upper()}"
                    for name in ("mode", "product") if doc.get(name))
    print(f"Serial: {doc.get('serial', '-')}{extra}")
    if "quantities" in doc:
        quantities = ", ".join(f"{k} {v}" for k, v in doc["quantities"].items()) or "none"
        print(f"Licenses in force: {quantities}")
    features = doc.get("features_in_force", doc.get("features"))  # offline view / API v1
    if features is not None:
        print(f"Features in force: {', '.join(features) or 'none'}")
    peers = doc.get("peers") or []
    if peers:
        print("Current licenses of the cluster peers (K6):")
        print_table([{"peer": p.get("node") or p.get("name"),
                      **{k: v for k, v in (p.get("licenses") or {}).items()}} for p in peers],
                    ("peer",) + POOLS, count=False)


def _description(item: dict) -> str:
    """"100 Rich Media Sessions" for a quantity, the feature's title for a feature (as xStatus)."""
    if "title" in item:  # API v1: title, quantity, and features only for a feature option
        return item["title"] if item.get("features") else f"{item.get('quantity')} {item['title']}"
    features = item.get("features")
    return ", ".join(features) if isinstance(features, list) else str(features or "")


def add_key(client: AdminClient, text: str, index: int | None, as_json: bool) -> int:
    body = {"key": text} if index is None else {"key": text, "index": index}
    try:
        doc = client.post("option-keys", body)
    except AdminError as exc:
        if exc.status == 400:
            raise CliError(f"option key refused: {exc.reason}") from None
        raise
    if as_json:
        print_json(doc)
        return 0
    print(f"option {doc.get('index')}: added" + (f" ({doc['status']})" if doc.get("status") else ""))
    for warning in doc.get("warnings", []):
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def delete_key(client: AdminClient, index: int, as_json: bool) -> int:
    try:
        client.delete(f"option-keys/{index}")
    except AdminError as exc:
        if exc.status == 404:
            raise CliError(f"option {index} is not set") from None
        raise
    if as_json:
        print_json({"index": index, "removed": True})
        return 0
    print(f"option {index} removed")
    return 0
