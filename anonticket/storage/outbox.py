"""The webhook outbox's store: the rows the sender attempts, their outcomes, replays.

Events are written by the changes they report, in the same transaction (``events``).
The sender (anonticket/webhooks/sender.py) reads due rows back from the database, never
from memory; ``Outbox`` only wakes it after a COMMIT that wrote some. The row rules
below (``attempt_columns`` and the views) are shared with ``postgres/outbox.py``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from anonticket.storage.core import StorageCore
from anonticket.storage.events import Outbox

PENDING, DELIVERED, DEAD = 0, 1, 2
_STATUS_NAMES = {PENDING: "pending", DELIVERED: "delivered", DEAD: "dead"}


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    """A row the sender is to attempt. The body holds a token id, never a secret."""

    seq: int
    id: str
    type: str
    body: str
    attempts: int  # attempts made before this one


@dataclass(frozen=True, slots=True)
class AttemptResult:
    seq: int
    attempt: int  # the number this attempt had (the first is 1)
    at: int
    result: str  # "delivered" or a failure word: http_503, timeout, unreachable, ...
    next_attempt_at: float | None  # None: no retry (delivered, or dead after the last)
    counted: bool = True  # False: the receiver said 410 Gone, which uses up no attempt


def url_digest(url: str) -> bytes:
    return hashlib.sha256(url.encode()).digest()


# the queue's counts: plain SQL that means the same on both dialects
QUEUE_SQL = """SELECT (SELECT count(*) FROM webhook_events WHERE status = 0),
                      (SELECT count(*) FROM webhook_events WHERE status = 2),
                      (SELECT min(created_at) FROM webhook_events WHERE status = 0),
                      (SELECT min(next_attempt_at) FROM webhook_events WHERE status = 0)"""


# what both dialects make of their rows (the SQL differs, the meaning does not)
def attempt_columns(r: AttemptResult) -> tuple[int, int, float]:
    """The row's status, attempts and next_attempt_at once ``r`` is stored."""
    if r.result == "delivered":
        status, next_at = DELIVERED, 0.0
    elif r.next_attempt_at is None:
        status, next_at = DEAD, 0.0
    else:
        status, next_at = PENDING, r.next_attempt_at
    return status, r.attempt if r.counted else r.attempt - 1, next_at


def queue_summary(row: Sequence[Any]) -> dict[str, Any]:
    pending, dead, oldest, next_due = row
    return {"pending": pending, "dead": dead, "oldest_pending_created_at": oldest,
            "next_attempt_at": next_due}


def listed_events(rows: Iterable[Sequence[Any]]) -> list[dict[str, Any]]:
    return [{"id": i, "type": t, "status": _STATUS_NAMES[s], "attempts": a,
             "created_at": c, "next_attempt_at": n if s == PENDING else None,
             "last_attempt_at": la, "last_result": lr, "delivered_at": d}
            for i, t, s, a, c, n, la, lr, d in rows]


def disabled_state(rows: Sequence[Sequence[Any]]) -> tuple[int, bytes] | None:
    if rows and rows[0][0] is not None:
        return rows[0][0], bytes(rows[0][1])
    return None


class OutboxStore(StorageCore):
    def enable_outbox(self, wake: Callable[[], None]) -> None:
        """From now on changes write their events; ``wake`` runs after each such COMMIT."""
        self.outbox = Outbox(wake)

    async def due_webhook_events(self, now: float, limit: int) -> list[OutboxEvent]:
        rows = await self._read(
            """SELECT seq, id, type, body, attempts FROM webhook_events
               WHERE status = 0 AND next_attempt_at <= ? ORDER BY next_attempt_at, seq LIMIT ?""",
            (now, limit))
        return [OutboxEvent(*row) for row in rows]

    async def webhook_queue(self) -> dict[str, Any]:
        """Counts, the oldest undelivered event's age origin and when the next one is due."""
        return queue_summary((await self._read(QUEUE_SQL))[0])

    async def record_webhook_attempts(self, results: Sequence[AttemptResult]) -> None:
        """Store a batch of attempts' outcomes in one transaction.

        Each update names the attempt it reports (``attempts = n - 1``): an outcome that
        arrives after a replay reset the row, or that was stored already, changes nothing.
        """
        async with self._transaction() as db:
            for r in results:
                status, attempts, next_at = attempt_columns(r)
                await db.execute(
                    """UPDATE webhook_events SET status = ?, attempts = ?, next_attempt_at = ?,
                           last_attempt_at = ?, last_result = ?,
                           delivered_at = CASE WHEN ? = 1 THEN ? ELSE delivered_at END
                       WHERE seq = ? AND status = 0 AND attempts = ?""",
                    (status, attempts, next_at, r.at, r.result, status, r.at, r.seq,
                     r.attempt - 1))

    async def list_webhook_events(self, *, dead_only: bool, limit: int) -> list[dict[str, Any]]:
        """Newest first; the operator's view, so types and results but no body."""
        where = "WHERE status = 2" if dead_only else ""
        rows = await self._read(
            f"""SELECT id, type, status, attempts, created_at, next_attempt_at,
                       last_attempt_at, last_result, delivered_at
                FROM webhook_events {where} ORDER BY seq DESC LIMIT ?""", (limit,))
        return listed_events(rows)

    async def replay_webhook_events(self, event_id: str | None, now: float) -> int:
        """Queue again one event (any status) or, with None, every dead one: due now, with
        its attempts counted from zero and its id and body unchanged."""
        async with self._transaction() as db:
            if event_id is None:
                cursor = await db.execute(
                    """UPDATE webhook_events SET status = 0, attempts = 0, next_attempt_at = ?
                       WHERE status = 2""", (now,))
            else:
                cursor = await db.execute(
                    """UPDATE webhook_events SET status = 0, attempts = 0, next_attempt_at = ?
                       WHERE id = ?""", (now, event_id))
            replayed = cursor.rowcount
            if replayed and self.outbox is not None:
                self.outbox.wake_after_commit()  # due at once
        return replayed

    async def prune_webhook_events(self, older_than: int) -> int:
        """Forget events delivered before ``older_than``; dead ones stay until replayed."""
        async with self._transaction() as db:
            cursor = await db.execute(
                "DELETE FROM webhook_events WHERE status = 1 AND delivered_at < ?", (older_than,))
            return cursor.rowcount

    async def get_webhook_disabled(self) -> tuple[int, bytes] | None:
        """(when, digest of the URL) if a receiver answered 410 Gone, else None."""
        return disabled_state(await self._read(
            "SELECT disabled_at, disabled_url FROM webhook_state WHERE id = 1"))

    async def set_webhook_disabled(self, url: str | None, now: int) -> None:
        """Disable delivery to ``url`` (410 Gone), or with None enable it again."""
        async with self._transaction() as db:
            if url is None:
                await db.execute(
                    "UPDATE webhook_state SET disabled_at = NULL, disabled_url = NULL WHERE id = 1")
                if self.outbox is not None:
                    self.outbox.wake_after_commit()  # what waited is due
            else:
                await db.execute(
                    "UPDATE webhook_state SET disabled_at = ?, disabled_url = ? WHERE id = 1",
                    (now, url_digest(url)))
