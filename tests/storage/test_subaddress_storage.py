"""Subaddress allocations in storage (issue 26), on both backends: an index is recorded once
whoever races for it (two connections, as two instances across a takeover), the cap counts
only unpaid, unexpired allocations, and the upgrade from the previous version keeps every
row it had.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

import anonticket.storage.postgres.schema as pg_schema
import anonticket.storage.schema as sqlite_schema
from anonticket.domain.ids import PaymentId, Receipt, Transfer
from anonticket.storage import Allocation, Storage, open_storage

BOTH_BACKENDS = True
NOW = 1_700_000_000
ADDRESS = "8" + "A" * 94  # the checks are on length only: storage does not decode addresses


def allocation(index: int, pid: PaymentId | None = None, *, expires_at: int = NOW + 60,
               account: int = 0) -> Allocation:
    pid = pid or Receipt.generate().pid
    return Allocation(account, index, pid.raw, ADDRESS, NOW, expires_at)


async def test_an_index_is_recorded_once_whoever_races_for_it(database_url: str, storage: Storage) -> None:
    other = await open_storage(database_url)  # a second instance on the same database
    try:
        for index in range(1, 21):
            outcomes = await asyncio.gather(storage.record_subaddress(allocation(index)),
                                            other.record_subaddress(allocation(index)))
            assert sorted(outcomes) == [False, True]
        pids = await storage.subaddress_pids(0, range(1, 25))
        assert sorted(pids) == list(range(1, 21))
        # the same PID twice (a receipt reused) is refused too
        pid = Receipt.generate().pid
        assert await storage.record_subaddress(allocation(30, pid))
        assert not await other.record_subaddress(allocation(31, pid))
        # another account's index 1 is another subaddress
        assert await storage.record_subaddress(allocation(1, account=1))
        assert await storage.highest_subaddress(0) == (30, ADDRESS)
        assert await storage.highest_subaddress(7) is None
    finally:
        await other.close()


async def test_the_cap_counts_unpaid_unexpired_allocations(storage: Storage) -> None:
    paid, unpaid, expired = (Receipt.generate().pid for _ in range(3))
    for index, pid, expires in ((1, paid, NOW + 60), (2, unpaid, NOW + 60), (3, expired, NOW - 1)):
        assert await storage.record_subaddress(allocation(index, pid, expires_at=expires))
    assert await storage.count_unpaid_subaddresses(NOW) == 2
    await storage.credit_transfers([Transfer(os.urandom(32), paid, 5000, 100)], 100, NOW)
    assert await storage.count_unpaid_subaddresses(NOW) == 1
    assert await storage.count_unpaid_subaddresses(NOW + 60) == 0
    assert await storage.subaddress_of(unpaid.raw) == ADDRESS
    assert await storage.subaddress_of(PaymentId.generate().raw) is None


@asynccontextmanager
async def before_subaddresses(database_url: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Storage]:
    """This program as the previous release: every migration before the subaddresses'."""
    newest = max(sqlite_schema.MIGRATIONS)
    with monkeypatch.context() as patch:
        patch.setattr(sqlite_schema, "MIGRATIONS", {k: v for k, v in sqlite_schema.MIGRATIONS.items() if k < newest})
        patch.setattr(sqlite_schema, "SCHEMA_VERSION", max(k for k in sqlite_schema.MIGRATIONS if k < newest))
        pg_newest = max(pg_schema.MIGRATIONS)
        patch.setattr(pg_schema, "MIGRATIONS", {k: v for k, v in pg_schema.MIGRATIONS.items() if k < pg_newest})
        patch.setattr(pg_schema, "PG_SCHEMA_VERSION", max(k for k in pg_schema.MIGRATIONS if k < pg_newest))
        store = await open_storage(database_url)
        try:
            yield store
        finally:
            await store.close()


async def test_the_upgrade_keeps_the_ledger_and_adds_allocations(
        database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    pid = PaymentId.generate()
    async with before_subaddresses(database_url, monkeypatch) as old:
        await old.credit_transfers([Transfer(os.urandom(32), pid, 5000, 100)], 100, NOW)
    store = await open_storage(database_url)
    try:
        assert (await store.get_claim(pid.raw)).amount == 5000  # type: ignore[union-attr]
        assert await store.schema_version() in (sqlite_schema.SCHEMA_VERSION, pg_schema.PG_SCHEMA_VERSION)
        assert await store.record_subaddress(allocation(1))
        assert await store.ledger_problems() == []
    finally:
        await store.close()
