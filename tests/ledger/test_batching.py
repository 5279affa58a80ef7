"""The batchers that group concurrent claims and debits: who is told it won, and what a
cancelled worker leaves behind."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import pytest

from anonticket.ledger.batching import KeyedBatcher, SequenceBatcher


class GatedRun:
    """A storage call that holds each batch until the test lets it go, like a slow COMMIT."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.batches: list[list[str]] = []
        self.claimed: set[str] = set()

    async def __call__(self, keys: list[str]) -> Mapping[str, tuple[str, bool]]:
        self.batches.append(keys)
        self.entered.set()
        await self.release.wait()
        rows = {}
        for key in keys:
            rows[key] = (key, key not in self.claimed)  # (row, claimed now)
            self.claimed.add(key)
        return rows


def claims(run: GatedRun) -> KeyedBatcher[str, tuple[str, bool]]:
    return KeyedBatcher(run, lambda row: row[1])


async def test_one_waiter_still_waiting_wins_when_the_first_was_cancelled() -> None:
    run = GatedRun()
    batcher = claims(run)
    first = asyncio.create_task(batcher.submit("pid"))
    others = [asyncio.create_task(batcher.submit("pid")) for _ in range(3)]
    await run.entered.wait()
    first.cancel()  # a handler cancelled (shutdown, client gone) while its claim is in SQLite
    with pytest.raises(asyncio.CancelledError):
        await first
    run.release.set()
    answers = await asyncio.gather(*others)
    assert [won for _, won in answers] == [True, False, False]


async def test_exactly_one_winner_among_many_concurrent_waiters() -> None:
    run = GatedRun()
    run.release.set()
    batcher = claims(run)
    answers = await asyncio.gather(*(batcher.submit("pid") for _ in range(50)))
    assert sum(won for _, won in answers) == 1


async def test_a_cancelled_worker_leaves_no_stale_queue() -> None:
    run = GatedRun()
    batcher = claims(run)
    in_flight = asyncio.create_task(batcher.submit("a"))
    await run.entered.wait()
    queued = asyncio.create_task(batcher.submit("b"))  # waits for the next batch
    for _ in range(100):  # yield to the event loop until the task has queued its claim
        if "b" in batcher._queue:
            break
        await asyncio.sleep(0)
    assert "b" in batcher._queue
    worker = batcher._worker
    assert worker is not None
    worker.cancel()
    for task in (in_flight, queued):
        with pytest.raises(asyncio.CancelledError):
            await task
    assert batcher._queue == {} and batcher._worker is None
    # the next claim of the queued PID is first in line again, and wins
    run.release.set()
    row, won = await batcher.submit("b")
    assert (row, won) == (("b", True), True)


async def test_a_failed_batch_fails_its_waiters_and_the_next_batch_runs() -> None:
    calls: list[list[int]] = []

    async def run(requests: list[int]) -> list[int]:
        calls.append(requests)
        if 0 in requests:
            raise RuntimeError("storage said no")
        return [r * 10 for r in requests]

    batcher: SequenceBatcher[int, int] = SequenceBatcher(run)
    with pytest.raises(RuntimeError):
        await batcher.submit(0)
    assert await asyncio.gather(batcher.submit(1), batcher.submit(2)) == [10, 20]
    assert calls[-1] == [1, 2]  # concurrent requests shared one call
