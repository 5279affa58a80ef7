"""Storage on real SQLite files: schema and version, pragmas, constraints, crediting, claims,
revocation, persistence across a restart, backup and recovery of the one write path.

The storage contract (crediting, claiming, revocation, restart, prefixes) runs on both
backends; the tests about the SQLite file itself are ``sqlite_only``, and PostgreSQL's
own (schema versions, locks, error mapping) are in tests/storage/test_storage_postgres.py."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import pytest

import anonticket.storage.schema as schema_module
from anonticket.domain.errors import SchemaTooNew
from anonticket.domain.ids import PaymentId, derive_service_token, key_prefix
from anonticket.storage import SCHEMA_VERSION, Storage, database_path, open_storage
from conftest import INTEGRITY_ERRORS, transfer

BOTH_BACKENDS = True

NOW = 1_700_000_000
MIN = 1000
TABLES = {"payments", "transfers", "service_tokens", "monitor_state", "audit_log", "debits",
          "idempotency_keys", "webhook_events", "webhook_state", "signing_keys",
          "private_token_spent", "provisional_credits", "provisional_outstanding", "subaddresses"}
PROVISIONAL_TABLES = {"provisional_credits", "provisional_outstanding"}  # version 8
V2_TABLES = {"payments", "transfers", "service_tokens", "monitor_state", "audit_log"}


@contextmanager
def raw(path: Path) -> Iterator[sqlite3.Connection]:
    """A plain sqlite3 connection, as another process (or an operator's sqlite3 shell) would have."""
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("PRAGMA foreign_keys=ON")
        yield conn


def tables(path: Path) -> set[str]:
    with raw(path) as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {name for (name,) in rows}


def user_version(path: Path) -> int:
    with raw(path) as conn:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])


# ---------------------------------------------------------------------- schema and pragmas
async def test_fresh_file_gets_schema_version_and_wal(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "fresh.db"  # the directory is created too
    store = await Storage.open(path)
    await store.close()
    assert TABLES <= tables(path)
    assert user_version(path) == SCHEMA_VERSION
    with raw(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # persisted in the file
        strict = {name for (name, strict) in conn.execute(
            "SELECT name, strict FROM pragma_table_list WHERE schema = 'main'") if strict}
    assert strict == TABLES


def _broken_schema(tmp_path: Path, script: Path, marker: str, garbage: str) -> Path:
    text = script.read_text()
    assert marker in text
    bad = tmp_path / "broken-schema.sql"
    bad.write_text(text.replace(marker, marker + "\n" + garbage, 1))
    return bad


@pytest.mark.parametrize("marker", [
    "PRAGMA user_version = 2;",  # the version is already set when the script breaks
    ") STRICT, WITHOUT ROWID;",  # right after the first table
])
async def test_broken_schema_applies_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, marker: str
) -> None:
    path = tmp_path / "anonticket.db"
    broken = _broken_schema(tmp_path, schema_module.SCHEMA_PATH, marker, "CREATE TABLE (;")
    monkeypatch.setattr(schema_module, "SCHEMA_PATH", broken)
    with pytest.raises(sqlite3.OperationalError):
        await Storage.open(path)
    assert user_version(path) == 0
    assert tables(path) == set()
    # the file is not poisoned: the real schema applies on the next start
    monkeypatch.undo()
    store = await Storage.open(path)
    await store.close()
    assert (user_version(path), TABLES <= tables(path)) == (SCHEMA_VERSION, True)


@pytest.mark.parametrize(("version", "marker"), [
    (3, "PRAGMA user_version = 3;"),
    (3, "ALTER TABLE service_tokens ADD COLUMN expires_at INTEGER;"),
    (4, "PRAGMA user_version = 4;"),
    (4, "DROP TABLE idempotency_keys;"),  # the old table dropped, the copy not yet renamed
    (6, "PRAGMA user_version = 6;"),
    (7, "PRAGMA user_version = 7;"),
    (8, "PRAGMA user_version = 8;"),
    (8, "ALTER TABLE service_tokens ADD COLUMN lost"),  # the new tables made, columns half added
    (9, "PRAGMA user_version = 9;"),
])
async def test_broken_migration_leaves_the_previous_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, version: int, marker: str
) -> None:
    path = tmp_path / "anonticket.db"
    broken = _broken_schema(tmp_path, schema_module.MIGRATIONS[version], marker, "CREATE TABLE (;")
    monkeypatch.setitem(schema_module.MIGRATIONS, version, broken)
    with pytest.raises(sqlite3.OperationalError):
        await Storage.open(path)
    # version 3 and 4 keep the table names: before 4 the tables are 3's, copy not left over;
    # before 6 there are no signing keys, before 7 no spent-set, before 8 no provisional
    # credits, before 9 no subaddresses
    later = {"signing_keys", "private_token_spent", "subaddresses"} | PROVISIONAL_TABLES
    before = {3: (2, V2_TABLES), 4: (3, TABLES - later), 6: (5, TABLES - later),
              7: (6, TABLES - {"private_token_spent", "subaddresses"} - PROVISIONAL_TABLES),
              8: (7, TABLES - PROVISIONAL_TABLES - {"subaddresses"}),
              9: (8, TABLES - {"subaddresses"})}
    assert (user_version(path), tables(path)) == before[version]
    monkeypatch.undo()
    store = await Storage.open(path)
    await store.close()
    assert (user_version(path), tables(path)) == (SCHEMA_VERSION, TABLES)


async def test_current_schema_is_not_reapplied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "anonticket.db"
    await (await Storage.open(path)).close()
    # with the version already current, the schema file is not even read
    monkeypatch.setattr(schema_module, "SCHEMA_PATH", tmp_path / "missing.sql")
    for version in schema_module.MIGRATIONS:
        monkeypatch.setitem(schema_module.MIGRATIONS, version, tmp_path / "missing.sql")
    store = await Storage.open(path)
    await store.close()
    assert user_version(path) == SCHEMA_VERSION


async def test_newer_schema_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "anonticket.db"
    with raw(path) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(SchemaTooNew, match="newer"):
        await Storage.open(path)
    assert (user_version(path), tables(path)) == (99, set())


V1_TRANSFERS = """CREATE TABLE transfers (
    txid        BLOB    NOT NULL PRIMARY KEY CHECK (length(txid) = 32),
    pid         BLOB    NOT NULL CHECK (length(pid) = 32)
                REFERENCES payments (pid) DEFERRABLE INITIALLY DEFERRED,
    amount      INTEGER NOT NULL CHECK (amount > 0),
    height      INTEGER NOT NULL CHECK (height > 0),
    credited_at INTEGER NOT NULL
) STRICT, WITHOUT ROWID"""


async def test_version_1_database_is_upgraded_in_place(tmp_path: Path) -> None:
    # version 1's transfers table had a foreign key to payments and an index on pid
    path = tmp_path / "anonticket.db"
    with raw(path) as conn:
        conn.executescript(schema_module.SCHEMA_PATH.read_text())  # version 2
        for t in (transfer(PaymentId.generate(), amount=7), transfer(PaymentId.generate(), amount=9)):
            conn.execute("INSERT INTO payments (pid, txid, amount, first_height, created_at)"
                         " VALUES (?, ?, ?, ?, 1000)", (t.pid.raw, t.txid, t.amount, t.height))
            conn.execute("INSERT INTO transfers VALUES (?, ?, ?, ?, 1000)",
                         (t.txid, t.pid.raw, t.amount, t.height))
        conn.execute("UPDATE monitor_state SET scanned_height = 42")
    with raw(path) as conn:
        before = conn.execute("SELECT * FROM transfers ORDER BY txid").fetchall()
        conn.execute("ALTER TABLE transfers RENAME TO current_transfers")
        conn.execute(V1_TRANSFERS)
        conn.execute("INSERT INTO transfers SELECT * FROM current_transfers")
        conn.execute("DROP TABLE current_transfers")
        conn.execute("CREATE INDEX transfers_by_pid ON transfers (pid)")
        conn.execute("PRAGMA user_version = 1")
        conn.commit()
        assert conn.execute("SELECT count(*) FROM pragma_foreign_key_list('transfers')").fetchone()[0] == 1
    store = await Storage.open(path)
    try:
        assert await store.ledger_problems() == []
    finally:
        await store.close()
    with raw(path) as conn:
        indexes = {name for (name,) in conn.execute(
            "SELECT name FROM sqlite_schema WHERE type = 'index' AND tbl_name = 'transfers'"
            " AND sql IS NOT NULL")}
        keys = conn.execute("SELECT count(*) FROM pragma_foreign_key_list('transfers')").fetchone()[0]
        after = conn.execute("SELECT * FROM transfers ORDER BY txid").fetchall()
        cursor = conn.execute("SELECT scanned_height FROM monitor_state").fetchone()[0]
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")}
    assert (user_version(path), indexes, keys, after, cursor) == (SCHEMA_VERSION, set(), 0, before, 42)
    assert len(before) == 2 and "transfers_v2" not in tables


@pytest.mark.parametrize(("synchronous", "code"), [("NORMAL", 1), ("FULL", 2)])
async def test_connection_pragmas(tmp_path: Path, synchronous: str, code: int) -> None:
    # these pragmas are per connection, so only the service's own connection can show them
    store = await Storage.open(tmp_path / "anonticket.db", synchronous=synchronous)
    try:
        writer = store._writer
        assert (await writer.execute_fetchall("PRAGMA synchronous"))[0][0] == code
        assert (await writer.execute_fetchall("PRAGMA foreign_keys"))[0][0] == 1
        assert (await writer.execute_fetchall("PRAGMA busy_timeout"))[0][0] > 0
        assert (await writer.execute_fetchall("PRAGMA journal_mode"))[0][0] == "wal"
        assert (await store._reader.execute_fetchall("PRAGMA query_only"))[0][0] == 1
    finally:
        await store.close()


@pytest.mark.sqlite_only
async def test_foreign_keys_are_enforced_on_the_writer(storage: Storage) -> None:
    with pytest.raises(sqlite3.IntegrityError):
        async with storage._transaction() as db:
            await db.execute(
                "INSERT INTO service_tokens (token, pid, amount, issued_at) VALUES (?, ?, 1, 1)",
                (bytes(32), PaymentId.generate().raw),
            )
    assert (await storage.get_stats())["tokens_active"] == 0


async def test_odd_characters_in_the_directory_name(tmp_path: Path) -> None:
    # the read-only connection is opened by URI, where "#" and "%" mean something
    path = tmp_path / "we#ird %41 dir" / "anonticket.db"
    store = await Storage.open(path)
    try:
        await store.credit_transfers([transfer(PaymentId.generate())], 42, NOW)
        assert await store.get_cursor() == 42  # read back through the read-only connection
    finally:
        await store.close()


def test_database_url_forms() -> None:
    assert database_path("sqlite://var/a.db?mode=rwc") == "var/a.db"
    assert database_path("sqlite:///srv/a.db") == "/srv/a.db"
    assert database_path("/srv/a.db") == "/srv/a.db"


# ---------------------------------------------------------------------- constraints
_PID, _PID2, _NEW = b"\x01" * 32, b"\x05" * 32, b"\x06" * 32
_TXID, _TOKEN, _TOKEN2 = b"\x02" * 32, b"\x03" * 32, b"\x04" * 32
_PAYMENT = ("INSERT INTO payments (pid, txid, amount, first_height, status, created_at, claimed_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)")
_TOKEN_ROW = ("INSERT INTO service_tokens (token, pid, amount, issued_at, revoked_at, revoke_reason)"
              " VALUES (?, ?, 5, 1, ?, ?)")
CHECK, TYPE, FK = "CHECK constraint failed", "cannot store", "FOREIGN KEY constraint failed"


@pytest.mark.sqlite_only
@pytest.mark.parametrize(("sql", "params", "why"), [
    (_PAYMENT, (b"\x06" * 31, _TXID, 5, 1, 0, 1, None), CHECK),  # 31-byte pid
    (_PAYMENT, (_NEW, b"\x02" * 33, 5, 1, 0, 1, None), CHECK),  # 33-byte txid
    (_PAYMENT, (_NEW.hex(), _TXID, 5, 1, 0, 1, None), TYPE),  # text where a blob belongs (STRICT)
    (_PAYMENT, (_NEW, _TXID, "five", 1, 0, 1, None), TYPE),  # text amount (STRICT)
    (_PAYMENT, (_NEW, _TXID, -1, 1, 0, 1, None), CHECK),  # negative amount
    (_PAYMENT, (_NEW, _TXID, 5, 1, 2, 1, 1), CHECK),  # unknown status
    (_PAYMENT, (_NEW, _TXID, 5, 1, 1, 1, None), CHECK),  # claimed without a claim time
    (_PAYMENT, (_NEW, _TXID, 5, 1, 0, 1, 7), CHECK),  # a claim time on an unclaimed payment
    ("INSERT INTO transfers VALUES (?, ?, 0, 5, 1)", (_TXID, _PID), CHECK),  # zero amount
    ("INSERT INTO transfers VALUES (?, ?, 5, 0, 1)", (_TXID, _PID), CHECK),  # height 0
    # (a transfer of an unknown payment is no longer refused here: `db check` reports it,
    # tests/cli/test_cli.py::test_db_check_finds_money_that_does_not_add_up)
    (_TOKEN_ROW, (_TOKEN2, _NEW, None, None), FK),  # token for a payment that does not exist
    (_TOKEN_ROW, (_TOKEN2, _PID, None, None), "UNIQUE"),  # a second token for one payment
    (_TOKEN_ROW, (_TOKEN2, _PID2, 2, "x" * 257), CHECK),  # reason too long
    (_TOKEN_ROW, (_TOKEN2, _PID2, None, "why"), CHECK),  # a reason without a revocation
    ("INSERT INTO monitor_state VALUES (2, 5)", (), CHECK),  # a second cursor
    ("INSERT INTO audit_log (at, action, token) VALUES (1, 'delete', ?)", (_TOKEN,), CHECK),
    ("INSERT INTO audit_log (at, action, token) VALUES (1, 'revoke', ?)", (_TOKEN2,), FK),
])
async def test_constraints_reject_bad_rows(
    storage: Storage, tmp_path: Path, sql: str, params: Any, why: str
) -> None:
    with raw(tmp_path / "anonticket.db") as conn:
        conn.execute("BEGIN")
        conn.execute(_PAYMENT, (_PID, _TXID, 5, 1, 0, 1, None))  # valid rows to refer to
        conn.execute(_PAYMENT, (_PID2, _TXID, 5, 1, 0, 1, None))
        conn.execute(_TOKEN_ROW, (_TOKEN, _PID, None, None))
        with pytest.raises(sqlite3.IntegrityError, match=why):
            conn.execute(sql, params)
            conn.execute("COMMIT")  # deferred foreign keys are checked here
        if conn.in_transaction:
            conn.execute("ROLLBACK")


async def test_a_bad_transfer_rolls_back_the_whole_batch(storage: Storage) -> None:
    pid = PaymentId.generate()
    with pytest.raises(INTEGRITY_ERRORS):  # a bug, not an outage: not a 503
        await storage.credit_transfers([transfer(pid, 5000), transfer(pid, 0)], 50, NOW)
    assert await storage.get_cursor() is None
    assert await storage.claim_payments([pid.raw], MIN, NOW) == {}
    await storage.credit_transfers([transfer(pid, 5000)], 50, NOW)  # the write path still works
    assert await storage.get_cursor() == 50


# ---------------------------------------------------------------------- crediting and claiming
async def test_credit_is_idempotent_by_txid(storage: Storage) -> None:
    pid = PaymentId.generate()
    batch = [transfer(pid, 3000, 10), transfer(pid, 2000, 11)]
    first = await storage.credit_transfers(batch, 20, NOW)
    again = await storage.credit_transfers(batch, 30, NOW)
    assert (first.transfers_credited, first.credited_pids) == (2, [pid.raw])
    assert (again.transfers_credited, again.credited_pids) == (0, [])
    assert await storage.get_cursor() == 30  # the cursor moves even when nothing was new
    stats = await storage.get_stats()
    assert (stats["transfers"], stats["credited_piconero"]) == (2, 5000)
    assert (await storage.claim_payments([pid.raw], MIN, NOW))[pid.raw].amount == 5000


async def test_a_batch_mixing_stored_and_new_transfers_credits_only_the_new(storage: Storage) -> None:
    # the optimistic one-pass insert meets a stored txid: undone, then only the new ones
    pid, other = PaymentId.generate(), PaymentId.generate()
    stored = transfer(pid, 3000, 10)
    await storage.credit_transfers([stored], 20, NOW)
    new = [transfer(pid, 500, 21), transfer(other, 700, 22)]
    result = await storage.credit_transfers([*new, stored], 30, NOW)
    assert result.transfers_credited == 2
    assert sorted(result.credited_pids) == sorted([pid.raw, other.raw])
    rows = await storage.claim_payments([pid.raw, other.raw], 0, NOW)
    assert (rows[pid.raw].amount, rows[other.raw].amount) == (3500, 700)
    stats = await storage.get_stats()
    assert (stats["transfers"], stats["credited_piconero"], stats["scanned_height"]) == (3, 4200, 30)


async def test_duplicate_txid_within_one_batch_counts_once(storage: Storage) -> None:
    pid = PaymentId.generate()
    one = transfer(pid, 4000)
    result = await storage.credit_transfers([one, one], None, NOW)
    assert result.transfers_credited == 1
    assert (await storage.get_stats())["credited_piconero"] == 4000


async def test_several_transfers_to_one_pid_are_summed(storage: Storage) -> None:
    pid, other = PaymentId.generate(), PaymentId.generate()
    await storage.credit_transfers([transfer(pid, 100, 5), transfer(pid, 200, 6), transfer(other, 7)], None, NOW)
    await storage.credit_transfers([transfer(pid, 300, 9)], None, NOW)
    rows = await storage.claim_payments([pid.raw, other.raw], 0, NOW)
    assert (rows[pid.raw].amount, rows[other.raw].amount) == (600, 7)


@pytest.mark.parametrize("together", [False, True])
async def test_token_derives_from_the_earliest_transfer(storage: Storage, together: bool) -> None:
    pid = PaymentId.generate()
    late = transfer(pid, 3000, height=200, txid=b"\x00" * 32)
    same_height_high = transfer(pid, 3000, height=100, txid=b"\xff" * 32)
    earliest = transfer(pid, 3000, height=100, txid=b"\x11" * 32)
    if together:
        await storage.credit_transfers([late, same_height_high, earliest], None, NOW)
    else:  # credited out of order, one call each
        for t in (late, same_height_high, earliest):
            await storage.credit_transfers([t], None, NOW)
    row = (await storage.claim_payments([pid.raw], MIN, NOW))[pid.raw]
    assert row.token == derive_service_token(pid, earliest.txid.hex()).raw
    assert row.amount == 9000


async def test_an_earlier_transfer_after_the_claim_does_not_change_the_token(storage: Storage) -> None:
    pid = PaymentId.generate()
    first = transfer(pid, 5000, height=100)
    await storage.credit_transfers([first], None, NOW)
    token = (await storage.claim_payments([pid.raw], MIN, NOW))[pid.raw].token
    await storage.credit_transfers([transfer(pid, 10, height=50)], None, NOW)  # a reorg shows an older one
    row = (await storage.claim_payments([pid.raw], MIN, NOW))[pid.raw]
    assert (row.token, row.amount, row.claimed_now) == (token, 5010, False)
    assert token == derive_service_token(pid, first.txid.hex()).raw


async def test_claim_once_then_top_up(storage: Storage) -> None:
    pid = PaymentId.generate()
    await storage.credit_transfers([transfer(pid, 5000)], None, NOW)
    first = (await storage.claim_payments([pid.raw], MIN, NOW))[pid.raw]
    second = (await storage.claim_payments([pid.raw], MIN, NOW + 5))[pid.raw]
    assert (first.status, first.claimed_now, second.claimed_now) == (1, True, False)
    assert first.token is not None and second.token == first.token
    result = await storage.credit_transfers([transfer(pid, 700, height=120)], None, NOW)
    assert {t: r.amount for t, r in result.topped_up.items()} == {first.token: 5700}
    record = await storage.get_token(first.token)
    assert record is not None and (record.amount, record.issued_at) == (5700, NOW)
    assert (await storage.claim_payments([pid.raw], MIN, NOW))[pid.raw].amount == 5700


async def test_claim_below_minimum_claims_nothing(storage: Storage) -> None:
    pid, absent = PaymentId.generate(), PaymentId.generate()
    await storage.credit_transfers([transfer(pid, MIN - 1)], None, NOW)
    rows = await storage.claim_payments([pid.raw, absent.raw], MIN, NOW)
    assert set(rows) == {pid.raw}  # an unknown PID is simply absent
    row = rows[pid.raw]
    assert (row.status, row.amount, row.token, row.claimed_now) == (0, MIN - 1, None, False)
    assert (await storage.get_stats())["tokens_active"] == 0
    await storage.credit_transfers([transfer(pid, 1, height=101)], None, NOW)  # exactly the minimum now
    row = (await storage.claim_payments([pid.raw], MIN, NOW))[pid.raw]
    assert (row.status, row.amount, row.claimed_now) == (1, MIN, True)


async def test_restart_keeps_claims_amounts_and_cursor(database_url: str) -> None:
    claimed, unclaimed = PaymentId.generate(), PaymentId.generate()
    store = await open_storage(database_url)
    await store.credit_transfers([transfer(claimed, 5000), transfer(unclaimed, 10)], 77, NOW)
    token = (await store.claim_payments([claimed.raw], MIN, NOW))[claimed.raw].token
    await store.credit_transfers([transfer(claimed, 250, height=150)], 88, NOW)
    await store.close()

    store = await open_storage(database_url)
    try:
        assert await store.get_cursor() == 88
        rows = await store.claim_payments([claimed.raw, unclaimed.raw], MIN, NOW + 60)
        assert (rows[claimed.raw].token, rows[claimed.raw].amount, rows[claimed.raw].claimed_now) == (token, 5250, False)
        assert (rows[unclaimed.raw].status, rows[unclaimed.raw].amount) == (0, 10)
        assert token is not None
        record = await store.get_token(token)
        assert record is not None and record.amount == 5250
    finally:
        await store.close()


# ---------------------------------------------------------------------- revocation
async def _claimed_token(storage: Storage) -> bytes:
    pid = PaymentId.generate()
    await storage.credit_transfers([transfer(pid, 5000)], None, NOW)
    token = (await storage.claim_payments([pid.raw], MIN, NOW))[pid.raw].token
    assert token is not None
    return token


async def test_revoke_is_idempotent_and_every_call_is_audited(storage: Storage) -> None:
    token = await _claimed_token(storage)
    first = await storage.revoke_token(token, "fraud", None, NOW + 1)
    assert first is not None
    assert (first.revoked_at, first.revoke_reason, first.abuse_score) == (NOW + 1, "fraud", 0)
    second = await storage.revoke_token(token, "other", 5, NOW + 2)
    assert second is not None
    assert (second.revoked_at, second.revoke_reason, second.abuse_score) == (NOW + 1, "fraud", 5)
    third = await storage.revoke_token(token, None, None, NOW + 3)  # no score given: kept
    lower = await storage.revoke_token(token, None, 3, NOW + 4)  # a lower score never lowers it
    assert third is not None and lower is not None
    assert (third.abuse_score, lower.abuse_score, lower.revoked_at) == (5, 5, NOW + 1)
    audit = await storage.list_audit(token)
    assert [(a["at"], a["reason"], a["abuse_score"]) for a in audit] == [
        (NOW + 1, "fraud", None), (NOW + 2, "other", 5), (NOW + 3, None, None), (NOW + 4, None, 3)]
    assert {a["action"] for a in audit} == {"revoke"}
    assert (await storage.get_stats())["tokens_revoked"] == 1


async def test_revoking_an_unknown_token_changes_nothing(storage: Storage) -> None:
    assert await storage.revoke_token(b"\x07" * 32, "x", 1, NOW) is None
    assert await storage.list_audit(b"\x07" * 32) == []


@pytest.mark.sqlite_only
# ---------------------------------------------------------------------- maintenance
async def test_integrity_check(storage: Storage) -> None:
    await _claimed_token(storage)
    assert await storage.integrity_check() == (["ok"], SCHEMA_VERSION)


async def _assert_backup(dest: Path, present: PaymentId, absent: PaymentId) -> None:
    copy = await Storage.open(dest)
    try:
        assert await copy.integrity_check() == (["ok"], SCHEMA_VERSION)
        rows = await copy.claim_payments([present.raw, absent.raw], 0, NOW)
        assert set(rows) == {present.raw}
    finally:
        await copy.close()


@pytest.mark.sqlite_only
async def test_backup_while_another_process_writes(storage: Storage, tmp_path: Path) -> None:
    committed, uncommitted = PaymentId.generate(), PaymentId.generate()
    await storage.credit_transfers([transfer(committed, 5000)], 9, NOW)
    with raw(tmp_path / "anonticket.db") as other:
        other.execute("BEGIN IMMEDIATE")  # holds the write lock for the whole backup
        other.execute(_PAYMENT, (uncommitted.raw, _TXID, 5, 1, 0, 1, None))
        await asyncio.wait_for(storage.backup(tmp_path / "copy.db"), 10)
        other.execute("ROLLBACK")
    await _assert_backup(tmp_path / "copy.db", committed, uncommitted)


@pytest.mark.sqlite_only
async def test_backup_during_our_own_open_transaction(storage: Storage, tmp_path: Path) -> None:
    """A backup copies committed data only, even while this process is mid-transaction."""
    committed, rolled_back = PaymentId.generate(), PaymentId.generate()
    await storage.credit_transfers([transfer(committed, 5000)], 9, NOW)

    class Abort(Exception):
        pass

    with pytest.raises(Abort):
        async with storage._transaction() as db:
            await db.execute(_PAYMENT, (rolled_back.raw, _TXID, 5, 1, 0, 1, None))
            await asyncio.wait_for(storage.backup(tmp_path / "copy.db"), 10)
            raise Abort
    await _assert_backup(tmp_path / "copy.db", committed, rolled_back)


async def test_prefixes_load_sorted(storage: Storage) -> None:
    pids = [PaymentId.generate() for _ in range(300)]
    await storage.credit_transfers([transfer(p) for p in pids], None, NOW)
    rows = await storage.claim_payments([p.raw for p in pids], MIN, NOW)
    tokens = [row.token for row in rows.values() if row.token is not None]
    assert len(tokens) == 300
    assert list(await storage.load_pid_prefixes()) == sorted(key_prefix(p.raw) for p in pids)
    # tokens are unrelated to their PIDs' order, so pid-order would show up here
    assert list(await storage.load_token_prefixes()) == sorted(key_prefix(t) for t in tokens)


@pytest.mark.sqlite_only
# ---------------------------------------------------------------------- recovery of the write path
async def test_failed_commit_leaves_the_writer_usable(storage: Storage) -> None:
    # a token whose payment does not exist passes its INSERT (keys deferred for this
    # transaction) and fails at COMMIT: the transaction must not stay open behind our back
    with pytest.raises(sqlite3.IntegrityError):
        async with storage._transaction() as db:
            await db.execute("PRAGMA defer_foreign_keys = ON")  # ends with the transaction
            await db.execute(
                "INSERT INTO service_tokens (token, pid, amount, issued_at) VALUES (?, ?, 5, 1)",
                (_TOKEN, _PID))
    await storage.credit_transfers([transfer(PaymentId.generate())], 12, NOW)
    assert await storage.get_cursor() == 12
    assert (await storage.get_stats())["transfers"] == 1
