"""A stale leader's writes are fenced, every one of them (issue 20, item 2).

Two instances on one real PostgreSQL database. The old leader lost its lock without
noticing (a partition: the server ended its lock session, its pool still works); the new
one took over. Every write transaction of the old one checks the fencing epoch at BEGIN,
under a share lock of the cursor row, so the takeover's epoch bump waits for the writes
already past that check, and the later ones roll back: nothing the old leader does can
land after the new leader loaded its views. The operator and the customer see the
standby's answer, 503 with Retry-After, and the old leader stands by at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from anonticket.api.standby import STANDBY_REASON
from anonticket.service.app import Service, start_service
from anonticket.ledger.cache import TtlSet
from anonticket.domain.ids import PaymentId, ServiceToken, Transfer
from anonticket.ledger.views import Ledger
from anonticket.storage import AttemptResult, DebitRequest, open_storage
from anonticket.storage.postgres import FencedOut, PostgresStorage
from anonticket.storage.postgres.leader import take_over
from conftest import make_config, transfer, url

NOW = 1_700_000_000
MIN = 1000


@pytest.fixture
async def raw(pg_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain connection, as an operator's psql would have."""
    conn = await asyncpg.connect(pg_url)
    yield conn
    await conn.close()


@pytest.fixture
async def stores(pg_url: str) -> AsyncIterator[tuple[PostgresStorage, PostgresStorage]]:
    """(old, new): the storages of two instances on one database."""
    old, new = await open_storage(pg_url), await open_storage(pg_url)
    assert isinstance(old, PostgresStorage) and isinstance(new, PostgresStorage)
    try:
        yield old, new
    finally:
        await old.close()
        await new.close()


async def until(condition: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def everything(raw: asyncpg.Connection) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table (but the schema's own), to compare before and after."""
    tables = ["payments", "transfers", "service_tokens", "monitor_state", "audit_log",
              "debits", "idempotency_keys", "webhook_events", "webhook_state",
              "provisional_credits", "provisional_outstanding"]
    return {table: [tuple(row) for row in await raw.fetch(f"SELECT * FROM {table} ORDER BY 1")]
            for table in tables}


# ---------------------------------------------------------------------- every write
@dataclass
class World:
    """What the old leader wrote while it was the leader: something for every write to change."""

    token: bytes  # claimed, expired (for the sweep), with a debit under a key
    spare: bytes  # credited, not claimed: a top-up's PID
    unclaimed: bytes  # credited, not claimed: a claim's PID
    pending_seq: int  # a webhook event due
    pooled: Transfer  # credited provisionally (in the pool), claimed


async def build(old: PostgresStorage, raw: asyncpg.Connection) -> World:
    old.enable_outbox(lambda: None)
    owner, spare, unclaimed = (PaymentId.generate() for _ in range(3))
    await old.credit_transfers([transfer(p, 5000) for p in (owner, spare, unclaimed)], 10, NOW)
    token = (await old.claim_payments([owner.raw], MIN, NOW))[owner.raw].token
    assert token is not None
    await old.apply_debits([DebitRequest(token, 100, "paid", b"\x01" * 32, None)], NOW)
    await raw.execute("UPDATE service_tokens SET expires_at = $1", NOW + 10)
    issued = (await old.due_webhook_events(NOW, 10))[0]
    await old.record_webhook_attempts([AttemptResult(issued.seq, 1, NOW, "delivered", None)])
    other = PaymentId.generate()
    await old.credit_transfers([transfer(other, 5000)], None, NOW)
    await old.claim_payments([other.raw], MIN, NOW)
    dead = (await old.due_webhook_events(NOW, 10))[0]
    await old.record_webhook_attempts([AttemptResult(dead.seq, 1, NOW, "http_500", None)])
    third = PaymentId.generate()
    await old.credit_transfers([transfer(third, 5000)], None, NOW)
    await old.claim_payments([third.raw], MIN, NOW)
    pending = (await old.due_webhook_events(NOW, 10))[0]
    pooled = transfer(PaymentId.generate(), 5000, height=0)
    await provisionally(old, pooled)
    await old.claim_payments([pooled.pid.raw], MIN, NOW)
    return World(token, spare.raw, unclaimed.raw, pending.seq, pooled)


def provisionally(storage: PostgresStorage, pooled: Transfer) -> Awaitable[object]:
    return storage.credit_provisional([pooled], NOW, max_per_pid=10**6, max_outstanding=10**7)


Write = Callable[[PostgresStorage, World], Awaitable[object]]
WRITES: dict[str, Write] = {
    "credit": lambda s, w: s.credit_transfers([transfer(PaymentId.generate(), 5000)], 99, NOW),
    "claim": lambda s, w: s.claim_payments([w.unclaimed], MIN, NOW),
    "top-up": lambda s, w: s.topup_token(w.token, w.spare, MIN, NOW),
    "debit": lambda s, w: s.apply_debits([DebitRequest(w.token, 200, "k", b"\x02" * 32, None)], NOW),
    "revoke": lambda s, w: s.revoke_token(w.token, "abuse", 3, NOW),
    "expiry sweep": lambda s, w: s.notice_expired_tokens(NOW + 100),
    "prune keys": lambda s, w: s.prune_idempotency_keys(NOW + 1),
    "prune webhooks": lambda s, w: s.prune_webhook_events(NOW + 1),
    "replay webhooks": lambda s, w: s.replay_webhook_events(None, NOW),
    "disable webhooks": lambda s, w: s.set_webhook_disabled("https://receiver.invalid/", NOW),
    "mark a delivery": lambda s, w: s.record_webhook_attempts(
        [AttemptResult(w.pending_seq, 1, NOW, "delivered", None)]),
    "credit provisionally": lambda s, w: provisionally(
        s, transfer(PaymentId.generate(), 5000, height=0)),
    "withdraw provisional": lambda s, w: s.withdraw_provisional([w.pooled.txid], NOW),
    "make provisional final": lambda s, w: s.credit_transfers(
        [Transfer(w.pooled.txid, w.pooled.pid, w.pooled.amount, 50)], 99, NOW),
}


@pytest.mark.parametrize("name", list(WRITES))
async def test_every_write_of_a_stale_leader_rolls_back(
        name: str, stores: tuple[PostgresStorage, PostgresStorage],
        raw: asyncpg.Connection) -> None:
    old, new = stores
    await take_over(old)
    world = await build(old, raw)
    await take_over(new)
    before = await everything(raw)
    with pytest.raises(FencedOut) as refused:
        await WRITES[name](old, world)
    assert (refused.value.status, refused.value.code) == (503, "unavailable")
    assert await everything(raw) == before
    assert old.fenced_out.is_set() and not new.fenced_out.is_set()
    await WRITES[name](new, world)  # the same write by the new leader changes something
    assert await everything(raw) != before


# ---------------------------------------------------------------------- a write in flight
async def lock_waits(raw: asyncpg.Connection, query: str) -> int:
    """How many of the instances' sessions wait for a lock in a statement like ``query``."""
    return await raw.fetchval(
        """SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
           AND application_name = 'anonticket' AND wait_event_type = 'Lock'
           AND query LIKE $1""", query)


async def test_the_takeover_waits_for_a_write_in_flight_and_its_views_hold_it(
        stores: tuple[PostgresStorage, PostgresStorage], raw: asyncpg.Connection,
        pg_url: str) -> None:
    """A revocation of the old leader is past its fence (it waits for a row lock an
    operator's session holds) when the new leader takes over: the epoch bump waits for it,
    and the views the new leader then loads see the token revoked."""
    old, new = stores
    await take_over(old)
    world = await build(old, raw)
    blocker = await asyncpg.connect(pg_url)
    try:
        held = blocker.transaction()
        await held.start()
        await blocker.execute("SELECT 1 FROM service_tokens WHERE token = $1 FOR UPDATE",
                              world.token)
        revoke = asyncio.ensure_future(old.revoke_token(world.token, "abuse", None, NOW))

        async def revoke_waits() -> bool:
            return await lock_waits(raw, "%service_tokens%") == 1
        await until(revoke_waits)
        takeover = asyncio.ensure_future(take_over(new))

        async def takeover_waits() -> bool:
            return await lock_waits(raw, "UPDATE monitor_state SET epoch%") == 1 or takeover.done()
        await until(takeover_waits)
        assert not takeover.done()  # it waits for the revocation's transaction
        await held.rollback()
        assert (await revoke).revoked_at == NOW  # committed: it was past the fence
        await takeover
    finally:
        await blocker.close()
    views = Ledger(new, min_payment=MIN, min_confirmations=10, negative_cache=TtlSet(10, 60),
                   plain_pids="allow")
    await views.load()
    record = await views.find_token(ServiceToken(world.token))
    assert record is not None and record.revoked_at == NOW
    with pytest.raises(FencedOut):
        await old.revoke_token(world.token, "again", None, NOW)


# ---------------------------------------------------------------------- two instances
@pytest.fixture
async def pair(tmp_path: Path, pg_url: str) -> AsyncIterator[list[Service]]:
    """Two instances; the busy timeout long enough that no lock wait of a test runs out."""
    services: list[Service] = []
    try:
        for i in range(2):
            (tmp_path / str(i)).mkdir()
            services.append(await start_service(make_config(
                tmp_path / str(i), DATABASE_URL=pg_url, DATABASE_LEADER_CHECK_SECS="0.2",
                DATABASE_BUSY_TIMEOUT_MS="30000")))
        assert [s.state.active for s in services] == [True, False]
        yield services
    finally:
        for service in services:
            await service.aclose()


def unaware(service: Service) -> None:
    """The partition: this instance will not find out that its lock is gone (its checks
    and the lock connection's end would tell it within a second, which is the window)."""
    lock = service.leadership._lock

    async def still_held() -> bool:
        return True

    lock.still_held = still_held
    lock._conn.remove_termination_listener(lock._terminated)


async def cut_off_the_lock(raw: asyncpg.Connection) -> None:
    ended = await raw.fetchval(
        """SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
           WHERE application_name = 'anonticket-leader' AND pid IN
                 (SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted)""")
    assert ended == 1


async def call(http: aiohttp.ClientSession, service: Service, path: str, body: object = None,
               *, method: str = "POST", headers: dict[str, str] | None = None,
               public: bool = False) -> tuple[int, dict[str, Any], Any]:
    address = service.public_address if public else service.internal_address
    async with http.request(method, url(address, path), json=body, headers=headers) as resp:
        answer = await resp.json() if resp.content_type == "application/json" else {}
        return resp.status, answer, resp.headers


@dataclass
class Shop:
    """A token and a spare paid PID, made on the active (old) instance."""

    token: str
    spare: PaymentId
    unclaimed: PaymentId


async def open_shop(service: Service) -> Shop:
    ledger = service.state.ledger
    owner, spare, unclaimed = (PaymentId.generate() for _ in range(3))
    await ledger.credit([transfer(p, 5000) for p in (owner, spare, unclaimed)], 10)
    claimed = await ledger.redeem(owner)
    return Shop(claimed.token.hex(), spare, unclaimed)  # type: ignore[union-attr]


@dataclass
class Case:
    """One write sent to the old leader before the takeover: the row it will wait for,
    the request, and what the new leader must show once it is active."""

    row: str  # SQL locking the row the write waits for ($1: a bytea)
    key: Callable[[Shop], bytes]
    send: Callable[[aiohttp.ClientSession, Service, Shop], Awaitable[tuple[int, dict[str, Any], Any]]]
    # the new leader's view of the token, asked while the write still waits (a stale
    # instance would cache it), and asserted afterwards
    view: Callable[[aiohttp.ClientSession, Service, Shop, dict[str, Any]], Awaitable[object]]
    expected: Callable[[dict[str, Any]], object]


async def introspected(http: aiohttp.ClientSession, service: Service, shop: Shop,
                       _: dict[str, Any]) -> object:
    status, answer, _ = await call(http, service, f"/api/v1/token/{shop.token}",
                                   method="GET", public=True)
    return status, answer.get("amount"), answer.get("remaining")


async def checked(http: aiohttp.ClientSession, service: Service, shop: Shop,
                  _: dict[str, Any]) -> object:
    status, _, headers = await call(http, service, "/api/v1/check", method="GET",
                                    headers={"Authorization": f"Bearer {shop.token}"})
    return status, headers.get("X-Anonticket-Reason")


async def issued(http: aiohttp.ClientSession, service: Service, shop: Shop,
                 answer: dict[str, Any]) -> object:
    token = answer.get("service_token", "0" * 64)
    status, answer, _ = await call(http, service, f"/api/v1/token/{token}/debit", {"amount": 1},
                                   headers={"Idempotency-Key": "on-the-new-leader"})
    return status, answer.get("remaining")


TOKEN_ROW = "SELECT 1 FROM service_tokens WHERE token = $1 FOR UPDATE"
PAYMENT_ROW = "SELECT 1 FROM payments WHERE pid = $1 FOR UPDATE"
CASES = {
    "revoke": Case(
        TOKEN_ROW, lambda shop: bytes.fromhex(shop.token),
        lambda http, s, shop: call(http, s, f"/api/v1/token/{shop.token}/revoke",
                                   {"reason": "abuse"}),
        checked, lambda _: (403, "token_revoked")),
    "debit": Case(
        TOKEN_ROW, lambda shop: bytes.fromhex(shop.token),
        lambda http, s, shop: call(http, s, f"/api/v1/token/{shop.token}/debit", {"amount": 700},
                                   headers={"Idempotency-Key": "before-the-partition"}),
        introspected, lambda _: (200, 5000, 4300)),
    "top-up": Case(
        PAYMENT_ROW, lambda shop: shop.spare.raw,
        lambda http, s, shop: call(http, s, f"/api/v1/token/{shop.token}/topup",
                                   {"pid": shop.spare.hex()}),
        introspected, lambda _: (200, 10_000, 10_000)),
    "claim": Case(
        PAYMENT_ROW, lambda shop: shop.unclaimed.raw,
        lambda http, s, shop: call(http, s, "/api/v1/redeem", {"pid": shop.unclaimed.hex()}),
        issued, lambda _: (200, 4999)),
}


@pytest.mark.parametrize("name", list(CASES))
async def test_a_write_sent_before_the_takeover_is_in_the_new_leaders_views(
        name: str, pair: list[Service], raw: asyncpg.Connection, pg_url: str,
        http: aiohttp.ClientSession) -> None:
    """The review's scenario: the old leader's write is in flight (past its fence, waiting
    for a row an operator's session holds) when a partition cuts its lock off and the other
    instance takes over. The takeover waits for it; the write commits and is answered 200;
    the new leader's views, loaded after it, show it. Without the fence the new leader
    would load its views (and cache the token) before the write landed: a revoked token
    would keep passing its check, an issued one would be unknown to it."""
    old, new = pair
    case = CASES[name]
    shop = await open_shop(old)
    blocker = await asyncpg.connect(pg_url)
    try:
        held = blocker.transaction()
        await held.start()
        await blocker.execute(case.row, case.key(shop))
        sent = asyncio.ensure_future(case.send(http, old, shop))

        async def write_waits() -> bool:
            return await lock_waits(raw, "%") == 1 or sent.done()
        await until(write_waits)
        assert not sent.done()
        unaware(old)
        await cut_off_the_lock(raw)

        async def taking_over() -> bool:
            return new.state.active or await lock_waits(raw, "UPDATE monitor_state SET epoch%") == 1
        await until(taking_over)
        await case.view(http, new, shop, {})  # a 503 while it waits; a stale cache without the fence
        await held.rollback()
        status, answer, _ = await sent
        assert status == 200, answer  # committed: it was past the fence before the takeover
    finally:
        await blocker.close()

    async def active() -> bool:
        return new.state.active
    await until(active)
    assert await case.view(http, new, shop, answer) == case.expected(answer)


FIRST_WRITES = {
    "revoke": lambda shop: (f"/api/v1/token/{shop.token}/revoke", {"reason": "abuse"}, {}),
    # a charge: 503, not the 500 charge_unconfirmed of a failed charge (nothing was
    # charged, so nginx may ask the new leader: the charge location retries only a 503)
    "metered check": lambda shop: ("/api/v1/check", None,
                                   {"Authorization": f"Bearer {shop.token}",
                                    "X-Anonticket-Cost": "10"}),
}


@pytest.mark.parametrize("first", list(FIRST_WRITES))
async def test_a_deposed_leader_refuses_writes_like_a_standby_and_stands_by(
        first: str, pair: list[Service], raw: asyncpg.Connection,
        http: aiohttp.ClientSession) -> None:
    """After the takeover the old leader, still unaware, is asked to write: the first
    write answers what a standby answers (503 unavailable, Retry-After: 1, the standby's
    message), the fenced write makes it stand by at once, the next ones (a revocation, a
    debit, a top-up, a redeem) meet the standby, nothing changes, and the token still
    passes the new leader's check (no 200 was answered for the revocation)."""
    old, new = pair
    shop = await open_shop(old)
    unaware(old)
    await cut_off_the_lock(raw)

    async def new_active() -> bool:
        return new.state.active
    await until(new_active)
    assert old.state.active  # it has not noticed
    before = await everything(raw)
    path, body, headers = FIRST_WRITES[first](shop)
    status, answer, headers = await call(http, old, path, body, headers=headers,
                                         method="GET" if body is None else "POST")
    assert (status, answer["error"], answer["message"], headers["Retry-After"]) == (
        503, "unavailable", STANDBY_REASON, "1")

    async def stood_by() -> bool:
        return not old.state.active
    await until(stood_by, timeout=10)
    assert old.leadership.step_downs == 1
    for path, body in [(f"/api/v1/token/{shop.token}/revoke", {"reason": "abuse"}),
                       (f"/api/v1/token/{shop.token}/debit", {"amount": 10}),
                       (f"/api/v1/token/{shop.token}/topup", {"pid": shop.spare.hex()}),
                       ("/api/v1/redeem", {"pid": shop.unclaimed.hex()})]:
        status, answer, headers = await call(http, old, path, body,
                                             headers={"Idempotency-Key": "k"})
        assert (status, answer["error"], headers["Retry-After"]) == (503, "unavailable", "1")
    assert await everything(raw) == before
    assert await checked(http, new, shop, {}) == (200, None)
