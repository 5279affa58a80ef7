"""A standing-by instance (another one holds the leader lock) answers 503 with Retry-After.

nginx with ``proxy_next_upstream http_503 non_idempotent`` and Onionbalance's health
checks send the request on to the active instance: the 503 comes before anything is read,
so sending it on is safe even for a charge (which nginx must never send on after an error
or a timeout: the first instance may have debited). Only ``/health/live`` (the process
is alive) and ``/metrics`` (monitoring sees both instances) are still served, and
``/health/ready`` says ``not_ready`` with the reason. Nothing else runs here: a follower's
in-memory views are not kept current, so it must not answer from them, and a write of
its own (a revocation) would leave the active instance's caches stale.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from anonticket.api.request import json_body
from anonticket.domain.errors import NotActive
from anonticket.runtime.state import State

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_SERVED = frozenset({"/health/live", "/metrics"})
STANDBY_REASON = NotActive.message  # also what a write fenced out by a takeover answers


def make_standby_middleware(state: State, *, internal: bool
                            ) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Inside the error middleware (it renders the 503); ``internal`` adds the reason to
    readiness, as the internal listener's readiness always does."""
    ready = {"status": "not_ready", "reason": STANDBY_REASON} if internal else {"status": "not_ready"}

    @web.middleware
    async def standby(request: web.Request, handler: Handler) -> web.StreamResponse:
        if state.active or request.path in _SERVED:
            return await handler(request)
        if request.path == "/health/ready":
            response = json_body(ready, status=503)
            response.headers["Retry-After"] = "1"
            return response
        raise NotActive()

    return standby
