"""The Privacy Pass spent-set on PostgreSQL (see ``storage.private_tokens``): the same
contract, every write fenced (``_write``), so a deposed leader's redemption never lands
after a takeover; the primary key decides between two instances' inserts."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from anonticket.storage.postgres.core import PostgresCore, affected
from anonticket.storage.private_tokens import spent_minute


class PgPrivateTokenStore(PostgresCore):
    async def spend_private_tokens(self, spends: Sequence[tuple[str, bytes]], now: int
                                   ) -> set[tuple[str, bytes]]:
        if not spends:
            return set()
        key_ids = [key_id for key_id, _ in spends]
        nonces = [nonce for _, nonce in spends]

        async def work(db: asyncpg.Connection) -> set[tuple[str, bytes]]:
            rows = await db.fetch(
                """INSERT INTO private_token_spent (key_id, nonce, spent_at)
                   SELECT k, n, $3 FROM unnest($1::text[], $2::bytea[]) AS s(k, n)
                   ON CONFLICT DO NOTHING RETURNING key_id, nonce""",
                key_ids, nonces, spent_minute(now))
            return {(row[0], bytes(row[1])) for row in rows}

        return await self._write(work)

    async def count_spent_private_tokens(self) -> dict[str, int]:
        rows = await self._read(
            "SELECT key_id, count(*) FROM private_token_spent GROUP BY key_id")
        return {row[0]: int(row[1]) for row in rows}

    async def remove_orphan_spent_tokens(self) -> int:
        probe = await self._read(
            """SELECT 1 FROM private_token_spent
               WHERE key_id NOT IN (SELECT key_id FROM signing_keys) LIMIT 1""")
        if not probe:
            return 0

        async def work(db: asyncpg.Connection) -> int:
            return affected(await db.execute(
                """DELETE FROM private_token_spent
                   WHERE key_id NOT IN (SELECT key_id FROM signing_keys)"""))

        return await self._write(work)

    async def prune_private_token_retries(self, older_than: int) -> int:
        async def work(db: asyncpg.Connection) -> int:
            return affected(await db.execute(
                "DELETE FROM idempotency_keys WHERE created_at < $1 AND key LIKE 'pt %'",
                older_than))

        return await self._write(work)
