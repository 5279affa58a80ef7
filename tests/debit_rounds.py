"""What the debit crash test's clients did and were told, and the checks on the file.

Every debit is sent with an Idempotency-Key of its own and that key as its memo, so
each row of ``debits`` names the request that made it: a key applied twice would be
two rows with one memo, a debit nobody asked for a memo nobody sent. A client's
knowledge is only what it was answered; a request cut off by the kill is unanswered
until a retry with the same key (and body) answers it after the restart.
"""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from anonticket.domain.ids import PaymentId
from anonticket.storage.ledger_rules import LEDGER_INVARIANTS
from crash_helpers import readonly_db

CUT_OFF = (aiohttp.ClientError, TimeoutError, OSError)  # the kill landed mid-request


async def post(session: aiohttp.ClientSession, address: str, path: str, body: Any,
               headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any], bool]:
    """One POST: status, JSON body, and whether it says it is a replay."""
    async with session.post(f"http://{address}{path}", json=body, headers=headers or {},
                            timeout=aiohttp.ClientTimeout(total=10)) as resp:
        return resp.status, await resp.json(), resp.headers.get("Idempotent-Replayed") == "true"


@dataclass
class Debit:
    token: str
    key: str
    amount: int
    answer: tuple[int, dict[str, Any]] | None = None  # the first answer received
    # for a key unanswered at a kill: its stored answer in the file the kill left, if any
    at_kill: tuple[int, dict[str, Any]] | None = None

    def send(self, session: aiohttp.ClientSession, internal: str):  # type: ignore[no-untyped-def]
        return post(session, internal, f"/api/v1/token/{self.token}/debit",
                    {"amount": self.amount, "memo": self.key}, {"Idempotency-Key": self.key})


@dataclass
class Offer:
    """One top-up of ``pid`` onto ``token``; each fresh PID is offered to two tokens at once."""

    pid: str
    token: str
    answer: tuple[int, dict[str, Any]] | None = None

    def send(self, session: aiohttp.ClientSession, public: str):  # type: ignore[no-untyped-def]
        return post(session, public, f"/api/v1/token/{self.token}/topup", {"pid": self.pid})


@dataclass
class Book:
    rng: random.Random
    tokens: list[str] = field(default_factory=list)
    debits: dict[str, Debit] = field(default_factory=dict)  # by key
    offers: list[Offer] = field(default_factory=list)
    paid: dict[str, int] = field(default_factory=dict)  # fresh PID -> its confirmed amount
    counts: dict[str, int] = field(default_factory=dict)

    def count(self, what: str, n: int = 1) -> None:
        self.counts[what] = self.counts.get(what, 0) + n

    def unanswered(self) -> list[Debit]:
        return [d for d in self.debits.values() if d.answer is None]

    # ------------------------------------------------------------------ answers
    def record_debit(self, debit: Debit, status: int, body: dict[str, Any], replayed: bool) -> None:
        assert status in (200, 402), (status, body)
        if status == 200:
            assert (body["amount"], body["expires_at"] is not None) == (debit.amount, True), body
        assert body["remaining"] >= 0, body  # the balance never goes below zero
        if debit.answer is not None:  # the key was answered before: this must be its replay
            assert (status, body, replayed) == (*debit.answer, True), (debit.answer, status, body)
            self.count("replays_checked")
            return
        if debit.at_kill is not None or replayed:
            # a retry after the kill tells which: replayed exactly when the file kept an answer
            assert debit.at_kill is not None and replayed, (debit.at_kill, replayed)
            stored_status, stored = debit.at_kill
            assert status == stored_status and body.get("debit_id") == stored.get("debit_id")
            self.count("retries_found_committed")
        debit.answer = (status, body)
        self.count(f"debit_{status}")

    def record_offer(self, offer: Offer, status: int, body: dict[str, Any]) -> None:
        if status == 200:
            assert (body["status"], body["credited"]) == ("topped_up", self.paid[offer.pid]), body
        else:
            assert (status, body["error"]) == (409, "pid_already_claimed"), (status, body)
        if offer.answer is not None:
            assert offer.answer[0] == status, (offer.answer, status)
            if status == 200:
                assert offer.answer[1]["credited"] == body["credited"]
            return
        offer.answer = (status, body)
        self.count(f"topup_{status}")

    # ------------------------------------------------------------------ load
    async def debit_client(self, session: aiohttp.ClientSession, internal: str, name: str,
                           stop: asyncio.Event, limit: int) -> None:
        for n in range(limit):
            if stop.is_set():
                return
            # mostly small, now and then more than most balances hold (a 402)
            amount = self.rng.randint(1, 50_000 if self.rng.random() < 0.1 else 500)
            debit = Debit(self.rng.choice(self.tokens), f"{name}-{n}", amount)
            self.debits[debit.key] = debit
            try:
                status, body, replayed = await debit.send(session, internal)
            except CUT_OFF:
                self.count("cut_off")
                return
            self.record_debit(debit, status, body, replayed)

    async def topup_racer(self, session: aiohttp.ClientSession, public: str, pids: list[str],
                          stop: asyncio.Event) -> None:
        for pid in pids:  # bounded: the PIDs paid for this round
            if stop.is_set():
                return
            offers = [Offer(pid, token) for token in self.rng.sample(self.tokens, 2)]
            self.offers += offers
            results = await asyncio.gather(*(o.send(session, public) for o in offers),
                                           return_exceptions=True)
            for offer, result in zip(offers, results):
                if isinstance(result, CUT_OFF):
                    self.count("topup_cut_off")
                elif isinstance(result, BaseException):
                    raise result
                else:
                    self.record_offer(offer, result[0], result[1])
            # spread the races over the round, so that kills land during some of them
            await asyncio.sleep(self.rng.uniform(0, 0.02))  # pacing, not synchronisation

    # ------------------------------------------------------------------ after a restart
    async def retry_and_replay(self, session: aiohttp.ClientSession, internal: str,
                               public: str, replay_limit: int) -> None:
        """Every unanswered key and top-up again, and a sample of the answered ones."""
        retries = self.unanswered()
        self.count("retried", len(retries))
        answered = [d for d in self.debits.values() if d.answer is not None]
        replays = self.rng.sample(answered, min(replay_limit, len(answered)))
        for debit in retries + replays:  # one at a time is enough: the load was before
            status, body, replayed = await debit.send(session, internal)
            self.record_debit(debit, status, body, replayed)
            debit.at_kill = None
        offers = [o for o in self.offers if o.answer is None]
        answered_offers = [o for o in self.offers if o.answer is not None]
        offers += self.rng.sample(answered_offers, min(replay_limit // 10, len(answered_offers)))
        for offer in offers:
            status, body, _ = await offer.send(session, public)
            self.record_offer(offer, status, body)


@dataclass
class Snapshot:
    debits: dict[str, tuple[int, str, int]]  # memo (= key) -> (debit_id, token, amount)
    keys: dict[str, tuple[str, int, dict[str, Any]]]  # key -> (token, status, stored body)
    tokens: dict[str, tuple[int, int]]  # token -> (credited, spent)
    owners: dict[bytes, str | None]  # PID (raw) -> the token its credit went to


def snapshot(path: Path) -> Snapshot:
    """The file as it is, on one read snapshot; the schema's own checks and db check's."""
    with readonly_db(path) as db:
        db.execute("BEGIN")
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []
        problems = [what for what, sql in LEDGER_INVARIANTS if db.execute(sql).fetchone()[0]]
        assert problems == [], problems
        rows = db.execute("SELECT id, token, amount, memo FROM debits").fetchall()
        stored = db.execute("SELECT token, key, status, body FROM idempotency_keys").fetchall()
        tokens = {t.hex(): (a, s) for t, a, s in
                  db.execute("SELECT token, amount, spent FROM service_tokens")}
        owners = {pid: t.hex() if t else None for pid, t in
                  db.execute("SELECT pid, token FROM payments")}
    debits = {memo: (i, token.hex(), amount) for i, token, amount, memo in rows}
    assert len(debits) == len(rows), "a key's debit was applied twice"
    keys = {key: (token.hex(), status, json.loads(body)) for token, key, status, body in stored}
    assert len(keys) == len(stored)
    return Snapshot(debits, keys, tokens, owners)


def check(snap: Snapshot, book: Book, *, final: bool = False) -> None:
    """Every answered debit is in the file exactly as answered, nothing else is, and each
    unanswered key left one row or none; every top-up answered has its PID on that token."""
    for memo, (_, token, amount) in snap.debits.items():
        debit = book.debits.get(memo)
        assert debit is not None, "a debit no client asked for"
        assert (token, amount) == (debit.token, debit.amount)
    spent: dict[str, int] = {}
    for key, debit in book.debits.items():
        row, stored = snap.debits.get(key), snap.keys.get(key)
        if debit.answer is None:
            assert not final, "a key still unanswered after the last retries"
            assert (row is None) == (stored is None or stored[1] != 200)
            debit.at_kill = None if stored is None else stored[1:]
            continue
        status, body = debit.answer
        assert stored is not None and stored[:2] == (debit.token, status)
        assert stored[2].get("remaining") == body["remaining"]
        if status == 200:  # durable once answered: the row and its id as told
            assert row is not None and row[0] == body["debit_id"] == stored[2]["debit_id"]
            spent[debit.token] = spent.get(debit.token, 0) + debit.amount
        else:
            assert row is None
    for token, (credited, token_spent) in snap.tokens.items():
        assert 0 <= token_spent <= credited
        if final:  # spent is exactly the distinct successful keys' amounts
            assert token_spent == spent.get(token, 0)
    winners: dict[str, str] = {}
    for offer in book.offers:
        if offer.answer is not None and offer.answer[0] == 200:
            assert winners.setdefault(offer.pid, offer.token) == offer.token, "two winners"
    for offer in book.offers:
        owner = snap.owners[PaymentId.parse(offer.pid).raw]
        if offer.pid in winners:
            assert owner == winners[offer.pid]
        else:
            assert not final, "a top-up race without a winner"
            assert owner in (None, *(o.token for o in book.offers if o.pid == offer.pid))
