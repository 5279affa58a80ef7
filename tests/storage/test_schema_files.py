"""The schema files: the migrations inside the package build exactly the database the
repository's ``schema.sql`` describes, and an installed wheel (not this checkout) carries
them and opens a fresh database, and carries the OpenAPI file its internal listener serves.

``schema.sql`` is for readers (the current schema in one script); the service runs only
``anonticket/storage/sql/v*.sql``. The comparison reads what SQLite itself recorded: every
table's columns (name, type, NOT NULL, default, key), foreign keys and seed rows, every
index's columns, uniqueness and WHERE clause, and each object's CREATE statement with its
CHECKs — as a set of clauses, because ``ALTER TABLE ADD COLUMN`` puts a column where a
single CREATE would not, and with comments, quotes and spacing taken out.
"""

from __future__ import annotations

import re
import shutil
import sqlite3
import subprocess
import sys
import sysconfig
import zipfile
from contextlib import closing
from pathlib import Path
from typing import Any

import aiosqlite
import pytest

from anonticket.storage.schema import SCHEMA_VERSION, apply_schema

REPO = Path(__file__).resolve().parents[2]
CURRENT = REPO / "schema.sql"


def _clauses(sql: str) -> tuple[str, list[str], str]:
    """(head, the top-level comma-separated clauses in sorted order, tail) of a CREATE."""
    text = re.sub(r"--[^\n]*", " ", sql).replace('"', "")
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r"\s*([(),])\s*", r"\1", text)
    if not text.upper().startswith("CREATE TABLE"):
        return text, [], ""
    start = text.index("(")
    depth, parts, current = 0, [], ""
    for i, char in enumerate(text[start + 1:], start + 1):
        if char == "(":
            depth += 1
        elif char == ")":
            if depth == 0:
                parts.append(current)
                return text[:start], sorted(parts), text[i + 1:]
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(current)
            current = ""
            continue
        current += char
    raise AssertionError(f"unbalanced CREATE TABLE: {sql}")


def describe(conn: sqlite3.Connection) -> dict[str, Any]:
    """Everything SQLite recorded about the schema, in a form two databases can be compared by."""
    found: dict[str, Any] = {"user_version": conn.execute("PRAGMA user_version").fetchone()[0]}
    for kind, name, table, sql in conn.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name").fetchall():
        entry: dict[str, Any] = {"type": kind, "table": table,
                                 "sql": _clauses(sql) if sql is not None else None}
        if kind == "table":
            entry["columns"] = conn.execute("SELECT * FROM pragma_table_xinfo(?)", (name,)).fetchall()
            entry["foreign_keys"] = conn.execute(
                "SELECT * FROM pragma_foreign_key_list(?)", (name,)).fetchall()
            entry["indexes"] = sorted(conn.execute(
                "SELECT name, \"unique\", origin, partial FROM pragma_index_list(?)", (name,)).fetchall())
            entry["rows"] = sorted(conn.execute(f'SELECT * FROM "{name}"').fetchall(), key=repr)
        elif kind == "index":
            entry["columns"] = conn.execute("SELECT * FROM pragma_index_xinfo(?)", (name,)).fetchall()
        found[f"{kind} {name}"] = entry
    return found


def _from_script(path: Path, script: str) -> dict[str, Any]:
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.executescript(script)
        return describe(conn)


async def _from_migrations(path: Path) -> dict[str, Any]:
    async with aiosqlite.connect(path, isolation_level=None) as db:
        await apply_schema(db)
    with closing(sqlite3.connect(path)) as conn:
        return describe(conn)


async def test_schema_sql_is_what_the_migrations_build(tmp_path: Path) -> None:
    migrated = await _from_migrations(tmp_path / "migrated.db")
    current = _from_script(tmp_path / "current.db", CURRENT.read_text())
    assert migrated["user_version"] == SCHEMA_VERSION
    assert sorted(current) == sorted(migrated)
    for name in migrated:
        assert current[name] == migrated[name], name


@pytest.mark.parametrize("edit", [
    ("CHECK (spent >= 0 AND spent <= amount)", "CHECK (spent >= 0)"),  # only the CREATE shows it
    ("    WHERE expired_notified = 0 AND expires_at IS NOT NULL", ""),  # a partial index
    ("INSERT INTO webhook_state (id) VALUES (1);", ""),  # a seed row
    ("REAL    NOT NULL,", "INTEGER NOT NULL,"),  # a column's type
    (f"PRAGMA user_version = {SCHEMA_VERSION};", f"PRAGMA user_version = {SCHEMA_VERSION - 1};"),
])
async def test_the_comparison_sees_a_difference(tmp_path: Path, edit: tuple[str, str]) -> None:
    """Each kind of drift the check above must catch, made on purpose."""
    script = CURRENT.read_text()
    assert edit[0] in script
    migrated = await _from_migrations(tmp_path / "migrated.db")
    assert _from_script(tmp_path / "edited.db", script.replace(edit[0], edit[1], 1)) != migrated


def _run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, **kwargs)
    assert done.returncode == 0, f"{argv[:4]}: {done.stdout[-2000:]}{done.stderr[-2000:]}"
    return done


_INSTALLED_CHECK = """
import asyncio, sqlite3, sys
from pathlib import Path
import anonticket
from anonticket.storage import SCHEMA_VERSION, open_storage
from anonticket.storage.postgres.schema import MIGRATIONS as PG_MIGRATIONS
site = Path(sys.argv[1]).resolve()
assert Path(anonticket.__file__).resolve().is_relative_to(site), anonticket.__file__
assert all(p.is_relative_to(site) and p.is_file() for p in PG_MIGRATIONS.values())
from anonticket.api.internal import openapi
async def main():
    storage = await open_storage(sys.argv[2])
    await storage.close()
    served = await openapi(None)  # the handler of GET /docs/openapi.yaml: reads no request
    assert served.body == Path(sys.argv[3]).read_bytes(), "the installed spec is not the repository's"
asyncio.run(main())
conn = sqlite3.connect(sys.argv[2])
print(conn.execute("PRAGMA user_version").fetchone()[0], SCHEMA_VERSION,
      conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0])
"""


@pytest.mark.slow
def test_an_installed_wheel_carries_the_schema_and_the_spec_and_opens_a_database(tmp_path: Path) -> None:
    """Not the editable install the tests run on: a wheel built from the project's files,
    installed into a directory of its own, imported with this checkout out of reach (``-S``:
    no site directories, so not the editable install's finder either; the dependencies come
    from this venv's site-packages on PYTHONPATH). Offline: no build isolation, no index."""
    source = tmp_path / "source"  # a copy, so the build's files never land in the checkout
    shutil.copytree(REPO / "anonticket", source / "anonticket",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
          "--no-index", "--wheel-dir", str(wheels), str(source)])
    (wheel,) = wheels.glob("anonticket-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for packaged in ("anonticket/storage/sql/v2.sql", "anonticket/storage/sql/v3.sql",
                   "anonticket/storage/sql/v4.sql", "anonticket/storage/postgres/sql/v3.sql",
                   "anonticket/storage/postgres/sql/v4.sql", "anonticket/api/openapi.yaml"):
        assert packaged in names
    _run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
          "--target", str(site), str(wheel)])

    dependencies = sysconfig.get_paths()["purelib"]
    database = tmp_path / "fresh" / "anonticket.db"
    done = _run([sys.executable, "-S", "-c", _INSTALLED_CHECK, str(site), str(database),
                 str(REPO / "anonticket" / "api" / "openapi.yaml")],
                cwd=tmp_path, env={"PYTHONPATH": f"{site}:{dependencies}", "PATH": "/usr/bin:/bin"})
    version, expected, tables = done.stdout.split()
    assert int(version) == int(expected) == SCHEMA_VERSION
    current = _from_script(tmp_path / "current.db", CURRENT.read_text())
    assert int(tables) == sum(1 for name in current if name.startswith("table "))
