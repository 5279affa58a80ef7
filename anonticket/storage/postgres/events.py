"""The webhook events a change writes on PostgreSQL: ``storage.events``'s ``Outbox`` with this
dialect's INSERT, one statement for all of a change's events.

Below ``core`` (whose write path calls the switch after COMMIT or ROLLBACK) and the
outbox's store (``outbox``), as ``storage/events.py`` is for SQLite.
"""

from __future__ import annotations

from collections.abc import Iterable

import asyncpg

from anonticket.domain.webhook import event_body, new_message_id
from anonticket.storage.events import Event, Outbox


class PgOutbox(Outbox):
    """``Outbox`` with its INSERT in this dialect: one statement for all of a change's events."""

    async def add(self, db: asyncpg.Connection, events: Iterable[Event],  # type: ignore[override]
                  now: int) -> None:
        rows = [(new_message_id(), kind, event_body(kind, now, data)) for kind, data in events]
        if rows:
            await db.execute(
                """INSERT INTO webhook_events (id, type, body, created_at, next_attempt_at)
                   SELECT id, type, body, $4::bigint, $4::bigint
                   FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY
                        AS n(id, type, body, ord)
                   ORDER BY ord""",
                [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], now)
            self._written = True
