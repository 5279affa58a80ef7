"""The PostgreSQL implementation of the storage interface: one hand-written SQL module per
part, as for SQLite (``core``, ``schema``, ``payments``, ``tokens``, ``maintenance``), and
``leader``, the advisory lock and fencing epoch that make one of several instances active.

It covers every public method of ``anonticket.storage.Storage`` except the SQLite file's
own: ``integrity_check`` and ``backup`` (PRAGMAs, the online backup API, WAL
checkpointing). ``tests/test_storage_postgres.py`` checks that list against both classes.
"""

from __future__ import annotations

from anonticket.storage.postgres.core import PostgresError, PostgresIntegrityError
from anonticket.storage.postgres.maintenance import PgMaintenanceStore
from anonticket.storage.postgres.payments import FencedOut, PgPaymentStore
from anonticket.storage.postgres.tokens import PgTokenStore


class PostgresStorage(PgPaymentStore, PgTokenStore, PgMaintenanceStore):
    """Every storage operation on PostgreSQL, over a pool of connections."""

    # The webhook outbox is SQLite-only for now (config refuses WEBHOOK_URL with a
    # PostgreSQL DATABASE_URL): the housekeeping chores that serve it have nothing to do.
    async def notice_expired_tokens(self, now: int) -> int:
        return 0

    async def prune_webhook_events(self, older_than: int) -> int:
        return 0


__all__ = ["FencedOut", "PostgresError", "PostgresIntegrityError", "PostgresStorage"]
