"""Exactly-once debits and top-up races: SIGKILL the real service mid-load, retry, check.

The promise (issue 11): the balance never goes below zero and no debit is applied twice,
under any concurrency and across a SIGKILL at any moment; a debit answered 200 is durable,
one not answered either committed or not, and a retry with its key tells which.

Twelve clients debit twelve tokens (so debits of one token meet in one batch), each
request with a key of its own, while a racer offers each fresh paid PID to two tokens
at once. At a random moment the process gets SIGKILL. The file as the kill left it is
checked before anything opens it for writing (``debit_rounds.check``); then the service
restarts on it, every unanswered key and top-up is retried with the same body, a sample
of the answered ones is asked again (each must replay its answer byte for byte), and
the next round begins. After the last restart, ``anonticket db check`` must pass.

Rounds: ``ANONTICKET_CRASH_ROUNDS`` (default 20 with ``CI``, 5 otherwise) and
``ANONTICKET_CRASH_SEED``, as tests/service/test_crash_safety.py; the slow variant runs 50.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest

from anonticket.domain.ids import PaymentId, Transfer
from anonticket.storage import Storage
from crash_helpers import BIN, ServiceProcess, redeem, service_env
from debit_rounds import Book, check, snapshot
from test_crash_safety import crash_rounds

pytestmark = pytest.mark.slow  # SIGKILL rounds: the full suite's, not the quick tier's

PRICE = 1000  # piconero a day: every credit buys days, so no token expires mid-test
MIN_PAYMENT = 1000  # service_env's MONITOR_MIN_PAYMENT_AMOUNT
TOKENS, TOKEN_CREDIT = 12, 50_000
FRESH_PER_ROUND, FRESH_CREDIT = 40, 5_000
CLIENTS = 12
MAX_DEBITS_PER_CLIENT = 3000  # per round: a bound, never reached before the kill
REPLAYS_PER_RESTART = 200


async def pay(database: Path, count: int, amount: int, *, claim: bool) -> list[str]:
    """Confirmed payments written while the service is down, as the monitor of an earlier
    life would have; returns their tokens (claimed here) or their PIDs (left to top up)."""
    store = await Storage.open(database)
    now = int(time.time())
    try:
        pids = [PaymentId.generate() for _ in range(count)]
        await store.credit_transfers([Transfer(os.urandom(32), p, amount, 10) for p in pids],
                                     10, now, PRICE)
        if not claim:
            return [p.hex() for p in pids]
        rows = await store.claim_payments([p.raw for p in pids], MIN_PAYMENT, now)
        return [rows[p.raw].token.hex() for p in pids]  # type: ignore[union-attr]
    finally:
        await store.close()


async def load_until_killed(service: ServiceProcess, session: aiohttp.ClientSession,
                            book: Book, round_no: int, fresh: list[str],
                            rng: random.Random) -> float:
    stop = asyncio.Event()
    tasks = [asyncio.create_task(book.debit_client(session, service.internal, f"r{round_no}c{c}",
                                                   stop, MAX_DEBITS_PER_CLIENT))
             for c in range(CLIENTS)]
    tasks.append(asyncio.create_task(book.topup_racer(session, service.public, fresh, stop)))
    moment = rng.uniform(0.05, 0.6)
    try:
        await asyncio.sleep(moment)  # the crash comes at a random moment, by design
        await service.kill()
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    return moment


async def added_pids_redeem_to_their_token(service: ServiceProcess,
                                           session: aiohttp.ClientSession, book: Book) -> int:
    """A PID added to a token by a top-up redeems as already_claimed with that token."""
    winners = {o.pid: o.token for o in book.offers if o.answer and o.answer[0] == 200}
    for pid, token in winners.items():
        status, _, body, _ = await redeem(session, service.public, pid)
        assert (status, body["status"], body["service_token"]) == (200, "already_claimed", token)
    return len(winners)


async def run_rounds(tmp_path: Path, rounds: int) -> None:
    seed = int(os.environ.get("ANONTICKET_CRASH_SEED") or random.SystemRandom().randrange(2**32))
    rng = random.Random(seed)
    database = tmp_path / "anonticket.db"
    book = Book(rng)
    book.tokens = await pay(database, TOKENS, TOKEN_CREDIT, claim=True)
    env = service_env(database, MONITOR_ENABLED="false", ACCESS_PRICE_PER_DAY=PRICE)
    started, moments, redeemed = time.monotonic(), [], 0
    for round_no in range(rounds + 1):
        last = round_no == rounds  # the last start only retries, checks and stops cleanly
        fresh = [] if last else await pay(database, FRESH_PER_ROUND, FRESH_CREDIT, claim=False)
        book.paid.update(dict.fromkeys(fresh, FRESH_CREDIT))
        service = await ServiceProcess(env).start()
        try:
            async with aiohttp.ClientSession(trust_env=False) as session:
                await book.retry_and_replay(session, service.internal, service.public,
                                            REPLAYS_PER_RESTART)
                check(snapshot(database), book)  # the running service's file, all answered
                if last:
                    redeemed = await added_pids_redeem_to_their_token(service, session, book)
                else:
                    moments.append(await load_until_killed(service, session, book, round_no,
                                                           fresh, rng))
        finally:
            if service.alive():
                assert await service.stop() == 0, service.log()
        assert "Traceback" not in service.log(), service.log()
        check(snapshot(database), book, final=last)  # as the kill (or the stop) left it
    db_check = subprocess.run([str(BIN), "db", "check"], env=env, capture_output=True,
                              text=True, timeout=60, check=False)
    assert db_check.returncode == 0, db_check.stdout + db_check.stderr
    c = book.counts
    print(f"\ndebit crash safety: seed={seed} rounds={rounds} debits={len(book.debits)} "
          f"(200: {c.get('debit_200', 0)}, 402: {c.get('debit_402', 0)}) cut off={c.get('cut_off', 0)} "
          f"retried={c.get('retried', 0)} of which committed before the kill="
          f"{c.get('retries_found_committed', 0)} replays checked={c.get('replays_checked', 0)} "
          f"top-ups={len(book.offers)} (won {c.get('topup_200', 0)}, 409 {c.get('topup_409', 0)}, "
          f"cut off {c.get('topup_cut_off', 0)}) added PIDs redeemed={redeemed} "
          f"kill moments={min(moments, default=0):.2f}-{max(moments, default=0):.2f}s "
          f"time={time.monotonic() - started:.1f}s")
    assert c.get("debit_200", 0) > rounds and c.get("debit_402", 0) > 0, c
    assert c.get("cut_off", 0) > 0, "no kill landed while a debit was in flight"
    assert c.get("replays_checked", 0) > rounds, c
    assert c.get("topup_200", 0) == len({o.pid for o in book.offers}) > 0, c


async def test_debits_and_top_ups_are_exactly_once_across_sigkill(tmp_path: Path) -> None:
    await run_rounds(tmp_path, crash_rounds())


@pytest.mark.slow
async def test_debits_and_top_ups_are_exactly_once_across_many_sigkills(tmp_path: Path) -> None:
    await run_rounds(tmp_path, max(50, crash_rounds()))
