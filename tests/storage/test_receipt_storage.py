"""Receipts in storage, on both backends: a receipt claim derives its token inside the claim's
transaction, a bare PID under ``refuse_plain`` sees only the payments marked before receipts,
and the migration to schema version 5 marks exactly the payments that existed.

The version-4 database is made by this very code with the migration list cut at 4, then
filled (payments claimed, unclaimed, underpaid, and one whose token was topped up) and
opened by the full program, as an upgrade does.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, closing

import asyncpg
import pytest

import anonticket.storage.postgres.schema as pg_schema
import anonticket.storage.schema as sqlite_schema
from anonticket.domain.ids import PaymentId, Receipt, Transfer, derive_receipt_token, derive_service_token, key_prefix
from anonticket.storage import Storage, open_storage

BOTH_BACKENDS = True
MIN = 1000
NOW = 1_700_000_000


def paid(pid: PaymentId, amount: int = 5000, height: int = 100) -> Transfer:
    return Transfer(os.urandom(32), pid, amount, height)


async def marks(database_url: str) -> dict[bytes, int]:
    """plain_pid_ok of every payment, read as another process would."""
    if database_url.startswith("postgresql"):
        conn = await asyncpg.connect(database_url)
        try:
            return {row[0]: row[1] for row in await conn.fetch("SELECT pid, plain_pid_ok FROM payments")}
        finally:
            await conn.close()
    with closing(sqlite3.connect(database_url)) as conn:
        return dict(conn.execute("SELECT pid, plain_pid_ok FROM payments"))


# ---------------------------------------------------------------------- claims
async def test_a_receipt_claim_derives_the_receipt_token_and_a_retry_gets_it_again(storage: Storage) -> None:
    receipt = Receipt.generate()
    first = paid(receipt.pid, 3000, height=100)
    later = paid(receipt.pid, 3000, height=101)
    await storage.credit_transfers([later, first], 101, NOW)
    rows = await storage.claim_payments([receipt], MIN, NOW)
    row = rows[receipt]
    token = derive_receipt_token(receipt.raw, first.txid).raw  # the earliest transfer's
    assert (row.status, row.amount, row.token, row.claimed_now) == (1, 6000, token, True)
    assert token != derive_service_token(receipt.pid, first.txid.hex()).raw
    again = (await storage.claim_payments([Receipt(receipt.raw)], MIN, NOW + 5))[receipt]
    assert (again.token, again.claimed_now) == (token, False)
    assert (await storage.get_token(token)).amount == 6000  # type: ignore[union-attr]
    assert await storage.ledger_problems() == []


async def test_a_bare_pid_under_refuse_plain_sees_no_payment_made_after_receipts(storage: Storage) -> None:
    receipt, underpaid = Receipt.generate(), Receipt.generate()
    await storage.credit_transfers([paid(receipt.pid), paid(underpaid.pid, 10)], 100, NOW)
    for pid in (receipt.pid, underpaid.pid):
        assert await storage.claim_payments([pid.raw], MIN, NOW, refuse_plain=True) == {}
        assert await storage.get_claim(pid.raw, refuse_plain=True) is None
    assert (await storage.get_claim(receipt.pid.raw)).status == 0  # type: ignore[union-attr]
    # claimed by its receipt, it is still not there for the bare PID
    token = (await storage.claim_payments([receipt], MIN, NOW))[receipt].token
    assert await storage.claim_payments([receipt.pid.raw], MIN, NOW, refuse_plain=True) == {}
    assert await storage.get_claim(receipt.pid.raw, refuse_plain=True) is None
    # without refuse_plain (REDEEM_PLAIN_PIDS=allow) the bare PID reads it, token and all
    row = (await storage.claim_payments([receipt.pid.raw], MIN, NOW))[receipt.pid.raw]
    assert (row.token, row.claimed_now) == (token, False)


async def test_in_one_batch_the_receipt_claims_first(storage: Storage) -> None:
    """A bare PID and its receipt in one batch (REDEEM_PLAIN_PIDS=allow): the receipt wins,
    and the bare PID reads the receipt's token; under refuse_plain it reads nothing."""
    for refuse in (False, True):
        receipt = Receipt.generate()
        transfer = paid(receipt.pid)
        await storage.credit_transfers([transfer], 100, NOW)
        rows = await storage.claim_payments([receipt.pid.raw, receipt], MIN, NOW, refuse_plain=refuse)
        token = derive_receipt_token(receipt.raw, transfer.txid).raw
        assert (rows[receipt].token, rows[receipt].claimed_now) == (token, True)
        if refuse:
            assert receipt.pid.raw not in rows
        else:
            assert (rows[receipt.pid.raw].token, rows[receipt.pid.raw].claimed_now) == (token, False)


async def test_a_bare_pid_claims_a_receipt_payment_when_plain_pids_are_allowed(storage: Storage) -> None:
    """The risk REDEEM_PLAIN_PIDS=allow documents: the bare PID's token, which the payer's
    side can compute; the receipt then reads that same token."""
    receipt = Receipt.generate()
    transfer = paid(receipt.pid)
    await storage.credit_transfers([transfer], 100, NOW)
    row = (await storage.claim_payments([receipt.pid.raw], MIN, NOW))[receipt.pid.raw]
    assert (row.token, row.claimed_now) == (derive_service_token(receipt.pid, transfer.txid.hex()).raw, True)
    again = (await storage.claim_payments([receipt], MIN, NOW))[receipt]
    assert (again.token, again.claimed_now) == (row.token, False)


async def test_top_ups_by_receipt_and_by_bare_pid(storage: Storage) -> None:
    own, extra, third = Receipt.generate(), Receipt.generate(), Receipt.generate()
    await storage.credit_transfers([paid(r.pid, 4000) for r in (own, extra, third)], 100, NOW)
    token = (await storage.claim_payments([own], MIN, NOW))[own].token
    assert token is not None
    refused = await storage.topup_token(token, extra.pid.raw, MIN, NOW, refuse_plain=True)
    assert refused.kind == "pending_or_unknown"
    topped = await storage.topup_token(token, extra.pid.raw, MIN, NOW)  # a receipt's PID: no refusal
    assert (topped.kind, topped.amount, topped.record.amount) == ("topped_up", 4000, 8000)  # type: ignore[union-attr]
    again = await storage.topup_token(token, extra.pid.raw, MIN, NOW + 1)
    assert (again.kind, again.record.amount) == ("topped_up", 8000)  # type: ignore[union-attr]
    # a top-up's payment then redeems, by its receipt, as already claimed onto that token
    row = (await storage.claim_payments([extra], MIN, NOW))[extra]
    assert (row.token, row.claimed_now) == (token, False)
    assert await storage.ledger_problems() == []


# ---------------------------------------------------------------------- the upgrade
@asynccontextmanager
async def at_version_4(database_url: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Storage]:
    """This program as the previous release: migrations up to version 4 only."""
    with monkeypatch.context() as patch:
        patch.setattr(sqlite_schema, "MIGRATIONS", {k: v for k, v in sqlite_schema.MIGRATIONS.items() if k <= 4})
        patch.setattr(sqlite_schema, "SCHEMA_VERSION", 4)
        patch.setattr(pg_schema, "MIGRATIONS", {k: v for k, v in pg_schema.MIGRATIONS.items() if k <= 4})
        patch.setattr(pg_schema, "PG_SCHEMA_VERSION", 4)
        store = await open_storage(database_url)
        try:
            yield store
        finally:
            await store.close()


async def test_the_upgrade_marks_every_payment_then_and_no_later_one(
        database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    claimed, unclaimed, underpaid, extra = (PaymentId.generate() for _ in range(4))
    async with at_version_4(database_url, monkeypatch) as old:
        await old.credit_transfers([paid(claimed), paid(unclaimed), paid(underpaid, 10), paid(extra)],
                                   100, NOW)
        token = (await old.claim_payments([claimed.raw], MIN, NOW))[claimed.raw].token
        assert token is not None
    before = {claimed.raw, unclaimed.raw, underpaid.raw, extra.raw}

    store = await open_storage(database_url)
    try:
        assert await marks(database_url) == {pid: 1 for pid in before}
        assert sorted(await store.load_plain_pid_prefixes()) == sorted(key_prefix(p) for p in before)
        # later credits are not marked: a new payment, and a receipt payment
        later, receipt = PaymentId.generate(), Receipt.generate()
        await store.credit_transfers([paid(later), paid(receipt.pid), paid(underpaid, 2000, 101)], 101, NOW)
        assert await marks(database_url) == {**{pid: 1 for pid in before}, later.raw: 0, receipt.pid_raw: 0}
        assert sorted(await store.load_plain_pid_prefixes()) == sorted(key_prefix(p) for p in before)
        # what was credited before the upgrade is still claimable by its bare PID under refuse:
        # a top-up, the unclaimed one, the underpaid one lifted by a transfer after the
        # upgrade, the claimed ones as already claimed; the later ones are not
        topped = await store.topup_token(token, extra.raw, MIN, NOW, refuse_plain=True)
        assert (topped.kind, topped.amount) == ("topped_up", 5000)
        rows = await store.claim_payments([claimed.raw, unclaimed.raw, underpaid.raw, extra.raw, later.raw],
                                          MIN, NOW, refuse_plain=True)
        assert {pid: (row.claimed_now, row.token == token) for pid, row in rows.items()} == {
            claimed.raw: (False, True), extra.raw: (False, True),
            unclaimed.raw: (True, False), underpaid.raw: (True, False)}
        assert (await store.topup_token(token, later.raw, MIN, NOW, refuse_plain=True)).kind \
            == "pending_or_unknown"
        assert await store.ledger_problems() == []
    finally:
        await store.close()
    if database_url.startswith("postgresql"):
        conn = await asyncpg.connect(database_url)
        try:
            assert [r[0] for r in await conn.fetch("SELECT version FROM schema_versions ORDER BY version")] \
                == sorted(pg_schema.MIGRATIONS)
        finally:
            await conn.close()
    else:
        with closing(sqlite3.connect(database_url)) as conn:
            assert conn.execute("PRAGMA user_version").fetchone()[0] == sqlite_schema.SCHEMA_VERSION


async def test_a_fresh_database_marks_nothing(storage: Storage, database_url: str) -> None:
    pid = PaymentId.generate()
    await storage.credit_transfers([paid(pid)], 100, NOW)
    assert await marks(database_url) == {pid.raw: 0}
    assert list(await storage.load_plain_pid_prefixes()) == []


@pytest.mark.sqlite_only
async def test_the_mark_is_checked_by_the_schema(storage: Storage, database_url: str) -> None:
    pid = PaymentId.generate()
    await storage.credit_transfers([paid(pid)], 100, NOW)
    with closing(sqlite3.connect(database_url)) as conn, pytest.raises(sqlite3.IntegrityError):
        conn.execute("UPDATE payments SET plain_pid_ok = 2")
