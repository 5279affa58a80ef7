"""Maintenance reads on PostgreSQL: counts, the schema version and the ledger invariants.

The invariants are the SQLite module's queries unchanged (``ledger_rules``): plain SQL (grouped
scans, ``MATERIALIZED`` CTEs, boolean comparisons) that means the same on both, and one
text is what makes "``db check`` checks the same money rules on both" true. SQLite's
file-level parts have no twin here: PostgreSQL has no ``integrity_check`` (the operator's
tools are data checksums and ``amcheck``) and no online backup API (``pg_dump``).
"""

from __future__ import annotations

from anonticket.storage.ledger_rules import LEDGER_INVARIANTS, ledger_report
from anonticket.storage.postgres.core import PostgresCore, unavailable_on_error
from anonticket.storage.postgres.schema import schema_version


class PgMaintenanceStore(PostgresCore):
    async def get_stats(self) -> dict[str, int | None]:
        # sum(bigint) is numeric on PostgreSQL: cast back, or the answer carries Decimals
        rows = await self._read(
            """SELECT
                 (SELECT count(*) FROM payments WHERE status = 0),
                 (SELECT count(*) FROM payments WHERE status = 1),
                 (SELECT count(*) FROM service_tokens WHERE revoked_at IS NULL),
                 (SELECT count(*) FROM service_tokens WHERE revoked_at IS NOT NULL),
                 (SELECT coalesce(sum(amount), 0)::bigint FROM transfers),
                 (SELECT count(*) FROM transfers),
                 (SELECT count(*) FROM debits),
                 (SELECT coalesce(sum(amount), 0)::bigint FROM debits),
                 (SELECT scanned_height FROM monitor_state WHERE id = 1)""")
        keys = ("payments_unclaimed", "payments_claimed", "tokens_active", "tokens_revoked",
                "credited_piconero", "transfers", "debits", "debited_piconero", "scanned_height")
        return dict(zip(keys, rows[0]))

    async def ledger_problems(self) -> list[str]:
        """See ``MaintenanceStore.ledger_problems``."""
        return ledger_report([(await self._read(sql))[0][0] for _, sql in LEDGER_INVARIANTS])

    async def schema_version(self) -> int:
        async with unavailable_on_error(), self._pool.acquire() as conn:
            return await schema_version(conn)
