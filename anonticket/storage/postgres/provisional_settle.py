"""What a confirmed credit does to provisional credits on PostgreSQL, inside
``credit_transfers``'s transaction (see ``storage.provisional_settle``)."""

from __future__ import annotations

import asyncpg

from anonticket.domain.ids import Transfer
from anonticket.storage.postgres.core import column_list
from anonticket.storage.provisional_rules import FINAL, PROVISIONAL
from anonticket.storage.rows import TOKEN_COLUMNS, TokenRow

_TOKEN_T = column_list(TOKEN_COLUMNS, "t")
# taken first by every transaction that changes provisional credit: they take turns
LOCK_OUTSTANDING = "SELECT amount FROM provisional_outstanding WHERE id = 1 FOR UPDATE"


async def settle_provisional(db: asyncpg.Connection, fresh: list[Transfer], now: int
                             ) -> tuple[list[Transfer], dict[bytes, int]]:
    """See ``storage.provisional_settle.settle_provisional``."""
    if not fresh:
        return fresh, {}
    if not await db.fetchval("SELECT EXISTS (SELECT 1 FROM provisional_credits)"):
        return fresh, {}
    rows = await db.fetch(
        f"""SELECT txid, pid, amount, state, unrecovered FROM provisional_credits
            WHERE state != {FINAL} AND txid = ANY($1::bytea[]) ORDER BY txid""",
        [t.txid for t in fresh])
    if not rows:
        return fresh, {}
    await db.fetchval(LOCK_OUTSTANDING)
    losses: dict[bytes, int] = {}
    settled: set[bytes] = set()
    for txid, pid, amount, state, unrecovered in rows:
        await db.execute(
            f"UPDATE provisional_credits SET state = {FINAL}, final_at = $1 WHERE txid = $2",
            now, txid)
        if state == PROVISIONAL:
            settled.add(txid)
            await db.execute(
                "UPDATE provisional_outstanding SET amount = amount - $1 WHERE id = 1", amount)
            token = await db.fetchval(
                "UPDATE payments SET provisional = provisional - 1 WHERE pid = $1 RETURNING token",
                pid)
            if token is not None:
                await db.execute(
                    "UPDATE service_tokens SET provisional = provisional - 1 WHERE token = $1",
                    token)
        elif unrecovered:
            losses[pid] = losses.get(pid, 0) + unrecovered
    return [t for t in fresh if t.txid not in settled], losses


async def restore_unrecovered(db: asyncpg.Connection, losses: dict[bytes, int],
                              rows: dict[bytes, TokenRow]) -> None:
    """See ``storage.provisional_settle.restore_unrecovered``."""
    for pid, unrecovered in sorted(losses.items()):
        token = await db.fetchval("SELECT token FROM payments WHERE pid = $1", pid)
        if token is None:
            continue
        row = await db.fetchrow(
            f"""UPDATE service_tokens AS t SET amount = t.amount - $1, lost = t.lost - $1
                WHERE t.token = $2 RETURNING {_TOKEN_T}""", unrecovered, token)
        rows[token] = TokenRow(*row)
