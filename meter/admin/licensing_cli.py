"""Expressway-flavoured licensing commands on a node's state directory.

``add_commands(subparsers)`` registers them on the ``meter`` command (meter/cli.py):

    meter keys issuer-init                  create the lab issuer key pair
    meter keys issue --option RMS --quantity 100 [--serial S] [--expires 30d]
    meter keys trust issuer.pem.pub         trust another lab issuer's public key
    meter xstatus options                   installed keys by index, features in force (K4, K6)
    meter xconfiguration option N key K     set option key N (1..64); an empty K removes it (K4)
    meter licenses                          pools, in use, capacity, alarms
    meter mode [smart]                      show the license mode, or switch to Smart (L2, L4)
    meter factory-reset [--yes]             back to defaults, PAK mode; writes a backup first (L2)

Every command takes ``--state-dir`` (default ``$METER_STATE_DIR`` or ``./state``). Each handler
returns the exit status: 0 done, 1 refused or failed (with the reason on stderr). The commands
work on the state directory directly (``meter.store``), so they need no running node.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import os
import re
import sys
import time
from collections.abc import Callable

from meter.licensing import license_mode
from meter.licensing.keys import KeyRefused, fingerprint, issue_key
from meter.licensing.options import OPTIONS
from meter.store.licensing import (
    LicensingStore, StoreError, check_initialised, create_issuer, load_issuer, load_public,
)
from meter.store.node_licensing import NodeLicensing

DEFAULT_STATE_DIR = "state"


def add_commands(subparsers) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state-dir", default=os.environ.get("METER_STATE_DIR", DEFAULT_STATE_DIR),
                        help="the node's state directory (default: $METER_STATE_DIR or ./state)")

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

    xstatus = subparsers.add_parser("xstatus", aliases=["xStatus"], parents=[common],
                                    help="status: xstatus options")
    xstatus.add_argument("what", type=str.lower, choices=["options"])
    xstatus.set_defaults(func=cmd_xstatus_options)

    xconf = subparsers.add_parser("xconfiguration", aliases=["xConfiguration"], parents=[common],
                                  help="configuration: xconfiguration option N key K")
    xconf.add_argument("section", type=str.lower, choices=["option"])
    xconf.add_argument("index", type=int, help="option index 1..64")
    xconf.add_argument("field", type=str.lower, choices=["key", "key:"])
    xconf.add_argument("value", nargs="?", default="", help="the option key; empty removes option N")
    xconf.set_defaults(func=cmd_xconfiguration_option)

    licenses = subparsers.add_parser("licenses", parents=[common], help="pools, in use, capacity, alarms")
    licenses.set_defaults(func=cmd_licenses)

    mode = subparsers.add_parser("mode", parents=[common], help="show the license mode, or 'mode smart'")
    mode.add_argument("target", nargs="?", type=str.lower, choices=["smart", "pak"])
    mode.add_argument("--product", choices=license_mode.PRODUCTS, help="override the product the node recorded")
    mode.add_argument("--yes", action="store_true", help="switch to Smart without asking for confirmation")
    mode.set_defaults(func=cmd_mode)

    reset = subparsers.add_parser("factory-reset", parents=[common],
                                  help="return licensing state to defaults (PAK); backup first")
    reset.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    reset.add_argument("--backup", help="backup file (default: <state-dir>/backup-<time>.sqlite)")
    reset.set_defaults(func=cmd_factory_reset)


def _fail(message: str) -> int:
    print(f"meter: {message}", file=sys.stderr)
    return 1


def _on_node(command: Callable[[argparse.Namespace, NodeLicensing], int]) -> Callable[[argparse.Namespace], int]:
    """Run ``command(args, node)`` on the state directory's licensing, closed afterwards; state that
    cannot be read or written exits 1 with the file and why."""
    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        try:
            check_initialised(args.state_dir)  # a node's serial comes from `meter init`, never from here
            with NodeLicensing.open(args.state_dir) as node:
                return command(args, node)
        except StoreError as exc:
            return _fail(str(exc))
    return run


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
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"--expires: expected none, 30d, 12h or an ISO date, got {text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return when.timestamp()


# ---- keys ---------------------------------------------------------------------------------

def cmd_issuer_init(args) -> int:
    try:
        with LicensingStore(args.state_dir) as store:
            path = args.issuer_key or store.issuer_key_path
            if os.path.exists(path):
                if not args.force:
                    return _fail(f"{path} exists (use --force to replace it; keys it issued stop verifying)")
                os.remove(path)
            private = create_issuer(path)
            if store.get_meta("issuer_public_key") is None or args.force:
                store.trust(private.public_key())
    except StoreError as exc:
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
        serial = args.serial or check_initialised(args.state_dir)
        with LicensingStore(args.state_dir) as store:
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
    except (StoreError, ValueError) as exc:
        return _fail(str(exc))
    print(key)
    return 0


def cmd_trust(args) -> int:
    try:
        public = load_public(args.public_key)
        with LicensingStore(args.state_dir) as store:
            store.trust(public)
    except StoreError as exc:
        return _fail(str(exc))
    print(f"trusting issuer {fingerprint(public)}; keys from another issuer now show as invalid")
    return 0


# ---- xStatus / xConfiguration -------------------------------------------------------------

@_on_node
def cmd_xstatus_options(args, node: NodeLicensing) -> int:
    view = node.view(time.time())
    print("*s Options:")
    for key in view["keys"]:
        quantity = f"{key['quantity']} " if OPTIONS.get(key["option"]) and OPTIONS[key["option"]].license else ""
        print(f"    Option {key['index']}:")
        print(f"        Key: \"{key['text']}\"")
        print(f"        Description: \"{quantity}{key['title']}\"")
        print(f"        Status: {key['state']}" + (f" ({key['detail']})" if key["detail"] else ""))
        print(f"        Expiry: {_when(key['expires'])}")
    print("*s/end")
    print(f"Serial: {view['serial']}  Mode: {view['mode'].upper()}  Product: {view['product']}")
    quantities = ", ".join(f"{k} {v}" for k, v in view["quantities"].items()) or "none"
    print(f"Licenses in force: {quantities}")
    print(f"Features in force: {', '.join(view['features']) or 'none'}")
    return 0


@_on_node
def cmd_xconfiguration_option(args, node: NodeLicensing) -> int:
    now = time.time()
    try:
        if not args.value:
            removed = node.remove_key(args.index, now)
            if removed is None:
                return _fail(f"option {args.index} is not set")
            print(f"option {args.index} removed")
            return 0
        result = node.add_key(args.value, now, index=args.index)
    except KeyRefused as exc:
        return _fail(f"option key refused: {exc}")
    except ValueError as exc:
        return _fail(str(exc))
    option = OPTIONS[result.key.option]
    what = f"{result.key.quantity} {option.title}" if option.license else option.title
    print(f"option {result.index}: {what} (expires: {_when(result.key.expires)})")
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


# ---- licenses, license mode, factory reset ------------------------------------------------

@_on_node
def cmd_licenses(args, node: NodeLicensing) -> int:
    grants = node.grants(time.time())
    usage = node.store.latest_usage()
    alarms = node.store.alarms(active_only=True)
    print(f"mode: {node.license_mode.upper()}")
    licenses = usage[1]["licenses"] if usage else {}
    print(f"{'pool':<8} {'keys':>6} {'in use':>8} {'cluster':>8} {'capacity':>9}")
    for pool in ("rms", "room", "desktop", "cmr"):
        row = licenses.get(pool)
        in_use = f"{row['in_use']:g}" if row else "-"
        cluster = f"{row['in_use_cluster']:g}" if row else "-"
        capacity = str(row["capacity"]) if row else "-"
        print(f"{pool:<8} {grants.quantities.get(pool, 0):>6} {in_use:>8} {cluster:>8} {capacity:>9}")
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
