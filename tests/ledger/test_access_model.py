"""What a payment buys, over a real SQLite file and a real PostgreSQL database: time from issue, top-ups extending it,
revival after expiry, price changes that never rewrite history, balances and debits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from anonticket.ledger.cache import TtlSet
from anonticket.domain.ids import PaymentId, ServiceToken
from anonticket.domain.errors import Underpaid
from anonticket.ledger.views import Claimed, Ledger, Pending
from anonticket.storage import DebitRequest, Storage, TopupOutcome, seconds_bought
from conftest import transfer

BOTH_BACKENDS = True

DAY = 86400
MIN = 1000
PRICE = 10_000  # piconero per day: 5000 buys half a day


class Clock:
    """The ledger's unix clock, moved by the test (expiry is arithmetic, never waited for)."""

    def __init__(self) -> None:
        self.now = 1_700_000_000

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def ledger(storage: Storage, clock: Clock) -> AsyncIterator[Ledger]:
    ledger = Ledger(storage, min_payment=MIN, min_confirmations=10,
                    negative_cache=TtlSet(100, 0.5), price_per_day=PRICE, clock=clock,
                    plain_pids="allow")
    await ledger.load()
    yield ledger


async def issue(ledger: Ledger, amount: int) -> tuple[PaymentId, bytes]:
    pid = PaymentId.generate()
    await ledger.credit([transfer(pid, amount)], None)
    answer = await ledger.redeem(pid)
    assert isinstance(answer, Claimed) and answer.status == "success"
    return pid, answer.token


async def record(ledger: Ledger, token: bytes):  # type: ignore[no-untyped-def]
    fresh = await ledger.storage.get_token(token)
    assert fresh is not None
    cached = await ledger.introspect(ServiceToken(token))
    assert cached == fresh  # the in-memory view never lies
    return fresh


def test_seconds_bought_is_floored_and_none_without_price() -> None:
    assert seconds_bought(5000, PRICE) == DAY // 2
    assert seconds_bought(1, 3 * DAY) == 0
    assert seconds_bought(7, 3) == 7 * DAY // 3
    assert seconds_bought(10**18, None) is None


async def test_the_clock_starts_at_issue_not_at_payment(ledger: Ledger, clock: Clock) -> None:
    pid = PaymentId.generate()
    await ledger.credit([transfer(pid, 5000)], None)
    clock.now += 30 * DAY  # the customer redeems a month after paying: loses nothing
    answer = await ledger.redeem(pid)
    assert isinstance(answer, Claimed)
    assert answer.record.expires_at == clock.now + DAY // 2
    assert (await record(ledger, answer.token)).status(clock.now) == "active"
    assert (await record(ledger, answer.token)).status(clock.now + DAY // 2) == "expired"


async def test_a_payment_to_the_same_pid_extends_from_the_expiry(ledger: Ledger, clock: Clock) -> None:
    pid, token = await issue(ledger, 5000)
    first = (await record(ledger, token)).expires_at
    clock.now += 3600
    await ledger.credit([transfer(pid, 10_000, height=120)], None)
    after = await record(ledger, token)
    assert (after.expires_at, after.amount) == (first + DAY, 15_000)


async def test_an_expired_token_revived_by_a_top_up_starts_from_now(ledger: Ledger, clock: Clock) -> None:
    pid, token = await issue(ledger, 5000)
    clock.now += 10 * DAY
    assert (await record(ledger, token)).status(clock.now) == "expired"
    other = PaymentId.generate()
    await ledger.credit([transfer(other, 20_000)], None)
    outcome = await ledger.topup(ServiceToken(token), other)
    assert isinstance(outcome, TopupOutcome) and outcome.kind == "topped_up"
    after = await record(ledger, token)
    assert (after.expires_at, after.amount, after.status(clock.now)) == (
        clock.now + 2 * DAY, 25_000, "active")


async def test_a_price_change_never_rewrites_what_was_bought(ledger: Ledger, clock: Clock) -> None:
    pid = PaymentId.generate()
    await ledger.credit([transfer(pid, 5000)], None)  # bought at PRICE: half a day
    ledger.price_per_day = PRICE * 10  # the operator raises the price before the redeem
    answer = await ledger.redeem(pid)
    assert isinstance(answer, Claimed) and answer.record.expires_at == clock.now + DAY // 2
    await ledger.credit([transfer(pid, 5000, height=130)], None)  # at the new price
    assert (await record(ledger, answer.token)).expires_at == clock.now + DAY // 2 + DAY // 20


async def test_no_price_means_no_time_limit_and_stays_so(ledger: Ledger, clock: Clock) -> None:
    ledger.price_per_day = None
    pid, token = await issue(ledger, 5000)
    assert (await record(ledger, token)).expires_at is None
    ledger.price_per_day = PRICE
    await ledger.credit([transfer(pid, 5000, height=140)], None)
    clock.now += 365 * DAY
    assert (await record(ledger, token)).status(clock.now) == "active"


# ---------------------------------------------------------------------- top-ups
async def test_top_up_answers_like_redeem(ledger: Ledger) -> None:
    _, token = await issue(ledger, 5000)
    unknown = PaymentId.generate()
    assert await ledger.topup(ServiceToken(token), unknown) is None
    ledger.set_pending({unknown.raw: 3})
    assert await ledger.topup(ServiceToken(token), unknown) == Pending(3, 10)
    ledger.set_pending({})
    small = PaymentId.generate()
    await ledger.credit([transfer(small, MIN - 1)], None)
    assert (await ledger.topup(ServiceToken(token), small)).kind == "underpaid"  # type: ignore[union-attr]
    assert (await record(ledger, token)).amount == 5000  # nothing changed


async def test_a_retried_top_up_gives_the_same_answer_and_credits_once(ledger: Ledger) -> None:
    _, token = await issue(ledger, 5000)
    other = PaymentId.generate()
    await ledger.credit([transfer(other, 3000)], None)
    first = await ledger.topup(ServiceToken(token), other)
    again = await ledger.topup(ServiceToken(token), other)
    assert isinstance(first, TopupOutcome) and isinstance(again, TopupOutcome)
    assert (first.kind, again.kind, first.record, again.record) == (
        "topped_up", "topped_up", again.record, first.record)
    assert (await record(ledger, token)).amount == 8000


async def test_a_redeemed_or_added_pid_cannot_top_up(ledger: Ledger) -> None:
    own, token = await issue(ledger, 5000)
    _, other_token = await issue(ledger, 5000)
    assert (await ledger.topup(ServiceToken(token), own)).kind == "pid_already_claimed"  # type: ignore[union-attr]
    extra = PaymentId.generate()
    await ledger.credit([transfer(extra, 2000)], None)
    assert (await ledger.topup(ServiceToken(other_token), extra)).kind == "topped_up"  # type: ignore[union-attr]
    assert (await ledger.topup(ServiceToken(token), extra)).kind == "pid_already_claimed"  # type: ignore[union-attr]
    # redeeming a PID that was added to a token answers with that token
    answer = await ledger.redeem(extra)
    assert isinstance(answer, Claimed) and (answer.status, answer.token) == ("already_claimed", other_token)
    assert [(await record(ledger, t)).amount for t in (token, other_token)] == [5000, 7000]


async def test_a_later_payment_to_an_added_pid_tops_up_its_token(ledger: Ledger) -> None:
    _, token = await issue(ledger, 5000)
    extra = PaymentId.generate()
    await ledger.credit([transfer(extra, 2000)], None)
    await ledger.topup(ServiceToken(token), extra)
    await ledger.credit([transfer(extra, 1000, height=150)], None)
    assert (await record(ledger, token)).amount == 8000
    assert await ledger.storage.ledger_problems() == []


async def test_one_pid_offered_to_two_tokens_concurrently_has_one_winner(ledger: Ledger) -> None:
    _, first = await issue(ledger, 5000)
    _, second = await issue(ledger, 5000)
    for _ in range(20):
        pid = PaymentId.generate()
        await ledger.credit([transfer(pid, 1000)], None)
        answers = await asyncio.gather(ledger.topup(ServiceToken(first), pid),
                                       ledger.topup(ServiceToken(second), pid),
                                       ledger.redeem_or_none(pid), return_exceptions=True)
        kinds = sorted(getattr(a, "kind", getattr(a, "status", None)) for a in answers)
        winners = [k for k in kinds if k in ("topped_up", "success")]
        assert len(winners) == 1, kinds
    totals = [(await record(ledger, t)).amount for t in (first, second)]
    assert sum(totals) <= 10_000 + 20 * 1000
    assert await ledger.storage.ledger_problems() == []


async def test_top_up_of_a_revoked_or_unknown_token_changes_nothing(ledger: Ledger) -> None:
    _, token = await issue(ledger, 5000)
    await ledger.revoke(ServiceToken(token), "abuse", None)
    extra = PaymentId.generate()
    await ledger.credit([transfer(extra, 2000)], None)
    assert (await ledger.topup(ServiceToken(token), extra)).kind == "token_revoked"  # type: ignore[union-attr]
    assert (await ledger.topup(ServiceToken(bytes(32)), extra)).kind == "token_not_found"  # type: ignore[union-attr]
    answer = await ledger.redeem(extra)  # still the customer's own, redeemable on its own
    assert isinstance(answer, Claimed) and answer.status == "success"


async def test_underpaid_top_up_raises_nothing_and_redeem_still_underpaid(ledger: Ledger) -> None:
    _, token = await issue(ledger, 5000)
    small = PaymentId.generate()
    await ledger.credit([transfer(small, 10)], None)
    await ledger.topup(ServiceToken(token), small)
    with pytest.raises(Underpaid):
        await ledger.redeem(small)


# ---------------------------------------------------------------------- debits
def debit(token: bytes, amount: int, key: str | None = None, memo: str | None = None) -> DebitRequest:
    return DebitRequest(token, amount, key, bytes([amount % 256]) * 32 if key else b"", memo)


async def test_debit_draws_the_balance_and_refuses_overspending(ledger: Ledger) -> None:
    _, token = await issue(ledger, 5000)
    first = await ledger.debit(debit(token, 3000, "a"))
    assert (first.status, first.body["remaining"]) == (200, 2000)
    refused = await ledger.debit(debit(token, 2001, "b"))
    assert (refused.status, refused.body) == (402, {"error": "insufficient_balance", "remaining": 2000})
    assert (await record(ledger, token)).spent == 3000


async def test_the_same_key_replays_and_a_different_request_is_refused(ledger: Ledger) -> None:
    _, token = await issue(ledger, 5000)
    first = await ledger.debit(debit(token, 100, "k"))
    replay = await ledger.debit(debit(token, 100, "k"))
    conflict = await ledger.debit(debit(token, 101, "k"))
    assert (replay.status, replay.body, replay.replayed) == (200, first.body, True)
    assert (conflict.status, conflict.body["error"]) == (422, "idempotency_key_reused")
    assert (await record(ledger, token)).spent == 100
    # a refusal is replayed too, even once the balance would allow it
    refused = await ledger.debit(debit(token, 10_000, "big"))
    assert refused.status == 402
    await ledger.credit([transfer(PaymentId.generate(), 1)], None)
    again = await ledger.debit(debit(token, 10_000, "big"))
    assert (again.status, again.replayed) == (402, True)


async def test_expired_and_revoked_tokens_refuse_debits(ledger: Ledger, clock: Clock) -> None:
    _, token = await issue(ledger, 5000)
    clock.now += DAY
    assert (await ledger.debit(debit(token, 1, "x"))).body == {"error": "token_expired"}
    _, other = await issue(ledger, 5000)
    await ledger.revoke(ServiceToken(other), None, None)
    clock.now += DAY  # revoked wins over expired
    assert (await ledger.debit(debit(other, 1, "x"))).body == {"error": "token_revoked"}
    assert (await ledger.debit(debit(bytes(32), 1, "x"))).status == 404


async def test_concurrent_debits_of_one_token_never_overspend(ledger: Ledger) -> None:
    _, token = await issue(ledger, 5000)
    amounts = [7, 13, 29, 50, 101] * 40  # 8000 asked of a 5000 balance
    outcomes = await asyncio.gather(*(ledger.debit(debit(token, a, f"key-{i}"))
                                      for i, a in enumerate(amounts)))
    granted = sum(a for a, o in zip(amounts, outcomes) if o.status == 200)
    after = await record(ledger, token)
    assert after.spent == granted <= 5000
    assert {o.status for o in outcomes} == {200, 402}
    assert 5000 - granted < max(amounts)  # refused only once the balance really ran low
    assert await ledger.storage.ledger_problems() == []
    recent = await ledger.storage.list_debits(token)
    assert len(recent) == 20 and recent[0]["debit_id"] > recent[-1]["debit_id"]


async def test_pruned_keys_are_forgotten_but_their_debits_stay(ledger: Ledger, clock: Clock) -> None:
    _, token = await issue(ledger, 5000)
    await ledger.debit(debit(token, 100, "old"))
    assert await ledger.storage.prune_idempotency_keys(clock.now + 1) == 1
    again = await ledger.debit(debit(token, 100, "old"))
    assert (again.status, again.replayed) == (200, False)
    assert (await record(ledger, token)).spent == 200


async def test_housekeeping_prunes_only_keys_past_the_retention(tmp_path, ledger: Ledger,  # type: ignore[no-untyped-def]
                                                                clock: Clock) -> None:
    from anonticket.service.housekeeping import Housekeeper
    from conftest import make_config
    from anonticket.runtime.metrics import Metrics
    from anonticket.runtime.state import MonitorStatus, State
    state = State(make_config(tmp_path), Metrics(), ledger, MonitorStatus(enabled=False))
    _, token = await issue(ledger, 5000)
    await ledger.debit(debit(token, 1, "old"))
    clock.now += state.config.debit_idempotency_ttl_secs
    await ledger.debit(debit(token, 1, "new"))
    clock.now += 1
    assert await Housekeeper(state).prune_once() == 1
    assert (await ledger.debit(debit(token, 1, "new"))).replayed
    assert not (await ledger.debit(debit(token, 1, "old"))).replayed
