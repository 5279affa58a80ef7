"""Maintenance reads: counts, the online backup, and the ledger invariants ``db check``
verifies beyond what the schema's keys and CHECKs enforce."""

from __future__ import annotations

from pathlib import Path

import aiosqlite

from anonticket.storage.core import (
    DEFAULT_BUSY_TIMEOUT_MS,
    StorageCore,
    connect_read_only,
    unavailable_on_error,
)

# each invariant: (what a non-zero count means, the query counting its violations)
_INVARIANTS = (
    ("PIDs have transfers but no payment row",
     """SELECT count(*) FROM (SELECT DISTINCT pid FROM transfers) AS s
        WHERE NOT EXISTS (SELECT 1 FROM payments AS p WHERE p.pid = s.pid)"""),
    ("payments differ from the sum of their transfers",
     """WITH sums AS MATERIALIZED (SELECT pid, sum(amount) AS total FROM transfers GROUP BY pid)
        SELECT count(*) FROM payments AS p LEFT JOIN sums USING (pid)
        WHERE sums.total IS NULL OR sums.total != p.amount"""),
    ("claimed payments have no token, or unclaimed ones have one",
     """SELECT count(*) FROM payments
        WHERE (status = 1) != (token IS NOT NULL)
           OR (token IS NOT NULL AND NOT EXISTS
                 (SELECT 1 FROM service_tokens AS t WHERE t.token = payments.token))"""),
    ("tokens differ from the sum of their payments",
     """WITH sums AS MATERIALIZED (
            SELECT token, sum(amount) AS total FROM payments WHERE token IS NOT NULL
            GROUP BY token)
        SELECT count(*) FROM service_tokens AS t LEFT JOIN sums USING (token)
        WHERE sums.total IS NULL OR sums.total != t.amount"""),
    ("debits belong to no token",
     """SELECT count(*) FROM debits AS d
        WHERE NOT EXISTS (SELECT 1 FROM service_tokens AS t WHERE t.token = d.token)"""),
    ("tokens' spent differs from the sum of their debits",
     """WITH sums AS MATERIALIZED (SELECT token, sum(amount) AS total FROM debits GROUP BY token)
        SELECT count(*) FROM service_tokens AS t LEFT JOIN sums USING (token)
        WHERE coalesce(sums.total, 0) != t.spent OR t.spent > t.amount"""),
)


class MaintenanceStore(StorageCore):
    async def get_stats(self) -> dict[str, int | None]:
        rows = await self._read(
            """SELECT
                 (SELECT count(*) FROM payments WHERE status = 0),
                 (SELECT count(*) FROM payments WHERE status = 1),
                 (SELECT count(*) FROM service_tokens WHERE revoked_at IS NULL),
                 (SELECT count(*) FROM service_tokens WHERE revoked_at IS NOT NULL),
                 (SELECT coalesce(sum(amount), 0) FROM transfers),
                 (SELECT count(*) FROM transfers),
                 (SELECT count(*) FROM debits),
                 (SELECT coalesce(sum(amount), 0) FROM debits),
                 (SELECT scanned_height FROM monitor_state WHERE id = 1)"""
        )
        keys = ("payments_unclaimed", "payments_claimed", "tokens_active", "tokens_revoked",
                "credited_piconero", "transfers", "debits", "debited_piconero", "scanned_height")
        return dict(zip(keys, rows[0]))

    async def backup(self, target: str | Path) -> None:
        """Online backup: consistent even while the service keeps writing.

        The copy is read through a connection of its own, never the writer: from the
        writer, a backup taken while a transaction is open would copy its uncommitted
        (and maybe later rolled back) rows; nor does it make redeems wait behind the reader.
        """
        async with unavailable_on_error():
            source = await connect_read_only(self._path, DEFAULT_BUSY_TIMEOUT_MS)
            try:
                dest = await aiosqlite.connect(target)
                try:
                    await source.backup(dest)
                finally:
                    await dest.close()
            finally:
                await source.close()

    async def ledger_problems(self) -> list[str]:
        """What the schema does not enforce across tables: every transfer has its payment,
        every payment is the sum of its transfers and every token the sum of its payments,
        and every token's spent is the sum of its debits. Grouped scans, no index needed."""
        problems = []
        for what, sql in _INVARIANTS:
            (count,) = (await self._read(sql))[0]
            if count:
                problems.append(f"{count} {what}")
        return problems

    async def integrity_check(self) -> tuple[list[str], int]:
        rows = await self._read("PRAGMA integrity_check")
        version = await self._read("PRAGMA user_version")
        return [r[0] for r in rows], version[0][0]

    async def schema_version(self) -> int:
        return (await self._read("PRAGMA user_version"))[0][0]
