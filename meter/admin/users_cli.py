"""`meter users`: the operator's commands for the credentials file (``meter.store.credentials``).

    meter users add alice --realm lab.test        asks the password twice (or --password-stdin)
    meter users remove alice --realm lab.test
    meter users list [--realm lab.test]           user and realm per line, never a hash

The file is ``--file``, else ``credentials`` in the node's state directory (``--state-dir``, else
``$METER_STATE_DIR``, else the ``[node] state_dir`` of ``--config``): the node's default
``[auth] credentials_file``. The state directory must exist (`meter init` makes it). A running node picks up a change
within a second. Exit status: 0 done, 1 refused or failed (reason on stderr).
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys

from meter.admin.cli_support import CliError, print_json, print_table
from meter.sip.auth.settings import AuthSettings
from meter.store.licensing import StoreError
from meter.store.credentials import CredentialsError, add_user, default_path, read_entries, remove_user

DEFAULT_REALM = AuthSettings.realm


def add_commands(subparsers) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state-dir", help="node state directory (default: $METER_STATE_DIR, else the config's)")
    common.add_argument("--config", "-c", help="the node's config file, for its [node] state_dir")
    common.add_argument("--file", help="credentials file (default: <state-dir>/credentials)")
    users = subparsers.add_parser("users", help="digest credentials of SIP users ([auth])")
    sub = users.add_subparsers(dest="users_command", metavar="ACTION", required=True)

    add = sub.add_parser("add", parents=[common], help="add a user, or set a new password")
    add.add_argument("user")
    add.add_argument("--realm", default=DEFAULT_REALM, help=f"digest realm ([auth] realm, default {DEFAULT_REALM!r})")
    add.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    add.set_defaults(func=_cmd_add)

    remove = sub.add_parser("remove", parents=[common], help="remove a user")
    remove.add_argument("user")
    remove.add_argument("--realm", default=DEFAULT_REALM)
    remove.set_defaults(func=_cmd_remove)

    listing = sub.add_parser("list", parents=[common], help="list users (no hashes)")
    listing.add_argument("--realm", help="only this realm")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(func=_cmd_list)


def _path(args):
    if args.file:
        return args.file
    from meter.admin.licensing_cli import state_dir_of

    return default_path(state_dir_of(args))


def _password(args) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass(f"password for {args.user}@{args.realm}: ")
    if first != getpass.getpass("again: "):
        raise CredentialsError("the passwords differ")
    return first


def _cmd_add(args) -> int:
    try:
        new = add_user(_path(args), args.user, args.realm, _password(args))
    except (CredentialsError, StoreError, CliError) as exc:
        print(f"meter users add: {exc}", file=sys.stderr)
        return 1
    print(f"{'added' if new else 'password changed:'} {args.user} (realm {args.realm}) in {_path(args)}")
    return 0


def _cmd_remove(args) -> int:
    try:
        removed = remove_user(_path(args), args.user, args.realm)
    except (CredentialsError, StoreError, CliError) as exc:
        print(f"meter users remove: {exc}", file=sys.stderr)
        return 1
    if not removed:
        print(f"meter users remove: no user {args.user} in realm {args.realm}", file=sys.stderr)
        return 1
    print(f"removed {args.user} (realm {args.realm})")
    return 0


def _cmd_list(args) -> int:
    try:
        entries = read_entries(_path(args))
    except (CredentialsError, StoreError, CliError) as exc:
        print(f"meter users list: {exc}", file=sys.stderr)
        return 1
    rows = [{"user": e.user, "realm": e.realm} for e in entries if args.realm is None or e.realm == args.realm]
    if args.json:
        print_json(rows)
    else:
        print_table(rows, ("user", "realm"))
    return 0
