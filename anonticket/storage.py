"""The only module with SQL: one WAL SQLite file, one writer connection, one reader.

Every multi-statement change runs inside ``BEGIN IMMEDIATE`` under one asyncio lock, so
statements from two coroutines never interleave inside one transaction. Reads go to a
second, query-only connection: WAL lets it see the last commit without waiting for the
writer. Errors from SQLite other than constraint bugs become ``StorageUnavailable`` (a
503 with Retry-After) and never carry SQL parameters.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import sys
import time
from array import array
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import Any

import aiosqlite

from anonticket.domain import PaymentId, Transfer, derive_service_token
from anonticket.errors import StorageUnavailable
from anonticket.wal_checkpoint import BackgroundCheckpointer

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schema.sql"
SCHEMA_VERSION = 2
# SQLite's default limit on bound parameters is 32766; stay well below it per statement.
_CHUNK = 5000
DEFAULT_BUSY_TIMEOUT_MS = 5000
# A larger checkpoint interval turns many small random WAL writes into fewer big ones.
_WAL_AUTOCHECKPOINT_PAGES = 4000
# From this many transfers in one credit, COMMIT leaves the WAL copy to the background
# checkpointer (anonticket/wal_checkpoint.py); smaller ones checkpoint as usual.
_BULK_CREDIT_TRANSFERS = 1000

log = logging.getLogger("anonticket.storage")


@dataclass(frozen=True, slots=True)
class TokenRow:
    token: bytes
    amount: int
    issued_at: int
    revoked_at: int | None
    revoke_reason: str | None
    abuse_score: int


@dataclass(frozen=True, slots=True)
class ClaimRow:
    """A PID's state after a claim attempt: claimed (now or before) or not claimable."""

    status: int  # 0 unclaimed (underpaid), 1 claimed
    amount: int
    token: bytes | None
    claimed_now: bool


@dataclass(frozen=True, slots=True)
class CreditResult:
    credited_pids: list[bytes]  # PIDs that received new credit in this call
    topped_up: dict[bytes, tuple[bytes, int]]  # pid -> (token, new amount) of claimed PIDs
    transfers_credited: int


@asynccontextmanager
async def _unavailable_on_error() -> AsyncIterator[None]:
    try:
        yield
    except sqlite3.IntegrityError:
        raise  # a bug, not an outage: let it surface as a 500 and in the logs
    except (sqlite3.OperationalError, sqlite3.DatabaseError) as exc:
        # sqlite messages ("database is locked", "database or disk is full") carry no parameters
        log.warning("database unavailable: %s", exc)
        raise StorageUnavailable() from None


def database_path(url: str) -> str:
    """Accept a plain path or the Rust original's ``sqlite://path[?mode=rwc]`` form."""
    path = url.removeprefix("sqlite://").removeprefix("sqlite:")
    return path.split("?", 1)[0]


class Storage:
    def __init__(
        self, writer: aiosqlite.Connection, reader: aiosqlite.Connection, path: Path,
        busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
    ) -> None:
        self._writer = writer
        self._reader = reader
        self._path = path
        self._write_lock = asyncio.Lock()
        self.checkpointer = BackgroundCheckpointer(path, busy_timeout_ms)

    @classmethod
    async def open(
        cls,
        path: str | Path,
        *,
        synchronous: str = "NORMAL",
        busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
        apply_schema: bool = True,
    ) -> Storage:
        """Open (creating if needed) the database and bring its schema up to date.

        ``apply_schema=False`` is for maintenance commands: checking some other SQLite
        file must never add our tables to it.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = await aiosqlite.connect(path, isolation_level=None)
        reader = None
        try:
            # WAL can only be switched outside a transaction; it persists in the file.
            await writer.execute("PRAGMA journal_mode=WAL")
            await writer.execute(f"PRAGMA synchronous={synchronous}")
            await writer.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            await writer.execute("PRAGMA foreign_keys=ON")
            await writer.execute(f"PRAGMA wal_autocheckpoint={_WAL_AUTOCHECKPOINT_PAGES}")
            if apply_schema:
                await _apply_schema(writer)
            reader = await _connect_read_only(path, busy_timeout_ms)
        except BaseException:
            if reader is not None:
                await reader.close()
            await writer.close()
            raise
        return cls(writer, reader, path, busy_timeout_ms)

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
        does, once the lock is released (anonticket/wal_checkpoint.py).
        """
        async with self._write_lock, _unavailable_on_error():
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
                raise
            finally:
                if checkpoint_later:
                    await self._writer.execute(
                        f"PRAGMA wal_autocheckpoint={_WAL_AUTOCHECKPOINT_PAGES}")
        if checkpoint_later:
            self.checkpointer.request()

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

    # ------------------------------------------------------------------ redeem
    async def claim_payments(
        self, pids: Sequence[bytes], min_amount: int, now: int
    ) -> dict[bytes, ClaimRow]:
        """Claim every given PID whose confirmed total reaches ``min_amount``, in one transaction.

        The conditional UPDATE is the exactly-one-winner guard: a PID already claimed
        (by this batch's predecessor or anyone) is not returned by RETURNING, so only
        one caller ever sees ``claimed_now``. Absent PIDs are absent from the result.
        """
        result: dict[bytes, ClaimRow] = {}
        async with self._transaction() as db:
            for chunk in _chunks(pids):
                marks = ",".join("?" * len(chunk))
                claimed = await db.execute_fetchall(
                    f"""UPDATE payments SET status = 1, claimed_at = ?
                        WHERE status = 0 AND amount >= ? AND pid IN ({marks})
                        RETURNING pid, txid, amount""",
                    (now, min_amount, *chunk),
                )
                tokens = []
                for pid, txid, amount in claimed:
                    token = derive_service_token(PaymentId(pid), txid.hex()).raw
                    tokens.append((token, pid, amount, now))
                    result[pid] = ClaimRow(1, amount, token, claimed_now=True)
                if tokens:
                    await db.executemany(
                        """INSERT INTO service_tokens (token, pid, amount, issued_at)
                           VALUES (?, ?, ?, ?)""",
                        tokens,
                    )
            rest = [pid for pid in pids if pid not in result]
            for chunk in _chunks(rest):
                marks = ",".join("?" * len(chunk))
                rows = await db.execute_fetchall(
                    f"""SELECT p.pid, p.status, p.amount, t.token FROM payments AS p
                        LEFT JOIN service_tokens AS t ON t.pid = p.pid
                        WHERE p.pid IN ({marks})""",
                    chunk,
                )
                for pid, status, amount, token in rows:
                    result[pid] = ClaimRow(status, amount, token, claimed_now=False)
        return result

    async def get_claim(self, pid: bytes) -> ClaimRow | None:
        async with _unavailable_on_error():
            rows = await self._reader.execute_fetchall(
                """SELECT p.status, p.amount, t.token FROM payments AS p
                   LEFT JOIN service_tokens AS t ON t.pid = p.pid WHERE p.pid = ?""",
                (pid,),
            )
        for status, amount, token in rows:
            return ClaimRow(status, amount, token, claimed_now=False)
        return None

    # ------------------------------------------------------------------ tokens
    async def get_token(self, token: bytes) -> TokenRow | None:
        async with _unavailable_on_error():
            rows = await self._reader.execute_fetchall(
                """SELECT token, amount, issued_at, revoked_at, revoke_reason, abuse_score
                   FROM service_tokens WHERE token = ?""",
                (token,),
            )
        return TokenRow(*rows[0]) if rows else None

    async def revoke_token(
        self, token: bytes, reason: str | None, abuse_score: int | None, now: int
    ) -> TokenRow | None:
        """Revoke idempotently: the first revocation's time and reason stay; every call is audited."""
        async with self._transaction() as db:
            rows = await db.execute_fetchall(
                """UPDATE service_tokens SET
                       revoke_reason = CASE WHEN revoked_at IS NULL THEN ?1 ELSE revoke_reason END,
                       revoked_at = coalesce(revoked_at, ?2),
                       abuse_score = CASE WHEN ?3 IS NULL THEN abuse_score
                                          ELSE max(abuse_score, ?3) END
                   WHERE token = ?4
                   RETURNING token, amount, issued_at, revoked_at, revoke_reason, abuse_score""",
                (reason, now, abuse_score, token),
            )
            if not rows:
                return None
            await db.execute(
                """INSERT INTO audit_log (at, action, token, reason, abuse_score)
                   VALUES (?, 'revoke', ?, ?, ?)""",
                (now, token, reason, abuse_score),
            )
        return TokenRow(*rows[0])

    async def list_audit(self, token: bytes) -> list[dict[str, object]]:
        async with _unavailable_on_error():
            rows = await self._reader.execute_fetchall(
                """SELECT at, action, reason, abuse_score FROM audit_log
                   WHERE token = ? ORDER BY id""",
                (token,),
            )
        return [{"at": at, "action": a, "reason": r, "abuse_score": s} for at, a, r, s in rows]

    # ------------------------------------------------------------------ monitor
    async def credit_transfers(
        self, transfers: Iterable[Transfer], scanned_height: int | None, now: int
    ) -> CreditResult:
        """Credit confirmed transfers and move the cursor in ONE transaction.

        A crash before COMMIT loses both, after it keeps both, so the next poll neither
        misses nor double-counts. Transfers already stored (same txid) are skipped, which
        makes re-scanning an overlapping window harmless.
        """
        incoming = {t.txid: t for t in transfers}
        # a bulk credit rewrites pages all over the tables: its WAL copy goes to the background
        bulk = len(incoming) >= _BULK_CREDIT_TRANSFERS
        async with self._transaction(checkpoint_later=bulk) as db:
            # every list below is sorted by the key its statement walks: consecutive rows
            # then land in the same B-tree pages, which is most of the cost on a big table
            fresh = await _insert_fresh_transfers(db, incoming, now)
            # one row per PID: the sum, and the earliest transfer (lowest height, then txid)
            per_pid: dict[bytes, list[Any]] = {}
            for t in fresh:
                row = per_pid.get(t.pid.raw)
                if row is None:
                    per_pid[t.pid.raw] = [t.pid.raw, t.txid, t.amount, t.height, now]
                    continue
                row[2] += t.amount
                if (t.height, t.txid) < (row[3], row[1]):
                    row[1], row[3] = t.txid, t.height
            payments = [per_pid[pid] for pid in sorted(per_pid)]
            await db.executemany(
                """INSERT INTO payments (pid, txid, amount, first_height, created_at)
                   VALUES (?1, ?2, ?3, ?4, ?5)
                   ON CONFLICT (pid) DO UPDATE SET
                       amount = amount + excluded.amount,
                       txid = CASE WHEN status = 0
                                    AND (excluded.first_height, excluded.txid) < (first_height, txid)
                                   THEN excluded.txid ELSE txid END,
                       first_height = min(first_height, excluded.first_height)""",
                payments,
            )
            topped_up: dict[bytes, tuple[bytes, int]] = {}
            for chunk in _chunks(list(per_pid)):
                marks = ",".join("?" * len(chunk))
                rows = await db.execute_fetchall(
                    f"""UPDATE service_tokens
                        SET amount = (SELECT amount FROM payments WHERE pid = service_tokens.pid)
                        WHERE pid IN ({marks}) RETURNING pid, token, amount""",
                    chunk,
                )
                topped_up.update((pid, (token, amount)) for pid, token, amount in rows)
            if scanned_height is not None:
                await db.execute(
                    "UPDATE monitor_state SET scanned_height = ? WHERE id = 1", (scanned_height,)
                )
        return CreditResult(list(per_pid), topped_up, len(fresh))

    async def get_cursor(self) -> int | None:
        async with _unavailable_on_error():
            rows = await self._reader.execute_fetchall(
                "SELECT scanned_height FROM monitor_state WHERE id = 1"
            )
        return rows[0][0] if rows else None

    # ------------------------------------------------------------------ start-up and admin
    async def load_pid_prefixes(self) -> array:
        return await self._load_prefixes("SELECT substr(pid, 1, 8) FROM payments ORDER BY pid")

    async def load_token_prefixes(self) -> array:
        # ORDER BY pins the primary-key scan: the planner may otherwise pick the smaller
        # UNIQUE(pid) index, which covers the token too but yields pid order
        return await self._load_prefixes(
            "SELECT substr(token, 1, 8) FROM service_tokens ORDER BY token"
        )

    async def _load_prefixes(self, sql: str) -> array:
        """Stream 8-byte key prefixes in big chunks: one list of a million rows would double RSS.

        Both tables are WITHOUT ROWID on that key, so ORDER BY key costs no sort and the
        big-endian prefixes arrive sorted; ``KeyIndex`` checks that anyway.
        """
        prefixes = array("Q")
        async with _unavailable_on_error():
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

    async def get_stats(self) -> dict[str, int | None]:
        async with _unavailable_on_error():
            rows = await self._reader.execute_fetchall(
                """SELECT
                     (SELECT count(*) FROM payments WHERE status = 0),
                     (SELECT count(*) FROM payments WHERE status = 1),
                     (SELECT count(*) FROM service_tokens WHERE revoked_at IS NULL),
                     (SELECT count(*) FROM service_tokens WHERE revoked_at IS NOT NULL),
                     (SELECT coalesce(sum(amount), 0) FROM transfers),
                     (SELECT count(*) FROM transfers),
                     (SELECT scanned_height FROM monitor_state WHERE id = 1)"""
            )
        keys = ("payments_unclaimed", "payments_claimed", "tokens_active", "tokens_revoked",
                "credited_piconero", "transfers", "scanned_height")
        return dict(zip(keys, rows[0]))

    async def backup(self, target: str | Path) -> None:
        """Online backup: consistent even while the service keeps writing.

        The copy is read through a connection of its own, never the writer: from the
        writer, a backup taken while a transaction is open would copy its uncommitted
        (and maybe later rolled back) rows; nor does it make redeems wait behind the reader.
        """
        async with _unavailable_on_error():
            source = await _connect_read_only(self._path, DEFAULT_BUSY_TIMEOUT_MS)
            try:
                dest = await aiosqlite.connect(target)
                try:
                    await source.backup(dest)
                finally:
                    await dest.close()
            finally:
                await source.close()

    async def ledger_problems(self) -> list[str]:
        """What the schema no longer enforces: every transfer has its payment, and every
        payment's amount is the sum of its transfers. One grouped scan, no index needed."""
        async with _unavailable_on_error():
            rows = await self._reader.execute_fetchall(
                """WITH sums AS MATERIALIZED (
                       SELECT pid, sum(amount) AS total FROM transfers GROUP BY pid)
                   SELECT
                     (SELECT count(*) FROM sums
                        WHERE NOT EXISTS (SELECT 1 FROM payments AS p WHERE p.pid = sums.pid)),
                     (SELECT count(*) FROM payments AS p LEFT JOIN sums USING (pid)
                        WHERE sums.total IS NULL OR sums.total != p.amount)"""
            )
        orphans, mismatched = rows[0]
        problems = []
        if orphans:
            problems.append(f"{orphans} PIDs have transfers but no payment row")
        if mismatched:
            problems.append(f"{mismatched} payments differ from the sum of their transfers")
        return problems

    async def integrity_check(self) -> tuple[list[str], int]:
        async with _unavailable_on_error():
            rows = await self._reader.execute_fetchall("PRAGMA integrity_check")
            version = await self._reader.execute_fetchall("PRAGMA user_version")
        return [r[0] for r in rows], version[0][0]


async def _connect_read_only(path: Path, busy_timeout_ms: int) -> aiosqlite.Connection:
    """A query-only connection; WAL lets it read the last commit while the writer works."""
    # as_uri() percent-encodes the path: a "#" or "%" in a directory name would
    # otherwise end or corrupt the URI and open some other file
    uri = path.absolute().as_uri() + "?mode=ro"
    conn = await aiosqlite.connect(uri, uri=True, isolation_level=None)
    try:
        await conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        await conn.execute("PRAGMA query_only=ON")
    except BaseException:
        await conn.close()
        raise
    return conn


async def _apply_schema(db: aiosqlite.Connection) -> None:
    """Apply schema.sql and its user_version in one transaction (the script holds BEGIN/COMMIT)."""
    (version,) = (await db.execute_fetchall("PRAGMA user_version"))[0]
    if version > SCHEMA_VERSION:
        raise RuntimeError(
            f"database schema version {version} is newer than this program ({SCHEMA_VERSION})"
        )
    if version < SCHEMA_VERSION:
        try:
            await db.executescript(SCHEMA_PATH.read_text())
        except BaseException:
            if db.in_transaction:
                await db.rollback()
            raise


async def _insert_fresh_transfers(
    db: aiosqlite.Connection, incoming: dict[bytes, Transfer], now: int
) -> list[Transfer]:
    """Insert the transfers not stored yet, in txid order (their key); return those.

    Optimistic: a poll's transfers are nearly always all new, so they are inserted in one
    pass and the count of inserted rows says whether that was so. Only when some txid was
    already stored (a rescan after a restart, a reorg) is the pass undone and the stored
    ones looked up first; that lookup would otherwise cost every poll ~5 % of its time.
    """
    in_txid_order = [incoming[txid] for txid in sorted(incoming)]
    rows = [(t.txid, t.pid.raw, t.amount, t.height, now) for t in in_txid_order]
    await db.execute("SAVEPOINT fresh_transfers")
    before = db.total_changes
    await db.executemany(
        "INSERT INTO transfers (txid, pid, amount, height, credited_at) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT (txid) DO NOTHING", rows)
    if db.total_changes - before == len(rows):
        await db.execute("RELEASE fresh_transfers")
        return in_txid_order
    await db.execute("ROLLBACK TO fresh_transfers")
    await db.execute("RELEASE fresh_transfers")
    known: set[bytes] = set()
    for chunk in _chunks([t.txid for t in in_txid_order]):
        marks = ",".join("?" * len(chunk))
        found = await db.execute_fetchall(f"SELECT txid FROM transfers WHERE txid IN ({marks})", chunk)
        known.update(txid for (txid,) in found)
    await db.executemany(
        "INSERT INTO transfers (txid, pid, amount, height, credited_at) VALUES (?, ?, ?, ?, ?)",
        [row for row in rows if row[0] not in known])
    return [t for t in in_txid_order if t.txid not in known]


def _chunks(items: Sequence[bytes]) -> Iterable[Sequence[bytes]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def unix_now() -> int:
    return int(time.time())
