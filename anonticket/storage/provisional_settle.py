"""What a confirmed credit does to provisional credits on SQLite (``credit_transfers``
calls in here inside its transaction): a transfer credited provisionally becomes final
without being credited twice; one withdrawn and mined after all is credited again, once.
"""

from __future__ import annotations

import aiosqlite

from anonticket.domain.ids import Transfer
from anonticket.storage.core import chunks, marks
from anonticket.storage.provisional_rules import FINAL, PROVISIONAL
from anonticket.storage.rows import TOKEN_COLUMNS, TokenRow


async def settle_provisional(db: aiosqlite.Connection, fresh: list[Transfer], now: int
                             ) -> tuple[list[Transfer], dict[bytes, int]]:
    """Inside ``credit_transfers``, for the transfers just stored as confirmed: a
    provisional one becomes final (its credit is already in payments and its token, so it
    is not credited again), a withdrawn one becomes final and is credited again as a new
    transfer (once: the trigger allows 1 → 2 once). Returns the transfers still to credit
    and, per PID, what its withdrawn credits had left unrecovered, which the re-credit
    must not give twice (``restore_unrecovered``)."""
    if not fresh:
        return fresh, {}
    if not await db.execute_fetchall("SELECT 1 FROM provisional_credits LIMIT 1"):
        return fresh, {}  # the feature never used: one probe of an empty table
    found: dict[bytes, tuple[bytes, int, int, int]] = {}
    for chunk in chunks([t.txid for t in fresh]):
        rows = await db.execute_fetchall(
            f"""SELECT txid, pid, amount, state, unrecovered FROM provisional_credits
                WHERE state != {FINAL} AND txid IN ({marks(len(chunk))})""", chunk)
        found.update((txid, (pid, amount, state, unrecovered))
                     for txid, pid, amount, state, unrecovered in rows)
    if not found:
        return fresh, {}
    losses: dict[bytes, int] = {}
    for txid in sorted(found):
        pid, amount, state, unrecovered = found[txid]
        await db.execute(
            f"UPDATE provisional_credits SET state = {FINAL}, final_at = ? WHERE txid = ?",
            (now, txid))
        if state == PROVISIONAL:
            await db.execute(
                "UPDATE provisional_outstanding SET amount = amount - ? WHERE id = 1", (amount,))
            token_rows = await db.execute_fetchall(
                "UPDATE payments SET provisional = provisional - 1 WHERE pid = ? RETURNING token",
                (pid,))
            token = token_rows[0][0]
            if token is not None:
                await db.execute(
                    "UPDATE service_tokens SET provisional = provisional - 1 WHERE token = ?",
                    (token,))
        elif unrecovered:
            losses[pid] = losses.get(pid, 0) + unrecovered
    settled = {txid for txid, (_, _, state, _) in found.items() if state == PROVISIONAL}
    return [t for t in fresh if t.txid not in settled], losses


async def restore_unrecovered(db: aiosqlite.Connection, losses: dict[bytes, int],
                              rows: dict[bytes, TokenRow]) -> None:
    """After a withdrawn credit was credited again in full: what it had left unrecovered
    stayed on the token all along (the balance never went below zero), so that much of the
    re-credit is taken back off ``amount`` and out of ``lost``; ``rows`` (token → row) is
    updated in place."""
    for pid, unrecovered in sorted(losses.items()):
        owner = await db.execute_fetchall("SELECT token FROM payments WHERE pid = ?", (pid,))
        token = owner[0][0] if owner else None
        if token is None:
            continue
        updated = await db.execute_fetchall(
            f"""UPDATE service_tokens SET amount = amount - ?1, lost = lost - ?1
                WHERE token = ?2 RETURNING {TOKEN_COLUMNS}""", (unrecovered, token))
        rows[token] = TokenRow(*updated[0])
