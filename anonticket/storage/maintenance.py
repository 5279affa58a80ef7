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
from anonticket.storage.connect import connect_sqlite
from anonticket.storage.ledger_rules import LEDGER_INVARIANTS, ledger_report

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
                dest = await connect_sqlite(target)
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
        return ledger_report([(await self._read(sql))[0][0] for _, sql in LEDGER_INVARIANTS])

    async def integrity_check(self) -> tuple[list[str], int]:
        rows = await self._read("PRAGMA integrity_check")
        version = await self._read("PRAGMA user_version")
        return [r[0] for r in rows], version[0][0]

    async def schema_version(self) -> int:
        return (await self._read("PRAGMA user_version"))[0][0]
