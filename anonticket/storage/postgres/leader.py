"""The leader lock and the fencing epoch: which of several instances on one PostgreSQL
database is the active one.

The lock is a session advisory lock (``pg_try_advisory_lock``) on a connection of its own,
never a pooled one: asyncpg resets a pooled connection on release with
``pg_advisory_unlock_all()``, which would drop it silently. Holding it means holding that
session, so the instance whose process dies, or whose connection the server ends, loses it
at once (a dead host: once the server's TCP keepalives notice, see docs/operations.md).

"Am I still leader?" cannot be asked by locking again (session locks stack: a second lock
by the same session succeeds), so ``still_held`` asks ``pg_locks`` for this session's
granted lock, over the lock's own connection, within a timeout; any doubt (an error, a
timeout, the connection's termination callback) is an answer of no.

Losing the lock without noticing is still possible for a moment (a partition), so taking
over also bumps ``monitor_state.epoch`` and the storage remembers the epoch it took over
with: every write transaction checks it under the cursor row's lock, in its BEGIN
(``PostgresCore._write``), so a stale leader's revocation, claim, debit, top-up, credit,
sweep, prune or delivery mark rolls back instead of landing behind the new leader's views.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg

from anonticket.storage.postgres.core import PostgresCore, connection_settings

log = logging.getLogger("anonticket.leader")

# an arbitrary 64-bit key of our own ("anonlead"); pg_locks shows it as classid/objid halves
LEADER_LOCK_KEY = 0x616E_6F6E_6C65_6164
# the lock's session is idle between checks: keepalives are what tell the server its
# peer is gone (no effect over a Unix socket, where the kernel tells it at once)
_KEEPALIVES = {"tcp_keepalives_idle": "3", "tcp_keepalives_interval": "1",
               "tcp_keepalives_count": "3"}


class LeaderLock:
    def __init__(self, dsn: str, *, timeout: float = 2.0, busy_timeout_ms: int = 5000) -> None:
        self._dsn = dsn
        self._timeout = timeout
        self._busy_timeout_ms = busy_timeout_ms
        self._conn: asyncpg.Connection | None = None
        self._held = False
        self.lost = asyncio.Event()  # set when the lock's connection ends while held

    @property
    def held(self) -> bool:
        return self._held

    async def try_acquire(self) -> bool:
        """True if this instance now holds the lock; False if another does or the server
        cannot be reached (the caller tries again later)."""
        try:
            if self._conn is None or self._conn.is_closed():
                self._conn = await asyncio.wait_for(asyncpg.connect(
                    self._dsn, timeout=self._timeout,
                    server_settings={**connection_settings(self._busy_timeout_ms),
                                     "application_name": "anonticket-leader", **_KEEPALIVES},
                ), self._timeout)
                self._conn.add_termination_listener(self._terminated)
            got = await self._conn.fetchval("SELECT pg_try_advisory_lock($1)", LEADER_LOCK_KEY,
                                            timeout=self._timeout)
        except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError,
                asyncpg.InternalClientError) as exc:
            log.info("leader lock not reachable (%s)", type(exc).__name__)
            await self.release()
            return False
        if got:
            self.lost.clear()
            self._held = True
        return bool(got)

    async def still_held(self) -> bool:
        """Whether this session still holds the lock, as the server sees it right now."""
        conn = self._conn
        if not self._held or conn is None or conn.is_closed() or self.lost.is_set():
            return False
        try:
            count = await conn.fetchval(
                """SELECT count(*) FROM pg_locks
                   WHERE locktype = 'advisory' AND granted AND pid = pg_backend_pid()
                     AND classid = ($1::bigint >> 32)::oid
                     AND objid = ($1::bigint & 4294967295)::oid AND objsubid = 1""",
                LEADER_LOCK_KEY, timeout=self._timeout)
        except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError,
                asyncpg.InternalClientError) as exc:
            log.warning("leader lock check failed (%s)", type(exc).__name__)
            return False
        return count == 1

    async def release(self) -> None:
        """Give the lock up by ending its session (which nothing can survive)."""
        self._held = False
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            conn.remove_termination_listener(self._terminated)
            try:
                await asyncio.wait_for(conn.close(), self._timeout)
            except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
                conn.terminate()

    def _terminated(self, conn: asyncpg.Connection) -> None:
        if self._held:
            log.warning("the leader lock's connection ended")
            self.lost.set()


async def take_over(storage: PostgresCore) -> int:
    """Bump the fencing epoch and fence ``storage`` with it; returns the new epoch.

    The UPDATE waits for every write transaction of the previous leader that holds the
    cursor row's lock (each takes it at BEGIN: it committed under the old epoch, which was
    still right), and any later one finds the new epoch and rolls back. So once this
    returns, no write of another instance can land any more, and views loaded afterwards
    hold everything that did. A write of the previous leader stuck with its lock (a
    partition mid-transaction) holds the takeover up to ``DATABASE_BUSY_TIMEOUT_MS`` (the
    ``lock_timeout``), and then the takeover fails and is tried again next round; the
    server ends such a session after ``idle_in_transaction_session_timeout`` (60 s) at most.
    """

    async def work(db: asyncpg.Connection) -> int:
        return await db.fetchval(
            "UPDATE monitor_state SET epoch = epoch + 1 WHERE id = 1 RETURNING epoch")

    epoch = await storage._write(work, fence="")  # the one write that moves the epoch
    storage.fencing_epoch = epoch
    storage.fenced_out.clear()
    return epoch
