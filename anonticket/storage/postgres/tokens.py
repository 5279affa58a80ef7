"""Tokens on PostgreSQL: introspection, revocation and debits (see ``storage.tokens``).

A debit batch locks its tokens' rows (``FOR UPDATE``, in token order) before it reads
their balances and Idempotency-Keys, so a second process debiting the same token waits
and then reads what the first committed: every decision in Python is made against rows
nobody else can change until COMMIT, as under SQLite's ``BEGIN IMMEDIATE``; the decisions
are the SQLite module's own (``ledger_rules.plan_debits``). Debit ids come from a sequence
instead of ``max(id) + 1``.
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Sequence
from typing import Any

import asyncpg

from anonticket.storage import tokens as sqlite_tokens
from anonticket.storage.ledger_rules import Answers, plan_debits
from anonticket.storage.events import expired_event, revoked_event
from anonticket.storage.postgres.core import PostgresCore, affected, column_list
from anonticket.storage.rows import TOKEN_COLUMNS, DebitOutcome, DebitRequest, TokenRow
from anonticket.storage.tokens import _RECENT_DEBITS

_TOKEN_T = column_list(TOKEN_COLUMNS, "t")


class PgTokenStore(PostgresCore):
    async def get_token(self, token: bytes) -> TokenRow | None:
        rows = await self._read(
            f"SELECT {TOKEN_COLUMNS} FROM service_tokens WHERE token = $1", token)
        return TokenRow(*rows[0]) if rows else None

    async def revoke_token(
        self, token: bytes, reason: str | None, abuse_score: int | None, now: int
    ) -> TokenRow | None:
        """Revoke idempotently: the first revocation's time and reason stay; every call is
        audited; only the first writes a ``token.revoked`` event (see ``TokenStore``)."""

        async def work(db: asyncpg.Connection) -> TokenRow | None:
            first = False
            if self.outbox is not None:
                # locked: of two revocations from two sessions, the second waits here and
                # then reads the first one's revoked_at, so only one writes the event
                before = await db.fetchrow(
                    "SELECT revoked_at FROM service_tokens WHERE token = $1 FOR UPDATE", token)
                first = before is not None and before[0] is None
            row = await db.fetchrow(
                f"""UPDATE service_tokens AS t SET
                       revoke_reason = CASE WHEN t.revoked_at IS NULL THEN $1::text
                                            ELSE t.revoke_reason END,
                       revoked_at = coalesce(t.revoked_at, $2::bigint),
                       abuse_score = CASE WHEN $3::bigint IS NULL THEN t.abuse_score
                                          ELSE GREATEST(t.abuse_score, $3::bigint) END
                   WHERE t.token = $4
                   RETURNING {_TOKEN_T}""",
                reason, now, abuse_score, token)
            if row is None:
                return None
            await db.execute(
                """INSERT INTO audit_log (at, action, token, reason, abuse_score)
                   VALUES ($1, 'revoke', $2, $3, $4)""",
                now, token, reason, abuse_score)
            record = TokenRow(*row)
            if first and self.outbox is not None:
                await self.outbox.add(db, [revoked_event(record)], now)
            return record

        return await self._write(work)

    async def notice_expired_tokens(self, now: int) -> int:
        """See ``TokenStore.notice_expired_tokens``: up to ``EXPIRY_SWEEP_BATCH`` (the SQLite
        module's) per transaction, after a probe that takes no lock. ``SKIP LOCKED``: a
        token a top-up holds right now is left for the next sweep (the top-up may move its
        expiry), and two sweeps at once never mark, or announce, one token twice."""
        probe = await self._read(
            """SELECT 1 FROM service_tokens
               WHERE expired_notified = 0 AND expires_at IS NOT NULL AND expires_at <= $1
               LIMIT 1""",
            now)
        if not probe:
            return 0
        batch = sqlite_tokens.EXPIRY_SWEEP_BATCH

        async def work(db: asyncpg.Connection) -> int:
            rows = await db.fetch(
                """UPDATE service_tokens AS t SET expired_notified = 1
                   FROM (SELECT token FROM service_tokens
                         WHERE expired_notified = 0 AND expires_at IS NOT NULL
                           AND expires_at <= $1
                         ORDER BY token LIMIT $2 FOR UPDATE SKIP LOCKED) AS due
                   WHERE t.token = due.token
                   RETURNING t.token, t.expires_at, t.revoked_at""",
                now, batch)
            if self.outbox is not None:
                await self.outbox.add(db, [expired_event(token, expires_at)
                                           for token, expires_at, revoked_at in sorted(rows)
                                           if revoked_at is None], now)
            return len(rows)

        return await self._write(work)

    async def list_revoked_since(self, since: int) -> list[tuple[bytes, int]]:
        """See ``TokenStore.list_revoked_since``."""
        rows = await self._read(
            """SELECT token, revoked_at FROM service_tokens
               WHERE revoked_at IS NOT NULL AND revoked_at >= $1 ORDER BY revoked_at, token""",
            since)
        return [(token, revoked_at) for token, revoked_at in rows]

    async def list_audit(self, token: bytes) -> list[dict[str, object]]:
        rows = await self._read(
            "SELECT at, action, reason, abuse_score FROM audit_log WHERE token = $1 ORDER BY id",
            token)
        return [{"at": at, "action": a, "reason": r, "abuse_score": s} for at, a, r, s in rows]

    async def list_debits(self, token: bytes, limit: int = _RECENT_DEBITS) -> list[dict[str, Any]]:
        """The token's most recent debits, newest first."""
        rows = await self._read(
            "SELECT id, amount, memo, at FROM debits WHERE token = $1 ORDER BY id DESC LIMIT $2",
            token, limit)
        return [{"debit_id": i, "amount": a, "memo": m, "at": at} for i, a, m, at in rows]

    async def load_token_prefixes(self) -> array:
        return await self._load_prefixes("service_tokens", "token")

    # ------------------------------------------------------------------ debits
    async def apply_debits(self, requests: Sequence[DebitRequest], now: int) -> list[DebitOutcome]:
        """Decide and apply a batch of debits in one transaction, in the order given
        (the rules are ``TokenStore.apply_debits``'s)."""

        async def work(db: asyncpg.Connection) -> list[DebitOutcome]:
            tokens = sorted({r.token for r in requests})
            # the rows locked and, in the same round trip, one debit id per request (the
            # sequence's values are never reused; one a refusal or replay did not use is a
            # gap, which a sequence has after any rollback too)
            rows = await db.fetch(
                f"""WITH ids AS MATERIALIZED (
                        SELECT array_agg(nextval('debits_id_seq')) AS ids
                        FROM generate_series(1, $2::integer))
                    SELECT {_TOKEN_T}, ids.ids FROM service_tokens AS t, ids
                    WHERE t.token = ANY($1::bytea[]) ORDER BY t.token FOR UPDATE OF t""",
                tokens, len(requests))
            records = {row[0]: TokenRow(*row[:-1]) for row in rows}
            spare_ids = sorted(rows[0][-1] or []) if rows else []
            # a statement of its own, after the lock: a snapshot taken once the lock is
            # ours sees every key a transaction that held it before us committed
            answers = await _fetch_keys(db, [(r.token, r.key) for r in requests if r.key])
            plan = plan_debits(requests, records, answers, now)
            applied, key_rows = plan.applied, plan.keyed
            # ids in the order the debits are applied, as max(id) + 1 gives on SQLite
            plan.number(spare_ids[:len(applied)])
            if applied or key_rows:
                # every write of the batch in one statement (data-modifying CTEs run once
                # each, whether the main statement reads them or not): one round trip
                spent = sorted(plan.spent.items())
                await db.execute(
                    """WITH d AS (
                           INSERT INTO debits (id, token, amount, memo, at)
                           SELECT id, token, amount, memo, $5
                           FROM unnest($1::bigint[], $2::bytea[], $3::bigint[], $4::text[])
                                AS n(id, token, amount, memo)),
                       u AS (
                           UPDATE service_tokens AS t SET spent = n.spent
                           FROM unnest($6::bytea[], $7::bigint[]) AS n(token, spent)
                           WHERE t.token = n.token)
                       INSERT INTO idempotency_keys (token, key, request, status, body, created_at)
                       SELECT token, key, request, status, body, $5
                       FROM unnest($8::bytea[], $9::text[], $10::bytea[], $11::integer[],
                                   $12::text[]) AS n(token, key, request, status, body)""",
                    [b["debit_id"] for _, b in applied], [r.token for r, _ in applied],
                    [r.amount for r, _ in applied], [r.memo for r, _ in applied], now,
                    [token for token, _ in spent], [value for _, value in spent],
                    [r.token for r, _, _ in key_rows], [r.key for r, _, _ in key_rows],
                    [r.request_digest for r, _, _ in key_rows], [s for _, s, _ in key_rows],
                    [json.dumps(b) for _, _, b in key_rows])
            return plan.outcomes

        return await self._write(work)

    async def prune_idempotency_keys(self, older_than: int) -> int:
        """Forget answers stored before ``older_than``; returns how many."""

        async def work(db: asyncpg.Connection) -> int:
            return affected(await db.execute(
                "DELETE FROM idempotency_keys WHERE created_at < $1", older_than))

        return await self._write(work)


async def _fetch_keys(db: asyncpg.Connection, scopes: list[tuple[bytes, str | None]]) -> Answers:
    if not scopes:
        return {}
    unique = sorted(set(scopes))
    # one primary-key probe per scope, whatever the planner thinks of the table: a plain
    # join let it hash the array and scan the whole table (while its statistics still said
    # "small", e.g. the first hour of a fresh one) once per batch, 1,983 scans of up to 32k
    # rows in one benchmark run; LIMIT keeps the subquery from being pulled up into a join
    rows = await db.fetch(
        """SELECT k.token, k.key, k.request, k.status, k.body
           FROM unnest($1::bytea[], $2::text[]) AS n(token, key)
           CROSS JOIN LATERAL (
               SELECT i.token, i.key, i.request, i.status, i.body FROM idempotency_keys AS i
               WHERE i.token = n.token AND i.key = n.key LIMIT 1) AS k""",
        [token for token, _ in unique], [key for _, key in unique])
    return {(token, key): (digest, status, json.loads(body))
            for token, key, digest, status, body in rows}
