"""What one ``get_transfers`` answer means, before anything is written: pure, no I/O.

``classify`` gives one raw wallet entry its verdict (a ``transfers_total`` label);
``confirmed_transfer`` is its fast twin for the one common shape of a confirmed
entry; ``scan`` turns a whole answer into the transfers to credit, the pending view
and what to count. The monitor (``anonticket.monitor.loop``) does the reading and writing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from anonticket.domain.ids import PaymentId, Transfer, parse_txid, subaddress_transfer_id
from anonticket.domain.errors import InvalidPid
from anonticket.monero.wallet_rpc import WalletTransfers


@dataclass(frozen=True, slots=True)
class Classified:
    """One wallet entry's verdict: ``result`` is a transfers_total label."""

    result: str
    key: str  # de-duplicates counting per transfer; never logged
    transfer: Transfer | None = None
    confirmations: int = 0
    problem: str = ""  # for ``invalid``: which field failed (a field name, never a value)
    index: int = 0  # for ``unallocated_subaddress``: the subaddress index (not a secret)


@dataclass(frozen=True, slots=True)
class Subaddresses:
    """The checkout's allocations the scan knows: ``pids`` maps an index of ``account`` to
    the PID a transfer to it is credited under (a cache of storage; an index missing here
    is looked up by the monitor before it is called unallocated)."""

    account: int
    pids: Mapping[int, PaymentId]


NO_SUBADDRESSES = Subaddresses(0, {})


def subaddress_index(entry: dict[str, Any], account: int) -> int:
    """The minor index of ``account`` an entry was received on, 0 for anything else (the
    primary address, whose integrated addresses carry PIDs, or another account). A
    ``subaddr_index`` of the wrong shape raises ValueError("subaddr_index")."""
    where = entry.get("subaddr_index")
    if where is None:
        return 0
    if type(where) is not dict:
        raise ValueError("subaddr_index")
    major, minor = where.get("major"), where.get("minor")
    if type(major) is not int or type(minor) is not int or major < 0 or minor < 0:
        raise ValueError("subaddr_index")
    return minor if major == account else 0


def classify(entry: Any, wallet_height: int, min_confirmations: int, accept_long: bool,
             in_pool: bool, subaddresses: Subaddresses = NO_SUBADDRESSES, *,
             resolved: bool = True) -> Classified:
    """Decide what one raw wallet entry means. Never raises: bad entries are ``invalid``.

    An entry received on a subaddress (index > 0) of the checkout's account is credited
    under that allocation's PID whatever payment ID the transaction carries (a batched
    transaction paying an integrated address too shows that PID on every one of its
    entries), keyed by ``subaddress_transfer_id``; one to an index never allocated is
    ``unallocated_subaddress`` and credits nothing — unless the transaction carries a
    payment ID (it also paid an integrated address): then, as before subaddresses, it is
    credited to that PID. ``resolved=False``: ``subaddresses`` may not hold every allocated
    index yet, so an unknown one is only ``unallocated_subaddress`` (to be looked up)."""
    key = _entry_key(entry)
    if not isinstance(entry, dict):
        return Classified("invalid", key, problem="entry")
    try:
        txid = parse_txid(entry.get("txid"))
    except ValueError:
        return Classified("invalid", key, problem="txid")
    try:
        amount = _int_field(entry, "amount")
        height = 0 if in_pool else _int_field(entry, "height")
        unlock_time = _int_field(entry, "unlock_time", default=0)
        if amount <= 0:
            raise ValueError("amount")
        if not in_pool and height <= 0:  # a mined transfer has a block; 0 would pend forever
            raise ValueError("height")
        double_spend = entry.get("double_spend_seen", False)
        if not isinstance(double_spend, bool):
            raise ValueError("double_spend_seen")
        pid_text = entry.get("payment_id")
        if not isinstance(pid_text, str):
            raise ValueError("payment_id")
        index = subaddress_index(entry, subaddresses.account)
    except ValueError as exc:
        return Classified("invalid", key, problem=exc.args[0])  # the field name
    if index:
        allocated = subaddresses.pids.get(index)
        if allocated is None:
            if not resolved or (len(pid_text) in (16, 64) and set(pid_text) == {"0"}):
                return Classified("unallocated_subaddress", f"{key}:{index}", index=index)
        else:
            return _verdict(Transfer(subaddress_transfer_id(txid, subaddresses.account, index),
                                 allocated, amount, height),
                        key, unlock_time, double_spend, in_pool, wallet_height, min_confirmations)
    try:
        pid = PaymentId.parse(pid_text, accept_long=True)
    except InvalidPid:
        zero = len(pid_text) in (16, 64) and set(pid_text) == {"0"}
        return Classified("zero_pid", key) if zero else Classified("invalid", key, problem="payment_id")
    if not pid.is_short and not accept_long:
        return Classified("long_pid", key)
    return _verdict(Transfer(txid, pid, amount, height), key, unlock_time, double_spend, in_pool,
                    wallet_height, min_confirmations)


def _verdict(transfer: Transfer, key: str, unlock_time: int, double_spend: bool, in_pool: bool,
             wallet_height: int, min_confirmations: int) -> Classified:
    if unlock_time != 0:
        return Classified("locked", key)
    if double_spend:  # the transfer: a subaddress's is known by its own id (provisional credit)
        return Classified("double_spend", key, transfer)
    height = transfer.height
    confirmations = 0 if in_pool else max(wallet_height - height, 0)
    if in_pool or confirmations < min_confirmations:
        return Classified("pending", key, transfer, confirmations)
    return Classified("credited", key, transfer, confirmations)


def _int_field(entry: dict[str, Any], name: str, default: int | None = None) -> int:
    value = entry.get(name, default)
    if type(value) is not int or value < 0:
        raise ValueError(name)
    return value


def _entry_key(entry: Any) -> str:
    """The txid when there is a plausible one, else a digest of the whole entry, so two
    different broken entries are counted apart and one broken entry counts once."""
    txid = entry.get("txid") if isinstance(entry, dict) else None
    if isinstance(txid, str) and len(txid) == 64:
        return txid.lower()
    return "#" + hashlib.sha256(repr(entry).encode()).hexdigest()


@dataclass
class Scan:
    """What one ``get_transfers`` answer means, before anything is written."""

    credited: dict[bytes, Transfer] = field(default_factory=dict)  # txid -> transfer
    pending: dict[bytes, int] = field(default_factory=dict)  # pid -> highest confirmations
    # every verdict but "credited" (those are counted by the credit's result)
    reportable: list[Classified] = field(default_factory=list)
    # txids (lowercase hex) that may still be credited later: pending, or flagged as a
    # double spend while in the pool; if one is gone next poll, the margin is re-read
    watched: set[str] = field(default_factory=set)
    # for provisional credit: the pending transfers themselves (txid -> transfer; in the
    # pool, height 0) and the txids the wallet flags as double spends
    unconfirmed: dict[bytes, Transfer] = field(default_factory=dict)
    double_spent: set[bytes] = field(default_factory=set)
    # txids (lowercase hex) credited under a subaddress's transfer id, not their own
    credited_elsewhere: set[str] = field(default_factory=set)
    # entries on a subaddress index the given ``Subaddresses`` did not know, with whether
    # each came from the pool: the monitor looks the indexes up and scans these again
    unresolved: list[tuple[dict[str, Any], bool]] = field(default_factory=list)

    def add(self, other: Scan) -> None:
        """Merge a scan of other heights (the margin): no transaction is in both."""
        for txid, transfer in other.credited.items():
            self.credited.setdefault(txid, transfer)
        for pid, confirmations in other.pending.items():
            self.pending[pid] = max(self.pending.get(pid, 0), confirmations)
        self.reportable.extend(other.reportable)
        self.watched |= other.watched
        for txid, transfer in other.unconfirmed.items():
            self.unconfirmed.setdefault(txid, transfer)
        self.double_spent |= other.double_spent
        self.credited_elsewhere |= other.credited_elsewhere
        self.unresolved.extend(other.unresolved)

    def still_has(self, txid: str) -> bool:
        return (txid in self.watched or txid in self.credited_elsewhere
                or bytes.fromhex(txid) in self.credited)


def confirmed_transfer(entry: Any, wallet_height: int, min_confirmations: int) -> Transfer | None:
    """The transfer of a mined entry of the one common shape, when ``classify`` would call it
    "credited"; None for anything else, which then goes through ``classify``.

    Most of a big poll is this shape: checking it in one function, without a verdict
    object or a count key, halves the time a poll spends classifying (docs/benchmarks.md).
    tests/monero/test_monitor_classify.py checks it against ``classify`` on arbitrary entries.
    """
    if type(entry) is not dict:
        return None
    amount, height = entry.get("amount"), entry.get("height")
    if type(amount) is not int or type(height) is not int or amount <= 0 or height <= 0:
        return None
    unlock_time = entry.get("unlock_time", 0)
    if type(unlock_time) is not int or unlock_time != 0:
        return None
    if entry.get("double_spend_seen", False) is not False or wallet_height - height < min_confirmations:
        return None
    where = entry.get("subaddr_index")
    if where is not None and (type(where) is not dict or where.get("minor") != 0):
        return None  # a subaddress (or a malformed index): ``classify`` decides
    txid_text, pid_text = entry.get("txid"), entry.get("payment_id")
    if type(pid_text) is not str or len(pid_text) != 16:
        return None  # long and malformed PIDs take the general path
    try:
        return Transfer(parse_txid(txid_text), PaymentId.parse(pid_text), amount, height)
    except (ValueError, InvalidPid):
        return None


def scan(batch: WalletTransfers, wallet_height: int, floor: int, min_confirmations: int,
         accept_long: bool, subaddresses: Subaddresses = NO_SUBADDRESSES, *,
         resolved: bool = True) -> Scan:
    """What a ``get_transfers`` answer asked from above ``floor`` means (entries at or
    below it are dropped: a wallet ignoring ``min_height`` must not widen the window).

    ``resolved=False`` (the monitor's first pass): an entry on a subaddress index
    ``subaddresses`` does not know goes to ``unresolved``; the monitor looks the indexes up
    and scans those entries again with ``resolved=True``, the final verdict."""
    out = Scan()
    for entries, in_pool in ((batch.incoming, False), (batch.pool, True)):
        for entry in entries:
            transfer = None if in_pool else confirmed_transfer(entry, wallet_height,
                                                                min_confirmations)
            if transfer is not None:
                result, confirmations = "credited", 0
            else:
                verdict = classify(entry, wallet_height, min_confirmations, accept_long, in_pool,
                                   subaddresses, resolved=resolved)
                transfer, result, confirmations = (verdict.transfer, verdict.result,
                                                   verdict.confirmations)
                if result == "unallocated_subaddress" and not resolved:
                    out.unresolved.append((entry, in_pool))
                    continue
                if result == "credited" and transfer is not None and transfer.txid.hex() != verdict.key:
                    out.credited_elsewhere.add(verdict.key)  # a subaddress's transfer id
                if result != "credited":
                    out.reportable.append(verdict)
                    if result in ("pending", "double_spend"):
                        out.watched.add(verdict.key)
                        if transfer is not None:
                            # a subaddress's transfer id too: provisional credit knows a
                            # payment to a subaddress by it, not by the transaction's txid
                            out.watched.add(transfer.txid.hex())
                    if result == "double_spend":
                        if len(verdict.key) == 64:
                            out.double_spent.add(bytes.fromhex(verdict.key))
                        if transfer is not None:
                            out.double_spent.add(transfer.txid)
                        continue
            if transfer is None:
                continue
            if result == "credited" and transfer.height > floor:
                earlier = out.credited.get(transfer.txid)
                if earlier is not None and earlier.pid == transfer.pid:
                    # one tx paying two of our addresses shows as two entries: credit the sum
                    transfer = Transfer(transfer.txid, transfer.pid,
                                        earlier.amount + transfer.amount, transfer.height)
                out.credited[transfer.txid] = transfer
            elif result == "pending":
                pid = transfer.pid.raw
                out.pending[pid] = max(out.pending.get(pid, 0), confirmations)
                earlier = out.unconfirmed.get(transfer.txid)
                if earlier is not None and earlier.pid == transfer.pid:
                    transfer = Transfer(transfer.txid, transfer.pid,
                                        earlier.amount + transfer.amount, transfer.height)
                out.unconfirmed[transfer.txid] = transfer
    return out
