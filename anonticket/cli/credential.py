"""``anonticket keys`` (the operator's signing keys, through the running service) and
``anonticket credential fetch`` (a customer's credential, through the public listener).

The keys commands ask the internal listener, so on two instances over PostgreSQL the active
one makes the key and every instance uses it (a standby reads the keys when it takes over).
Nothing here prints a secret: key ids, purposes and times only.

``credential fetch`` reads the service token from a file (``--token-file``, ``-`` for
stdin) or from ``ANONTICKET_TOKEN``, never from the command line, where ``ps`` and the
shell's history would keep it; it prints the credential alone, for
``curl -H "Authorization: Bearer $(anonticket credential fetch ...)"``, or ``--json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

from anonticket.cli.command import (
    EXIT_OK,
    CommandFailed,
    UsageError,
    _admin,
    _load_config,
    _print_rows,
)
from anonticket.config import HostPort
from anonticket.domain.errors import InvalidToken
from anonticket.domain.ids import ServiceToken

TOKEN_ENV = "ANONTICKET_TOKEN"
_MAX_ANSWER_BYTES = 64 * 1024
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}
_INTERNAL = ("Talks to the internal listener chosen like serve does: API_INTERNAL_UNIX_SOCKET "
             "if set, else API_INTERNAL_BIND_ADDRESS; sends API_INTERNAL_TOKEN as a bearer "
             "token when set.")


# ---------------------------------------------------------------------- keys
def cmd_keys_list(args: argparse.Namespace) -> int:
    answer = _admin(args, lambda client: client.signing_keys())
    if args.json:
        print(json.dumps(answer, indent=2))
        return EXIT_OK
    _print_keys(answer.get("keys") or [])
    return EXIT_OK


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    answer = _admin(args, lambda client: client.rotate_keys(
        immediately=args.now, compromised=args.compromised, purpose=args.purpose))
    if args.json:
        print(json.dumps(answer, indent=2))
        return EXIT_OK
    rotated = answer.get("rotated") or {}
    print(f"new key {rotated.get('key_id')} signs from {rotated.get('not_before')}"
          + ("; every previous key is removed" if args.compromised else ""))
    print()
    _print_keys(answer.get("keys") or [])
    return EXIT_OK


def _print_keys(keys: list[dict[str, Any]]) -> None:
    rows = [("KEY ID", "PURPOSE", "STATUS", "AGE", "SIGNS FROM", "RETIRED", "VERIFIES UNTIL")]
    rows += [(str(k.get("key_id")), str(k.get("purpose")), str(k.get("status")),
              _age(k.get("age_seconds")), str(k.get("not_before")),
              str(k.get("retired_at") or "-"), str(k.get("expires_at") or "-")) for k in keys]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def _age(seconds: object) -> str:
    if not isinstance(seconds, int):
        return "?"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


# ---------------------------------------------------------------------- credential fetch
def read_secret_line(path: str) -> str:
    """The first line of ``path`` (``-``: stdin): how a secret (a token, a receipt) reaches a
    command without landing in ``ps`` or the shell's history."""
    if path == "-":
        return sys.stdin.readline()
    try:
        with open(path, encoding="utf-8") as source:
            return source.readline()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not text"
        raise CommandFailed(f"cannot read {path}: {reason}") from None


def read_token(token_file: str | None) -> ServiceToken:
    """The customer's token from ``token_file`` (``-``: stdin) or ``ANONTICKET_TOKEN``."""
    if token_file is not None:
        text = read_secret_line(token_file)
    elif os.environ.get(TOKEN_ENV):
        text = os.environ[TOKEN_ENV]
    else:
        raise UsageError(f"give the token in a file (--token-file FILE, - for stdin) or in "
                         f"{TOKEN_ENV}; never on the command line")
    try:
        return ServiceToken.parse(text.strip())
    except InvalidToken as exc:
        raise CommandFailed(exc.message) from None


def public_base(url: str | None) -> tuple[str, str | None]:
    """(base URL, Unix socket or None): ``--url``, else this machine's public listener."""
    if url:
        if not url.startswith(("http://", "https://")):
            raise UsageError("--url must start with http:// or https://")
        return url.rstrip("/"), None
    config = _load_config()
    if config.api_unix_socket:
        return "http://localhost", config.api_unix_socket
    bound = config.api_bind_address
    return f"http://{HostPort(_WILDCARDS.get(bound.host, bound.host), bound.port)}", None


async def fetch_credential(base: str, socket_path: str | None, token: ServiceToken,
                           audience: str | None, timeout: float) -> tuple[int, dict[str, Any]]:
    import aiohttp

    connector = aiohttp.UnixConnector(path=socket_path) if socket_path else aiohttp.TCPConnector()
    body = {"aud": audience} if audience is not None else {}
    # trust_env=False: a proxy from the environment would see the token
    async with aiohttp.ClientSession(connector=connector, trust_env=False,
                                     timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        async with session.post(base + "/api/v1/credential", json=body, headers={
                "Authorization": f"Bearer {token.hex()}"}) as resp:
            raw = await resp.content.read(_MAX_ANSWER_BYTES + 1)
            status = resp.status
    try:
        answer = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        answer = None
    if not isinstance(answer, dict):
        raise CommandFailed(f"the service answered HTTP {status} without a JSON object")
    return status, answer


def cmd_credential_fetch(args: argparse.Namespace) -> int:
    token = read_token(args.token_file)
    base, socket_path = public_base(args.url)
    try:
        status, answer = asyncio.run(fetch_credential(base, socket_path, token, args.audience,
                                                      args.timeout))
    except TimeoutError:
        raise CommandFailed(f"no answer within {args.timeout:g} s") from None
    except OSError as exc:  # aiohttp's connection errors are OSErrors
        raise CommandFailed(f"cannot reach the service ({type(exc).__name__})") from None
    if status != 200 or not isinstance(answer.get("credential"), str):
        code = str(answer.get("error") or "error")[:64]
        message = "".join(c for c in str(answer.get("message") or "") if c.isprintable())[:200]
        raise CommandFailed(f"the service refused: HTTP {status} {code}: {message}")
    if args.json:
        print(json.dumps(answer, indent=2))
    else:
        print(answer["credential"])
    return EXIT_OK


def add_credential_parsers(commands: Any, timeout: Any) -> None:
    keys = commands.add_parser("keys", help="the credential signing keys of the running service")
    actions = keys.add_subparsers(dest="keys_cmd", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="every stored key: id, purpose, status, age and "
                                 "schedule (never a secret)", description=_INTERNAL)
    listing.add_argument("--json", action="store_true", help="print the JSON answer as it is")
    timeout(listing)
    listing.set_defaults(func=cmd_keys_list)
    rotate = actions.add_parser(
        "rotate", help="make a new signing key; the current one verifies until what it signed "
        "has expired", description="Store a new credential key. By default it is published at "
        "once and signs once the key document's cache time (half of CREDENTIAL_TTL_SECS) has "
        "passed, so services that cache the document learn it first; the current key signs "
        "until then and verifies until its last credential has expired. " + _INTERNAL)
    when = rotate.add_mutually_exclusive_group()
    when.add_argument("--now", action="store_true",
                      help="sign with the new key at once (services with a cached key document "
                      "refuse its credentials until they fetch it again)")
    when.add_argument("--compromised", action="store_true",
                      help="the current key has leaked: sign with the new key at once and "
                      "delete every previous key, so their credentials stop working here at "
                      "once (and at services when they fetch the key document again)")
    rotate.add_argument("--purpose", metavar="PURPOSE", help="credential (the default), or "
                        "private_token:<unit> for a Privacy Pass unit's issuer key (--now or "
                        "--compromised: a routine one follows the epoch schedule)")
    rotate.add_argument("--json", action="store_true", help="print the JSON answer as it is")
    timeout(rotate)
    rotate.set_defaults(func=cmd_keys_rotate)

    credential = commands.add_parser("credential", help="short-lived credentials (customers)")
    fetch_actions = credential.add_subparsers(dest="credential_cmd", required=True,
                                              metavar="ACTION")
    fetch = fetch_actions.add_parser(
        "fetch", help="a credential for a service token (POST /api/v1/credential)",
        description=f"Print a credential for the service token read from --token-file (- for "
                    f"stdin) or {TOKEN_ENV} (never an argument: ps and shell history would "
                    "keep it). It opens what the token opens, except metered locations, until "
                    "it expires (CREDENTIAL_TTL_SECS, never past the token's own expiry).")
    fetch.add_argument("--url", metavar="URL", help="the service's public address (default: "
                       "this machine's public listener, API_UNIX_SOCKET or API_BIND_ADDRESS)")
    fetch.add_argument("--token-file", metavar="FILE", help="file whose first line is the "
                       "token; - reads it from stdin")
    fetch.add_argument("--audience", metavar="AUD", help="a service's name, one of the "
                       "operator's CREDENTIAL_AUDIENCES")
    fetch.add_argument("--json", action="store_true",
                       help="print credential, expires_at and audience as JSON")
    timeout(fetch)
    fetch.set_defaults(func=cmd_credential_fetch)
