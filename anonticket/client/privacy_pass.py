"""A small Privacy Pass client for anonticket (token type 2), stdlib + pycryptodome.

Usage from a script::

    from anonticket.client.privacy_pass import Issuer, TokenStore

    issuer = Issuer("https://pay.example.org")
    tokens = issuer.fetch(service_token_hex, unit="hour", count=10)  # one paid request
    store = TokenStore("~/.config/anonticket/tokens")
    store.add(tokens, "hour", issuer.base)
    header = store.spend("hour")  # 'PrivateToken token="..."', removed from the file

    # or paid by a receipt: traded for its service token first (POST /api/v1/redeem, which
    # answers the same token every time), so the token never has to be handled by hand
    tokens = issuer.fetch_with_receipt(receipt_text, unit="hour", count=10)

``fetch`` reads the issuer directory, picks the unit's key signing now, blinds ``count``
token requests for the deployment's challenge, posts them in one request with a fresh
``Idempotency-Key`` (retried with the same key and body after a network error, so it is
charged once), finalizes each answer and verifies each token before returning it. A client
is only as private as the key it is given: ``check_origin`` compares the key a protected
location's 401 offers with the directory's, and ``fetch`` warns (``warnings``) when the
directory changes its key for the unit between two reads, either of which would let the
issuer single a customer out.

The issuance route itself takes only a service token: a receipt and a token are both 64 hex,
so one ``Authorization`` header could not tell them apart, and the debit belongs to the
token. A receipt still waiting for its confirmations, one for an unknown or underpaid payment,
and a token whose payment is not final yet (provisional credit: the issuer signs nothing
for it, docs/operations.md) each give a ``ClientError`` that says what to do; none of the
messages holds the receipt or the token.

The store is a JSON-lines file, mode 0600, one token a line (unit, token, issuer); ``spend``
takes the first of a unit and rewrites the file without it atomically (a temporary file,
fsync, rename) under an exclusive lock, so two spends never hand out one token.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

from anonticket.crypto.privacy_pass import (
    NK, Token, TokenKey, TokenResponse, create_token_request, finalize_token,
)
from anonticket.crypto.privacy_pass_http import (
    DIRECTORY_PATH, IssuerDirectory, b64url_decode, b64url_encode, format_authorization,
    parse_www_authenticate,
)

REQUEST_MEDIA_TYPE = "application/private-token-request"
MAX_DIRECTORY_BYTES = 256 * 1024
ATTEMPTS = 3
REDEEM_PATH = "/api/v1/redeem"
MAX_ANSWER_BYTES = 64 * 1024
_HEX = frozenset("0123456789abcdefABCDEF")


class ClientError(Exception):
    """What went wrong, in words fit for a terminal: never a token, a receipt or a key."""


def parse_receipt(text: str) -> str:
    """A receipt as the redeem route takes it (64 lowercase hex) from what a customer keeps:
    64 hex digits, or the checkout's grouping, eight groups of eight separated by ``-`` or
    by spaces (the rule of ``anonticket.domain.ids.Receipt.parse``, which this module may
    not import); surrounding blanks are dropped. The error never holds the input."""
    text = text.strip()
    if len(text) == 71 and text[8] in "- ":
        groups = text.split(text[8])
        if len(groups) == 8 and all(len(group) == 8 for group in groups):
            text = "".join(groups)
    if len(text) != 64 or not _HEX.issuperset(text):
        raise ClientError("the receipt must be 64 hex characters, or eight groups of eight "
                          "separated by '-' or by spaces")
    return text.lower()


@dataclass(frozen=True)
class UnitKey:
    unit: str
    token_key: TokenKey
    not_before: int | None


@dataclass(frozen=True)
class Directory:
    request_uri: str
    challenge: bytes
    keys: tuple[UnitKey, ...]

    def key_for(self, unit: str, now: float | None = None) -> UnitKey:
        """The unit's key signing now: the latest whose not-before has passed."""
        moment = time.time() if now is None else now
        found = [key for key in self.keys if key.unit == unit
                 and (key.not_before is None or key.not_before <= moment)]
        if not found:
            units = sorted({key.unit for key in self.keys})
            raise ClientError(f"the issuer sells no unit {unit!r} now (units: "
                              f"{', '.join(units) or 'none'})")
        return max(found, key=lambda key: key.not_before or 0)


def parse_directory(base: str, data: Any) -> Directory:
    try:
        parsed = IssuerDirectory.from_json(data)
        challenge = b64url_decode(data["anonticket-challenge"])
        units = [item.get("anonticket-unit") for item in data["token-keys"]
                 if item.get("token-type") == 2]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ClientError("the issuer directory is not one anonticket publishes") from None
    if not all(isinstance(unit, str) for unit in units):
        raise ClientError("the issuer directory does not name its units")
    keys = tuple(UnitKey(unit, entry.token_key, entry.not_before)
                 for unit, entry in zip(units, parsed.token_keys, strict=True))
    return Directory(urljoin(base + "/", parsed.issuer_request_uri), challenge, keys)


class Issuer:
    """An anonticket issuer at ``base`` (its public address, e.g. https://pay.example.org)."""

    def __init__(self, base: str, *, timeout: float = 30.0,
                 opener: urllib.request.OpenerDirector | None = None) -> None:
        if not base.startswith(("http://", "https://")):
            raise ClientError("the issuer's address must start with http:// or https://")
        self.base = base.rstrip("/")
        self.timeout = timeout
        # no proxy from the environment: it would see the service token
        self._opener = opener or urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def _open(self, request: urllib.request.Request) -> tuple[int, dict[str, str], bytes]:
        try:
            with self._opener.open(request, timeout=self.timeout) as resp:
                return resp.status, dict(resp.headers), resp.read(MAX_DIRECTORY_BYTES + 1)
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), error.read(MAX_DIRECTORY_BYTES + 1)

    def directory(self) -> Directory:
        status, _, body = self._open(urllib.request.Request(self.base + DIRECTORY_PATH))
        if status != 200 or len(body) > MAX_DIRECTORY_BYTES:
            raise ClientError(f"the issuer directory answered HTTP {status}")
        try:
            data = json.loads(body)
        except ValueError:
            raise ClientError("the issuer directory is not JSON") from None
        return parse_directory(self.base, data)

    def redeem(self, receipt: str) -> str:
        """The service token a receipt's payment redeemed to (64 hex), claiming it if nobody
        has: ``POST /api/v1/redeem`` answers the same token for the same receipt every time,
        so a retry, or a second fetch with the receipt, never loses or doubles anything."""
        body = json.dumps({"receipt": parse_receipt(receipt)}).encode()
        request = urllib.request.Request(
            self.base + REDEEM_PATH, data=body, method="POST",
            headers={"Content-Type": "application/json", "Accept": "application/json"})
        for attempt in range(ATTEMPTS):
            try:
                status, _, answer = self._open(request)
                break
            except OSError:  # redeem is idempotent: asking again is safe
                if attempt == ATTEMPTS - 1:
                    raise ClientError("cannot reach the issuer") from None
        data = _json_object(answer)
        if status == 200:
            token = data.get("service_token")
            if isinstance(token, str) and len(token) == 64 and _HEX.issuperset(token):
                return token
            raise ClientError("the issuer's redeem answer holds no service token")
        if status == 202:
            raise ClientError(
                f"the payment is waiting for confirmations ({_count(data, 'confirmations')} of "
                f"{_count(data, 'required')}): run this again once it has them (the receipt "
                "stays valid)")
        if status == 404:
            raise ClientError("no payment for this receipt: the wallet has not seen it yet "
                              "(try again in a few minutes), or this is not a receipt (a "
                              "service token is given as a token, not as a receipt)")
        if status == 402:
            raise ClientError("the payment for this receipt is below the minimum price: it "
                              "cannot be redeemed")
        if status == 400:
            raise ClientError("the issuer refused the receipt as malformed")
        raise ClientError(f"the issuer refused the receipt: HTTP {status} "
                          f"{_error_code(answer)}".rstrip())

    def fetch_with_receipt(self, receipt: str, unit: str, count: int) -> list[Token]:
        """``count`` tokens of ``unit``, paid by the service token ``receipt`` redeems to
        (``redeem``, then ``fetch``). The token is never returned: the receipt stays the
        customer's handle to what is left of the balance."""
        return self.fetch(self.redeem(receipt), unit, count)

    def fetch(self, service_token: str, unit: str, count: int) -> list[Token]:
        """``count`` tokens of ``unit``, paid by ``service_token`` in one request."""
        if not 1 <= count <= 1000:
            raise ClientError("count must be 1 to 1000")
        directory = self.directory()
        key = directory.key_for(unit)
        pending = [create_token_request(directory.challenge, key.token_key) for _ in range(count)]
        body = b"".join(request.encode() for request, _ in pending)
        idempotency_key = secrets.token_urlsafe(24)
        headers = {"Authorization": f"Bearer {service_token}",
                   "Content-Type": REQUEST_MEDIA_TYPE, "Idempotency-Key": idempotency_key,
                   "Accept": "application/private-token-response"}
        for attempt in range(ATTEMPTS):
            try:
                status, _, answer = self._open(urllib.request.Request(
                    directory.request_uri, data=body, headers=headers, method="POST"))
                break
            except OSError:  # lost on the way: the same key and body are charged once
                if attempt == ATTEMPTS - 1:
                    raise ClientError("cannot reach the issuer") from None
        if status == 403 and _error_code(answer) == "token_provisional":
            raise ClientError("the payment is not final yet (it was credited from the pool): "
                              "private tokens are issued once it has its confirmations; run "
                              "this again then (nothing was charged)")
        if status != 200:
            raise ClientError(f"the issuer refused: HTTP {status} {_error_code(answer)}")
        if len(answer) != NK * count:
            raise ClientError("the issuer's answer has the wrong size")
        tokens = []
        for i, (_, state) in enumerate(pending):
            try:
                tokens.append(finalize_token(state, TokenResponse(answer[i * NK:(i + 1) * NK])))
            except ValueError:
                raise ClientError("a signature from the issuer does not verify") from None
        # the key signing now must still be the directory's one: a key changed for this
        # customer alone would mark every token it signed
        again = self.directory().key_for(unit)
        if again.token_key != key.token_key:
            warnings.warn("the issuer directory listed another key for this unit after the "
                          "issuance: these tokens may be recognisable", stacklevel=2)
        return tokens

    def check_origin(self, origin_url: str, unit: str) -> bool:
        """Whether a protected location's 401 offers this unit's directory key and the
        directory's challenge; warns and returns False otherwise."""
        status, headers, _ = self._open(urllib.request.Request(origin_url))
        offered = []
        for name, value in headers.items():
            if name.lower() == "www-authenticate":
                try:
                    offered += parse_www_authenticate(value)
                except ValueError:
                    pass
        directory = self.directory()
        spki = directory.key_for(unit).token_key.spki
        if status == 401 and any(item.token_key == spki and item.challenge
                                 == directory.challenge for item in offered):
            return True
        warnings.warn("the location does not offer the key the issuer directory lists for "
                      "this unit: its tokens could be told apart", stacklevel=2)
        return False


def _json_object(answer: bytes) -> dict[str, Any]:
    try:
        data = json.loads(answer[:MAX_ANSWER_BYTES])
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _count(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    return str(value) if type(value) is int else "?"


def _error_code(answer: bytes) -> str:
    try:
        code = json.loads(answer).get("error")
    except (ValueError, AttributeError):
        return ""
    return "".join(ch for ch in str(code) if ch.isalnum() or ch == "_")[:64]


class TokenStore:
    """Tokens in a 0600 JSON-lines file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).expanduser()

    def _locked(self) -> Any:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(lock, fcntl.LOCK_EX)
        return lock

    def _read(self) -> list[dict[str, str]]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        entries = []
        for line in text.splitlines():
            if line.strip():
                entries.append(json.loads(line))
        return entries

    def _write(self, entries: Iterable[dict[str, str]]) -> None:
        temporary = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                for entry in entries:
                    out.write(json.dumps(entry) + "\n")
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise

    def add(self, tokens: Iterable[Token], unit: str, issuer: str) -> int:
        lock = self._locked()
        try:
            entries = self._read()
            new = [{"unit": unit, "issuer": issuer, "token": b64url_encode(token.encode())}
                   for token in tokens]
            self._write(entries + new)
            return len(new)
        finally:
            os.close(lock)

    def count(self, unit: str | None = None) -> int:
        return sum(1 for entry in self._read() if unit is None or entry.get("unit") == unit)

    def spend(self, unit: str | None = None) -> str:
        """The ``Authorization`` value of one token of ``unit`` (any when None), removed from
        the file before it is returned."""
        lock = self._locked()
        try:
            entries = self._read()
            for index, entry in enumerate(entries):
                if unit is None or entry.get("unit") == unit:
                    self._write(entries[:index] + entries[index + 1:])
                    token = Token.decode(b64url_decode(entry["token"]))
                    return format_authorization(token)
            raise ClientError("no token left" + (f" of unit {unit!r}" if unit else ""))
        finally:
            os.close(lock)
