"""Copying the WAL back into the database off the writer's commits.

A checkpoint copies committed WAL frames into the database file and fsyncs it. Left to
SQLite's automatic checkpoint, that runs inside the COMMIT that crosses the WAL limit: the
writer, and every request queued behind it, waits for the fsync. Under a steady stream of
small writes (debits, redeems) that wait left the service's core idle ~10 % of the time
(docs/benchmarks.md, "The debit, cut to size"); after a poll that credits 100k
transfers the COMMIT itself would copy most of a million-row table back, ~0.5 s the
monitor waits for.

So checkpoints run here, on a connection and a thread of their own, while the writer goes
on: ``soon()`` after every commit (at most one checkpoint per ``SOON_SECS``, so a burst of
commits costs one), ``request()`` at once after a bulk credit. SQLite's automatic
checkpoint stays on the writer as the bound: while this one keeps up it has almost nothing
left to copy; if this one fails or lags, the WAL still cannot grow past that limit.

PASSIVE mode never blocks the writer or a reader; frames it cannot copy yet (a reader
still needs them) are left to the next checkpoint, automatic or not. Checkpointing is
always safe to skip or repeat: the WAL stays the truth until its frames are copied.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path

import aiosqlite

from anonticket.storage.connect import connect_sqlite

log = logging.getLogger("anonticket.storage")


# how long the commits after a checkpoint wait for the next one: long enough that a busy
# writer's commits share it (one fsync for hundreds of commits), short enough that the
# automatic checkpoint at the WAL's limit finds little left to copy
SOON_SECS = 0.1


class BackgroundCheckpointer:
    def __init__(self, path: Path, busy_timeout_ms: int) -> None:
        self._path = path
        self._busy_timeout_ms = busy_timeout_ms
        self._conn: aiosqlite.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        self._failing = False  # the last checkpoint failed (and said so)
        self._again = False
        self.completed = 0  # checkpoints run to the end: for tests and curiosity
        self.last_result: tuple[int, int, int] | None = None  # (busy, WAL frames, copied)

    def soon(self) -> None:
        """A commit's frames are in the WAL: checkpoint within ``SOON_SECS``. Called after
        every commit, so it costs two attribute checks when one is already due."""
        if self._timer is None and not self._closed:
            self._timer = asyncio.get_running_loop().call_later(SOON_SECS, self._due)

    def _due(self) -> None:
        self._timer = None
        self.request()

    def request(self) -> None:
        """Checkpoint now; a request during a running checkpoint runs one more after it,
        since that one may have started before the frames the caller just committed."""
        if self._closed:
            return
        if self._timer is not None:  # this checkpoint covers the commits it was due for
            self._timer.cancel()
            self._timer = None
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        self._again = True
        while self._again:
            self._again = False
            try:
                if self._conn is None:
                    self._conn = await connect_sqlite(self._path, isolation_level=None)
                    await self._conn.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_ms)}")
                rows = await self._conn.execute_fetchall("PRAGMA wal_checkpoint(PASSIVE)")
                self.last_result = tuple(rows[0])  # type: ignore[assignment]
                self.completed += 1
                self._failing = False
            except sqlite3.Error as exc:
                # harmless to skip: the next checkpoint, or the automatic one at the WAL's
                # limit, copies these frames. Said once per run of failures: one is due
                # after every busy tenth of a second.
                if not self._failing:
                    log.warning("background WAL checkpoint failed (%s); left to the next one",
                                type(exc).__name__)
                self._failing = True
                return

    async def aclose(self) -> None:
        """Let a running checkpoint finish (it is bounded by the WAL's size), then close;
        one only due is dropped (closing the writer's connection checkpoints anyway)."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._conn is not None:
            await self._conn.close()
            self._conn = None
