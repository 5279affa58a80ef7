"""The ledger with receipts, on both backends: a receipt takes a PID's whole path, and a bare
PID under REDEEM_PLAIN_PIDS=refuse is an unknown PID for every payment credited after the
database adopted receipts — claimed, credited, underpaid or pending — without touching the
negative cache that the receipt's own redeems consult.

"Before receipts" is made the way the migration makes it: payments credited, then marked
``plain_pid_ok`` in the database, then a ledger loaded from it, as a start after the upgrade.
"""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing

import asyncpg
import pytest

from anonticket.domain.errors import PaymentNotFound, Underpaid
from anonticket.domain.ids import PaymentId, Receipt, ServiceToken, derive_receipt_token, derive_service_token
from anonticket.ledger.cache import TtlSet
from anonticket.ledger.views import Claimed, Ledger, Pending
from anonticket.storage import Storage
from conftest import transfer

BOTH_BACKENDS = True
NOW = 1_700_000_000
MIN = 1000


class Hits:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


async def make_ledger(storage: Storage, plain_pids: str = "refuse", hits: Hits | None = None) -> Ledger:
    ledger = Ledger(storage, min_payment=MIN, min_confirmations=10, negative_cache=TtlSet(100, 60),
                    on_negative_cache_hit=hits or Hits(), clock=lambda: NOW, plain_pids=plain_pids)
    await ledger.load()
    return ledger


async def mark_as_before_receipts(database_url: str, pids: list[PaymentId]) -> None:
    """What the migration to version 5 does to the payments that exist then."""
    raws = [p.raw for p in pids]
    if database_url.startswith("postgresql"):
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute("UPDATE payments SET plain_pid_ok = 1 WHERE pid = ANY($1::bytea[])", raws)
        finally:
            await conn.close()
        return
    with closing(sqlite3.connect(database_url)) as conn, conn:
        conn.executemany("UPDATE payments SET plain_pid_ok = 1 WHERE pid = ?", [(r,) for r in raws])


def claimed(answer: object) -> Claimed:
    assert isinstance(answer, Claimed), answer
    return answer


async def test_a_receipt_redeems_pending_then_claimed_with_its_token(storage: Storage) -> None:
    ledger = await make_ledger(storage)
    receipt = Receipt.generate()
    assert await ledger.redeem_or_none(receipt) is None
    ledger.set_pending({receipt.pid_raw: 3})
    assert await ledger.redeem_or_none(receipt) == Pending(3, 10)
    t = transfer(receipt.pid, 5000)
    await ledger.credit([t], None)
    ledger.set_pending({})
    first = claimed(await ledger.redeem(receipt))
    assert (first.status, first.token) == ("success", derive_receipt_token(receipt.raw, t.txid).raw)
    again = claimed(await ledger.redeem(Receipt.parse(receipt.grouped())))
    assert (again.status, again.token) == ("already_claimed", first.token)
    # from storage too: a fresh ledger (a restart) answers the same
    restarted = claimed(await (await make_ledger(storage)).redeem(receipt))
    assert (restarted.status, restarted.token) == ("already_claimed", first.token)


async def test_under_refuse_a_bare_pid_is_unknown_in_every_state(storage: Storage) -> None:
    ledger = await make_ledger(storage)
    pending, underpaid, credited, redeemed = (Receipt.generate() for _ in range(4))
    await ledger.credit([transfer(underpaid.pid, 10), transfer(credited.pid, 5000),
                         transfer(redeemed.pid, 5000)], None)
    ledger.set_pending({pending.pid_raw: 4, underpaid.pid_raw: 1})
    claimed(await ledger.redeem(redeemed))
    for receipt in (pending, underpaid, credited, redeemed):
        assert await ledger.redeem_or_none(receipt.pid) is None
        assert ledger.plain_pid_refused(receipt.pid_raw)
        with pytest.raises(PaymentNotFound):
            await ledger.redeem(receipt.pid)
        assert await ledger.peek(receipt.pid) == (None, None)
    # nothing was claimed by those, and the receipts still see their payments
    assert await ledger.redeem_or_none(pending) == Pending(4, 10)
    assert await ledger.redeem_or_none(underpaid) == Pending(1, 10)  # more is on its way
    ledger.set_pending({})
    with pytest.raises(Underpaid):
        await ledger.redeem(underpaid)
    assert claimed(await ledger.redeem(credited)).status == "success"
    row, waiting = await ledger.peek(credited)
    assert row is not None and row.status == 1 and waiting is None


async def test_a_refused_bare_pid_never_hides_the_payment_from_its_receipt(storage: Storage) -> None:
    """The sender knows the PID: flooding it must not put it in the negative cache, where the
    receipt's redeem would find it and answer 404 for the cache's lifetime."""
    hits = Hits()
    ledger = await make_ledger(storage, hits=hits)
    receipt = Receipt.generate()
    ledger.set_pending({receipt.pid_raw: 0})
    for _ in range(20):
        assert await ledger.redeem_or_none(receipt.pid) is None
    assert receipt.pid_raw not in ledger.negative_cache and hits.count == 0
    assert await ledger.redeem_or_none(receipt) == Pending(0, 10)
    await ledger.credit([transfer(receipt.pid, 5000)], None)
    for _ in range(20):
        assert await ledger.redeem_or_none(receipt.pid) is None
    assert claimed(await ledger.redeem(receipt)).status == "success"


async def test_payments_from_before_receipts_still_redeem_by_their_bare_pid(
        storage: Storage, database_url: str) -> None:
    old, old_underpaid, new = PaymentId.generate(), PaymentId.generate(), PaymentId.generate()
    writer = await make_ledger(storage)
    await writer.credit([transfer(old, 5000), transfer(old_underpaid, 10), transfer(new, 5000)], None)
    await mark_as_before_receipts(database_url, [old, old_underpaid])
    ledger = await make_ledger(storage)  # the start after the upgrade loads the marks
    first = claimed(await ledger.redeem(old))
    assert first.status == "success"
    assert claimed(await ledger.redeem(old)).status == "already_claimed"
    with pytest.raises(Underpaid):
        await ledger.redeem(old_underpaid)
    ledger.set_pending({old_underpaid.raw: 2})  # the rest of it, paid after the upgrade
    assert await ledger.redeem_or_none(old_underpaid) == Pending(2, 10)
    assert await ledger.redeem_or_none(new) is None
    # a payment to the old PID after the upgrade tops its token up, still claimable by it
    await ledger.credit([transfer(old, 700, height=101)], None)
    assert claimed(await ledger.redeem(old)).balance == 5700
    assert await ledger.peek(old_underpaid) != (None, None)


async def test_under_allow_every_bare_pid_claims_receipt_payments_included(storage: Storage) -> None:
    ledger = await make_ledger(storage, plain_pids="allow")
    receipt = Receipt.generate()
    t = transfer(receipt.pid, 5000)
    await ledger.credit([t], None)
    by_pid = claimed(await ledger.redeem(receipt.pid))
    assert by_pid.token == derive_service_token(receipt.pid, t.txid.hex()).raw
    by_receipt = claimed(await ledger.redeem(receipt))
    assert (by_receipt.status, by_receipt.token) == ("already_claimed", by_pid.token)
    assert not ledger.plain_pid_refused(PaymentId.generate().raw)


@pytest.mark.parametrize("plain_pids", ["refuse", "allow"])
async def test_concurrent_redeems_of_one_payment_have_exactly_one_winner(
        storage: Storage, plain_pids: str) -> None:
    """Receipts in every spelling, and (allowed or not) its bare PID, all at once."""
    ledger = await make_ledger(storage, plain_pids)
    receipt = Receipt.generate()
    t = transfer(receipt.pid, 5000)
    await ledger.credit([t], None)
    spellings = [Receipt.parse(receipt.hex()), Receipt.parse(receipt.grouped()), receipt]
    claims: list[PaymentId | Receipt] = [*spellings * 10, *[receipt.pid] * 10]
    answers = await asyncio.gather(*(ledger.redeem_or_none(c) for c in claims))
    by_receipt = [a for c, a in zip(claims, answers) if isinstance(c, Receipt)]
    by_pid = [a for c, a in zip(claims, answers) if isinstance(c, PaymentId)]
    winners = [a for a in answers if isinstance(a, Claimed) and a.status == "success"]
    assert len(winners) == 1
    tokens = {a.token for a in by_receipt} | {a.token for a in by_pid if a is not None}  # type: ignore[union-attr]
    assert len(tokens) == 1
    if plain_pids == "refuse":
        assert by_pid == [None] * 10
        assert tokens == {derive_receipt_token(receipt.raw, t.txid).raw}
    assert await storage.ledger_problems() == []


async def test_top_up_by_receipt_and_the_bare_pid_rule(storage: Storage) -> None:
    ledger = await make_ledger(storage)
    own, extra = Receipt.generate(), Receipt.generate()
    await ledger.credit([transfer(own.pid, 5000), transfer(extra.pid, 2000)], None)
    token = ServiceToken(claimed(await ledger.redeem(own)).token)
    assert await ledger.topup(token, extra.pid) is None  # refused exactly as unknown
    outcome = await ledger.topup(token, extra)
    assert (outcome.kind, outcome.record.amount) == ("topped_up", 7000)  # type: ignore[union-attr]
    assert (await ledger.topup(token, extra)).kind == "topped_up"  # type: ignore[union-attr]
    # the topped-up payment's receipt shows the token it went onto
    assert claimed(await ledger.redeem(extra)).token == token.raw
    waiting = Receipt.generate()
    ledger.set_pending({waiting.pid_raw: 5})
    assert await ledger.topup(token, waiting) == Pending(5, 10)
    assert await ledger.topup(token, waiting.pid) is None
