"""Provisional credit on PostgreSQL: the SQL of ``storage.provisional`` and
``storage.provisional_settle``, written for it.

Every transaction that changes provisional credit first locks the one row of
``provisional_outstanding`` (``FOR UPDATE``), then payments, then tokens: concurrent
credits and withdrawals take turns on the totals the caps are checked against, so no
interleaving can exceed them. They are fenced like every write, with ``FOR UPDATE`` on the
cursor row as a credit is.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import asyncpg

from anonticket.domain.ids import Transfer
from anonticket.domain.timestamp import MAX_CREDIT_SECONDS
from anonticket.storage.events import topped_up_event, withdrawn_event
from anonticket.storage.ledger_rules import seconds_bought
from anonticket.storage.postgres.core import PostgresCore, column_list
from anonticket.storage.postgres.payments import _extend_expiry
from anonticket.storage.postgres.provisional_settle import LOCK_OUTSTANDING
from anonticket.storage.provisional_rules import (
    PROVISIONAL,
    WITHDRAWN,
    payment_seconds_after,
    plan_provisional,
    withdraw_from_token,
)
from anonticket.storage.rows import TOKEN_COLUMNS, ProvisionalResult, TokenRow, WithdrawResult

_TOKEN_T = column_list(TOKEN_COLUMNS, "t")


class PgProvisionalStore(PostgresCore):
    async def credit_provisional(
        self, transfers: Iterable[Transfer], now: int, *, max_per_pid: int,
        max_outstanding: int, price_per_day: int | None = None,
    ) -> ProvisionalResult:
        """See ``ProvisionalStore.credit_provisional``."""
        incoming = {t.txid: t for t in transfers}
        if not incoming:
            return ProvisionalResult([], [])

        async def work(db: asyncpg.Connection) -> ProvisionalResult:
            outstanding = await db.fetchval(LOCK_OUTSTANDING)
            txids = sorted(incoming)
            known = {row[0] for row in await db.fetch(
                """SELECT txid FROM provisional_credits WHERE txid = ANY($1::bytea[])
                   UNION ALL SELECT txid FROM transfers WHERE txid = ANY($1::bytea[])""",
                txids)}
            pids = sorted({t.pid.raw for t in incoming.values()})
            totals = {row[0]: row[1] for row in await db.fetch(
                f"""SELECT pid, sum(amount)::bigint FROM provisional_credits
                    WHERE state = {PROVISIONAL} AND pid = ANY($1::bytea[]) GROUP BY pid""",
                pids)}
            plan = plan_provisional(incoming.values(), known, totals, outstanding,
                                    max_per_pid=max_per_pid, max_outstanding=max_outstanding,
                                    price_per_day=price_per_day)
            if not plan.accepted:
                return ProvisionalResult([], plan.over_cap)
            await db.executemany(
                """INSERT INTO provisional_credits (txid, pid, amount, seconds, credited_at)
                   VALUES ($1, $2, $3, $4, $5)""",
                [(t.txid, t.pid.raw, t.amount, seconds_bought(t.amount, price_per_day), now)
                 for t in plan.accepted])
            await db.execute("UPDATE provisional_outstanding SET amount = $1 WHERE id = 1",
                             plan.outstanding)
            await db.executemany(
                f"""INSERT INTO payments AS p
                        (pid, txid, amount, first_height, created_at, seconds, provisional)
                    VALUES ($1, $2, $3, $4, $5, $6::bigint, $7)
                    ON CONFLICT (pid) DO UPDATE SET
                        amount = p.amount + excluded.amount,
                        provisional = p.provisional + excluded.provisional,
                        seconds = CASE WHEN p.seconds IS NULL OR excluded.seconds IS NULL
                                       THEN NULL
                                       ELSE LEAST(LEAST(p.seconds, {MAX_CREDIT_SECONDS})
                                                  + excluded.seconds, {MAX_CREDIT_SECONDS})
                                  END""",
                [(pid, c.txid, c.amount, c.first_height, now, c.seconds, plan.counts[pid])
                 for pid, c in sorted(plan.per_pid.items())])
            owners = await db.fetch(
                """SELECT pid, token FROM payments
                   WHERE token IS NOT NULL AND pid = ANY($1::bytea[]) ORDER BY token""",
                sorted(plan.per_pid))
            stored: dict[bytes, TokenRow] = {}
            events = []
            for pid, token in owners:
                credit = plan.per_pid[pid]
                row = await db.fetchrow(
                    f"""UPDATE service_tokens AS t SET amount = t.amount + $3,
                               expires_at = {_extend_expiry('$1::bigint', '$2::bigint')},
                               expired_notified = 0, provisional = t.provisional + $5,
                               withdrawn = 0
                        WHERE t.token = $4 RETURNING {_TOKEN_T}""",
                    credit.seconds, now, credit.amount, token, plan.counts[pid])
                stored[token] = TokenRow(*row)
                events.append(topped_up_event(stored[token], credit.amount))
            if events and self.outbox is not None:
                await self.outbox.add(db, events, now)
            return ProvisionalResult(sorted(plan.per_pid), plan.over_cap, stored,
                                     len(plan.accepted))

        return await self._write(work, fence="FOR UPDATE")

    async def withdraw_provisional(self, txids: Sequence[bytes], now: int) -> WithdrawResult:
        """See ``ProvisionalStore.withdraw_provisional``."""

        async def work(db: asyncpg.Connection) -> WithdrawResult:
            await db.fetchval(LOCK_OUTSTANDING)
            amounts: list[int] = []
            unrecovered_sum = 0
            stored: dict[bytes, TokenRow] = {}
            pids: list[bytes] = []
            for txid in sorted(set(txids)):
                found = await db.fetchrow(
                    f"""SELECT pid, amount, seconds FROM provisional_credits
                        WHERE txid = $1 AND state = {PROVISIONAL}""", txid)
                if found is None:
                    continue
                pid, amount, seconds = found
                await db.execute(
                    "UPDATE provisional_outstanding SET amount = amount - $1 WHERE id = 1", amount)
                status, left, token, payment_seconds = await db.fetchrow(
                    "SELECT status, amount, token, seconds FROM payments WHERE pid = $1 FOR UPDATE",
                    pid)
                left -= amount
                if status == 0 and left == 0:
                    await db.execute("DELETE FROM payments WHERE pid = $1", pid)
                else:
                    await db.execute(
                        """UPDATE payments SET amount = $1, seconds = $2::bigint,
                                  provisional = provisional - 1 WHERE pid = $3""",
                        left, payment_seconds_after(payment_seconds, seconds), pid)
                unrecovered = 0
                if token is not None:
                    lost, *columns = await db.fetchrow(
                        f"SELECT lost, {TOKEN_COLUMNS} FROM service_tokens WHERE token = $1 "
                        "FOR UPDATE", token)
                    change = withdraw_from_token(TokenRow(*columns), lost, amount, seconds)
                    unrecovered = change.unrecovered
                    row = await db.fetchrow(
                        f"""UPDATE service_tokens AS t SET amount = $1, lost = $2,
                                   expires_at = $3::bigint, withdrawn = $4,
                                   provisional = t.provisional - 1
                            WHERE t.token = $5 RETURNING {_TOKEN_T}""",
                        change.amount, change.lost, change.expires_at, change.withdrawn, token)
                    stored[token] = TokenRow(*row)
                    if self.outbox is not None:
                        await self.outbox.add(db, [withdrawn_event(stored[token], amount)], now)
                await db.execute(
                    f"""UPDATE provisional_credits SET state = {WITHDRAWN}, withdrawn_at = $1,
                               unrecovered = $2 WHERE txid = $3""", now, unrecovered, txid)
                amounts.append(amount)
                unrecovered_sum += unrecovered
                pids.append(pid)
            return WithdrawResult(amounts, unrecovered_sum, stored, pids)

        return await self._write(work, fence="FOR UPDATE")

    async def outstanding_provisional(self) -> dict[bytes, bytes]:
        """txid → PID of every provisional credit not settled yet."""
        rows = await self._read(
            f"SELECT txid, pid FROM provisional_credits WHERE state = {PROVISIONAL}")
        return {row[0]: row[1] for row in rows}

    async def pid_is_provisional(self, pid: bytes) -> bool:
        """See ``ProvisionalStore.pid_is_provisional``."""
        rows = await self._read("SELECT provisional FROM payments WHERE pid = $1", pid)
        return bool(rows and rows[0][0])
