"""A real webhook receiver on loopback (an aiohttp app on port 0) that verifies every
delivery with the ``standardwebhooks`` package and can be told to misbehave.

    async with Receiver(secret) as receiver:     # receiver.url for WEBHOOK_URL
        receiver.answer(500, times=2)            # the next two deliveries get a 500
        await receiver.wait_for(lambda r: len(r.accepted) >= 3, "three deliveries")

Every request is kept (``requests``); ``accepted`` holds those answered 2xx, whose
signature verified. Waiting is on a condition notified per request, not on sleeps.
"""

from __future__ import annotations

import asyncio
import collections
import json
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError


@dataclass
class Delivery:
    headers: dict[str, str]
    body: bytes
    at: float  # time.time() when it arrived
    status: int = 0  # what the receiver answered
    verified: bool = False

    @property
    def id(self) -> str:
        return self.headers["webhook-id"]

    @property
    def payload(self) -> dict[str, Any]:
        return json.loads(self.body)


@dataclass
class Behaviour:
    status: int = 204
    headers: dict[str, str] = field(default_factory=dict)
    hang: float = 0.0  # seconds to wait before answering


class Receiver:
    def __init__(self, secret: str, *, port: int = 0) -> None:
        self.secret = secret
        self.requests: list[Delivery] = []
        self.redirect_hits = 0
        self._plan: collections.deque[Behaviour] = collections.deque()
        self.default = Behaviour()
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self._port = port
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    @property
    def accepted(self) -> list[Delivery]:
        return [d for d in self.requests if 200 <= d.status < 300]

    def answer(self, status: int, times: int = 1, headers: dict[str, str] | None = None,
               hang: float = 0.0) -> None:
        for _ in range(times):
            self._plan.append(Behaviour(status, headers or {}, hang))

    async def _hook(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        delivery = Delivery({k.lower(): v for k, v in request.headers.items()}, body, time.time())
        try:
            Webhook(self.secret).verify(body, delivery.headers, json_parse=False)
            delivery.verified = True
        except WebhookVerificationError:
            pass
        behaviour = self._plan.popleft() if self._plan else self.default
        if not delivery.verified:
            behaviour = Behaviour(400)
        self.requests.append(delivery)
        async with self._changed:
            self._changed.notify_all()
        if behaviour.hang:
            await asyncio.sleep(behaviour.hang)  # the receiver's own slowness, by design
        delivery.status = behaviour.status
        async with self._changed:
            self._changed.notify_all()
        return web.Response(status=behaviour.status, headers=behaviour.headers)

    async def _elsewhere(self, request: web.Request) -> web.Response:
        self.redirect_hits += 1  # a redirect target: the sender must never come here
        return web.Response(status=204)

    async def wait_for(self, check: Callable[[Receiver], bool], what: str,
                       timeout: float = 10.0) -> None:
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: check(self)), timeout)
            except TimeoutError:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}; "
                                     f"{len(self.requests)} requests so far") from None

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        app.router.add_route("*", "/elsewhere", self._elsewhere)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self._port))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Receiver:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
