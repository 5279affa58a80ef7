"""Privacy Pass issuer keys and the spent-set in the ledger, on real storage (both backends)
with a clock the test moves: one key per unit, the next published ahead with its
not-before, the switch at the epoch's end, the old key redeeming through its grace and then
removed with its spent nonces; no two stored keys sharing a truncated key id; the
spent-set's batch insert deciding which spend wins; and the upgrade of a version-6 SQLite
database with its keys to version 7."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

import anonticket.storage.schema as schema_module
from anonticket.config.units import parse_units
from anonticket.crypto import privacy_pass as pp
from anonticket.ledger.keyring import KeyRing
from anonticket.ledger.private_tokens import PrivateTokens
from anonticket.storage import SCHEMA_VERSION, Storage

BOTH_BACKENDS = True

T0 = 1_900_000_000
EPOCH = 4 * 3600  # the next key is published a quarter of an epoch ahead: 3600 s
GRACE = 900
UNITS = parse_units("hour=session:3600:100, call=request:7")


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now


def make(storage: Storage, clock: Clock) -> PrivateTokens:
    ring = KeyRing(storage, clock=clock, verify_secs=300, publish_ahead_secs=150)
    return PrivateTokens(ring, UNITS, epoch_secs=EPOCH, grace_secs=GRACE,
                         issuer_name="issuer.test", max_batch=8, clock=clock)


def token_for(tokens: PrivateTokens, unit: str) -> pp.Token:
    found = {item.unit.name: item for item in tokens.signing_keys()}[unit]
    request, pending = pp.create_token_request(tokens.challenge,
                                               found.key.issuer_key.token_key)
    (response,) = PrivateTokens.sign([(request, tokens.issuing_key(request))])
    return pp.finalize_token(pending, response)


async def test_keys_follow_their_schedule_and_a_removed_key_takes_its_nonces(
        storage: Storage) -> None:
    clock = Clock()
    tokens = make(storage, clock)
    await tokens.ring.load()
    await tokens.load()
    first = {item.unit.name: item.key.key_id for item in tokens.signing_keys()}
    assert set(first) == {"hour", "call"}
    old_token = token_for(tokens, "call")
    assert await tokens.spend(tokens.verify(old_token), old_token)
    unspent_old = token_for(tokens, "hour")

    clock.now = T0 + EPOCH - 3600 - 1  # not yet: nothing to publish
    assert await tokens.ensure_keys() == 0
    clock.now = T0 + EPOCH - 3600  # a quarter of an epoch before its end: the next key
    assert await tokens.ensure_keys() == 2
    assert await tokens.ensure_keys() == 0  # published once
    directory = tokens.directory("/api/v1/private-token")
    assert len(directory["token-keys"]) == 4
    assert sorted(item["not-before"] for item in directory["token-keys"]) == \
        [T0, T0, T0 + EPOCH, T0 + EPOCH]
    assert {item.key.key_id for item in tokens.signing_keys()} == set(first.values())

    clock.now = T0 + EPOCH  # the switch
    now_signing = {item.unit.name: item.key.key_id for item in tokens.signing_keys()}
    assert set(now_signing.values()).isdisjoint(first.values())
    # the old key redeems what it signed through its grace, and never twice
    assert await tokens.spend(tokens.verify(unspent_old), unspent_old)
    again = token_for(tokens, "call")
    assert tokens.verify(again).key.key_id == now_signing["call"]
    # issuance still takes the old key for a retry window, then refuses it
    old_request = pp.TokenRequest(bytes.fromhex(first["call"])[-1], b"\x01" * 256)
    assert tokens.issuing_key(old_request).key.key_id == first["call"]
    clock.now = T0 + EPOCH + 600
    with pytest.raises(pp.UnknownTokenKey):
        tokens.issuing_key(old_request)

    clock.now = T0 + EPOCH + GRACE  # the grace is over: removed, with their spent nonces
    assert await tokens.ring.remove_expired() == 2
    assert await tokens.remove_orphans() == 2
    assert set((await storage.count_spent_private_tokens())) == set()
    with pytest.raises(pp.UnknownTokenKey):
        tokens.verify(old_token)
    assert len(tokens.directory("/x")["token-keys"]) == 2


async def test_a_new_key_never_shares_a_truncated_key_id(
        storage: Storage, monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[pp.IssuerKey] = []
    real = pp.IssuerKey.generate

    def generate() -> pp.IssuerKey:
        # the second key is made to collide: a copy of the first one's key
        key = made[0] if len(made) == 1 else real()
        made.append(key)
        return key

    monkeypatch.setattr(pp.IssuerKey, "generate", staticmethod(generate))
    clock = Clock()
    tokens = make(storage, clock)
    await tokens.ring.load()
    await tokens.load()
    assert len(made) == 3  # the collision was generated again
    ids = [item.key.issuer_key.token_key.truncated_token_key_id for item in tokens.signing_keys()]
    assert len(set(ids)) == 2


async def test_the_spent_set_inserts_a_batch_and_names_the_winners(storage: Storage) -> None:
    key = "ab" * 32
    first = await storage.spend_private_tokens([(key, b"\x01" * 32), (key, b"\x02" * 32)], T0)
    assert first == {(key, b"\x01" * 32), (key, b"\x02" * 32)}
    second = await storage.spend_private_tokens([(key, b"\x02" * 32), (key, b"\x03" * 32)],
                                                T0 + 61)
    assert second == {(key, b"\x03" * 32)}
    assert await storage.count_spent_private_tokens() == {key: 3}
    assert await storage.spend_private_tokens([], T0) == set()
    # nothing stored links a nonce to a moment finer than the minute
    rows = await storage._read("SELECT spent_at FROM private_token_spent")  # noqa: SLF001
    assert {row[0] for row in rows} == {T0 - T0 % 60, T0 + 61 - (T0 + 61) % 60}
    # rows of a key not stored are removed
    assert await storage.remove_orphan_spent_tokens() == 3


async def test_a_version_6_database_with_keys_upgrades_to_7(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "v6.db"
    with monkeypatch.context() as patch:
        patch.setattr(schema_module, "MIGRATIONS",
                      {k: v for k, v in schema_module.MIGRATIONS.items() if k <= 6})
        patch.setattr(schema_module, "SCHEMA_VERSION", 6)
        store = await Storage.open(path)
        try:
            ring = KeyRing(store, clock=Clock(), verify_secs=300, publish_ahead_secs=150)
            await ring.load()
            before = await store.list_signing_keys()
        finally:
            await store.close()
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 6
    store = await Storage.open(path)
    try:
        assert SCHEMA_VERSION >= 7  # upgraded through 7 to whatever is current
        assert await store.list_signing_keys() == before
        assert await store.spend_private_tokens([("cd" * 32, b"\x05" * 32)], T0)
    finally:
        await store.close()
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


async def test_a_version_6_postgresql_database_with_keys_upgrades_to_7(
        pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import anonticket.storage.postgres.schema as pg_schema
    from anonticket.storage.postgres import PostgresStorage

    with monkeypatch.context() as patch:
        patch.setattr(pg_schema, "MIGRATIONS",
                      {k: v for k, v in pg_schema.MIGRATIONS.items() if k <= 6})
        patch.setattr(pg_schema, "PG_SCHEMA_VERSION", 6)
        store = await PostgresStorage.open(pg_url)
        try:
            ring = KeyRing(store, clock=Clock(), verify_secs=300,  # type: ignore[arg-type]
                           publish_ahead_secs=150)
            await ring.load()
            before = await store.list_signing_keys()
            assert await store._read("SELECT max(version) FROM schema_versions") == [(6,)]  # noqa: SLF001
        finally:
            await store.close()
    store = await PostgresStorage.open(pg_url)
    try:
        assert await store.list_signing_keys() == before
        assert await store.spend_private_tokens([("cd" * 32, b"\x05" * 32)], T0)
        rows = await store._read("SELECT max(version) FROM schema_versions")  # noqa: SLF001
        assert rows[0][0] == pg_schema.PG_SCHEMA_VERSION >= 7
    finally:
        await store.close()


async def test_an_issuer_key_rotated_now_or_as_compromised(storage: Storage) -> None:
    clock = Clock()
    tokens = make(storage, clock)
    await tokens.ring.load()
    await tokens.load()
    unit = tokens.by_name["call"]
    before = token_for(tokens, "call")
    clock.now += 10
    fresh = await tokens.rotate(unit)
    assert fresh.row.not_before == clock.now
    assert {k.key_id for k in tokens.ring.keys(unit.purpose)} >= {fresh.key_id}
    assert tokens.verify(before)  # the old key redeems through its grace
    assert tokens.verify(token_for(tokens, "call")).key.key_id == fresh.key_id
    clock.now += 10
    replaced = await tokens.rotate(unit, compromised=True)
    assert [k.key_id for k in tokens.ring.keys(unit.purpose)] == [replaced.key_id]
    with pytest.raises(pp.UnknownTokenKey):
        tokens.verify(before)
    # the other unit's key is untouched
    assert len(tokens.ring.keys(tokens.by_name["hour"].purpose)) == 1


async def test_the_services_verify_agrees_with_the_shipped_verifier(storage: Storage) -> None:
    """The service checks signatures with OpenSSL (``cryptography``) for speed; the
    pycryptodome ``verify_token`` of anonticket.crypto is the RFC's reference here: on a valid
    token and on 300 tampered ones (one bit anywhere after the type) both say the same."""
    import random

    clock = Clock()
    tokens = make(storage, clock)
    await tokens.ring.load()
    await tokens.load()
    good = token_for(tokens, "call")
    key = tokens.verify(good).key.issuer_key.token_key
    rng = random.Random(2024)
    for case in range(301):
        raw = bytearray(good.encode())
        if case:
            bit = rng.randrange(16, len(raw) * 8)
            raw[bit // 8] ^= 1 << (bit % 8)
        token = pp.Token.decode(bytes(raw))
        try:
            pp.verify_token(token, key)
            shipped = token.challenge_digest == tokens.challenge_digest
        except pp.PrivacyPassError:
            shipped = False
        try:
            tokens.verify(token)
            service = True
        except pp.PrivacyPassError:
            service = False
        assert service == shipped == (case == 0 or bytes(raw) == good.encode()), case
