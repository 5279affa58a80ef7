"""U+0000 in any JSON string is a 400, on SQLite and on PostgreSQL (``BOTH_BACKENDS``), and
text the database cannot store never reaches a batch of debits.

PostgreSQL refuses a NUL in any text value (SQLite keeps it), so a debit memo, a revoke
reason or a webhook replay id holding ``\\u0000`` passed validation and failed in the
database: a 500, and for a debit the whole batch failed, other customers' debits included.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from anonticket.service.app import Service, start_service
from anonticket.domain.ids import PaymentId
from anonticket.domain.errors import InvalidRequest
from anonticket.storage import DebitRequest
from conftest import make_config, transfer, url
from test_hostile_input import SENT_WITH, STRING_FIELDS, VALID

BOTH_BACKENDS = True
OPERATOR = "op-bearer-" + "5a" * 12


@pytest.fixture
async def service(tmp_path: Path, database_url: str) -> AsyncIterator[Service]:
    running = await start_service(make_config(tmp_path, DATABASE_URL=database_url,
                                              API_INTERNAL_TOKEN=OPERATOR))
    yield running
    await running.aclose()


async def issue(service: Service, http: aiohttp.ClientSession, amount: int = 10_000) -> str:
    pid = PaymentId.generate()
    await service.state.ledger.credit([transfer(pid, amount)], None)
    async with http.post(url(service.public_address, "/api/v1/redeem"),
                         json={"pid": pid.hex()}) as resp:
        assert resp.status == 200
        return str((await resp.json())["service_token"])


def bearer(**headers: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {OPERATOR}", **headers}


async def send(http: aiohttp.ClientSession, service: Service, listener: str, path: str,
               body: dict[str, Any], **headers: str) -> tuple[int, dict[str, Any]]:
    address = service.public_address if listener == "public" else service.internal_address
    async with http.post(url(address, path), data=json.dumps(body).encode(),
                         headers=bearer(**headers)) as resp:
        return resp.status, await resp.json()


WHERE = STRING_FIELDS + [("internal", "/api/v1/token/{token}/revoke", "(key)")]


@pytest.mark.parametrize("where", WHERE, ids=lambda w: f"{w[0]}{w[1]}:{w[2]}")
async def test_nul_in_every_string_field_of_the_contract_is_400(
        service: Service, http: aiohttp.ClientSession, where: tuple[str, str, str]) -> None:
    listener, path, field = where
    token = await issue(service, http)
    # the strings sent together (a redeem sends a receipt or a PID, never both)
    first = field if field != "(key)" else next(
        name for at, route, name in STRING_FIELDS if (at, route) == (listener, path))
    fields: dict[str, Any] = {name: VALID[name] for name in SENT_WITH[(path, first)]}
    if field == "(key)":
        fields["a\u0000b"] = 1
    else:
        fields[field] = f"{VALID[field]}\u0000"
    if path.endswith("/debit"):
        fields["amount"] = 1
    status, body = await send(http, service, listener, path.format(token=token), fields,
                              **{"Idempotency-Key": "nul-1"})
    assert (status, body["error"]) == (400, "invalid_request"), body
    # and nothing was written: the token is as it was issued
    async with http.get(url(service.internal_address, f"/api/v1/token/{token}"),
                        headers=bearer()) as resp:
        view = await resp.json()
    assert (view["status"], view["remaining"]) == ("active", 10_000)


def test_the_contract_has_the_fields_the_review_named() -> None:
    fields = {(path, name) for _, path, name in STRING_FIELDS}
    assert {("/api/v1/token/{token}/debit", "memo"), ("/api/v1/token/{token}/revoke", "reason"),
            ("/api/v1/webhooks/replay", "id")} <= fields


async def test_a_bad_debit_in_a_concurrent_batch_fails_only_itself(
        service: Service, http: aiohttp.ClientSession) -> None:
    """One batch (the requests are all queued before its worker runs): the bad ones are
    refused before they join it, every good one is applied exactly once."""
    tokens = [bytes.fromhex(await issue(service, http)) for _ in range(3)]

    def request(token: bytes, amount: int, key: str, memo: str | None) -> DebitRequest:
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
        return DebitRequest(token, amount, key, digest, memo)

    good = [request(tokens[i % 3], 10 + i, f"good-{i}", f"memo {i}") for i in range(12)]
    bad = [request(tokens[0], 1, "bad-nul", "nul\u0000memo"),
           request(tokens[1], 1, "bad-surrogate", "lone \ud800"),
           request(tokens[2], 1, "bad-key\u0000", None)]
    requests = good[:5] + bad[:1] + good[5:9] + bad[1:] + good[9:]
    results = await asyncio.gather(*(service.state.ledger.debit(r) for r in requests),
                                   return_exceptions=True)
    by_key = {r.key: result for r, result in zip(requests, results)}
    for request in bad:
        assert isinstance(by_key[request.key], InvalidRequest), by_key[request.key]
    for request in good:
        outcome = by_key[request.key]
        assert not isinstance(outcome, BaseException), outcome
        assert outcome.status == 200 and not outcome.replayed
    for i, token in enumerate(tokens):
        record = await service.state.ledger.storage.get_token(token)
        assert record is not None
        assert record.spent == sum(r.amount for r in good if r.token == token)


async def test_a_bad_debit_among_concurrent_good_ones_over_http(
        service: Service, http: aiohttp.ClientSession) -> None:
    token = await issue(service, http)
    path = f"/api/v1/token/{token}/debit"

    async def debit(i: int, memo: str) -> tuple[int, dict[str, Any]]:
        return await send(http, service, "internal", path, {"amount": 100, "memo": memo},
                          **{"Idempotency-Key": f"k-{i}"})

    results = await asyncio.gather(*(debit(i, "fine" if i != 4 else "\u0000") for i in range(9)))
    assert [status for status, _ in results] == [200] * 4 + [400] + [200] * 4
    assert sorted(body["remaining"] for i, (_, body) in enumerate(results) if i != 4) == [
        10_000 - 100 * n for n in range(8, 0, -1)]
