"""Schema versions: each script moves the schema and ``user_version`` in one transaction.

``sql/v2.sql`` brings any database (new, version 1) to version 2; each later version is
a script of its own applied in order, so a crash between two leaves a valid database of
the earlier version that the next start migrates on.
"""

from __future__ import annotations

from pathlib import Path

import aiosqlite

from anonticket.domain.errors import SchemaTooNew

# package data (setup.cfg), so an installed wheel has them; the repository's schema.sql is
# the current schema as one script for readers, checked equal to what these build
_SQL = Path(__file__).resolve().parent / "sql"
SCHEMA_PATH = _SQL / "v2.sql"  # versions 0 and 1 → 2
# version reached → script that reaches it from the one before
MIGRATIONS = {3: _SQL / "v3.sql", 4: _SQL / "v4.sql", 5: _SQL / "v5.sql", 6: _SQL / "v6.sql",
              7: _SQL / "v7.sql", 8: _SQL / "v8.sql", 9: _SQL / "v9.sql"}
SCHEMA_VERSION = max(MIGRATIONS)


async def user_version(db: aiosqlite.Connection) -> int:
    return (await db.execute_fetchall("PRAGMA user_version"))[0][0]


async def apply_schema(db: aiosqlite.Connection) -> None:
    """Apply every script the database has not seen (each holds its BEGIN/COMMIT)."""
    version = await user_version(db)
    if version > SCHEMA_VERSION:
        raise SchemaTooNew(version, SCHEMA_VERSION)
    if version < 2:
        await _run(db, SCHEMA_PATH)
    for target in sorted(MIGRATIONS):
        if await user_version(db) < target:
            await _run(db, MIGRATIONS[target])


async def _run(db: aiosqlite.Connection, script: Path) -> None:
    try:
        await db.executescript(script.read_text())
    except BaseException:
        if db.in_transaction:
            await db.rollback()
        raise
