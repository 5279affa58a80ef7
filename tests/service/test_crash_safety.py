"""Crash safety: SIGKILL the real service at random moments, restart it, check every promise.

While the service runs, a fake wallet keeps mining blocks with payments (new PIDs,
top-ups, pool entries, and payments that must never be credited) and six customers
redeem concurrently. At a random moment the process is SIGKILLed: no handler runs and
no transaction is finished, which is exactly what a crash, an OOM kill or
``systemctl kill`` does. After every kill the file on disk must be sound and every
promise kept; after every restart the monitor must resume where it stopped.

Rounds: ``ANONTICKET_CRASH_ROUNDS``, default 20 when ``CI`` is set and 5 otherwise.
"""

from __future__ import annotations

import asyncio
import collections
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from anonticket.domain.ids import PaymentId, derive_service_token
from crash_helpers import (
    RecordingWallet,
    ServiceProcess,
    call,
    readiness,
    readonly_db,
    redeem,
    service_env,
    wait_until,
)
from fake_wallet import make_transfer

pytestmark = pytest.mark.slow  # SIGKILL rounds: the full suite's, not the quick tier's

N = 1  # confirmations: every mined block is credited on the next poll, so crashes land mid-ingest
MIN_PAYMENT = 1000
ZERO_PID = "0000000000000000"
CUSTOMERS = 6
MAX_REQUESTS_PER_CUSTOMER = 5000  # per round: a bound, never reached in a fraction of a second


def crash_rounds() -> int:
    raw = os.environ.get("ANONTICKET_CRASH_ROUNDS")
    if raw:
        return int(raw)
    return 20 if os.environ.get("CI") else 5


def pid_raw(pid16: str) -> bytes:
    return PaymentId.parse(pid16).raw


class Chain:
    """The payers: mine blocks into the wallet and know which entries must be credited."""

    def __init__(self, wallet: RecordingWallet, rng: random.Random) -> None:
        self.wallet = wallet
        self.rng = rng
        self.pids: list[str] = []  # PIDs with a confirmed payment, oldest first
        self.pool_pids: list[str] = []
        self._by_pid: dict[str, list[tuple[int, str, int]]] = {}  # creditable (height, txid, amount)
        self._indexed = 0  # how much of wallet.incoming _by_pid has seen

    def new_pid(self) -> str:
        return PaymentId.generate().hex()

    def mine(self) -> None:
        """One block at height h = the wallet's block count; it then has one more block."""
        wallet, rng = self.wallet, self.rng
        h = wallet.height
        for entry in list(wallet.pool):
            wallet.confirm(entry["txid"], h)
            self.pids.append(entry["payment_id"])
        self.pool_pids = []
        for _ in range(rng.randint(1, 4)):
            roll = rng.random()
            if roll < 0.05:  # a plain payment: never credited
                wallet.add(make_transfer(ZERO_PID, 5 * MIN_PAYMENT, h))
            elif roll < 0.10:  # time-locked: never credited
                wallet.add(make_transfer(self.new_pid(), 5 * MIN_PAYMENT, h, unlock_time=h + 500))
            elif roll < 0.20:  # seen in the pool now, mined with the next block
                pid = self.new_pid()
                wallet.add(make_transfer(pid, 2 * MIN_PAYMENT, 0, type="pool"))
                self.pool_pids.append(pid)
            elif roll < 0.45 and self.pids:  # a second payment: summed, or a top-up
                wallet.add(make_transfer(rng.choice(self.pids), rng.randint(1, MIN_PAYMENT), h))
            else:  # a new customer; one in ten pays too little at first
                pid = self.new_pid()
                amount = rng.randint(1, MIN_PAYMENT - 1) if rng.random() < 0.1 else \
                    rng.randint(MIN_PAYMENT, 3 * MIN_PAYMENT)
                wallet.add(make_transfer(pid, amount, h))
                self.pids.append(pid)
        wallet.height = h + 1
        for entry in wallet.incoming[self._indexed:]:
            if _creditable(entry):
                self._by_pid.setdefault(entry["payment_id"], []).append(
                    (entry["height"], entry["txid"], entry["amount"]))
        self._indexed = len(wallet.incoming)

    def creditable(self) -> dict[bytes, tuple[bytes, int, int]]:
        """txid -> (pid, amount, height) of every confirmed entry the monitor must credit."""
        return {bytes.fromhex(e["txid"]): (pid_raw(e["payment_id"]), e["amount"], e["height"])
                for e in self.wallet.incoming if _creditable(e)}

    def expected_token(self, pid16: str) -> str:
        """SHA3-256(pid|txid) of the PID's earliest payment (lowest height, then txid)."""
        _, txid, _ = min(self._by_pid[pid16])
        return derive_service_token(PaymentId.parse(pid16), txid).hex()

    def paid(self, pid16: str) -> int:
        return sum(amount for _, _, amount in self._by_pid[pid16])


def _creditable(entry: dict[str, Any]) -> bool:
    return entry["payment_id"] != ZERO_PID and entry["unlock_time"] == 0 \
        and not entry["double_spend_seen"]


@dataclass
class Customers:
    """What customers were told. Anything they were given must survive any crash."""

    chain: Chain
    rng: random.Random
    tokens: dict[str, str] = field(default_factory=dict)  # pid -> token received
    this_round: dict[str, str] = field(default_factory=dict)
    successes: collections.Counter[str] = field(default_factory=collections.Counter)
    statuses: collections.Counter[str] = field(default_factory=collections.Counter)
    cut_off: set[str] = field(default_factory=set)  # PIDs whose answer died with the server
    cut_offs: int = 0  # requests in flight when the kill landed, over all rounds

    def choose(self) -> str:
        roll, pids = self.rng.random(), self.chain.pids
        if roll < 0.6 and pids:
            return self.rng.choice(pids[-30:])
        if roll < 0.85 and pids:
            return self.rng.choice(pids)
        if roll < 0.95 and self.chain.pool_pids:
            return self.rng.choice(self.chain.pool_pids)
        return PaymentId.generate().hex()

    def record(self, pid: str, status: int, body: Any) -> None:
        if status == 200:
            self.statuses[body["status"]] += 1
            token = body["service_token"]
            assert token == self.tokens.setdefault(pid, token), "one PID, two tokens"
            assert token == self.chain.expected_token(pid)
            assert MIN_PAYMENT <= body["balance"] <= self.chain.paid(pid)
            self.this_round[pid] = token
            if body["status"] == "success":
                self.successes[pid] += 1
                assert self.successes[pid] == 1, "a PID was claimed twice"
            else:
                assert body["status"] == "already_claimed", body
        else:
            assert status in (202, 402, 404), (status, body)
            self.statuses[str(status)] += 1

    async def customer(self, session: aiohttp.ClientSession, address: str,
                       stop: asyncio.Event) -> None:
        for _ in range(MAX_REQUESTS_PER_CUSTOMER):
            if stop.is_set():
                return
            pid = self.choose()
            try:
                status, _, body, _ = await redeem(session, address, pid, timeout=10)
            except (aiohttp.ClientError, TimeoutError, OSError):
                self.cut_off.add(pid)  # killed mid-request: the claim may or may not be in
                self.cut_offs += 1
                return
            self.record(pid, status, body)


def check_database(path: Path, chain: Chain, customers: Customers, previous_cursor: int) -> int:
    """Every invariant on the file as it is; returns the monitor cursor."""
    with readonly_db(path) as db:
        db.execute("BEGIN")  # one snapshot, even while the service keeps writing
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []
        (cursor,), = db.execute("SELECT coalesce(scanned_height, -1) FROM monitor_state")
        transfers = {txid: (pid, amount, height) for txid, pid, amount, height in
                     db.execute("SELECT txid, pid, amount, height FROM transfers")}
        payments = {pid: (txid, amount, status) for pid, txid, amount, status in
                    db.execute("SELECT pid, txid, amount, status FROM payments")}
        tokens = {pid: (token, amount, revoked) for token, pid, amount, revoked in
                  db.execute("SELECT token, pid, amount, revoked_at FROM service_tokens")}
        (token_rows,), = db.execute("SELECT count(*) FROM service_tokens")

    # the cursor never goes back, never runs ahead of what is N deep
    assert previous_cursor <= cursor <= chain.wallet.height - N
    # each credited transfer is one the wallet served, unchanged; everything creditable
    # at or below the cursor is in (no gap), nothing above it (cursor and credits commit together)
    creditable = chain.creditable()
    assert {txid.hex() for txid in transfers} <= set(chain.wallet.served)
    assert transfers == {t: v for t, v in creditable.items() if v[2] <= cursor}
    # each transfer counted exactly once: a PID's credit is the sum of its transfers
    sums: dict[bytes, int] = collections.defaultdict(int)
    firsts: dict[bytes, tuple[int, bytes]] = {}
    for txid, (pid, amount, height) in transfers.items():
        sums[pid] += amount
        firsts[pid] = min(firsts.get(pid, (height, txid)), (height, txid))
    assert {pid: amount for pid, (_, amount, _) in payments.items()} == dict(sums)
    assert {pid: txid for pid, (txid, _, _) in payments.items()} == \
        {pid: txid for pid, (_, txid) in firsts.items()}
    # one token per PID, derived from the PID's first transfer, carrying the PID's total
    assert token_rows == len(tokens)
    assert {pid for pid, (_, _, status) in payments.items() if status == 1} == set(tokens)
    for pid, (token, amount, revoked) in tokens.items():
        txid, total, _ = payments[pid]
        assert token == derive_service_token(PaymentId(pid), txid.hex()).raw
        assert (amount, revoked) == (total, None)
    # every token a customer was ever given is still there, for the same PID
    for pid16, token in customers.tokens.items():
        assert tokens[pid_raw(pid16)][0].hex() == token
    return cursor


async def resume(service: ServiceProcess, session: aiohttp.ClientSession, chain: Chain) -> None:
    """After a restart the monitor catches up: it scans up to what is N deep right now."""
    target = chain.wallet.height - N

    async def caught_up() -> bool:
        body = await readiness(session, service)
        scanned = body["monitor"]["scanned_height"]
        return body["http"] == 200 and scanned is not None and scanned >= target

    await wait_until(caught_up, "the monitor to catch up after the restart", timeout=15)


async def recheck_customers(service: ServiceProcess, session: aiohttp.ClientSession,
                            customers: Customers) -> int:
    """What customers got just before the kill still works; cut-off retries are consistent."""
    checked = 0
    for pid, token in customers.this_round.items():
        status, _, body, _ = await call(session, "GET", service.public, f"/api/v1/token/{token}")
        assert (status, body["status"]) == (200, "active"), (status, body)
        status, _, body, _ = await redeem(session, service.public, pid)
        assert (status, body["status"], body["service_token"]) == (200, "already_claimed", token)
        checked += 1
    for pid in sorted(customers.cut_off):
        status, _, body, _ = await redeem(session, service.public, pid)
        customers.record(pid, status, body)
    customers.this_round = {}
    customers.cut_off = set()
    return checked


async def crash_round(service: ServiceProcess, session: aiohttp.ClientSession, chain: Chain,
                      customers: Customers, rng: random.Random) -> float:
    """Blocks arrive and customers redeem until a random moment, when SIGKILL lands."""
    stop = asyncio.Event()

    async def produce() -> None:
        for _ in range(10_000):
            if stop.is_set():
                return
            chain.mine()
            await asyncio.sleep(rng.uniform(0.005, 0.03))  # block pacing, not synchronisation

    tasks = [asyncio.create_task(produce())] + [
        asyncio.create_task(customers.customer(session, service.public, stop))
        for _ in range(CUSTOMERS)
    ]
    moment = rng.uniform(0.05, 0.6)
    try:
        await asyncio.sleep(moment)  # the crash comes at a random moment, by design
        await service.kill()
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    return moment


async def test_sigkill_at_random_moments_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    seed = int(os.environ.get("ANONTICKET_CRASH_SEED") or random.SystemRandom().randrange(2**32))
    rng = random.Random(seed)
    rounds = crash_rounds()
    database = tmp_path / "anonticket.db"
    started = time.monotonic()
    async with RecordingWallet(height=1) as wallet:
        chain = Chain(wallet, rng)
        for _ in range(5):
            chain.mine()
        customers = Customers(chain, rng)
        env = service_env(
            database, MONERO_RPC_URL=wallet.url, MONITOR_POLL_INTERVAL_SECS="0.02",
            MONITOR_MIN_CONFIRMATIONS=N, MONITOR_MIN_PAYMENT_AMOUNT=MIN_PAYMENT,
            MONERO_RPC_TIMEOUT_SECS="5",
        )
        cursor, rechecked, moments = -1, 0, []
        for round_no in range(rounds + 1):
            last = round_no == rounds  # the last start only checks the recovery, then stops cleanly
            service = await ServiceProcess(env).start()
            try:
                async with aiohttp.ClientSession(trust_env=False) as session:
                    await resume(service, session, chain)
                    cursor = check_database(database, chain, customers, cursor)
                    rechecked += await recheck_customers(service, session, customers)
                    if not last:
                        moments.append(await crash_round(service, session, chain, customers, rng))
            finally:
                if service.alive():
                    assert await service.stop() == 0, service.log()
            assert "Traceback" not in service.log(), service.log()
            # the file as the crash left it, before anything opens it for writing
            cursor = check_database(database, chain, customers, cursor)
            for _ in range(rng.randint(0, 2)):  # blocks mined while the service is down
                chain.mine()
    elapsed = time.monotonic() - started
    credited = len([v for v in chain.creditable().values() if v[2] <= cursor])
    print(f"\ncrash safety: seed={seed} rounds={rounds} kills={rounds} "
          f"redeem answers={sum(customers.statuses.values())} ({dict(customers.statuses)}) "
          f"tokens={len(customers.tokens)} rechecked={rechecked} cut off={customers.cut_offs} "
          f"transfers credited={credited} "
          f"blocks={wallet.height} kill moments={min(moments, default=0):.2f}-"
          f"{max(moments, default=0):.2f}s "
          f"time={elapsed:.1f}s")
    assert len(customers.tokens) > rounds, "too few claims to prove anything"
    assert credited > rounds
