"""Expressway-flavoured licensing commands, and what the listing commands do with the node down.

``add_commands(subparsers)`` registers them on the ``meter`` command (meter/cli.py):

    meter keys issuer-init                  create the lab issuer key pair
    meter keys issue --option RMS --quantity 100 [--serial S] [--expires 30d]
    meter keys trust issuer.pem.pub         trust another lab issuer's public key
    meter xconfiguration option N key K     set option key N (1..64); an empty K removes it (K4)
    meter mode [smart]                      show the license mode, or switch to Smart (L2, L4)
    meter factory-reset [--yes]             back to defaults, PAK mode; writes a backup first (L2)

`meter xstatus`, `meter xcommand` and `meter licenses` are in ``meter.admin.cli``: they ask the
running node and fall back to the offline views here (``show_options``, ``show_licenses``,
``show_alarms``, ``add_key``, ``delete_key``) when it does not answer.

The state directory: ``--state-dir``, else ``$METER_STATE_DIR``, else the ``[node] state_dir`` of
``--config`` (the node's config; default as in ``meter.admin.cli``). Nothing here creates one:
a missing state is one line naming ``licensing.sqlite`` and `meter init` (``check_initialised``).
Each handler returns the exit status: 0 done, 1 refused or failed (with the reason on stderr).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import functools
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

from meter.licensing import license_mode
from meter.licensing.keys import KeyRefused, fingerprint, issue_key
from meter.licensing.options import OPTIONS
from meter.store.licensing import (
    DB_NAME, INIT_HINT, LicensingStore, StoreError, check_initialised, create_issuer, load_issuer, load_public,
)
from meter.store.node_licensing import NodeLicensing
from meter.timestamps import iso_timestamp
from meter.admin.cli_support import (
    ALARM_COLUMNS, CliError, alarm_row, ask, load_config, print_json, print_options, print_table, target_parent,
)
from meter.admin.cli_support import add_key as add_key_online
from meter.admin.cli_support import delete_key as delete_key_online


def add_commands(subparsers) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state-dir", help="the node's state directory (default: $METER_STATE_DIR, else the config's)")
    common.add_argument("--config", "-c", help="the node's config file, for its [node] state_dir")
    online = target_parent()

    keys = subparsers.add_parser("keys", help="lab option-key issuer (PAK mode)")
    keys_sub = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    init = keys_sub.add_parser("issuer-init", parents=[common], help="create the lab issuer key pair")
    init.add_argument("--issuer-key", help="private key file (default: <state-dir>/issuer-ed25519.pem)")
    init.add_argument("--force", action="store_true", help="replace an existing issuer key file")
    init.set_defaults(func=cmd_issuer_init)
    issue = keys_sub.add_parser("issue", parents=[common], help="issue an option key for a node serial")
    issue.add_argument("--issuer-key", help="private key file (default: <state-dir>/issuer-ed25519.pem)")
    issue.add_argument("--serial", help="node serial the key is bound to (default: this state dir's node)")
    issue.add_argument("--option", required=True, type=str.upper,
                       help=f"option type: {', '.join(OPTIONS)}")
    issue.add_argument("--quantity", type=int, default=1, help="licenses granted (1 for features)")
    issue.add_argument("--expires", default="none",
                       help="'none', a date/time (2026-03-31, 2026-03-31T12:00Z) or a period (30d, 12h)")
    issue.add_argument("--any-option", action="store_true",
                       help="sign an option code this meter does not know (nodes refuse it: unknown option)")
    issue.set_defaults(func=cmd_issue)
    trust = keys_sub.add_parser("trust", parents=[common], help="trust an issuer public key (PEM)")
    trust.add_argument("public_key", help="the issuer's public key file (<issuer>.pem.pub)")
    trust.set_defaults(func=cmd_trust)

    xconf = subparsers.add_parser("xconfiguration", aliases=["xConfiguration"], parents=[online],
                                  help="configuration: xconfiguration option N key K")
    xconf.add_argument("section", type=str.lower, choices=["option"])
    xconf.add_argument("index", type=int, help="option index 1..64")
    xconf.add_argument("field", type=str.lower, choices=["key", "key:"])
    xconf.add_argument("value", nargs="?", default="", help="the option key; empty removes option N")
    xconf.set_defaults(func=cmd_xconfiguration_option)

    mode = subparsers.add_parser("mode", parents=[online], help="show the license mode, or 'mode smart'")
    mode.add_argument("target", nargs="?", type=str.lower, choices=["smart", "pak"])
    mode.add_argument("--product", choices=license_mode.PRODUCTS, help="override the product the node recorded")
    mode.add_argument("--yes", action="store_true", help="switch to Smart without asking for confirmation")
    mode.set_defaults(func=lambda args: ask(args, lambda c: mode_online(c, args), lambda d: cmd_mode(_at(args, d))))

    reset = subparsers.add_parser("factory-reset", parents=[online],
                                  help="return licensing state to defaults (PAK); backup first")
    reset.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    reset.add_argument("--backup", help="backup file (default: <state-dir>/backup-<time>.sqlite)")
    reset.set_defaults(func=lambda args: ask(args, lambda c: _node_running(c, "factory-reset"),
                                             lambda d: cmd_factory_reset(_at(args, d))))


def _fail(message: str) -> int:
    print(f"meter: {message}", file=sys.stderr)
    return 1


def state_dir_of(args, *, may_create: bool = False) -> Path:
    """``--state-dir``, ``$METER_STATE_DIR`` or the config's; an existing directory unless
    ``may_create`` (``keys issuer-init --state-dir DIR``: an explicit new lab issuer directory)."""
    explicit = getattr(args, "state_dir", None) or os.environ.get("METER_STATE_DIR")
    path = Path(explicit) if explicit else Path(load_config(args).node.state_dir)
    if not path.is_dir() and not (may_create and getattr(args, "state_dir", None)):
        raise StoreError(f"{path.resolve() / DB_NAME}: no node state (no directory {path.resolve()}): {INIT_HINT}")
    return path


def _on_node(command: Callable[[argparse.Namespace, NodeLicensing], int]) -> Callable[[argparse.Namespace], int]:
    """Run ``command(args, node)`` on the state directory's licensing, closed afterwards; state that
    cannot be read or written exits 1 with the file and why."""
    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        try:
            state_dir = state_dir_of(args)
            check_initialised(state_dir)  # a node's serial comes from `meter init`, never from here
            with NodeLicensing.open(state_dir) as node:
                return command(args, node)
        except (StoreError, CliError) as exc:
            return _fail(str(exc))
    return run


def _offline(state_dir: Path, command: Callable[[NodeLicensing], int]) -> int:
    """``command(node)`` on ``state_dir``'s licensing (the listing commands with the node down)."""
    try:
        check_initialised(state_dir)
        with NodeLicensing.open(state_dir) as node:
            return command(node)
    except StoreError as exc:
        return _fail(str(exc))


def _when(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def parse_expiry(text: str, now: float) -> float | None:
    """'none' -> None; '30d' / '12h' -> now + period; ISO date or date-time (UTC if no zone)."""
    text = text.strip()
    if text.lower() in ("none", "never", ""):
        return None
    period = re.fullmatch(r"(\d+)([dh])", text.lower())
    if period:
        return now + int(period[1]) * (86400 if period[2] == "d" else 3600)
    try:
        return iso_timestamp(text)
    except ValueError:
        raise ValueError(f"--expires: expected none, 30d, 12h or an ISO date, got {text!r}") from None


# ---- keys ---------------------------------------------------------------------------------

def cmd_issuer_init(args) -> int:
    try:
        with LicensingStore(state_dir_of(args, may_create=True)) as store:
            path = args.issuer_key or store.issuer_key_path
            if os.path.exists(path):
                if not args.force:
                    return _fail(f"{path} exists (use --force to replace it; keys it issued stop verifying)")
                os.remove(path)
            private = create_issuer(path)
            if store.get_meta("issuer_public_key") is None or args.force:
                store.trust(private.public_key())
    except (StoreError, CliError) as exc:
        return _fail(str(exc))
    print(f"issuer key: {path}")
    print(f"public key: {path}.pub (give it to other nodes: meter keys trust {path}.pub)")
    print(f"fingerprint: {fingerprint(private.public_key())}")
    return 0


def cmd_issue(args) -> int:
    now = time.time()
    if args.option not in OPTIONS and not args.any_option:
        return _fail(f"unknown option {args.option!r} (expected one of: {', '.join(OPTIONS)})")
    try:
        expires = parse_expiry(args.expires, now)
        # for this node (no --serial): its serial, from `meter init` only
        state_dir = state_dir_of(args)
        serial = args.serial or check_initialised(state_dir)
        with LicensingStore(state_dir) as store:
            path = args.issuer_key or store.issuer_key_path
            if os.path.exists(path):
                private = load_issuer(path)
            else:
                private = create_issuer(path)
                print(f"meter: created issuer key {path}", file=sys.stderr)
                if store.get_meta("issuer_public_key") is None:
                    store.trust(private.public_key())
        key = issue_key(private, serial=serial, option=args.option, quantity=args.quantity,
                        expires=expires, issued_at=now)
    except (StoreError, CliError, ValueError) as exc:
        return _fail(str(exc))
    print(key)
    return 0


def cmd_trust(args) -> int:
    try:
        public = load_public(args.public_key)
        with LicensingStore(state_dir_of(args)) as store:
            store.trust(public)
    except (StoreError, CliError) as exc:
        return _fail(str(exc))
    print(f"trusting issuer {fingerprint(public)}; keys from another issuer now show as invalid")
    return 0


# ---- option keys (K4, K6): offline views and changes -----------------------------------------

STATUS_WORDS = {"pending_restart": "restart_required", "inert": "added_not_processed"}  # the API's words


def options_from_view(view: dict) -> dict:
    """``NodeLicensing.view`` (the state, or an old node's /api/licenses ``option_keys``) in the
    shape of ``GET /api/v1/option-keys``."""
    items = []
    for key in view.get("keys", []):
        option = OPTIONS.get(key["option"])
        quantity = f"{key['quantity']} " if option is not None and option.license else ""
        items.append({"index": key["index"], "key": key["text"], "features": f"{quantity}{key['title']}",
                      "valid_until": key["expires"], "status": STATUS_WORDS.get(key["state"], key["state"]),
                      "detail": key["detail"]})
    return {"items": items, "serial": view.get("serial"), "mode": view.get("mode"), "product": view.get("product"),
            "quantities": view.get("quantities", {}), "features_in_force": view.get("features", []),
            "peers": [{"node": p["name"], **p} for p in view.get("peers", [])]}


def show_options(state_dir: Path, as_json: bool) -> int:
    def show(node: NodeLicensing) -> int:
        doc = options_from_view(node.view(time.time()))
        print_json(doc) if as_json else print_options(doc)
        return 0
    return _offline(state_dir, show)


def add_key(state_dir: Path, text: str, index: int | None, as_json: bool) -> int:
    """Install a key in the state (the node stopped): at ``index``, or the next free place (K4)."""
    def add(node: NodeLicensing) -> int:
        try:
            result = node.add_key(text, time.time(), index=index)
        except KeyRefused as exc:
            return _fail(f"option key refused: {exc}")
        except ValueError as exc:
            return _fail(str(exc))
        status = next((STATUS_WORDS.get(s.state, s.state) for s in node.statuses(time.time()) if s.index == result.index), "")
        if as_json:
            print_json({"index": result.index, "status": status, "warnings": list(result.warnings)})
            return 0
        option = OPTIONS[result.key.option]
        what = f"{result.key.quantity} {option.title}" if option.license else option.title
        print(f"option {result.index}: {what} (expires: {_when(result.key.expires)})"
              + (f" [{status}]" if status != "active" else ""))
        for warning in result.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        return 0
    return _offline(state_dir, add)


def delete_key(state_dir: Path, index: int, as_json: bool) -> int:
    def delete(node: NodeLicensing) -> int:
        if node.remove_key(index, time.time()) is None:
            return _fail(f"option {index} is not set")
        print_json({"index": index, "removed": True}) if as_json else print(f"option {index} removed")
        return 0
    return _offline(state_dir, delete)


def cmd_xconfiguration_option(args) -> int:
    """``xConfiguration Option N Key: K`` writes index N (1..64, K4); an empty K removes it."""
    from meter.licensing.keytable import CLI_INDEXES

    index = args.index
    if index not in CLI_INDEXES:
        return _fail(f"K4: option index must be 1..64, got {index}")
    if not args.value:
        return ask(args, lambda c: delete_key_online(c, index, args.json), lambda d: delete_key(d, index, args.json))
    return ask(args, lambda c: add_key_online(c, args.value, index, args.json),
               lambda d: add_key(d, args.value, index, args.json))


# ---- licenses, license mode, factory reset ------------------------------------------------

def show_licenses(state_dir: Path, as_json: bool) -> int:
    """The pools from the state: keys, and in use as of the node's last usage snapshot."""
    def show(node: NodeLicensing) -> int:
        grants = node.grants(time.time())
        usage = node.store.latest_usage()
        alarms = node.store.alarms(active_only=True)
        if as_json:
            print_json({"mode": node.license_mode, "keys": grants.quantities,
                        "usage": {"at": usage[0], **usage[1]} if usage else None,
                        "alarms": [alarm_row(a.__dict__ if hasattr(a, "__dict__") else a._asdict()) for a in alarms]})
            return 0
        print(f"mode: {node.license_mode.upper()}  [from the state directory: the node is not running]")
        licenses = usage[1]["licenses"] if usage else {}
        rows = []
        for pool in ("rms", "room", "desktop", "cmr"):
            row = licenses.get(pool)
            rows.append({"pool": pool, "keys": grants.quantities.get(pool, 0),
                         "in use": row["in_use"] if row else None, "cluster": row["in_use_cluster"] if row else None,
                         "capacity": row["capacity"] if row else None})
        print_table(rows, ("pool", "keys", "in use", "cluster", "capacity"), count=False)
        if usage:
            at, snap = usage
            print(f"calls: {snap['calls']} of {snap['call_capacity']} video-call capacity "
                  f"({100 * snap['call_load']:.0f}%); registrations: {snap['registrations']} of "
                  f"{snap['registration_capacity']} (MRA {snap['mra_registrations']} of "
                  f"{snap['mra_registration_capacity']})  [as of {_when(at)}]")
        else:
            print("in use: no usage recorded (the node has not run with this state directory)")
        print("alarms:" + ("" if alarms else " none"))
        for alarm in alarms:
            print(f"  {alarm.id} [{alarm.rule}, {alarm.severity}] since {_when(alarm.raised_at)}: {alarm.reason}")
        return 0
    return _offline(state_dir, show)


def show_alarms(state_dir: Path, as_json: bool) -> int:
    """Every alarm the state holds, active first (K3's "restart required" among them)."""
    def show(node: NodeLicensing) -> int:
        items = [dataclasses.asdict(a) for a in node.store.alarms(active_only=False)]
        for item in items:
            item["text"] = item.pop("reason")
        items.sort(key=lambda a: (a["cleared_at"] is not None, -a["raised_at"]))
        print_json({"items": items}) if as_json else print_table([alarm_row(a) for a in items], ALARM_COLUMNS)
        return 0
    return _offline(state_dir, show)


def _at(args, state_dir: Path) -> argparse.Namespace:
    """``args`` bound to the state directory ``ask`` chose (the node not answering)."""
    return argparse.Namespace(**{**vars(args), "state_dir": str(state_dir)})


def mode_online(client, args) -> int:
    """The running node's license mode (``GET /api/v1/status``). PAK -> Smart is written to the
    node's state directory, which the running node watches: it follows within seconds (L3). Other
    changes (``--product``, PAK) are for a stopped node."""
    if args.target == "smart" and not args.product:
        from meter.admin.cli_support import target_of

        return cmd_mode(_at(args, target_of(args).state_dir))
    if args.target is not None or args.product:
        return _node_running(client, f"mode {args.target or ''}".strip())
    status = client.get("status")
    print_json(status) if args.json else print(f"license mode: {str(status.get('mode', '?')).upper()} "
                                               f"(node {status.get('node', '?')}, running)")
    return 0


def _node_running(client, what: str) -> int:
    """Refuse ``what`` when the node answers (any answer, even a refusal); nothing answering
    raises NodeUnreachable, and ``ask`` runs the command on the state directory."""
    from meter.admin.client import AdminError

    try:
        client.get("status")
    except AdminError:
        pass
    return _fail(f"{what}: the node at {client.url} is running; stop it first (this changes its state directory)")


@_on_node
def cmd_mode(args, node: NodeLicensing) -> int:
    try:
        if args.product:
            node.store.set_meta("product", args.product)
        if args.target is None:
            print(f"license mode: {node.license_mode.upper()} (product {node.product})")
            return 0
        if args.target == "pak":
            license_mode.switch_to_pak(node.license_mode)  # refuses from Smart (L2)
            print("license mode: PAK")
            return 0
        if node.smart:
            print("license mode: SMART already")
            return 0
        license_mode.switch_to_smart(node.license_mode, node.product)  # L4 before asking anything
        refused = _cluster_refusal(args)
        if refused:
            return _fail(refused)
        if not args.yes:
            print(SMART_WARNING + "Type 'yes' to switch to Smart Licensing: ", end="", flush=True)
            if sys.stdin.readline().strip().lower() != "yes":
                return _fail("switch to Smart Licensing cancelled: the node stays in PAK mode")
        node.switch_to_smart(time.time())  # S1: the 90-day evaluation starts now
    except license_mode.ModeRefused as exc:
        return _fail(str(exc))
    print("license mode: SMART, in its 90-day evaluation period (S1); option keys no longer apply (L3). "
          "A running node follows within seconds. Register it: meter smart register <token>")
    return 0


def _cluster_refusal(args) -> str:
    """S1: Smart mode begins with its evaluation period, during which cluster configuration is
    refused (X14.0.1, the seed): no switch on a node whose config pools with peers. Without a
    config to read (``--state-dir`` alone) the node refuses at its next start instead."""
    from meter.admin.cli_support import config_path, load_config

    if config_path(args) is None:
        return ""
    if load_config(args).cluster.store != "redis":
        return ""
    return ("S1: cluster configuration is refused during Smart Licensing's evaluation period, which the "
            "switch would start: take the node out of its cluster ([cluster] store = \"memory\"), switch, "
            "register it (`meter smart register <token>`), then rejoin the cluster")


# L2, L3: what the administrator must know before PAK -> Smart, as the guide's page says it.
SMART_WARNING = (
    "Switching to Smart Licensing:\n"
    "  - option keys stop applying: their licenses and the features that exist only as keys (HSM,\n"
    "    Advanced Account Security, Microsoft Interoperability) are off, and no key can be added (L3);\n"
    "  - a 90-day evaluation starts; register the node with a token from the Smart Software Manager (S1);\n"
    "  - the only way back to PAK is a factory reset, which wipes the licensing state (L2).\n")


def cmd_factory_reset(args) -> int:
    if not args.yes:
        print("Factory reset returns all licensing configuration and state to defaults (PAK mode,\n"
              "no option keys, no Smart registration: deregister first, `meter smart deregister`, so the\n"
              "manager gets the licenses back, S8). A backup is written first "
              f"({args.backup or '<state-dir>/backup-<time>.sqlite'}; --backup FILE to choose).\n"
              "Type 'yes' to continue: ", end="", flush=True)
        answer = sys.stdin.readline().strip().lower()
        if answer != "yes":
            return _fail("factory reset cancelled")
    return _factory_reset(args)


@_on_node
def _factory_reset(args, node: NodeLicensing) -> int:
    path = node.factory_reset(confirmed=True, backup_path=args.backup, now=time.time())
    print(f"backup written: {path}")
    print("licensing state reset: PAK mode, no option keys")
    return 0
