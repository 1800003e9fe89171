"""`meter ssm`: the lab Smart Software Manager's commands.

    meter ssm init --state DIR [--port N] [--hostname H ...]   state dir, CA, admin token, ssm.toml
    meter ssm serve --config DIR/ssm.toml [--clock-offset S] [--time-factor F]
    meter ssm account add SMART_ACCOUNT VIRTUAL_ACCOUNT | account list
    meter ssm pool set VA TAG QTY [--end DATE]     TAG: EXPWY_RMS|EXPWY_ROOM|EXPWY_DESKTOP|EXPWY_CMR (or rms...)
    meter ssm token create VA [--expires-days N] [--max-uses N] [--export-controlled]
    meter ssm token revoke TOKEN | token list
    meter ssm instances | transfer INSTANCE VA | show | ca-cert

Every command but serve works offline on the state directory (``--state``, default
``$METER_SSM_STATE`` or ./ssm-state; or ``--config``), also while the server runs. Durations
(token lifetimes) follow the config's ``time_factor``: ``DIR/ssm.toml`` when only ``--state`` is given.
Exit status: 0 done, 1 refused (reason on stderr), 2 bad config or state.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
from dataclasses import replace
from pathlib import Path

from meter.ssm.ca import CAError, CertificateAuthority
from meter.ssm.errors import AdminError
from meter.ssm.settings import SettingsError, SsmSettings, default_text, load
from meter.ssm.state import TAGS, State
from meter.timestamps import iso_timestamp

CONFIG_NAME = "ssm.toml"
SHORT_TAGS = {"rms": "EXPWY_RMS", "room": "EXPWY_ROOM", "desktop": "EXPWY_DESKTOP", "cmr": "EXPWY_CMR"}


def add_commands(subparsers) -> None:
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--state", help="state directory (default: $METER_SSM_STATE or ./ssm-state)")
    where.add_argument("--config", help=f"the manager's config (default: <state>/{CONFIG_NAME} if present)")

    ssm = subparsers.add_parser("ssm", help="the lab Smart Software Manager (serve it, manage its accounts)")
    sub = ssm.add_subparsers(dest="ssm_command", metavar="ACTION", required=True)

    init = sub.add_parser("init", help="create a state directory, its CA, admin token and ssm.toml")
    init.add_argument("--state", required=True, help="the directory to create")
    init.add_argument("--port", type=int, default=8443)
    init.add_argument("--hostname", action="append", help="a name or address of the server certificate (repeat)")
    init.set_defaults(func=_cmd_init)

    serve = sub.add_parser("serve", parents=[where], help="serve the protocol, the admin API and the page over HTTPS")
    serve.add_argument("--clock-offset", type=float, help="seconds added to the manager's clock (overrides the config)")
    serve.add_argument("--time-factor", type=float, help="timer compression (overrides the config)")
    serve.set_defaults(func=_cmd_serve)

    account = sub.add_parser("account", help="smart and virtual accounts").add_subparsers(
        dest="account_command", metavar="ACTION", required=True)
    add = account.add_parser("add", parents=[where], help="add a virtual account to a smart account")
    add.add_argument("smart_account")
    add.add_argument("virtual_account")
    add.set_defaults(func=_cmd_account_add)
    account.add_parser("list", parents=[where], help="list accounts").set_defaults(func=_cmd_account_list)

    pool = sub.add_parser("pool", help="license pools").add_subparsers(dest="pool_command", metavar="ACTION", required=True)
    pool_set = pool.add_parser("set", parents=[where], help="set a virtual account's quantity of a tag")
    pool_set.add_argument("virtual_account")
    pool_set.add_argument("tag", help=f"{'|'.join(TAGS)} (or rms, room, desktop, cmr)")
    pool_set.add_argument("quantity", type=int)
    pool_set.add_argument("--end", help="end date (YYYY-MM-DD, or an ISO date-time in UTC)")
    pool_set.set_defaults(func=_cmd_pool_set)

    token = sub.add_parser("token", help="registration tokens").add_subparsers(dest="token_command", metavar="ACTION", required=True)
    create = token.add_parser("create", parents=[where], help="create a token for a virtual account (printed)")
    create.add_argument("virtual_account")
    create.add_argument("--expires-days", type=float, default=30)
    create.add_argument("--max-uses", type=int)
    create.add_argument("--export-controlled", action="store_true", help="allow export-controlled functionality (S12)")
    create.add_argument("--description", default="")
    create.set_defaults(func=_cmd_token_create)
    revoke = token.add_parser("revoke", parents=[where], help="revoke a token")
    revoke.add_argument("token")
    revoke.set_defaults(func=_cmd_token_revoke)
    token.add_parser("list", parents=[where], help="list tokens (JSON)").set_defaults(func=_cmd_token_list)

    sub.add_parser("instances", parents=[where], help="registered product instances (JSON)").set_defaults(func=_cmd_instances)
    transfer = sub.add_parser("transfer", parents=[where], help="move an instance to another virtual account (S3)")
    transfer.add_argument("instance")
    transfer.add_argument("virtual_account")
    transfer.set_defaults(func=_cmd_transfer)
    sub.add_parser("show", parents=[where], help="everything: accounts, pools, compliance, instances, tokens (JSON)"
                   ).set_defaults(func=_cmd_show)
    sub.add_parser("ca-cert", parents=[where], help="print the CA certificate (PEM) nodes must trust"
                   ).set_defaults(func=_cmd_ca_cert)


def _settings(args) -> SsmSettings:
    if args.config:
        return load(args.config)
    state_dir = Path(args.state or os.environ.get("METER_SSM_STATE") or "ssm-state")
    if (state_dir / CONFIG_NAME).exists():
        settings = load(state_dir / CONFIG_NAME)
        return replace(settings, state_dir=state_dir)
    return SsmSettings(state_dir=state_dir)


def _state(settings: SsmSettings) -> State:
    if not (settings.state_dir / "ca.pem").exists():
        raise SettingsError(f"{settings.state_dir}: not a manager state directory (run `meter ssm init --state DIR`)")
    return State(settings.state_dir)


def _run(args, action) -> int:
    try:
        settings = _settings(args)
        state = _state(settings)
    except (SettingsError, CAError) as exc:
        print(f"meter ssm: {exc}", file=sys.stderr)
        return 2
    try:
        return action(state, settings) or 0
    except AdminError as exc:
        print(f"meter ssm: {exc}", file=sys.stderr)
        return 1
    finally:
        state.close()


def _print_json(value) -> None:
    print(json.dumps(value, indent=2))


def _cmd_init(args) -> int:
    state_dir = Path(args.state)
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        settings = SsmSettings(state_dir=state_dir)
        CertificateAuthority.create(state_dir, settings.clock.now())
    except (OSError, CAError) as exc:
        print(f"meter ssm: {exc}", file=sys.stderr)
        return 1
    State(state_dir).close()
    fd = os.open(state_dir / "admin-token", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_urlsafe(32) + "\n")
    text = default_text(Path("."), args.port)
    if args.hostname:
        text = text.replace('hostnames = ["localhost", "127.0.0.1"]', f"hostnames = {json.dumps(args.hostname)}")
    (state_dir / CONFIG_NAME).write_text(text, encoding="utf-8")
    print(f"meter ssm: state in {state_dir}: CA {state_dir / 'ca.pem'}, admin token {state_dir / 'admin-token'}, "
          f"config {state_dir / CONFIG_NAME}")
    return 0


def _cmd_serve(args) -> int:
    from meter.ssm.server import ServeError, serve

    try:
        settings = _settings(args)
        _state(settings).close()
        CertificateAuthority.load(settings.state_dir)
    except (SettingsError, CAError) as exc:
        print(f"meter ssm: bad config or state, not starting: {exc}", file=sys.stderr)
        return 2
    if args.clock_offset is not None:
        settings = replace(settings, clock_offset=args.clock_offset)
    if args.time_factor is not None:
        if args.time_factor <= 0:
            print("meter ssm: --time-factor must be positive", file=sys.stderr)
            return 2
        settings = replace(settings, time_factor=args.time_factor)
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    try:
        asyncio.run(serve(settings))
    except ServeError as exc:
        print(f"meter ssm: not serving: {exc}", file=sys.stderr)
        return 1
    return 0


def _cmd_account_add(args) -> int:
    return _run(args, lambda state, s: state.add_account(args.smart_account, args.virtual_account, s.clock.now()))


def _cmd_account_list(args) -> int:
    return _run(args, lambda state, s: _print_json(state.accounts()))


def _end_at(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return iso_timestamp(text)
    except ValueError:
        raise AdminError(f"--end: expected YYYY-MM-DD or an ISO date-time, got {text!r}") from None


def _cmd_pool_set(args) -> int:
    def action(state: State, settings: SsmSettings) -> None:
        tag = SHORT_TAGS.get(args.tag.lower(), args.tag)
        state.set_pool(args.virtual_account, tag, args.quantity, _end_at(args.end))
        _print_json({tag: state.compliance(args.virtual_account, settings.clock.now())[tag]})
    return _run(args, action)


def _cmd_token_create(args) -> int:
    def action(state: State, settings: SsmSettings) -> None:
        print(state.create_token(args.virtual_account, settings.clock, expires_days=args.expires_days,
                                 max_uses=args.max_uses, export_controlled=args.export_controlled,
                                 description=args.description))
    return _run(args, action)


def _cmd_token_revoke(args) -> int:
    return _run(args, lambda state, s: state.revoke_token(args.token, s.clock.now()))


def _cmd_token_list(args) -> int:
    return _run(args, lambda state, s: _print_json(state.tokens(s.clock)))


def _cmd_instances(args) -> int:
    return _run(args, lambda state, s: _print_json(state.instances(s.clock.now())))


def _cmd_transfer(args) -> int:
    return _run(args, lambda state, s: state.transfer(args.instance, args.virtual_account))


def _cmd_show(args) -> int:
    return _run(args, lambda state, s: _print_json(state.overview(s.clock)))


def _cmd_ca_cert(args) -> int:
    return _run(args, lambda state, s: print(CertificateAuthority.load(s.state_dir).cert_pem, end=""))
