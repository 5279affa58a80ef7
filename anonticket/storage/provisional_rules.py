"""Provisional credit's decisions, shared by both SQL dialects: pure functions, no I/O.

A payment the wallet shows unconfirmed is credited at once when the operator accepts the
risk (``PROVISIONAL_MAX_PER_PID`` > 0), within two caps, and is taken back out if it never
confirms (docs/operations.md#provisional-credit). Each dialect's ``provisional`` module
reads what a decision needs inside its transaction, calls in here and writes the result.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from anonticket.domain.ids import Transfer
from anonticket.storage.ledger_rules import PidCredit, credits_per_pid
from anonticket.storage.rows import TokenRow

# provisional_credits.state
PROVISIONAL, WITHDRAWN, FINAL = 0, 1, 2


@dataclass(slots=True)
class ProvisionalPlan:
    """Which transfers to credit provisionally now and what that makes of the totals."""

    accepted: list[Transfer]
    over_cap: list[bytes]  # txids left to wait for confirmations: a cap would be exceeded
    outstanding: int  # every provisional credit's sum afterwards
    per_pid: dict[bytes, PidCredit] = field(default_factory=dict)
    counts: dict[bytes, int] = field(default_factory=dict)  # pid -> credits accepted now


def plan_provisional(transfers: Iterable[Transfer], known: set[bytes],
                     pid_totals: Mapping[bytes, int], outstanding: int, *, max_per_pid: int,
                     max_outstanding: int, price_per_day: int | None) -> ProvisionalPlan:
    """Accept, in txid order, each transfer not ``known`` (stored in either table) while its
    PID's outstanding provisional total stays within ``max_per_pid`` and the sum of all
    within ``max_outstanding``; ``pid_totals`` and ``outstanding`` are read in the same
    transaction, which is what makes concurrent credits respect the caps."""
    totals = dict(pid_totals)
    accepted: list[Transfer] = []
    over: list[bytes] = []
    for t in sorted(transfers, key=lambda t: t.txid):
        if t.txid in known:
            continue
        pid_total = totals.get(t.pid.raw, 0) + t.amount
        if pid_total > max_per_pid or outstanding + t.amount > max_outstanding:
            over.append(t.txid)
            continue
        totals[t.pid.raw] = pid_total
        outstanding += t.amount
        accepted.append(t)
    counts: dict[bytes, int] = {}
    for t in accepted:
        counts[t.pid.raw] = counts.get(t.pid.raw, 0) + 1
    return ProvisionalPlan(accepted, over, outstanding, credits_per_pid(accepted, price_per_day),
                           counts)


@dataclass(frozen=True, slots=True)
class TokenWithdrawal:
    """A token's columns after losing ``amount`` piconero and ``seconds`` of time."""

    amount: int
    lost: int
    unrecovered: int  # what debits had already spent of it: never taken back
    expires_at: int | None
    withdrawn: int  # 1: nothing is left on the token (its payments sum to zero)


def withdraw_from_token(record: TokenRow, lost: int, amount: int, seconds: int | None
                        ) -> TokenWithdrawal:
    """The balance never goes below zero (``spent <= amount`` stays true): what was spent
    of the withdrawn credit is the operator's loss, recorded in ``lost`` (amount = its
    payments' sum + lost) and never taken from the customer's debits. The time it bought
    comes off the expiry (never before issue); an unlimited token (no price was in force)
    keeps no limit."""
    left = record.amount - amount
    unrecovered = max(record.spent - left, 0)
    new_amount, new_lost = left + unrecovered, lost + unrecovered
    expires_at = record.expires_at
    if expires_at is not None and seconds is not None:
        expires_at = max(expires_at - seconds, record.issued_at)
    return TokenWithdrawal(new_amount, new_lost, unrecovered, expires_at,
                           1 if new_amount == new_lost else 0)


def payment_seconds_after(seconds: int | None, withdrawn: int | None) -> int | None:
    """A payment's bought seconds after a withdrawal (None: unlimited stays unlimited)."""
    if seconds is None or withdrawn is None:
        return seconds
    return max(seconds - withdrawn, 0)
