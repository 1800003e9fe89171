"""The `meter` command: run the node, and Expressway-flavoured admin commands."""

from __future__ import annotations

import argparse
import os
import sys

from meter import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meter", description="SIP/H.323 license-metering node")
    parser.add_argument("--version", action="version", version=f"meter {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="start the node (embedded default config unless --config)")
    run.add_argument("--config", "-c", help="TOML config file (default: the embedded meter.toml)")
    run.set_defaults(func=_cmd_run)

    check = sub.add_parser("check-config", help="validate a config file and print the effective settings")
    check.add_argument("config", nargs="?", help="TOML config file (default: the embedded meter.toml)")
    check.set_defaults(func=_cmd_check_config)

    default = sub.add_parser("default-config", help="print the embedded default config (a commented starting point)")
    default.set_defaults(func=lambda args: print(_embedded(), end="") or 0)

    _add_admin_commands(sub)
    return parser


def _add_admin_commands(sub) -> None:
    # Each command family registers its own: licensing state on disk, and listings from the running node.
    from meter.admin.cli import add_commands as add_listing_commands
    from meter.admin.licensing_cli import add_commands as add_licensing_commands
    from meter.admin.state_cli import add_commands as add_state_commands
    from meter.admin.users_cli import add_commands as add_users_commands
    from meter.ssm.cli import add_commands as add_ssm_commands  # the lab Smart Software Manager

    add_state_commands(sub)
    add_licensing_commands(sub)
    add_listing_commands(sub)
    add_users_commands(sub)
    add_ssm_commands(sub)
    from meter.smart.cli import add_commands as add_smart_commands  # meter smart ... (S1-S14)
    from meter.admin.report import add_commands as add_report_commands  # `meter report`: usage and sizing

    add_smart_commands(sub)
    add_report_commands(sub)


def _embedded() -> str:
    from meter.config import embedded_default_text

    return embedded_default_text()


def _cmd_check_config(args) -> int:
    from meter.config import ConfigError, load

    from meter.startup import StartupError, check_references

    try:
        config = load(args.config)
        check_references(config)  # an unknown platform stops here, not as `meter run`'s traceback
    except (ConfigError, StartupError) as exc:
        print(f"meter: bad config: {exc}", file=sys.stderr)
        return 2
    for name, section in config.sections.items():
        tables = section if isinstance(section, list) else [section]
        for table in tables:
            print(f"[[{name}]]" if isinstance(section, list) else f"[{name}]")
            for key, value in vars(table).items():
                print(f"  {key} = {value!r}")
    print(f"ok: {config.source}")
    return 0


def _cmd_run(args) -> int:
    from meter.config import ConfigError, load

    try:
        config = load(args.config)
    except ConfigError as exc:
        print(f"meter: bad config, not starting: {exc}", file=sys.stderr)
        return 2
    from meter.startup import StartupError, StateLock, check_ports, check_references, check_state_dir
    from meter.store.licensing import StoreError, check_initialised

    try:
        check_references(config)
    except StartupError as exc:
        print(f"meter: bad config, not starting: {exc}", file=sys.stderr)
        return 2
    lock = StateLock(config.node.state_dir)
    try:
        check_state_dir(config.node.state_dir)
        # never a new serial made up at start: it would orphan the purchased option keys (K2)
        check_initialised(config.node.state_dir)
        lock.acquire()  # held while the node runs: one node per state directory
        check_ports(config)
    except (StoreError, StartupError) as exc:
        lock.release()
        print(f"meter: not starting: {exc}", file=sys.stderr)
        return 2
    from meter.app import main as run_node

    try:
        return run_node(config)
    finally:
        lock.release()


def main(argv: list[str] | None = None) -> int:
    import logging

    # A command's own messages are its output; the node's log lines (an alarm raised by a key a
    # command installs) go nowhere unless `meter run` configures the log (meter.logs.configure).
    logging.getLogger("meter").addHandler(logging.NullHandler())
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # here, not at exit, so that a closed pipe is seen below
        return code
    except BrokenPipeError:  # `meter calls | head`: the reader left early, which is no error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's documented recipe
        return 0


if __name__ == "__main__":
    sys.exit(main())
