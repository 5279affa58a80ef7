"""``anonticket client``: the customer's Privacy Pass tokens (``anonticket.client``).

- ``client fetch N --unit NAME``: N tokens of a unit, paid by the service token read from
  ``--token-file`` (``-``: stdin) or ``ANONTICKET_TOKEN`` (never an argument), appended to
  the token file (``--store``, default ``$XDG_DATA_HOME/anonticket/private-tokens``, mode
  0600); ``--origin URL`` first checks that a protected location offers the key the
  directory lists (a warning otherwise);
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
from anonticket.cli.credential import TOKEN_ENV, public_base, read_token
from anonticket.client.privacy_pass import ClientError, Issuer, TokenStore


def default_store() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                          "share")
    return Path(base) / "anonticket" / "private-tokens"


def _store(args: argparse.Namespace) -> TokenStore:
    return TokenStore(args.store or default_store())


def _warn_to_stderr(message: Any, *_: Any, **__: Any) -> None:
    print(f"warning: {message}", file=sys.stderr)


def cmd_client_fetch(args: argparse.Namespace) -> int:
    if not 1 <= args.count <= 1000:
        raise UsageError("N must be 1 to 1000")
    token = read_token(args.token_file)
    base, socket_path = public_base(args.url)
    if socket_path is not None:
        raise UsageError("give the issuer's address with --url (a Unix socket is not "
                         "supported here)")
    issuer = Issuer(base, timeout=args.timeout)
    warnings.showwarning = _warn_to_stderr  # type: ignore[assignment]
    try:
        if args.origin:
            issuer.check_origin(args.origin, args.unit)
        tokens = issuer.fetch(token.hex(), args.unit, args.count)
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
        "fetch", help="fetch N blind-signed tokens of a unit, paid by a service token",
        description=f"Fetch N tokens of --unit in one request paid by the service token read "
                    f"from --token-file (- for stdin) or {TOKEN_ENV} (never an argument), "
                    "verify each and append them to the token file (mode 0600). Fetch ahead "
                    "of use: the issuer sees when you fetch, and a spend right after a fetch "
                    "is easier to link (docs/customers.md).")
    fetch.add_argument("count", type=int, metavar="N", help="how many tokens (1-1000; the "
                       "issuer may allow fewer per request)")
    fetch.add_argument("--unit", required=True, metavar="NAME", help="the unit (the issuer "
                       "directory names them)")
    fetch.add_argument("--url", metavar="URL", help="the issuer's public address (default: "
                       "this machine's public listener, API_BIND_ADDRESS)")
    fetch.add_argument("--token-file", metavar="FILE",
                       help="file whose first line is the service token; - reads stdin")
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
