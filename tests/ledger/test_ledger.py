"""The ledger over a real SQLite file and a real PostgreSQL database: every redeem outcome,
and caches that never lie."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path

import pytest

from anonticket.ledger.cache import TtlSet
from anonticket.domain.ids import PaymentId, ServiceToken, derive_service_token
from anonticket.domain.errors import PaymentNotFound, StorageUnavailable, TokenNotFound, Underpaid
from anonticket.ledger.views import Claimed, Ledger, Pending
from anonticket.storage import Storage, open_storage
from conftest import claim_summary, transfer

BOTH_BACKENDS = True

NOW = 1_700_000_000
MIN = 1000
CONFIRMATIONS = 10
TTL = 0.5


class Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


class Hits:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


def make_ledger(storage: Storage, clock: Clock, hits: Hits) -> Ledger:
    return Ledger(
        storage, min_payment=MIN, min_confirmations=CONFIRMATIONS,
        negative_cache=TtlSet(100, TTL, clock), on_negative_cache_hit=hits, clock=lambda: NOW,
        plain_pids="allow",
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def hits() -> Hits:
    return Hits()


@pytest.fixture
async def ledger(storage: Storage, clock: Clock, hits: Hits) -> AsyncIterator[Ledger]:
    ledger = make_ledger(storage, clock, hits)
    await ledger.load()
    yield ledger


async def credit(ledger: Ledger, pid: PaymentId, amount: int, height: int = 100) -> bytes:
    t = transfer(pid, amount, height)
    await ledger.credit([t], None)
    return t.txid


def claimed(result: Claimed | Pending) -> Claimed:
    assert isinstance(result, Claimed), result
    return result


# ---------------------------------------------------------------------- redeem outcomes
async def test_success_then_already_claimed_with_the_same_token(ledger: Ledger) -> None:
    pid = PaymentId.generate()
    txid = await credit(ledger, pid, 5000)
    expected = derive_service_token(pid, txid.hex()).raw
    assert claim_summary(await ledger.redeem(pid)) == ("success", expected, 5000)
    assert claim_summary(await ledger.redeem(pid)) == ("already_claimed", expected, 5000)
    assert claim_summary(await ledger.redeem(PaymentId.parse(pid.hex().upper()))) == ("already_claimed", expected, 5000)


async def test_pending_for_a_payment_not_yet_confirmed(ledger: Ledger) -> None:
    pid = PaymentId.generate()
    ledger.set_pending({pid.raw: 3})
    assert await ledger.redeem(pid) == Pending(3, CONFIRMATIONS)


@pytest.mark.sqlite_only
async def test_a_pending_only_pid_is_answered_without_a_write(
    ledger: Ledger, storage: Storage, tmp_path: Path
) -> None:
    pid = PaymentId.generate()
    ledger.set_pending({pid.raw: 1})
    await storage._writer.execute("PRAGMA busy_timeout=50")
    with closing(sqlite3.connect(tmp_path / "anonticket.db", isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")  # any write would now fail with "database is locked"
        assert await ledger.redeem(pid) == Pending(1, CONFIRMATIONS)
        other.execute("ROLLBACK")


async def test_pending_wins_over_underpaid(ledger: Ledger) -> None:
    pid = PaymentId.generate()
    await credit(ledger, pid, 10)
    ledger.set_pending({pid.raw: 0})  # 0: seen in the pool only
    assert await ledger.redeem(pid) == Pending(0, CONFIRMATIONS)
    ledger.set_pending({})
    with pytest.raises(Underpaid) as caught:
        await ledger.redeem(pid)
    assert (caught.value.status, caught.value.extra) == (402, {"balance": 10, "minimum": MIN})


async def test_enough_confirmed_credit_is_claimed_even_with_more_pending(ledger: Ledger) -> None:
    pid = PaymentId.generate()
    await credit(ledger, pid, 5000)
    ledger.set_pending({pid.raw: 2})
    assert claimed(await ledger.redeem(pid)).status == "success"


async def test_underpaid_until_a_second_payment(ledger: Ledger) -> None:
    pid = PaymentId.generate()
    await credit(ledger, pid, 600)
    with pytest.raises(Underpaid):
        await ledger.redeem(pid)
    await credit(ledger, pid, 600, height=101)
    assert (r := claimed(await ledger.redeem(pid))).status == "success" and r.balance == 1200


async def test_not_found(ledger: Ledger) -> None:
    with pytest.raises(PaymentNotFound) as caught:
        await ledger.redeem(PaymentId.generate())
    assert caught.value.status == 404


# ---------------------------------------------------------------------- negative cache
async def test_unknown_pid_is_remembered_then_expires(ledger: Ledger, clock: Clock, hits: Hits) -> None:
    pid = PaymentId.generate()
    with pytest.raises(PaymentNotFound):
        await ledger.redeem(pid)
    assert (pid.raw in ledger.negative_cache, hits.count) == (True, 0)
    with pytest.raises(PaymentNotFound):
        await ledger.redeem(pid)
    assert hits.count == 1
    clock.now += TTL
    assert pid.raw not in ledger.negative_cache
    with pytest.raises(PaymentNotFound):
        await ledger.redeem(pid)
    assert hits.count == 1  # answered from the index this time, and remembered again
    assert pid.raw in ledger.negative_cache


async def test_a_credit_drops_the_negative_entry_at_once(ledger: Ledger, hits: Hits) -> None:
    pid = PaymentId.generate()
    with pytest.raises(PaymentNotFound):
        await ledger.redeem(pid)
    await credit(ledger, pid, 5000)  # the clock does not move: only the credit can explain a change
    assert pid.raw not in ledger.negative_cache
    assert claimed(await ledger.redeem(pid)).status == "success"
    assert hits.count == 0


async def test_becoming_pending_drops_the_negative_entry(ledger: Ledger) -> None:
    pid = PaymentId.generate()
    with pytest.raises(PaymentNotFound):
        await ledger.redeem(pid)
    assert ledger.set_pending({pid.raw: 1}) == [pid.raw]
    assert await ledger.redeem(pid) == Pending(1, CONFIRMATIONS)
    assert ledger.set_pending({pid.raw: 2}) == []  # not new any more


async def test_a_shared_prefix_asks_the_database(storage: Storage, clock: Clock, hits: Hits) -> None:
    # long PIDs can share the 8-byte index prefix: the index says "maybe", SQLite says no
    known = PaymentId.from_bytes(b"\x42" * 8 + b"\x01" * 24)
    lookalike = PaymentId.from_bytes(b"\x42" * 8 + b"\x02" * 24)
    ledger = make_ledger(storage, clock, hits)
    await ledger.credit([transfer(known, 5000)], None)
    with pytest.raises(PaymentNotFound):
        await ledger.redeem(lookalike)
    assert lookalike.raw in ledger.negative_cache
    assert claimed(await ledger.redeem(known)).status == "success"


# ---------------------------------------------------------------------- coherent caches
async def test_top_up_after_claim_shows_in_redeem_and_introspection(ledger: Ledger) -> None:
    pid = PaymentId.generate()
    await credit(ledger, pid, 5000)
    token = claimed(await ledger.redeem(pid)).token
    assert (await ledger.introspect(ServiceToken(token))).amount == 5000  # now cached
    result = await ledger.credit([transfer(pid, 700, 120)], None)
    assert {t: r.amount for t, r in result.topped_up.items()} == {token: 5700}
    assert claim_summary(await ledger.redeem(pid)) == ("already_claimed", token, 5700)
    assert (await ledger.introspect(ServiceToken(token))).amount == 5700
    assert (await ledger.storage.get_token(token)).amount == 5700  # type: ignore[union-attr]


async def test_revoke_shows_in_the_next_introspection(ledger: Ledger) -> None:
    pid = PaymentId.generate()
    await credit(ledger, pid, 5000)
    token = ServiceToken(claimed(await ledger.redeem(pid)).token)
    before = await ledger.introspect(token)
    assert (before.revoked_at, before.issued_at) == (None, NOW)
    revoked = await ledger.revoke(token, "abuse", 7)
    after = await ledger.introspect(token)
    assert after == revoked
    assert (after.revoked_at, after.revoke_reason, after.abuse_score) == (NOW, "abuse", 7)
    again = await ledger.revoke(token, "different", None)
    assert (again.revoke_reason, again.abuse_score) == ("abuse", 7)
    assert await ledger.introspect(token) == again


async def test_unknown_tokens(ledger: Ledger) -> None:
    token = ServiceToken(b"\x33" * 32)
    with pytest.raises(TokenNotFound):
        await ledger.introspect(token)
    with pytest.raises(TokenNotFound):
        await ledger.revoke(token, None, None)


async def test_a_fresh_ledger_loads_what_the_last_one_wrote(database_url: str, clock: Clock,
                                                            hits: Hits) -> None:
    pid, underpaid = PaymentId.generate(), PaymentId.generate()
    store = await open_storage(database_url)
    first = make_ledger(store, clock, hits)
    await first.load()
    await first.credit([transfer(pid, 5000), transfer(underpaid, 5)], 90)
    token = claimed(await first.redeem(pid)).token
    await first.revoke(ServiceToken(token), "gone", None)
    await store.close()

    store = await open_storage(database_url)
    try:
        second = make_ledger(store, clock, hits)
        await second.load()
        assert claim_summary(await second.redeem(pid)) == ("already_claimed", token, 5000)
        assert (await second.introspect(ServiceToken(token))).revoke_reason == "gone"
        with pytest.raises(Underpaid):
            await second.redeem(underpaid)
        with pytest.raises(PaymentNotFound):
            await second.redeem(PaymentId.generate())
        assert await store.get_cursor() == 90
    finally:
        await store.close()


@pytest.mark.sqlite_only
async def test_a_storage_outage_fails_the_batch_and_then_recovers(
    ledger: Ledger, storage: Storage, tmp_path: Path
) -> None:
    pid = PaymentId.generate()
    await credit(ledger, pid, 5000)
    await storage._writer.execute("PRAGMA busy_timeout=50")  # fail fast instead of after 5 s
    with closing(sqlite3.connect(tmp_path / "anonticket.db", isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")  # another writer holds the lock: "database is locked"
        with pytest.raises(StorageUnavailable):
            await ledger.redeem(pid)
        other.execute("ROLLBACK")
    assert claimed(await ledger.redeem(pid)).status == "success"
