"""The node's identity and whole state on disk: created once, saved, brought back.

``add_commands(subparsers)`` registers them on the ``meter`` command (meter/cli.py):

    meter init [--if-missing]               a new node: serial and trusted issuer key, once
    meter backup FILE                       one SQLite file: the state database and the issuer key files
    meter restore FILE [--force]            bring a backup back (the node stopped): same serial, same keys

The state directory is ``--state-dir``, else ``$METER_STATE_DIR``, else the config's
``[node] state_dir`` (``--config``, default the embedded one, as `meter run` reads it). `meter run`
refuses a missing or empty state database (``meter.store.licensing.check_initialised``): a serial
made up at start would orphan every purchased option key.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from meter.store.licensing import DB_NAME, StoreError, backup_state, init_state, restore_state


def add_commands(subparsers) -> None:
    init = subparsers.add_parser("init", help="create a new node's state (serial, issuer key): once")
    _where(init)
    init.add_argument("--if-missing", action="store_true",
                      help="do nothing when a state file exists (make run); an empty one still stops `meter run`")
    init.set_defaults(func=cmd_init)

    backup = subparsers.add_parser("backup", help="write the node's state and issuer key to one file")
    backup.add_argument("file", help="backup file to create (never overwritten)")
    _where(backup)
    backup.set_defaults(func=cmd_backup)

    restore = subparsers.add_parser("restore", help="bring the node's state back from a backup (node stopped)")
    restore.add_argument("file", help="a file `meter backup` wrote")
    _where(restore)
    restore.add_argument("--force", action="store_true", help="replace an existing state")
    restore.set_defaults(func=cmd_restore)


def _where(parser) -> None:
    parser.add_argument("--state-dir", help="state directory (default: $METER_STATE_DIR, else the config's)")
    parser.add_argument("--config", "-c", help="config whose [node] state_dir to use (default: the embedded one)")


def state_dir_of(args) -> Path:
    if args.state_dir:
        return Path(args.state_dir)
    if os.environ.get("METER_STATE_DIR"):
        return Path(os.environ["METER_STATE_DIR"])
    from meter.config import ConfigError, load

    try:
        return Path(load(args.config).node.state_dir)
    except ConfigError as exc:
        raise StoreError(f"bad config: {exc}") from None


def _fail(message: str) -> int:
    print(f"meter: {message}", file=sys.stderr)
    return 1


def cmd_init(args) -> int:
    try:
        state_dir = state_dir_of(args)
        if args.if_missing and (state_dir / DB_NAME).exists():
            return 0
        serial = init_state(state_dir)
    except StoreError as exc:
        return _fail(str(exc))
    print(f"initialised {state_dir / DB_NAME}: serial {serial}")
    return 0


def cmd_backup(args) -> int:
    try:
        path, serial = backup_state(state_dir_of(args), args.file)
    except StoreError as exc:
        return _fail(str(exc))
    print(f"backup of serial {serial}: {path}")
    return 0


def cmd_restore(args) -> int:
    from meter.startup import StartupError, StateLock

    try:
        state_dir = state_dir_of(args)
        lock = StateLock(state_dir)
        if state_dir.is_dir():  # a running node holds its lock: its state is not replaced under it
            lock.acquire()
        try:
            serial = restore_state(args.file, state_dir, force=args.force)
        finally:
            lock.release()
    except (StoreError, StartupError) as exc:
        return _fail(str(exc))
    print(f"restored {state_dir / DB_NAME} from {args.file}: serial {serial}")
    return 0
