"""CLI commands that ask a running node over its admin API: `meter calls`, `meter registrations`."""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request

from meter.admin.token import ENV_VAR as TOKEN_VAR

DEFAULT_ADMIN = os.environ.get("METER_ADMIN", "http://127.0.0.1:9460")


def add_commands(sub) -> None:
    calls = sub.add_parser("calls", help="list the calls the running node meters (class, license, rule IDs)")
    calls.add_argument("--admin", default=DEFAULT_ADMIN, help=f"admin URL of the node (default {DEFAULT_ADMIN})")
    calls.add_argument("--json", action="store_true", help="print the API's JSON as is")
    calls.set_defaults(func=lambda args: _listing(args, "calls", CALL_COLUMNS))

    regs = sub.add_parser("registrations", help="list registered aliases (class, license, rule IDs)")
    regs.add_argument("--admin", default=DEFAULT_ADMIN, help=f"admin URL of the node (default {DEFAULT_ADMIN})")
    regs.add_argument("--json", action="store_true", help="print the API's JSON as is")
    regs.set_defaults(func=lambda args: _listing(args, "registrations", REGISTRATION_COLUMNS))


CALL_COLUMNS = ("call_id", "caller", "callee", "state", "call_class", "license", "units", "rules")
REGISTRATION_COLUMNS = ("alias", "protocol", "device_class", "license", "device", "rules")


def fetch(admin: str, resource: str):
    """One API resource; sends the bearer token from METER_ADMIN_TOKEN when set (a node whose admin
    server listens beyond loopback asks for it)."""
    token = os.environ.get(TOKEN_VAR, "").strip()
    request = urllib.request.Request(f"{admin.rstrip('/')}/api/{resource}",
                                     headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(request, timeout=5) as reply:
        return json.load(reply)


def fetch_all(admin: str, resource: str) -> list[dict]:
    """Every record of a paged listing, page after page (its ``next`` cursor)."""
    doc = fetch(admin, resource)
    rows = doc["items"]
    while doc["next"]:
        doc = fetch(admin, f"{resource}?after={urllib.parse.quote(doc['next'], safe='')}")
        rows += doc["items"]
    return rows


def _listing(args, resource: str, columns: tuple[str, ...]) -> int:
    try:
        rows = fetch_all(args.admin, resource)
    except (urllib.error.URLError, OSError) as exc:
        print(f"meter: cannot reach the node's admin API at {args.admin}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        json.dump(rows, sys.stdout, indent=1)
        print()
        return 0
    print_table(rows, columns)
    return 0


def print_table(rows: list[dict], columns: tuple[str, ...]) -> None:
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths)).rstrip())
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
    print(f"({len(rows)} {'row' if len(rows) == 1 else 'rows'})")


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)
