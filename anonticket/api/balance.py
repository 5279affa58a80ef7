"""Top-ups (public) and debits (internal): the routes that move a token's balance.

A debit answer is stored with its Idempotency-Key, as raw values, and rendered here the
same way for the first answer and every replay, so a retry sees the bytes it would have
seen the first time (plus ``Idempotent-Replayed: true``).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from aiohttp import web

from anonticket.api.public import TOKEN_PATTERN, claim_from_body
from anonticket.api.request import STATE, json_body, json_bytes, json_stamp, read_json_object, rfc3339
from anonticket.domain.ids import ServiceToken
from anonticket.domain.errors import (
    IdempotencyKeyRequired,
    IdempotencyKeyReused,
    InsufficientBalance,
    InvalidPid,
    InvalidReceipt,
    InvalidRequest,
    PaymentNotFound,
    PidAlreadyClaimed,
    ServiceError,
    PaymentWithdrawn,
    TokenExpired,
    TokenNotFound,
    TokenProvisional,
    TokenRevoked,
    Unavailable,
    Underpaid,
)
from anonticket.ledger.views import Pending
from anonticket.storage import DebitRequest

MAX_MEMO_CHARS = 128
MAX_KEY_CHARS = 128
# amounts are SQLite INTEGERs (signed 64-bit); sums of them must fit too
MAX_DEBIT = 2**62
# every refusal a debit can be answered with, by its stored code
_REFUSALS: dict[str, type[ServiceError]] = {
    cls.code: cls for cls in (InsufficientBalance, TokenExpired, TokenRevoked, TokenNotFound,
                              IdempotencyKeyReused, PaymentWithdrawn, TokenProvisional)
}
_TOPUP_REFUSALS: dict[str, type[ServiceError]] = {
    "token_not_found": TokenNotFound, "pid_already_claimed": PidAlreadyClaimed,
    "token_revoked": TokenRevoked,
}


def _token(request: web.Request) -> ServiceToken:
    return ServiceToken(bytes.fromhex(request.match_info["token"]))  # TOKEN_PATTERN: 64 hex


# ---------------------------------------------------------------------- top-up
async def topup(request: web.Request) -> web.Response:
    state = request.app[STATE]
    counters = state.metrics.topup
    try:
        claim = claim_from_body(await read_json_object(request),
                                state.config.api_accept_long_pids)
        result = await state.ledger.topup(_token(request), claim)
    except (InvalidRequest, InvalidPid, InvalidReceipt):
        counters["invalid"].inc()
        raise
    except Unavailable:
        counters["unavailable"].inc()
        raise
    if result is None:
        counters["not_found"].inc()
        raise PaymentNotFound()
    if isinstance(result, Pending):
        counters["pending"].inc()
        return json_body({"status": "pending", "confirmations": result.confirmations,
                          "required": result.required}, status=202)
    if result.kind == "underpaid":
        counters["underpaid"].inc()
        raise Underpaid(balance=result.amount, minimum=state.ledger.min_payment)
    refusal = _TOPUP_REFUSALS.get(result.kind)
    if refusal is not None or result.record is None:
        counters["not_found" if result.kind == "token_not_found" else result.kind].inc()
        raise (refusal or TokenNotFound)()
    counters["topped_up"].inc()
    record = result.record
    return json_body({"status": "topped_up", "credited": result.amount, "balance": record.amount,
                      "remaining": record.remaining, "expires_at": rfc3339(record.expires_at)})


# ---------------------------------------------------------------------- debit
def idempotency_key(request: web.Request) -> str:
    """The Idempotency-Key header, verbatim: 1 to 128 visible ASCII characters."""
    key = request.headers.get("Idempotency-Key")
    if key is None:
        raise IdempotencyKeyRequired()
    # visible ASCII is printable ASCII but the space; three C calls, not a loop per character
    if not (1 <= len(key) <= MAX_KEY_CHARS and key.isascii() and key.isprintable()
            and " " not in key):
        raise InvalidRequest("Idempotency-Key must be 1 to 128 visible ASCII characters")
    return key


def parse_debit(body: dict[str, Any]) -> tuple[int, str | None]:
    amount = body.get("amount")
    if type(amount) is not int or not 0 < amount <= MAX_DEBIT:
        raise InvalidRequest("amount must be a whole number of piconero greater than zero")
    memo = body.get("memo")
    # lone surrogates and U+0000 were refused with the whole body (api.request.is_storable_json)
    if memo is not None and (not isinstance(memo, str) or len(memo) > MAX_MEMO_CHARS):
        raise InvalidRequest("memo must be a string of at most 128 characters")
    return amount, memo


def request_digest(amount: int, memo: str | None) -> bytes:
    """What "the same request" means for a key: the same amount and memo.

    The digested text is ``json.dumps([amount, memo])`` exactly (keys stored before this
    was formatted by hand must still match their retries), written without building the
    list and the encoder: amount is an int (``parse_debit``), memo None or a str.
    """
    text = f"[{amount}, {'null' if memo is None else json.dumps(memo)}]"
    return hashlib.sha256(text.encode()).digest()


def render_debit(status: int, body: dict[str, Any], replayed: bool) -> web.Response:
    if status == 200:
        # what json.dumps of the four fields gives, without the encoder: three ints and a
        # stamp of our own (the one answer of a busy operator's hot path)
        response = json_bytes(
            (f'{{"debit_id": {int(body["debit_id"])}, "amount": {int(body["amount"])}, '
             f'"remaining": {int(body["remaining"])}, '
             f'"expires_at": {json_stamp(body["expires_at"])}}}').encode())
    else:
        code = body["error"]
        refusal = _REFUSALS[code]
        response = json_body({"error": code, "message": refusal.message,
                              **{k: v for k, v in body.items() if k != "error"}}, status=status)
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


async def debit(request: web.Request) -> web.Response:
    state = request.app[STATE]
    counters = state.metrics.debit
    try:
        # the body first: one that cannot be read is refused whatever the headers say
        amount, memo = parse_debit(await read_json_object(request))
        key = idempotency_key(request)
        outcome = await state.ledger.debit(DebitRequest(
            bytes.fromhex(request.match_info["token"]), amount, key,
            request_digest(amount, memo), memo))
    except (InvalidRequest, IdempotencyKeyRequired):
        counters["invalid"].inc()
        raise
    except Unavailable:
        counters["unavailable"].inc()
        raise
    if outcome.replayed:
        counters["replayed"].inc()
    elif outcome.status == 200:
        counters["success"].inc()
        state.metrics.debited.inc(amount)
    else:
        code = str(outcome.body["error"])
        counters[{"token_not_found": "not_found", "idempotency_key_reused": "key_reused"}
                 .get(code, code)].inc()
    return render_debit(outcome.status, outcome.body, outcome.replayed)


def add_topup_route(app: web.Application) -> None:
    app.router.add_post(f"/api/v1/token/{TOKEN_PATTERN}/topup", topup)


def add_debit_route(app: web.Application) -> None:
    app.router.add_post(f"/api/v1/token/{TOKEN_PATTERN}/debit", debit)
