"""Customer routes: redeem, token introspection, health. Served on both listeners.

These are the hot paths (bench/, docs/benchmarks.md), so the answers are rendered
from bytes: every value in them is an int, a hex string or a timestamp we format
ourselves, none needs JSON escaping, and ``json.dumps`` of a small dict costs as
much as the rest of the handler. Anything unusual (bad input, a body that is not
the common one-field shape) takes the general path with the same answers.
"""

from __future__ import annotations

import re
import time
from binascii import unhexlify
from typing import Any

from aiohttp import web

from anonticket.domain.ids import PaymentId, Receipt, ServiceToken
from anonticket.domain.errors import (
    InvalidPid,
    InvalidReceipt,
    InvalidRequest,
    InvalidToken,
    PaymentNotFound,
    TokenNotFound,
    Underpaid,
    Unavailable,
)
from anonticket.api.checkout import add_checkout_routes
from anonticket.api.errors import plain_error_body
from anonticket.api.request import (
    JSON_TYPE,
    STATE,
    format_stamp,
    json_body,
    json_bytes,
    json_object,
    json_stamp,
    read_body,
    rfc3339,
)
from anonticket.ledger.views import ASK_STORAGE, Claimed
from anonticket.runtime.state import State
from anonticket.storage import TokenRow

# The route pattern IS ServiceToken.parse's rule (64 hex), so a matched token needs no
# second check; anything else reaches the catch-all route and gets 400 invalid_token.
TOKEN_PATTERN = "{token:[0-9a-fA-F]{64}}"
_OK_LIVE = b'{"status":"ok"}'
_SHORT_PID_PADDING = bytes(24)
# the two hot 404s, rendered once exactly as error_response would
_PAYMENT_NOT_FOUND = plain_error_body(PaymentNotFound.code, PaymentNotFound.message)
_TOKEN_NOT_FOUND = plain_error_body(TokenNotFound.code, TokenNotFound.message)
# The bodies clients send, {"receipt":"<64 hex>"} or {"pid":"<16 hex>"} with any JSON
# whitespace, in one C call. Whatever it matches, json.loads would read as that one-field
# object; anything else (other fields, escapes, grouped receipts, long PIDs, garbage) goes
# through json.loads and Receipt.parse or PaymentId.parse (``claim_from_body``).
_SIMPLE_REDEEM = re.compile(
    rb'[ \t\n\r]*\{[ \t\n\r]*"(?:pid"[ \t\n\r]*:[ \t\n\r]*"([0-9a-fA-F]{16})'
    rb'|receipt"[ \t\n\r]*:[ \t\n\r]*"([0-9a-fA-F]{64}))"[ \t\n\r]*\}[ \t\n\r]*'
).fullmatch


def parse_pid(text: object, accept_long: bool) -> PaymentId:
    """``PaymentId.parse`` with a fast path for the one shape real wallets use: 16 hex.

    ``isascii() and isalnum()`` rules out the whitespace ``bytes.fromhex`` would skip,
    and ``fromhex`` rejects the other letters, so a 16-character string passes exactly
    when ``PaymentId.parse`` accepts it; everything else goes to ``PaymentId.parse``.
    """
    if type(text) is str and len(text) == 16 and text.isascii() and text.isalnum():
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raise InvalidPid() from None
        if any(raw):
            return PaymentId(raw + _SHORT_PID_PADDING)
    return PaymentId.parse(text, accept_long=accept_long)


def claim_from_body(body: dict[str, Any], accept_long: bool) -> PaymentId | Receipt:
    """What a redeem or top-up body claims with: ``receipt`` (the customer's secret) or, the
    older way, a bare ``pid``; exactly one of the two."""
    if "receipt" in body:
        if "pid" in body:
            raise InvalidRequest("send either 'receipt' or 'pid', not both")
        return Receipt.parse(body["receipt"])
    if "pid" in body:
        return parse_pid(body["pid"], accept_long)
    raise InvalidRequest("field 'receipt' (or 'pid') is required")


def _redeem_claim(raw: bytes, accept_long: bool) -> tuple[bytes, Receipt | None]:
    """The raw PID a redeem body claims, and its receipt (None: a bare PID)."""
    match = _SIMPLE_REDEEM(raw)
    if match is not None:
        if match[1] is not None:
            short = unhexlify(match[1])
            if any(short):
                return short + _SHORT_PID_PADDING, None
        else:
            receipt = Receipt(unhexlify(match[2]))
            if any(receipt.pid_raw):
                return receipt.pid_raw, receipt
    claim = claim_from_body(json_object(raw), accept_long)
    if isinstance(claim, Receipt):
        return claim.pid_raw, claim
    return claim.raw, None


def token_view(record: TokenRow, now: int | None = None) -> dict[str, Any]:
    return {
        "status": record.status(int(time.time()) if now is None else now),
        "amount": record.amount,
        "issued_at": rfc3339(record.issued_at),
        "revoked_at": rfc3339(record.revoked_at),
        "abuse_score": record.abuse_score,
        "expires_at": rfc3339(record.expires_at),
        "remaining": record.remaining,
    }


def _token_view_bytes(record: TokenRow, now: int) -> bytes:
    """``json.dumps(token_view(record))`` without the encoder: ints and our own stamps only."""
    return (f'{{"status":"{record.status(now)}","amount":{int(record.amount)},'
            f'"issued_at":"{format_stamp(record.issued_at)}",'
            f'"revoked_at":{json_stamp(record.revoked_at)},'
            f'"abuse_score":{int(record.abuse_score)},'
            f'"expires_at":{json_stamp(record.expires_at)},'
            f'"remaining":{int(record.remaining)}}}').encode()


def claimed_view(result: Claimed) -> dict[str, Any]:
    record = result.record
    return {"status": result.status, "service_token": result.token.hex(),
            "balance": record.amount, "remaining": record.remaining,
            "expires_at": rfc3339(record.expires_at)}


def _claimed_bytes(result: Claimed) -> bytes:
    """``json.dumps(claimed_view(result))`` without the encoder."""
    status = "success" if result.status == "success" else "already_claimed"
    record = result.record
    return (f'{{"status":"{status}","service_token":"{result.token.hex()}",'
            f'"balance":{int(record.amount)},"remaining":{int(record.remaining)},'
            f'"expires_at":{json_stamp(record.expires_at)}}}').encode()


async def redeem(request: web.Request) -> web.Response:
    state = request.app[STATE]
    counters = state.metrics.redeem
    ledger = state.ledger
    try:
        raw, receipt = _redeem_claim(await read_body(request), state.config.api_accept_long_pids)
        if receipt is None and ledger.plain_pid_refused(raw):
            result = None  # REDEEM_PLAIN_PIDS=refuse: answered exactly as an unknown PID
        else:
            # already claimed, pending and unknown PIDs are answered without a coroutine
            result = ledger.redeem_from_memory(raw)
            if result is ASK_STORAGE:
                result = await ledger.redeem_from_storage(raw, receipt)
    except (InvalidRequest, InvalidPid, InvalidReceipt):
        counters["invalid"].inc()
        raise
    except Underpaid:
        counters["underpaid"].inc()
        raise
    except Unavailable:
        counters["unavailable"].inc()
        raise
    except web.HTTPRequestEntityTooLarge:
        counters["invalid"].inc()
        raise
    if result is None:
        # the flood case: no exception on the way, the answer's bytes made once
        counters["not_found"].inc()
        return json_bytes(_PAYMENT_NOT_FOUND, 404)
    if isinstance(result, Claimed):
        counters[result.status].inc()
        return json_bytes(_claimed_bytes(result))
    counters["pending"].inc()
    return json_body(
        {"status": "pending", "confirmations": result.confirmations, "required": result.required},
        status=202,
    )


async def introspect(request: web.Request) -> web.Response:
    # lookup_token inlined, no TokenNotFound, and the two answers memory can give
    # (a cached record, a certainly unknown token) without a coroutine: raising or
    # awaiting through frames costs more than the lookup itself
    state = request.app[STATE]
    ledger, counters = state.ledger, state.metrics.token
    raw = bytes.fromhex(request.match_info["token"])  # TOKEN_PATTERN: 64 hex
    record = ledger.cached_token(raw)
    if record is None:
        if ledger.token_certainly_unknown(raw):
            counters["not_found"].inc()
            return json_bytes(_TOKEN_NOT_FOUND, 404)
        try:
            record = await ledger.find_token(ServiceToken(raw))
        except Unavailable:
            counters["unavailable"].inc()
            raise
        if record is None:
            counters["not_found"].inc()
            return json_bytes(_TOKEN_NOT_FOUND, 404)
    now = int(time.time())
    counters[record.status(now)].inc()
    return json_bytes(_token_view_bytes(record, now))


def _matched_token(request: web.Request) -> ServiceToken:
    """The token of a request routed by TOKEN_PATTERN (already checked: 64 hex)."""
    return ServiceToken(bytes.fromhex(request.match_info["token"]))


async def lookup_token(request: web.Request, state: State) -> TokenRow:
    counters = state.metrics.token
    try:
        record = await state.ledger.introspect(_matched_token(request))
    except TokenNotFound:
        counters["not_found"].inc()
        raise
    except Unavailable:
        counters["unavailable"].inc()
        raise
    counters[record.status(int(time.time()))].inc()
    return record


async def invalid_token(request: web.Request) -> web.Response:
    """Every /api/v1/token/{token} path whose token is not 64 hex."""
    request.app[STATE].metrics.token["invalid"].inc()
    raise InvalidToken()


async def live(request: web.Request) -> web.Response:
    return web.Response(body=_OK_LIVE, content_type=JSON_TYPE)


async def ready(request: web.Request) -> web.Response:
    state = request.app[STATE]
    problem = state.monitor.problem(state.config.monitor_ready_max_age_secs)
    if problem is None:
        return json_body({"status": "ready"})
    return json_body({"status": "not_ready"}, status=503)


def add_token_routes(app: web.Application, handler: Any) -> None:
    """The token route twice: 64 hex to ``handler``, anything else to a 400."""
    app.router.add_get(f"/api/v1/token/{TOKEN_PATTERN}", handler, allow_head=False)
    app.router.add_get("/api/v1/token/{token}", invalid_token, allow_head=False)


def add_public_routes(app: web.Application) -> None:
    app.router.add_post("/api/v1/redeem", redeem)
    add_token_routes(app, introspect)
    app.router.add_get("/health/live", live, allow_head=False)
    app.router.add_get("/health/ready", ready, allow_head=False)
    add_checkout_routes(app)
