"""Active/passive on one PostgreSQL database, in-process: the standby's answers, a
partitioned leader stepping down, and the fencing epoch that stops a stale leader.

The drills with real processes killed by SIGKILL are in tests/service/test_failover.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from anonticket.service.app import Service, start_service
from anonticket.domain.ids import PaymentId
from anonticket.domain.errors import StorageUnavailable
from anonticket.storage import open_storage
from anonticket.storage.postgres import FencedOut, PostgresStorage
from anonticket.storage.postgres.leader import LeaderLock, take_over
from conftest import make_config, transfer, url

NOW = 1_700_000_000
CHECK = "0.2"  # DATABASE_LEADER_CHECK_SECS for these tests


@pytest.fixture
async def pair(tmp_path: Path, pg_url: str) -> AsyncIterator[list[Service]]:
    services: list[Service] = []
    try:
        for i in range(2):
            (tmp_path / str(i)).mkdir()
            services.append(await start_service(make_config(
                tmp_path / str(i), DATABASE_URL=pg_url, DATABASE_LEADER_CHECK_SECS=CHECK)))
        yield services
    finally:
        for service in services:
            await service.aclose()


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> float:
    """Poll ``condition`` (bounded); returns how long it took."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, "condition not reached in time"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def status_of(http: aiohttp.ClientSession, address: str, path: str,
                    method: str = "GET", body: object = None) -> tuple[int, dict[str, object], str | None]:
    async with http.request(method, url(address, path), json=body) as resp:
        return resp.status, await resp.json(), resp.headers.get("Retry-After")


async def test_one_active_and_the_other_answers_503_with_retry_after(
        pair: list[Service], http: aiohttp.ClientSession) -> None:
    active, standby = pair
    assert (active.state.active, standby.state.active) == (True, False)
    pid = PaymentId.generate()
    await active.state.ledger.credit([transfer(pid, 5000)], 10)
    status, body, _ = await status_of(http, active.public_address, "/api/v1/redeem", "POST",
                                      {"pid": pid.hex()})
    assert (status, body["status"]) == (200, "success")
    for address, path, method in [
            (standby.public_address, "/api/v1/redeem", "POST"),
            (standby.public_address, f"/api/v1/token/{body['service_token']}", "GET"),
            (standby.internal_address, f"/api/v1/token/{body['service_token']}/revoke", "POST"),
            (standby.internal_address, "/api/v1/stats", "GET")]:
        status, answer, retry = await status_of(http, address, path, method, {"pid": pid.hex()})
        assert (status, answer["error"], retry) == (503, "unavailable", "1"), path
    status, answer, retry = await status_of(http, standby.public_address, "/health/ready")
    assert (status, answer, retry) == (503, {"status": "not_ready"}, "1")
    status, answer, _ = await status_of(http, standby.internal_address, "/health/ready")
    assert status == 503 and "another instance is active" in str(answer["reason"])
    assert (await status_of(http, standby.public_address, "/health/live"))[0] == 200
    async with http.get(url(standby.internal_address, "/metrics")) as resp:
        assert "anonticket_active 0.0" in await resp.text()
    async with http.get(url(active.internal_address, "/metrics")) as resp:
        assert "anonticket_active 1.0" in await resp.text()
    assert (await status_of(http, active.public_address, "/health/ready"))[0] == 200


async def test_a_partitioned_leader_steps_down_and_the_other_takes_over(
        pair: list[Service], http: aiohttp.ClientSession, pg_url: str) -> None:
    first, second = pair
    pid = PaymentId.generate()
    await first.state.ledger.credit([transfer(pid, 5000)], 20)
    token = (await first.state.ledger.redeem(pid)).token  # type: ignore[union-attr]
    conn = await asyncpg.connect(pg_url)
    try:
        # the server ends the first instance's lock session, as a partition or an
        # operator would; its pooled connections stay
        killed = await conn.fetchval(
            """SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
               WHERE application_name = 'anonticket-leader' AND pid IN
                     (SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted)""")
    finally:
        await conn.close()
    assert killed == 1
    await until(lambda: first.leadership.step_downs == 1)
    # the deposed one sits two rounds out, so its healthy peer (polling every round) wins
    took = await until(lambda: second.state.active)
    assert took < 5 * float(CHECK) + 2
    assert (first.state.active, second.leadership.terms) == (False, 1)
    # the new active one answers from its own fresh views, loaded from the database
    status, body, _ = await status_of(http, second.public_address, "/api/v1/redeem", "POST",
                                      {"pid": pid.hex()})
    assert (status, body["status"], body["service_token"]) == (200, "already_claimed", token.hex())
    assert (await status_of(http, first.public_address, "/api/v1/redeem", "POST",
                            {"pid": pid.hex()}))[0] == 503
    assert await second.state.ledger.storage.get_cursor() == 20


async def test_a_stale_leader_cannot_move_the_cursor_or_credit(pg_url: str) -> None:
    """The fencing epoch: A became active, lost its lock without noticing, B took over.
    A's next credit rolls back whole; B's goes through."""
    stale = await open_storage(pg_url)
    fresh = await open_storage(pg_url)
    assert isinstance(stale, PostgresStorage) and isinstance(fresh, PostgresStorage)
    try:
        first = await take_over(stale)
        await stale.credit_transfers([transfer(PaymentId.generate(), 5000)], 30, NOW)
        assert await take_over(fresh) == first + 1
        lost = PaymentId.generate()
        with pytest.raises(FencedOut):
            await stale.credit_transfers([transfer(lost, 5000)], 99, NOW)
        assert isinstance(FencedOut(), StorageUnavailable)  # the monitor backs off, not crashes
        assert await fresh.get_cursor() == 30
        assert await fresh.get_claim(lost.raw) is None  # nothing of the fenced credit landed
        await fresh.credit_transfers([transfer(lost, 5000)], 31, NOW)
        assert await fresh.get_cursor() == 31
        stats = await fresh.get_stats()
        assert stats["transfers"] == 2 and await fresh.ledger_problems() == []
    finally:
        await stale.close()
        await fresh.close()


async def test_the_lock_is_exclusive_and_still_held_notices_its_loss(pg_url: str) -> None:
    a, b = LeaderLock(pg_url, timeout=2), LeaderLock(pg_url, timeout=2)
    try:
        assert await a.try_acquire() and not await b.try_acquire()
        assert await a.still_held() and await a.still_held()  # asking never re-locks
        conn = await asyncpg.connect(pg_url)
        try:
            await conn.execute("""SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                                  WHERE application_name = 'anonticket-leader'
                                    AND pid IN (SELECT pid FROM pg_locks
                                                WHERE locktype = 'advisory' AND granted)""")
        finally:
            await conn.close()
        await asyncio.wait_for(a.lost.wait(), 5)  # the termination callback, not a poll
        assert not await a.still_held()
        assert await b.try_acquire()
        await a.release()
        assert not await a.try_acquire()
    finally:
        await a.release()
        await b.release()
