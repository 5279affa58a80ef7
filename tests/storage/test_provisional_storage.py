"""Provisional credit in storage, on both backends: credit within the caps (under
concurrency), settlement at N confirmations, withdrawal, re-credit once, the state machine
refused in SQL, and ``db check`` clean after each."""

from __future__ import annotations

import asyncio
import json
import os

import pytest

from anonticket.domain.ids import PaymentId, Transfer
from anonticket.storage import DebitRequest, Storage
from conftest import transfer

BOTH_BACKENDS = True
NOW = 1_700_000_000
DAY = 86_400


def pid() -> PaymentId:
    return PaymentId(os.urandom(8) + bytes(24))


def pooled(p: PaymentId, amount: int) -> Transfer:
    """A transfer as the wallet shows it in the pool (height 0)."""
    return transfer(p, amount, height=0)


def mined(t: Transfer, height: int = 100) -> Transfer:
    return Transfer(t.txid, t.pid, t.amount, height)


async def credit(storage: Storage, transfers: list[Transfer], *, per_pid: int = 10**6,
                 outstanding: int = 10**7, price: int | None = None):
    return await storage.credit_provisional(transfers, NOW, max_per_pid=per_pid,
                                            max_outstanding=outstanding, price_per_day=price)


async def claim(storage: Storage, p: PaymentId):
    rows = await storage.claim_payments([p.raw], 1, NOW)
    return rows[p.raw].record


async def states(storage: Storage) -> list[int]:
    rows = await storage._read("SELECT state FROM provisional_credits ORDER BY txid")
    return [row[0] for row in rows]


async def test_provisional_credit_redeems_at_once_and_becomes_final_at_n(storage: Storage) -> None:
    p = pid()
    t = pooled(p, 5000)
    result = await credit(storage, [t])
    assert (result.credited_pids, result.transfers_credited) == ([p.raw], 1)
    record = await claim(storage, p)
    assert (record.amount, record.provisional, record.status(NOW)) == (5000, 1, "active")
    # a second look at the same pool entry credits nothing more
    assert (await credit(storage, [t])).transfers_credited == 0
    final = await storage.credit_transfers([mined(t)], None, NOW)
    assert final.transfers_credited == 1
    after = await storage.get_token(record.token)
    assert (after.amount, after.provisional) == (5000, 0)
    assert await states(storage) == [2]
    assert await storage.ledger_problems() == []


async def test_withdrawal_takes_back_what_the_payment_bought(storage: Storage) -> None:
    storage.enable_outbox(lambda: None)
    p = pid()
    t = pooled(p, 2 * DAY)  # at 1 piconero a second: two days
    await credit(storage, [t], price=DAY)
    record = await claim(storage, p)
    assert record.expires_at == NOW + 2 * DAY
    outcome = (await storage.apply_debits([DebitRequest(record.token, 700)], NOW))[0]
    assert outcome.status == 200
    result = await storage.withdraw_provisional([t.txid], NOW + 10)
    assert result.amounts == [2 * DAY]
    # the balance never goes below zero: the 700 spent is the operator's loss
    assert result.unrecovered == 700
    after = result.stored[record.token]
    assert (after.amount, after.spent, after.remaining, after.provisional) == (700, 700, 0, 0)
    assert after.withdrawn == 1 and after.status(NOW) == "withdrawn"
    assert after.expires_at == NOW  # the two days came off, never before issue
    refused = (await storage.apply_debits([DebitRequest(record.token, 1)], NOW))[0]
    assert (refused.status, refused.body["error"]) == (403, "payment_withdrawn")
    # exactly once: a second withdrawal of the same transfer changes nothing
    assert (await storage.withdraw_provisional([t.txid], NOW + 20)).amounts == []
    events = await storage.list_webhook_events(dead_only=False, limit=10)
    kinds = [event["type"] for event in events]
    assert kinds.count("payment.withdrawn") == 1
    body = next(json.loads(event["body"]) if isinstance(event.get("body"), str) else event
                for event in events if event["type"] == "payment.withdrawn")
    text = json.dumps(body)
    assert p.raw.hex()[:16] not in text and t.txid.hex() not in text and record.token.hex() not in text
    assert await storage.ledger_problems() == []


async def test_a_final_only_debit_is_refused_inside_the_transaction_until_final(
        storage: Storage) -> None:
    """Private-token issuance debits ``final_only``: the debit's own transaction refuses a
    token holding provisional credit (so a credit that turns provisional between the route's
    look and the debit cannot pay for tokens nobody can take back), keeps that refusal for
    its key like any debit refusal, and grants a new key once the credit is final. An
    ordinary debit of the same token is granted meanwhile."""
    p = pid()
    t = pooled(p, 5000)
    await credit(storage, [t])
    record = await claim(storage, p)
    issue = DebitRequest(record.token, 300, "issue-1", b"\x01" * 32, "private tokens: 3 hour",
                         final_only=True)
    outcome = (await storage.apply_debits([issue], NOW))[0]
    assert (outcome.status, outcome.body["error"]) == (403, "token_provisional")
    assert (await storage.get_token(record.token)).remaining == 5000
    ordinary = DebitRequest(record.token, 7, "meter-1", b"\x02" * 32)
    assert (await storage.apply_debits([ordinary], NOW))[0].status == 200
    await storage.credit_transfers([mined(t)], None, NOW)
    replay = (await storage.apply_debits([issue], NOW))[0]
    assert (replay.status, replay.replayed) == (403, True)
    fresh = DebitRequest(record.token, 300, "issue-2", b"\x01" * 32, final_only=True)
    outcome = (await storage.apply_debits([fresh], NOW))[0]
    assert (outcome.status, outcome.body["remaining"]) == (200, 5000 - 7 - 300)
    assert await storage.ledger_problems() == []


async def test_withdrawn_then_mined_is_credited_again_once(storage: Storage) -> None:
    p = pid()
    t = pooled(p, 5000)
    await credit(storage, [t])
    record = await claim(storage, p)
    await storage.apply_debits([DebitRequest(record.token, 1200)], NOW)
    await storage.withdraw_provisional([t.txid], NOW)
    # back in the pool after it was withdrawn: never provisional again
    assert (await credit(storage, [t])).transfers_credited == 0
    for _ in range(2):  # the confirmed credit, and a re-read of the same block
        await storage.credit_transfers([mined(t)], None, NOW)
    after = await storage.get_token(record.token)
    assert (after.amount, after.spent, after.remaining, after.withdrawn) == (5000, 1200, 3800, 0)
    assert await states(storage) == [2]
    assert await storage.ledger_problems() == []


async def test_an_unclaimed_payment_withdrawn_to_nothing_is_gone(storage: Storage) -> None:
    p = pid()
    t = pooled(p, 5000)
    await credit(storage, [t])
    await storage.withdraw_provisional([t.txid], NOW)
    assert await storage.get_claim(p.raw) is None
    assert await storage.ledger_problems() == []


async def test_outstanding_lists_only_what_is_still_provisional(storage: Storage) -> None:
    """The monitor's watch list (and the regtest caps test's view): txid -> PID of each
    credit still provisional; a final or withdrawn one is off it."""
    waiting, final, gone = (pooled(pid(), 5000) for _ in range(3))
    await credit(storage, [waiting, final, gone])
    assert await storage.outstanding_provisional() == {
        t.txid: t.pid.raw for t in (waiting, final, gone)}
    await storage.credit_transfers([mined(final)], None, NOW)
    await storage.withdraw_provisional([gone.txid], NOW)
    assert await storage.outstanding_provisional() == {waiting.txid: waiting.pid.raw}


async def test_the_state_machine_refuses_illegal_moves_in_sql(storage: Storage) -> None:
    p = pid()
    t = pooled(p, 5000)
    await credit(storage, [t])
    await storage.credit_transfers([mined(t)], None, NOW)  # 0 -> 2
    for sql in ("UPDATE provisional_credits SET state = 0, final_at = NULL",
                "UPDATE provisional_credits SET state = 1, withdrawn_at = 1, final_at = NULL",
                "UPDATE provisional_credits SET amount = 1",
                "DELETE FROM provisional_credits"):
        with pytest.raises(Exception) as raised:  # noqa: PT011 - each driver's own error
            await _execute(storage, sql)
        # SQLite's trigger message, or PostgreSQL's RAISE (its text is not passed on)
        assert "provisional_credits" in str(raised.value) or "P0001" in str(raised.value)
    assert await states(storage) == [2]


async def _execute(storage: Storage, sql: str) -> None:
    if isinstance(storage, Storage):
        async with storage._transaction() as db:
            await db.execute(sql)
    else:
        async def work(db):  # type: ignore[no-untyped-def]
            await db.execute(sql)
        await storage._write(work)


async def test_concurrent_credits_never_exceed_the_caps(storage: Storage) -> None:
    """Forty writers at once, one transfer each: per PID at most 3000 (of 1000s) and at
    most 10000 in all; exactly those fit, whatever the interleaving."""
    pids = [pid() for _ in range(8)]
    transfers = [pooled(pids[i % 8], 1000) for i in range(40)]
    results = await asyncio.gather(*(credit(storage, [t], per_pid=3000, outstanding=10_000)
                                     for t in transfers))
    assert sum(r.transfers_credited for r in results) == 10
    assert sum(len(r.over_cap) for r in results) == 30
    rows = await storage._read(
        "SELECT pid, sum(amount) FROM provisional_credits WHERE state = 0 GROUP BY pid")
    assert all(total <= 3000 for _, total in rows) and sum(t for _, t in rows) == 10_000
    assert await storage.ledger_problems() == []
    # settling frees room under the global cap
    stored = {row[0] for row in await storage._read("SELECT txid FROM provisional_credits")}
    settled = next(t for t in transfers if t.txid in stored)
    await storage.credit_transfers([mined(settled)], None, NOW)
    waiting = [t for t in transfers if t.pid != settled.pid]
    assert (await credit(storage, waiting, per_pid=3000, outstanding=10_000)).transfers_credited == 1
    assert await storage.ledger_problems() == []


@pytest.mark.sqlite_only
async def test_version_4_with_data_upgrades_to_provisional_credit(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A database of the version before, with a redeemed and debited token, gains the new
    tables and columns with nothing provisional, and ``db check`` still balances."""
    from anonticket.storage import schema as schema_module

    path = tmp_path / "anonticket.db"
    p = pid()
    with monkeypatch.context() as patch:
        before = {v: s for v, s in schema_module.MIGRATIONS.items() if v < 8}
        patch.setattr(schema_module, "MIGRATIONS", before)
        patch.setattr(schema_module, "SCHEMA_VERSION", max(before))
        store = await Storage.open(path)
        try:
            async with store._transaction() as db:  # the old version's columns only
                txid = os.urandom(32)
                await db.execute("INSERT INTO transfers VALUES (?, ?, 5000, 100, ?)",
                                 (txid, p.raw, NOW))
                await db.execute(
                    "INSERT INTO payments (pid, txid, amount, first_height, status, created_at,"
                    " claimed_at, token) VALUES (?, ?, 5000, 100, 1, ?, ?, ?)",
                    (p.raw, txid, NOW, NOW, b"t" * 32))
                await db.execute(
                    "INSERT INTO service_tokens (token, pid, amount, issued_at, spent)"
                    " VALUES (?, ?, 5000, ?, 700)", (b"t" * 32, p.raw, NOW))
                await db.execute("INSERT INTO debits (token, amount, at) VALUES (?, 700, ?)",
                                 (b"t" * 32, NOW))
        finally:
            await store.close()
    store = await Storage.open(path)
    try:
        record = await store.get_token(b"t" * 32)
        assert (record.amount, record.spent, record.provisional, record.withdrawn) == (5000, 700, 0, 0)
        assert await store.outstanding_provisional() == {}
        assert await store.ledger_problems() == []
    finally:
        await store.close()
