"""Privacy Pass issuance over HTTP (RFC 9578), on the public listener.

- ``GET /.well-known/private-token-issuer-directory``: the issuer directory (RFC 9578 §4,
  ``application/private-token-issuer-directory``): for each unit the key signing now and the
  next one with its ``not-before``, each entry naming its unit in ``anonticket-unit``;
  ``issuer-request-uri`` is ``/api/v1/private-token`` (relative, as §4 allows). Cached for
  half the time a next key is published ahead (at most a day), so a client sees a new key
  before it signs.
- ``POST /api/v1/private-token``: a batch of N token requests, authorised by a service token
  (``Authorization: Bearer``) whose balance pays N x the unit price in one debit with the
  request's ``Idempotency-Key`` (1-125 visible ASCII characters). The body
  (``application/private-token-request``) is N TokenRequests of 259 bytes each
  (RFC 9578 §6.1: type 2, truncated key id, 256-byte blinded message) back to back,
  1 <= N <= ``PRIVATE_TOKEN_MAX_BATCH``; N = 1 is exactly RFC 9578's single request. The
  answer (``application/private-token-response``) is the N 256-byte blind signatures in the
  same order. Each request names its key, and so its unit: a batch may mix units.

Order of refusals: the token's form (401, as the check), then the body (422 for the wrong
type, an unknown key id or a wrong size, RFC 9578 §6.2), then the Idempotency-Key, then
whether the token can pay (404 unknown, 403 revoked or expired, 402 a balance below the
price: as a debit refuses, read before any signing, so nobody without a funded token makes
the issuer spend CPU; then 403 ``token_provisional`` while it holds provisional credit, as
the credential route refuses one: a private token verifies offline and is unlinkable, so
nothing could take it back from a double spender once the payment is withdrawn, and a
service could no longer hold back what it sells on provisional credit), then the blind
signatures (computed before anything is charged: a
blinded message not below the modulus is a 422 and charges nothing), then the one debit
(which decides, atomically: the same refusals, provisional credit included, and 422 the key
reused with another body, exactly as debits). A
refusal changes nothing. A retry with the same key and body is charged once and gets the
same signatures (a refusal the debit made is kept for the key too, as for debits; one found
before signing is not: nothing was attempted): blind RSA signing is deterministic, so they
are signed again, and nothing but the debit's retry record (the token, the key, a SHA-256
of the body, the debit's answer; kept RETRY_WINDOW_SECS, forgotten by the hourly prune
after) is stored about an issuance.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections import Counter
from typing import Any

from aiohttp import web

from anonticket.api.balance import idempotency_key, render_debit
from anonticket.api.gateway import bearer_token_only, denial
from anonticket.api.request import STATE
from anonticket.runtime.state import State
from anonticket.crypto.blind_rsa import SigningFailure
from anonticket.crypto.privacy_pass import (
    NK, REQUEST_MEDIA_TYPE, RESPONSE_MEDIA_TYPE, MalformedMessage, PrivacyPassError,
    TokenRequest,
)
from anonticket.crypto.privacy_pass_http import DIRECTORY_MEDIA_TYPE, DIRECTORY_PATH
from anonticket.domain.errors import (
    IdempotencyKeyRequired,
    InvalidRequest,
    NotFound,
    RequestTimeout,
    ServiceError,
    Unavailable,
    UnsupportedMediaType,
)
from anonticket.domain.ids import ServiceToken
from anonticket.ledger.private_tokens import PrivateTokens
from anonticket.storage import RETRY_KEY_PREFIX, DebitRequest
from anonticket.storage.ledger_rules import decide_debit

log = logging.getLogger("anonticket.private_tokens")

ISSUE_PATH = "/api/v1/private-token"
REQUEST_SIZE = 3 + NK  # one TokenRequest of type 2
MAX_KEY_CHARS = 128 - len(RETRY_KEY_PREFIX)
_DIGEST_PREFIX = b"anonticket private-token issuance\x00"


class PrivateTokenRefused(ServiceError):
    """A TokenRequest the issuer cannot serve: RFC 9578 §6.2's 422, with the format error's
    own code (malformed_message, unsupported_token_type, unknown_token_key)."""

    status, code, message = 422, "malformed_message", "malformed Privacy Pass message"


class SigningFailed(ServiceError):
    status, code, message = 500, "signing_failure", "the issuer could not sign; nothing was charged"


def refused(error: PrivacyPassError) -> PrivateTokenRefused:
    refusal = PrivateTokenRefused(error.message)
    refusal.code = error.code
    return refusal


def _private_tokens(request: web.Request) -> PrivateTokens:
    found = request.app[STATE].ledger.private_tokens
    if found is None:
        raise NotFound("Privacy Pass is off (PRIVATE_TOKEN_UNITS is empty)")
    return found


def directory_max_age(private_tokens: PrivateTokens) -> int:
    return max(60, min(private_tokens.ahead_secs // 2, 86_400))


async def directory(request: web.Request) -> web.Response:
    private_tokens = _private_tokens(request)
    body = json.dumps(private_tokens.directory(ISSUE_PATH)).encode()
    return web.Response(body=body, headers={
        "Content-Type": DIRECTORY_MEDIA_TYPE,
        "Cache-Control": f"public, max-age={directory_max_age(private_tokens)}"})


async def _read_batch(request: web.Request, limit: int) -> bytes:
    """The body, at most ``limit`` bytes (not the public listener's JSON limit)."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise refused(MalformedMessage())
    chunks, size = [], 0
    try:
        async with asyncio.timeout(request.app[STATE].config.api_body_timeout_secs):
            while chunk := await request.content.read(65_536):
                size += len(chunk)
                if size > limit:
                    raise refused(MalformedMessage())
                chunks.append(chunk)
    except TimeoutError:
        raise RequestTimeout() from None
    return b"".join(chunks)


async def issue(request: web.Request) -> web.Response:
    state = request.app[STATE]
    tallies = state.metrics.private_token
    private_tokens = _private_tokens(request)
    raw = bearer_token_only(request.headers)
    if type(raw) is str:
        tallies[raw].inc()
        return _no_store(denial(raw))
    try:
        media_type = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if media_type != REQUEST_MEDIA_TYPE:
            raise UnsupportedMediaType(f"the body must be {REQUEST_MEDIA_TYPE}")
        body = await _read_batch(request, REQUEST_SIZE * private_tokens.max_batch)
        if not body:
            raise refused(MalformedMessage())
        try:
            chunks = [body[i:i + REQUEST_SIZE] for i in range(0, len(body), REQUEST_SIZE)]
            requests = [TokenRequest.decode(chunk) for chunk in chunks]
            pairs = [(token_request, private_tokens.issuing_key(token_request))
                     for token_request in requests]
        except PrivacyPassError as error:
            tallies.get(error.code, tallies["invalid"]).inc()
            raise refused(error) from None
        key = idempotency_key(request)
        if len(key) > MAX_KEY_CHARS:
            raise InvalidRequest(f"Idempotency-Key must be at most {MAX_KEY_CHARS} characters "
                                 "here")
    except (InvalidRequest, UnsupportedMediaType, RequestTimeout):
        tallies["invalid"].inc()
        raise
    except PrivateTokenRefused:
        raise
    except IdempotencyKeyRequired:
        tallies["invalid"].inc()
        raise
    amount = sum(found.unit.price for _, found in pairs)
    # the token is looked at before anything is signed: a signature costs milliseconds of
    # CPU, and only a token that can pay may make the issuer spend them (the debit below
    # still decides, atomically, what is charged)
    refusal = await _cannot_pay(state, raw, amount)  # type: ignore[arg-type]
    if refusal is not None:
        tallies[str(refusal[1]["error"])].inc()
        return _no_store(render_debit(refusal[0], refusal[1], False))
    try:
        responses = await asyncio.to_thread(PrivateTokens.sign, pairs)
    except MalformedMessage:
        tallies["invalid"].inc()
        raise refused(MalformedMessage()) from None
    except SigningFailure:
        log.error("a blind signature failed its fault check; nothing was charged")
        raise SigningFailed() from None
    units = Counter(found.unit.name for _, found in pairs)
    memo = "private tokens: " + ", ".join(f"{count} {name}" for name, count in units.items())
    try:
        outcome = await state.ledger.debit(DebitRequest(
            raw, amount, RETRY_KEY_PREFIX + key,  # type: ignore[arg-type]
            hashlib.sha256(_DIGEST_PREFIX + body).digest(), memo, final_only=True))
    except Unavailable:
        tallies["unavailable"].inc()
        raise
    if outcome.status != 200:
        code = str(outcome.body["error"])
        tallies[{"idempotency_key_reused": "key_reused"}.get(code, code)].inc()
        return _no_store(render_debit(outcome.status, outcome.body, outcome.replayed))
    if outcome.replayed:
        tallies["replayed"].inc()
    else:
        tallies["issued"].inc()
        state.metrics.private_tokens_issued.inc(len(responses))
    response = web.Response(body=b"".join(item.encode() for item in responses),
                            headers={"Content-Type": RESPONSE_MEDIA_TYPE})
    if outcome.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return _no_store(response)


async def _cannot_pay(state: State, raw: bytes, amount: int) -> tuple[int, dict[str, Any]] | None:
    """The debit's own refusal when the token certainly cannot pay ``amount`` now (unknown,
    revoked, expired, a balance too low, provisional credit); None when it may. Read from
    the record cache or storage, as the credential route reads it."""
    ledger = state.ledger
    try:
        record = await ledger.find_token(ServiceToken(raw))
    except Unavailable:
        state.metrics.private_token["unavailable"].inc()
        raise
    if record is None:
        return 404, {"error": "token_not_found"}
    status, body = decide_debit(record, amount, ledger.clock(), final_only=True)
    return None if status == 200 else (status, body)


def _no_store(response: web.Response) -> web.Response:
    response.headers["Cache-Control"] = "no-store"
    return response


def add_private_token_routes(app: web.Application) -> None:
    app.router.add_get(DIRECTORY_PATH, directory)
    app.router.add_post(ISSUE_PATH, issue)
