"""The checkout's subaddress allocations on PostgreSQL: ``storage.subaddresses``'s contract.

The record is a fenced write like every other: a stale leader's allocation never lands
after a takeover, and the primary key refuses an index recorded twice.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from anonticket.storage.postgres.core import PostgresCore
from anonticket.storage.subaddresses import Allocation


class PgSubaddressStore(PostgresCore):
    async def record_subaddress(self, allocation: Allocation) -> bool:
        a = allocation

        async def work(db: asyncpg.Connection) -> bool:
            row = await db.fetchrow(
                """INSERT INTO subaddresses (account, idx, pid, address, created_at, expires_at)
                   VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING RETURNING idx""",
                a.account, a.index, a.pid, a.address, a.created_at, a.expires_at)
            return row is not None

        return await self._write(work)

    async def count_unpaid_subaddresses(self, now: int) -> int:
        rows = await self._read(
            """SELECT count(*) FROM subaddresses AS s
               WHERE s.expires_at > $1 AND NOT EXISTS (SELECT 1 FROM payments AS p WHERE p.pid = s.pid)""",
            now)
        return rows[0][0]

    async def subaddress_pids(self, account: int, indexes: Sequence[int]) -> dict[int, bytes]:
        rows = await self._read(
            "SELECT idx, pid FROM subaddresses WHERE account = $1 AND idx = ANY($2::bigint[])",
            account, sorted(set(indexes)))
        return {idx: bytes(pid) for idx, pid in rows}

    async def subaddress_of(self, pid: bytes) -> str | None:
        rows = await self._read("SELECT address FROM subaddresses WHERE pid = $1", pid)
        return rows[0][0] if rows else None

    async def highest_subaddress(self, account: int) -> tuple[int, str] | None:
        rows = await self._read(
            "SELECT idx, address FROM subaddresses WHERE account = $1 ORDER BY idx DESC LIMIT 1",
            account)
        return (rows[0][0], rows[0][1]) if rows else None
