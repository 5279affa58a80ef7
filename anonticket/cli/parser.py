"""Command line: ``anonticket serve`` and the operator's and customer's tools.

Exit status: 0 success, 1 the operation failed (service unreachable, not found, a
refused address or token, a damaged database …), 2 bad usage or bad configuration
(unknown option, a malformed number or amount, a bad setting). Errors are one line on
stderr, never a traceback, and never contain a PID or a token: argparse's own messages
are trimmed where they would echo an argument back. The commands live in
``anonticket.cli.command``; this module is the parser and ``main``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from anonticket.cli.command import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    CommandFailed,
    UsageError,
    cmd_address_decode,
    cmd_address_integrated,
    cmd_config,
    cmd_db_backup,
    cmd_db_check,
    cmd_monitor_rescan,
    cmd_pid_new,
    cmd_serve,
    cmd_stats,
    cmd_token_derive,
    cmd_token_inspect,
    cmd_token_revoke,
    cmd_webhook_enable,
    cmd_webhook_list,
    cmd_webhook_replay,
    cmd_webhook_secret,
    cmd_webhook_test,
)
from anonticket.domain.errors import ConfigError
from anonticket.domain.payment_uri import parse_xmr
from anonticket.cli.credential import add_credential_parsers
from anonticket.cli.sandbox import SandboxError, add_sandbox_parser

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "build_parser", "main"]
_MAX_REASON = 256
_MAX_SCORE = 2**62
_MAX_HEIGHT = 2**62


# ---------------------------------------------------------------------- parser
class _Parser(argparse.ArgumentParser):
    """One-line usage errors that never echo an argument (it may be a PID or a token)."""

    def error(self, message: str) -> NoReturn:
        if message.startswith("unrecognized arguments"):
            message = "unrecognized arguments"
        elif ": invalid choice" in message:
            # keep argparse's list of choices, drop the echoed value before it
            head = message.split(": invalid choice", 1)[0]
            choices = message[message.rfind(" (choose from "):] if "(choose from" in message else ""
            message = f"{head}: invalid choice{choices}"
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _digits(text: str, most: int) -> bool:
    """1 to ``most`` ASCII digits: ``"²".isdigit()`` is true, and int() refuses it."""
    return text.isascii() and text.isdigit() and len(text) <= most


def _amount(text: str) -> int:
    try:
        return parse_xmr(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _score(text: str) -> int:
    if not _digits(text, 19) or int(text) > _MAX_SCORE:
        raise argparse.ArgumentTypeError("must be a whole number from 0 to 2^62")
    return int(text)


def _reason(text: str) -> str:
    if len(text) > _MAX_REASON:
        raise argparse.ArgumentTypeError(f"must be at most {_MAX_REASON} characters")
    return text


def _height(text: str) -> int:
    if not _digits(text, 19) or int(text) > _MAX_HEIGHT:
        raise argparse.ArgumentTypeError("must be a block height, a whole number from 0 to 2^62")
    return int(text)


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("must be a number of seconds") from None
    if not 0 < value < 3600:
        raise argparse.ArgumentTypeError("must be between 0 and 3600 seconds")
    return value


def _subcommands(parser: argparse.ArgumentParser, dest: str) -> Any:
    return parser.add_subparsers(dest=dest, required=True, metavar="ACTION")


def _add_timeout(parser: argparse.ArgumentParser, default: float = 10.0) -> None:
    parser.add_argument("--timeout", type=_timeout, default=default, metavar="SECS",
                        help=f"give up when the service has not answered (default {default:g})")


def _limit(text: str) -> int:
    if not _digits(text, 4) or not 1 <= int(text) <= 1000:
        raise argparse.ArgumentTypeError("must be a whole number from 1 to 1000")
    return int(text)


def _add_webhook_parser(commands: Any) -> None:
    webhook = _subcommands(commands.add_parser(
        "webhook", help="signed event notifications to WEBHOOK_URL (docs/webhooks.md)"),
        "webhook_cmd")
    secret = webhook.add_parser("secret", help="print a fresh WEBHOOK_SECRET (works offline)")
    secret.set_defaults(func=cmd_webhook_secret)
    listing = webhook.add_parser("list", help="the outbox: state, counts and events, newest "
                                 "first", description=_INTERNAL)
    listing.add_argument("--dead", action="store_true", help="only events given up on")
    listing.add_argument("--limit", type=_limit, default=100, metavar="N",
                         help="at most N events (default 100)")
    listing.add_argument("--json", action="store_true", help="print the JSON answer as it is")
    _add_timeout(listing)
    listing.set_defaults(func=cmd_webhook_list)
    replay = webhook.add_parser("replay", help="send an event (or every dead one) again, "
                                "with the same webhook-id", description=_INTERNAL)
    replay.add_argument("id", nargs="?", metavar="ID", help="a webhook-id from 'webhook list'")
    replay.add_argument("--all-dead", action="store_true", help="every dead event")
    _add_timeout(replay)
    replay.set_defaults(func=cmd_webhook_replay)
    test = webhook.add_parser("test", help="send a signed webhook.test event now and show "
                              "the answer; exit 1 unless it was 2xx", description=_INTERNAL)
    test.add_argument("--json", action="store_true", help="print the JSON answer as it is")
    _add_timeout(test, default=30.0)  # the service waits up to WEBHOOK_TIMEOUT_SECS itself
    test.set_defaults(func=cmd_webhook_test)
    enable = webhook.add_parser("enable", help="resume delivery to a URL that answered 410 "
                                "Gone", description=_INTERNAL)
    _add_timeout(enable)
    enable.set_defaults(func=cmd_webhook_enable)


_INTERNAL = ("Talks to the internal listener chosen like serve does: API_INTERNAL_UNIX_SOCKET if "
             "set, else API_INTERNAL_BIND_ADDRESS; sends API_INTERNAL_TOKEN as a bearer token "
             "when set.")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="anonticket", description="Anonymous access tokens sold for Monero.",
        epilog="Exit status: 0 ok, 1 the operation failed, 2 bad usage or configuration. "
               "Settings come from the environment: see 'anonticket config'.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the service (settings from the environment)")
    serve.set_defaults(func=cmd_serve)

    config = commands.add_parser("config", help="list every setting, or --check the environment")
    config.add_argument("--check", action="store_true", help="parse the environment and print "
                        "the effective settings (secrets masked); exit 2 if one is bad")
    config.add_argument("--markdown", action="store_true",
                        help="print the settings as docs/settings.md's Markdown table")
    config.set_defaults(func=cmd_config)

    pid = _subcommands(commands.add_parser("pid", help="make a payment id (customers)"), "pid_cmd")
    new = pid.add_parser(
        "new", help="a fresh receipt (--receipt) or random payment id, and what to pay with it",
        description="With --receipt (the safe way): a fresh receipt, the 16-hex payment id "
                    "derived from it and, with --address, the integrated address to pay and a "
                    "monero: payment URI; the receipt claims the payment, the address does not. "
                    "Without it: a fresh random payment id, which claims the payment itself. "
                    "Works offline.")
    new.add_argument("--receipt", action="store_true",
                     help="make a receipt (64 hex) and pay to the payment id derived from it")
    new.add_argument("--address", metavar="ADDR", help="the operator's primary address")
    new.add_argument("--amount", type=_amount, metavar="XMR",
                     help="amount in XMR for the URI, e.g. 0.05 (at most 12 decimals)")
    shown = new.add_mutually_exclusive_group()
    shown.add_argument("--qr", action="store_true",
                       help="also print the URI (or the payment id) as a terminal QR code")
    shown.add_argument("--json", action="store_true",
                       help="print one JSON object: (receipt,) pid, integrated_address, uri")
    new.add_argument("--qr-out", metavar="FILE",
                     help="write the QR code to FILE.png or FILE.svg (mode 0600)")
    new.set_defaults(func=cmd_pid_new)

    address = _subcommands(commands.add_parser("address", help="Monero address tools"),
                           "address_cmd")
    integrated = address.add_parser(
        "integrated", help="print the integrated address of a primary address and a 16-hex PID")
    integrated.add_argument("address", metavar="ADDR", help="primary (standard) address")
    integrated.add_argument("pid", metavar="PID", help="payment id, 16 hex")
    integrated.set_defaults(func=cmd_address_integrated)
    decode = address.add_parser("decode", help="print network, kind, keys and payment id as JSON")
    decode.add_argument("address", metavar="ADDR", help="any Monero address")
    decode.set_defaults(func=cmd_address_decode)

    token = _subcommands(commands.add_parser("token", help="service token tools"), "token_cmd")
    derive = token.add_parser(
        "derive", help="print the token a payment redeems to (for support): SHA3-256(PID|TXID), "
                       "or with --receipt the token of a receipt payment")
    derive.add_argument("--receipt", action="store_true",
                        help="the first argument is the payment's receipt (64 hex, or - to read "
                             "it from stdin)")
    derive.add_argument("pid", metavar="PID_OR_RECEIPT",
                        help="payment ID, 16 or 64 hex; with --receipt the receipt")
    derive.add_argument("txid", help="transaction id, taken verbatim (wallets report lowercase hex)")
    derive.set_defaults(func=cmd_token_derive)
    token_help = "service token, 64 hex, or - to read it from stdin (keeps it out of ps and history)"
    inspect = token.add_parser("inspect", help="show a token's state, revoke reason and audit trail",
                               description=_INTERNAL)
    inspect.add_argument("token", metavar="TOKEN", help=token_help)
    _add_timeout(inspect)
    inspect.set_defaults(func=cmd_token_inspect)
    revoke = token.add_parser("revoke", help="revoke a token (idempotent, audited)",
                              description=_INTERNAL)
    revoke.add_argument("token", metavar="TOKEN", help=token_help)
    revoke.add_argument("--reason", required=True, type=_reason, metavar="TEXT",
                        help="why (kept from the first revocation; at most 256 characters)")
    revoke.add_argument("--score", type=_score, metavar="N",
                        help="abuse score; a repeat only ever raises it")
    _add_timeout(revoke)
    revoke.set_defaults(func=cmd_token_revoke)

    stats = commands.add_parser("stats", help="counts from the running service",
                                description=_INTERNAL)
    stats.add_argument("--json", action="store_true", help="print the JSON answer as it is")
    _add_timeout(stats)
    stats.set_defaults(func=cmd_stats)

    monitor = _subcommands(commands.add_parser("monitor", help="the running service's wallet "
                                               "monitor"), "monitor_cmd")
    rescan = monitor.add_parser(
        "rescan", help="re-read the wallet from a height (after the wallet itself was rescanned)",
        description="Ask the running service to re-read every transfer the wallet reports from "
                    "HEIGHT up and credit what is new (re-reading is harmless: a transfer counts "
                    "once). Scheduled: the monitor applies it before its next poll, and 'stats' "
                    "shows it pending until then. " + _INTERNAL)
    rescan.add_argument("--from-height", required=True, type=_height, metavar="HEIGHT",
                        help="first block height to re-read")
    _add_timeout(rescan)
    rescan.set_defaults(func=cmd_monitor_rescan)

    db = _subcommands(commands.add_parser("db", help="database maintenance (DATABASE_URL)"),
                      "db_cmd")
    backup = db.add_parser("backup", help="consistent copy with SQLite's online backup; safe "
                           "while the service runs")
    backup.add_argument("path", metavar="PATH", help="file to write (mode 0600)")
    backup.add_argument("--force", action="store_true", help="replace PATH if it exists")
    backup.set_defaults(func=cmd_db_backup)
    check = db.add_parser("check", help="PRAGMA integrity_check and the schema version; exit 1 "
                          "if not ok")
    check.set_defaults(func=cmd_db_check)

    _add_webhook_parser(commands)
    add_credential_parsers(commands, _add_timeout)
    add_sandbox_parser(commands, _amount)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if args.func is not cmd_serve:
        # one-shot commands report failures themselves, in one line; library warnings
        # (e.g. the storage's "database unavailable") would only repeat them
        logging.basicConfig(level=logging.ERROR, format="anonticket: %(message)s")
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"anonticket: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except UsageError as exc:
        print(f"anonticket: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (CommandFailed, SandboxError) as exc:
        print(f"anonticket: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_FAILED
    except Exception as exc:
        if args.func is cmd_serve:
            raise  # the service's crash belongs in its log, with the trace
        # a bug: the type is enough to report it, and a message could hold an argument
        print(f"anonticket: unexpected error ({type(exc).__name__})", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
