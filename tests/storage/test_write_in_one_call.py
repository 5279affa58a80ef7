"""StorageCore._in_one_call: BEGIN, the work and COMMIT as one call on the writer's thread
(the debit batch's fast path). A failure rolls back like a transaction; a cancelled caller
does not stop the call, which commits, and the writer stays usable either way."""

from __future__ import annotations

import asyncio
import sqlite3
import threading

import pytest

from anonticket.storage import Storage


def _bump_height(conn: sqlite3.Connection, fail: bool = False,
                 gate: threading.Event | None = None) -> int:
    """A work for the writer's thread: one write (the single monitor_state row), then
    optionally a failure; waits for ``gate`` first when given one."""
    if gate is not None:
        assert gate.wait(10)
    conn.execute("UPDATE monitor_state SET scanned_height = coalesce(scanned_height, 6) + 1")
    if fail:
        raise sqlite3.IntegrityError("the work failed")
    return conn.execute("SELECT scanned_height FROM monitor_state").fetchone()[0]


async def height(storage: Storage) -> int | None:
    return (await storage._read("SELECT scanned_height FROM monitor_state"))[0][0]


async def test_the_work_commits_and_answers(storage: Storage) -> None:
    before = await height(storage)
    answered = await storage._in_one_call(_bump_height)
    assert answered == await height(storage) == (7 if before is None else before + 1)
    assert not storage._writer.in_transaction


async def test_a_failing_work_is_rolled_back_and_the_writer_stays_usable(storage: Storage) -> None:
    before = await height(storage)
    with pytest.raises(sqlite3.IntegrityError, match="the work failed"):
        await storage._in_one_call(_bump_height, True)
    assert await height(storage) == before  # its write is gone
    assert not storage._writer.in_transaction
    await storage._in_one_call(_bump_height)  # BEGIN works again
    assert await height(storage) == (7 if before is None else before + 1)


async def test_a_cancelled_caller_does_not_stop_the_commit(storage: Storage) -> None:
    before = await height(storage)
    gate = threading.Event()
    call = asyncio.create_task(storage._in_one_call(_bump_height, False, gate))
    await asyncio.sleep(0)  # the call is on the writer's thread, waiting for the gate
    call.cancel()
    gate.set()
    with pytest.raises(asyncio.CancelledError):
        await call
    # the work ran to its COMMIT: a debit applied this way is answerable by its key later
    async with storage._transaction():  # and the lock and the writer are free again
        pass
    assert await height(storage) == (7 if before is None else before + 1)
    assert not storage._writer.in_transaction
