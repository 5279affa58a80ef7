"""The monitor's big commits leave the WAL copy to the background checkpointer."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from pathlib import Path

import pytest

import anonticket.storage.payments as storage_module
from anonticket.domain import PaymentId
from anonticket.storage import Storage
from anonticket.wal_checkpoint import BackgroundCheckpointer
from conftest import transfer

NOW = 1_700_000_000


async def writer_autocheckpoint(storage: Storage) -> int:
    return (await storage._writer.execute_fetchall("PRAGMA wal_autocheckpoint"))[0][0]


async def test_credit_commit_is_checkpointed_in_the_background(storage: Storage) -> None:
    automatic = await writer_autocheckpoint(storage)
    assert automatic > 0
    async with storage._transaction(checkpoint_later=True) as db:
        # the COMMIT at the end of this block must not copy the WAL itself
        assert (await db.execute_fetchall("PRAGMA wal_autocheckpoint"))[0][0] == 0
    assert await writer_autocheckpoint(storage) == automatic  # every other commit: as before
    await storage.checkpointer._task

    before = storage.checkpointer.completed
    await storage.credit_transfers([transfer(PaymentId.generate()) for _ in range(999)], 4, NOW)
    assert storage.checkpointer.completed == before  # a small credit checkpoints as usual
    await storage.credit_transfers([transfer(PaymentId.generate()) for _ in range(1000)], 5, NOW)
    task = storage.checkpointer._task
    assert task is not None and not task.done()  # requested, not run inside the commit
    await task
    busy, frames, copied = storage.checkpointer.last_result
    assert (storage.checkpointer.completed, busy) == (before + 1, 0)
    assert frames > 0 and copied == frames  # the credit's frames are all in the database now


async def test_failed_credit_restores_the_automatic_checkpoint(storage: Storage) -> None:
    pid = PaymentId.generate()
    twice = transfer(pid)
    with pytest.raises(sqlite3.IntegrityError):
        async with storage._transaction(checkpoint_later=True) as db:
            await db.execute("INSERT INTO transfers VALUES (?, ?, 5, 5, 0)", (twice.txid, pid.raw))
            await db.execute("INSERT INTO transfers VALUES (?, ?, 5, 5, 0)", (twice.txid, pid.raw))
    assert await writer_autocheckpoint(storage) > 0
    assert storage.checkpointer._task is None  # nothing committed, nothing to copy
    await storage.credit_transfers([twice], 7, NOW)  # the writer is usable
    assert (await storage.get_stats())["transfers"] == 1


async def test_requests_during_a_checkpoint_run_one_more(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(storage_module, "BULK_CREDIT_TRANSFERS", 1)
    store = await Storage.open(tmp_path / "anonticket.db")
    try:
        for height in range(3):  # back to back: the later requests land mid-checkpoint
            await store.credit_transfers([transfer(PaymentId.generate())], height, NOW)
        await store.checkpointer._task
        # each request started a checkpoint or queued one more behind the running one
        assert 1 < store.checkpointer.completed <= 3
        busy, frames, copied = store.checkpointer.last_result
        assert busy == 0 and copied == frames > 0
    finally:
        await store.close()


async def test_a_failing_checkpoint_is_logged_and_left_to_the_next(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    before = set(threading.enumerate())
    checkpointer = BackgroundCheckpointer(tmp_path / "no-such-dir" / "anonticket.db", 100)
    with caplog.at_level(logging.WARNING, logger="anonticket.storage"):
        checkpointer.request()
        await checkpointer._task
    assert checkpointer.completed == 0
    assert "background WAL checkpoint failed (OperationalError)" in caplog.text
    await checkpointer.aclose()
    # aiosqlite (0.22) stops the worker of a failed connect without awaiting it: let that
    # thread finish while this loop still runs, or it answers into a closed loop and the
    # error lands on whichever test runs next (it may have finished already)
    workers = [t for t in set(threading.enumerate()) - before if "_connection_worker_thread" in t.name]
    await asyncio.to_thread(lambda: [worker.join(10) for worker in workers])
    assert not any(worker.is_alive() for worker in workers)
