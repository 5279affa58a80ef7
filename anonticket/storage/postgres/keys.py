"""Signing keys on PostgreSQL (see ``storage.keys``): the same rules, shared by every
instance of the deployment. Every write is fenced (``_write``), and takes the table's
SHARE ROW EXCLUSIVE lock first, so two writers (a start and a rotation, or a stale leader
that has not noticed it was deposed) run one after the other and "one key in force per
purpose" holds under READ COMMITTED too. The table holds a handful of rows."""

from __future__ import annotations

import asyncpg

from anonticket.storage.postgres.core import PostgresCore, affected
from anonticket.storage.rows import SIGNING_KEY_COLUMNS, SigningKeyRow

_LOCK = "LOCK TABLE signing_keys IN SHARE ROW EXCLUSIVE MODE"
_INSERT = f"""INSERT INTO signing_keys ({SIGNING_KEY_COLUMNS})
              VALUES ($1, $2, $3, $4, $5, $6, NULL, NULL)"""


def _values(key: SigningKeyRow) -> tuple[object, ...]:
    return (key.key_id, key.purpose, key.secret, key.public, key.created_at, key.not_before)


class PgSigningKeyStore(PostgresCore):
    async def list_signing_keys(self, purpose: str | None = None) -> list[SigningKeyRow]:
        if purpose is None:
            rows = await self._read(
                f"""SELECT {SIGNING_KEY_COLUMNS} FROM signing_keys
                    ORDER BY not_before, retired_at IS NULL, key_id""")
        else:
            rows = await self._read(
                f"""SELECT {SIGNING_KEY_COLUMNS} FROM signing_keys WHERE purpose = $1
                    ORDER BY not_before, retired_at IS NULL, key_id""", purpose)
        return [SigningKeyRow(*row) for row in rows]

    async def add_first_signing_key(self, key: SigningKeyRow) -> bool:
        async def work(db: asyncpg.Connection) -> bool:
            await db.execute(_LOCK)
            status = await db.execute(
                f"""INSERT INTO signing_keys ({SIGNING_KEY_COLUMNS})
                    SELECT $1, $2, $3, $4, $5, $6, NULL, NULL
                    WHERE NOT EXISTS (SELECT 1 FROM signing_keys
                                      WHERE purpose = $2 AND retired_at IS NULL)""",
                *_values(key))
            return affected(status) == 1

        return await self._write(work)

    async def rotate_signing_key(self, key: SigningKeyRow, *, verify_secs: int,
                                 drop_previous: bool = False) -> None:
        async def work(db: asyncpg.Connection) -> None:
            await db.execute(_LOCK)
            if drop_previous:
                await db.execute("DELETE FROM signing_keys WHERE purpose = $1", key.purpose)
            else:
                await db.execute(
                    """DELETE FROM signing_keys
                       WHERE purpose = $1 AND not_before >= $2 AND not_before > $3""",
                    key.purpose, key.not_before, key.created_at)
                await db.execute(
                    """UPDATE signing_keys SET retired_at = $1, expires_at = $1 + $2
                       WHERE purpose = $3 AND (retired_at IS NULL OR retired_at > $1)""",
                    key.not_before, verify_secs, key.purpose)
            await db.execute(_INSERT, *_values(key))

        await self._write(work)

    async def remove_expired_signing_keys(self, now: int) -> int:
        probe = await self._read("SELECT 1 FROM signing_keys WHERE expires_at <= $1 LIMIT 1", now)
        if not probe:
            return 0

        async def work(db: asyncpg.Connection) -> int:
            await db.execute(_LOCK)
            return affected(await db.execute(
                "DELETE FROM signing_keys WHERE expires_at <= $1", now))

        return await self._write(work)
