"""The signing keys' storage on both backends: one key in force per purpose, rotation that
retires (or, for a compromised key, drops) its predecessors in the same transaction, the
expired ones removed, the keys still there after a reopen; the revoked tokens a start reads;
and the migration from the previous schema version on a populated database."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

import anonticket.storage.schema as schema_module
from anonticket.domain.ids import PaymentId
from anonticket.storage import SCHEMA_VERSION, SigningKeyRow, Storage, open_storage
from conftest import INTEGRITY_ERRORS, transfer

BOTH_BACKENDS = True

NOW = 1_700_000_000
TTL = 300


def key(name: str, not_before: int = NOW, purpose: str = "credential") -> SigningKeyRow:
    return SigningKeyRow(f"k4.pid.{name}", purpose, os.urandom(32), os.urandom(32), NOW,
                         not_before)


def summary(rows: list[SigningKeyRow]) -> list[tuple[str, int, int | None, int | None]]:
    return [(row.key_id.removeprefix("k4.pid."), row.not_before, row.retired_at, row.expires_at)
            for row in rows]


async def test_the_first_key_is_stored_once_and_read_back_whole(storage: Storage) -> None:
    assert await storage.list_signing_keys() == []
    first = key("a")
    assert await storage.add_first_signing_key(first) is True
    assert await storage.add_first_signing_key(key("b")) is False  # one is in force already
    # another purpose has its own key in force
    assert await storage.add_first_signing_key(key("p", purpose="private_token:hour")) is True
    assert await storage.list_signing_keys("credential") == [first]
    assert [k.purpose for k in await storage.list_signing_keys()] == ["credential",
                                                                      "private_token:hour"]
    assert "secret" not in repr(first).replace("secret=<redacted>", "")
    assert first.secret.hex() not in repr(first)


async def test_concurrent_first_keys_leave_exactly_one(storage: Storage) -> None:
    results = await asyncio.gather(*(storage.add_first_signing_key(key(str(i)))
                                     for i in range(8)))
    assert sorted(results) == [False] * 7 + [True]
    assert len(await storage.list_signing_keys("credential")) == 1


async def test_rotation_retires_the_key_in_force_at_the_new_ones_start(storage: Storage) -> None:
    await storage.add_first_signing_key(key("a"))
    await storage.rotate_signing_key(key("b", NOW + 150), verify_secs=TTL)
    assert summary(await storage.list_signing_keys("credential")) == [
        ("a", NOW, NOW + 150, NOW + 150 + TTL), ("b", NOW + 150, None, None)]
    # rotated again before b started: b never signs, so it goes; a now retires at c's start
    await storage.rotate_signing_key(key("c", NOW + 10), verify_secs=TTL)
    assert summary(await storage.list_signing_keys("credential")) == [
        ("a", NOW, NOW + 10, NOW + 10 + TTL), ("c", NOW + 10, None, None)]
    # a later one: c retires at d's start, a keeps its earlier retirement
    await storage.rotate_signing_key(key("d", NOW + 400), verify_secs=TTL)
    assert summary(await storage.list_signing_keys("credential")) == [
        ("a", NOW, NOW + 10, NOW + 10 + TTL), ("c", NOW + 10, NOW + 400, NOW + 400 + TTL),
        ("d", NOW + 400, None, None)]
    # another purpose is untouched by all of it
    assert await storage.add_first_signing_key(key("p", purpose="other")) is True


async def test_a_key_that_signed_in_this_very_second_is_retired_not_dropped(
        storage: Storage) -> None:
    """Rotated at once in the second the key in force started: it may have signed in that
    second, so it is retired (and verifies on), not deleted as a key that never signed."""
    await storage.add_first_signing_key(key("a"))
    now = SigningKeyRow("k4.pid.b", "credential", os.urandom(32), os.urandom(32), NOW, NOW)
    await storage.rotate_signing_key(now, verify_secs=TTL)
    assert summary(await storage.list_signing_keys("credential")) == [
        ("a", NOW, NOW, NOW + TTL), ("b", NOW, None, None)]


async def test_a_compromised_rotation_drops_every_previous_key(storage: Storage) -> None:
    await storage.add_first_signing_key(key("a"))
    await storage.rotate_signing_key(key("b", NOW + 150), verify_secs=TTL)
    await storage.add_first_signing_key(key("p", purpose="other"))
    await storage.rotate_signing_key(key("c", NOW + 5), verify_secs=TTL, drop_previous=True)
    assert summary(await storage.list_signing_keys("credential")) == [("c", NOW + 5, None, None)]
    assert len(await storage.list_signing_keys("other")) == 1


async def test_expired_keys_are_removed_and_only_they(storage: Storage) -> None:
    await storage.add_first_signing_key(key("a"))
    await storage.rotate_signing_key(key("b", NOW + 100), verify_secs=TTL)
    assert await storage.remove_expired_signing_keys(NOW + 100 + TTL - 1) == 0
    assert await storage.remove_expired_signing_keys(NOW + 100 + TTL) == 1
    assert summary(await storage.list_signing_keys()) == [("b", NOW + 100, None, None)]
    assert await storage.remove_expired_signing_keys(2**40) == 0  # the key in force never expires


async def test_a_key_id_is_stored_once(storage: Storage) -> None:
    await storage.add_first_signing_key(key("a"))
    with pytest.raises(INTEGRITY_ERRORS):
        await storage.rotate_signing_key(key("a", NOW + 1), verify_secs=TTL)
    assert summary(await storage.list_signing_keys()) == [("a", NOW, None, None)]  # rolled back


async def test_keys_survive_a_reopen(database_url: str) -> None:
    store = await open_storage(database_url)
    try:
        await store.add_first_signing_key(key("a"))
        await store.rotate_signing_key(key("b", NOW + 1), verify_secs=TTL)
        before = await store.list_signing_keys()
    finally:
        await store.close()
    store = await open_storage(database_url)
    try:
        assert await store.list_signing_keys() == before
    finally:
        await store.close()


async def test_revoked_tokens_since_a_moment(storage: Storage) -> None:
    pids = [PaymentId.generate() for _ in range(4)]
    await storage.credit_transfers([transfer(p, 5000) for p in pids], 10, NOW)
    claimed = await storage.claim_payments([p.raw for p in pids], 1000, NOW)
    tokens = [claimed[p.raw].token for p in pids]
    assert await storage.list_revoked_since(0) == []
    await storage.revoke_token(tokens[0], "old", None, NOW - 1000)
    await storage.revoke_token(tokens[1], "new", None, NOW)
    await storage.revoke_token(tokens[2], "newer", None, NOW + 5)
    await storage.revoke_token(tokens[1], "again", None, NOW + 9)  # the first time stays
    assert await storage.list_revoked_since(NOW - TTL) == [(tokens[1], NOW), (tokens[2], NOW + 5)]


# ---------------------------------------------------------------------- the migration
@pytest.mark.sqlite_only
async def test_the_previous_sqlite_version_gains_the_keys_table_keeping_its_rows(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "anonticket.db"
    previous = max(v for v in schema_module.MIGRATIONS if v < SCHEMA_VERSION)
    with monkeypatch.context() as patch:
        patch.setattr(schema_module, "MIGRATIONS", {v: p for v, p in schema_module.MIGRATIONS.items()
                                                    if v <= previous})
        patch.setattr(schema_module, "SCHEMA_VERSION", previous)
        old = await Storage.open(path)
        try:
            pids = [PaymentId.generate() for _ in range(3)]
            await old.credit_transfers([transfer(p, 5000) for p in pids], 10, NOW)
            claimed = await old.claim_payments([p.raw for p in pids], 1000, NOW)
            await old.revoke_token(claimed[pids[0].raw].token, "r", None, NOW)  # type: ignore[arg-type]
        finally:
            await old.close()
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == previous
        assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'signing_keys'"
                            ).fetchone()[0] == 0
    store = await Storage.open(path)
    try:
        assert (await store.get_stats())["payments_claimed"] == 3
        assert await store.list_revoked_since(0) == [(claimed[pids[0].raw].token, NOW)]
        assert await store.ledger_problems() == []
        assert await store.add_first_signing_key(key("a")) is True
    finally:
        await store.close()
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        plan = " ".join(row[3] for row in conn.execute(
            "EXPLAIN QUERY PLAN SELECT token FROM service_tokens WHERE revoked_at IS NOT NULL "
            "AND revoked_at >= 5"))
    assert "service_tokens_by_revoked_at" in plan


async def test_the_previous_postgres_version_gains_the_keys_table_keeping_its_rows(
        pg_url: str) -> None:
    import asyncpg

    from anonticket.storage.postgres.schema import MIGRATIONS, PG_SCHEMA_VERSION

    previous = [v for v in sorted(MIGRATIONS) if v < PG_SCHEMA_VERSION]
    raw = await asyncpg.connect(pg_url)
    try:
        async with raw.transaction():
            await raw.execute("CREATE TABLE schema_versions (version integer PRIMARY KEY,"
                              " applied_at timestamptz NOT NULL DEFAULT now())")
            for version in previous:
                await raw.execute(MIGRATIONS[version].read_text())
                await raw.execute("INSERT INTO schema_versions (version) VALUES ($1)", version)
        old = await open_storage(pg_url, apply_schema=False)
        try:
            pids = [PaymentId.generate() for _ in range(3)]
            await old.credit_transfers([transfer(p, 5000) for p in pids], 10, NOW)
            claimed = await old.claim_payments([p.raw for p in pids], 1000, NOW)
            token = claimed[pids[0].raw].token
            await old.revoke_token(token, "r", None, NOW)  # type: ignore[arg-type]
        finally:
            await old.close()
        assert await raw.fetchval("SELECT to_regclass('signing_keys')") is None
        store = await open_storage(pg_url)
        try:
            assert (await store.get_stats())["payments_claimed"] == 3
            assert await store.list_revoked_since(0) == [(token, NOW)]
            assert await store.add_first_signing_key(key("a")) is True
        finally:
            await store.close()
        versions = [r[0] for r in await raw.fetch("SELECT version FROM schema_versions ORDER BY 1")]
        assert versions == [*previous, PG_SCHEMA_VERSION]
        index = await raw.fetchval(
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'service_tokens_by_revoked_at'")
        assert "WHERE (revoked_at IS NOT NULL)" in index
    finally:
        await raw.close()
