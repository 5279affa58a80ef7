"""What one wallet entry means, without any I/O: every field the monitor trusts is checked here.

Entries come from ``fake_wallet.make_transfer``, which carries every field
monero-wallet-rpc 0.18 returns, so these are the shapes the real wallet sends.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from anonticket.domain.ids import PaymentId
from anonticket.monero.scan import classify, confirmed_transfer, scan
from anonticket.monero.wallet_rpc import WalletTransfers
from fake_wallet import make_transfer, make_txid

PID = "0123456789abcdef"
LONG_PID = "ab" * 32
N = 10


def judge(entry: Any, height: int = 200, *, accept_long: bool = False, pool: bool | None = None) -> Any:
    in_pool = entry.get("type") == "pool" if pool is None and isinstance(entry, dict) else bool(pool)
    return classify(entry, height, N, accept_long, in_pool)


def test_credited_at_exactly_n_confirmations_and_pending_one_before() -> None:
    entry = make_transfer(PID, 5000, height=190)
    at_n = judge(entry, height=200)
    assert at_n.result == "credited" and at_n.confirmations == N
    assert at_n.transfer is not None
    assert (at_n.transfer.pid, at_n.transfer.amount, at_n.transfer.height) == (PaymentId.parse(PID), 5000, 190)
    assert at_n.transfer.txid.hex() == entry["txid"]
    before = judge(entry, height=199)
    assert before.result == "pending" and before.confirmations == N - 1


def test_pool_entries_are_pending_with_zero_confirmations() -> None:
    verdict = judge(make_transfer(PID, 5000, height=0, type="pool"), height=10_000)
    assert verdict.result == "pending" and verdict.confirmations == 0
    assert verdict.transfer is not None and verdict.transfer.height == 0


def test_a_transfer_above_the_wallet_height_is_pending_not_negative() -> None:
    # mined between our get_height and get_transfers calls
    verdict = judge(make_transfer(PID, 5000, height=201), height=200)
    assert verdict.result == "pending" and verdict.confirmations == 0


@pytest.mark.parametrize("pid_text", ["0" * 16, "0" * 64])
def test_plain_and_subaddress_payments_are_zero_pid(pid_text: str) -> None:
    assert judge(make_transfer(pid_text, 5000, height=100)).result == "zero_pid"
    assert judge(make_transfer(pid_text, 5000, height=0, type="pool")).result == "zero_pid"


def test_long_pids_only_with_the_opt_in() -> None:
    entry = make_transfer(LONG_PID, 5000, height=100)
    assert judge(entry).result == "long_pid"
    accepted = judge(entry, accept_long=True)
    assert accepted.result == "credited" and accepted.transfer is not None
    assert accepted.transfer.pid.hex() == LONG_PID


def test_a_zero_padded_64_hex_pid_is_the_short_pid() -> None:
    verdict = judge(make_transfer(PID + "0" * 48, 5000, height=100))
    assert verdict.result == "credited" and verdict.transfer is not None
    assert verdict.transfer.pid == PaymentId.parse(PID)


@pytest.mark.parametrize("kind", ["in", "pool"])
def test_time_locked_funds_are_locked_never_pending(kind: str) -> None:
    verdict = judge(make_transfer(PID, 5000, height=100, unlock_time=150, type=kind))
    assert verdict.result == "locked" and verdict.transfer is None


@pytest.mark.parametrize("kind", ["in", "pool"])
def test_double_spend_seen_is_never_credited_nor_pending(kind: str) -> None:
    entry = make_transfer(PID, 5000, height=100, double_spend_seen=True, type=kind)
    assert judge(entry).result == "double_spend"
    # the verdict names its transfer (a subaddress's is known by its own id), and the scan
    # neither credits it nor keeps it pending: it only says the txid was double-spent
    found = scan(WalletTransfers([entry], []) if kind == "in" else WalletTransfers([], [entry]),
                 200, 0, N, False)
    assert (found.credited, found.pending, found.unconfirmed) == ({}, {}, {})
    assert found.double_spent == {bytes.fromhex(entry["txid"])}


def _broken(**changes: Any) -> dict[str, Any]:
    entry = make_transfer(PID, 5000, height=100)
    for name, value in changes.items():
        if value is _DROP:
            del entry[name]
        else:
            entry[name] = value
    return entry


_DROP = object()


@pytest.mark.parametrize(
    "entry, field",
    [
        (_broken(txid=_DROP), "txid"),
        (_broken(txid="xyz"), "txid"),
        (_broken(txid="ab" * 31), "txid"),
        (_broken(amount=_DROP), "amount"),
        (_broken(amount="5000"), "amount"),
        (_broken(amount=True), "amount"),
        (_broken(amount=5000.0), "amount"),
        (_broken(amount=0), "amount"),
        (_broken(amount=-1), "amount"),
        (_broken(height=_DROP), "height"),
        (_broken(height=0), "height"),
        (_broken(height=None), "height"),
        (_broken(unlock_time="0"), "unlock_time"),
        (_broken(unlock_time=-1), "unlock_time"),
        (_broken(double_spend_seen="false"), "double_spend_seen"),
        (_broken(payment_id=_DROP), "payment_id"),
        (_broken(payment_id=12345), "payment_id"),
        (_broken(payment_id="0123456789abcdeX"), "payment_id"),
        (_broken(payment_id=" 0123456789abcdef"), "payment_id"),
        (["not", "an", "object"], "entry"),
        (None, "entry"),
    ],
)
def test_invalid_entries_name_the_field_and_never_a_value(entry: Any, field: str) -> None:
    verdict = classify(entry, 200, N, False, False)
    assert verdict.result == "invalid" and verdict.transfer is None
    assert verdict.problem == field


def test_count_keys_tell_transfers_apart_and_never_hold_a_pid() -> None:
    a, b = make_transfer(PID, 1, height=100), make_transfer(PID, 1, height=100)
    assert judge(a).key == judge(dict(a)).key != judge(b).key
    assert judge(a).key == a["txid"]
    broken_one = classify(["x"], 200, N, False, False)
    broken_two = classify(["y"], 200, N, False, False)
    assert broken_one.key != broken_two.key
    assert PID not in judge(_broken(txid=_DROP)).key


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=70),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=20), inner, max_size=4),
    max_leaves=12,
)
fields = st.fixed_dictionaries({}, optional={
    "txid": st.just(make_txid(1)) | json_values,
    "amount": st.integers(-5, 10**13) | json_values,
    "height": st.integers(-5, 300) | json_values,
    "unlock_time": st.integers(-1, 2) | json_values,
    "double_spend_seen": st.booleans() | json_values,
    "payment_id": st.sampled_from([PID, "0" * 16, LONG_PID, PID.upper()]) | json_values,
})


@given(entry=fields | json_values, height=st.integers(0, 400), pool=st.booleans())
def test_classify_never_raises_and_only_credits_what_it_checked(entry: Any, height: int, pool: bool) -> None:
    verdict = classify(entry, height, N, False, pool)
    assert verdict.result in {"credited", "pending", "zero_pid", "long_pid", "locked", "double_spend", "invalid"}
    if verdict.result == "credited":
        t = verdict.transfer
        assert t is not None and not pool
        assert t.amount > 0 and 0 < t.height <= height - N and t.pid.is_short and any(t.pid.raw)
        assert entry.get("unlock_time", 0) == 0 and entry.get("double_spend_seen", False) is False


def _batch(*entries: dict[str, Any]) -> WalletTransfers:
    return WalletTransfers(incoming=[e for e in entries if e["type"] == "in"],
                           pool=[e for e in entries if e["type"] == "pool"])


def test_scan_credits_only_above_the_cursor_and_pends_the_rest() -> None:
    other = "fedcba9876543210"
    below = make_transfer(PID, 1, height=150)  # already scanned: a wallet ignoring min_height
    at_next = make_transfer(PID, 2, height=151)
    deepest_ok = make_transfer(PID, 4, height=190)
    young = make_transfer(other, 8, height=195)
    pooled = make_transfer(other, 16, height=0, type="pool")
    found = scan(_batch(below, at_next, deepest_ok, young, pooled), 200, 150, N, False)
    assert {t.hex() for t in found.credited} == {at_next["txid"], deepest_ok["txid"]}
    assert found.pending == {PaymentId.parse(other).raw: 5}
    # "credited" (the one below the cursor too) is counted from the credit, not reported
    assert [v.result for v in found.reportable] == ["pending", "pending"]


def test_scan_sums_two_entries_of_one_transaction() -> None:
    first = make_transfer(PID, 3, height=100, subaddr_minor=0)
    second = dict(first, amount=4, subaddr_index={"major": 0, "minor": 1})
    found = scan(_batch(first, second), 200, 0, N, False)
    (credited,) = found.credited.values()
    assert credited.amount == 7


def test_scan_reports_the_highest_confirmations_per_pid() -> None:
    found = scan(_batch(make_transfer(PID, 1, height=195), make_transfer(PID, 1, height=192),
                        make_transfer(PID, 1, height=0, type="pool")), 200, 0, N, False)
    assert found.pending == {PaymentId.parse(PID).raw: 8}
    assert not found.credited


@given(entry=fields | json_values, height=st.integers(0, 400))
def test_the_common_shape_shortcut_agrees_with_classify(entry: Any, height: int) -> None:
    shortcut = confirmed_transfer(entry, height, N)
    verdict = classify(entry, height, N, False, False)
    if shortcut is not None:
        assert (verdict.result, verdict.transfer) == ("credited", shortcut)


def test_the_shortcut_takes_the_entries_the_real_wallet_sends() -> None:
    # so the property above is not vacuous: the wallet's own shape goes the short way
    entry = make_transfer(PID, 5000, height=100)
    assert confirmed_transfer(entry, 100 + N, N) == classify(entry, 100 + N, N, False, False).transfer
    assert confirmed_transfer(entry, 100 + N - 1, N) is None  # not yet confirmed: classify says
