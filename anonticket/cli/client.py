"""``anonticket client``: the customer's Privacy Pass tokens (``anonticket.client``).

- ``client fetch N --unit NAME``: N tokens of a unit, paid by the service token read from
  ``--token-file`` (``-``: stdin) or ``ANONTICKET_TOKEN``, or by a receipt read from
  ``--receipt-file`` (``-``: stdin) or ``ANONTICKET_RECEIPT`` (neither ever an argument: ``ps``
  and the shell's history would keep it; the receipt is traded for its service token through
  the redeem route first, and neither is printed or stored), appended to the token file
  (``--store``, default ``$XDG_DATA_HOME/anonticket/private-tokens``, mode 0600);
  ``--origin URL`` first checks that a protected location offers the key the directory lists
  (a warning otherwise);
- ``client spend [--unit NAME]``: prints one ``Authorization: PrivateToken token="…"`` line
  for ``curl -H "$(anonticket client spend --unit call)"`` and removes that token from the
  file first;
- ``client count [--unit NAME]``: how many are left.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from anonticket.cli.command import EXIT_OK, CommandFailed, UsageError
from anonticket.cli.credential import TOKEN_ENV, public_base, read_secret_line, read_token
from anonticket.client.privacy_pass import ClientError, Issuer, TokenStore, parse_receipt

RECEIPT_ENV = "ANONTICKET_RECEIPT"


def default_store() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                          "share")
    return Path(base) / "anonticket" / "private-tokens"


def _store(args: argparse.Namespace) -> TokenStore:
    return TokenStore(args.store or default_store())


def _warn_to_stderr(message: Any, *_: Any, **__: Any) -> None:
    print(f"warning: {message}", file=sys.stderr)


def read_receipt(receipt_file: str | None) -> str:
    """The receipt from ``receipt_file`` (``-``: stdin; its first line) or, for None,
    ``ANONTICKET_RECEIPT``; a malformed one is refused without being echoed."""
    if receipt_file is not None:
        text = read_secret_line(receipt_file)
    else:
        text = os.environ.get(RECEIPT_ENV, "")
    try:
        return parse_receipt(text)
    except ClientError as exc:
        raise CommandFailed(str(exc)) from None


def _payer(args: argparse.Namespace) -> tuple[str, str]:
    """("token" | "receipt", its text): a file given wins over the environment; with no
    file, exactly one of ANONTICKET_TOKEN and ANONTICKET_RECEIPT must be set."""
    if args.receipt_file is not None:
        return "receipt", read_receipt(args.receipt_file)
    if args.token_file is not None:
        return "token", read_token(args.token_file).hex()
    token_set, receipt_set = bool(os.environ.get(TOKEN_ENV)), bool(os.environ.get(RECEIPT_ENV))
    if token_set and receipt_set:
        raise UsageError(f"both {TOKEN_ENV} and {RECEIPT_ENV} are set: unset one, or give "
                         "--token-file or --receipt-file")
    if receipt_set:
        return "receipt", read_receipt(None)
    if token_set:
        return "token", read_token(None).hex()
    raise UsageError(f"give the service token (--token-file FILE, - for stdin, or {TOKEN_ENV}) "
                     f"or the receipt (--receipt-file FILE, - for stdin, or {RECEIPT_ENV}); "
                     "never on the command line")


def cmd_client_fetch(args: argparse.Namespace) -> int:
    if not 1 <= args.count <= 1000:
        raise UsageError("N must be 1 to 1000")
    kind, secret = _payer(args)
    base, socket_path = public_base(args.url)
    if socket_path is not None:
        raise UsageError("give the issuer's address with --url (a Unix socket is not "
                         "supported here)")
    issuer = Issuer(base, timeout=args.timeout)
    warnings.showwarning = _warn_to_stderr  # type: ignore[assignment]
    try:
        if args.origin:
            issuer.check_origin(args.origin, args.unit)
        if kind == "receipt":
            tokens = issuer.fetch_with_receipt(secret, args.unit, args.count)
        else:
            tokens = issuer.fetch(secret, args.unit, args.count)
        added = _store(args).add(tokens, args.unit, issuer.base)
    except ClientError as exc:
        raise CommandFailed(str(exc)) from None
    except OSError as exc:
        raise CommandFailed(f"cannot reach the issuer or write the token file "
                            f"({type(exc).__name__})") from None
    print(f"{added} token(s) of {args.unit} stored", file=sys.stderr)
    return EXIT_OK


def cmd_client_spend(args: argparse.Namespace) -> int:
    try:
        header = _store(args).spend(args.unit)
    except ClientError as exc:
        raise CommandFailed(str(exc)) from None
    print(f"Authorization: {header}")
    return EXIT_OK


def cmd_client_count(args: argparse.Namespace) -> int:
    print(_store(args).count(args.unit))
    return EXIT_OK


def add_client_parsers(commands: Any, timeout: Any) -> None:
    client = commands.add_parser("client", help="Privacy Pass tokens (customers): fetch, "
                                 "spend, count")
    actions = client.add_subparsers(dest="client_cmd", required=True, metavar="ACTION")
    fetch = actions.add_parser(
        "fetch", help="fetch N blind-signed tokens of a unit, paid by a service token or a "
                      "receipt",
        description=f"Fetch N tokens of --unit in one request paid by the service token read "
                    f"from --token-file (- for stdin) or {TOKEN_ENV}, or by the receipt read "
                    f"from --receipt-file (- for stdin) or {RECEIPT_ENV} (never an argument; "
                    "the receipt is redeemed for its service token first, which is neither "
                    "printed nor stored), verify each and append them to the token file (mode "
                    "0600). Fetch ahead "
                    "of use: the issuer sees when you fetch, and a spend right after a fetch "
                    "is easier to link (docs/customers.md).")
    fetch.add_argument("count", type=int, metavar="N", help="how many tokens (1-1000; the "
                       "issuer may allow fewer per request)")
    fetch.add_argument("--unit", required=True, metavar="NAME", help="the unit (the issuer "
                       "directory names them)")
    fetch.add_argument("--url", metavar="URL", help="the issuer's public address (default: "
                       "this machine's public listener, API_BIND_ADDRESS)")
    payer = fetch.add_mutually_exclusive_group()
    payer.add_argument("--token-file", metavar="FILE",
                       help="file whose first line is the service token; - reads stdin")
    payer.add_argument("--receipt-file", metavar="FILE",
                       help="file whose first line is the payment's receipt (64 hex, or "
                            "the checkout's eight groups); - reads stdin. Tokens are issued "
                            "once the payment is final (not on provisional credit)")
    fetch.add_argument("--origin", metavar="URL", help="a protected location: check that its "
                       "401 offers the key the issuer directory lists (warns otherwise)")
    fetch.add_argument("--store", metavar="FILE", help="the token file (default: "
                       "$XDG_DATA_HOME/anonticket/private-tokens)")
    timeout(fetch)
    fetch.set_defaults(func=cmd_client_fetch)
    spend = actions.add_parser(
        "spend", help="print one token as an Authorization header and remove it from the file",
        description="Print 'Authorization: PrivateToken token=\"...\"' for curl -H and remove "
                    "that token from the file (before printing: a token is never handed out "
                    "twice).")
    spend.add_argument("--unit", metavar="NAME", help="a token of this unit (default: any)")
    spend.add_argument("--store", metavar="FILE", help="the token file")
    spend.set_defaults(func=cmd_client_spend)
    count = actions.add_parser("count", help="how many tokens the file holds")
    count.add_argument("--unit", metavar="NAME")
    count.add_argument("--store", metavar="FILE")
    count.set_defaults(func=cmd_client_count)
