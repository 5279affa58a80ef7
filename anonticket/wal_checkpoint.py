"""Copying the WAL back into the database off the monitor's commit.

A poll that credits 100k transfers rewrites most of a million-row table's pages; with
SQLite's automatic checkpoint the COMMIT itself then copies them all back into the
database file, ~0.5 s the monitor waits for (docs/benchmarks.md). For that one kind of
transaction the writer turns the automatic checkpoint off, and this runs it on a
connection of its own instead, on its own thread, while the monitor goes on to its next
wallet fetch. Every other commit keeps SQLite's automatic checkpoint.

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

log = logging.getLogger("anonticket.storage")


class BackgroundCheckpointer:
    def __init__(self, path: Path, busy_timeout_ms: int) -> None:
        self._path = path
        self._busy_timeout_ms = busy_timeout_ms
        self._conn: aiosqlite.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._again = False
        self.completed = 0  # checkpoints run to the end: for tests and curiosity
        self.last_result: tuple[int, int, int] | None = None  # (busy, WAL frames, copied)

    def request(self) -> None:
        """Checkpoint soon; a request during a running checkpoint runs one more after it,
        since that one may have started before the frames the caller just committed."""
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
                    self._conn = await aiosqlite.connect(self._path, isolation_level=None)
                    await self._conn.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_ms)}")
                rows = await self._conn.execute_fetchall("PRAGMA wal_checkpoint(PASSIVE)")
                self.last_result = tuple(rows[0])  # type: ignore[assignment]
                self.completed += 1
            except sqlite3.Error as exc:
                # harmless to skip: the next automatic checkpoint copies these frames
                log.warning("background WAL checkpoint failed (%s); left to the next one",
                            type(exc).__name__)
                return

    async def aclose(self) -> None:
        """Let a running checkpoint finish (it is bounded by the WAL's size), then close."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._conn is not None:
            await self._conn.close()
            self._conn = None
