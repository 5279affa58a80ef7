"""Top-up (public) and debit (internal) over real sockets: the HTTP contract, the
idempotency-key semantics, and the views that show balances and expiry; on SQLite and on
PostgreSQL (``BOTH_BACKENDS``)."""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from anonticket.service.app import Service, start_service
from anonticket.domain.ids import PaymentId
from conftest import make_config, url
from test_api import credit, get, post

BOTH_BACKENDS = True
DAY = 86400


@pytest.fixture
async def priced(tmp_path: Path, database_url: str) -> Any:
    """A service selling one day for 10000 piconero (the minimum payment is 1000)."""
    running = await start_service(make_config(tmp_path, DATABASE_URL=database_url,
                                              ACCESS_PRICE_PER_DAY="10000"))
    yield running
    await running.aclose()


async def issue(service: Service, http: aiohttp.ClientSession, amount: int) -> str:
    pid = PaymentId.generate().hex()
    await credit(service, pid, amount)
    status, body = await post(http, service.public_address, "/api/v1/redeem", {"pid": pid})
    assert (status, body["status"]) == (200, "success")
    return str(body["service_token"])


async def debit(http: aiohttp.ClientSession, service: Service, token: str, body: Any,
                key: str | None = "key-1") -> tuple[int, dict[str, Any], aiohttp.typedefs.LooseHeaders]:
    headers = {} if key is None else {"Idempotency-Key": key}
    async with http.post(url(service.internal_address, f"/api/v1/token/{token}/debit"),
                         json=body, headers=headers) as resp:
        return resp.status, await resp.json(), resp.headers


async def test_redeem_and_introspection_show_expiry_and_remaining(
        priced: Service, http: aiohttp.ClientSession) -> None:
    pid = PaymentId.generate().hex()
    await credit(priced, pid, 5000)
    status, body = await post(http, priced.public_address, "/api/v1/redeem", {"pid": pid})
    assert (status, body["balance"], body["remaining"]) == (200, 5000, 5000)
    assert body["expires_at"].endswith("Z")
    status, info = await get(http, priced.public_address, f"/api/v1/token/{body['service_token']}")
    assert (status, info["status"], info["remaining"], info["expires_at"]) == (
        200, "active", 5000, body["expires_at"])


@pytest.mark.sqlite_only  # edits the file by hand
async def test_expired_token_introspects_as_expired(priced: Service, http: aiohttp.ClientSession) -> None:
    token = await issue(priced, http, 5000)
    priced.state.ledger.clock = lambda: 2**40  # far in the future: the half day is over
    # the answer's status is decided against the wall clock, so move the expiry instead
    record = priced.state.ledger.cached_token(bytes.fromhex(token))
    assert record is not None and record.expires_at is not None
    with closing(sqlite3.connect(priced.state.config.database_url)) as conn:
        conn.execute("UPDATE service_tokens SET expires_at = 1 WHERE token = ?", (bytes.fromhex(token),))
        conn.commit()
    priced.state.ledger._records.pop(bytes.fromhex(token))  # as after a restart
    status, info = await get(http, priced.public_address, f"/api/v1/token/{token}")
    assert (status, info["status"]) == (200, "expired")


async def test_topup_moves_a_new_pid_onto_the_token(priced: Service, http: aiohttp.ClientSession) -> None:
    token = await issue(priced, http, 5000)
    extra = PaymentId.generate().hex()
    await credit(priced, extra, 20_000)
    path = f"/api/v1/token/{token}/topup"
    status, body = await post(http, priced.public_address, path, {"pid": extra})
    assert (status, body["status"], body["credited"], body["balance"], body["remaining"]) == (
        200, "topped_up", 20_000, 25_000, 25_000)
    status, again = await post(http, priced.public_address, path, {"pid": extra})
    assert (status, again) == (200, body)  # a retry: the same answer, credited once
    status, info = await get(http, priced.public_address, f"/api/v1/token/{token}")
    assert (info["amount"], info["expires_at"]) == (25_000, body["expires_at"])


@pytest.mark.parametrize(("setup", "status", "code"), [
    ("unknown", 404, "payment_not_found"),
    ("underpaid", 402, "underpaid"),
    ("claimed", 409, "pid_already_claimed"),
    ("bad_pid", 400, "invalid_pid"),
    ("no_pid", 400, "invalid_request"),
])
async def test_topup_refusals_change_nothing(service: Service, http: aiohttp.ClientSession,
                                             setup: str, status: int, code: str) -> None:
    token = await issue(service, http, 5000)
    pid = PaymentId.generate().hex()
    body: dict[str, Any] = {"pid": pid}
    if setup == "underpaid":
        await credit(service, pid, 10)
    elif setup == "claimed":
        await issue(service, http, 5000)
        await credit(service, pid, 5000)
        await post(http, service.public_address, "/api/v1/redeem", {"pid": pid})
    elif setup == "bad_pid":
        body = {"pid": "zz" + pid[2:]}
    elif setup == "no_pid":
        body = {}
    got, answer = await post(http, service.public_address, f"/api/v1/token/{token}/topup", body)
    assert (got, answer["error"]) == (status, code)
    assert pid not in str(answer)
    _, info = await get(http, service.public_address, f"/api/v1/token/{token}")
    assert info["amount"] == 5000


async def test_a_topup_with_an_unknown_pid_is_answered_from_memory(
        service: Service, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch) -> None:
    """As redeem is: otherwise anyone holding one token could queue a write transaction
    per random PID ahead of the operator's debits."""
    token = await issue(service, http, 5000)
    path = f"/api/v1/token/{token}/topup"
    storage = service.state.ledger.storage
    real, transactions = storage.topup_token, []

    async def counted(*args: Any, **kwargs: Any) -> Any:
        transactions.append(args)
        return await real(*args, **kwargs)

    monkeypatch.setattr(storage, "topup_token", counted)
    for _ in range(50):
        status, body = await post(http, service.public_address, path,
                                  {"pid": PaymentId.generate().hex()})
        assert (status, body["error"]) == (404, "payment_not_found")
    waiting = PaymentId.generate()
    service.state.ledger.set_pending({waiting.raw: 2})  # seen in the pool, not credited
    status, body = await post(http, service.public_address, path, {"pid": waiting.hex()})
    assert (status, body["status"], body["confirmations"]) == (202, "pending", 2)
    assert transactions == []
    paid = PaymentId.generate().hex()
    await credit(service, paid, 2000)
    status, body = await post(http, service.public_address, path, {"pid": paid})
    assert (status, body["status"], body["balance"]) == (200, "topped_up", 7000)
    assert len(transactions) == 1
    async with http.get(url(service.internal_address, "/metrics")) as resp:
        text = await resp.text()
    assert 'anonticket_topup_requests_total{outcome="not_found"} 50.0' in text


async def test_topup_of_an_unknown_token_is_404(service: Service, http: aiohttp.ClientSession) -> None:
    status, body = await post(http, service.public_address, f"/api/v1/token/{'ab' * 32}/topup",
                              {"pid": PaymentId.generate().hex()})
    assert (status, body["error"]) == (404, "token_not_found")


async def test_debit_success_replay_and_reuse(service: Service, http: aiohttp.ClientSession) -> None:
    token = await issue(service, http, 5000)
    status, first, headers = await debit(http, service, token, {"amount": 1200, "memo": "GET /file"})
    assert (status, first["amount"], first["remaining"], first["expires_at"]) == (200, 1200, 3800, None)
    assert "Idempotent-Replayed" not in headers
    status, replay, headers = await debit(http, service, token, {"amount": 1200, "memo": "GET /file"})
    assert (status, replay, headers.get("Idempotent-Replayed")) == (200, first, "true")
    status, reuse, _ = await debit(http, service, token, {"amount": 1, "memo": "GET /file"})
    assert (status, reuse["error"]) == (422, "idempotency_key_reused")
    async with http.get(url(service.internal_address, f"/api/v1/token/{token}")) as resp:
        info = await resp.json()
    assert (info["spent"], info["credited"], info["remaining"]) == (1200, 5000, 3800)
    assert [(d["debit_id"], d["amount"], d["memo"]) for d in info["debits"]] == [
        (first["debit_id"], 1200, "GET /file")]


@pytest.mark.parametrize(("body", "key", "status", "code"), [
    ({"amount": 1}, None, 400, "idempotency_key_required"),
    ({"amount": 1}, "", 400, "invalid_request"),
    ({"amount": 1}, "k" * 129, 400, "invalid_request"),
    ({"amount": 1}, "has space", 400, "invalid_request"),
    ({"amount": 0}, "k", 400, "invalid_request"),
    ({"amount": -5}, "k", 400, "invalid_request"),
    ({"amount": 1.5}, "k", 400, "invalid_request"),
    ({"amount": True}, "k", 400, "invalid_request"),
    ({"amount": "1"}, "k", 400, "invalid_request"),
    ({"amount": 1, "memo": "m" * 129}, "k", 400, "invalid_request"),
    ({"amount": 1, "memo": 5}, "k", 400, "invalid_request"),
    ({"amount": 10_000}, "k", 402, "insufficient_balance"),
])
async def test_debit_refusals(service: Service, http: aiohttp.ClientSession, body: Any,
                              key: str | None, status: int, code: str) -> None:
    token = await issue(service, http, 5000)
    got, answer, _ = await debit(http, service, token, body, key)
    assert (got, answer["error"]) == (status, code)
    async with http.get(url(service.internal_address, f"/api/v1/token/{token}")) as resp:
        assert (await resp.json())["spent"] == 0


async def test_debit_is_internal_only_and_answers_404_for_unknown(
        service: Service, http: aiohttp.ClientSession) -> None:
    token = await issue(service, http, 5000)
    status, body = await post(http, service.public_address, f"/api/v1/token/{token}/debit",
                              {"amount": 1}, headers={"Idempotency-Key": "k"})
    assert (status, body["error"]) == (404, "not_found")
    status, body, _ = await debit(http, service, "cd" * 32, {"amount": 1})
    assert (status, body["error"]) == (404, "token_not_found")


async def test_many_clients_one_token_sum_of_successes_is_the_balance_drop(
        service: Service, http: aiohttp.ClientSession) -> None:
    token = await issue(service, http, 50_000)
    results = await asyncio.gather(*(debit(http, service, token, {"amount": 700}, key=f"c{i}")
                                     for i in range(100)))
    granted = [body for status, body, _ in results if status == 200]
    assert {status for status, _, _ in results} == {200, 402}
    assert len(granted) == 50_000 // 700
    assert len({body["debit_id"] for body in granted}) == len(granted)
    async with http.get(url(service.internal_address, f"/api/v1/token/{token}")) as resp:
        info = await resp.json()
    assert info["spent"] == 700 * len(granted) and info["remaining"] >= 0
    stats = await get(http, service.internal_address, "/api/v1/stats")
    assert (stats[1]["debits"], stats[1]["debited_piconero"]) == (len(granted), info["spent"])
