"""The connection and transaction core every part of the storage builds on.

One WAL SQLite file, one writer connection, one query-only reader. Every multi-statement
change runs inside ``BEGIN IMMEDIATE`` under one asyncio lock, so statements from two
coroutines never interleave inside one transaction. Reads go to the second connection:
WAL lets it see the last commit without waiting for the writer. Errors from SQLite other
than constraint bugs become ``StorageUnavailable`` (a 503 with Retry-After) and never
carry SQL parameters; a number past 64 bits is ``StorageValueOutOfRange``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import stat
import sys
import time
from array import array
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from operator import itemgetter
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from anonticket.domain.errors import (
    DatabaseConnectFailed,
    StorageUnavailable,
    StorageValueOutOfRange,
)
from anonticket.storage.connect import connect_sqlite
from anonticket.storage.events import Outbox
from anonticket.storage.schema import apply_schema
from anonticket.storage.wal_checkpoint import BackgroundCheckpointer

DEFAULT_BUSY_TIMEOUT_MS = 5000
# SQLite's default limit on bound parameters is 32766; stay well below it per statement.
CHUNK = 5000
# SQLite's automatic checkpoint on the writer, in WAL pages (64 MiB): only the bound on
# the WAL's size now. The background checkpointer copies the frames a tenth of a second
# after their commit, off the writer (anonticket/storage/wal_checkpoint.py); this one runs inside
# a COMMIT only when the WAL reaches the limit, and then has little left to copy.
_WAL_AUTOCHECKPOINT_PAGES = 16000
# The database holds every unredeemed PID and live token: only its owner may read it.
_DIRECTORY_MODE = 0o700
# SQLITE_CONSTRAINT_DATATYPE (sqlite3 has no name for it before Python 3.12)
_SQLITE_CONSTRAINT_DATATYPE = 3091
_FILE_MODE = 0o600

log = logging.getLogger("anonticket.storage")

T = TypeVar("T")


@asynccontextmanager
async def unavailable_on_error() -> AsyncIterator[None]:
    try:
        yield
    except OverflowError:  # sqlite3 cannot bind an int past 64 bits
        raise StorageValueOutOfRange() from None
    except sqlite3.IntegrityError as exc:
        # getattr: an IntegrityError raised by other code (or built by hand) has no code
        if getattr(exc, "sqlite_errorcode", None) == _SQLITE_CONSTRAINT_DATATYPE:
            # a sum past 2^63 - 1 turns into a REAL, which a STRICT INTEGER column refuses
            raise StorageValueOutOfRange() from None
        raise  # a bug, not an outage: let it surface as a 500 and in the logs
    except (sqlite3.OperationalError, sqlite3.DatabaseError) as exc:
        # sqlite messages ("database is locked", "database or disk is full") carry no parameters
        log.warning("database unavailable: %s", exc)
        raise StorageUnavailable() from None


def database_path(url: str) -> str:
    """Accept a plain path or the Rust original's ``sqlite://path[?mode=rwc]`` form."""
    path = url.removeprefix("sqlite://").removeprefix("sqlite:")
    return path.split("?", 1)[0]


def create_private_database(path: Path) -> None:
    """Create the directory 0700 and the database file 0600, whatever the umask.

    SQLite gives the -wal and -shm files the database file's own mode, so creating the
    file first is what keeps all three private. Existing files keep their mode (an
    operator may have chosen a group on purpose) but a world-readable one is reported.
    """
    if not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(path.parent, _DIRECTORY_MODE)  # mkdir's mode is filtered by the umask
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _FILE_MODE)
    except FileExistsError:
        mode = os.stat(path).st_mode
        if stat.S_ISREG(mode) and mode & stat.S_IROTH:  # not a directory, which fails later
            log.warning("the database file is readable by every local user; "
                        "chmod 0600 it (and its -wal and -shm files)")
        return
    try:
        os.fchmod(fd, _FILE_MODE)
    finally:
        os.close(fd)


class StorageCore:
    def __init__(
        self, writer: aiosqlite.Connection, reader: aiosqlite.Connection, path: Path,
        busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
    ) -> None:
        self._writer = writer
        self._reader = reader
        self._path = path
        self._write_lock = asyncio.Lock()
        self.checkpointer = BackgroundCheckpointer(path, busy_timeout_ms)
        # webhook events are written only while this is set (OutboxStore.enable_outbox)
        self.outbox: Outbox | None = None

    @classmethod
    async def open(
        cls: type[T],
        path: str | Path,
        *,
        synchronous: str = "NORMAL",
        busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
        apply_schema: bool = True,
    ) -> T:
        """Open (creating if needed) the database and bring its schema up to date.

        ``apply_schema=False`` is for maintenance commands: checking some other SQLite
        file must never add our tables to it.
        """
        path = Path(path)
        if apply_schema:
            create_private_database(path)
        try:
            writer = await connect_sqlite(path, isolation_level=None)
        except sqlite3.Error as exc:
            # SQLite's own text ("unable to open database file") names no path or value
            raise DatabaseConnectFailed(f"{type(exc).__name__}: {exc}") from None
        reader = None
        try:
            # WAL can only be switched outside a transaction; it persists in the file.
            await writer.execute("PRAGMA journal_mode=WAL")
            await writer.execute(f"PRAGMA synchronous={synchronous}")
            await writer.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            await writer.execute("PRAGMA foreign_keys=ON")
            await writer.execute(f"PRAGMA wal_autocheckpoint={_WAL_AUTOCHECKPOINT_PAGES}")
            if apply_schema:
                await _apply(writer)
            reader = await connect_read_only(path, busy_timeout_ms)
        except BaseException:
            if reader is not None:
                await reader.close()
            await writer.close()
            raise
        return cls(writer, reader, path, busy_timeout_ms)  # type: ignore[call-arg]

    async def close(self) -> None:
        await self.checkpointer.aclose()
        await self._reader.close()
        async with self._write_lock:
            await self._writer.close()

    @asynccontextmanager
    async def _transaction(self, *, checkpoint_later: bool = False
                           ) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction under the write lock.

        ``checkpoint_later`` is for a transaction that rewrites much of the file: its COMMIT
        does not copy the WAL back into the database itself; the background checkpointer
        does, once the lock is released (anonticket/storage/wal_checkpoint.py).
        """
        async with self._write_lock, unavailable_on_error():
            if checkpoint_later:
                await self._writer.execute("PRAGMA wal_autocheckpoint=0")
            # BEGIN and COMMIT are inside the try: a BEGIN whose await was cancelled still
            # runs on aiosqlite's thread, and a failed COMMIT (a deferred foreign key, a
            # full disk) leaves the transaction open; either way, without the ROLLBACK every
            # later BEGIN fails with "cannot start a transaction within a transaction".
            try:
                await self._writer.execute("BEGIN IMMEDIATE")
                yield self._writer
                await self._writer.execute("COMMIT")
            except BaseException:
                await self._rollback()
                if self.outbox is not None:
                    self.outbox.rolled_back()
                raise
            finally:
                if checkpoint_later:
                    await self._writer.execute(
                        f"PRAGMA wal_autocheckpoint={_WAL_AUTOCHECKPOINT_PAGES}")
        if checkpoint_later:
            self.checkpointer.request()
        else:
            self.checkpointer.soon()
        if self.outbox is not None:
            self.outbox.committed()  # wakes the webhook sender if events were written

    async def _in_one_call(self, work: Callable[..., T], *args: Any) -> T:
        """``work(connection, *args)`` between BEGIN IMMEDIATE and COMMIT, the three as ONE
        call on the writer's thread: one round trip instead of three for a hot, short
        transaction (each is a thread switch each way and a wake-up of the event loop).

        ``work`` runs on that thread with the sqlite3 connection and must not touch the
        outbox. A failure in it or in COMMIT is rolled back as in ``_transaction``. Unlike
        there, a caller cancelled while the call runs does not roll it back: the call
        finishes and commits (aiosqlite cannot stop it), so its effects are kept, which
        suits a work whose every effect is answerable later (a debit under its key).
        """
        async with self._write_lock, unavailable_on_error():
            try:
                # aiosqlite has no public "run this on the connection's thread"; _execute
                # is what each of its public methods calls, and _conn its sqlite3
                # connection, used here only on that thread, under the write lock
                result = await self._writer._execute(
                    _begin_work_commit, self._writer._conn, work, args)
            except BaseException:
                await self._rollback()
                raise
        self.checkpointer.soon()
        return result

    async def _rollback(self) -> None:
        """Roll back whatever is open, after every statement already queued on the writer.

        ``in_transaction`` is only trustworthy once the queue has drained, so the ROLLBACK
        is sent unconditionally (aiosqlite runs statements in order) and "no transaction
        is active" is the expected answer when BEGIN itself failed.
        """
        try:
            await self._writer.execute("ROLLBACK")
        except sqlite3.OperationalError:
            if self._writer.in_transaction:
                log.error("rollback failed; the writer connection is unusable")

    async def _read(self, sql: str, parameters: Sequence[object] = ()) -> list[sqlite3.Row]:
        async with unavailable_on_error():
            return list(await self._reader.execute_fetchall(sql, parameters))

    async def _load_prefixes(self, sql: str) -> array:
        """Stream 8-byte key prefixes in big chunks: one list of a million rows would double RSS.

        Both tables are WITHOUT ROWID on that key, so ORDER BY key costs no sort and the
        big-endian prefixes arrive sorted; ``KeyIndex`` checks that anyway.
        """
        prefixes = array("Q")
        async with unavailable_on_error():
            cursor = await self._reader.execute(sql)
            try:
                while rows := await cursor.fetchmany(65536):
                    # one join and one byteswap per chunk, not int.from_bytes per row:
                    # this halves start-up with a million payments (docs/benchmarks.md)
                    raw = b"".join(map(itemgetter(0), rows))
                    if len(raw) != 8 * len(rows):
                        raise RuntimeError("a stored key is shorter than 8 bytes")
                    chunk = array("Q", raw)
                    if sys.byteorder == "little":
                        chunk.byteswap()  # the prefixes are big-endian (domain.key_prefix)
                    prefixes.extend(chunk)
            finally:
                await cursor.close()
        return prefixes


def _begin_work_commit(conn: sqlite3.Connection, work: Callable[..., T], args: Sequence[Any]) -> T:
    conn.execute("BEGIN IMMEDIATE")
    result = work(conn, *args)
    conn.execute("COMMIT")
    return result


async def connect_read_only(path: Path, busy_timeout_ms: int) -> aiosqlite.Connection:
    """A query-only connection; WAL lets it read the last commit while the writer works."""
    # as_uri() percent-encodes the path: a "#" or "%" in a directory name would
    # otherwise end or corrupt the URI and open some other file
    uri = path.absolute().as_uri() + "?mode=ro"
    conn = await connect_sqlite(uri, uri=True, isolation_level=None)
    try:
        await conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        await conn.execute("PRAGMA query_only=ON")
    except BaseException:
        await conn.close()
        raise
    return conn


async def _apply(db: aiosqlite.Connection) -> None:
    await apply_schema(db)


def chunks(items: Sequence[T]) -> Iterable[Sequence[T]]:
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]


def marks(count: int) -> str:
    """``?,?,…`` for an IN list of ``count`` bound parameters."""
    return ",".join("?" * count)


def unix_now() -> int:
    return int(time.time())
