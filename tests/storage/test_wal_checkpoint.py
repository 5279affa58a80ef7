"""Commits leave the WAL copy to the background checkpointer: a bulk credit's at once,
every other one's within SOON_SECS; SQLite's automatic checkpoint stays as the bound."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from pathlib import Path

import pytest

import anonticket.storage.core as core_module
import anonticket.storage.payments as storage_module
import anonticket.storage.wal_checkpoint as checkpoint_module
from anonticket.domain.ids import PaymentId
from anonticket.storage import Storage
from anonticket.storage.wal_checkpoint import SOON_SECS, BackgroundCheckpointer
from conftest import transfer

NOW = 1_700_000_000


async def writer_autocheckpoint(storage: Storage) -> int:
    return (await storage._writer.execute_fetchall("PRAGMA wal_autocheckpoint"))[0][0]


async def test_credit_commit_is_checkpointed_in_the_background(
        storage: Storage, monkeypatch: pytest.MonkeyPatch) -> None:
    # the small credit's checkpoint stays only due for the whole test: with the real
    # SOON_SECS, a loaded machine took longer than that over the bulk credit, the due one
    # ran first and the count below was one more
    monkeypatch.setattr(checkpoint_module, "SOON_SECS", 3600.0)
    automatic = await writer_autocheckpoint(storage)
    assert automatic > 0
    async with storage._transaction(checkpoint_later=True) as db:
        # the COMMIT at the end of this block must not copy the WAL itself
        assert (await db.execute_fetchall("PRAGMA wal_autocheckpoint"))[0][0] == 0
    assert await writer_autocheckpoint(storage) == automatic  # every other commit: as before
    await storage.checkpointer._task

    before = storage.checkpointer.completed
    await storage.credit_transfers([transfer(PaymentId.generate()) for _ in range(999)], 4, NOW)
    assert storage.checkpointer.completed == before  # a small credit's is only due, soon
    assert storage.checkpointer._timer is not None
    await storage.credit_transfers([transfer(PaymentId.generate()) for _ in range(1000)], 5, NOW)
    task = storage.checkpointer._task
    assert task is not None and not task.done()  # requested, not run inside the commit
    await task
    busy, frames, copied = storage.checkpointer.last_result
    assert (storage.checkpointer.completed, busy) == (before + 1, 0)
    assert frames > 0 and copied == frames  # the credit's frames are all in the database now
    assert storage.checkpointer._timer is None  # the one due was covered by this one


async def checkpoint_after(checkpointer: BackgroundCheckpointer, count: int) -> None:
    """Wait (10 s at most) until more than ``count`` checkpoints have run to the end."""
    async with asyncio.timeout(10):
        while checkpointer.completed <= count:
            await asyncio.sleep(SOON_SECS / 10)


async def test_a_commit_is_checkpointed_soon_after_and_not_inside_it(storage: Storage) -> None:
    checkpointer = storage.checkpointer
    before = checkpointer.completed
    await storage.credit_transfers([transfer(PaymentId.generate())], 4, NOW)
    # the COMMIT has returned and nothing copied the WAL yet: a checkpoint is only due
    assert checkpointer.completed == before and checkpointer._timer is not None
    await checkpoint_after(checkpointer, before)
    busy, frames, copied = checkpointer.last_result
    assert busy == 0 and copied == frames > 0  # the commit's frames are in the database


async def test_a_burst_of_commits_shares_its_checkpoints(storage: Storage) -> None:
    checkpointer = storage.checkpointer
    await checkpointer.aclose()  # nothing left over from opening the store
    checkpointer._closed = False
    before = checkpointer.completed
    started = asyncio.get_running_loop().time()
    for height in range(40):
        await storage.credit_transfers([transfer(PaymentId.generate())], height, NOW)
    elapsed = asyncio.get_running_loop().time() - started
    # at most one checkpoint per SOON_SECS of commits, not one per commit
    assert checkpointer.completed - before <= 1 + elapsed / SOON_SECS < 40
    await checkpoint_after(checkpointer, checkpointer.completed)
    busy, frames, copied = checkpointer.last_result
    assert busy == 0 and copied == frames > 0


async def test_closing_drops_a_checkpoint_that_is_only_due(tmp_path: Path) -> None:
    store = await Storage.open(tmp_path / "anonticket.db")
    await store.credit_transfers([transfer(PaymentId.generate())], 1, NOW)
    checkpointer = store.checkpointer
    assert checkpointer._timer is not None
    before = checkpointer.completed
    await store.close()  # closing the writer checkpoints by itself
    assert checkpointer._timer is None and checkpointer.completed == before
    checkpointer.soon()
    checkpointer.request()
    assert checkpointer._timer is None and checkpointer._task is None  # closed for good
    store = await Storage.open(tmp_path / "anonticket.db")
    try:
        assert (await store.get_stats())["transfers"] == 1
    finally:
        await store.close()


async def test_the_automatic_checkpoint_still_bounds_the_wal(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """If the background checkpointer never runs (failing, or starved), the WAL still
    restarts at the writer's automatic limit instead of growing with every commit."""
    monkeypatch.setattr(core_module, "_WAL_AUTOCHECKPOINT_PAGES", 50)
    store = await Storage.open(tmp_path / "anonticket.db")
    try:
        await store.checkpointer.aclose()  # and it stays closed: soon() does nothing
        for height in range(300):
            await store.credit_transfers([transfer(PaymentId.generate())], height, NOW)
        assert store.checkpointer.completed == 0
        wal_pages = (tmp_path / "anonticket.db-wal").stat().st_size // 4096
        # each commit writes a few pages: 300 of them without a checkpoint would be ~1000
        assert wal_pages < 50 + 20
    finally:
        await store.close()


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
        for _ in range(3):  # one is due after every busy tenth of a second: said once
            checkpointer.request()
            await checkpointer._task
    assert checkpointer.completed == 0
    assert caplog.text.count("background WAL checkpoint failed (OperationalError)") == 1
    await checkpointer.aclose()
    # aiosqlite (0.22) stops the worker of a failed connect without awaiting it: let that
    # thread finish while this loop still runs, or it answers into a closed loop and the
    # error lands on whichever test runs next (it may have finished already)
    workers = [t for t in set(threading.enumerate()) - before if "_connection_worker_thread" in t.name]
    await asyncio.to_thread(lambda: [worker.join(10) for worker in workers])
    assert not any(worker.is_alive() for worker in workers)
