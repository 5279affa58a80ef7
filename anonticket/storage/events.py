"""The webhook events a change writes, inside the transaction of that change.

A claim, a top-up, a revocation or an expiry sweep hands its events to ``Outbox.add``
inside its own ``_transaction``, so the event commits with the change or rolls back with
it: a crash can neither lose an event nor leave one for a change that never happened.
``Outbox`` is also the switch (present only while webhooks are on) that the write path in
``core`` consults after each COMMIT or ROLLBACK, which is why it lives here, below both
``core`` and the outbox's store (``outbox``), and not in the store itself.

The event texts are built here for both dialects (``postgres/events.py`` has that
dialect's INSERT), so a payload is byte for byte the same on either: it names a token by
``domain.ids.token_id`` and holds nothing internal introspection does not show — no PID,
txid, address or token, and no event per payment (docs/webhooks.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import aiosqlite

from anonticket.domain.ids import token_id
from anonticket.domain.webhook import event_body, new_message_id, rfc3339
from anonticket.storage.rows import TokenRow

Event = tuple[str, dict[str, Any]]  # (type, data)


def issued_event(record: TokenRow) -> Event:
    return "token.issued", {
        "token_id": token_id(record.token), "amount": str(record.amount),
        "remaining": str(record.remaining), "expires_at": rfc3339(record.expires_at),
        "issued_at": rfc3339(record.issued_at)}


def topped_up_event(record: TokenRow, added: int) -> Event:
    return "token.topped_up", {
        "token_id": token_id(record.token), "amount": str(record.amount), "added": str(added),
        "remaining": str(record.remaining), "expires_at": rfc3339(record.expires_at)}


def revoked_event(record: TokenRow) -> Event:
    return "token.revoked", {
        "token_id": token_id(record.token), "revoked_at": rfc3339(record.revoked_at),
        "reason": record.revoke_reason, "abuse_score": record.abuse_score}


def expired_event(token: bytes, expires_at: int) -> Event:
    return "token.expired", {"token_id": token_id(token), "expires_at": rfc3339(expires_at)}


class Outbox:
    """The switch (present only while webhooks are on) and the sender's wake-up call.

    Every transaction runs under the storage's write lock, so one flag is enough to know
    whether the transaction that just committed wrote events.
    """

    def __init__(self, wake: Callable[[], None]) -> None:
        self._wake = wake
        self._written = False

    async def add(self, db: aiosqlite.Connection, events: Iterable[Event], now: int) -> None:
        rows = [(new_message_id(), kind, event_body(kind, now, data), now, now)
                for kind, data in events]
        if rows:
            await db.executemany(
                """INSERT INTO webhook_events (id, type, body, created_at, next_attempt_at)
                   VALUES (?, ?, ?, ?, ?)""", rows)
            self._written = True

    def wake_after_commit(self) -> None:
        """For a change that makes stored events due (a replay, an enable)."""
        self._written = True

    def committed(self) -> None:
        if self._written:
            self._written = False
            self._wake()

    def rolled_back(self) -> None:
        self._written = False


def withdrawn_event(record: TokenRow, withdrawn: int) -> Event:
    """A provisional credit was taken back out of this token (docs/webhooks.md): what it
    lost (``withdrawn``, piconero of the payment) and what it holds now. Like a top-up's
    event it names the token only: no PID, no txid."""
    return "payment.withdrawn", {
        "token_id": token_id(record.token), "amount": str(record.amount),
        "withdrawn": str(withdrawn), "remaining": str(record.remaining),
        "expires_at": rfc3339(record.expires_at),
        "status": "withdrawn" if record.withdrawn else "active"}
