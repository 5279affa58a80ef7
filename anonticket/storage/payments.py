"""Payments and claims: crediting the wallet's transfers, redeeming a PID or a receipt, top-ups.

A payment row sums a PID's credited transfers. Claiming it (a redeem) issues its token;
a top-up claims it onto an existing token instead. Either way ``payments.token`` then
names the token its credit belongs to, so a later transfer to the same PID tops that
token up in the monitor's own transaction.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Sequence

import aiosqlite

from anonticket.domain.ids import Transfer
from anonticket.storage.core import StorageCore, chunks, marks
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
from anonticket.storage.events import Event, issued_event, topped_up_event
from anonticket.storage.rows import TOKEN_COLUMNS, ClaimRow, CreditResult, TokenRow, TopupOutcome
from anonticket.domain.timestamp import MAX_CREDIT_SECONDS, MAX_TIMESTAMP

# From this many transfers in one credit, COMMIT leaves the WAL copy to the background
# checkpointer (anonticket/storage/wal_checkpoint.py); smaller ones checkpoint as usual.
BULK_CREDIT_TRANSFERS = 1000

# expires_at after crediting ``?1`` more seconds at time ``?2``: the clock restarts from
# now for an expired token; a token without a time limit, or a credit that buys unlimited
# time (NULL seconds: no price was in force), has none afterwards. Never past the horizon
# (ledger_rules.expiry_after), and clamped inside too, so that a row stored before the cap
# existed cannot make the sum overflow
_EXTEND_EXPIRY = f"""CASE WHEN expires_at IS NULL OR ?1 IS NULL THEN NULL
                          ELSE min(max(min(expires_at, {MAX_TIMESTAMP}), ?2)
                                   + min(?1, {MAX_CREDIT_SECONDS}), {MAX_TIMESTAMP}) END"""


class PaymentStore(StorageCore):
    # ------------------------------------------------------------------ redeem
    async def claim_payments(
        self, claims: Sequence[Claim], min_amount: int, now: int, *, refuse_plain: bool = False
    ) -> dict[Claim, ClaimRow]:
        """Claim every given payment whose confirmed total reaches ``min_amount``, in one
        transaction. A claim is a bare PID (32 raw bytes; its token is ``SHA3(pid|txid)``)
        or a ``Receipt`` (its PID's payment; the token derives from the receipt, here,
        and the receipt is not stored). With ``refuse_plain`` a bare PID reaches only a
        payment marked ``plain_pid_ok`` and finds no other (REDEEM_PLAIN_PIDS=refuse).

        The conditional UPDATE is the exactly-one-winner guard: a PID already claimed
        (by this batch's predecessor, a top-up, anyone) is not returned by RETURNING, so
        only one caller ever sees ``claimed_now``; within a batch a receipt claim of a PID
        goes before a bare one. Absent payments are absent from the result, which is
        keyed by the claims as given. The clock of a time-limited token starts here, at
        issue, not when it was paid.
        """
        plan = plan_claims(claims)
        result: dict[Claim, ClaimRow] = {}
        async with self._transaction() as db:
            for pids, only_plain in ((plan.by_receipt, False), (plan.plain, refuse_plain)):
                for chunk in chunks(sorted(pids)):
                    claimed = await db.execute_fetchall(
                        f"""UPDATE payments SET status = 1, claimed_at = ?
                            WHERE status = 0 AND amount >= ? AND pid IN ({marks(len(chunk))})
                                  {"AND plain_pid_ok = 1" if only_plain else ""}
                            RETURNING pid, txid, amount, seconds""",
                        (now, min_amount, *chunk),
                    )
                    tokens, links, records = [], [], []
                    for pid, txid, amount, seconds in claimed:
                        claim = plan.claimant(pid)
                        token = claim_token(claim, pid, txid)
                        expires_at = expiry_after(now, seconds)
                        tokens.append((token, pid, amount, now, expires_at))
                        links.append((token, pid))
                        record = TokenRow(token, amount, now, None, None, 0, 0, expires_at)
                        records.append(record)
                        result[claim] = ClaimRow(1, amount, token, claimed_now=True, record=record)
                    if tokens:
                        await db.executemany(
                            """INSERT INTO service_tokens (token, pid, amount, issued_at, expires_at)
                               VALUES (?, ?, ?, ?, ?)""",
                            tokens,
                        )
                        await db.executemany("UPDATE payments SET token = ? WHERE pid = ?", links)
                        if self.outbox is not None:
                            await self.outbox.add(db, map(issued_event, records), now)
            rest = [claim for claim in claims if claim not in result]
            found: dict[bytes, tuple[int, ClaimRow]] = {}
            for chunk in chunks(sorted({claim_pid(claim) for claim in rest})):
                rows = await db.execute_fetchall(
                    f"""SELECT p.pid, p.plain_pid_ok, p.status, p.amount,
                               {_prefixed('t', TOKEN_COLUMNS)}
                        FROM payments AS p LEFT JOIN service_tokens AS t ON t.token = p.token
                        WHERE p.pid IN ({marks(len(chunk))})""",
                    chunk,
                )
                for pid, plain_pid_ok, status, amount, *token_columns in rows:
                    found[pid] = plain_pid_ok, claim_row(status, amount, token_columns)
            for claim in rest:
                row = visible_row(claim, found.get(claim_pid(claim)), refuse_plain)
                if row is not None:
                    result[claim] = row
        return result

    async def get_claim(self, pid: bytes, *, refuse_plain: bool = False) -> ClaimRow | None:
        """A PID's state without claiming it (the checkout's status page reads this).
        ``refuse_plain``: the PID was given bare, so only a payment marked ``plain_pid_ok``
        is seen (``claim_payments``)."""
        rows = await self._read(
            f"""SELECT p.plain_pid_ok, p.status, p.amount, {_prefixed('t', TOKEN_COLUMNS)}
                FROM payments AS p LEFT JOIN service_tokens AS t ON t.token = p.token
                WHERE p.pid = ?""",
            (pid,),
        )
        for plain_pid_ok, status, amount, *token_columns in rows:
            if refuse_plain and not plain_pid_ok:
                return None
            return claim_row(status, amount, token_columns)
        return None

    async def topup_token(
        self, token: bytes, pid: bytes, min_amount: int, now: int, *, refuse_plain: bool = False
    ) -> TopupOutcome:
        """Claim a paid PID onto an existing token: its credit and the time it bought move
        onto the token in one transaction, or nothing changes. ``refuse_plain``: the PID
        was given bare, so a payment not marked ``plain_pid_ok`` is not seen.

        A retry of the same top-up finds the PID already on this token and answers as
        the first time did; on any other token it is ``pid_already_claimed``.
        """
        async with self._transaction() as db:
            found = await db.execute_fetchall(
                f"SELECT pid, {TOKEN_COLUMNS} FROM service_tokens WHERE token = ?", (token,))
            if not found:
                return TopupOutcome("token_not_found")
            own_pid, *columns = found[0]
            record = TokenRow(*columns)
            payment = await db.execute_fetchall(
                "SELECT status, amount, seconds, token, plain_pid_ok FROM payments WHERE pid = ?",
                (pid,))
            if not payment or (refuse_plain and not payment[0][4]):
                return TopupOutcome("pending_or_unknown")
            status, amount, seconds, owner, _ = payment[0]
            refused = refuse_topup(token, own_pid, record, pid, status, amount, owner, min_amount)
            if refused is not None:
                return refused
            await db.execute(
                "UPDATE payments SET status = 1, claimed_at = ?, token = ? WHERE pid = ?",
                (now, token, pid))
            updated = await db.execute_fetchall(
                f"""UPDATE service_tokens SET amount = amount + ?3, expires_at = {_EXTEND_EXPIRY},
                           expired_notified = 0
                    WHERE token = ?4 RETURNING {TOKEN_COLUMNS}""",
                (seconds, now, amount, token))
            topped = TokenRow(*updated[0])
            if self.outbox is not None:
                await self.outbox.add(db, [topped_up_event(topped, amount)], now)
        return TopupOutcome("topped_up", amount, topped)

    # ------------------------------------------------------------------ monitor
    async def credit_transfers(
        self, transfers: Iterable[Transfer], scanned_height: int | None, now: int,
        price_per_day: int | None = None,
    ) -> CreditResult:
        """Credit confirmed transfers and move the cursor in ONE transaction.

        A crash before COMMIT loses both, after it keeps both, so the next poll neither
        misses nor double-counts. Transfers already stored (same txid) are skipped, which
        makes re-scanning an overlapping window harmless. Each transfer buys time at
        ``price_per_day``, the price in force now; a claimed PID's token is topped up.
        """
        incoming = {t.txid: t for t in transfers}
        # a bulk credit rewrites pages all over the tables: its WAL copy goes to the background
        bulk = len(incoming) >= BULK_CREDIT_TRANSFERS
        async with self._transaction(checkpoint_later=bulk) as db:
            # every list below is sorted by the key its statement walks: consecutive rows
            # then land in the same B-tree pages, which is most of the cost on a big table
            fresh = await _insert_fresh_transfers(db, incoming, now)
            per_pid = credits_per_pid(fresh, price_per_day)  # one row per PID
            payments = [(pid, c.txid, c.amount, c.first_height, now, c.seconds)
                        for pid, c in sorted(per_pid.items())]
            await db.executemany(
                f"""INSERT INTO payments (pid, txid, amount, first_height, created_at, seconds)
                   VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                   ON CONFLICT (pid) DO UPDATE SET
                       amount = amount + excluded.amount,
                       txid = CASE WHEN status = 0
                                    AND (excluded.first_height, excluded.txid) < (first_height, txid)
                                   THEN excluded.txid ELSE txid END,
                       first_height = min(first_height, excluded.first_height),
                       seconds = CASE WHEN seconds IS NULL OR excluded.seconds IS NULL THEN NULL
                                      ELSE min(min(seconds, {MAX_CREDIT_SECONDS})
                                               + excluded.seconds, {MAX_CREDIT_SECONDS}) END""",
                payments,
            )
            owners = await _owners(db, incoming.values())
            topped_up, added = await _top_up_claimed(db, owners, per_pid, now)
            if added and self.outbox is not None:  # nothing per row unless a token grew
                await self.outbox.add(db, _topped_up_events(topped_up, added), now)
            stored = await _stored_rows(db, {token for _, token in owners}, topped_up)
            if scanned_height is not None:
                await db.execute(
                    "UPDATE monitor_state SET scanned_height = ? WHERE id = 1", (scanned_height,)
                )
        return CreditResult(list(per_pid), topped_up, len(fresh), stored)

    async def get_cursor(self) -> int | None:
        rows = await self._read("SELECT scanned_height FROM monitor_state WHERE id = 1")
        return rows[0][0] if rows else None

    async def load_pid_prefixes(self) -> array:
        return await self._load_prefixes("SELECT substr(pid, 1, 8) FROM payments ORDER BY pid")

    async def load_plain_pid_prefixes(self) -> array:
        """The prefixes of the payments a bare PID may claim under REDEEM_PLAIN_PIDS=refuse:
        a set fixed by the migration to version 5 (nothing marks a payment later)."""
        return await self._load_prefixes(
            "SELECT substr(pid, 1, 8) FROM payments WHERE plain_pid_ok = 1 ORDER BY pid")


async def _owners(db: aiosqlite.Connection, transfers: Iterable[Transfer]
                  ) -> list[tuple[bytes, bytes]]:
    """(pid, token) for every PID of ``transfers`` that is claimed onto a token: those with
    fresh credit, whose token it tops up, and the others, whose token the ledger refreshes
    all the same (``CreditResult.stored``). Normally the two sets are one (a poll's transfers
    are new); only a re-read (a retry, the rescan margin) asks for more."""
    owners: list[tuple[bytes, bytes]] = []
    for chunk in chunks(sorted({t.pid.raw for t in transfers})):
        owners += await db.execute_fetchall(
            f"""SELECT pid, token FROM payments
                WHERE token IS NOT NULL AND pid IN ({marks(len(chunk))})""",
            chunk,
        )
    return owners


async def _stored_rows(db: aiosqlite.Connection, tokens: set[bytes],
                       topped_up: dict[bytes, TokenRow]) -> dict[bytes, TokenRow]:
    """The rows of ``tokens``: those ``topped_up`` already holds, the rest read."""
    stored = {token: topped_up[token] for token in tokens if token in topped_up}
    for chunk in chunks(sorted(tokens - stored.keys())):
        rows = await db.execute_fetchall(
            f"SELECT {TOKEN_COLUMNS} FROM service_tokens WHERE token IN ({marks(len(chunk))})",
            chunk)
        stored.update((row[0], TokenRow(*row)) for row in rows)
    return stored


async def _top_up_claimed(
    db: aiosqlite.Connection, owners: list[tuple[bytes, bytes]],
    per_pid: dict[bytes, PidCredit], now: int
) -> tuple[dict[bytes, TokenRow], dict[bytes, int]]:
    """Move new credit of claimed PIDs onto their tokens (several PIDs may share one);
    returns each token's row afterwards and the piconero it gained."""
    deltas = credits_per_token([(pid, token) for pid, token in owners if pid in per_pid],
                               per_pid)
    topped_up: dict[bytes, TokenRow] = {}
    for token in sorted(deltas):
        amount, bought = deltas[token]
        rows = await db.execute_fetchall(
            f"""UPDATE service_tokens SET amount = amount + ?3, expires_at = {_EXTEND_EXPIRY},
                       expired_notified = 0
                WHERE token = ?4 RETURNING {TOKEN_COLUMNS}""",
            (bought, now, amount, token),
        )
        topped_up[token] = TokenRow(*rows[0])
    return topped_up, {token: amount for token, (amount, _) in deltas.items()}


def _topped_up_events(rows: dict[bytes, TokenRow], added: dict[bytes, int]) -> list[Event]:
    return [topped_up_event(rows[token], added[token]) for token in sorted(added)]


async def _insert_fresh_transfers(
    db: aiosqlite.Connection, incoming: dict[bytes, Transfer], now: int
) -> list[Transfer]:
    """Insert the transfers not stored yet, in txid order (their key); return those.

    Optimistic: a poll's transfers are nearly always all new, so they are inserted in one
    pass and the count of inserted rows says whether that was so. Only when some txid was
    already stored (a rescan after a restart, a reorg) is the pass undone and the stored
    ones looked up first; that lookup would otherwise cost every poll ~5 % of its time.
    """
    in_txid_order = [incoming[txid] for txid in sorted(incoming)]
    rows = [(t.txid, t.pid.raw, t.amount, t.height, now) for t in in_txid_order]
    await db.execute("SAVEPOINT fresh_transfers")
    before = db.total_changes
    await db.executemany(
        "INSERT INTO transfers (txid, pid, amount, height, credited_at) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT (txid) DO NOTHING", rows)
    if db.total_changes - before == len(rows):
        await db.execute("RELEASE fresh_transfers")
        return in_txid_order
    await db.execute("ROLLBACK TO fresh_transfers")
    await db.execute("RELEASE fresh_transfers")
    known: set[bytes] = set()
    for chunk in chunks([t.txid for t in in_txid_order]):
        found = await db.execute_fetchall(
            f"SELECT txid FROM transfers WHERE txid IN ({marks(len(chunk))})", chunk)
        known.update(txid for (txid,) in found)
    await db.executemany(
        "INSERT INTO transfers (txid, pid, amount, height, credited_at) VALUES (?, ?, ?, ?, ?)",
        [row for row in rows if row[0] not in known])
    return [t for t in in_txid_order if t.txid not in known]


def _prefixed(alias: str, columns: str) -> str:
    return ", ".join(f"{alias}.{column.strip()}" for column in columns.split(","))
