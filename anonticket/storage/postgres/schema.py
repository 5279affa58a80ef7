"""PostgreSQL schema versions: the scripts a database has not seen and their rows in
``schema_versions`` in one transaction, under an advisory transaction lock.

Two instances starting at once would otherwise both see version 0 and both run
``CREATE TABLE``; the second fails (or, with IF NOT EXISTS, can still collide in the
catalog). The transaction-scoped lock is released by COMMIT or ROLLBACK whatever happens,
so a starter that dies mid-migration never leaves it held. The numbers are this dialect's
own: version 3 (``sql/v3.sql``) has SQLite version 3's ledger tables, version 4
(``sql/v4.sql``) adds what SQLite's version 3 also holds, the webhook outbox
and the expiry notices, and version 5 (``sql/v5.sql``) what SQLite's version 5 holds, the
payments a bare PID may claim; version 9 (``sql/v9.sql``) the checkout's allocated
subaddresses; ``PG_SCHEMA_VERSION`` is the one this program brings a database to.
"""

from __future__ import annotations

from pathlib import Path

import asyncpg

from anonticket.domain.errors import SchemaTooNew

# package data (setup.cfg), so an installed wheel has them
_SQL = Path(__file__).resolve().parent / "sql"
# version reached → script that reaches it from the one before (a new database: from 0)
MIGRATIONS = {3: _SQL / "v3.sql", 4: _SQL / "v4.sql", 5: _SQL / "v5.sql", 6: _SQL / "v6.sql",
              7: _SQL / "v7.sql", 8: _SQL / "v8.sql", 9: _SQL / "v9.sql"}
PG_SCHEMA_VERSION = max(MIGRATIONS)
# an arbitrary 64-bit key of our own, so the lock never meets another application's
SCHEMA_LOCK_KEY = 0x616E_6F6E_7363_6801  # "anonsch" + 1

_VERSIONS = """CREATE TABLE IF NOT EXISTS schema_versions (
                   version    integer PRIMARY KEY,
                   applied_at timestamptz NOT NULL DEFAULT now())"""


async def schema_version(conn: asyncpg.Connection) -> int:
    """0 for a database without our versions table."""
    exists = await conn.fetchval("SELECT to_regclass('schema_versions') IS NOT NULL")
    if not exists:
        return 0
    return await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_versions")


async def apply_schema(conn: asyncpg.Connection) -> None:
    """Bring the database to ``PG_SCHEMA_VERSION``; a newer one is refused and left alone."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK_KEY)
        await conn.execute(_VERSIONS)
        version = await schema_version(conn)
        if version > PG_SCHEMA_VERSION:
            raise SchemaTooNew(version, PG_SCHEMA_VERSION)
        for target in sorted(MIGRATIONS):
            if version < target:
                # one script per version, its row beside it: both commit or neither does
                await conn.execute(MIGRATIONS[target].read_text())
                await conn.execute("INSERT INTO schema_versions (version) VALUES ($1)", target)
                version = target
