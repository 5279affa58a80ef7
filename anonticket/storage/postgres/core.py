"""The PostgreSQL connection and transaction core (asyncpg), the twin of ``storage.core``.

A pool serves reads concurrently. Writes are real PostgreSQL transactions (READ COMMITTED,
row locks taken in one order: payments before tokens), and in this process they still run
one at a time under an asyncio lock: the ledger's caches take each write's returned rows
in the order the writes finish, which is then the order they committed, exactly as on
SQLite. Against another process (a stale leader during a takeover) the guards are in SQL:
the claim's conditional UPDATE, ``FOR UPDATE`` before a debit or top-up decides, and the
fencing epoch, checked under the cursor row's lock by every write transaction of an
instance that became active (``_write``, and ``leader.py`` for the takeover's side).

Errors: a lost or refused connection, too many connections, a standby that is read-only,
a lock or statement timeout become ``StorageUnavailable`` (503 + Retry-After); a
serialization failure or deadlock retries the whole transaction once; a number out of
bigint's range is ``StorageValueOutOfRange``, as on SQLite. Everything else asyncpg
raises is re-raised as ``PostgresError`` carrying only the SQLSTATE and the constraint
name: asyncpg's own texts quote the offending values (``Key (pid)=(…)``, ``invalid input
for query argument $1: …``), and those are PIDs and tokens. Failing to connect at all is
``DatabaseConnectFailed``, naming the class and SQLSTATE.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from array import array
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import asyncpg

from anonticket.domain.errors import (
    DatabaseConnectFailed,
    NotActive,
    StorageUnavailable,
    StorageValueOutOfRange,
)
from anonticket.storage.core import DEFAULT_BUSY_TIMEOUT_MS
from anonticket.storage.postgres.events import PgOutbox

log = logging.getLogger("anonticket.storage")

T = TypeVar("T")
C = TypeVar("C", bound="PostgresCore")

POOL_MAX_SIZE = 8

# a retry may fix these: the server or the network, not our SQL
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,  # ConnectionError included: refused, reset, no route
    asyncio.TimeoutError,
    asyncpg.InterfaceError,  # "connection is closed", a pool being closed
    # a connection whose server ended it while idle: the FATAL notice is read as the reply
    # to the next query ("cannot switch to state …")
    asyncpg.InternalClientError,
    asyncpg.PostgresConnectionError,  # class 08
    asyncpg.OperatorInterventionError,  # class 57: admin shutdown, cannot connect now, timeouts
    asyncpg.InsufficientResourcesError,  # class 53: too many connections, disk full
    asyncpg.ReadOnlySQLTransactionError,  # a standby, or a primary being demoted
    asyncpg.LockNotAvailableError,  # lock_timeout (DATABASE_BUSY_TIMEOUT_MS)
)
_RETRY_ONCE = (asyncpg.SerializationError, asyncpg.DeadlockDetectedError)
# what a pooled connection the server closed while it sat idle raises on its next use
# (a restart, a failover, pg_terminate_backend): a read is asked once more, on a fresh one
_STALE_CONNECTION = (asyncpg.InterfaceError, asyncpg.InternalClientError,
                     asyncpg.PostgresConnectionError, asyncpg.AdminShutdownError, ConnectionError)


class FencedOut(NotActive):
    """Another instance took over since this one became active: it must not write at all.
    Raised at BEGIN, before the transaction did anything (it is rolled back). To the API it
    is the standby's answer, 503 with Retry-After (``NotActive``: nothing was applied, so
    nginx may send the request on to the new leader); to the monitor and the sender a
    storage error like any other; and it wakes the leadership, which steps down at once."""


class PostgresError(Exception):
    """A PostgreSQL error that is a bug, not an outage; the text names no value."""

    def __init__(self, sqlstate: str, kind: str, constraint: str | None = None) -> None:
        where = f" on {constraint}" if constraint else ""
        super().__init__(f"PostgreSQL error {sqlstate} ({kind}){where}")
        self.sqlstate = sqlstate
        self.constraint = constraint


class PostgresIntegrityError(PostgresError):
    """A key, foreign key or CHECK refused a row: a bug, surfaced as a 500 and in the logs."""


def _sanitised(exc: BaseException) -> BaseException:
    sqlstate = getattr(exc, "sqlstate", None) or "-----"
    constraint = getattr(exc, "constraint_name", None)
    kind = type(exc).__name__
    if isinstance(exc, asyncpg.IntegrityConstraintViolationError):
        return PostgresIntegrityError(sqlstate, kind, constraint)
    return PostgresError(sqlstate, kind, constraint)


@asynccontextmanager
async def unavailable_on_error(*, pass_conflicts: bool = False) -> AsyncIterator[None]:
    """Map asyncpg's errors (see the module docstring); ``pass_conflicts`` lets a
    serialization failure or deadlock through unchanged, for ``_write`` to retry."""
    try:
        yield
    except StorageUnavailable:
        raise
    except _RETRY_ONCE as exc:
        if pass_conflicts:
            raise
        log.warning("database unavailable: %s", type(exc).__name__)
        raise StorageUnavailable() from None
    except _UNAVAILABLE as exc:
        # the class and SQLSTATE only: a server message can quote a statement's values
        log.warning("database unavailable: %s %s", type(exc).__name__,
                    getattr(exc, "sqlstate", "") or "")
        raise StorageUnavailable() from None
    except asyncpg.PostgresError as exc:
        # bigint out of range in the server, or an int asyncpg cannot send as one
        if isinstance(exc, asyncpg.NumericValueOutOfRangeError) or (
                isinstance(exc, asyncpg.DataError) and isinstance(exc.__cause__, OverflowError)):
            raise StorageValueOutOfRange() from None
        raise _sanitised(exc) from None


class PostgresCore:
    def __init__(self, pool: asyncpg.Pool, dsn: str, busy_timeout_ms: int) -> None:
        self._pool = pool
        self._dsn = dsn
        self._busy_timeout = busy_timeout_ms / 1000
        self._write_lock = asyncio.Lock()
        # the epoch this instance took over with (leader.py); None: not fenced (one instance)
        self.fencing_epoch: int | None = None
        # set when a write of the current term was fenced out: another instance took over
        self.fenced_out = asyncio.Event()
        # webhook events are written only while this is set (PgOutboxStore.enable_outbox)
        self.outbox: PgOutbox | None = None

    @classmethod
    async def open(
        cls: type[C], dsn: str, *, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
        apply_schema: bool = True, pool_max_size: int = POOL_MAX_SIZE,
    ) -> C:
        """Connect (a multi-host DSN with ``target_session_attrs=read-write`` finds the
        primary) and bring the schema up to date; ``apply_schema=False`` is for
        maintenance commands, which must never create our tables in some other database."""
        from anonticket.storage.postgres.schema import apply_schema as apply

        try:
            pool = await asyncpg.create_pool(
                dsn, min_size=1, max_size=pool_max_size, timeout=max(busy_timeout_ms / 1000, 1),
                command_timeout=max(busy_timeout_ms / 1000, 1) * 6,
                server_settings=connection_settings(busy_timeout_ms),
            )
        except (*_UNAVAILABLE, asyncpg.PostgresError) as exc:
            # the class and SQLSTATE only: a server message can quote the user or database
            sqlstate = getattr(exc, "sqlstate", None)
            reason = type(exc).__name__ + (f" {sqlstate}" if sqlstate else "")
            raise DatabaseConnectFailed(reason) from None
        try:
            if apply_schema:
                async with unavailable_on_error(), pool.acquire() as conn:
                    await apply(conn)
        except BaseException:
            await pool.close()
            raise
        return cls(pool, dsn, busy_timeout_ms)

    async def close(self) -> None:
        async with self._write_lock:
            await self._pool.close()

    @property
    def dsn(self) -> str:
        return self._dsn

    async def _write(self, work: Callable[[asyncpg.Connection], Awaitable[T]], *,
                     fence: str = "FOR SHARE") -> T:
        """Run ``work`` in one transaction; a serialization failure or a deadlock (only
        possible against another process) rolls back and runs it once more. The webhook
        sender is woken after a COMMIT that wrote events, and a rollback forgets that
        they were written (the retry writes its own).

        Fenced (``fencing_epoch`` set, as taken when the call is made): the BEGIN carries
        the epoch check, ``fence`` (``FOR SHARE``, or ``FOR UPDATE`` for a credit, which
        moves the cursor in that row) being the lock it takes on the cursor row
        (``begin_fenced``). ``fence=""`` is the takeover's own write, unfenced."""
        epoch = self.fencing_epoch if fence else None
        begin = begin_fenced(epoch, fence) if epoch is not None else "BEGIN"
        async with self._write_lock:
            try:
                try:
                    async with unavailable_on_error(pass_conflicts=True):
                        result = await self._transaction(begin, epoch, work)
                except _RETRY_ONCE as exc:
                    log.info("transaction rolled back (%s); retrying once", type(exc).__name__)
                    if self.outbox is not None:
                        self.outbox.rolled_back()
                    async with unavailable_on_error():
                        result = await self._transaction(begin, epoch, work)
            except BaseException:
                if self.outbox is not None:
                    self.outbox.rolled_back()
                raise
        if self.outbox is not None:
            self.outbox.committed()
        return result

    async def _transaction(self, begin: str, epoch: int | None,
                           work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """BEGIN (with the fence, in the same round trip), ``work``, COMMIT; ROLLBACK on
        any failure. Written out rather than ``conn.transaction()``, whose BEGIN is a round
        trip of its own that cannot carry the check."""
        async with self._pool.acquire() as conn:
            try:
                # a simple-protocol query: several statements, one round trip, and the
                # status of the last one ("SELECT 1": the epoch is still ours, now locked)
                status = await conn.execute(begin)
                if epoch is not None and status != "SELECT 1":
                    if epoch == self.fencing_epoch:
                        self.fenced_out.set()  # this term is over: the leadership steps down
                    raise FencedOut()
                result = await work(conn)
                await conn.execute("COMMIT")
            except BaseException:
                await _roll_back(conn)
                raise
        return result

    async def _read(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        """A query on any pooled connection. Asked twice at most: a read changes nothing,
        so a connection found dead costs a retry, not the customer's request. (A write is
        never re-sent this way: its COMMIT may have landed.)"""
        async with unavailable_on_error():
            try:
                return await self._pool.fetch(sql, *args)
            except _STALE_CONNECTION:
                log.info("a pooled connection was closed by the server; reading again")
            return await self._pool.fetch(sql, *args)

    async def _load_prefixes(self, table: str, column: str, where: str = "") -> array:
        """8-byte key prefixes, sorted: one query, aggregated server-side into one bytea
        (8 MB for a million keys) over an index-only scan in key order. A million Records
        would cost more memory and time than the prefixes themselves, and the earlier
        64k-row chunks (each re-sorted by ``string_agg(… ORDER BY k)``) took 0.8 s for a
        million payments where this takes 0.27 s (docs/benchmarks.md). PostgreSQL keeps
        a sorted subquery's order into the aggregate but does not promise it; ``KeyIndex``
        checks the order and sorts only if it has to."""
        async with unavailable_on_error():
            raw, count = await self._pool.fetchrow(
                f"""SELECT string_agg(substr(k, 1, 8), ''::bytea), count(*)
                    FROM (SELECT {column} AS k FROM {table} {where} ORDER BY {column}) AS s""")
        prefixes = array("Q")
        if not count:
            return prefixes
        if len(raw) != 8 * count:
            raise RuntimeError("a stored key is shorter than 8 bytes")
        prefixes.frombytes(raw)
        if sys.byteorder == "little":
            prefixes.byteswap()  # the prefixes are big-endian (domain.key_prefix)
        return prefixes


def begin_fenced(epoch: int, lock: str) -> str:
    """BEGIN and the fencing check as one simple-protocol query: the cursor row is locked
    (``lock``: ``FOR SHARE``, or ``FOR UPDATE``) only while its epoch is still ``epoch``,
    so the status says "SELECT 1" when this instance may write and "SELECT 0" once another
    took over. The takeover's UPDATE of the epoch waits for every transaction that holds
    the lock, and a lock asked for while that UPDATE is in flight waits for it and then
    re-reads the row (READ COMMITTED's re-check): it finds the new epoch. So a write either
    committed before the takeover, or does nothing. The epoch is our own integer, never
    input; the simple protocol has no parameters."""
    if lock not in ("FOR UPDATE", "FOR SHARE"):
        raise ValueError("lock must be FOR UPDATE or FOR SHARE")
    return f"BEGIN; SELECT FROM monitor_state WHERE id = 1 AND epoch = {int(epoch)} {lock}"


async def _roll_back(conn: asyncpg.Connection) -> None:
    """End a failed transaction; a connection that cannot even do that is dropped (the pool
    opens a new one), and the original error is the one that matters."""
    if conn.is_closed():
        return
    try:
        await conn.execute("ROLLBACK")
    except Exception:  # noqa: BLE001 - the caller re-raises the original error
        conn.terminate()


def connection_settings(busy_timeout_ms: int) -> dict[str, str]:
    """Per-session settings: a lock held by someone else waits DATABASE_BUSY_TIMEOUT_MS
    (like SQLite's busy timeout), and the sessions are recognisable in pg_stat_activity."""
    return {"application_name": "anonticket", "lock_timeout": str(int(busy_timeout_ms)),
            "idle_in_transaction_session_timeout": "60000"}


def affected(status: str) -> int:
    """The row count of an asyncpg command status such as ``DELETE 3``."""
    return int(status.rsplit(" ", 1)[-1])


def column_list(columns: str, alias: str = "") -> str:
    prefix = f"{alias}." if alias else ""
    return ", ".join(f"{prefix}{c.strip()}" for c in columns.split(","))
