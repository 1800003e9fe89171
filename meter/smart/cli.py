"""`meter smart ...`: Smart Licensing on the running node, through its admin API (contract B).

    meter smart status                      registration, authorization, evaluation, usage per license
    meter smart register TOKEN [--direct | --onprem URL | --proxy HOST:PORT --proxy-user U] [--reregister]
    meter smart renew-authorization         S7
    meter smart renew-registration          S7, S14 (sends the hostname)
    meter smart update-usage                S11
    meter smart deregister                  S8

The node and its token are found as by every other command (meter.admin.cli_support: ``--admin``,
``--config``, ``$METER_ADMIN_TOKEN`` or ``<state_dir>/admin-token``). Exit status: 0 done, 1 refused or failed (the reason on stderr).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys

from meter.admin.cli_support import CliError, target_of, target_parent
from meter.admin.client import AdminError, NodeUnreachable


def add_commands(sub) -> None:
    common = target_parent()
    smart = sub.add_parser("smart", help="Smart Licensing on the running node (status, register, renew, deregister)")
    actions = smart.add_subparsers(dest="smart_command", metavar="ACTION", required=True)
    actions.add_parser("status", parents=[common], help="registration, authorization, usage").set_defaults(func=cmd_status)
    register = actions.add_parser("register", parents=[common], help="register with a product-instance token (S3)")
    register.add_argument("token")
    register.add_argument("--direct", action="store_true", help="Direct transport ([smart] direct_url; S4)")
    register.add_argument("--onprem", metavar="URL", help="On-Prem transport: https://host/SmartTransport (S4)")
    register.add_argument("--proxy", metavar="HOST:PORT", help="Proxy transport: the HTTP proxy (S4)")
    register.add_argument("--proxy-user", default="")
    register.add_argument("--proxy-password", default=os.environ.get("METER_SMART_PROXY_PASSWORD", ""),
                          help="(default: $METER_SMART_PROXY_PASSWORD, kept out of the shell history)")
    register.add_argument("--reregister", action="store_true", help="register again, moving to the token's virtual account")
    register.set_defaults(func=cmd_register)
    for name, rules in (("renew-authorization", "S7"), ("renew-registration", "S7, S14"),
                        ("update-usage", "S11"), ("deregister", "S8")):
        action = actions.add_parser(name, parents=[common], help=f"{name.replace('-', ' ')} now ({rules})")
        action.set_defaults(func=lambda args, name=name: _action(args, name, {}))


# The node answers an action once the manager has (or its own [smart] timeout ran out).
ACTION_TIMEOUT = 90.0


def _call(args, path: str, body: dict | None = None) -> dict:
    client = target_of(args).client
    if client is None:
        raise CliError("Smart Licensing acts on the running node: give --admin or --config, not only --state-dir")
    client.timeout = ACTION_TIMEOUT
    return client.get(path) if body is None else client.post(path, body)


def _when(epoch) -> str:
    if epoch is None:
        return "-"
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _fail(message: str) -> int:
    print(f"meter: {message}", file=sys.stderr)
    return 1


def _reach(fn):
    def run(args, *rest) -> int:
        try:
            return fn(args, *rest)
        except (NodeUnreachable, CliError) as exc:
            return _fail(str(exc))
    return run


@_reach
def cmd_status(args) -> int:
    try:
        doc = _call(args, "smart")
    except AdminError as exc:
        return _fail(exc.reason)
    if args.json:
        print(json.dumps(doc, indent=1))
        return 0
    print_status(doc)
    return 0


def print_status(s: dict) -> None:
    reg, auth, ev = s["registration"], s["authorization"], s["evaluation"]
    print(f"License mode:          {s['mode'].upper()}")
    print(f"Registration status:   {reg['status']}")
    print(f"  registered:          {_when(reg['registered_at'])}   expires: {_when(reg['expires_at'])}")
    print(f"Authorization status:  {auth['status']}")
    print(f"  authorized:          {_when(auth['authorized_at'])}   expires: {_when(auth['expires_at'])}")
    print(f"Evaluation:            {'expired' if ev['expired'] else str(ev['days_left']) + ' days left'}")
    print(f"Smart account:         {s['smart_account'] or '-'}   virtual account: {s['virtual_account'] or '-'}")
    export = s["export_controlled"]
    print(f"Export-controlled:     {'-' if export is None else 'allowed' if export else 'not allowed'}")
    t = s["transport"]
    where = {"onprem": f"On-Prem {t.get('url')}", "proxy": f"Proxy {t.get('host')}:{t.get('port')}"}.get(t["kind"], "Direct")
    print(f"Transport:             {where}")
    for label, a in (("registration", reg.get("last_attempt")), ("renewal", reg.get("last_renewal")),
                     ("authorization", auth.get("last_attempt")), ("usage report", s.get("last_usage_report"))):
        if a:
            result = "ok" if a["ok"] else f"FAILED: {a['error']}" if a["ok"] is False else "-"
            print(f"Last {label + ':':<17}{_when(a['at'])}  {result}  next: {_when(a['next'])}")
    print(f"{'LICENSE':<9}{'TAG':<15}{'IN USE':>8}{'POOL':>8}  STATUS")
    for row in s["usage"]:
        pool = "-" if row.get("pool") is None else str(row["pool"])
        print(f"{row['license']:<9}{row['tag']:<15}{row['in_use']:>8}{pool:>8}  {row['status']}")
    if s.get("notice"):
        print(f"notice: {s['notice']}")


@_reach
def cmd_register(args) -> int:
    transport: dict | None = None  # none given: the transport already chosen (Direct at first)
    if sum(map(bool, (args.direct, args.onprem, args.proxy))) > 1:
        return _fail("--direct, --onprem, --proxy: choose one transport (S4)")
    if args.direct:
        transport = {"kind": "direct"}
    elif args.onprem:
        transport = {"kind": "onprem", "url": args.onprem}
    elif args.proxy:
        host, _, port = args.proxy.rpartition(":")
        if not host or not port.isdigit():
            return _fail(f"--proxy: expected HOST:PORT, got {args.proxy!r}")
        transport = {"kind": "proxy", "host": host, "port": int(port), "user": args.proxy_user,
                     "password": args.proxy_password}
    body = {"token": args.token, "reregister": args.reregister}
    if transport is not None:
        body["transport"] = transport
    return _action(args, "register", body)


@_reach
def _action(args, name: str, body: dict) -> int:
    try:
        doc = _call(args, f"smart/{name}", body)
    except AdminError as exc:
        return _fail(f"{name} refused: {exc.reason}")
    if args.json:
        print(json.dumps(doc, indent=1))
    elif doc.get("ok"):
        print(f"{name}: done")
        if doc.get("returned"):
            print("returned to the virtual account: " + ", ".join(f"{k} {v}" for k, v in doc["returned"].items()))
    if not doc.get("ok"):
        message = f"{name} failed: {doc.get('error') or doc.get('notice')}"
        if doc.get("next_attempt"):
            message += f" (next attempt {_when(doc['next_attempt'])})"
        if doc.get("notice") and doc.get("notice") not in message:
            message += f"; {doc['notice']}"
        return _fail(message)
    return 0
