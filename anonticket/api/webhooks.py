"""Operator routes for the webhook outbox, internal listener only: list, replay, test, enable.

The service is the only writer of its database, so ``anonticket webhook …`` goes through
these routes rather than opening the file. Answers show event ids, types and outcomes,
never a body: a body names a token id, which is the operator's, but the list is for
deciding what to replay, not for reading events.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from anonticket.api.request import STATE, json_body, read_json_object, rfc3339
from anonticket.domain.errors import InvalidRequest, WebhookEventNotFound, WebhooksOff
from anonticket.runtime.state import State
from anonticket.storage.outbox import url_digest

_MAX_LISTED = 1000
_DEFAULT_LISTED = 100


def _flag(request: web.Request, name: str) -> bool:
    value = request.query.get(name, "false")
    if value not in ("true", "false", "1", "0"):
        raise InvalidRequest(f"{name} must be true or false")
    return value in ("true", "1")


def _limit(request: web.Request) -> int:
    text = request.query.get("limit", str(_DEFAULT_LISTED))
    # ASCII digits only ("²".isdigit() is true, and int() refuses it), and few of them
    # (int() refuses more than 4,300)
    if not (text.isascii() and text.isdigit() and len(text) <= 4
            and 1 <= int(text) <= _MAX_LISTED):
        raise InvalidRequest(f"limit must be a whole number from 1 to {_MAX_LISTED}")
    return int(text)


async def _status(state: State) -> dict[str, Any]:
    storage = state.ledger.storage
    queue = await storage.webhook_queue()
    disabled = await storage.get_webhook_disabled()
    url = state.config.webhook_url
    gone = disabled is not None and url is not None and disabled[1] == url_digest(url)
    oldest = queue["oldest_pending_created_at"]
    return {
        "enabled": url is not None,
        "disabled_at": rfc3339(disabled[0]) if gone and disabled is not None else None,
        "pending": queue["pending"],
        "dead": queue["dead"],
        "oldest_pending_age_seconds": None if oldest is None else max(0, int(time.time()) - oldest),
    }


async def list_events(request: web.Request) -> web.Response:
    state = request.app[STATE]
    dead_only, limit = _flag(request, "dead"), _limit(request)
    body = await _status(state)
    events = await state.ledger.storage.list_webhook_events(dead_only=dead_only, limit=limit)
    body["events"] = [
        {**event, "created_at": rfc3339(event["created_at"]),
         "next_attempt_at": rfc3339(None if event["next_attempt_at"] is None
                                    else int(event["next_attempt_at"])),
         "last_attempt_at": rfc3339(event["last_attempt_at"]),
         "delivered_at": rfc3339(event["delivered_at"])}
        for event in events
    ]
    return json_body(body)


async def replay(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body = await read_json_object(request)
    if "id" in body and body["id"] is None:  # "exactly one of the two": a null id is not absent
        raise InvalidRequest("id must be a webhook-id (a string of at most 64 characters)")
    event_id, all_dead = body.get("id"), body.get("all_dead", False)
    if all_dead is not True and all_dead is not False:
        raise InvalidRequest("all_dead must be true or false")
    if (event_id is None) == (not all_dead):
        raise InvalidRequest("give either id or all_dead: true")
    if event_id is not None and (not isinstance(event_id, str) or not 1 <= len(event_id) <= 64):
        raise InvalidRequest("id must be a webhook-id (a string of at most 64 characters)")
    replayed = await state.ledger.storage.replay_webhook_events(event_id, time.time())
    if event_id is not None and not replayed:
        raise WebhookEventNotFound()
    return json_body({"replayed": replayed})


async def send_test(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if state.webhooks is None:
        raise WebhooksOff()
    return json_body(await state.webhooks.ping())


async def enable(request: web.Request) -> web.Response:
    """Deliver again to a URL that answered 410 Gone; what waited is sent at once."""
    state = request.app[STATE]
    await state.ledger.storage.set_webhook_disabled(None, int(time.time()))
    return json_body(await _status(state))


def add_webhook_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/webhooks", list_events, allow_head=False)
    app.router.add_post("/api/v1/webhooks/replay", replay)
    app.router.add_post("/api/v1/webhooks/test", send_test)
    app.router.add_post("/api/v1/webhooks/enable", enable)
