"""What each subcommand does; ``anonticket.cli.parser`` parses the arguments and calls these.

A command returns its exit status or raises ``CommandFailed`` (status 1) or
``UsageError`` (status 2) with a one-line message that never holds a PID or a token.
Heavy imports (aiohttp, segno, the storage) happen inside the commands that need
them, so ``pid new`` and ``--help`` start fast on a customer's machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from anonticket.domain.address import AddressError, decode_address, make_integrated_address
from anonticket.config import SETTINGS, Config, settings_table_markdown
from anonticket.domain.ids import (
    PaymentId,
    Receipt,
    ServiceToken,
    derive_receipt_token,
    derive_service_token,
    parse_txid,
)
from anonticket.domain.errors import (
    DatabaseConnectFailed,
    InvalidPid,
    InvalidReceipt,
    InvalidToken,
    SchemaTooNew,
)
from anonticket.domain.payment_uri import format_xmr, payment_uri

if TYPE_CHECKING:  # imported for real only by the commands that talk to the service
    from anonticket.cli.admin_client import AdminClient

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
_QR_KINDS = {".png": "png", ".svg": "svg"}
_QR_SCALE = 8  # pixels per module: a phone camera reads it from a screen at arm's length


class CommandFailed(Exception):
    """An expected failure: printed as one line, exit status 1."""


class UsageError(Exception):
    """Arguments that argparse accepted one by one but not together: exit status 2."""


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
    # aiosqlite logs every statement with its bound parameters (PIDs, txids, tokens) at
    # DEBUG: LOG_LEVEL=DEBUG is for our own loggers, third-party ones stay at INFO or above
    logging.getLogger("aiosqlite").setLevel(max(logging.INFO, logging.getLevelName(level)))


# ---------------------------------------------------------------------- serve, config, token derive
def cmd_serve(args: argparse.Namespace) -> int:
    from anonticket.service.app import serve
    from anonticket.service.unix_socket import SocketPathError

    from anonticket.monero.merchant import configured_address

    config = _load_config()
    configured_address(config)  # a bad MERCHANT_ADDRESS: one line and exit 2, before any log
    _setup_logging(config.log_level)
    logging.getLogger("anonticket").info(
        "starting with %s", " ".join(f"{k}={v}" for k, v in config.describe().items())
    )
    try:
        return asyncio.run(serve(config))
    except SocketPathError as exc:
        raise CommandFailed(str(exc)) from None
    except DatabaseConnectFailed as exc:  # the URL may hold a password: never quoted
        raise CommandFailed(f"serve failed: cannot connect to the database of DATABASE_URL "
                            f"({exc.reason})") from None
    except SchemaTooNew as exc:
        raise CommandFailed(f"serve failed: {exc}") from None
    except OSError as exc:  # a port in use, a socket directory missing: start-up, in practice
        raise CommandFailed(f"serve failed: {exc.strerror or type(exc).__name__}") from None


def cmd_config(args: argparse.Namespace) -> int:
    if args.markdown:
        print(settings_table_markdown(), end="")
        return EXIT_OK
    if args.check:
        from anonticket.monero.merchant import configured_address

        config = _load_config()
        configured_address(config)
        print("configuration ok")
        for name, value in config.describe().items():
            print(f"{name}={value}")
        return EXIT_OK
    for setting in SETTINGS:
        print(f"{setting.name}  (default: {setting.default or '(empty)'})\n    {setting.help}")
    return EXIT_OK


def cmd_token_derive(args: argparse.Namespace) -> int:
    if args.receipt:
        text = sys.stdin.readline().strip() if args.pid == "-" else args.pid
        try:
            receipt = Receipt.parse(text)
            txid = parse_txid(args.txid)
        except InvalidReceipt as exc:
            raise CommandFailed(f"RECEIPT: {exc.message}") from None
        except ValueError as exc:
            raise CommandFailed(f"TXID: {exc}") from None
        print(derive_receipt_token(receipt.raw, txid).hex())
        return EXIT_OK
    try:
        pid = PaymentId.parse(args.pid, accept_long=True)
    except InvalidPid as exc:
        raise CommandFailed(f"PID: {exc.message}") from None
    print(derive_service_token(pid, args.txid).hex())
    return EXIT_OK


# ---------------------------------------------------------------------- pid, address
def cmd_pid_new(args: argparse.Namespace) -> int:
    if args.amount is not None and args.address is None:
        raise UsageError("--amount needs --address: the amount goes into the payment URI")
    qr_kind = None
    if args.qr_out is not None:
        qr_kind = _QR_KINDS.get(os.path.splitext(args.qr_out)[1].lower())
        if qr_kind is None:
            raise UsageError("--qr-out must name a .png or .svg file")
    receipt = Receipt.generate() if args.receipt else None
    pid = receipt.pid if receipt is not None else PaymentId.generate()
    integrated = uri = None
    if args.address is not None:
        try:
            integrated = make_integrated_address(args.address, pid.hex())
        except AddressError as exc:
            raise CommandFailed(f"--address: {exc}") from None
        uri = payment_uri(integrated, args.amount)
    qr_text = uri or pid.hex()
    if qr_kind is not None:
        _write_qr(qr_text, args.qr_out, qr_kind)
    if args.json:
        made = {"pid": pid.hex(), "integrated_address": integrated, "uri": uri}
        print(json.dumps(made if receipt is None else {"receipt": receipt.hex(), **made}))
        return EXIT_OK
    rows = [("payment id", pid.hex())]
    if receipt is not None:
        rows.insert(0, ("receipt", receipt.hex()))
    if integrated is not None and uri is not None:
        rows += [("integrated address", integrated), ("payment uri", uri)]
        if args.amount is not None:
            rows.append(("amount", f"{format_xmr(args.amount)} XMR"))
    if args.qr_out is not None:
        rows.append(("qr code", args.qr_out))
    _print_rows(rows)
    if args.qr:
        import segno

        segno.make(qr_text, error="m").terminal(out=sys.stdout, compact=True)
    if receipt is not None:
        print("Keep the receipt secret: whoever has it can claim the payment. Redeem with "
              "{\"receipt\": \"<receipt>\"}. The payment id and the address claim nothing.")
    else:
        print("Keep the payment id secret until you redeem it: whoever knows it can redeem the "
              "payment. 'pid new --receipt' is safer: the address you pay then claims nothing.")
    return EXIT_OK


def _write_qr(text: str, path: str, kind: str) -> None:
    """Owner-only file: the integrated address inside reveals the payment id to anyone."""
    import segno

    qr = segno.make(text, error="m")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT
            qr.save(out, kind=kind, scale=_QR_SCALE)
    except OSError as exc:
        raise CommandFailed(f"cannot write {path}: {exc.strerror or type(exc).__name__}") from None


def cmd_address_integrated(args: argparse.Namespace) -> int:
    try:
        print(make_integrated_address(args.address, args.pid))
    except AddressError as exc:
        raise CommandFailed(str(exc)) from None
    return EXIT_OK


def cmd_address_decode(args: argparse.Namespace) -> int:
    try:
        decoded = decode_address(args.address)
    except AddressError as exc:
        raise CommandFailed(str(exc)) from None
    print(json.dumps(decoded.to_dict(), indent=2))
    return EXIT_OK


# ---------------------------------------------------------------------- internal listener
def _token_argument(text: str) -> ServiceToken:
    """``-`` reads the token from stdin, which keeps it out of shell history and ``ps``."""
    if text == "-":
        text = sys.stdin.readline().strip()
    try:
        return ServiceToken.parse(text)
    except InvalidToken as exc:
        raise CommandFailed(exc.message) from None


def _admin(args: argparse.Namespace,
           call: Callable[[AdminClient], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    from anonticket.cli.admin_client import AdminClient, AdminError

    config = _load_config()

    async def run() -> dict[str, Any]:
        async with AdminClient(config, timeout=args.timeout) as client:
            return await call(client)

    try:
        return asyncio.run(run())
    except AdminError as exc:
        raise CommandFailed(str(exc)) from None


def cmd_token_inspect(args: argparse.Namespace) -> int:
    token = _token_argument(args.token)
    print(json.dumps(_admin(args, lambda client: client.inspect_token(token)), indent=2))
    return EXIT_OK


def cmd_token_revoke(args: argparse.Namespace) -> int:
    token = _token_argument(args.token)
    answer = _admin(args, lambda client: client.revoke_token(token, args.reason, args.score))
    print(json.dumps(answer, indent=2))
    return EXIT_OK


_STAT_LABELS = {
    "payments_unclaimed": "payments unclaimed",
    "payments_claimed": "payments claimed",
    "pending_pids": "payments pending",
    "tokens_active": "tokens active",
    "tokens_revoked": "tokens revoked",
    "transfers": "transfers credited",
    "credited_piconero": "credited piconero",
    "debits": "debits applied",
    "debited_piconero": "debited piconero",
    "scanned_height": "scanned height",
    "wallet_height": "wallet height",
    "rescan_from_height": "rescan pending from",
    "subaddresses_unpaid": "subaddresses unpaid",
    "subaddress_highest_index": "subaddress highest index",
    "subaddress_known_to_wallet": "subaddress known to wallet",
    "unallocated_subaddress_transfers": "transfers to unallocated subaddresses",
}
# shown only once a subaddress was allocated or paid (CHECKOUT_ADDRESS_MODE=subaddress)
_SUBADDRESS_STATS = ("subaddresses_unpaid", "subaddress_highest_index",
                     "subaddress_known_to_wallet", "unallocated_subaddress_transfers")


def cmd_stats(args: argparse.Namespace) -> int:
    stats = _admin(args, lambda client: client.stats())
    if args.json:
        print(json.dumps(stats, indent=2))
        return EXIT_OK
    keys = [k for k in _STAT_LABELS if k in stats] + [k for k in stats if k not in _STAT_LABELS]
    rows = []
    scanned = stats.get("scanned_height")
    no_subaddresses = not any(stats.get(k) for k in _SUBADDRESS_STATS if k != "subaddress_known_to_wallet")
    for key in keys:
        value = stats[key]
        if key == "rescan_from_height" and value is None:
            continue  # no rescan waiting: the usual case, not worth a row
        if key in _SUBADDRESS_STATS and no_subaddresses:
            continue  # the integrated-address checkout: nothing to say
        text = "unknown" if value is None else str(value)
        if key == "subaddress_known_to_wallet" and value is not None:
            text = "yes" if value else "NO: payments to it go unseen (docs/operations.md#subaddresses)"
        if key in ("credited_piconero", "debited_piconero") and isinstance(value, int):
            text += f" ({format_xmr(value)} XMR)"
        if key == "wallet_height" and isinstance(value, int) and isinstance(scanned, int):
            text += f" (cursor {value - scanned} blocks behind)"
        rows.append((_STAT_LABELS.get(key, key.replace("_", " ")), text))
    _print_rows(rows)
    return EXIT_OK


def cmd_monitor_rescan(args: argparse.Namespace) -> int:
    answer = _admin(args, lambda client: client.rescan(args.from_height))
    print(json.dumps(answer, indent=2))
    return EXIT_OK


# ---------------------------------------------------------------------- webhook
def cmd_webhook_secret(args: argparse.Namespace) -> int:
    from anonticket.domain.webhook import new_secret

    print(new_secret())
    return EXIT_OK


def cmd_webhook_list(args: argparse.Namespace) -> int:
    answer = _admin(args, lambda client: client.webhook_events(dead=args.dead, limit=args.limit))
    if args.json:
        print(json.dumps(answer, indent=2))
        return EXIT_OK
    state = "on" if answer.get("enabled") else "off (WEBHOOK_URL is empty)"
    if answer.get("disabled_at"):
        state = (f"on, but delivery is disabled since {answer['disabled_at']} (the receiver "
                 "answered 410 Gone; 'anonticket webhook enable' resumes it)")
    age = answer.get("oldest_pending_age_seconds")
    pending = f"{answer.get('pending')}" + (f" (oldest {age} s)" if age is not None else "")
    _print_rows([("webhooks", state), ("pending", pending), ("dead", str(answer.get("dead")))])
    events = answer.get("events") or []
    if events:
        print()
        rows = [("ID", "TYPE", "STATUS", "ATTEMPTS", "CREATED", "LAST RESULT")]
        rows += [(str(e.get("id")), str(e.get("type")), str(e.get("status")),
                  str(e.get("attempts")), str(e.get("created_at")), str(e.get("last_result") or "-"))
                 for e in events]
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return EXIT_OK


def cmd_webhook_replay(args: argparse.Namespace) -> int:
    if (args.id is None) == (not args.all_dead):
        raise UsageError("give an event ID or --all-dead")
    answer = _admin(args, lambda client: client.webhook_replay(args.id))
    print(f"queued again: {answer.get('replayed')}")
    return EXIT_OK


def cmd_webhook_test(args: argparse.Namespace) -> int:
    answer = _admin(args, lambda client: client.webhook_test())
    if args.json:
        print(json.dumps(answer, indent=2))
    else:
        _print_rows([("webhook-id", str(answer.get("webhook_id"))),
                     ("result", str(answer.get("result"))),
                     ("http status", str(answer.get("http_status") or "-")),
                     ("seconds", str(answer.get("seconds")))])
    if not answer.get("delivered"):
        raise CommandFailed(f"the receiver did not accept the test event ({answer.get('result')})")
    return EXIT_OK


def cmd_webhook_enable(args: argparse.Namespace) -> int:
    answer = _admin(args, lambda client: client.webhook_enable())
    print(f"delivery enabled; pending: {answer.get('pending')}")
    return EXIT_OK


def _print_rows(rows: list[tuple[str, str]]) -> None:
    width = max((len(label) for label, _ in rows), default=0)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")


# ---------------------------------------------------------------------- db
def cmd_db_backup(args: argparse.Namespace) -> int:
    from anonticket.cli.maintenance import MaintenanceError, backup_database

    config = _load_config()
    try:
        asyncio.run(backup_database(config, args.path, force=args.force))
    except MaintenanceError as exc:
        raise CommandFailed(str(exc)) from None
    print(f"backup written to {args.path}")
    return EXIT_OK


def cmd_db_check(args: argparse.Namespace) -> int:
    from anonticket.cli.maintenance import MaintenanceError, check_database

    config = _load_config()
    try:
        problems, ledger, version, expected = asyncio.run(check_database(config))
    except MaintenanceError as exc:
        raise CommandFailed(str(exc)) from None
    if problems is None:  # PostgreSQL: no file to check
        print("integrity_check: not applicable (PostgreSQL: use data checksums and amcheck)")
        problems = []
    else:
        print(f"integrity_check: {'ok' if not problems else f'{len(problems)} problem(s)'}")
    for problem in problems[:20]:
        for line in problem.splitlines():  # one row can hold several lines
            print(f"  {line}")
    if not problems and version == expected:
        print(f"ledger (payments = sum of their transfers): {'ok' if not ledger else 'WRONG'}")
        for line in ledger:
            print(f"  {line}")
    print(f"schema version: {version} (this program: {expected})")
    if problems or ledger or version != expected:
        raise CommandFailed("database check failed")
    return EXIT_OK
