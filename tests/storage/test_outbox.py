"""The outbox on a real SQLite file and a real PostgreSQL database: each change writes its
event in its own transaction, a rolled-back change writes none, and nothing is written
while webhooks are off."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from anonticket.ledger.cache import TtlSet
from anonticket.domain.ids import PaymentId, ServiceToken, token_id
from anonticket.ledger.views import Claimed, Ledger
from anonticket.storage import AttemptResult, Storage, database_path, is_postgres_url, open_storage
from conftest import INTEGRITY_ERRORS, transfer

BOTH_BACKENDS = True

DAY = 86400
PRICE = 10_000  # piconero per day: 5000 buys half a day
T0 = 1_700_000_000


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def wakes() -> list[int]:
    return []


@pytest.fixture
async def ledger(storage: Storage, clock: Clock, wakes: list[int]) -> AsyncIterator[Ledger]:
    storage.enable_outbox(lambda: wakes.append(1))
    ledger = Ledger(storage, min_payment=1000, min_confirmations=10,
                    negative_cache=TtlSet(100, 0.5), price_per_day=PRICE, clock=clock,
                    plain_pids="allow")
    await ledger.load()
    yield ledger


async def execute(url: str, sql: str) -> list[tuple[Any, ...]]:
    """``sql`` on a connection of its own, as another process would see the database."""
    if is_postgres_url(url):
        conn = await asyncpg.connect(url)
        try:
            if not sql.lstrip().startswith("SELECT"):
                await conn.execute(sql)  # the simple protocol: several statements at once
                return []
            return [tuple(row) for row in await conn.fetch(sql)]
        finally:
            await conn.close()
    db = sqlite3.connect(database_path(url))
    try:
        rows = db.execute(sql).fetchall()
        db.commit()
        return rows
    finally:
        db.close()


async def events(url: str) -> list[tuple[str, dict[str, Any], str]]:
    """(type, data, id) of every stored event, oldest first, read straight from the database."""
    rows = await execute(url, "SELECT type, body, id FROM webhook_events ORDER BY seq")
    out = []
    for kind, body, event_id in rows:
        payload = json.loads(body)
        assert payload["type"] == kind and set(payload) == {"type", "timestamp", "data"}
        out.append((kind, payload["data"], event_id))
    return out


async def issue(ledger: Ledger, amount: int = 5000) -> tuple[PaymentId, bytes]:
    pid = PaymentId.generate()
    await ledger.credit([transfer(pid, amount)], None)
    answer = await ledger.redeem(pid)
    assert isinstance(answer, Claimed) and answer.status == "success"
    return pid, answer.token


async def test_each_change_writes_one_event_with_the_documented_data(
        ledger: Ledger, database_url: str, clock: Clock, wakes: list[int]) -> None:
    pid, token = await issue(ledger)
    tid = token_id(token)
    (issued,) = await events(database_url)
    assert issued[:2] == ("token.issued", {
        "token_id": tid, "amount": "5000", "remaining": "5000",
        "expires_at": "2023-11-15T10:13:20Z", "issued_at": "2023-11-14T22:13:20Z"})
    assert wakes == [1]  # woken once, after the claim's COMMIT; the credit wrote nothing

    clock.now += 60
    await ledger.credit([transfer(pid, 2500)], None)  # a later payment to the claimed PID
    pid2 = PaymentId.generate()
    await ledger.credit([transfer(pid2, 2000)], None)
    await ledger.topup(ServiceToken(token), pid2)  # a top-up with a second PID
    await ledger.topup(ServiceToken(token), pid2)  # its retry: no second event
    await ledger.revoke(ServiceToken(token), "chargeback", 5)
    await ledger.revoke(ServiceToken(token), "again", 9)  # a repeat: audited, no event
    found = await events(database_url)
    assert [kind for kind, _, _ in found] == [
        "token.issued", "token.topped_up", "token.topped_up", "token.revoked"]
    assert found[1][1] == {"token_id": tid, "amount": "7500", "added": "2500",
                           "remaining": "7500", "expires_at": "2023-11-15T16:13:20Z"}
    assert found[2][1] == {"token_id": tid, "amount": "9500", "added": "2000",
                           "remaining": "9500", "expires_at": "2023-11-15T21:01:20Z"}
    assert found[3][1] == {"token_id": tid, "revoked_at": "2023-11-14T22:14:20Z",
                           "reason": "chargeback", "abuse_score": 5}
    assert len({event_id for _, _, event_id in found}) == 4
    assert len(wakes) == 4


async def test_no_event_names_a_pid_token_or_txid(ledger: Ledger, database_url: str) -> None:
    pid = PaymentId.generate()
    paid = transfer(pid, 5000)
    await ledger.credit([paid], None)
    answer = await ledger.redeem(pid)
    assert isinstance(answer, Claimed)
    await ledger.revoke(ServiceToken(answer.token), None, None)
    text = " ".join(body for (body,) in await execute(database_url,
                                                       "SELECT body FROM webhook_events"))
    for secret in (pid.hex(), pid.raw.hex(), answer.token.hex(), paid.txid.hex()):
        for form in (secret, secret[:16], secret[-16:]):
            assert form not in text.lower()
    assert token_id(answer.token) in text


async def test_a_rolled_back_change_leaves_no_event(ledger: Ledger, storage: Storage,
                                                    database_url: str, wakes: list[int]) -> None:
    _, token = await issue(ledger)
    before = await events(database_url)
    wakes.clear()
    # make the audit insert fail after the revocation's UPDATE and its event were written
    if is_postgres_url(database_url):
        await execute(database_url, """
            CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS
              $$ BEGIN RAISE EXCEPTION 'refused' USING ERRCODE = 'check_violation'; END $$;
            CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_log
              FOR EACH ROW EXECUTE FUNCTION refuse()""")
    else:
        await execute(database_url, """CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_log
                                       BEGIN SELECT RAISE(ABORT, 'refused'); END""")
    with pytest.raises(INTEGRITY_ERRORS):
        await storage.revoke_token(token, "x", None, T0 + 5)
    assert await events(database_url) == before
    assert wakes == []
    assert (await storage.get_token(token)).revoked_at is None  # type: ignore[union-attr]


async def test_nothing_is_written_while_webhooks_are_off(database_url: str) -> None:
    store = await open_storage(database_url)
    try:
        ledger = Ledger(store, min_payment=1000, min_confirmations=10,
                        negative_cache=TtlSet(100, 0.5), price_per_day=PRICE, clock=lambda: T0,
                        plain_pids="allow")
        await ledger.load()
        pid, token = await issue(ledger)
        await ledger.credit([transfer(pid, 1000)], None)
        await ledger.revoke(ServiceToken(token), None, None)
        assert await store.notice_expired_tokens(T0 + DAY) == 1  # noticed, silently
        assert await events(database_url) == []
    finally:
        await store.close()


async def test_an_expiry_is_noticed_once_and_again_after_a_top_up_moves_it(
        ledger: Ledger, storage: Storage, database_url: str, clock: Clock) -> None:
    pid, token = await issue(ledger)  # expires at T0 + DAY/2
    _, revoked = await issue(ledger)
    await ledger.revoke(ServiceToken(revoked), None, None)
    assert await storage.notice_expired_tokens(T0 + DAY // 2 - 1) == 0
    assert await storage.notice_expired_tokens(T0 + DAY // 2) == 2  # both marked
    assert await storage.notice_expired_tokens(T0 + DAY) == 0  # once
    expired = [data for kind, data, _ in await events(database_url) if kind == "token.expired"]
    assert expired == [{"token_id": token_id(token), "expires_at": "2023-11-15T10:13:20Z"}]
    clock.now = T0 + DAY  # the customer pays again after the expiry: the clock restarts
    await ledger.credit([transfer(pid, 5000)], None)
    assert await storage.notice_expired_tokens(T0 + DAY + DAY // 2) == 1
    expired = [data for kind, data, _ in await events(database_url) if kind == "token.expired"]
    assert [e["expires_at"] for e in expired] == ["2023-11-15T10:13:20Z", "2023-11-16T10:13:20Z"]


async def test_the_sweep_marks_a_burst_in_bounded_transactions(
        ledger: Ledger, storage: Storage, database_url: str) -> None:
    from anonticket.storage import tokens  # the one batch size, for both dialects
    pids = [PaymentId.generate() for _ in range(25)]
    await ledger.credit([transfer(pid, 5000) for pid in pids], None)
    await storage.claim_payments([p.raw for p in pids], 1000, T0)
    original, tokens.EXPIRY_SWEEP_BATCH = tokens.EXPIRY_SWEEP_BATCH, 10
    try:
        marked = [await storage.notice_expired_tokens(T0 + DAY) for _ in range(4)]
    finally:
        tokens.EXPIRY_SWEEP_BATCH = original
    assert marked == [10, 10, 5, 0]
    assert sum(kind == "token.expired" for kind, _, _ in await events(database_url)) == 25


async def test_attempt_outcomes_replay_and_pruning(ledger: Ledger, storage: Storage) -> None:
    await issue(ledger)
    await issue(ledger)
    due = await storage.due_webhook_events(T0, 10)
    assert [e.attempts for e in due] == [0, 0]
    first, second = due
    await storage.record_webhook_attempts([
        AttemptResult(first.seq, 1, T0, "delivered", None),
        AttemptResult(second.seq, 1, T0, "http_500", T0 + 5.0)])
    # the same outcome again (a retried batch) changes nothing
    await storage.record_webhook_attempts([AttemptResult(second.seq, 1, T0, "timeout", None)])
    assert [e.id for e in await storage.due_webhook_events(T0 + 5, 10)] == [second.id]
    assert await storage.due_webhook_events(T0 + 4.9, 10) == []
    await storage.record_webhook_attempts([AttemptResult(second.seq, 2, T0 + 5, "timeout", None)])
    queue = await storage.webhook_queue()
    assert (queue["pending"], queue["dead"]) == (0, 1)
    listed = await storage.list_webhook_events(dead_only=True, limit=10)
    assert [(e["id"], e["status"], e["attempts"], e["last_result"]) for e in listed] == [
        (second.id, "dead", 2, "timeout")]
    assert await storage.replay_webhook_events(None, T0 + 10) == 1
    assert await storage.replay_webhook_events("msg_unknown", T0 + 10) == 0
    again = await storage.due_webhook_events(T0 + 10, 10)
    assert [(e.id, e.body, e.attempts) for e in again] == [(second.id, second.body, 0)]
    assert await storage.prune_webhook_events(T0) == 0  # delivered at T0, not before
    assert await storage.prune_webhook_events(T0 + 1) == 1
    assert [e["id"] for e in await storage.list_webhook_events(dead_only=False, limit=10)] == [
        second.id]


async def test_disabled_state_survives_a_reopen(database_url: str) -> None:
    store = await open_storage(database_url)
    await store.set_webhook_disabled("https://u:p@backend.example/hook", T0)
    await store.close()
    store = await open_storage(database_url)
    try:
        at, digest = await store.get_webhook_disabled()  # type: ignore[misc]
        assert at == T0 and len(digest) == 32 and b"backend" not in digest
        await store.set_webhook_disabled(None, T0 + 1)
        assert await store.get_webhook_disabled() is None
    finally:
        await store.close()
