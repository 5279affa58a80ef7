"""The PostgreSQL implementation of the storage interface: one hand-written SQL module per
part, as for SQLite (``core``, ``schema``, ``payments``, ``tokens``, ``keys``, ``events``,
``outbox``, ``maintenance``), and
``leader``, the advisory lock and fencing epoch that make one of several instances active.

It covers every public method of ``anonticket.storage.Storage`` except the SQLite file's
own: ``integrity_check`` and ``backup`` (PRAGMAs, the online backup API, WAL
checkpointing). ``tests/storage/test_storage_postgres.py`` checks that list against both classes.
The outbox's events are written inside the other parts' transactions, as on SQLite.
"""

from __future__ import annotations

from anonticket.storage.postgres.core import FencedOut, PostgresError, PostgresIntegrityError
from anonticket.storage.postgres.keys import PgSigningKeyStore
from anonticket.storage.postgres.private_tokens import PgPrivateTokenStore
from anonticket.storage.postgres.maintenance import PgMaintenanceStore
from anonticket.storage.postgres.outbox import PgOutboxStore
from anonticket.storage.postgres.payments import PgPaymentStore
from anonticket.storage.postgres.provisional import PgProvisionalStore
from anonticket.storage.postgres.subaddresses import PgSubaddressStore
from anonticket.storage.postgres.tokens import PgTokenStore


class PostgresStorage(PgPaymentStore, PgProvisionalStore, PgTokenStore, PgMaintenanceStore,
                      PgOutboxStore, PgSigningKeyStore, PgPrivateTokenStore, PgSubaddressStore):
    """Every storage operation on PostgreSQL, over a pool of connections."""


__all__ = ["FencedOut", "PostgresError", "PostgresIntegrityError", "PostgresStorage"]
