"""The commands that ask the node: `meter xstatus ...`, `meter xcommand ...`, `meter calls`,
`meter registrations`, `meter licenses`, `meter explain`.

Where they ask: ``meter.admin.cli_support.ask`` (the running node through its admin API v1, or,
when it does not answer, the state directory for what can be read offline: ``licensing_cli``).
No command here creates a state directory: a missing one is one line naming it and `meter init`.
Every listing prints aligned columns, or the API's JSON with ``--json``.
"""

from __future__ import annotations

import sys

from meter.admin import licensing_cli as offline
from meter.admin.cli_support import (
    POOLS, ALARM_COLUMNS, CliError, add_key, alarm_row, ask, delete_key, fail, print_json, print_options,
    print_table, target_parent, when,
)
from meter.admin.client import AdminClient, AdminError

# ---- commands ------------------------------------------------------------------------------

XSTATUS = ("licenses", "resourceusage", "registrations", "calls", "alarms", "options")
XCOMMANDS = ("resetpeaks", "optionkeyadd", "optionkeydelete")


def add_commands(sub) -> None:
    parent = target_parent()
    calls = sub.add_parser("calls", parents=[parent], help="calls the running node meters (class, licenses, rule IDs)")
    calls.set_defaults(func=lambda args: ask(args, lambda c: show_calls(c, args.json)))
    regs = sub.add_parser("registrations", parents=[parent], help="registered aliases (class, license, rule IDs)")
    regs.set_defaults(func=lambda args: ask(args, lambda c: show_registrations(c, args.json)))
    licenses = sub.add_parser("licenses", parents=[parent], help="pools: keys, in use, cluster, capacity, alarms")
    licenses.set_defaults(func=lambda args: xstatus(args, "licenses"))

    xs = sub.add_parser("xstatus", aliases=["xStatus"], parents=[parent],
                        help=f"status, Expressway's way: xstatus {'|'.join(XSTATUS)}")
    xs.add_argument("what", type=str.lower, choices=XSTATUS)
    xs.set_defaults(func=lambda args: xstatus(args, args.what))

    xc = sub.add_parser("xcommand", aliases=["xCommand"], parents=[parent],
                        help="commands, Expressway's way: xcommand resetpeaks | optionkeyadd KEY | optionkeydelete INDEX")
    xc.add_argument("action", type=str.lower, choices=XCOMMANDS)
    xc.add_argument("value", nargs="?", help="the key (optionkeyadd) or the option index (optionkeydelete)")
    xc.set_defaults(func=xcommand)

    explain = sub.add_parser("explain", help="print a licensing rule's text: meter explain C4 (no ID: every rule)")
    explain.add_argument("rule", nargs="?", help="a rule ID: R1, C4, P4, K4, L2, S5 ...")
    explain.add_argument("--json", action="store_true")
    explain.set_defaults(func=cmd_explain)


def xstatus(args, what: str) -> int:
    as_json = args.json
    if what == "licenses":
        return ask(args, lambda c: show_licenses(c, as_json), lambda d: offline.show_licenses(d, as_json))
    if what == "options":
        return ask(args, lambda c: show_options(c, as_json), lambda d: offline.show_options(d, as_json))
    if what == "alarms":
        return ask(args, lambda c: show_alarms(c, as_json), lambda d: offline.show_alarms(d, as_json))
    if what == "resourceusage":
        return ask(args, lambda c: show_usage(c, as_json))
    if what == "calls":
        return ask(args, lambda c: show_calls(c, as_json))
    return ask(args, lambda c: show_registrations(c, as_json))


def xcommand(args) -> int:
    if args.action == "resetpeaks":
        return ask(args, lambda c: reset_peaks(c, args.json))
    if not args.value:
        return fail(f"xcommand {args.action}: expected {'a key' if args.action == 'optionkeyadd' else 'an option index'}")
    if args.action == "optionkeyadd":
        return ask(args, lambda c: add_key(c, args.value, None, args.json),
                   lambda d: offline.add_key(d, args.value, None, args.json))
    if not args.value.isdigit():
        return fail(f"xcommand optionkeydelete: expected an option index, got {args.value!r}")
    index = int(args.value)
    return ask(args, lambda c: delete_key(c, index, args.json), lambda d: offline.delete_key(d, index, args.json))


# ---- listings -------------------------------------------------------------------------------

CALL_COLUMNS = ("call_id", "caller", "callee", "caller_zone", "callee_zone", "state", "call_class",
                "license", "licenses", "charged_on", "rules")
REGISTRATION_COLUMNS = ("alias", "protocol", "device_class", "license", "device", "rules")
# Units per license (meter.licensing.model.UNIT_SCALE): RMS is counted in halves (C4).
UNITS_PER_LICENSE = {"rms": 2}


def call_row(row: dict) -> dict:
    """A call as the pages show it: RMS as licenses (0.5 for an audio-only SIP call), and where it
    is charged when that is the other node of a C/E pair (C3). A node before the API v1 gives only
    ``units``: licenses are worked out from them."""
    out = dict(row)
    if "licenses" not in out and "units" in out:
        out["licenses"] = out["units"] / UNITS_PER_LICENSE.get(str(out.get("license")), 1)
    if out.get("license") in (None, "none", "") and not out.get("licenses"):
        out["licenses"] = 0
    return out


def show_calls(client: AdminClient, as_json: bool) -> int:
    rows = [call_row(r) for r in client.get_all("calls", legacy="calls")]
    if as_json:
        print_json(rows)
        return 0
    here = node_name(client)
    for row in rows:  # C3: a call the other node of a C/E pair pays for says so
        if row.get("charged_on") and here and row["charged_on"] != here:
            row["charged_on"] = f"{row['charged_on']} (other node)"
    print_table(rows, CALL_COLUMNS)
    return 0


def node_name(client: AdminClient) -> str | None:
    """The node's name (``GET /api/v1/status``; an older node's /api/licenses has it too)."""
    try:
        doc = client.get("status")
    except AdminError:
        try:
            doc = client.get("licenses", legacy="licenses")
        except AdminError:
            return None
    return doc.get("node") if isinstance(doc, dict) else None


def show_registrations(client: AdminClient, as_json: bool) -> int:
    rows = client.get_all("registrations", legacy="registrations")
    if as_json:
        print_json(rows)
        return 0
    print_table(rows, REGISTRATION_COLUMNS)
    return 0


def show_licenses(client: AdminClient, as_json: bool) -> int:
    doc = client.get("licenses", legacy="licenses")
    if as_json:
        print_json(doc)
        return 0
    keys = (doc.get("option_keys") or {}).get("quantities", {})
    mode = (doc.get("option_keys") or {}).get("mode", "")
    print(f"mode: {mode.upper() or '-'}  enforcement: {doc.get('enforcement', '-')}  node: {doc.get('node', '-')}  "
          f"[live, {when(doc.get('at'))}]")
    rows = []
    for pool in POOLS:
        usage = doc.get("licenses", {}).get(pool, {})
        rows.append({"pool": pool, "keys": keys.get(pool, 0), "in use": usage.get("in_use"),
                     "cluster": usage.get("in_use_cluster"), "capacity": usage.get("capacity")})
    print_table(rows, ("pool", "keys", "in use", "cluster", "capacity"), count=False)
    print(f"calls: {doc.get('calls')} of {doc.get('call_capacity')} video-call capacity "
          f"({100 * (doc.get('call_load') or 0):.0f}%); registrations: {doc.get('registrations')} of "
          f"{doc.get('registration_capacity')}")
    would = doc.get("would_refuse") or {}
    if any(would.values()):
        print("would refuse: " + ", ".join(f"{k} {v}" for k, v in would.items() if v))
    alarms = doc.get("alarms") or []
    print("alarms:" + ("" if alarms else " none"))
    for alarm in alarms:
        print(f"  {alarm['id']} [{alarm['rule']}, {alarm['severity']}] since {when(alarm['raised_at'])}: "
              f"{alarm.get('reason') or alarm.get('text', '')}")
    return 0


def show_usage(client: AdminClient, as_json: bool) -> int:
    try:
        doc = client.get("usage")
    except AdminError as exc:
        if exc.status not in (404, 405):
            raise
        raise CliError(f"the node at {client.url} has no usage accounting (GET /api/v1/usage): "
                       f"`meter xstatus licenses` shows what it has") from None
    if as_json:
        print_json(doc)
        return 0
    print(f"node: {doc.get('node', '-')}  at {when(doc.get('at'))}")
    rows = []
    for pool in POOLS:
        u = (doc.get("licenses") or {}).get(pool)
        if u is None:
            continue
        rows.append({"license": pool, "current": u.get("current"), "peak": u.get("peak"),
                     "peak at": when(u.get("peak_at")) if u.get("peak_at") else "-",
                     "since reset": u.get("peak_since_reset"), "capacity": u.get("capacity"),
                     "cluster": u.get("cluster_current"), "cluster peak": u.get("cluster_peak"),
                     "would refuse": u.get("would_refuse"), "refused": u.get("refused")})
    print_table(rows, ("license", "current", "peak", "peak at", "since reset", "capacity", "cluster",
                       "cluster peak", "would refuse", "refused"), count=False)
    classes = doc.get("calls_by_class") or {}
    if classes:
        print()
        print_table([{"call class": name, "current": c.get("current"), "peak": c.get("peak"),
                      "peak at": when(c.get("peak_at")) if c.get("peak_at") else "-"}
                     for name, c in classes.items()], ("call class", "current", "peak", "peak at"), count=False)
    peers = doc.get("peers") or []
    if peers:
        print()
        print_table([{"peer": p.get("node"), **{k: v for k, v in (p.get("licenses") or {}).items()}} for p in peers],
                    ("peer",) + POOLS, count=False)
    return 0


def show_alarms(client: AdminClient, as_json: bool) -> int:
    doc = client.get("alarms", legacy="alarms")
    items = doc["items"] if isinstance(doc, dict) else doc  # the old /api/alarms was a bare list
    if as_json:
        print_json({"items": items})
        return 0
    print_table([alarm_row(a) for a in items], ALARM_COLUMNS)
    return 0


# ---- option keys (K4, K6) -----------------------------------------------------------------

def options_doc(client: AdminClient) -> dict:
    """``GET /api/v1/option-keys``; from a node before the API v1, its /api/licenses part."""
    try:
        return client.get("option-keys")
    except AdminError as exc:
        if exc.status not in (404, 405):
            raise
    return offline.options_from_view(client.get("licenses", legacy="licenses").get("option_keys") or {})


def show_options(client: AdminClient, as_json: bool) -> int:
    doc = options_doc(client)
    if as_json:
        print_json(doc)
        return 0
    print_options(doc)
    return 0


def reset_peaks(client: AdminClient, as_json: bool) -> int:
    doc = client.post("usage/reset-peaks")
    if as_json:
        print_json(doc)
        return 0
    print(f"peaks reset at {when((doc or {}).get('reset_at'))}")
    return 0


# ---- explain -------------------------------------------------------------------------------

def cmd_explain(args) -> int:
    from meter.rulebook import RuleNotFound, rules

    try:
        known = rules()
    except OSError as exc:
        return fail(f"the rules document is not installed with this package: {exc}")
    if args.rule is None:
        if args.json:
            print_json({"items": [{"id": k, "text": v} for k, v in known.items()]})
        else:
            for rule_id, text in known.items():
                print(f"{rule_id:<5} {text.splitlines()[0][:100]}")
        return 0
    try:
        from meter.rulebook import explain

        rule_id, text = explain(args.rule, known)
    except RuleNotFound as exc:
        return fail(str(exc))
    if args.json:
        print_json({"id": rule_id, "text": text})
    else:
        print(f"{rule_id}: {text}")
    return 0
