"""Payments and claims on PostgreSQL: the SQL of ``storage.payments``, written for it.

What differs from the SQLite text, and why: bulk writes pass arrays and ``unnest`` them
(one round trip, not one per row); the upsert names its table (``p.amount``: a bare
``amount`` is ambiguous next to ``excluded``); two-value min/max are LEAST/GREATEST; a
parameter that may be NULL is cast, since PostgreSQL cannot type ``$1 IS NULL``; and
``INSERT … ON CONFLICT DO NOTHING RETURNING`` names the transfers actually inserted, which
replaces SQLite's savepoint-and-count trick. Row locks are taken payments first, then
tokens, in every transaction that takes both.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Sequence

import asyncpg

from anonticket.domain.ids import Transfer
from anonticket.storage.ledger_rules import (
    Claim,
    PidCredit,
    claim_pid,
    claim_row,
    claim_token,
    credits_per_pid,
    credits_per_token,
    expiry_after,
    plan_claims,
    refuse_topup,
    visible_row,
)
from anonticket.storage.events import issued_event, topped_up_event
from anonticket.storage.payments import _topped_up_events
from anonticket.storage.postgres.core import PostgresCore, column_list
from anonticket.storage.rows import TOKEN_COLUMNS, ClaimRow, CreditResult, TokenRow, TopupOutcome
from anonticket.domain.timestamp import MAX_CREDIT_SECONDS, MAX_TIMESTAMP


# expires_at after crediting d.seconds more at $now (see storage.payments._EXTEND_EXPIRY)
def _extend_expiry(seconds: str, now: str) -> str:
    return (f"CASE WHEN t.expires_at IS NULL OR {seconds} IS NULL THEN NULL "
            f"ELSE LEAST(GREATEST(LEAST(t.expires_at, {MAX_TIMESTAMP}), {now}) "
            f"+ LEAST({seconds}, {MAX_CREDIT_SECONDS}), {MAX_TIMESTAMP}) END")


_TOKEN_T = column_list(TOKEN_COLUMNS, "t")


class PgPaymentStore(PostgresCore):
    # ------------------------------------------------------------------ redeem
    async def claim_payments(
        self, claims: Sequence[Claim], min_amount: int, now: int, *, refuse_plain: bool = False
    ) -> dict[Claim, ClaimRow]:
        """See ``PaymentStore.claim_payments``. The conditional UPDATE is the one-winner
        guard here too: a concurrent claimer blocks on the row lock, re-reads the row
        once the winner commits, finds ``status = 1`` and returns nothing for it."""
        plan = plan_claims(claims)

        async def work(db: asyncpg.Connection) -> dict[Claim, ClaimRow]:
            result: dict[Claim, ClaimRow] = {}
            for pids, only_plain in ((plan.by_receipt, False), (plan.plain, refuse_plain)):
                if not pids:
                    continue
                claimed = await db.fetch(
                    f"""UPDATE payments SET status = 1, claimed_at = $1
                       WHERE status = 0 AND amount >= $2 AND pid = ANY($3::bytea[])
                             {"AND plain_pid_ok = 1" if only_plain else ""}
                       RETURNING pid, txid, amount, seconds""",
                    now, min_amount, sorted(pids))
                tokens: list[bytes] = []
                owners: list[bytes] = []
                amounts: list[int] = []
                expiries: list[int | None] = []
                records: list[TokenRow] = []
                for pid, txid, amount, seconds in claimed:
                    claim = plan.claimant(pid)
                    token = claim_token(claim, pid, txid)
                    expires_at = expiry_after(now, seconds)
                    tokens.append(token)
                    owners.append(pid)
                    amounts.append(amount)
                    expiries.append(expires_at)
                    record = TokenRow(token, amount, now, None, None, 0, 0, expires_at)
                    records.append(record)
                    result[claim] = ClaimRow(1, amount, token, claimed_now=True, record=record)
                if tokens:
                    await db.execute(
                        """INSERT INTO service_tokens (token, pid, amount, issued_at, expires_at)
                           SELECT token, pid, amount, $5, expires_at
                           FROM unnest($1::bytea[], $2::bytea[], $3::bigint[], $4::bigint[])
                                AS n(token, pid, amount, expires_at)""",
                        tokens, owners, amounts, expiries, now)
                    await db.execute(
                        """UPDATE payments AS p SET token = n.token
                           FROM unnest($1::bytea[], $2::bytea[]) AS n(token, pid)
                           WHERE p.pid = n.pid""",
                        tokens, owners)
                    if self.outbox is not None:
                        await self.outbox.add(db, map(issued_event, records), now)
            rest = [claim for claim in claims if claim not in result]
            if rest:
                rows = await db.fetch(
                    f"""SELECT p.pid, p.plain_pid_ok, p.status, p.amount, {_TOKEN_T}
                        FROM payments AS p LEFT JOIN service_tokens AS t ON t.token = p.token
                        WHERE p.pid = ANY($1::bytea[])""",
                    sorted({claim_pid(claim) for claim in rest}))
                found = {pid: (plain_pid_ok, claim_row(status, amount, token_columns))
                         for pid, plain_pid_ok, status, amount, *token_columns in rows}
                for claim in rest:
                    row = visible_row(claim, found.get(claim_pid(claim)), refuse_plain)
                    if row is not None:
                        result[claim] = row
            return result

        return await self._write(work)

    async def get_claim(self, pid: bytes, *, refuse_plain: bool = False) -> ClaimRow | None:
        rows = await self._read(
            f"""SELECT p.plain_pid_ok, p.status, p.amount, {_TOKEN_T}
                FROM payments AS p LEFT JOIN service_tokens AS t ON t.token = p.token
                WHERE p.pid = $1""",
            pid)
        for plain_pid_ok, status, amount, *token_columns in rows:
            if refuse_plain and not plain_pid_ok:
                return None
            return claim_row(status, amount, token_columns)
        return None

    async def topup_token(
        self, token: bytes, pid: bytes, min_amount: int, now: int, *, refuse_plain: bool = False
    ) -> TopupOutcome:
        """See ``PaymentStore.topup_token``. Both rows are locked (payment first) before
        anything is decided, so a concurrent redeem or top-up of the PID waits."""

        async def work(db: asyncpg.Connection) -> TopupOutcome:
            payment = await db.fetchrow(
                """SELECT status, amount, seconds, token, plain_pid_ok FROM payments
                   WHERE pid = $1 FOR UPDATE""",
                pid)
            found = await db.fetchrow(
                f"SELECT pid, {TOKEN_COLUMNS} FROM service_tokens WHERE token = $1 FOR UPDATE",
                token)
            if found is None:
                return TopupOutcome("token_not_found")
            own_pid, *columns = found
            record = TokenRow(*columns)
            if payment is None or (refuse_plain and not payment[4]):
                return TopupOutcome("pending_or_unknown")
            status, amount, seconds, owner, _ = payment
            refused = refuse_topup(token, own_pid, record, pid, status, amount, owner, min_amount)
            if refused is not None:
                return refused
            await db.execute(
                "UPDATE payments SET status = 1, claimed_at = $1, token = $2 WHERE pid = $3",
                now, token, pid)
            updated = await db.fetchrow(
                f"""UPDATE service_tokens AS t SET amount = t.amount + $3,
                           expires_at = {_extend_expiry('$1::bigint', '$2::bigint')},
                           expired_notified = 0
                    WHERE t.token = $4 RETURNING {_TOKEN_T}""",
                seconds, now, amount, token)
            topped = TokenRow(*updated)
            if self.outbox is not None:
                await self.outbox.add(db, [topped_up_event(topped, amount)], now)
            return TopupOutcome("topped_up", amount, topped)

        return await self._write(work)

    # ------------------------------------------------------------------ monitor
    async def credit_transfers(
        self, transfers: Iterable[Transfer], scanned_height: int | None, now: int,
        price_per_day: int | None = None,
    ) -> CreditResult:
        """See ``PaymentStore.credit_transfers``: transfers and cursor in ONE transaction.

        Fenced like every write (``PostgresCore._write``), with ``FOR UPDATE``: the cursor
        row is updated here, and two instances' credits must not both hold a share lock on
        it and then deadlock upgrading it.
        """
        incoming = {t.txid: t for t in transfers}

        async def work(db: asyncpg.Connection) -> CreditResult:
            fresh = await _insert_fresh_transfers(db, incoming, now)
            per_pid = credits_per_pid(fresh, price_per_day)
            if per_pid:
                columns = list(zip(*((pid, c.txid, c.amount, c.first_height, c.seconds)
                                     for pid, c in sorted(per_pid.items()))))
                await db.execute(
                    f"""INSERT INTO payments AS p
                           (pid, txid, amount, first_height, created_at, seconds)
                       SELECT pid, txid, amount, first_height, $6, seconds
                       FROM unnest($1::bytea[], $2::bytea[], $3::bigint[], $4::bigint[],
                                   $5::bigint[]) AS n(pid, txid, amount, first_height, seconds)
                       ORDER BY pid
                       ON CONFLICT (pid) DO UPDATE SET
                           amount = p.amount + excluded.amount,
                           txid = CASE WHEN p.status = 0
                                        AND (excluded.first_height, excluded.txid)
                                            < (p.first_height, p.txid)
                                       THEN excluded.txid ELSE p.txid END,
                           first_height = LEAST(p.first_height, excluded.first_height),
                           seconds = CASE WHEN p.seconds IS NULL OR excluded.seconds IS NULL
                                          THEN NULL
                                          ELSE LEAST(LEAST(p.seconds, {MAX_CREDIT_SECONDS})
                                                     + excluded.seconds,
                                                     {MAX_CREDIT_SECONDS}) END""",
                    *map(list, columns), now)
            owners = await _owners(db, incoming.values())
            topped_up, added = await _top_up_claimed(db, owners, per_pid, now)
            if added and self.outbox is not None:  # nothing per row unless a token grew
                await self.outbox.add(db, _topped_up_events(topped_up, added), now)
            stored = await _stored_rows(db, {token for _, token in owners}, topped_up)
            if scanned_height is not None:
                await db.execute("UPDATE monitor_state SET scanned_height = $1 WHERE id = 1",
                                 scanned_height)
            return CreditResult(list(per_pid), topped_up, len(fresh), stored)

        return await self._write(work, fence="FOR UPDATE")

    async def get_cursor(self) -> int | None:
        rows = await self._read("SELECT scanned_height FROM monitor_state WHERE id = 1")
        return rows[0][0] if rows else None

    async def load_pid_prefixes(self) -> array:
        return await self._load_prefixes("payments", "pid")

    async def load_plain_pid_prefixes(self) -> array:
        return await self._load_prefixes("payments", "pid", "WHERE plain_pid_ok = 1")


async def _insert_fresh_transfers(
    db: asyncpg.Connection, incoming: dict[bytes, Transfer], now: int
) -> list[Transfer]:
    """Insert the transfers not stored yet, in txid order; return those (RETURNING names
    exactly the rows inserted, so a rescan costs no lookup and no undo)."""
    if not incoming:
        return []
    in_order = [incoming[txid] for txid in sorted(incoming)]
    inserted = await db.fetch(
        """INSERT INTO transfers (txid, pid, amount, height, credited_at)
           SELECT txid, pid, amount, height, $5
           FROM unnest($1::bytea[], $2::bytea[], $3::bigint[], $4::bigint[])
                AS n(txid, pid, amount, height)
           ORDER BY txid
           ON CONFLICT (txid) DO NOTHING RETURNING txid""",
        [t.txid for t in in_order], [t.pid.raw for t in in_order],
        [t.amount for t in in_order], [t.height for t in in_order], now)
    if len(inserted) == len(in_order):
        return in_order
    fresh = {row[0] for row in inserted}
    return [t for t in in_order if t.txid in fresh]


async def _owners(db: asyncpg.Connection, transfers: Iterable[Transfer]
                  ) -> list[tuple[bytes, bytes]]:
    """(pid, token) for every PID of ``transfers`` claimed onto a token (see
    ``storage.payments._owners``: fresh credit or not)."""
    pids = sorted({t.pid.raw for t in transfers})
    if not pids:
        return []
    rows = await db.fetch(
        "SELECT pid, token FROM payments WHERE token IS NOT NULL AND pid = ANY($1::bytea[])",
        pids)
    return [(pid, token) for pid, token in rows]


async def _stored_rows(db: asyncpg.Connection, tokens: set[bytes],
                       topped_up: dict[bytes, TokenRow]) -> dict[bytes, TokenRow]:
    """The rows of ``tokens``: those ``topped_up`` already holds, the rest read."""
    stored = {token: topped_up[token] for token in tokens if token in topped_up}
    rest = sorted(tokens - stored.keys())
    if rest:
        rows = await db.fetch(
            f"SELECT {TOKEN_COLUMNS} FROM service_tokens WHERE token = ANY($1::bytea[])", rest)
        stored.update((row[0], TokenRow(*row)) for row in rows)
    return stored


async def _top_up_claimed(
    db: asyncpg.Connection, owners: list[tuple[bytes, bytes]],
    per_pid: dict[bytes, PidCredit], now: int
) -> tuple[dict[bytes, TokenRow], dict[bytes, int]]:
    """Move new credit of claimed PIDs onto their tokens, all tokens in one statement;
    returns each token's row afterwards and the piconero it gained."""
    deltas = credits_per_token([(pid, token) for pid, token in owners if pid in per_pid],
                               per_pid)
    if not deltas:
        return {}, {}
    ordered = sorted(deltas)
    rows = await db.fetch(
        f"""UPDATE service_tokens AS t SET amount = t.amount + n.amount,
                   expires_at = {_extend_expiry('n.seconds', '$4::bigint')},
                   expired_notified = 0
            FROM unnest($1::bytea[], $2::bigint[], $3::bigint[]) AS n(token, amount, seconds)
            WHERE t.token = n.token
            RETURNING {_TOKEN_T}""",
        ordered, [deltas[t][0] for t in ordered], [deltas[t][1] for t in ordered], now)
    return ({row[0]: TokenRow(*row) for row in rows},
            {token: amount for token, (amount, _) in deltas.items()})
