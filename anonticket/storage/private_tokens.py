"""The Privacy Pass spent-set (schema version 7) and the short-lived issuance retries.

``spend_private_tokens`` inserts a batch of (key id, nonce) pairs in one transaction and
returns the ones this call inserted: the primary key decides, so of any number of
redemptions of one token, on one instance or on two sharing PostgreSQL, exactly one is told
it spent it. ``spent_at`` is rounded down to the minute: the operator may count redemptions,
never order them finely against issuances.

An issuance's retry record is the debit's Idempotency-Key row (``storage.tokens``), stored
under the key ``"pt " + key`` (a debit's key never holds a space, so the two never meet);
``prune_private_token_retries`` forgets them after ``RETRY_WINDOW_SECS`` instead of the
debits' day.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from anonticket.storage.core import StorageCore

# the prefix of an issuance's Idempotency-Key row (a debit's key never holds a space)
RETRY_KEY_PREFIX = "pt "


def spent_minute(now: int) -> int:
    return now - now % 60


def _insert_spent(conn: sqlite3.Connection, spends: Sequence[tuple[str, bytes]], minute: int
                  ) -> set[tuple[str, bytes]]:
    """On the writer's thread, inside the transaction: the spends this INSERT made."""
    values = ", ".join("(?, ?, ?)" for _ in spends)
    parameters: list[object] = []
    for key_id, nonce in spends:
        parameters += (key_id, nonce, minute)
    rows = conn.execute(
        f"""INSERT INTO private_token_spent (key_id, nonce, spent_at) VALUES {values}
            ON CONFLICT DO NOTHING RETURNING key_id, nonce""", parameters).fetchall()
    return {(row[0], bytes(row[1])) for row in rows}


class PrivateTokenStore(StorageCore):
    async def spend_private_tokens(self, spends: Sequence[tuple[str, bytes]], now: int
                                   ) -> set[tuple[str, bytes]]:
        """Insert every (key_id, nonce) not spent yet; returns the ones inserted now.

        BEGIN, the INSERT and COMMIT are one call on the writer's thread (``_in_one_call``):
        a redemption's batch is hot and short, and a thread round trip costs more than the
        insert itself (docs/benchmarks.md). A caller cancelled
        meanwhile leaves the batch committed, as a COMMIT already sent would: those tokens
        are spent and their redemptions were not granted (the 503 the gateway answers when
        storage cannot say: docs/operations.md, "The spent-set")."""
        if not spends:
            return set()
        return await self._in_one_call(_insert_spent, spends, spent_minute(now))

    async def count_spent_private_tokens(self) -> dict[str, int]:
        """Spent tokens by key id (for the operator's counts and the tests)."""
        rows = await self._read(
            "SELECT key_id, count(*) FROM private_token_spent GROUP BY key_id")
        return {row[0]: row[1] for row in rows}

    async def remove_orphan_spent_tokens(self) -> int:
        """Delete the spent nonces of keys no longer stored: nothing verifies against them."""
        probe = await self._read(
            """SELECT 1 FROM private_token_spent
               WHERE key_id NOT IN (SELECT key_id FROM signing_keys) LIMIT 1""")
        if not probe:
            return 0
        async with self._transaction() as db:
            cursor = await db.execute(
                """DELETE FROM private_token_spent
                   WHERE key_id NOT IN (SELECT key_id FROM signing_keys)""")
            return cursor.rowcount

    async def prune_private_token_retries(self, older_than: int) -> int:
        async with self._transaction() as db:
            cursor = await db.execute(
                "DELETE FROM idempotency_keys WHERE created_at < ? AND key LIKE 'pt %'",
                (older_than,))
            return cursor.rowcount
