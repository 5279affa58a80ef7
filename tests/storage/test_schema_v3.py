"""Version 2 → 3 on a populated database: in place, in one transaction, nothing lost."""

from __future__ import annotations

import os
import sqlite3
from contextlib import closing
from pathlib import Path

import anonticket.storage.schema as schema_module
from anonticket.domain.ids import PaymentId, derive_service_token
from anonticket.storage import SCHEMA_VERSION, Storage


def make_version_2(path: Path, claimed: int, unclaimed: int) -> list[tuple[bytes, bytes]]:
    """A version-2 database as the previous release wrote it; returns (pid, token) claimed."""
    pairs = []
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.executescript(schema_module.SCHEMA_PATH.read_text())
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
        conn.execute("BEGIN")
        for index in range(claimed + unclaimed):
            pid, txid = PaymentId.generate(), os.urandom(32)
            status = 1 if index < claimed else 0
            conn.execute("INSERT INTO payments (pid, txid, amount, first_height, status, created_at,"
                         " claimed_at) VALUES (?, ?, 5000, 10, ?, 1, ?)",
                         (pid.raw, txid, status, 2 if status else None))
            conn.execute("INSERT INTO transfers VALUES (?, ?, 5000, 10, 1)", (txid, pid.raw))
            if status:
                token = derive_service_token(pid, txid.hex()).raw
                conn.execute("INSERT INTO service_tokens (token, pid, amount, issued_at)"
                             " VALUES (?, ?, 5000, 2)", (token, pid.raw))
                pairs.append((pid.raw, token))
        conn.execute("COMMIT")
    return pairs


async def test_version_2_database_migrates_with_every_token_linked(tmp_path: Path) -> None:
    path = tmp_path / "anonticket.db"
    pairs = make_version_2(path, claimed=300, unclaimed=200)
    store = await Storage.open(path)
    try:
        assert await store.ledger_problems() == []
        record = await store.get_token(pairs[0][1])
        assert record is not None
        assert (record.amount, record.spent, record.expires_at, record.remaining) == (5000, 0, None, 5000)
        claim = await store.get_claim(pairs[0][0])
        assert claim is not None and claim.token == pairs[0][1]
    finally:
        await store.close()
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION  # through 3
        linked = conn.execute("SELECT count(*) FROM payments WHERE token IS NOT NULL").fetchone()[0]
        unlimited = conn.execute("SELECT count(*) FROM payments WHERE seconds IS NULL").fetchone()[0]
    assert (linked, unlimited) == (300, 500)


async def test_db_check_finds_a_balance_that_is_not_its_debits(tmp_path: Path) -> None:
    path = tmp_path / "anonticket.db"
    pairs = make_version_2(path, claimed=2, unclaimed=0)
    await (await Storage.open(path)).close()
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("UPDATE service_tokens SET spent = 7 WHERE token = ?", (pairs[0][1],))
        conn.execute("INSERT INTO debits (token, amount, at) VALUES (?, 3, 5)", (os.urandom(32),))
        conn.execute("UPDATE payments SET token = NULL WHERE pid = ?", (pairs[1][0],))
        conn.commit()
    store = await Storage.open(path)
    try:
        problems = await store.ledger_problems()
    finally:
        await store.close()
    assert problems == [
        "1 claimed payments have no token, or unclaimed ones have one",
        "1 tokens differ from the sum of their payments",
        "1 debits belong to no token",
        "1 tokens' spent differs from the sum of their debits",
    ]
