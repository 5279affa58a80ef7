"""A write whose COMMIT landed but whose answer was lost: the in-memory views must not stay
wrong (issue 20, item 1).

On PostgreSQL the answer is lost when the connection drops after COMMIT, or when the
command timeout fires while COMMIT waits for a synchronous standby (PostgreSQL then commits
locally): the storage raises ``StorageUnavailable`` for a write that is in the database.
The fault is injected here as exactly that, a storage call that commits and then raises, on
both backends; the last tests produce it for real on PostgreSQL (a COMMIT waiting for a
synchronous standby whose session is ended). What the customer and the gateway then see is
checked over HTTP, on the real service.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from anonticket.service.app import Service, make_ledger, start_service
from anonticket.ledger.cache import TtlSet
from anonticket.domain.ids import PaymentId, ServiceToken
from anonticket.domain.errors import StorageUnavailable
from anonticket.ledger.views import Claimed, Ledger
from anonticket.storage import DebitRequest, Storage
from conftest import make_config, transfer, url

BOTH_BACKENDS = True

NOW = 1_700_000_000
DAY = 86_400
PRICE = 5000  # ACCESS_PRICE_PER_DAY: a payment of 5000 buys a day
MIN = 1000


class Clock:
    """The ledger's clock (unix seconds), moved by the test: expiry without waiting."""

    def __init__(self, now: int = NOW) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def lose_the_answer(storage: Storage, method: str) -> None:
    """The next call of ``storage.<method>`` commits, then raises StorageUnavailable, as a
    COMMIT whose answer never came back; later calls are the real method again."""
    real = getattr(storage, method)

    async def committed_then_lost(*args: Any, **kwargs: Any) -> Any:
        delattr(storage, method)  # once
        await real(*args, **kwargs)
        raise StorageUnavailable()

    setattr(storage, method, committed_then_lost)


@pytest.fixture
async def shop(tmp_path: Path, database_url: str) -> AsyncIterator[Service]:
    """The service with a price per day, its ledger on a clock the test moves."""
    running = await start_service(make_config(
        tmp_path, DATABASE_URL=database_url, ACCESS_PRICE_PER_DAY=str(PRICE)))
    running.state.ledger.clock = Clock()
    yield running
    await running.aclose()


async def call(http: aiohttp.ClientSession, service: Service, path: str, body: object = None,
               headers: dict[str, str] | None = None, method: str = "POST",
               ) -> tuple[int, dict[str, Any], Any]:
    """A request to the internal listener (redeem, top-up, debit, check all live there)."""
    async with http.request(method, url(service.internal_address, path), json=body,
                            headers=headers) as resp:
        answer = await resp.json() if resp.content_type == "application/json" else {}
        return resp.status, answer, resp.headers


async def redeem(http: aiohttp.ClientSession, service: Service, pid: PaymentId
                 ) -> tuple[int, str | None]:
    status, answer, _ = await call(http, service, "/api/v1/redeem", {"pid": pid.hex()})
    return status, answer.get("status") or answer.get("error")


async def gateway(http: aiohttp.ClientSession, service: Service, token: str, cost: int = 0
                  ) -> tuple[int, str | None]:
    """The gateway's check: (status, the refusal's reason header or None)."""
    headers = {"Authorization": f"Bearer {token}"}
    if cost:
        headers["X-Anonticket-Cost"] = str(cost)
    status, _, answer = await call(http, service, "/api/v1/check", headers=headers, method="GET")
    return status, answer.get("X-Anonticket-Reason")


# ---------------------------------------------------------------------- credit
async def test_a_credit_whose_answer_was_lost_is_redeemed_not_404(
        shop: Service, http: aiohttp.ClientSession) -> None:
    """The symptom: /pay/status says confirmed, redeem says 404 from memory. The customer
    asked before the payment confirmed (the PID went into the negative cache); the credit
    committed and raised; the monitor's next poll sends the same transfers again and finds
    them all stored, so nothing is "fresh"."""
    ledger, storage = shop.state.ledger, shop.state.ledger.storage
    early, late = PaymentId.generate(), PaymentId.generate()
    assert await redeem(http, shop, early) == (404, "payment_not_found")
    poll = [transfer(early, 5000, 100), transfer(late, 5000, 101)]
    lose_the_answer(storage, "credit_transfers")
    with pytest.raises(StorageUnavailable):
        await ledger.credit(poll, 120)
    assert await storage.get_cursor() == 120  # it did commit
    assert await redeem(http, shop, early) == (200, "success")  # right after the failure
    await ledger.credit(poll, 120)  # the retry: every transfer already stored
    assert await redeem(http, shop, late) == (200, "success")
    assert await redeem(http, shop, early) == (200, "already_claimed")


async def test_the_retry_of_a_credit_indexes_what_is_stored_not_only_what_is_new(
        storage: Storage) -> None:
    """Views that never saw the failed call (loaded before it) learn the PIDs from the
    retry alone: every incoming PID enters the index and leaves the negative cache."""
    def ledger() -> Ledger:
        return Ledger(storage, min_payment=MIN, min_confirmations=10,
                      negative_cache=TtlSet(100, 3600), clock=lambda: NOW,
                      plain_pids="allow")

    failed, other = ledger(), ledger()
    await other.load()
    pid = PaymentId.generate()
    assert await other.redeem_or_none(pid) is None  # remembered as unknown
    poll = [transfer(pid, 5000, 100)]
    lose_the_answer(storage, "credit_transfers")
    with pytest.raises(StorageUnavailable):
        await failed.credit(poll, 120)
    result = await other.credit(poll, 120)
    assert (result.transfers_credited, result.credited_pids) == (0, [])  # nothing new...
    answer = await other.redeem(pid)  # ...and still redeemable from these views
    assert isinstance(answer, Claimed) and answer.status == "success"


async def test_a_lost_credit_that_extends_a_claimed_token_is_not_answered_expired(
        shop: Service, http: aiohttp.ClientSession) -> None:
    """The symptom: the cached token row keeps its old expiry, so the gateway answers 403
    token_expired to a customer who paid for more time."""
    ledger, storage = shop.state.ledger, shop.state.ledger.storage
    clock: Clock = ledger.clock  # type: ignore[assignment]
    pid = PaymentId.generate()
    await ledger.credit([transfer(pid, 5000, 100)], None)
    status, answer, _ = await call(http, shop, "/api/v1/redeem", {"pid": pid.hex()})
    token = answer["service_token"]
    clock.now += DAY + 60
    assert await gateway(http, shop, token) == (403, "token_expired")
    lose_the_answer(storage, "credit_transfers")  # the customer pays again, to the same PID
    with pytest.raises(StorageUnavailable):
        await ledger.credit([transfer(pid, 5000, 200)], None)
    assert await gateway(http, shop, token) == (200, None)
    stored = await storage.get_token(bytes.fromhex(token))
    assert stored is not None and stored.expires_at == clock.now + DAY


async def test_a_token_cached_without_its_claim_is_refreshed_by_the_retry(
        shop: Service, http: aiohttp.ClientSession) -> None:
    """After a restart the gateway caches a token by itself, without the claim that maps
    its PID to it: memory cannot tell which token the failed credit touched. The monitor's
    retry (the same transfers, all stored) replaces the row with the stored one."""
    state = shop.state
    clock: Clock = state.ledger.clock  # type: ignore[assignment]
    pid = PaymentId.generate()
    await state.ledger.credit([transfer(pid, 5000, 100)], None)
    token = (await redeem_token(state.ledger, pid)).hex()
    # a restart: fresh views over the same database, on the same clock
    state.ledger = make_ledger(state.config, state.ledger.storage, state.metrics)
    state.ledger.clock = clock
    await state.ledger.load()
    clock.now += DAY + 60
    assert await gateway(http, shop, token) == (403, "token_expired")  # cached now
    again = [transfer(pid, 5000, 200)]
    lose_the_answer(state.ledger.storage, "credit_transfers")
    with pytest.raises(StorageUnavailable):
        await state.ledger.credit(again, None)
    await state.ledger.credit(again, None)  # the monitor's next poll
    assert await gateway(http, shop, token) == (200, None)


async def redeem_token(ledger: Ledger, pid: PaymentId) -> bytes:
    answer = await ledger.redeem(pid)
    assert isinstance(answer, Claimed)
    return answer.token


# ---------------------------------------------------------------------- claim
async def test_a_claim_whose_answer_was_lost_leaves_a_token_that_works(
        shop: Service, http: aiohttp.ClientSession) -> None:
    """The symptom: the retry answers already_claimed with the token, but the token never
    entered the known-token set, so debits, top-ups and metered checks answer 404/401
    while it holds a balance."""
    ledger, storage = shop.state.ledger, shop.state.ledger.storage
    pid, more = PaymentId.generate(), PaymentId.generate()
    await ledger.credit([transfer(pid, 5000, 100), transfer(more, 5000, 100)], None)
    lose_the_answer(storage, "claim_payments")
    assert await redeem(http, shop, pid) == (503, "unavailable")
    status, answer, _ = await call(http, shop, "/api/v1/redeem", {"pid": pid.hex()})
    assert (status, answer["status"]) == (200, "already_claimed")  # the customer's retry
    token = answer["service_token"]
    status, answer, _ = await call(http, shop, f"/api/v1/token/{token}/debit", {"amount": 100},
                                   headers={"Idempotency-Key": "first"})
    assert (status, answer.get("remaining")) == (200, 4900)
    status, answer, _ = await call(http, shop, f"/api/v1/token/{token}/topup", {"pid": more.hex()})
    assert (status, answer.get("status"), answer.get("remaining")) == (200, "topped_up", 9900)
    assert await gateway(http, shop, token, cost=100) == (200, None)


# ---------------------------------------------------------------------- top-up, debit, revoke
async def test_a_lost_top_up_debit_or_revocation_drops_the_cached_row(
        shop: Service, http: aiohttp.ClientSession) -> None:
    """Each of them changes a token's row; when its answer is lost, the row cached before
    is dropped, and the next answer is the stored one."""
    ledger, storage = shop.state.ledger, shop.state.ledger.storage
    clock: Clock = ledger.clock  # type: ignore[assignment]
    pid, more = PaymentId.generate(), PaymentId.generate()
    await ledger.credit([transfer(pid, 5000, 100), transfer(more, 5000, 100)], None)
    token = await redeem_token(ledger, pid)
    hex_token = token.hex()
    clock.now += DAY + 60
    assert await gateway(http, shop, hex_token) == (403, "token_expired")

    lose_the_answer(storage, "topup_token")
    with pytest.raises(StorageUnavailable):
        await ledger.topup(ServiceToken(token), more)
    assert await gateway(http, shop, hex_token) == (200, None)  # the top-up's day

    lose_the_answer(storage, "apply_debits")
    with pytest.raises(StorageUnavailable):
        await ledger.debit(DebitRequest(token, 700, "k", b"\x01" * 32, None))
    record = await ledger.find_token(ServiceToken(token))
    assert record is not None and record.remaining == 10_000 - 700

    lose_the_answer(storage, "revoke_token")
    with pytest.raises(StorageUnavailable):
        await ledger.revoke(ServiceToken(token), "abuse", None)
    assert await gateway(http, shop, hex_token) == (403, "token_revoked")


# ---------------------------------------------------------------------- the real thing
@pytest.fixture
async def admin(backend: str, database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain connection to the test's PostgreSQL database, for the operator's part."""
    if backend != "postgres":
        pytest.skip("a synchronous standby is PostgreSQL's")
    conn = await asyncpg.connect(database_url)
    await conn.execute("CREATE TABLE sync_probe (n integer)")
    yield conn
    await conn.close()


async def until(condition: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def waiting_for_the_standby(admin: asyncpg.Connection, application: str) -> list[int]:
    """The sessions of ``application`` whose COMMIT waits for a synchronous standby."""
    rows = await admin.fetch(
        """SELECT pid FROM pg_stat_activity WHERE datname = current_database()
           AND application_name = $1 AND wait_event = 'SyncRep'""", application)
    return [row[0] for row in rows]


async def commits_wait_for_a_standby(admin: asyncpg.Connection, pg_url: str, wait: bool) -> None:
    """Make every COMMIT wait for a synchronous standby that never comes (or stop that),
    and return once a probe's COMMIT shows that the server does: the reload reaches the
    process that decides (the checkpointer) at its own pace. A statement timeout does not
    end such a wait (it is off during COMMIT); a cancel does, and the commit stays."""
    names = "'nobody'" if wait else "''"
    await admin.execute(f"ALTER SYSTEM SET synchronous_standby_names = {names}")
    await admin.execute("SELECT pg_reload_conf()")
    probe = await asyncpg.connect(pg_url, server_settings={"application_name": "probe"})
    try:
        async def one_commit() -> None:
            async with probe.transaction():
                # a row, so WAL: a transaction that wrote none does not wait for a standby
                await probe.execute("INSERT INTO sync_probe VALUES (1)")

        if not wait:  # a waiting COMMIT is released when the wait is switched off
            await asyncio.wait_for(one_commit(), 20)
            return
        while True:
            commit = asyncio.ensure_future(one_commit())
            waiting: list[int] = []

            async def settled() -> bool:
                waiting[:] = await waiting_for_the_standby(admin, "probe")
                return bool(waiting) or commit.done()
            await until(settled)
            if waiting:
                await admin.execute("SELECT pg_cancel_backend($1)", waiting[0])
                await asyncio.wait_for(commit, 20)
                return
            await commit  # committed at once: not in force yet
    finally:
        await probe.close()


async def commit_then_cut(admin: asyncpg.Connection, pg_url: str,
                          write: Callable[[], Awaitable[Any]]) -> None:
    """Run ``write`` while its COMMIT waits for the standby, then end its session: the
    commit stays (PostgreSQL: "already committed locally"), the answer never comes."""
    task: asyncio.Future[Any] | None = None
    try:
        await commits_wait_for_a_standby(admin, pg_url, True)
        task = asyncio.ensure_future(write())
        waiting: list[int] = []

        async def found() -> bool:
            waiting[:] = await waiting_for_the_standby(admin, "anonticket")
            return bool(waiting) or task.done()
        await until(found)
        assert not task.done() and len(waiting) == 1
        await admin.execute("SELECT pg_terminate_backend($1)", waiting[0])
        with pytest.raises(StorageUnavailable):
            await task
    finally:
        await commits_wait_for_a_standby(admin, pg_url, False)
        if task is not None:  # released by the switch above, if it still waited
            await asyncio.wait([task], timeout=20)
            if task.done() and not task.cancelled():
                task.exception()  # retrieved: the test's own failure is the one to report


async def test_a_commit_cut_off_in_its_wait_for_the_standby_reaches_the_views(
        shop: Service, http: aiohttp.ClientSession, admin: asyncpg.Connection) -> None:
    """The review's case, for real: the credit and then the claim each commit locally and
    lose their answer; the payment redeems, and the token debits and passes the check."""
    ledger, pg_url = shop.state.ledger, shop.state.config.database_url
    pid = PaymentId.generate()
    assert await redeem(http, shop, pid) == (404, "payment_not_found")
    await commit_then_cut(admin, pg_url, lambda: ledger.credit([transfer(pid, 5000, 100)], 120))
    assert await ledger.storage.get_cursor() == 120
    await commit_then_cut(admin, pg_url, lambda: ledger.redeem(pid))
    status, answer, _ = await call(http, shop, "/api/v1/redeem", {"pid": pid.hex()})
    assert (status, answer["status"]) == (200, "already_claimed")
    token = answer["service_token"]
    status, _, _ = await call(http, shop, f"/api/v1/token/{token}/debit", {"amount": 100},
                              headers={"Idempotency-Key": "after"})
    assert status == 200
    assert await gateway(http, shop, token, cost=100) == (200, None)
