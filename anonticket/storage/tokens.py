"""Tokens: introspection, revocation with its audit trail, and debits.

Debits of concurrent requests arrive in batches (``Ledger``'s batcher) and each batch is
one transaction: the tokens and keys it touches are read in one statement, every debit
is decided in order in Python (``ledger_rules.plan_debits``, shared with PostgreSQL)
against the balance as the earlier ones left it, and the results are written in three
statements. Inside ``BEGIN IMMEDIATE`` nothing else writes, so what was read stays true
until COMMIT; the CHECK on ``spent <= amount`` is the last guard.
"""

from __future__ import annotations

import json
import sqlite3
from array import array
from collections.abc import Iterable, Sequence
from typing import Any

import aiosqlite

from anonticket.storage.core import StorageCore, chunks
from anonticket.storage.ledger_rules import Answers, DebitPlan, plan_debits
from anonticket.storage.events import expired_event, revoked_event
from anonticket.storage.rows import TOKEN_COLUMNS, DebitOutcome, DebitRequest, TokenRow

_RECENT_DEBITS = 20
# tokens marked per expiry-sweep transaction: a burst of expiries never holds the write
# lock for long; the sweep repeats until none is left
EXPIRY_SWEEP_BATCH = 1000


class TokenStore(StorageCore):
    async def get_token(self, token: bytes) -> TokenRow | None:
        rows = await self._read(
            f"SELECT {TOKEN_COLUMNS} FROM service_tokens WHERE token = ?", (token,))
        return TokenRow(*rows[0]) if rows else None

    async def revoke_token(
        self, token: bytes, reason: str | None, abuse_score: int | None, now: int
    ) -> TokenRow | None:
        """Revoke idempotently: the first revocation's time and reason stay; every call is
        audited. Only the first one changes the token's state, so only it writes a
        ``token.revoked`` event; a later raised abuse score shows in introspection."""
        async with self._transaction() as db:
            first = False
            if self.outbox is not None:
                before = await db.execute_fetchall(
                    "SELECT revoked_at FROM service_tokens WHERE token = ?", (token,))
                first = bool(before) and before[0][0] is None
            rows = await db.execute_fetchall(
                f"""UPDATE service_tokens SET
                       revoke_reason = CASE WHEN revoked_at IS NULL THEN ?1 ELSE revoke_reason END,
                       revoked_at = coalesce(revoked_at, ?2),
                       abuse_score = CASE WHEN ?3 IS NULL THEN abuse_score
                                          ELSE max(abuse_score, ?3) END
                   WHERE token = ?4
                   RETURNING {TOKEN_COLUMNS}""",
                (reason, now, abuse_score, token),
            )
            if not rows:
                return None
            await db.execute(
                """INSERT INTO audit_log (at, action, token, reason, abuse_score)
                   VALUES (?, 'revoke', ?, ?, ?)""",
                (now, token, reason, abuse_score),
            )
            record = TokenRow(*rows[0])
            if first and self.outbox is not None:
                await self.outbox.add(db, [revoked_event(record)], now)
        return record

    async def notice_expired_tokens(self, now: int) -> int:
        """Mark up to ``EXPIRY_SWEEP_BATCH`` tokens whose time ran out by ``now`` as noticed,
        with a ``token.expired`` event each (none for a revoked one: revoked wins), in one
        transaction; returns how many were marked. A probe on the reader first: the sweep
        runs every few seconds and must not take the write lock for nothing."""
        probe = await self._read(
            """SELECT 1 FROM service_tokens
               WHERE expired_notified = 0 AND expires_at IS NOT NULL AND expires_at <= ? LIMIT 1""",
            (now,))
        if not probe:
            return 0
        async with self._transaction() as db:
            rows = await db.execute_fetchall(
                """UPDATE service_tokens SET expired_notified = 1
                   WHERE token IN (SELECT token FROM service_tokens
                                   WHERE expired_notified = 0 AND expires_at IS NOT NULL
                                     AND expires_at <= ? LIMIT ?)
                   RETURNING token, expires_at, revoked_at""",
                (now, EXPIRY_SWEEP_BATCH))
            if self.outbox is not None:
                await self.outbox.add(db, [expired_event(token, expires_at)
                                           for token, expires_at, revoked_at in sorted(rows)
                                           if revoked_at is None], now)
        return len(rows)

    async def list_revoked_since(self, since: int) -> list[tuple[bytes, int]]:
        """(token, revoked_at) of every token revoked at or after ``since``, oldest first:
        what a start or a takeover reads to refuse those tokens' credentials at once
        (their partial index holds revoked tokens only)."""
        rows = await self._read(
            """SELECT token, revoked_at FROM service_tokens
               WHERE revoked_at IS NOT NULL AND revoked_at >= ? ORDER BY revoked_at, token""",
            (since,))
        return [(token, revoked_at) for token, revoked_at in rows]

    async def list_audit(self, token: bytes) -> list[dict[str, object]]:
        rows = await self._read(
            """SELECT at, action, reason, abuse_score FROM audit_log
               WHERE token = ? ORDER BY id""",
            (token,),
        )
        return [{"at": at, "action": a, "reason": r, "abuse_score": s} for at, a, r, s in rows]

    async def list_debits(self, token: bytes, limit: int = _RECENT_DEBITS) -> list[dict[str, Any]]:
        """The token's most recent debits, newest first."""
        rows = await self._read(
            """SELECT id, amount, memo, at FROM debits WHERE token = ?
               ORDER BY id DESC LIMIT ?""",
            (token, limit),
        )
        return [{"debit_id": i, "amount": a, "memo": m, "at": at} for i, a, m, at in rows]

    async def load_token_prefixes(self) -> array:
        # ORDER BY pins the primary-key scan: the planner may otherwise pick the smaller
        # UNIQUE(pid) index, which covers the token too but yields pid order
        return await self._load_prefixes(
            "SELECT substr(token, 1, 8) FROM service_tokens ORDER BY token"
        )

    # ------------------------------------------------------------------ debits
    # The fast path: BEGIN, the batch's read, decision and writes, and COMMIT as ONE call
    # on the writer's thread (StorageCore._in_one_call), so a batch costs one round trip
    # instead of six. Each round trip costs ~80 µs of CPU on the benchmark machine (a
    # thread switch each way, then a wake-up of the event loop): doing the statements in
    # one call took the server's median CPU per debit from 201 to 177 µs, and BEGIN and
    # COMMIT in it too saved a little more (docs/benchmarks.md).
    # False takes the general path, statement by statement through aiosqlite's public
    # API; tests/storage/test_debit_queries.py proves the two agree.
    debits_in_one_call = True

    async def apply_debits(self, requests: Sequence[DebitRequest], now: int) -> list[DebitOutcome]:
        """Decide and apply a batch of debits in one transaction, in the order given.

        Per (token, key) the first answer is stored with a digest of its request: the same
        request again replays it, another one is a 422 conflict. Refusals are stored and
        replayed too; an unknown token is not (it has no scope to keep a key in).
        """
        scopes = _scopes(requests)
        if self.debits_in_one_call:
            return await self._in_one_call(_apply_sync, requests, scopes, now)
        async with self._transaction() as db:
            records, answers, last_id = {}, {}, 0
            for chunk in chunks(scopes):
                rows = await db.execute_fetchall(batch_read_sql(len(chunk)), _flat(chunk))
                last_id = _collect(rows, records, answers)
            plan = plan_debits(requests, records, answers, now)
            debit_rows, spent_rows, key_rows = _rows(plan, last_id, now)
            if debit_rows:
                await db.executemany(_INSERT_DEBITS, debit_rows)
                await db.executemany(_UPDATE_SPENT, spent_rows)
            if key_rows:
                await db.executemany(_INSERT_KEYS, key_rows)
        return plan.outcomes

    async def prune_idempotency_keys(self, older_than: int) -> int:
        """Forget answers stored before ``older_than``; returns how many."""
        async with self._transaction() as db:
            cursor = await db.execute(
                "DELETE FROM idempotency_keys WHERE created_at < ?", (older_than,))
            return cursor.rowcount


def batch_read_sql(count: int) -> str:
    """Everything a batch of ``count`` (token, key) pairs is decided on, in ONE statement:
    each pair's token row (NULLs if unknown), its stored answer (NULLs if none) and the
    last debit id. Each aiosqlite call is a round trip to its thread, ~80 µs of CPU here
    (docs/benchmarks.md); three reads cost three.

    Both joins are key probes driven by the VALUES list (a LEFT JOIN keeps it the outer
    loop): the token's primary key and the keys' UNIQUE (token, key) index. Not
    ``WHERE (token, key) IN (VALUES …)``: SQLite (3.40) plans that row-value IN as a scan
    of every key kept, 10 ms a batch with 45k keys stored.
    """
    pairs = ",".join(["(?, ?)"] * count)
    return f"""WITH wanted (token, key) AS (VALUES {pairs})
               SELECT w.token, w.key, k.request, k.status, k.body,
                      (SELECT coalesce(max(id), 0) FROM debits), {_prefixed_tokens}
               FROM wanted AS w
               LEFT JOIN service_tokens AS t ON t.token = w.token
               LEFT JOIN idempotency_keys AS k ON k.token = w.token AND k.key = w.key"""


_prefixed_tokens = ", ".join(f"t.{column.strip()}" for column in TOKEN_COLUMNS.split(","))


_INSERT_DEBITS = "INSERT INTO debits (id, token, amount, memo, at) VALUES (?, ?, ?, ?, ?)"
_UPDATE_SPENT = "UPDATE service_tokens SET spent = ? WHERE token = ?"
_INSERT_KEYS = """INSERT INTO idempotency_keys (token, key, request, status, body, created_at)
                  VALUES (?, ?, ?, ?, ?, ?)"""


def _scopes(requests: Sequence[DebitRequest]) -> list[tuple[bytes, str | None]]:
    # a request without a key still needs its token; (token, NULL) matches no stored key
    return sorted({(r.token, r.key) for r in requests}, key=lambda s: (s[0], s[1] or ""))


def _flat(chunk: Sequence[tuple[bytes, str | None]]) -> list[object]:
    return [value for scope in chunk for value in scope]


def _collect(rows: Iterable[Sequence[Any]], records: dict[bytes, TokenRow],
             answers: Answers) -> int:
    """File the rows of ``batch_read_sql``; returns the last debit id."""
    last_id = 0
    for token, key, digest, status, body, last_id, *columns in rows:
        if columns[0] is not None:
            records[token] = TokenRow(*columns)
        if digest is not None:
            answers[(token, key)] = (digest, status, json.loads(body))
    return last_id


def _rows(plan: DebitPlan, last_id: int, now: int
          ) -> tuple[list[tuple[Any, ...]], list[tuple[int, bytes]], list[tuple[Any, ...]]]:
    """The plan's debits (numbered on from the last id: inside BEGIN IMMEDIATE nobody else
    can take one), spent values and stored answers, as the three statements' rows."""
    plan.number(range(last_id + 1, last_id + 1 + len(plan.applied)))
    debit_rows = [(body["debit_id"], r.token, r.amount, r.memo, now) for r, body in plan.applied]
    spent_rows = [(value, token) for token, value in sorted(plan.spent.items())]
    key_rows = [(r.token, r.key, r.request_digest, status, _stored_body(status, body), now)
                for r, status, body in plan.keyed]
    return debit_rows, spent_rows, key_rows


def _stored_body(status: int, body: dict[str, Any]) -> str:
    """The answer as stored for its key (read back with json.loads): a granted debit's
    four numbers formatted directly, a refusal through the encoder (it is rarer, and its
    fields vary)."""
    if status != 200:
        return json.dumps(body)
    expires_at = body["expires_at"]
    return (f'{{"debit_id": {int(body["debit_id"])}, "amount": {int(body["amount"])}, '
            f'"remaining": {int(body["remaining"])}, '
            f'"expires_at": {"null" if expires_at is None else int(expires_at)}}}')


def _apply_sync(conn: sqlite3.Connection, requests: Sequence[DebitRequest],
                scopes: list[tuple[bytes, str | None]], now: int) -> list[DebitOutcome]:
    """The general path's statements, on the writer's thread in one call (fast path)."""
    records: dict[bytes, TokenRow] = {}
    answers: Answers = {}
    last_id = 0
    for chunk in chunks(scopes):
        last_id = _collect(conn.execute(batch_read_sql(len(chunk)), _flat(chunk)).fetchall(),
                           records, answers)
    plan = plan_debits(requests, records, answers, now)
    debit_rows, spent_rows, key_rows = _rows(plan, last_id, now)
    if debit_rows:
        conn.executemany(_INSERT_DEBITS, debit_rows)
        conn.executemany(_UPDATE_SPENT, spent_rows)
    if key_rows:
        conn.executemany(_INSERT_KEYS, key_rows)
    return plan.outcomes
