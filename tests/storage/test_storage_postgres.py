"""PostgreSQL's own storage behaviour, on a real throwaway cluster: the schema versions
table and concurrent starters, constraints and error texts that never quote a value, the
mapping of outages to 503, the one retry of a deadlocked transaction, and two instances
writing one database. The contract shared with SQLite is in test_storage.py and others.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from anonticket.domain.errors import SchemaTooNew
from anonticket.domain.ids import PaymentId
from anonticket.domain.errors import StorageUnavailable
from anonticket.storage import AttemptResult, DebitRequest, Storage, open_storage
from anonticket.storage.postgres import (
    FencedOut,
    PostgresError,
    PostgresIntegrityError,
    PostgresStorage,
)
from anonticket.storage.postgres.leader import take_over
from anonticket.storage.postgres.schema import MIGRATIONS, PG_SCHEMA_VERSION
from conftest import transfer
from pg_cluster import Cluster

NOW = 1_700_000_000
MIN = 1000


@pytest.fixture
async def store(pg_url: str) -> AsyncIterator[PostgresStorage]:
    opened = await open_storage(pg_url)
    assert isinstance(opened, PostgresStorage)
    yield opened
    await opened.close()


@pytest.fixture
async def raw(pg_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain connection, as another process (or an operator's psql) would have."""
    conn = await asyncpg.connect(pg_url)
    yield conn
    await conn.close()


# ---------------------------------------------------------------------- the interface
SQLITE_ONLY = {"integrity_check", "backup", "checkpointer", "open", "close",
               "debits_in_one_call"}  # the last: a switch of the SQLite debit path


def _public(cls: type) -> dict[str, Any]:
    return {name: getattr(cls, name) for name in dir(cls) if not name.startswith("_")}


def test_postgres_has_every_storage_method_with_the_same_parameters() -> None:
    import inspect
    sqlite, postgres = _public(Storage), _public(PostgresStorage)
    missing = set(sqlite) - set(postgres) - SQLITE_ONLY
    assert not missing, f"PostgresStorage lacks {sorted(missing)}"
    from anonticket.storage.outbox import OutboxStore
    outbox = {name for name in vars(OutboxStore) if not name.startswith("_")}
    assert outbox and outbox <= set(postgres)  # the outbox was the last gap; none is left
    for name in set(sqlite) & set(postgres) - {"open", "close"}:
        if callable(sqlite[name]):
            assert (list(inspect.signature(sqlite[name]).parameters)
                    == list(inspect.signature(postgres[name]).parameters)), name
            assert (inspect.iscoroutinefunction(postgres[name])
                    == inspect.iscoroutinefunction(sqlite[name])), name  # enable_outbox is not


# ---------------------------------------------------------------------- schema
async def test_a_fresh_database_gets_the_schema_and_its_version_once(
        pg_url: str, raw: asyncpg.Connection) -> None:
    for _ in range(2):
        await (await open_storage(pg_url)).close()
    rows = await raw.fetch("SELECT version FROM schema_versions ORDER BY version")
    assert [r[0] for r in rows] == sorted(MIGRATIONS) and max(MIGRATIONS) == PG_SCHEMA_VERSION
    tables = {r[0] for r in await raw.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert tables == {"payments", "transfers", "service_tokens", "monitor_state", "audit_log",
                      "debits", "idempotency_keys", "schema_versions", "webhook_events",
                      "webhook_state", "signing_keys", "private_token_spent",
                      "provisional_credits", "provisional_outstanding", "subaddresses"}
    types = dict(await raw.fetch(
        """SELECT column_name, data_type FROM information_schema.columns
           WHERE table_name IN ('payments', 'service_tokens', 'transfers', 'debits')
             AND column_name IN ('amount', 'spent', 'height')"""))
    assert set(types.values()) == {"bigint"}  # piconero overflow a 32-bit integer


async def test_concurrent_starters_apply_the_schema_once(pg_url: str, raw: asyncpg.Connection) -> None:
    # without the advisory lock, the losers of this race fail in CREATE TABLE
    opened = await asyncio.gather(*(open_storage(pg_url) for _ in range(6)), return_exceptions=True)
    errors = [o for o in opened if isinstance(o, BaseException)]
    for o in opened:
        if not isinstance(o, BaseException):
            await o.close()
    assert not errors, errors
    assert await raw.fetchval("SELECT count(*) FROM schema_versions") == len(MIGRATIONS)  # once each


async def test_a_newer_schema_is_refused_and_left_alone(pg_url: str, raw: asyncpg.Connection) -> None:
    await (await open_storage(pg_url)).close()
    await raw.execute("INSERT INTO schema_versions (version) VALUES ($1)", PG_SCHEMA_VERSION + 1)
    with pytest.raises(SchemaTooNew, match="newer"):
        await open_storage(pg_url)
    assert await raw.fetchval("SELECT max(version) FROM schema_versions") == PG_SCHEMA_VERSION + 1


async def test_maintenance_opening_creates_nothing(pg_url: str, raw: asyncpg.Connection) -> None:
    store = await open_storage(pg_url, apply_schema=False)
    try:
        assert await store.schema_version() == 0
    finally:
        await store.close()
    assert await raw.fetchval("SELECT to_regclass('payments')") is None


# ---------------------------------------------------------------------- constraints and texts
_PID, _PID2, _TXID, _TOKEN = b"\x01" * 32, b"\x05" * 32, b"\x02" * 32, b"\x03" * 32
_PAYMENT = ("INSERT INTO payments (pid, txid, amount, first_height, status, created_at, claimed_at)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7)")


@pytest.mark.parametrize(("sql", "params"), [
    (_PAYMENT, (b"\x06" * 31, _TXID, 5, 1, 0, 1, None)),  # 31-byte pid
    (_PAYMENT, (_PID2, _TXID, -1, 1, 0, 1, None)),  # negative amount
    (_PAYMENT, (_PID2, _TXID, 5, 1, 1, 1, None)),  # claimed without a claim time
    ("INSERT INTO transfers VALUES ($1, $2, 0, 5, 1)", (_TXID, _PID)),  # zero amount
    ("INSERT INTO service_tokens (token, pid, amount, issued_at) VALUES ($1, $2, 5, 1)",
     (_TOKEN, _PID2)),  # a token for a payment that does not exist
    ("UPDATE service_tokens SET spent = 6 WHERE token = $1", (_TOKEN,)),  # spent beyond amount
    ("INSERT INTO monitor_state (id) VALUES (2)", ()),  # a second cursor
])
async def test_constraints_reject_bad_rows_without_quoting_them(
        store: PostgresStorage, sql: str, params: Any) -> None:
    async def seed(db: asyncpg.Connection) -> None:
        await db.execute(_PAYMENT, _PID, _TXID, 5, 1, 1, 1, 1)
        await db.execute("INSERT INTO service_tokens (token, pid, amount, issued_at)"
                         " VALUES ($1, $2, 5, 1)", _TOKEN, _PID)

    await store._write(seed)

    async def bad(db: asyncpg.Connection) -> None:
        await db.execute(sql, *params)

    with pytest.raises(PostgresIntegrityError) as caught:
        await store._write(bad)
    text = str(caught.value)
    assert text.startswith("PostgreSQL error 23") and caught.value.__cause__ is None
    assert "\\x" not in text and "Key" not in text and "0101" not in text


async def test_a_bad_argument_is_a_bug_whose_text_names_no_value(store: PostgresStorage) -> None:
    secret = "5ecre7" * 8
    with pytest.raises(PostgresError) as caught:
        await store.get_token(secret)  # type: ignore[arg-type]  # text where bytea belongs
    assert secret not in str(caught.value) and not isinstance(caught.value, StorageUnavailable)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


# ---------------------------------------------------------------------- outages → 503
async def test_a_held_row_lock_is_a_503_after_the_busy_timeout_then_recovers(
        pg_url: str, raw: asyncpg.Connection) -> None:
    store = await open_storage(pg_url, busy_timeout_ms=100)
    try:
        pid = PaymentId.generate()
        await store.credit_transfers([transfer(pid, 5000)], None, NOW)
        async with raw.transaction():
            await raw.execute("SELECT 1 FROM payments WHERE pid = $1 FOR UPDATE", pid.raw)
            with pytest.raises(StorageUnavailable):
                await store.claim_payments([pid.raw], MIN, NOW)
        row = (await store.claim_payments([pid.raw], MIN, NOW))[pid.raw]
        assert row.claimed_now
    finally:
        await store.close()


async def test_terminated_connections_are_read_again_and_writes_503_at_worst(
        store: PostgresStorage, raw: asyncpg.Connection) -> None:
    pid = PaymentId.generate()
    await store.credit_transfers([transfer(pid, 5000)], 7, NOW)
    killed = await raw.fetchval(
        """SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
           WHERE application_name = 'anonticket' AND pid <> pg_backend_pid()""")
    assert killed >= 1
    # a read finds its pooled connection dead and asks again on a fresh one: no 503
    assert [await store.get_cursor() for _ in range(3)] == [7, 7, 7]
    await raw.fetchval("""SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                          WHERE application_name = 'anonticket'""")
    # a write is never re-sent (its COMMIT may have landed): a 503 at worst, then it works
    # every pooled connection is dead until it is used once: a 503 per dead one at worst
    outcomes: list[object] = []
    for height in range(8, 20):
        try:
            await store.credit_transfers([], height, NOW)
        except StorageUnavailable as exc:
            outcomes.append(exc)
            continue
        outcomes.append(height)
        break
    assert outcomes[-1] == height and await store.get_cursor() == height
    assert all(isinstance(o, StorageUnavailable) for o in outcomes[:-1])


async def test_no_server_is_a_503_not_a_traceback(tmp_path: Any) -> None:
    with pytest.raises(StorageUnavailable):
        await open_storage(f"postgresql:///x?host={tmp_path}&user=postgres", busy_timeout_ms=200)


# ---------------------------------------------------------------------- conflicts
async def test_a_deadlocked_transaction_is_retried_once_and_applies_once(
        store: PostgresStorage, raw: asyncpg.Connection) -> None:
    """A real deadlock against another session: ours locks the payment then waits for the
    token; the other holds the token and then asks for the payment. PostgreSQL aborts
    ours (the other session's deadlock_timeout is longer), the retry succeeds after the
    other commits, and the PID's credit lands on the token exactly once."""
    own, extra = PaymentId.generate(), PaymentId.generate()
    await store.credit_transfers([transfer(own, 5000), transfer(extra, 2000)], None, NOW)
    token = (await store.claim_payments([own.raw], MIN, NOW))[own.raw].token
    assert token is not None
    await raw.execute("SET deadlock_timeout = '30s'")
    tx = raw.transaction()
    await tx.start()
    await raw.execute("SELECT 1 FROM service_tokens WHERE token = $1 FOR UPDATE", token)
    topup = asyncio.create_task(store.topup_token(token, extra.raw, MIN, NOW))
    for _ in range(200):  # bounded: ours is waiting on the token's lock within a few polls
        waiting = await raw.fetchval(
            """SELECT count(*) FROM pg_stat_activity
               WHERE application_name = 'anonticket' AND wait_event_type = 'Lock'
                 AND datname = current_database()""")
        if waiting:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the top-up never waited for the lock")
    # closes the cycle; blocks until PostgreSQL aborts our side (deadlock_timeout 1 s)
    await raw.execute("SELECT 1 FROM payments WHERE pid = $1 FOR UPDATE", extra.raw)
    await tx.commit()
    outcome = await asyncio.wait_for(topup, 30)
    assert (outcome.kind, outcome.record.amount if outcome.record else None) == ("topped_up", 7000)
    assert await store.ledger_problems() == []


async def test_a_conflict_twice_in_a_row_is_a_503(store: PostgresStorage) -> None:
    calls = 0

    async def always_conflicts(db: asyncpg.Connection) -> None:
        nonlocal calls
        calls += 1
        raise asyncpg.SerializationError("could not serialize access")

    with pytest.raises(StorageUnavailable):
        await store._write(always_conflicts)
    assert calls == 2


# ---------------------------------------------------------------------- two processes
async def test_two_instances_on_one_database_lose_nothing_and_claim_once(pg_url: str) -> None:
    """Two storages (two instances during a takeover) crediting, claiming and debiting
    the same rows at once: the SQL guards, not the in-process lock, keep the ledger exact."""
    stores: list[Storage] = [await open_storage(pg_url), await open_storage(pg_url)]
    try:
        pids = [PaymentId.generate() for _ in range(40)]
        credits = [stores[i % 2].credit_transfers([transfer(p, 2000 + i)], None, NOW)
                   for i, p in enumerate(pids)]
        assert not [r for r in await asyncio.gather(*credits, return_exceptions=True)
                    if isinstance(r, BaseException)]
        claims = [stores[i % 2].claim_payments([p.raw for p in pids], MIN, NOW) for i in range(6)]
        results = await asyncio.gather(*claims, return_exceptions=True)
        assert not [r for r in results if isinstance(r, BaseException)], results
        winners = [pid for r in results for pid, row in r.items() if row.claimed_now]  # type: ignore[union-attr]
        assert sorted(winners) == sorted(p.raw for p in pids)  # each PID won exactly once
        stats = await stores[0].get_stats()
        assert (stats["transfers"], stats["payments_claimed"], stats["tokens_active"]) == (40, 40, 40)
        token = results[0][pids[0].raw].token  # type: ignore[index,union-attr]
        assert token is not None
        batches = [stores[i % 2].apply_debits(
            [DebitRequest(token, 7 + j, f"k{i}-{j}", bytes([j]) * 32) for j in range(10)], NOW)
            for i in range(20)]  # 200 debits asking ~2300 of a 2000 balance
        outcomes = await asyncio.gather(*batches, return_exceptions=True)
        assert not [o for o in outcomes if isinstance(o, BaseException)], outcomes
        granted = sum(o.body["amount"] for batch in outcomes for o in batch  # type: ignore[union-attr]
                      if o.status == 200)
        record = await stores[0].get_token(token)
        assert record is not None and record.spent == granted <= 2000
        ids = [o.body["debit_id"] for batch in outcomes for o in batch  # type: ignore[union-attr]
               if o.status == 200]
        assert len(ids) == len(set(ids))  # the sequence never hands out an id twice
        assert await stores[1].ledger_problems() == []
    finally:
        for s in stores:
            await s.close()


# ---------------------------------------------------------------------- db check / db backup
def test_db_check_and_backup_on_postgres(pg_url: str, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str], pg: Cluster) -> None:
    from anonticket.cli.parser import main
    from anonticket.config import SETTINGS

    async def fill() -> None:
        store = await open_storage(pg_url)
        try:
            await store.credit_transfers([transfer(PaymentId.generate(), 5000 + i)
                                          for i in range(30)], 130, NOW)
        finally:
            await store.close()

    asyncio.run(fill())
    for setting in SETTINGS:
        monkeypatch.delenv(setting.name, raising=False)
    monkeypatch.setenv("DATABASE_URL", pg_url)
    assert main(["db", "check"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "integrity_check: not applicable (PostgreSQL: use data checksums and amcheck)",
        "ledger (payments = sum of their transfers): ok",
        f"schema version: {PG_SCHEMA_VERSION} (this program: {PG_SCHEMA_VERSION})"]
    pg.psql("UPDATE payments SET amount = amount + 1 WHERE pid = (SELECT pid FROM payments LIMIT 1)",
            pg_url.split("///")[1].split("?")[0])
    assert main(["db", "check"]) == 1
    assert "  1 payments differ from the sum of their transfers" in capsys.readouterr().out
    assert main(["db", "backup", "/tmp/never-written.db"]) == 1
    assert "pg_dump" in capsys.readouterr().err
    # a database that cannot be reached: one line, and never the URL (it may hold a password)
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:hunter2@/x?host=/nonexistent")
    assert main(["db", "check"]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "hunter2" not in err and "Traceback" not in err


# ---------------------------------------------------------------------- version 4: the outbox
async def test_a_version_3_database_migrates_to_4_keeping_its_rows(
        pg_url: str, raw: asyncpg.Connection) -> None:
    """A database the previous release made (version 3, no outbox): the next start adds the
    outbox and the expiry notices, in the transaction that records version 4. A token
    that expired before the migration counts as noticed (version 3 announced nothing); one
    still running is announced once its time is up."""
    async with raw.transaction():
        await raw.execute(MIGRATIONS[3].read_text())
        await raw.execute("CREATE TABLE schema_versions (version integer PRIMARY KEY,"
                          " applied_at timestamptz NOT NULL DEFAULT now())")
        await raw.execute("INSERT INTO schema_versions (version) VALUES (3)")
    # two credited, redeemed payments as version 3 stored them (its columns only: today's
    # code writes columns later versions added)
    pids = [PaymentId.generate() for _ in range(2)]
    past, future = os.urandom(32), os.urandom(32)
    async with raw.transaction():
        for pid, token in zip(pids, (past, future)):
            txid = os.urandom(32)
            await raw.execute("INSERT INTO transfers VALUES ($1, $2, 5000, 9, $3)",
                              txid, pid.raw, NOW)
            await raw.execute(
                "INSERT INTO payments (pid, txid, amount, first_height, status, created_at,"
                " claimed_at, token) VALUES ($1, $2, 5000, 9, 1, $3, $3, $4)",
                pid.raw, txid, NOW, token)
            await raw.execute("INSERT INTO service_tokens (token, pid, amount, issued_at)"
                              " VALUES ($1, $2, 5000, $3)", token, pid.raw, NOW)
        await raw.execute("UPDATE monitor_state SET scanned_height = 9")
    await raw.execute("UPDATE service_tokens SET expires_at = 1000 WHERE token = $1", past)
    later = 2**40  # expires long after the migration runs (now(), not NOW)
    await raw.execute("UPDATE service_tokens SET expires_at = $2 WHERE token = $1", future, later)

    store = await open_storage(pg_url)
    try:
        assert await store.schema_version() == PG_SCHEMA_VERSION
        assert [r[0] for r in await raw.fetch(
            "SELECT version FROM schema_versions ORDER BY version")] == sorted(MIGRATIONS)
        assert (await store.get_stats())["payments_claimed"] == 2
        assert await store.get_cursor() == 9 and await store.ledger_problems() == []
        notified = dict(await raw.fetch("SELECT token, expired_notified FROM service_tokens"))
        assert notified == {past: 1, future: 0}
        store.enable_outbox(lambda: None)
        assert await store.notice_expired_tokens(later - 1) == 0
        assert await store.notice_expired_tokens(later) == 1
        kinds = [r[0] for r in await raw.fetch("SELECT type FROM webhook_events ORDER BY seq")]
        assert kinds == ["token.expired"]
        assert await store.get_webhook_disabled() is None  # webhook_state has its one row
    finally:
        await store.close()


async def test_a_stale_leader_cannot_mark_a_delivery(pg_url: str) -> None:
    """The old leader's outcome, stored after another instance took over, changes nothing
    and fails as a storage error: the row stays due for the new leader, same id and body."""
    old, new = await open_storage(pg_url), await open_storage(pg_url)
    try:
        assert isinstance(old, PostgresStorage) and isinstance(new, PostgresStorage)
        await take_over(old)
        old.enable_outbox(lambda: None)
        pid = PaymentId.generate()
        await old.credit_transfers([transfer(pid, 5000)], None, NOW)
        await old.claim_payments([pid.raw], MIN, NOW)
        (event,) = await old.due_webhook_events(NOW, 10)
        await take_over(new)  # the new leader's epoch
        with pytest.raises(FencedOut):
            await old.record_webhook_attempts([AttemptResult(event.seq, 1, NOW, "delivered", None)])
        (again,) = await new.due_webhook_events(NOW, 10)
        assert (again.id, again.body, again.attempts) == (event.id, event.body, 0)
        await new.record_webhook_attempts([AttemptResult(event.seq, 1, NOW, "delivered", None)])
        assert (await new.webhook_queue())["pending"] == 0
    finally:
        await old.close()
        await new.close()


async def test_two_sweeps_at_once_announce_each_expiry_once(pg_url: str,
                                                            raw: asyncpg.Connection) -> None:
    stores = [await open_storage(pg_url) for _ in range(2)]
    try:
        for store in stores:
            store.enable_outbox(lambda: None)
        pids = [PaymentId.generate() for _ in range(60)]
        await stores[0].credit_transfers([transfer(p, 5000) for p in pids], None, NOW)
        await stores[0].claim_payments([p.raw for p in pids], MIN, NOW)
        await raw.execute("UPDATE service_tokens SET expires_at = $1", NOW + 10)

        async def sweep(store: Storage) -> int:
            total = 0
            for _ in range(100):  # bounded: 60 tokens, at least one per round while any is left
                marked = await store.notice_expired_tokens(NOW + 10)
                if not marked:
                    return total
                total += marked
            raise AssertionError("the sweep never ended")

        counts = await asyncio.gather(*(sweep(s) for s in stores for _ in range(2)))
        assert sum(counts) == 60
        ids = [r[0] for r in await raw.fetch(
            "SELECT body::json->'data'->>'token_id' FROM webhook_events WHERE type = 'token.expired'")]
        assert len(ids) == len(set(ids)) == 60
    finally:
        for store in stores:
            await store.close()
