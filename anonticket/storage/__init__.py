"""The only package with SQL: one interface the ledger talks to, split by what each part owns.

``core`` (connections, the one write path), ``schema`` (versions), ``ledger_rules`` (the
decisions both dialects share, no I/O), ``payments`` (credits, claims, top-ups), ``tokens`` (introspection, revocation, debits, expiry notices),
``keys`` (the signing keys anonticket generates for itself), ``private_tokens`` (the
Privacy Pass spent-set), ``events`` (the webhook
events a change writes inside its own transaction), ``outbox``
(the sender's side of those rows: due events, outcomes, replays), ``maintenance``
(counts, backup, invariants), ``subaddresses`` (the checkout's allocated subaddresses). ``Storage`` is all of them on one SQLite writer and one reader
connection; ``postgres/`` is the same interface on PostgreSQL, each dialect's SQL written
by hand. ``open_storage`` picks one from ``DATABASE_URL``.

``wal_checkpoint`` copies the WAL back off the writer's commits.

May import: crypto, domain, config.
"""

from __future__ import annotations

from anonticket.storage.core import DEFAULT_BUSY_TIMEOUT_MS, database_path, unix_now
from anonticket.storage.keys import SigningKeyStore
from anonticket.storage.maintenance import MaintenanceStore
from anonticket.storage.outbox import AttemptResult, OutboxEvent, OutboxStore
from anonticket.storage.ledger_rules import seconds_bought
from anonticket.storage.payments import PaymentStore
from anonticket.storage.provisional import ProvisionalStore
from anonticket.storage.private_tokens import RETRY_KEY_PREFIX, PrivateTokenStore
from anonticket.storage.rows import (
    ClaimRow,
    CreditResult,
    DebitOutcome,
    DebitRequest,
    ProvisionalResult,
    SigningKeyRow,
    TokenRow,
    TopupOutcome,
    WithdrawResult,
    is_storable_text,
)
from anonticket.storage.schema import SCHEMA_VERSION
from anonticket.storage.subaddresses import Allocation, SubaddressStore
from anonticket.storage.tokens import TokenStore


class Storage(PaymentStore, ProvisionalStore, TokenStore, MaintenanceStore, OutboxStore,
              SigningKeyStore, PrivateTokenStore, SubaddressStore):
    """Every storage operation, over one writer and one reader connection."""


def is_postgres_url(url: str) -> bool:
    """``postgresql://…`` (or ``postgres://…``) selects PostgreSQL; anything else is SQLite."""
    return url.startswith(("postgresql://", "postgres://"))


async def open_storage(
    url: str, *, synchronous: str = "NORMAL", busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
    apply_schema: bool = True,
) -> Storage:
    """The storage ``DATABASE_URL`` names, open and (unless ``apply_schema=False``) with its
    schema up to date. The PostgreSQL one is typed as ``Storage`` because it has the same
    methods (tests/storage/test_storage_postgres.py), not because it inherits them."""
    if is_postgres_url(url):
        # imported here: an SQLite deployment never needs asyncpg installed
        from anonticket.storage.postgres import PostgresStorage

        return await PostgresStorage.open(  # type: ignore[return-value]
            url, busy_timeout_ms=busy_timeout_ms, apply_schema=apply_schema)
    return await Storage.open(database_path(url), synchronous=synchronous,
                              busy_timeout_ms=busy_timeout_ms, apply_schema=apply_schema)


__all__ = [
    "DEFAULT_BUSY_TIMEOUT_MS", "SCHEMA_VERSION", "Allocation", "AttemptResult", "ClaimRow",
    "CreditResult", "DebitOutcome", "DebitRequest", "OutboxEvent", "ProvisionalResult",
    "RETRY_KEY_PREFIX", "SigningKeyRow", "Storage", "TokenRow", "TopupOutcome", "WithdrawResult",
    "database_path", "is_postgres_url", "is_storable_text", "open_storage", "seconds_bought",
    "unix_now",
]
