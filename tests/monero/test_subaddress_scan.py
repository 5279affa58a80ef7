"""What the scan makes of entries received on subaddresses (issue 26), without any I/O: an
allocated index is credited under its allocation's PID and its own transfer id, whatever
payment ID the transaction carries; an unknown one waits for the monitor's look-up
(``resolved=False``), and is then reported, not credited, unless the transaction carries a
payment ID of its own.
"""

from __future__ import annotations

from typing import Any

from anonticket.domain.ids import PaymentId, subaddress_transfer_id
from anonticket.monero.scan import Subaddresses, classify, confirmed_transfer, scan
from anonticket.monero.wallet_rpc import WalletTransfers
from fake_wallet import make_transfer, make_txid

ZERO = "0" * 16
N = 10
ALICE, BOB = PaymentId.generate(), PaymentId.generate()
ALLOCATED = Subaddresses(0, {3: ALICE, 4: BOB})


def batch(*entries: dict[str, Any]) -> WalletTransfers:
    return WalletTransfers(incoming=[e for e in entries if e["type"] == "in"],
                           pool=[e for e in entries if e["type"] == "pool"])


def test_one_transaction_paying_two_allocated_subaddresses_credits_each_its_output() -> None:
    txid = make_txid()
    alice = make_transfer(ZERO, 100, height=150, txid=txid, subaddr_minor=3)
    bob = make_transfer(ZERO, 200, height=150, txid=txid, subaddr_minor=4)
    stranger = make_transfer(ZERO, 400, height=150, txid=txid, subaddr_minor=5)
    found = scan(batch(alice, bob, stranger), 200, 100, N, False, ALLOCATED)
    raw = bytes.fromhex(txid)
    assert {t.txid: (t.pid, t.amount) for t in found.credited.values()} == {
        subaddress_transfer_id(raw, 0, 3): (ALICE, 100), subaddress_transfer_id(raw, 0, 4): (BOB, 200)}
    assert [(v.result, v.index) for v in found.reportable] == [("unallocated_subaddress", 5)]
    assert found.still_has(txid)  # credited under other ids: the margin need not be re-read


def test_an_unknown_index_waits_for_the_look_up_before_any_verdict() -> None:
    entry = make_transfer(ZERO, 100, height=150, subaddr_minor=9)
    pending = make_transfer(ZERO, 100, height=0, type="pool", subaddr_minor=9)
    found = scan(batch(entry, pending), 200, 100, N, False, ALLOCATED, resolved=False)
    assert not found.credited and not found.reportable and not found.pending
    assert [(e["subaddr_index"]["minor"], pool) for e, pool in found.unresolved] == [(9, False), (9, True)]
    # once looked up and allocated: credited, and the pool entry pending under the PID
    looked_up = Subaddresses(0, {9: ALICE})
    again = scan(batch(entry, pending), 200, 100, N, False, looked_up)
    assert [t.pid for t in again.credited.values()] == [ALICE]
    assert again.pending == {ALICE.raw: 0}


def test_the_allocation_wins_over_the_transactions_payment_id_and_the_id_credits_the_rest() -> None:
    other = PaymentId.generate()
    txid = make_txid()
    on_subaddress = make_transfer(other.hex(), 100, height=150, txid=txid, subaddr_minor=3)
    unallocated = make_transfer(other.hex(), 50, height=150, txid=txid, subaddr_minor=7)
    assert confirmed_transfer(on_subaddress, 200, N) is None  # the fast path leaves it to classify
    assert classify(on_subaddress, 200, N, False, False, ALLOCATED).transfer.pid == ALICE  # type: ignore[union-attr]
    verdict = classify(unallocated, 200, N, False, False, ALLOCATED)
    assert verdict.result == "credited" and verdict.transfer.pid == other  # type: ignore[union-attr]
    assert verdict.transfer.txid == bytes.fromhex(txid)  # type: ignore[union-attr]


def test_other_accounts_and_the_primary_address_keep_the_payment_id_path() -> None:
    pid = PaymentId.generate()
    primary = make_transfer(pid.hex(), 100, height=150)
    elsewhere = dict(make_transfer(pid.hex(), 100, height=150), subaddr_index={"major": 1, "minor": 3})
    for entry in (primary, elsewhere):
        verdict = classify(entry, 200, N, False, False, ALLOCATED)
        assert verdict.result == "credited" and verdict.transfer.pid == pid  # type: ignore[union-attr]
    for bad in ("x", {"major": -1, "minor": 2}, {"major": 0}, {"major": 0, "minor": True}):
        broken = dict(primary, subaddr_index=bad)
        assert confirmed_transfer(broken, 200, N) is None
        assert classify(broken, 200, N, False, False, ALLOCATED).problem == "subaddr_index"
