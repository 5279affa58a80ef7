"""Customer routes: redeem, token introspection, health. Served on both listeners."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from anonticket.domain import PaymentId, ServiceToken
from anonticket.errors import (
    InvalidPid,
    InvalidRequest,
    InvalidToken,
    PaymentNotFound,
    TokenNotFound,
    Underpaid,
    Unavailable,
)
from anonticket.ledger import Claimed
from anonticket.state import State
from anonticket.storage import TokenRow

STATE = web.AppKey("state", State)
# Requests larger than this are refused with 413 before they are read; a redeem body is ~30 bytes.
MAX_BODY_BYTES = 4096
_OK_LIVE = b'{"status":"ok"}'


def json_body(payload: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(
        status=status, body=json.dumps(payload).encode(), content_type="application/json"
    )


async def read_json_object(request: web.Request, *, allow_empty: bool = False) -> dict[str, Any]:
    """The body as a JSON object. Any content type is accepted: ``curl -d`` sends a form type."""
    raw = await request.read()
    if allow_empty and not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequest("request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    return body


def rfc3339(unix_seconds: int | None) -> str | None:
    if unix_seconds is None:
        return None
    return datetime.fromtimestamp(unix_seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def token_view(record: TokenRow) -> dict[str, Any]:
    return {
        "status": "revoked" if record.revoked_at is not None else "active",
        "amount": record.amount,
        "issued_at": rfc3339(record.issued_at),
        "revoked_at": rfc3339(record.revoked_at),
        "abuse_score": record.abuse_score,
    }


async def redeem(request: web.Request) -> web.Response:
    state = request.app[STATE]
    counters = state.metrics.redeem
    try:
        body = await read_json_object(request)
        if "pid" not in body:
            raise InvalidRequest("field 'pid' is required")
        pid = PaymentId.parse(body["pid"], accept_long=state.config.api_accept_long_pids)
        result = await state.ledger.redeem(pid)
    except (InvalidRequest, InvalidPid):
        counters["invalid"].inc()
        raise
    except PaymentNotFound:
        counters["not_found"].inc()
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
    if isinstance(result, Claimed):
        counters[result.status].inc()
        return json_body(
            {"status": result.status, "service_token": result.token.hex(), "balance": result.balance}
        )
    counters["pending"].inc()
    return json_body(
        {"status": "pending", "confirmations": result.confirmations, "required": result.required},
        status=202,
    )


async def introspect(request: web.Request) -> web.Response:
    state = request.app[STATE]
    record = await lookup_token(request, state)
    return json_body(token_view(record))


async def lookup_token(request: web.Request, state: State) -> TokenRow:
    counters = state.metrics.token
    try:
        token = ServiceToken.parse(request.match_info["token"])
        record = await state.ledger.introspect(token)
    except InvalidToken:
        counters["invalid"].inc()
        raise
    except TokenNotFound:
        counters["not_found"].inc()
        raise
    except Unavailable:
        counters["unavailable"].inc()
        raise
    counters["revoked" if record.revoked_at is not None else "active"].inc()
    return record


async def live(request: web.Request) -> web.Response:
    return web.Response(body=_OK_LIVE, content_type="application/json")


async def ready(request: web.Request) -> web.Response:
    state = request.app[STATE]
    problem = state.monitor.problem(state.config.monitor_ready_max_age_secs)
    if problem is None:
        return json_body({"status": "ready"})
    return json_body({"status": "not_ready"}, status=503)


def add_public_routes(app: web.Application) -> None:
    app.router.add_post("/api/v1/redeem", redeem)
    app.router.add_get("/api/v1/token/{token}", introspect, allow_head=False)
    app.router.add_get("/health/live", live, allow_head=False)
    app.router.add_get("/health/ready", ready, allow_head=False)
