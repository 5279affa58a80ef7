"""The webhook outbox on PostgreSQL: the SQL of ``storage.outbox``, written for it.

The rules are the SQLite module's: a change hands its events to ``PgOutbox.add``
(``postgres/events.py``) inside its own transaction (``PostgresCore._write``), so they
commit or roll back together, and the sender reads due rows back from the database, never
from memory. The event texts are built by the same functions (``storage.events``), so a
payload is byte for byte what SQLite would store: a token id, never a PID, token, txid or
address.

Only the active instance sends (anonticket/service/leadership.py), and delivery is at least once:
an event is marked delivered only after the receiver's 2xx, in a transaction of its own.
After a takeover the new leader reads every row still pending, including those the old one
attempted but never marked, and sends them again with the same ``webhook-id`` (receivers
dedupe on it, docs/webhooks.md). A stale leader that lost the lock without noticing may
still finish an attempt; its outcome is refused (``FencedOut``): the mark, like every
write, checks the fencing epoch under a share lock of the cursor row, which the takeover's
epoch bump waits for, so a mark either committed before the takeover or changes nothing. Either way no row
is skipped: at worst one is sent twice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import asyncpg

from anonticket.storage.outbox import (
    QUEUE_SQL,
    AttemptResult,
    OutboxEvent,
    attempt_columns,
    disabled_state,
    listed_events,
    queue_summary,
    url_digest,
)
from anonticket.storage.postgres.core import PostgresCore, affected
from anonticket.storage.postgres.events import PgOutbox


class PgOutboxStore(PostgresCore):
    def enable_outbox(self, wake: Callable[[], None]) -> None:
        """From now on changes write their events; ``wake`` runs after each such COMMIT."""
        self.outbox = PgOutbox(wake)

    async def due_webhook_events(self, now: float, limit: int) -> list[OutboxEvent]:
        # no row lock: one sender runs (the leader's); a stale leader's overlap costs a
        # duplicate at worst, and its outcome is fenced (module docstring)
        rows = await self._read(
            """SELECT seq, id, type, body, attempts FROM webhook_events
               WHERE status = 0 AND next_attempt_at <= $1::float8
               ORDER BY next_attempt_at, seq LIMIT $2""",
            now, limit)
        return [OutboxEvent(*row) for row in rows]

    async def webhook_queue(self) -> dict[str, Any]:
        """See ``OutboxStore.webhook_queue``."""
        return queue_summary((await self._read(QUEUE_SQL))[0])

    async def record_webhook_attempts(self, results: Sequence[AttemptResult]) -> None:
        """See ``OutboxStore.record_webhook_attempts``: each update names the attempt it
        reports. Fenced like every write (the module docstring says why it matters here)."""
        rows = [(*attempt_columns(r), r.at, r.result, r.seq, r.attempt - 1) for r in results]

        async def work(db: asyncpg.Connection) -> None:
            # one statement per outcome, in order, as on SQLite (pipelined by asyncpg)
            await db.executemany(
                """UPDATE webhook_events SET status = $1::smallint, attempts = $2::integer,
                       next_attempt_at = $3::float8, last_attempt_at = $4::bigint,
                       last_result = $5::text,
                       delivered_at = CASE WHEN $1::smallint = 1 THEN $4::bigint
                                           ELSE delivered_at END
                   WHERE seq = $6::bigint AND status = 0 AND attempts = $7::integer""",
                rows)

        await self._write(work)

    async def list_webhook_events(self, *, dead_only: bool, limit: int) -> list[dict[str, Any]]:
        """Newest first; the operator's view, so types and results but no body."""
        rows = await self._read(
            """SELECT id, type, status, attempts, created_at, next_attempt_at,
                      last_attempt_at, last_result, delivered_at
               FROM webhook_events WHERE NOT $1::boolean OR status = 2
               ORDER BY seq DESC LIMIT $2""",
            dead_only, limit)
        return listed_events(rows)

    async def replay_webhook_events(self, event_id: str | None, now: float) -> int:
        """See ``OutboxStore.replay_webhook_events``."""

        async def work(db: asyncpg.Connection) -> int:
            if event_id is None:
                status = await db.execute(
                    """UPDATE webhook_events SET status = 0, attempts = 0,
                           next_attempt_at = $1::float8
                       WHERE status = 2""", now)
            else:
                status = await db.execute(
                    """UPDATE webhook_events SET status = 0, attempts = 0,
                           next_attempt_at = $1::float8
                       WHERE id = $2""", now, event_id)
            replayed = affected(status)
            if replayed and self.outbox is not None:
                self.outbox.wake_after_commit()  # due at once
            return replayed

        return await self._write(work)

    async def prune_webhook_events(self, older_than: int) -> int:
        """Forget events delivered before ``older_than``; dead ones stay until replayed."""

        async def work(db: asyncpg.Connection) -> int:
            return affected(await db.execute(
                "DELETE FROM webhook_events WHERE status = 1 AND delivered_at < $1",
                older_than))

        return await self._write(work)

    async def get_webhook_disabled(self) -> tuple[int, bytes] | None:
        """(when, digest of the URL) if a receiver answered 410 Gone, else None."""
        return disabled_state(await self._read(
            "SELECT disabled_at, disabled_url FROM webhook_state WHERE id = 1"))

    async def set_webhook_disabled(self, url: str | None, now: int) -> None:
        """Disable delivery to ``url`` (410 Gone), or with None enable it again."""

        async def work(db: asyncpg.Connection) -> None:
            if url is None:
                await db.execute(
                    "UPDATE webhook_state SET disabled_at = NULL, disabled_url = NULL WHERE id = 1")
                if self.outbox is not None:
                    self.outbox.wake_after_commit()  # what waited is due
            else:
                await db.execute(
                    "UPDATE webhook_state SET disabled_at = $1, disabled_url = $2 WHERE id = 1",
                    now, url_digest(url))

        await self._write(work)
