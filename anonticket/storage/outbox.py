"""The webhook outbox: events written in the transaction of the change they report.

A claim, a top-up, a revocation or an expiry sweep hands its events to ``Outbox.add``
inside its own ``_transaction``, so the event commits with the change or rolls back with
it: a crash can neither lose an event nor leave one for a change that never happened.
The sender (anonticket/webhooks/sender.py) reads due rows back from the database, never
from memory; ``Outbox`` only wakes it after a COMMIT that wrote some.

Payloads name a token by ``domain.token_id`` and hold nothing internal introspection does
not show: no PID, txid, address or token, and no event per payment (docs/webhooks.md).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import aiosqlite

from anonticket.domain.ids import token_id
from anonticket.storage.core import StorageCore
from anonticket.storage.rows import TokenRow
from anonticket.domain.webhook import event_body, new_message_id, rfc3339

Event = tuple[str, dict[str, Any]]  # (type, data)
PENDING, DELIVERED, DEAD = 0, 1, 2
_STATUS_NAMES = {PENDING: "pending", DELIVERED: "delivered", DEAD: "dead"}


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
