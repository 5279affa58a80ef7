"""The benchmark's data: a database of N confirmed unclaimed payments, built through the
storage layer, and the lists of keys the load scripts walk.

PIDs and txids come from a seeded generator, so two runs of the benchmark build the
same database and the numbers compare. Every PID is written once to ``pids.txt``
(16 hex a line); the load scripts read slices of it, never the database.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
from pathlib import Path

from anonticket.domain.ids import PaymentId, Receipt, Transfer
from anonticket.storage import is_postgres_url, open_storage

AMOUNT = 10**12  # 1 XMR: above the default MONITOR_MIN_PAYMENT_AMOUNT
HEIGHT = 100


def make_transfers(count: int, seed: int) -> list[Transfer]:
    """``count`` transfers to ``count`` distinct short PIDs, deterministic for a seed."""
    rng = random.Random(seed)
    seen: set[bytes] = set()
    out: list[Transfer] = []
    while len(out) < count:
        short = rng.randbytes(8)
        if short in seen or not any(short):
            continue
        seen.add(short)
        out.append(Transfer(rng.randbytes(32), PaymentId(short + bytes(24)), AMOUNT, HEIGHT))
    return out


async def build_database(path: Path | str, count: int, seed: int = 1, *,
                         workdir: Path | None = None) -> dict[str, float]:
    """Credit ``count`` payments in ONE ``credit_transfers`` call (one transaction).

    Returns timings: generating the transfers is not the storage layer's cost, so it is
    reported apart from the credit itself.
    """
    started = time.perf_counter()
    transfers = make_transfers(count, seed)
    generated = time.perf_counter()
    storage = await open_storage(str(path))
    try:
        credit_started = time.perf_counter()
        result = await storage.credit_transfers(transfers, None, int(time.time()))
        credited = time.perf_counter()
    finally:
        await storage.close()
    if result.transfers_credited != count:
        raise RuntimeError(f"credited {result.transfers_credited} of {count} transfers")
    workdir = workdir or Path(path).parent
    (workdir / "pids.txt").write_text("".join(t.pid.hex() + "\n" for t in transfers))
    credit_secs = credited - credit_started
    return {
        "payments": count,
        "generate_secs": round(generated - started, 3),
        "credit_secs": round(credit_secs, 3),
        "credit_per_sec": round(count / credit_secs),
        "db_bytes": await _size(path),
    }


async def credit_priced(path: Path | str, count: int, price_per_day: int | None,
                        seed: int = 2) -> tuple[list[str], dict[str, float]]:
    """Credit ``count`` more payments as the monitor does with ``ACCESS_PRICE_PER_DAY`` in
    force, so that each bought time and its token, once redeemed, has an expiry (``None``:
    no price, as the main dataset's payments); returns
    their PIDs (16 hex) and the credit's timing."""
    transfers = make_transfers(count, seed)
    storage = await open_storage(str(path))
    try:
        started = time.perf_counter()
        result = await storage.credit_transfers(transfers, None, int(time.time()), price_per_day)
        secs = time.perf_counter() - started
    finally:
        await storage.close()
    if result.transfers_credited != count:
        raise RuntimeError(f"credited {result.transfers_credited} of {count} priced transfers")
    return [t.pid.hex() for t in transfers], {"payments": count, "credit_secs": round(secs, 3)}


async def credit_receipts(path: Path | str, count: int, seed: int = 3) -> list[str]:
    """Credit ``count`` payments to PIDs derived from receipts, as a checkout's customers
    pay them; returns the receipts (64 hex), which the receipt scenario redeems."""
    rng = random.Random(seed)
    receipts = [Receipt.from_bytes(rng.randbytes(32)) for _ in range(count)]
    transfers = [Transfer(rng.randbytes(32), r.pid, AMOUNT, HEIGHT) for r in receipts]
    storage = await open_storage(str(path))
    try:
        result = await storage.credit_transfers(transfers, None, int(time.time()))
    finally:
        await storage.close()
    if result.transfers_credited != count:
        raise RuntimeError(f"credited {result.transfers_credited} of {count} receipt payments")
    return [r.hex() for r in receipts]


def mark_before_receipts(target: Path | str) -> None:
    """Mark every payment so far as credited before the database adopted receipts, as the
    schema-5 upgrade does to a deployment's payments: the bare-PID scenarios then measure
    what they did before receipts, on the production default REDEEM_PLAIN_PIDS=refuse
    (which also keeps the marked prefixes in memory, as an upgraded service does)."""
    sql = "UPDATE payments SET plain_pid_ok = 1"
    if is_postgres_url(str(target)):
        _fetch_postgres(str(target), sql)
        return
    db = sqlite3.connect(str(target))
    try:
        with db:
            db.execute(sql)
    finally:
        db.close()


async def _size(target: Path | str) -> int:
    if not is_postgres_url(str(target)):
        return Path(target).stat().st_size
    import asyncpg
    conn = await asyncpg.connect(str(target))
    try:
        return int(await conn.fetchval("SELECT pg_database_size(current_database())"))
    finally:
        await conn.close()


def settle(target: Path | str) -> dict[str, float]:
    """On PostgreSQL, what a bulk-loaded database gets before it serves (and what autovacuum
    would otherwise do in the middle of the measurements, on the service's core): VACUUM
    (ANALYZE) sets the hint bits and visibility map of the million fresh rows and gives the
    planner its statistics, then a CHECKPOINT writes the pages out. Nothing on SQLite."""
    if not is_postgres_url(str(target)):
        return {}

    async def work() -> dict[str, float]:
        import asyncpg
        conn = await asyncpg.connect(str(target))
        try:
            started = time.perf_counter()
            await conn.execute("VACUUM (ANALYZE)")
            vacuumed = time.perf_counter()
            await conn.execute("CHECKPOINT")
            return {"vacuum_analyze_secs": round(vacuumed - started, 3),
                    "checkpoint_secs": round(time.perf_counter() - vacuumed, 3)}
        finally:
            await conn.close()

    return asyncio.run(work())


def read_pids(workdir: Path) -> list[str]:
    return (workdir / "pids.txt").read_text().split()


def write_keys(path: Path, keys: list[str]) -> Path:
    path.write_text("".join(k + "\n" for k in keys))
    return path


# claimed payments a bare PID reaches under REDEEM_PLAIN_PIDS=refuse (not the receipt
# scenario's, whose bare PIDs answer as unknown ones)
_CLAIMED_BY_PID = ("SELECT t.pid, t.token FROM service_tokens t JOIN payments p ON p.pid = t.pid"
                   " WHERE p.plain_pid_ok = 1")


def claimed_keys(db_path: Path | str, limit: int) -> tuple[list[str], list[str]]:
    """(short PIDs, tokens) of claimed payments, read straight from the file (WAL readers
    do not block the server), so the scripts probe what the server really issued."""
    if is_postgres_url(str(db_path)):
        return asyncio.run(_claimed_keys_postgres(str(db_path), limit))
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        rows = db.execute(
            f"{_CLAIMED_BY_PID} LIMIT ?", (limit,)
        ).fetchall()
    finally:
        db.close()
    return [pid[:8].hex() for pid, _ in rows], [token.hex() for _, token in rows]


def expiring_tokens(db_path: Path | str, limit: int) -> list[str]:
    """Tokens the server issued with an expiry (the plans phase's redeems)."""
    if is_postgres_url(str(db_path)):
        return [row[0].hex() for row in _fetch_postgres(
            str(db_path), "SELECT token FROM service_tokens WHERE expires_at IS NOT NULL LIMIT $1",
            limit)]
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT token FROM service_tokens WHERE expires_at IS NOT NULL LIMIT ?", (limit,)
        ).fetchall()
    finally:
        db.close()
    return [token.hex() for (token,) in rows]


async def _claimed_keys_postgres(url: str, limit: int) -> tuple[list[str], list[str]]:
    import asyncpg
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(f"{_CLAIMED_BY_PID} LIMIT $1", limit)
    finally:
        await conn.close()
    return [pid[:8].hex() for pid, _ in rows], [token.hex() for _, token in rows]


def _fetch_postgres(url: str, sql: str, *args: object) -> list[tuple[object, ...]]:
    async def work() -> list[tuple[object, ...]]:
        import asyncpg
        conn = await asyncpg.connect(url)
        try:
            return [tuple(row) for row in await conn.fetch(sql, *args)]
        finally:
            await conn.close()

    return asyncio.run(work())


def tokens_of(db_path: Path | str, pids: list[str]) -> list[str]:
    """The tokens the given short PIDs were redeemed for (those that were)."""
    if is_postgres_url(str(db_path)):
        return [row[0].hex() for row in _fetch_postgres(  # type: ignore[attr-defined]
            str(db_path), "SELECT token FROM service_tokens WHERE pid = ANY($1::bytea[])",
            [bytes.fromhex(pid) + bytes(24) for pid in pids])]
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        found = []
        for start in range(0, len(pids), 5000):
            chunk = [bytes.fromhex(pid) + bytes(24) for pid in pids[start:start + 5000]]
            marks = ",".join("?" * len(chunk))
            found += [row[0].hex() for row in db.execute(
                f"SELECT token FROM service_tokens WHERE pid IN ({marks})", chunk)]
    finally:
        db.close()
    return found
