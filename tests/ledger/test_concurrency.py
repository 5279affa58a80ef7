"""Races: exactly one winner per PID, amounts that stay exact while credits race redeems,
and writes cancelled at any await that leave all or nothing behind.

Every test fires its coroutines with ``asyncio.gather(..., return_exceptions=True)`` so
an unexpected exception is counted, not hidden behind the first one. They run on SQLite
and on PostgreSQL (``BOTH_BACKENDS``).
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from anonticket.service.app import Service
from anonticket.ledger.cache import TtlSet
from anonticket.domain.ids import PaymentId, ServiceToken, derive_service_token
from anonticket.domain.errors import Underpaid
from anonticket.ledger.views import Claimed, Ledger
from anonticket.storage import Storage
from conftest import claim_summary, transfer, url

BOTH_BACKENDS = True
N = 50
MIN = 1000


@pytest.fixture
async def ledger(storage: Storage) -> AsyncIterator[Ledger]:
    ledger = Ledger(storage, min_payment=MIN, min_confirmations=10,
                    negative_cache=TtlSet(1000, 60.0), plain_pids="allow")
    await ledger.load()
    yield ledger


def no_exceptions(results: list[Any]) -> None:
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors


def assert_one_winner(results: list[Any], token: bytes, balance: int) -> None:
    no_exceptions(results)
    statuses = Counter(r.status for r in results)
    assert statuses == {"success": 1, "already_claimed": len(results) - 1}, statuses
    assert {(r.token, r.balance) for r in results} == {(token, balance)}


async def test_concurrent_redeems_of_one_pid_through_the_ledger(ledger: Ledger) -> None:
    pid = PaymentId.generate()
    t = transfer(pid, 5000)
    await ledger.credit([t], None)
    results = await asyncio.gather(*(ledger.redeem(pid) for _ in range(N)), return_exceptions=True)
    assert_one_winner(results, derive_service_token(pid, t.txid.hex()).raw, 5000)


async def test_concurrent_redeems_of_one_pid_over_http(service: Service, http: aiohttp.ClientSession) -> None:
    pid = PaymentId.generate()
    t = transfer(pid, 5000)
    await service.state.ledger.credit([t], None)

    async def redeem() -> tuple[int, dict[str, Any]]:
        async with http.post(url(service.public_address, "/api/v1/redeem"), json={"pid": pid.hex()}) as resp:
            return resp.status, await resp.json()

    results = await asyncio.gather(*(redeem() for _ in range(N)), return_exceptions=True)
    no_exceptions(results)
    assert {status for status, _ in results} == {200}
    bodies = [body for _, body in results]
    assert Counter(b["status"] for b in bodies) == {"success": 1, "already_claimed": N - 1}
    expected = derive_service_token(pid, t.txid.hex()).hex()
    assert {(b["service_token"], b["balance"]) for b in bodies} == {(expected, 5000)}
    async with http.get(url(service.internal_address, "/metrics")) as resp:
        text = await resp.text()
    assert 'anonticket_redeem_requests_total{outcome="success"} 1.0' in text
    assert f'anonticket_redeem_requests_total{{outcome="already_claimed"}} {N - 1}.0' in text


async def test_many_pids_concurrently_each_have_one_winner(ledger: Ledger) -> None:
    pids = [PaymentId.generate() for _ in range(40)]
    transfers = {p.raw: transfer(p, 2000 + i) for i, p in enumerate(pids)}
    await ledger.credit(transfers.values(), None)
    calls = [p for p in pids for _ in range(8)]
    random.Random(7).shuffle(calls)
    results = await asyncio.gather(*(ledger.redeem(p) for p in calls), return_exceptions=True)
    no_exceptions(results)
    by_pid: dict[bytes, list[Claimed]] = {}
    for pid, result in zip(calls, results):
        by_pid.setdefault(pid.raw, []).append(result)
    assert len(by_pid) == len(pids)
    for i, pid in enumerate(pids):
        token = derive_service_token(pid, transfers[pid.raw].txid.hex()).raw
        assert_one_winner(by_pid[pid.raw], token, 2000 + i)
    assert (await ledger.storage.get_stats())["tokens_active"] == len(pids)


async def test_redeems_racing_top_ups_keep_amounts_exact(ledger: Ledger) -> None:
    pid = PaymentId.generate()
    first = transfer(pid, 5000, height=100)
    await ledger.credit([first], None)
    top_ups = [transfer(pid, 100 + i, height=200 + i) for i in range(20)]
    # each top-up is also re-ingested by a second, overlapping "poll": counted once
    credits = [ledger.credit([t], None) for t in top_ups] + [ledger.credit(top_ups[::2], None)]
    redeems = [ledger.redeem(pid) for _ in range(N)]
    mixed: list[Any] = credits + redeems
    random.Random(3).shuffle(mixed)
    results = await asyncio.gather(*mixed, return_exceptions=True)
    no_exceptions(results)
    final = 5000 + sum(t.amount for t in top_ups)
    token = derive_service_token(pid, first.txid.hex()).raw
    seen = [r for r in results if isinstance(r, Claimed)]
    assert Counter(r.status for r in seen) == {"success": 1, "already_claimed": N - 1}
    assert {r.token for r in seen} == {token}
    # a balance is whatever was committed when that redeem was answered: never beyond the total
    assert all(5000 <= r.balance <= final for r in seen)
    # and afterwards every view agrees on the exact total
    assert claim_summary(await ledger.redeem(pid)) == ("already_claimed", token, final)
    assert (await ledger.introspect(ServiceToken(token))).amount == final
    stored = await ledger.storage.get_token(token)
    assert stored is not None and stored.amount == final
    stats = await ledger.storage.get_stats()
    assert (stats["transfers"], stats["credited_piconero"]) == (21, final)


async def test_claims_racing_the_credit_that_reaches_the_minimum(ledger: Ledger) -> None:
    pid = PaymentId.generate()
    await ledger.credit([transfer(pid, 600, 100)], None)
    second = transfer(pid, 600, 101)
    calls: list[Any] = [ledger.redeem(pid) for _ in range(N)]
    calls.insert(N // 2, ledger.credit([second], None))
    results = await asyncio.gather(*calls, return_exceptions=True)
    redeems = [r for r in results if not hasattr(r, "credited_pids")]
    assert all(isinstance(r, Claimed | Underpaid) for r in redeems), redeems
    wins = [r for r in redeems if isinstance(r, Claimed) and r.status == "success"]
    underpaid = [r for r in redeems if isinstance(r, Underpaid)]
    assert all(u.extra == {"balance": 600, "minimum": MIN} for u in underpaid)
    assert all(r.balance == 1200 for r in redeems if isinstance(r, Claimed))
    after = await ledger.redeem(pid)
    assert isinstance(after, Claimed) and after.balance == 1200
    assert len(wins) + (after.status == "success") == 1


async def test_concurrent_revocations_agree(ledger: Ledger) -> None:
    pid = PaymentId.generate()
    await ledger.credit([transfer(pid, 5000)], None)
    token = ServiceToken((await ledger.redeem(pid)).token)  # type: ignore[union-attr]
    scores = list(range(20))
    random.Random(1).shuffle(scores)
    results = await asyncio.gather(*(ledger.revoke(token, f"r{s}", s) for s in scores),
                                   return_exceptions=True)
    no_exceptions(results)
    first_reason = results[0].revoke_reason  # the first call to reach the write lock wins
    assert {r.revoke_reason for r in results} == {first_reason}
    assert len({r.revoked_at for r in results}) == 1
    final = await ledger.introspect(token)
    assert final.abuse_score == max(scores)
    assert len(await ledger.storage.list_audit(token.raw)) == len(scores)


async def test_two_writers_on_one_file_wait_for_each_other(tmp_path: Path) -> None:
    # a second process on the same file (an operator's tool, a mistaken second instance)
    # must make the first wait (busy_timeout), never lose a write or fail it
    path = tmp_path / "shared.db"
    stores = [await Storage.open(path), await Storage.open(path)]
    try:
        pids = [PaymentId.generate() for _ in range(60)]
        jobs = [stores[i % 2].credit_transfers([transfer(p, 10 + i)], None, 1) for i, p in enumerate(pids)]
        results = await asyncio.gather(*jobs, return_exceptions=True)
        no_exceptions(results)
        stats = await stores[0].get_stats()
        assert (stats["transfers"], stats["credited_piconero"]) == (60, sum(10 + i for i in range(60)))
    finally:
        for store in stores:
            await store.close()


# ---------------------------------------------------------------------- cancellation
async def test_a_cancelled_write_leaves_the_writer_usable(storage: Storage) -> None:
    task = asyncio.create_task(storage.credit_transfers([transfer(PaymentId.generate())], 5, 1))
    await asyncio.sleep(0)  # one step: the task is now awaiting its BEGIN on the writer thread
    assert storage._write_lock.locked()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await storage.credit_transfers([transfer(PaymentId.generate())], 6, 1)
    assert await storage.get_cursor() == 6
    assert (await storage.get_stats())["transfers"] == 1  # the cancelled one was rolled back


async def test_cancelled_at_any_point_a_credit_is_all_or_nothing(storage: Storage) -> None:
    for steps in range(12):
        pid = PaymentId.generate()
        batch = [transfer(pid, 100, 10), transfer(pid, 200, 11), transfer(PaymentId.generate(), 300)]
        task = asyncio.create_task(storage.credit_transfers(batch, 1000 + steps, 1))
        for _ in range(steps):
            await asyncio.sleep(0)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        cursor = await storage.get_cursor()
        mine = await storage.get_claim(pid.raw)
        assert mine is None or mine.amount == 300  # both of its transfers, or neither
        assert (mine is not None) == (cursor == 1000 + steps)  # transfers and cursor move together
        assert await storage.ledger_problems() == []  # every payment is the sum of its transfers
    # and the writer is still usable after every cut
    await storage.credit_transfers([transfer(PaymentId.generate())], 5000, 1)
    assert await storage.get_cursor() == 5000
