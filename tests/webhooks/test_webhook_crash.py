"""SIGKILL between a change and its delivery, in rounds: no event lost, none for a change
that rolled back, and no PID, token or txid in any delivery or log line.

The real ``bin/anonticket serve`` credits payments from a fake wallet, customers redeem
(token.issued), later payments to redeemed PIDs top their tokens up in the monitor's own
transaction (token.topped_up) and the operator revokes some tokens, some twice
(token.revoked, once). The receiver, a real aiohttp app in the test process, verifies
every delivery with ``standardwebhooks``, is slow (so kills land while events wait or are
in flight) and sometimes answers 500. At a random moment the service is SIGKILLed and
started again. At the end every event stored with a committed change has been delivered,
each delivery matches the database exactly, and nothing delivered is missing from it.
On SQLite and on PostgreSQL (where the restarted process takes the leader lock the killed
one's sessions held, and resumes what it left unmarked).

Rounds: ``ANONTICKET_WEBHOOK_CRASH_ROUNDS`` (default 4; ``CI`` 10).
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import random
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from anonticket.domain.ids import PaymentId, token_id
from anonticket.storage import database_path, is_postgres_url
from anonticket.domain.webhook import new_secret
from crash_helpers import (
    RecordingWallet,
    ServiceProcess,
    call,
    pay,
    readonly_db,
    redeem,
    service_env,
    wait_until,
)
from secret_search import Secrets
from webhook_receiver import Behaviour, Receiver

BOTH_BACKENDS = True
pytestmark = pytest.mark.slow  # SIGKILL rounds: the full suite's, not the quick tier's
SECRET = new_secret()
MIN_PAYMENT = 1000


def rounds() -> int:
    raw = os.environ.get("ANONTICKET_WEBHOOK_CRASH_ROUNDS")
    return int(raw) if raw else (10 if os.environ.get("CI") else 4)


class SlowReceiver(Receiver):
    """Answers after 0-60 ms, and one delivery in eight gets a 500."""

    def __init__(self, secret: str, rng: random.Random) -> None:
        super().__init__(secret)
        self.rng = rng

    async def _hook(self, request: Any) -> Any:
        self._plan.append(Behaviour(500 if self.rng.random() < 0.125 else 204,
                                    hang=self.rng.uniform(0, 0.06)))
        return await super()._hook(request)


class World:
    """The payers, customers and operator, and every secret they handled."""

    def __init__(self, wallet: RecordingWallet, rng: random.Random) -> None:
        self.wallet, self.rng = wallet, rng
        self.unredeemed: list[str] = []
        self.tokens: dict[str, str] = {}  # pid -> token
        self.txids: list[str] = []
        self.revoked = 0

    def mine(self) -> None:
        pids = []
        for _ in range(self.rng.randint(1, 3)):
            if self.tokens and self.rng.random() < 0.3:
                pids.append(self.rng.choice(list(self.tokens)))  # a top-up
            else:
                pid = PaymentId.generate().hex()
                self.unredeemed.append(pid)
                pids.append(pid)
        self.txids += pay(self.wallet, *dict.fromkeys(pids), amount=self.rng.randint(1000, 9000)
                          ).values()

    async def act(self, session: aiohttp.ClientSession, service: ServiceProcess,
                  stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                if self.unredeemed:
                    pid = self.unredeemed[0]
                    status, _, body, _ = await redeem(session, service.public, pid, timeout=5)
                    if status == 200:
                        self.unredeemed.remove(pid)
                        self.tokens[pid] = body["service_token"]
                if self.tokens and self.rng.random() < 0.15:
                    token = self.rng.choice(list(self.tokens.values()))
                    await call(session, "POST", service.internal,
                               f"/api/v1/token/{token}/revoke", {"reason": "abuse"}, timeout=5)
                    self.revoked += 1
                else:
                    await asyncio.sleep(0.005)  # pacing between customers' requests
            except (aiohttp.ClientError, TimeoutError, OSError):
                return  # the kill landed mid-request


_EVENTS = "SELECT id, body, status FROM webhook_events"
_TOKENS = "SELECT token, amount, revoked_at FROM service_tokens"


async def stored(url: str
                 ) -> tuple[dict[str, tuple[str, int]], dict[bytes, tuple[int, int | None]]]:
    """(event id -> (body, status), token -> (amount, revoked_at)) as the database holds
    them, both read in one snapshot."""
    if is_postgres_url(url):
        conn = await asyncpg.connect(url)
        try:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                event_rows, token_rows = await conn.fetch(_EVENTS), await conn.fetch(_TOKENS)
        finally:
            await conn.close()
    else:
        with readonly_db(Path(database_path(url))) as db:
            db.execute("BEGIN")
            event_rows, token_rows = db.execute(_EVENTS).fetchall(), db.execute(_TOKENS).fetchall()
            db.execute("COMMIT")
    return ({i: (b, s) for i, b, s in event_rows},
            {bytes(t): (a, r) for t, a, r in token_rows})


async def test_sigkill_between_a_change_and_its_delivery_loses_no_event(database_url: str) -> None:
    seed = int(os.environ.get("ANONTICKET_CRASH_SEED") or random.SystemRandom().randrange(2**32))
    rng = random.Random(seed)
    database = database_url
    started = time.monotonic()
    waiting_at_kills: list[int] = []
    logs: list[str] = []
    async with RecordingWallet(height=1) as wallet, SlowReceiver(SECRET, rng) as receiver:
        world = World(wallet, rng)
        env = service_env(
            database, MONERO_RPC_URL=wallet.url, MONITOR_POLL_INTERVAL_SECS="0.02",
            MONITOR_MIN_CONFIRMATIONS=1, MONITOR_MIN_PAYMENT_AMOUNT=MIN_PAYMENT,
            WEBHOOK_URL=receiver.url, WEBHOOK_SECRET=SECRET, WEBHOOK_TIMEOUT_SECS=2,
            WEBHOOK_RETRY_SCHEDULE_SECS=",".join(["0.05"] * 20), LOG_LEVEL="DEBUG",
            API_ACCESS_LOG="true")
        async with aiohttp.ClientSession(trust_env=False) as session:
            for _ in range(rounds()):
                service = await ServiceProcess(env).start()
                stop = asyncio.Event()

                async def produce() -> None:
                    while not stop.is_set():
                        world.mine()
                        await asyncio.sleep(rng.uniform(0.01, 0.04))  # block pacing

                tasks = [asyncio.create_task(produce()),
                         asyncio.create_task(world.act(session, service, stop))]
                try:
                    await asyncio.sleep(rng.uniform(0.4, 1.2))  # the kill's moment, by design
                    await service.kill()
                finally:
                    stop.set()
                    await asyncio.gather(*tasks)
                logs.append(service.log())
                events, _ = await stored(database)
                waiting_at_kills.append(sum(status == 0 for _, status in events.values()))
            # the last start: everything still waiting is delivered, then a clean stop
            receiver.rng = random.Random(0)
            receiver.default = Behaviour(204)
            service = await ServiceProcess(env).start()
            try:
                async def drained() -> bool:
                    events, _ = await stored(database)
                    return all(status == 1 for _, status in events.values())

                await wait_until(drained, "every stored event to be delivered", timeout=30)
            finally:
                assert await service.stop() == 0
            logs.append(service.log())
        events, tokens = await stored(database)

    # every delivery is authentic, and one id always carried the same bytes
    assert all(d.verified for d in receiver.requests)
    bodies: dict[str, bytes] = {}
    for delivery in receiver.requests:
        assert bodies.setdefault(delivery.id, delivery.body) == delivery.body
    accepted = {d.id for d in receiver.accepted}
    # nothing lost: every event committed with its change was delivered; nothing invented:
    # every delivered id is a committed row (a rolled-back change left no row to send)
    assert accepted == set(events) == set(bodies)
    assert {i: body.encode() for i, (body, _) in events.items()} == bodies
    # and the deliveries add up to the database, token by token
    per_token: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for body in bodies.values():
        payload = json.loads(body)
        per_token[payload["data"]["token_id"]].append(payload)
    by_id = {token_id(token): (amount, revoked) for token, (amount, revoked) in tokens.items()}
    assert set(per_token) == set(by_id)
    for tid, payloads in per_token.items():
        amount, revoked_at = by_id[tid]
        kinds = collections.Counter(p["type"] for p in payloads)
        assert kinds["token.issued"] == 1
        assert kinds["token.revoked"] == (revoked_at is not None)
        issued = next(p for p in payloads if p["type"] == "token.issued")
        added = sum(int(p["data"]["added"]) for p in payloads if p["type"] == "token.topped_up")
        assert int(issued["data"]["amount"]) + added == amount
    for token in world.tokens.values():  # every token a customer was given was announced
        assert token_id(bytes.fromhex(token)) in per_token
    # no PID, token or txid in a body, a header or any log line of any run (named by
    # number in a failure: the message must not print the secret either)
    secrets = Secrets()
    for n, pid in enumerate(list(world.tokens) + world.unredeemed):
        secrets.add_pid(f"pid #{n}", pid)
    for n, token in enumerate(world.tokens.values()):
        secrets.add(f"token #{n}", token)
    for n, txid in enumerate(world.txids):
        secrets.add(f"txid #{n}", txid)
    delivered = " ".join(d.body.decode() + json.dumps(d.headers) for d in receiver.requests)
    assert secrets.found_in(delivered) == []
    assert secrets.found_in("".join(logs)) == []
    assert "Traceback" not in "".join(logs)
    assert sum(waiting_at_kills) > 0, "no kill landed while an event waited"
    print(f"\nwebhook crash safety: seed={seed} rounds={rounds()} events={len(events)} "
          f"deliveries={len(receiver.requests)} (accepted {len(receiver.accepted)}) "
          f"tokens={len(tokens)} redelivered={len(receiver.accepted) - len(events)} "
          f"revocation calls={world.revoked} "
          f"waiting at each kill={waiting_at_kills} time={time.monotonic() - started:.1f}s")


@pytest.mark.slow
async def test_many_rounds(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANONTICKET_WEBHOOK_CRASH_ROUNDS",
                       os.environ.get("ANONTICKET_WEBHOOK_CRASH_ROUNDS_SLOW", "25"))
    await test_sigkill_between_a_change_and_its_delivery_loses_no_event(database_url)
