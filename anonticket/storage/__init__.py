"""The only package with SQL: one interface the ledger talks to, split by what each part owns.

``core`` (connections, the one write path), ``schema`` (versions), ``payments`` (credits,
claims, top-ups), ``tokens`` (introspection, revocation, debits, expiry notices),
``outbox`` (webhook events, written inside the others' transactions), ``maintenance``
(counts, backup, invariants). ``Storage`` is all of them on one writer and one reader connection.
"""

from __future__ import annotations

from anonticket.storage.core import DEFAULT_BUSY_TIMEOUT_MS, database_path, unix_now
from anonticket.storage.maintenance import MaintenanceStore
from anonticket.storage.outbox import AttemptResult, OutboxEvent, OutboxStore
from anonticket.storage.payments import PaymentStore, seconds_bought
from anonticket.storage.rows import (
    ClaimRow,
    CreditResult,
    DebitOutcome,
    DebitRequest,
    TokenRow,
    TopupOutcome,
)
from anonticket.storage.schema import SCHEMA_VERSION
from anonticket.storage.tokens import TokenStore


class Storage(PaymentStore, TokenStore, MaintenanceStore, OutboxStore):
    """Every storage operation, over one writer and one reader connection."""


__all__ = [
    "DEFAULT_BUSY_TIMEOUT_MS", "SCHEMA_VERSION", "AttemptResult", "ClaimRow", "CreditResult",
    "DebitOutcome", "DebitRequest", "OutboxEvent", "Storage", "TokenRow", "TopupOutcome",
    "database_path", "seconds_bought", "unix_now",
]
