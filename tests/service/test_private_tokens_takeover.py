"""Two real instances on one PostgreSQL database with Privacy Pass units: the standby loads the
issuer keys the active one made when it takes over (the directory is the same, tokens the first
one signed redeem there, it issues with the same key), and the spent-set is shared (a token
spent at the first instance is refused at the second, which spends the others once)."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp

from anonticket.crypto.privacy_pass import TokenResponse, create_token_request, finalize_token
from anonticket.crypto.privacy_pass_http import IssuerDirectory, b64url_decode, format_authorization
from anonticket.domain.ids import PaymentId
from anonticket.service.app import Service, start_service
from conftest import make_config, transfer, url

DIRECTORY = "/.well-known/private-token-issuer-directory"


async def until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def fetch(http: aiohttp.ClientSession, service: Service, token: str, count: int) -> list[str]:
    async with http.get(url(service.public_address, DIRECTORY)) as resp:
        document = json.loads(await resp.read())
    key = IssuerDirectory.from_json(document).token_keys[0].token_key
    challenge = b64url_decode(document["anonticket-challenge"])
    pending = [create_token_request(challenge, key) for _ in range(count)]
    async with http.post(url(service.public_address, "/api/v1/private-token"),
                         data=b"".join(r.encode() for r, _ in pending),
                         headers={"Authorization": f"Bearer {token}",
                                  "Idempotency-Key": secrets.token_hex(8),
                                  "Content-Type": "application/private-token-request"}) as resp:
        assert resp.status == 200
        answer = await resp.read()
    return [format_authorization(finalize_token(state, TokenResponse(answer[i * 256:(i + 1) * 256])))
            for i, (_, state) in enumerate(pending)]


async def check(http: aiohttp.ClientSession, service: Service, header: str) -> tuple[int, str]:
    async with http.get(url(service.internal_address, "/api/v1/check"),
                        headers={"Authorization": header}) as resp:
        return resp.status, resp.headers.get("X-Anonticket-Reason", "")


async def test_issuer_keys_and_the_spent_set_survive_a_takeover(tmp_path: Path, pg_url: str) -> None:
    services: list[Service] = []
    try:
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            services.append(await start_service(make_config(
                tmp_path / name, DATABASE_URL=pg_url, DATABASE_LEADER_CHECK_SECS="0.2",
                PRIVATE_TOKEN_UNITS="call=request:1")))
        first, second = services
        assert (first.state.active, second.state.active) == (True, False)
        async with aiohttp.ClientSession(trust_env=False) as http:
            pid = PaymentId.generate()
            await first.state.ledger.credit([transfer(pid, 5000)], 10)
            token = (await first.state.ledger.redeem(pid)).token.hex()  # type: ignore[union-attr]
            spent, kept = await fetch(http, first, token, 2)
            assert await check(http, first, spent) == (200, "")
            async with http.get(url(first.public_address, DIRECTORY)) as resp:
                document = json.loads(await resp.read())
            assert (await check(http, second, kept))[0] == 503  # a standby checks nothing

            await first.aclose()  # the active one stops; the other takes over
            services.remove(first)
            await until(lambda: second.state.active)
            async with http.get(url(second.public_address, DIRECTORY)) as resp:
                assert json.loads(await resp.read()) == document
            assert await check(http, second, spent) == (401, "private_token_spent")
            assert await check(http, second, kept) == (200, "")
            assert await check(http, second, kept) == (401, "private_token_spent")
            # and it issues with the same key
            (again,) = await fetch(http, second, token, 1)
            assert await check(http, second, again) == (200, "")
    finally:
        for service in services:
            await service.aclose()
