"""Database maintenance for the command line: online backup and integrity check.

Both run through ``Storage`` (the only module with SQL) on the live file, next to a
running service: SQLite's backup API copies a consistent snapshot while the service
keeps writing, and WAL lets the check read without blocking it. Neither creates a
database: ``Storage.open`` would make an empty one for a mistyped ``DATABASE_URL``,
and a backup of that would look like a success.

On PostgreSQL ``db check`` runs the same ledger invariants and the schema version (there
is no file to check: ``integrity`` is None), and ``db backup`` explains ``pg_dump``.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
from pathlib import Path

from anonticket.config import Config
from anonticket.domain.errors import DatabaseConnectFailed, SchemaTooNew, StorageUnavailable
from anonticket.storage import SCHEMA_VERSION, Storage, database_path, is_postgres_url, open_storage

PG_BACKUP_HINT = ("db backup copies an SQLite file; on PostgreSQL use its own tools: "
                  "pg_dump -Fc (a consistent snapshot while the service runs) or "
                  "pg_basebackup with WAL archiving (docs/operations.md)")


class MaintenanceError(Exception):
    """The operation did not complete; the message is one line naming paths, never data."""


def database_file(config: Config) -> Path:
    path = Path(database_path(config.database_url))
    if not path.is_file():
        raise MaintenanceError(f"database not found: {path}")
    return path


async def _open(path: Path, config: Config) -> Storage:
    try:
        return await Storage.open(path, synchronous=config.database_synchronous, apply_schema=False)
    except sqlite3.Error as exc:
        raise MaintenanceError(f"cannot open the database {path}: {exc}") from None
    except DatabaseConnectFailed as exc:
        raise MaintenanceError(f"cannot open the database {path}: {exc.reason}") from None
    except SchemaTooNew as exc:
        raise MaintenanceError(str(exc)) from None


def _sqlite_reason(exc: BaseException) -> str:
    # StorageUnavailable is raised "from None": the SQLite error (whose texts carry no
    # parameters) is still its __context__, and it is what the operator needs to see
    context = exc.__context__
    return str(context) if isinstance(context, sqlite3.Error) else "the database is unreadable"


async def _open_postgres(config: Config) -> Storage:
    try:
        return await open_storage(config.database_url, apply_schema=False)
    except StorageUnavailable:
        # the DSN may hold a password: name the problem, never the URL
        raise MaintenanceError("cannot connect to the PostgreSQL database of DATABASE_URL") from None


async def _check_postgres(config: Config) -> tuple[None, list[str], int, int]:
    # PostgreSQL numbers its schema versions on its own (storage/postgres/schema.py)
    from anonticket.storage.postgres.schema import PG_SCHEMA_VERSION

    storage = await _open_postgres(config)
    try:
        version = await storage.schema_version()
        ledger = await storage.ledger_problems() if version == PG_SCHEMA_VERSION else []
    except StorageUnavailable:
        raise MaintenanceError("database check failed: the PostgreSQL database is unavailable") from None
    finally:
        await storage.close()
    return None, ledger, version, PG_SCHEMA_VERSION


async def check_database(config: Config) -> tuple[list[str] | None, list[str], int, int]:
    """(integrity problems, ledger problems, schema version found, schema version of this
    program); ok when both lists are empty and the versions agree. Integrity problems
    are None on PostgreSQL, which has no file for ``PRAGMA integrity_check`` to read."""
    if is_postgres_url(config.database_url):
        return await _check_postgres(config)
    path = database_file(config)
    storage = await _open(path, config)
    try:
        rows, version = await storage.integrity_check()
        problems = [] if rows == ["ok"] else rows
        ledger: list[str] = []
        if not problems and version == SCHEMA_VERSION:
            # the money check reads our tables: only on a sound file of our schema
            ledger = await storage.ledger_problems()
    except StorageUnavailable as exc:
        raise MaintenanceError(f"database check failed: {_sqlite_reason(exc)}") from None
    finally:
        await storage.close()
    return problems, ledger, version, SCHEMA_VERSION


async def backup_database(config: Config, target: str | Path, *, force: bool = False) -> None:
    """Write a consistent copy to ``target``; an existing target is kept unless ``force``.

    The copy goes to a temporary file beside the target first and takes the target's
    name only when complete, so a failed or interrupted backup never leaves a
    half-written file under the name a restore would use. The file is 0600: the
    database holds unredeemed payment ids and live tokens.
    """
    if is_postgres_url(config.database_url):
        raise MaintenanceError(PG_BACKUP_HINT)
    source = database_file(config)
    target = Path(target)
    if target.is_dir():
        raise MaintenanceError(f"{target} is a directory; name the backup file")
    if _is_part_of(target, source):
        raise MaintenanceError(f"{target} is the live database; choose another path")
    if os.path.lexists(target) and not force:
        raise MaintenanceError(f"{target} exists; use --force to replace it")
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as exc:
        raise MaintenanceError(f"cannot write {target}: {exc.strerror}") from None
    try:
        storage = await _open(source, config)
        try:
            await storage.backup(tmp)
        except StorageUnavailable as exc:
            raise MaintenanceError(f"backup failed: {_sqlite_reason(exc)}") from None
        finally:
            await storage.close()
        _publish(tmp, target, force)
    finally:
        tmp.unlink(missing_ok=True)


def _is_part_of(target: Path, source: Path) -> bool:
    live = source.resolve()
    names = {live, live.with_name(live.name + "-wal"), live.with_name(live.name + "-shm")}
    return target.resolve() in names


def _publish(tmp: Path, target: Path, force: bool) -> None:
    try:
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        if force:
            os.replace(tmp, target)
        else:
            # link, not rename: it fails if the target appeared while we were copying
            os.link(tmp, target)
        directory = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except FileExistsError:
        raise MaintenanceError(f"{target} exists; use --force to replace it") from None
    except OSError as exc:
        raise MaintenanceError(f"cannot write {target}: {exc.strerror}") from None
