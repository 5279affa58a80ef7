"""Opening an aiosqlite connection without leaving its worker thread behind on failure.

aiosqlite (0.22) starts a worker thread per connection. When the connect itself fails (a
path that is a directory, a file the process may not open), it queues a stop on that thread,
and the thread's last act is to answer into the event loop: if the loop has closed by then
(``serve`` exiting on that very error), the thread prints a "RuntimeError: Event loop is
closed" traceback after our one-line message. Waiting for the thread, while the loop still
runs, ends it cleanly.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import aiosqlite

_JOIN_TIMEOUT_SECS = 10.0


async def connect_sqlite(database: str | Path, **kwargs: Any) -> aiosqlite.Connection:
    """``aiosqlite.connect(database, **kwargs)``, awaited; on failure its thread is joined."""
    connection = aiosqlite.connect(database, **kwargs)
    try:
        return await connection
    except BaseException:
        worker = getattr(connection, "_thread", None)  # private: absent in another version
        if isinstance(worker, threading.Thread) and worker.is_alive():
            await asyncio.to_thread(worker.join, _JOIN_TIMEOUT_SECS)
        raise
