"""Command line: ``anonticket serve`` and the operator's and customer's tools.

Exit status: 0 success, 1 the operation failed (service unreachable, not found, …),
2 bad usage or bad configuration. Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from collections.abc import Sequence

from anonticket.config import SETTINGS, Config, settings_table_markdown
from anonticket.domain import PaymentId, derive_service_token
from anonticket.errors import ConfigError, InvalidPid

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class CommandFailed(Exception):
    """An expected failure: printed as one line, exit status 1."""


def _load_config() -> Config:
    return Config.from_env()


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)sZ %(levelname)s %(name)s %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
        stream=sys.stderr,
    )
    logging.Formatter.converter = time.gmtime


def cmd_serve(args: argparse.Namespace) -> int:
    from anonticket.app import serve

    config = _load_config()
    _setup_logging(config.log_level)
    logging.getLogger("anonticket").info(
        "starting with %s", " ".join(f"{k}={v}" for k, v in config.describe().items())
    )
    return asyncio.run(serve(config))


def cmd_config(args: argparse.Namespace) -> int:
    if args.markdown:
        print(settings_table_markdown(), end="")
        return EXIT_OK
    if args.check:
        config = _load_config()
        print("configuration ok")
        for name, value in config.describe().items():
            print(f"{name}={value}")
        return EXIT_OK
    for setting in SETTINGS:
        print(f"{setting.name}  (default: {setting.default or '(empty)'})\n    {setting.help}")
    return EXIT_OK


def cmd_token_derive(args: argparse.Namespace) -> int:
    try:
        pid = PaymentId.parse(args.pid, accept_long=True)
    except InvalidPid as exc:
        raise CommandFailed(f"PID: {exc.message}") from None
    print(derive_service_token(pid, args.txid).hex())
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anonticket", description="Anonymous access tokens sold for Monero."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the service (settings from the environment)")
    serve.set_defaults(func=cmd_serve)

    config = commands.add_parser("config", help="list every setting, or --check the environment")
    config.add_argument("--check", action="store_true", help="parse the environment and print "
                        "the effective settings (secrets masked); exit 2 if one is bad")
    config.add_argument("--markdown", action="store_true",
                        help="print the settings as the README's Markdown table")
    config.set_defaults(func=cmd_config)

    token = commands.add_parser("token", help="service token tools")
    token_commands = token.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    derive = token_commands.add_parser(
        "derive", help="print SHA3-256(PID|TXID), the token a payment redeems to (for support)")
    derive.add_argument("pid", help="payment ID, 16 or 64 hex")
    derive.add_argument("txid", help="transaction id, taken verbatim (wallets report lowercase hex)")
    derive.set_defaults(func=cmd_token_derive)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"anonticket: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CommandFailed as exc:
        print(f"anonticket: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
