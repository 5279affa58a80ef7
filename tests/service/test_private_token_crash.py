"""Privacy Pass redemption is exactly once across SIGKILL: the real service (``bin/anonticket
serve``) redeems tokens, each presented by three clients at once, and is killed at a random
moment; after a restart on the same file every token is presented again. No token is ever
accepted twice, one accepted before the kill is refused after it (the spend was durable
before the 200), and every token ends in the spent-set exactly once (a spend committed
whose answer the kill swallowed is refused after the restart: the customer loses that
token, never the operator a second acceptance)."""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import sqlite3
import time
from collections import Counter
from contextlib import closing
from pathlib import Path

import aiohttp

import pytest

from anonticket.crypto.privacy_pass import TokenResponse, create_token_request, finalize_token
from anonticket.crypto.privacy_pass_http import IssuerDirectory, b64url_decode, format_authorization
from anonticket.domain.ids import PaymentId, Transfer
from anonticket.storage import Storage
from crash_helpers import ServiceProcess, service_env

pytestmark = pytest.mark.slow  # SIGKILL rounds: the full suite's, not the quick tier's

TOKENS = 120
ROUNDS = 3


async def paid_token(database: Path) -> str:
    store = await Storage.open(database)
    try:
        pid = PaymentId.generate()
        await store.credit_transfers([Transfer(os.urandom(32), pid, 1_000_000, 10)], 10,
                                     int(time.time()))
        rows = await store.claim_payments([pid.raw], 1000, int(time.time()))
        return rows[pid.raw].token.hex()  # type: ignore[union-attr]
    finally:
        await store.close()


async def fetch(http: aiohttp.ClientSession, public: str, token: str, count: int) -> list[str]:
    async with http.get(f"http://{public}/.well-known/private-token-issuer-directory") as resp:
        document = await resp.json(content_type=None)
    key = IssuerDirectory.from_json(document).token_keys[0].token_key
    challenge = b64url_decode(document["anonticket-challenge"])
    found: list[str] = []
    while len(found) < count:
        pending = [create_token_request(challenge, key) for _ in range(min(32, count - len(found)))]
        async with http.post(f"http://{public}/api/v1/private-token",
                             data=b"".join(r.encode() for r, _ in pending),
                             headers={"Authorization": f"Bearer {token}",
                                      "Idempotency-Key": secrets.token_hex(8),
                                      "Content-Type": "application/private-token-request"}) as resp:
            assert resp.status == 200, await resp.text()
            answer = await resp.read()
        found += [format_authorization(finalize_token(state, TokenResponse(answer[i * 256:(i + 1) * 256])))
                  for i, (_, state) in enumerate(pending)]
    return found


async def present(http: aiohttp.ClientSession, internal: str, header: str) -> int | None:
    try:
        async with http.get(f"http://{internal}/api/v1/check",
                            headers={"Authorization": header},
                            timeout=aiohttp.ClientTimeout(total=30)) as resp:
            return resp.status
    except (aiohttp.ClientError, asyncio.TimeoutError):
        return None  # the kill: no answer


def spent_rows(database: Path) -> int:
    with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)) as db:
        return db.execute("SELECT count(*) FROM private_token_spent").fetchone()[0]


async def test_a_token_is_accepted_once_across_sigkill(tmp_path: Path) -> None:
    database = tmp_path / "anonticket.db"
    env = service_env(database, MONITOR_ENABLED="false", PRIVATE_TOKEN_UNITS="call=request:1")
    token = await paid_token(database)  # before the start: the service loads its tokens then
    service = ServiceProcess(env)
    await service.start(60)
    rng = random.Random(os.environ.get("ANONTICKET_CRASH_SEED"))
    accepted: Counter[str] = Counter()
    async with aiohttp.ClientSession(trust_env=False) as http:
        for _ in range(ROUNDS):
            headers = await fetch(http, service.public, token, TOKENS)
            before: Counter[str] = Counter()

            async def client(order: list[str]) -> None:
                for header in order:
                    if await present(http, service.internal, header) == 200:
                        before[header] += 1

            orders = [rng.sample(headers, len(headers)) for _ in range(3)]
            tasks = [asyncio.create_task(client(order)) for order in orders]
            await asyncio.sleep(rng.uniform(0.05, 0.6))
            await service.kill()
            await asyncio.gather(*tasks)
            await service.start(60)
            after: Counter[str] = Counter()
            for header in headers:
                if await present(http, service.internal, header) == 200:
                    after[header] += 1
            for header in headers:
                assert before[header] + after[header] <= 1
                if before[header]:
                    assert after[header] == 0
                accepted[header] += before[header] + after[header]
            assert sum(before.values()) + sum(after.values()) >= len(headers) - 3
    assert await service.stop() == 0
    assert max(accepted.values()) == 1
    assert spent_rows(database) == ROUNDS * TOKENS
