"""Crash safety with provisional credit (issue 25): SIGKILL the real service at random
moments while payments enter the pool, are credited provisionally, confirm, or vanish and
are withdrawn, and customers redeem them; after every kill the file must hold every
promise, and after every restart each payment must reach the state the wallet shows.

The wallet is the fake one (tests/fake_wallet.py), so payments can vanish from the pool on
cue; the real chain's double spends and evictions are tests/monitor/test_provisional_regtest.py.
Rounds: ``ANONTICKET_CRASH_ROUNDS`` (as test_crash_safety.py: 20 under CI, else 5).
"""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path

import aiohttp
import pytest

from anonticket.domain.ids import PaymentId
from anonticket.storage.ledger_rules import LEDGER_INVARIANTS
from crash_helpers import RecordingWallet, ServiceProcess, readonly_db, redeem, service_env, wait_until
from fake_wallet import make_transfer

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


def check_file(path: Path) -> dict[bytes, int]:
    """Every invariant ``db check`` knows, on one snapshot; the provisional states by txid."""
    with readonly_db(path) as db:
        db.execute("BEGIN")
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        problems = [what for what, sql in LEDGER_INVARIANTS if db.execute(sql).fetchone()[0]]
        assert problems == []
        states = dict(db.execute("SELECT txid, state FROM provisional_credits"))
        final = {txid for (txid,) in db.execute("SELECT txid FROM transfers")}
    # a transfer is in transfers exactly when it is final (or was never provisional)
    assert {t for t, s in states.items() if s == 2} <= final
    assert not {t for t, s in states.items() if s != 2} & final
    return states


async def test_sigkill_with_provisional_credit_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    seed = int(os.environ.get("ANONTICKET_CRASH_SEED") or random.SystemRandom().randrange(2**32))
    rng = random.Random(seed)
    database = tmp_path / "anonticket.db"
    async with RecordingWallet(height=1) as wallet, aiohttp.ClientSession() as session:
        payments = Payments(wallet, rng)
        env = service_env(
            database, MONERO_RPC_URL=wallet.url, MONITOR_POLL_INTERVAL_SECS="0.02",
            MONITOR_MIN_CONFIRMATIONS=N, MONITOR_MIN_PAYMENT_AMOUNT=AMOUNT,
            MONERO_RPC_TIMEOUT_SECS="5", PROVISIONAL_MAX_PER_PID=AMOUNT,
            PROVISIONAL_MAX_OUTSTANDING=1000 * AMOUNT, PROVISIONAL_WITHDRAW_GRACE_SECS=GRACE,
        )
        tokens: dict[str, str] = {}
        for round_no in range(crash_rounds() + 1):
            service = await ServiceProcess(env).start()
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
            check_file(database)
        # the last start: wait until every payment reached the state the wallet shows
        try:
            for _ in range(N):
                wallet.height += 1
            final, vanished = payments.final(), {bytes.fromhex(t) for t in payments.vanished}

            def settled() -> bool:
                states = check_file(database)
                return (all(states.get(t, 2) == 2 for t in final)
                        and all(states.get(t, 1) == 1 for t in vanished))

            await wait_until(settled, "every payment settled or withdrawn", timeout=20)
            for pid, token in tokens.items():  # every token given is still the PID's
                status, _, body, _ = await redeem(session, service.public, pid)
                assert (status, body["service_token"]) == (200, token)
        finally:
            assert await service.stop() == 0, f"seed {seed}"
        check_file(database)
