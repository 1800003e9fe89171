"""`meter smart ...`: Smart Licensing on the running node, through its admin API (contract B).

    meter smart status                      registration, authorization, evaluation, usage per license
    meter smart register TOKEN [--direct | --onprem URL | --proxy HOST:PORT --proxy-user U] [--reregister]
    meter smart renew-authorization         S7
    meter smart renew-registration          S7, S14 (sends the hostname)
    meter smart update-usage                S11
    meter smart deregister                  S8

State changes send the bearer token: ``$METER_ADMIN_TOKEN``, else ``<state-dir>/admin-token``.
Exit status: 0 done, 1 refused or failed (the reason on stderr).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from meter.admin.cli import DEFAULT_ADMIN
from meter.admin.token import ENV_VAR as TOKEN_VAR, FILE_NAME as TOKEN_FILE


def add_commands(sub) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--admin", default=DEFAULT_ADMIN, help=f"admin URL of the node (default {DEFAULT_ADMIN})")
    common.add_argument("--state-dir", default=os.environ.get("METER_STATE_DIR", "state"),
                        help="where the admin token is (<state-dir>/admin-token) unless $METER_ADMIN_TOKEN")
    common.add_argument("--json", action="store_true", help="print the API's JSON as is")
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


def _token(args) -> str:
    token = os.environ.get(TOKEN_VAR, "").strip()
    if token:
        return token
    try:
        return (Path(args.state_dir) / TOKEN_FILE).read_text().strip()
    except OSError:
        return ""


def _call(args, path: str, body: dict | None = None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    token = _token(args)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{args.admin.rstrip('/')}/api/v1/{path}", data=data, headers=headers,
                                     method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status, json.load(reply)
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.load(exc)
        except ValueError:
            return exc.code, {"error": f"HTTP {exc.code}"}


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
        except (urllib.error.URLError, OSError) as exc:
            return _fail(f"cannot reach the node's admin API at {args.admin}: {exc}")
    return run


@_reach
def cmd_status(args) -> int:
    status, doc = _call(args, "smart")
    if status != 200:
        return _fail(doc.get("error", f"HTTP {status}"))
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
    status, doc = _call(args, f"smart/{name}", body)
    if status != 200:
        return _fail(f"{name} refused: {doc.get('error', f'HTTP {status}')}")
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
