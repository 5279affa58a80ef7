"""Provisional credit on SQLite: credit an unconfirmed payment at once, settle it at N
confirmations, withdraw it if it never confirms (docs/operations.md#provisional-credit).

Each write is one transaction. ``provisional_outstanding`` holds the sum the global cap
limits; every writer updates it inside BEGIN IMMEDIATE, so the caps are checked against
totals no concurrent writer can change. The state machine of ``provisional_credits``
(0 provisional → 1 withdrawn | 2 final, 1 → 2 once) is enforced by the schema's trigger.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from anonticket.domain.ids import Transfer
from anonticket.domain.timestamp import MAX_CREDIT_SECONDS
from anonticket.storage.core import StorageCore, chunks, marks
from anonticket.storage.events import topped_up_event, withdrawn_event
from anonticket.storage.ledger_rules import seconds_bought
from anonticket.storage.payments import _EXTEND_EXPIRY
from anonticket.storage.provisional_rules import (
    PROVISIONAL,
    WITHDRAWN,
    payment_seconds_after,
    plan_provisional,
    withdraw_from_token,
)
from anonticket.storage.rows import TOKEN_COLUMNS, ProvisionalResult, TokenRow, WithdrawResult


class ProvisionalStore(StorageCore):
    async def credit_provisional(
        self, transfers: Iterable[Transfer], now: int, *, max_per_pid: int,
        max_outstanding: int, price_per_day: int | None = None,
    ) -> ProvisionalResult:
        """Credit unconfirmed transfers at once, each exactly once (a txid stored in
        either table is skipped), within the caps; a claimed PID's token is topped up and
        marked provisional. Transfers over a cap are left alone: they are credited as
        usual at N confirmations."""
        incoming = {t.txid: t for t in transfers}
        if not incoming:
            return ProvisionalResult([], [])
        async with self._transaction() as db:
            txids = sorted(incoming)
            known: set[bytes] = set()
            for chunk in chunks(txids):
                found = await db.execute_fetchall(
                    f"""SELECT txid FROM provisional_credits WHERE txid IN ({marks(len(chunk))})
                        UNION ALL
                        SELECT txid FROM transfers WHERE txid IN ({marks(len(chunk))})""",
                    (*chunk, *chunk))
                known.update(txid for (txid,) in found)
            pids = sorted({t.pid.raw for t in incoming.values()})
            totals: dict[bytes, int] = {}
            for chunk in chunks(pids):
                rows = await db.execute_fetchall(
                    f"""SELECT pid, sum(amount) FROM provisional_credits
                        WHERE state = {PROVISIONAL} AND pid IN ({marks(len(chunk))})
                        GROUP BY pid""", chunk)
                totals.update((pid, total) for pid, total in rows)
            (outstanding,), = await db.execute_fetchall(
                "SELECT amount FROM provisional_outstanding WHERE id = 1")
            plan = plan_provisional(incoming.values(), known, totals, outstanding,
                                    max_per_pid=max_per_pid, max_outstanding=max_outstanding,
                                    price_per_day=price_per_day)
            if not plan.accepted:
                return ProvisionalResult([], plan.over_cap)
            await db.executemany(
                """INSERT INTO provisional_credits (txid, pid, amount, seconds, credited_at)
                   VALUES (?, ?, ?, ?, ?)""",
                [(t.txid, t.pid.raw, t.amount, seconds_bought(t.amount, price_per_day), now)
                 for t in plan.accepted])
            await db.execute("UPDATE provisional_outstanding SET amount = ? WHERE id = 1",
                             (plan.outstanding,))
            await db.executemany(
                f"""INSERT INTO payments
                        (pid, txid, amount, first_height, created_at, seconds, provisional)
                    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                    ON CONFLICT (pid) DO UPDATE SET
                        amount = amount + excluded.amount,
                        provisional = provisional + excluded.provisional,
                        seconds = CASE WHEN seconds IS NULL OR excluded.seconds IS NULL THEN NULL
                                       ELSE min(min(seconds, {MAX_CREDIT_SECONDS})
                                                + excluded.seconds, {MAX_CREDIT_SECONDS}) END""",
                [(pid, c.txid, c.amount, c.first_height, now, c.seconds, plan.counts[pid])
                 for pid, c in sorted(plan.per_pid.items())])
            stored: dict[bytes, TokenRow] = {}
            events = []
            for chunk in chunks(sorted(plan.per_pid)):
                owners = await db.execute_fetchall(
                    f"""SELECT pid, token FROM payments
                        WHERE token IS NOT NULL AND pid IN ({marks(len(chunk))})""", chunk)
                for pid, token in sorted(owners, key=lambda row: row[1]):
                    credit = plan.per_pid[pid]
                    rows = await db.execute_fetchall(
                        f"""UPDATE service_tokens SET amount = amount + ?3,
                                   expires_at = {_EXTEND_EXPIRY}, expired_notified = 0,
                                   provisional = provisional + ?5, withdrawn = 0
                            WHERE token = ?4 RETURNING {TOKEN_COLUMNS}""",
                        (credit.seconds, now, credit.amount, token, plan.counts[pid]))
                    stored[token] = TokenRow(*rows[0])
                    events.append(topped_up_event(stored[token], credit.amount))
            if events and self.outbox is not None:
                await self.outbox.add(db, events, now)
        return ProvisionalResult(sorted(plan.per_pid), plan.over_cap, stored,
                                 len(plan.accepted))

    async def withdraw_provisional(self, txids: Sequence[bytes], now: int) -> WithdrawResult:
        """Take provisional credits back out (their payment left the pool unmined, was
        double-spent or reorganised out): each exactly once, a txid not provisional (final,
        already withdrawn, unknown) is skipped. See ``withdraw_from_token`` for what the
        token keeps; an unclaimed payment left with nothing is removed."""
        amounts: list[int] = []
        unrecovered_sum = 0
        stored: dict[bytes, TokenRow] = {}
        pids: list[bytes] = []
        async with self._transaction() as db:
            for txid in sorted(set(txids)):
                found = await db.execute_fetchall(
                    f"""SELECT pid, amount, seconds FROM provisional_credits
                        WHERE txid = ? AND state = {PROVISIONAL}""", (txid,))
                if not found:
                    continue
                (pid, amount, seconds), = found
                await db.execute(
                    "UPDATE provisional_outstanding SET amount = amount - ? WHERE id = 1",
                    (amount,))
                (status, left, token, payment_seconds), = await db.execute_fetchall(
                    """SELECT status, amount, token, seconds FROM payments WHERE pid = ?""",
                    (pid,))
                left -= amount
                if status == 0 and left == 0:
                    await db.execute("DELETE FROM payments WHERE pid = ?", (pid,))
                else:
                    await db.execute(
                        """UPDATE payments SET amount = ?, seconds = ?,
                                  provisional = provisional - 1 WHERE pid = ?""",
                        (left, payment_seconds_after(payment_seconds, seconds), pid))
                unrecovered = 0
                if token is not None:
                    row = await db.execute_fetchall(
                        f"SELECT lost, {TOKEN_COLUMNS} FROM service_tokens WHERE token = ?",
                        (token,))
                    lost, *columns = row[0]
                    change = withdraw_from_token(TokenRow(*columns), lost, amount, seconds)
                    unrecovered = change.unrecovered
                    updated = await db.execute_fetchall(
                        f"""UPDATE service_tokens SET amount = ?, lost = ?, expires_at = ?,
                                   withdrawn = ?, provisional = provisional - 1
                            WHERE token = ? RETURNING {TOKEN_COLUMNS}""",
                        (change.amount, change.lost, change.expires_at, change.withdrawn, token))
                    stored[token] = TokenRow(*updated[0])
                    if self.outbox is not None:
                        await self.outbox.add(db, [withdrawn_event(stored[token], amount)], now)
                await db.execute(
                    f"""UPDATE provisional_credits SET state = {WITHDRAWN}, withdrawn_at = ?,
                               unrecovered = ? WHERE txid = ?""", (now, unrecovered, txid))
                amounts.append(amount)
                unrecovered_sum += unrecovered
                pids.append(pid)
        return WithdrawResult(amounts, unrecovered_sum, stored, pids)

    async def outstanding_provisional(self) -> dict[bytes, bytes]:
        """txid → PID of every provisional credit not settled yet (the monitor's watch list)."""
        rows = await self._read(
            f"SELECT txid, pid FROM provisional_credits WHERE state = {PROVISIONAL}")
        return {txid: pid for txid, pid in rows}

    async def pid_is_provisional(self, pid: bytes) -> bool:
        """Whether a PID's payment holds provisional credit (the checkout says so)."""
        rows = await self._read("SELECT provisional FROM payments WHERE pid = ?", (pid,))
        return bool(rows and rows[0][0])
