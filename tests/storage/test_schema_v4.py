"""Version 3 → 4 on a populated database: the kept answers move to a rowid table, every one
of them still replays, and the age index now grows at its end."""

from __future__ import annotations

import os
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

import anonticket.storage.schema as schema_module
from anonticket.domain.ids import PaymentId, Transfer
from anonticket.storage import SCHEMA_VERSION, DebitRequest, Storage

T0 = 1_700_000_000
KEY_COLUMNS = "token, key, request, status, body, created_at"


async def make_version_3(path: Path, monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """A version-3 database with granted and refused debits kept under their keys."""
    with monkeypatch.context() as patch:
        patch.setattr(schema_module, "MIGRATIONS", {3: schema_module.MIGRATIONS[3]})
        patch.setattr(schema_module, "SCHEMA_VERSION", 3)
        store = await Storage.open(path)
        try:
            pids = [PaymentId.generate() for _ in range(20)]
            await store.credit_transfers([Transfer(os.urandom(32), p, 5000, 10) for p in pids],
                                         10, T0)
            claimed = await store.claim_payments([p.raw for p in pids], 1000, T0)
            tokens = [claimed[p.raw].token for p in pids]
            for second in range(5):  # four debits of 1000, then one of 5000 refused
                amount = 1000 if second < 4 else 5000
                outcomes = await store.apply_debits(
                    [DebitRequest(t, amount, f"k{second}", bytes([second]) * 32)
                     for t in tokens], T0 + second)
                assert {o.status for o in outcomes} == ({200} if second < 4 else {402})
        finally:
            await store.close()
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 3
    return tokens


def kept_answers(path: Path) -> list[tuple[object, ...]]:
    with closing(sqlite3.connect(path)) as conn:
        return sorted(conn.execute(f"SELECT {KEY_COLUMNS} FROM idempotency_keys"))


async def test_version_3_keys_move_to_a_rowid_table_and_still_replay(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "anonticket.db"
    tokens = await make_version_3(path, monkeypatch)
    before = kept_answers(path)
    assert len(before) == 100  # 20 tokens × 5 keys, the refusals of the last round included
    store = await Storage.open(path)
    try:
        assert kept_answers(path) == before  # every answer, byte for byte
        assert await store.ledger_problems() == []
        # a retry of an answer kept before the upgrade replays it, refusal or grant
        again = await store.apply_debits(
            [DebitRequest(tokens[0], 1000, "k0", bytes(32)),
             DebitRequest(tokens[0], 5000, "k4", bytes([4]) * 32),
             DebitRequest(tokens[0], 1000, "k0", bytes([9]) * 32)], T0 + 10)
        assert [(o.status, o.replayed) for o in again] == [(200, True), (402, True), (422, False)]
        assert again[0].body["remaining"] == 4000
        assert again[1].body == {"error": "insufficient_balance", "remaining": 1000}
        fresh = await store.apply_debits([DebitRequest(tokens[0], 1, "new", bytes(32))], T0 + 10)
        assert (fresh[0].status, fresh[0].body["remaining"]) == (200, 999)
        assert await store.prune_idempotency_keys(T0 + 2) == 40  # rounds 0 and 1
    finally:
        await store.close()
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION  # the upgrade goes on to the latest
        without_rowid, = conn.execute(
            "SELECT wr FROM pragma_table_list WHERE name = 'idempotency_keys'").fetchone()
        indexes = {(name, unique) for _, name, unique, *_ in
                   conn.execute("PRAGMA index_list('idempotency_keys')")}
        plan = [row[3] for row in conn.execute(
            "EXPLAIN QUERY PLAN DELETE FROM idempotency_keys WHERE created_at < 5")]
        leftover = conn.execute(
            "SELECT count(*) FROM sqlite_master WHERE name = 'idempotency_keys_v4'").fetchone()[0]
    assert without_rowid == 0  # rows are appended by rowid, not filed by (token, key)
    assert {("idempotency_keys_by_age", 0), ("idempotency_keys_by_key", 1)} <= indexes
    assert any("USING INDEX idempotency_keys_by_age" in d for d in plan), plan
    assert leftover == 0


async def test_a_duplicate_key_is_still_refused_by_the_table(tmp_path: Path) -> None:
    """A UNIQUE index on (token, key) took the primary key's place: the last guard against
    a key stored twice is still the schema, not only the batch's read."""
    path = tmp_path / "anonticket.db"
    store = await Storage.open(path)
    await store.close()
    with closing(sqlite3.connect(path)) as conn:
        row = (b"t" * 32, "k", b"r" * 32, 200, "{}", T0)
        conn.execute(f"INSERT INTO idempotency_keys ({KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)", row)
        with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
            conn.execute(f"INSERT INTO idempotency_keys ({KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                         row)
