"""Operator routes, only on the internal listener: metrics, revocation, details.

When ``API_INTERNAL_TOKEN`` is set every route here except health needs
``Authorization: Bearer <token>``; it is checked in constant time and before any
lookup, so a wrong guess learns nothing, not even whether a token exists.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from anonticket.api.public import add_token_routes, live, lookup_token, redeem, token_view
from anonticket.api.request import STATE, json_body, read_json_object, rfc3339
from anonticket.api.balance import add_debit_route, add_topup_route
from anonticket.api.gateway import CHECK_PATH, add_check_route
from anonticket.api.credential import add_key_routes
from anonticket.api.webhooks import add_webhook_routes
from anonticket.domain.ids import ServiceToken, token_id
from anonticket.domain.errors import InvalidRequest, MonitorDisabled, Unauthorized

log = logging.getLogger("anonticket.admin")

# package data (setup.cfg), so an installed wheel serves it too
OPENAPI_PATH = Path(__file__).resolve().parent / "openapi.yaml"
# far above any chain; keeps the height a plain SQLite integer
_MAX_HEIGHT = 2**62
_OPEN_PATHS = frozenset({"/health/live", "/health/ready"})
# routes that check a credential of their own: on the gateway check, Authorization is the
# customer's bearer token, never compared with the admin one (api/gateway.py)
_OWN_CREDENTIAL_PATHS = frozenset({CHECK_PATH})


def make_auth_middleware(expected: str) -> Callable[..., Awaitable[web.StreamResponse]]:
    # aiohttp decodes header bytes as UTF-8 with surrogateescape, and so does Python an
    # environment variable: encoding back the same way gives the bytes as sent, and a
    # header that is not UTF-8 (``Bearer \xff\xfe``) is a wrong token, not a 500
    expected_header = f"Bearer {expected}".encode("utf-8", "surrogateescape")

    @web.middleware
    async def require_bearer(request: web.Request, handler):  # type: ignore[no-untyped-def]
        path = request.path
        if path not in _OPEN_PATHS and path not in _OWN_CREDENTIAL_PATHS:
            given = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
            if not hmac.compare_digest(given, expected_header):
                raise Unauthorized()
        return await handler(request)

    return require_bearer


async def metrics(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.metrics.negative_cache_entries.set(len(state.ledger.negative_cache))
    response = web.Response(body=generate_latest(state.metrics.registry))
    response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    response.charset = "utf-8"
    return response


async def inspect_token(request: web.Request) -> web.Response:
    """Introspection plus what only the operator should see: the reason, the audit trail,
    what was credited and spent, and the most recent debits."""
    state = request.app[STATE]
    record = await lookup_token(request, state)
    storage = state.ledger.storage
    audit = await storage.list_audit(record.token)
    debits = await storage.list_debits(record.token)
    view = token_view(record)
    view["token_id"] = token_id(record.token)  # what webhooks name this token by
    view["revoke_reason"] = record.revoke_reason
    view["credited"] = record.amount
    view["spent"] = record.spent
    view["debits"] = [
        {"debit_id": entry["debit_id"], "amount": entry["amount"], "memo": entry["memo"],
         "at": rfc3339(entry["at"])}
        for entry in debits
    ]
    view["audit"] = [
        {"at": rfc3339(entry["at"]), "action": entry["action"], "reason": entry["reason"],
         "abuse_score": entry["abuse_score"]}
        for entry in audit
    ]
    return json_body(view)


async def revoke(request: web.Request) -> web.Response:
    state = request.app[STATE]
    token = ServiceToken.parse(request.match_info["token"])
    body = await read_json_object(request, allow_empty=True)
    reason = body.get("reason")
    if reason is not None and (not isinstance(reason, str) or len(reason) > 256):
        raise InvalidRequest("reason must be a string of at most 256 characters")
    score = body.get("abuse_score")
    if score is not None and (type(score) is not int or score < 0 or score > 2**62):
        raise InvalidRequest("abuse_score must be a non-negative integer")
    record = await state.ledger.revoke(token, reason, score)
    state.metrics.revocations.inc()
    view = token_view(record)
    view["token_id"] = token_id(record.token)
    view["revoke_reason"] = record.revoke_reason
    return json_body(view)


async def rescan(request: web.Request) -> web.Response:
    """Ask the monitor to re-read the wallet from ``from_height`` (a wallet restored with too
    high a restore height, then rescanned). Only recorded here: the monitor lowers its
    cursor before its next poll, so nothing races the poll that may be running now."""
    state = request.app[STATE]
    body = await read_json_object(request)
    height = body.get("from_height")
    if type(height) is not int or not 0 <= height <= _MAX_HEIGHT:
        raise InvalidRequest("from_height must be a block height, an integer from 0 to 2^62")
    if not state.monitor.enabled:
        raise MonitorDisabled()
    scheduled = state.monitor.request_rescan(height)
    log.info("rescan from height %d requested; the monitor applies it before its next poll",
             scheduled)
    return json_body({"status": "scheduled", "from_height": scheduled,
                      "scanned_height": state.monitor.scanned_height}, status=202)


async def ready_details(request: web.Request) -> web.Response:
    state = request.app[STATE]
    monitor = state.monitor
    problem = monitor.problem(state.config.monitor_ready_max_age_secs)
    age = None
    if monitor.last_success is not None:
        age = round(time.monotonic() - monitor.last_success, 3)
    body = {
        "status": "ready" if problem is None else "not_ready",
        "reason": problem,
        "monitor": {
            "enabled": monitor.enabled,
            "wallet_height": monitor.wallet_height,
            "scanned_height": monitor.scanned_height,
            "seconds_since_success": age,
            "last_error": monitor.last_error,
            "rescan_from_height": monitor.rescan_from,
        },
    }
    return json_body(body, status=200 if problem is None else 503)


async def stats(request: web.Request) -> web.Response:
    state = request.app[STATE]
    counts = await state.ledger.storage.get_stats()
    counts["wallet_height"] = state.monitor.wallet_height
    counts["pending_pids"] = len(state.ledger.pending_view)
    counts["rescan_from_height"] = state.monitor.rescan_from
    counts["subaddresses_unpaid"] = await state.ledger.storage.count_unpaid_subaddresses(int(time.time()))
    counts["subaddress_highest_index"] = state.monitor.subaddress_highest
    counts["subaddress_known_to_wallet"] = state.monitor.subaddress_known
    counts["unallocated_subaddress_transfers"] = int(
        state.metrics.transfer["unallocated_subaddress"]._value.get())
    return json_body(counts)


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=OPENAPI_PATH.read_bytes(), content_type="application/yaml")


def add_internal_routes(app: web.Application) -> None:
    # aiohttp tries the routes under one prefix (/api/v1/token) in the order they were
    # added, a regex each; none of them overlaps another, so the hot one goes first
    add_debit_route(app)
    app.router.add_post("/api/v1/redeem", redeem)
    add_token_routes(app, inspect_token)
    app.router.add_post("/api/v1/token/{token}/revoke", revoke)
    add_topup_route(app)
    add_check_route(app)
    app.router.add_get("/api/v1/stats", stats, allow_head=False)
    app.router.add_post("/api/v1/monitor/rescan", rescan)
    app.router.add_get("/health/live", live, allow_head=False)
    app.router.add_get("/health/ready", ready_details, allow_head=False)
    app.router.add_get("/metrics", metrics, allow_head=False)
    app.router.add_get("/docs/openapi.yaml", openapi, allow_head=False)
    add_webhook_routes(app)
    add_key_routes(app)
