"""Two real instances on one PostgreSQL database: the keys the active one made (and rotated)
are the ones the other signs and verifies with once it takes over, and a revocation the first
one made is refused by the second at once (read when it takes over)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp

from anonticket.domain.ids import PaymentId
from anonticket.service.app import Service, start_service
from conftest import make_config, transfer, url

KEYS = "/.well-known/anonticket-credential-keys"


async def until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def test_keys_and_revocations_survive_a_takeover(tmp_path: Path, pg_url: str) -> None:
    services: list[Service] = []
    try:
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            services.append(await start_service(make_config(
                tmp_path / name, DATABASE_URL=pg_url, DATABASE_LEADER_CHECK_SECS="0.2")))
        first, second = services
        assert (first.state.active, second.state.active) == (True, False)
        async with aiohttp.ClientSession() as http:
            tokens = []
            for _ in range(2):
                pid = PaymentId.generate()
                await first.state.ledger.credit([transfer(pid, 5000)], 10)
                tokens.append((await first.state.ledger.redeem(pid)).token.hex())  # type: ignore[union-attr]
            kept, revoked = tokens

            async def credential(service: Service, token: str) -> str:
                async with http.post(url(service.public_address, "/api/v1/credential"),
                                     headers={"Authorization": f"Bearer {token}"}) as resp:
                    assert resp.status == 200
                    return (await resp.json())["credential"]

            async def check(service: Service, credential: str) -> tuple[int, str]:
                async with http.get(url(service.internal_address, "/api/v1/check"),
                                    headers={"Authorization": f"Bearer {credential}"}) as resp:
                    return resp.status, resp.headers.get("X-Anonticket-Reason", "")

            old = await credential(first, kept)
            async with http.post(url(first.internal_address, "/api/v1/keys/rotate"),
                                 json={"immediately": True}) as resp:
                assert resp.status == 200
            new, doomed = await credential(first, kept), await credential(first, revoked)
            async with http.get(url(first.public_address, KEYS)) as resp:
                document = await resp.json()
            assert len(document["keys"]) == 2
            async with http.post(url(first.internal_address, f"/api/v1/token/{revoked}/revoke"),
                                 json={"reason": "abuse"}) as resp:
                assert resp.status == 200
            # the standby neither publishes nor checks: the proxy asks the active one
            async with http.get(url(second.public_address, KEYS)) as resp:
                assert resp.status == 503
            assert (await check(second, new))[0] == 503

            await first.aclose()  # the active one stops; the other takes over
            services.remove(first)
            await until(lambda: second.state.active)
            async with http.get(url(second.public_address, KEYS)) as resp:
                assert await resp.json() == document
            assert await check(second, old) == (200, "")
            assert await check(second, new) == (200, "")
            assert await check(second, doomed) == (403, "credential_revoked")
            # it signs with the key the first one rotated in
            assert (await credential(second, kept)).split(".")[3] == new.split(".")[3]
            # and a rotation there is what every instance uses next
            async with http.post(url(second.internal_address, "/api/v1/keys/rotate"),
                                 json={"immediately": True}) as resp:
                rotated = (await resp.json())["rotated"]["key_id"]
        stored = await second.state.ledger.storage.list_signing_keys()
        assert rotated in [row.key_id for row in stored] and len(stored) == 3
    finally:
        for service in services:
            await service.aclose()
