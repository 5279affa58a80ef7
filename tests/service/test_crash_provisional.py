"""Crash safety with provisional credit (issue 25): SIGKILL the real service at random
moments while payments enter the pool, are credited provisionally, confirm, or vanish and
are withdrawn, and customers redeem them; after every kill the database must hold every
promise, and after every restart each payment must reach the state the wallet shows.

On SQLite and on PostgreSQL (``BOTH_BACKENDS``): there the restarted process takes the
leader lock the killed one's session held and fences out whatever that session still had
in flight, and the check after each kill reads one REPEATABLE READ snapshot of the
database. The check is the same on both: the storage's integrity (SQLite's
``integrity_check``; on PostgreSQL, ``amcheck`` verifies every B-tree index against its
table), every ``LEDGER_INVARIANTS`` query of ``db check`` (one SQL text for both
dialects), and that a transfer is in ``transfers`` exactly when its provisional credit
(if it had one) is final.

The wallet is the fake one (tests/fake_wallet.py), so payments can vanish from the pool on
cue; the real chain's double spends and evictions are tests/monitor/test_provisional_regtest.py.
Rounds: ``ANONTICKET_CRASH_ROUNDS`` (as test_crash_safety.py: 20 under CI, else 5), on
both backends.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from anonticket.domain.ids import PaymentId
from anonticket.storage import database_path, is_postgres_url
from anonticket.storage.ledger_rules import LEDGER_INVARIANTS
from crash_helpers import RecordingWallet, ServiceProcess, readonly_db, redeem, service_env, wait_until
from fake_wallet import make_transfer

BOTH_BACKENDS = True
pytestmark = pytest.mark.slow  # SIGKILL rounds: the full suite's, not the quick tier's

N = 3
AMOUNT = 2000
GRACE = 0.2


def crash_rounds() -> int:
    default = "20" if os.environ.get("CI") else "5"
    return int(os.environ.get("ANONTICKET_CRASH_ROUNDS") or default)


class Payments:
    """The payers: each step adds pool payments, mines some, and makes some vanish."""

    def __init__(self, wallet: RecordingWallet, rng: random.Random) -> None:
        self.wallet, self.rng = wallet, rng
        self.pids: dict[str, str] = {}  # txid -> pid16
        self.vanished: set[str] = set()
        self.mined: dict[str, int] = {}  # txid -> height

    def step(self) -> None:
        wallet, rng = self.wallet, self.rng
        for _ in range(rng.randint(1, 3)):
            pid = PaymentId.generate().hex()
            entry = make_transfer(pid, AMOUNT, 0, type="pool")
            wallet.add(entry)
            self.pids[entry["txid"]] = pid
        for entry in list(wallet.pool):
            roll = rng.random()
            if roll < 0.15:  # left the pool unmined (evicted, double-spent): withdrawn later
                wallet.pool.remove(entry)
                self.vanished.add(entry["txid"])
            elif roll < 0.5:
                self.mined[entry["txid"]] = wallet.height
                wallet.confirm(entry["txid"], wallet.height)
        wallet.height += 1

    def final(self) -> set[bytes]:
        """Mined at least N deep: final (or credited outright)."""
        return {bytes.fromhex(t) for t, h in self.mined.items() if h <= self.wallet.height - N}


def consistent(problems: list[str], states: dict[bytes, int], final: set[bytes]
               ) -> dict[bytes, int]:
    """What one snapshot must show; the provisional states by txid."""
    assert problems == []
    # a transfer is in transfers exactly when it is final (or was never provisional)
    assert {t for t, s in states.items() if s == 2} <= final
    assert not {t for t, s in states.items() if s != 2} & final
    return states


_STATES = "SELECT txid, state FROM provisional_credits"
_FINAL = "SELECT txid FROM transfers"


def check_file(path: Path) -> dict[bytes, int]:
    """Every invariant ``db check`` knows, on one snapshot of the file as it is on disk."""
    with readonly_db(path) as db:
        db.execute("BEGIN")
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        problems = [what for what, sql in LEDGER_INVARIANTS if db.execute(sql).fetchone()[0]]
        states = dict(db.execute(_STATES))
        final = {txid for (txid,) in db.execute(_FINAL)}
    return consistent(problems, states, final)


# amcheck's B-tree check with heapallindexed: every index entry points at a row of its table
# and every row is in each index (raises on the first difference)
_CHECK_INDEXES = """
    SELECT bt_index_check(c.oid, true) FROM pg_index AS i
    JOIN pg_class AS c ON c.oid = i.indexrelid JOIN pg_am AS am ON am.oid = c.relam
    JOIN pg_namespace AS n ON n.oid = c.relnamespace
    WHERE am.amname = 'btree' AND n.nspname = 'public'"""


async def amcheck_installed(url: str) -> None:
    """amcheck ships with the server (postgresql-15's contrib); the test's own database
    gets it, the service never sees it used."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS amcheck")
    finally:
        await conn.close()


async def check_postgres(url: str) -> dict[bytes, int]:
    """The same, on one REPEATABLE READ snapshot of the PostgreSQL database."""
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            assert len(await conn.fetch(_CHECK_INDEXES)) > 10  # the schema's indexes, all checked
            problems = [what for what, sql in LEDGER_INVARIANTS if await conn.fetchval(sql)]
            states = {bytes(t): s for t, s in await conn.fetch(_STATES)}
            final = {bytes(t) for (t,) in await conn.fetch(_FINAL)}
    finally:
        await conn.close()
    return consistent(problems, states, final)


async def check(database_url: str) -> dict[bytes, int]:
    if is_postgres_url(database_url):
        return await check_postgres(database_url)
    return check_file(Path(database_path(database_url)))


async def active(service: ServiceProcess, database_url: str) -> None:
    """On PostgreSQL a restarted process stands by until the killed one's session has let
    the leader lock go (the server notices the closed socket); customers come after."""
    if not is_postgres_url(database_url):
        return
    try:
        await wait_until(lambda: "this instance is now active" in service.log(),
                         "the restarted service to take the leader lock", timeout=20)
    except BaseException:
        await service.kill()
        raise


async def test_sigkill_with_provisional_credit_loses_and_duplicates_nothing(
        database_url: str) -> None:
    seed = int(os.environ.get("ANONTICKET_CRASH_SEED") or random.SystemRandom().randrange(2**32))
    rng = random.Random(seed)
    started = time.monotonic()
    if is_postgres_url(database_url):
        await amcheck_installed(database_url)
    async with RecordingWallet(height=1) as wallet, aiohttp.ClientSession() as session:
        payments = Payments(wallet, rng)
        env = service_env(
            database_url, MONERO_RPC_URL=wallet.url, MONITOR_POLL_INTERVAL_SECS="0.02",
            MONITOR_MIN_CONFIRMATIONS=N, MONITOR_MIN_PAYMENT_AMOUNT=AMOUNT,
            MONERO_RPC_TIMEOUT_SECS="5", PROVISIONAL_MAX_PER_PID=AMOUNT,
            PROVISIONAL_MAX_OUTSTANDING=1000 * AMOUNT, PROVISIONAL_WITHDRAW_GRACE_SECS=GRACE,
            DATABASE_LEADER_CHECK_SECS="0.2",  # PostgreSQL: the restart takes the lock soon
        )
        tokens: dict[str, str] = {}
        for round_no in range(crash_rounds() + 1):
            service = await ServiceProcess(env).start()
            await active(service, database_url)
            if round_no == crash_rounds():
                break
            stop = asyncio.Event()

            async def produce() -> None:
                for _ in range(10_000):
                    if stop.is_set():
                        return
                    payments.step()
                    await asyncio.sleep(rng.uniform(0.005, 0.03))  # pacing, not synchronisation

            async def customer() -> None:
                for _ in range(2000):
                    if stop.is_set():
                        return
                    txid = rng.choice(list(payments.pids))
                    pid = payments.pids[txid]
                    try:
                        status, _, body, _ = await redeem(session, service.public, pid, timeout=10)
                    except (aiohttp.ClientError, TimeoutError, OSError):
                        return  # killed mid-request
                    if status == 200:
                        token = body["service_token"]
                        assert token == tokens.setdefault(pid, token), "one PID, two tokens"
                        assert body["balance"] in (0, AMOUNT)  # 0: its payment was withdrawn
                    else:
                        assert status in (202, 404), (status, body)

            tasks = [asyncio.create_task(produce())] + [asyncio.create_task(customer())
                                                         for _ in range(4)]
            try:
                await asyncio.sleep(rng.uniform(0.05, 0.6))  # the crash comes at a random moment
                await service.kill()
            finally:
                stop.set()
                await asyncio.gather(*tasks)
            await check(database_url)
        # the last start: wait until every payment reached the state the wallet shows
        try:
            for _ in range(N):
                wallet.height += 1
            final, vanished = payments.final(), {bytes.fromhex(t) for t in payments.vanished}

            async def settled() -> bool:
                states = await check(database_url)
                return (all(states.get(t, 2) == 2 for t in final)
                        and all(states.get(t, 1) == 1 for t in vanished))

            await wait_until(settled, "every payment settled or withdrawn", timeout=20,
                             interval=0.05)
            for pid, token in tokens.items():  # every token given is still the PID's
                status, _, body, _ = await redeem(session, service.public, pid)
                assert (status, body["service_token"]) == (200, token)
        finally:
            assert await service.stop() == 0, f"seed {seed}"
        states = await check(database_url)
    assert states, "no payment was ever credited provisionally"
    counts = [sum(s == state for s in states.values()) for state in (0, 1, 2)]
    print(f"\nprovisional crash rounds: seed={seed} rounds={crash_rounds()} payments="
          f"{len(payments.pids)} provisional credits outstanding/withdrawn/final={counts} "
          f"tokens={len(tokens)} time={time.monotonic() - started:.1f}s")
