#!/usr/bin/env python3
"""How long the start-up migrations take on a big database: 2 → 3 (→ 4), or 3 → 4.

    python3 bench/migration.py --payments 1000000 --claimed 0.5 --workdir /tmp/mig
    python3 bench/migration.py --payments 100000 --keys 1000000 --workdir /tmp/mig

With ``--keys N`` the database is first brought to version 3 and given N kept debit
answers (a day of Idempotency-Keys at ~12 debits a second), and only the step to version 4
is timed: it copies them into a rowid table (anonticket/storage/sql/v4.sql).

Builds a version-2 database as the previous release left it (``storage/sql/v2.sql`` alone:
payments, their transfers, and a token for the claimed fraction), once per shape, kept
in ``--workdir``; then, for each run, copies it and times ``Storage.open`` on the copy,
which is what ``anonticket serve`` does at its first start after the upgrade (the
migration is one transaction with its version bump). An open of the migrated copy is
timed too: what every later start pays for the same step. The result is checked: the
current version, every claimed payment linked to its token, every kept answer still there,
and ``db check``'s ledger clean.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import sqlite3
import sys
import time
from contextlib import closing
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from anonticket.domain.ids import PaymentId, derive_service_token  # noqa: E402
from anonticket.storage import SCHEMA_VERSION, Storage  # noqa: E402
from anonticket.storage import schema as schema_module  # noqa: E402
from anonticket.storage.schema import SCHEMA_PATH  # noqa: E402

AMOUNT = 10**12


def build_version_2(path: Path, payments: int, claimed: float, seed: int = 1) -> None:
    """``payments`` payments of one transfer each; the first ``claimed`` fraction redeemed."""
    rng = random.Random(seed)
    rows, transfers, tokens = [], [], []
    for index in range(payments):
        pid, txid = rng.randbytes(8) + bytes(24), rng.randbytes(32)
        status = 1 if index < claimed * payments else 0
        rows.append((pid, txid, AMOUNT, 100, status, 1, 2 if status else None))
        transfers.append((txid, pid, AMOUNT, 100, 1))
        if status:
            tokens.append((derive_service_token(PaymentId(pid), txid.hex()).raw, pid, AMOUNT, 2))
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(SCHEMA_PATH.read_text())
        conn.execute("BEGIN")
        # in key order: the B-trees fill page by page, as the years of real use never would,
        # but the migration reads them the same way either way
        conn.executemany("INSERT INTO payments VALUES (?, ?, ?, ?, ?, ?, ?)", sorted(rows))
        conn.executemany("INSERT INTO transfers VALUES (?, ?, ?, ?, ?)", sorted(transfers))
        conn.executemany("INSERT INTO service_tokens (token, pid, amount, issued_at)"
                         " VALUES (?, ?, ?, ?)", sorted(tokens))
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 2


async def _open_at_version_3(path: Path) -> None:
    saved = schema_module.MIGRATIONS, schema_module.SCHEMA_VERSION
    schema_module.MIGRATIONS, schema_module.SCHEMA_VERSION = {3: saved[0][3]}, 3
    try:
        await (await Storage.open(path)).close()
    finally:
        schema_module.MIGRATIONS, schema_module.SCHEMA_VERSION = saved


def add_kept_answers(path: Path, keys: int, seed: int = 2) -> None:
    """Bring ``path`` to version 3 and keep ``keys`` answers in it, one second's worth per
    thousand, in the order debits would have written them."""
    asyncio.run(_open_at_version_3(path))
    rng = random.Random(seed)
    rows = [(rng.randbytes(32), f"order-{index}", rng.randbytes(32), 200,
             f'{{"debit_id": {index + 1}, "amount": 1000, "remaining": {AMOUNT - 1000}, '
             f'"expires_at": null}}', 1_700_000_000 + index // 1000) for index in range(keys)]
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO idempotency_keys (token, key, request, status, body, "
                         "created_at) VALUES (?, ?, ?, ?, ?, ?)", rows)
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 3


async def timed_open(path: Path) -> float:
    started = time.perf_counter()
    store = await Storage.open(path)
    elapsed = time.perf_counter() - started
    await store.close()
    return elapsed


async def verify(path: Path, claimed_rows: int, keys: int) -> None:
    store = await Storage.open(path)
    try:
        problems = await store.ledger_problems()
    finally:
        await store.close()
    with closing(sqlite3.connect(path)) as conn:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        linked = conn.execute("SELECT count(*) FROM payments WHERE token IS NOT NULL").fetchone()[0]
        kept = conn.execute("SELECT count(*) FROM idempotency_keys").fetchone()[0]
    if (version, linked, kept, problems) != (SCHEMA_VERSION, claimed_rows, keys, []):
        raise RuntimeError(f"bad migration: version {version}, {linked} linked, {kept} keys, "
                           f"{problems}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="time the start-up schema migrations")
    parser.add_argument("--payments", type=int, default=1_000_000)
    parser.add_argument("--claimed", type=float, default=0.5, help="fraction redeemed (0..1)")
    parser.add_argument("--keys", type=int, default=0, help="time 3 -> 4 with this many kept "
                        "debit answers (0: time 2 -> current)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workdir", type=Path, required=True)
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    source = args.workdir / (f"v2-{args.payments}-{args.claimed}.db" if not args.keys else
                             f"v3-{args.payments}-{args.claimed}-{args.keys}.db")
    if not source.exists():
        print(f"building a version-{3 if args.keys else 2} database of {args.payments} "
              f"payments ...", flush=True)
        started = time.perf_counter()
        build_version_2(source.with_suffix(".tmp"), args.payments, args.claimed)
        if args.keys:
            add_kept_answers(source.with_suffix(".tmp"), args.keys)
        source.with_suffix(".tmp").rename(source)
        print(f"  built in {time.perf_counter() - started:.1f} s", flush=True)
    copy = args.workdir / "migrating.db"
    migrations, reopens = [], []
    for _ in range(args.runs):
        for suffix in ("", "-wal", "-shm"):
            Path(f"{copy}{suffix}").unlink(missing_ok=True)
        shutil.copyfile(source, copy)
        migrations.append(round(asyncio.run(timed_open(copy)), 3))
        reopens.append(round(asyncio.run(timed_open(copy)), 3))
    asyncio.run(verify(copy, round(args.claimed * args.payments), args.keys))
    result = {"payments": args.payments, "claimed": args.claimed, "keys": args.keys,
              "db_bytes": source.stat().st_size, "migration_secs": migrations,
              "median_secs": sorted(migrations)[len(migrations) // 2],
              "open_after_migration_secs": reopens}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
