"""The rules both SQL dialects share (anonticket/storage/ledger_rules.py), without a database:
the storage contract tests run them on SQLite and PostgreSQL; these pin the edge cases."""

from __future__ import annotations

from anonticket.domain.ids import PaymentId, Transfer
from anonticket.storage.ledger_rules import (
    LEDGER_INVARIANTS,
    credits_per_pid,
    credits_per_token,
    ledger_report,
    plan_debits,
)
from anonticket.storage.rows import DebitRequest, TokenRow

NOW = 1_700_000_000
DAY = 86400


def test_credits_per_pid_sum_price_each_transfer_and_keep_the_earliest() -> None:
    pid, other = PaymentId.generate(), PaymentId.generate()
    fresh = [Transfer(b"\x09" * 32, pid, 3000, 12), Transfer(b"\x05" * 32, pid, 2000, 12),
             Transfer(b"\x01" * 32, pid, 1000, 13), Transfer(b"\x02" * 32, other, 7, 1)]
    per_pid = credits_per_pid(fresh, price_per_day=2000)
    credit = per_pid[pid.raw]
    # lowest height first, then the lower txid: the token derives from that transfer
    assert (credit.txid, credit.first_height, credit.amount) == (b"\x05" * 32, 12, 6000)
    assert credit.seconds == 3 * DAY // 2 + DAY + DAY // 2  # each transfer priced, floored
    assert per_pid[other.raw].seconds == 7 * DAY // 2000
    assert credits_per_pid(fresh, price_per_day=None)[pid.raw].seconds is None


def test_credits_per_token_add_up_and_unlimited_time_wins() -> None:
    a, b, c = (PaymentId.generate() for _ in range(3))
    per_pid = credits_per_pid([Transfer(b"\x01" * 32, a, 10, 1), Transfer(b"\x02" * 32, b, 20, 1),
                               Transfer(b"\x03" * 32, c, 40, 1)], price_per_day=DAY)
    per_pid[c.raw].seconds = None  # a credit that bought unlimited time
    deltas = credits_per_token([(a.raw, b"T"), (b.raw, b"T"), (c.raw, b"U")], per_pid)
    assert deltas == {b"T": (30, 30), b"U": (40, None)}
    assert credits_per_token([(c.raw, b"U"), (a.raw, b"U")], per_pid) == {b"U": (50, None)}


def test_a_plan_decides_in_order_and_numbers_its_debits_once() -> None:
    token = b"t" * 32
    records = {token: TokenRow(token, 100, NOW, None, None, 0, 0, None)}
    requests = [DebitRequest(token, 60, "k1", b"1" * 32), DebitRequest(token, 60, "k2", b"2" * 32),
                DebitRequest(token, 60, "k1", b"1" * 32), DebitRequest(token, 1, "k1", b"x" * 32),
                DebitRequest(b"u" * 32, 1), DebitRequest(token, 40)]
    plan = plan_debits(requests, records, {}, NOW)
    assert [o.status for o in plan.outcomes] == [200, 402, 200, 422, 404, 200]
    assert plan.outcomes[2].replayed and plan.outcomes[1].body["remaining"] == 40
    assert plan.spent == {token: 100} and len(plan.applied) == 2
    assert [status for _, status, _ in plan.keyed] == [200, 402]  # per key, the first answer
    plan.number([7, 8])
    # the id reaches the answer, its replay and the stored key, which share one body
    assert [plan.outcomes[i].body["debit_id"] for i in (0, 2, 5)] == [7, 7, 8]
    assert plan.keyed[0][2]["debit_id"] == 7


def test_a_final_only_debit_refuses_provisional_credit_after_the_balance() -> None:
    """Private-token issuance (``final_only``) waits for final credit; a debit that is not
    final-only spends provisional credit as before, and a 402 is answered first (waiting
    for the confirmations would not cure it)."""
    token = b"p" * 32
    requests = [DebitRequest(token, 10, "a", b"a" * 32, final_only=True),
                DebitRequest(token, 500, "b", b"b" * 32, final_only=True),
                DebitRequest(token, 10, "c", b"c" * 32)]
    records = {token: TokenRow(token, 100, NOW, None, None, 0, provisional=1)}
    plan = plan_debits(requests, records, {}, NOW)
    assert [(o.status, o.body.get("error")) for o in plan.outcomes] == [
        (403, "token_provisional"), (402, "insufficient_balance"), (200, None)]
    assert plan.spent == {token: 10}
    final = {token: TokenRow(token, 100, NOW, None, None, 0)}
    assert plan_debits(requests[:1], final, {}, NOW).outcomes[0].status == 200


def test_the_ledger_report_names_only_what_was_violated() -> None:
    counts = [0] * len(LEDGER_INVARIANTS)
    assert ledger_report(counts) == []
    counts[1] = 3
    assert ledger_report(counts) == ["3 payments differ from the sum of their transfers"]
