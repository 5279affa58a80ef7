"""Group concurrent requests into one storage call per batch.

While one batch is in SQLite, new requests queue for the next, so N concurrent redeems
(or debits) cost one transaction, not N. Two shapes: claims are keyed (every waiter on
one PID shares its row, and only one of them may be told it won), debits are a plain
sequence (each is its own request, applied in arrival order).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
R = TypeVar("R")
Q = TypeVar("Q")

MAX_BATCH = 256


class KeyedBatcher(Generic[K, R]):
    """Claims: ``submit(key)`` answers the key's row and whether THIS caller is the winner.

    ``is_win(row)`` says whether the batch's call made the change (a claim it made now);
    exactly one waiter still waiting for that key is told so — not merely the first one
    queued, who may have been cancelled (shutdown, a client gone) before the answer came.
    """

    def __init__(self, run: Callable[[list[K]], Awaitable[Mapping[K, R]]],
                 is_win: Callable[[R], bool]) -> None:
        self._run = run
        self._is_win = is_win
        self._queue: dict[K, list[asyncio.Future[tuple[R | None, bool]]]] = {}
        self._worker: asyncio.Task[None] | None = None

    async def submit(self, key: K) -> tuple[R | None, bool]:
        future: asyncio.Future[tuple[R | None, bool]] = asyncio.get_running_loop().create_future()
        self._queue.setdefault(key, []).append(future)
        if self._worker is None:
            self._worker = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch = dict(list(self._queue.items())[:MAX_BATCH])
                for key in batch:
                    del self._queue[key]
                try:
                    rows = await self._run(list(batch))
                except BaseException as exc:
                    _fail(batch.values(), exc)
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    continue
                for key, futures in batch.items():
                    row = rows.get(key)
                    win = row is not None and self._is_win(row)
                    for future in futures:
                        if not future.done():
                            future.set_result((row, win))
                            win = False
        finally:
            self._worker = None
            # only left if we were cancelled: nobody must find a stale queue entry later
            # (its PID's next claimer would count as second in line and never win)
            _fail(self._queue.values(), asyncio.CancelledError())
            self._queue.clear()


class SequenceBatcher(Generic[Q, R]):
    """Debits: ``submit(request)`` answers that request's own result, in arrival order."""

    def __init__(self, run: Callable[[list[Q]], Awaitable[Sequence[R]]]) -> None:
        self._run = run
        self._queue: list[tuple[Q, asyncio.Future[R]]] = []
        self._worker: asyncio.Task[None] | None = None

    async def submit(self, request: Q) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((request, future))
        if self._worker is None:
            self._worker = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                try:
                    results = await self._run([request for request, _ in batch])
                except BaseException as exc:
                    _fail([[future for _, future in batch]], exc)
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:
            self._worker = None
            _fail([[future for _, future in self._queue]], asyncio.CancelledError())
            self._queue.clear()


def _fail(groups, exc: BaseException) -> None:  # type: ignore[no-untyped-def]
    for futures in groups:
        for future in futures:
            if not future.done():
                if isinstance(exc, asyncio.CancelledError):
                    future.cancel()
                else:
                    future.set_exception(exc)
