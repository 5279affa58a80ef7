"""The monitor against tests/fake_wallet.py: only what the real wallet cannot do on demand.

Hangs, 5xx, garbage, missing fields, a broken entry among good ones, time-locked
and long-PID transfers, counting and caching rules, and the exact window at the
cursor. Everything else (confirmations, reorgs, restarts, subaddresses) is proven
against the real monero-wallet-rpc in test_monitor_regtest.py.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from anonticket.service.app import Service, open_state, start_service
from anonticket.domain.ids import PaymentId, derive_service_token
from anonticket.domain.errors import PaymentNotFound
from anonticket.ledger.views import Claimed, Pending
from anonticket.monitor.loop import Monitor
from anonticket.runtime.state import State
from anonticket.monero.wallet_rpc import WalletError
from conftest import make_config, transfer, url
from fake_wallet import Failure, FakeWallet, make_transfer

N = 3
LONG_PID = "cd" * 32


def new_pid() -> PaymentId:
    return PaymentId.generate()


@pytest.fixture
async def fake() -> AsyncIterator[FakeWallet]:
    async with FakeWallet(height=100) as wallet:
        yield wallet


def monitor_config(tmp_path: Path, fake: FakeWallet, **overrides: Any) -> Any:
    settings = {"MONERO_RPC_URL": fake.url, "MONITOR_ENABLED": "true", "MONITOR_MIN_CONFIRMATIONS": N,
                "MONERO_RPC_TIMEOUT_SECS": "5", "API_NEGATIVE_CACHE_TTL_SECS": "600"}
    settings.update(overrides)
    return make_config(tmp_path, **settings)


@asynccontextmanager
async def monitored(tmp_path: Path, fake: FakeWallet, *, rng: random.Random | None = None,
                    sleep: Callable[[float], Awaitable[None]] | None = None,
                    **overrides: Any) -> AsyncIterator[tuple[State, Monitor]]:
    """A State on a real SQLite file and a Monitor polling the fake wallet, driven by hand."""
    async with AsyncExitStack() as stack:
        state = await open_state(monitor_config(tmp_path, fake, **overrides), stack)
        monitor = Monitor(state, rng=rng, **({"sleep": sleep} if sleep else {}))
        await monitor.start()
        stack.push_async_callback(monitor.aclose)
        yield state, monitor


def counted(state: State, result: str) -> float:
    return state.metrics.transfer[result]._value.get()


def polls(state: State, result: str) -> float:
    return state.metrics.poll[result]._value.get()


async def wait_for(condition: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


# ---------------------------------------------------------------------- broken wallets
FAILURES = [
    (Failure.HTTP_500, "http_error"), (Failure.UNAUTHORIZED, "unauthorized"),
    (Failure.MALFORMED_JSON, "bad_response"), (Failure.NOT_AN_OBJECT, "bad_response"),
    (Failure.NON_OBJECT_RESULT, "bad_response"), (Failure.NO_RESULT, "bad_response"),
    (Failure.MISSING_FIELDS, "bad_response"), (Failure.WRONG_TYPES, "bad_response"),
    (Failure.WRONG_ID, "bad_response"), (Failure.RPC_ERROR, "rpc_error"),
    (Failure.DISCONNECT, "unreachable"), (Failure.RESET, "unreachable"),
]


@pytest.mark.parametrize("method, failure, reason", [
    (method, failure, reason) for method in ("get_height", "get_transfers") for failure, reason in FAILURES
    if (method, failure) != ("get_transfers", Failure.MISSING_FIELDS)  # {} is "no transfers"
], ids=lambda v: v if isinstance(v, str) else v.value)
async def test_a_failed_call_credits_nothing_and_keeps_the_cursor(
    tmp_path: Path, fake: FakeWallet, failure: Failure, reason: str, method: str
) -> None:
    pid = new_pid()
    fake.add(make_transfer(pid.hex(), 5000, height=90), make_transfer(new_pid().hex(), 7, height=0, type="pool"))
    async with monitored(tmp_path, fake) as (state, monitor):
        fake.fail(failure, method=method)
        with pytest.raises(WalletError) as caught:
            await monitor.poll_once()
        assert caught.value.reason == reason
        assert await state.ledger.storage.get_cursor() is None
        assert not state.ledger.pending_view and state.monitor.last_success is None
        # the next poll is a clean one
        assert await monitor.poll_once() == 1
        assert await state.ledger.storage.get_cursor() == 100 - N
        assert isinstance(await state.ledger.redeem(pid), Claimed)


async def test_an_empty_get_transfers_answer_means_no_transfers(tmp_path: Path, fake: FakeWallet) -> None:
    # wallet-rpc leaves empty categories out, so {} is its real answer for "nothing":
    # it cannot be told apart from a lossy one, and moving the cursor on it is right
    fake.fail(Failure.MISSING_FIELDS, method="get_transfers")
    async with monitored(tmp_path, fake) as (state, monitor):
        assert await monitor.poll_once() == 0
        assert await state.ledger.storage.get_cursor() == 100 - N
        assert state.monitor.last_error is None and polls(state, "ok") == 1


async def test_a_hanging_wallet_times_out(tmp_path: Path, fake: FakeWallet) -> None:
    async with monitored(tmp_path, fake, MONERO_RPC_TIMEOUT_SECS="0.3") as (state, monitor):
        fake.fail(Failure.HANG, method="get_transfers")
        started = time.monotonic()
        with pytest.raises(WalletError) as caught:
            await monitor.poll_once()
        assert caught.value.reason == "timeout"
        assert time.monotonic() - started < 3
        assert await state.ledger.storage.get_cursor() is None


async def test_an_invalid_entry_is_counted_logged_without_secrets_and_does_not_hold_the_cursor(
    tmp_path: Path, fake: FakeWallet, caplog: pytest.LogCaptureFixture
) -> None:
    good_a, good_b, victim = new_pid(), new_pid(), new_pid()
    broken = make_transfer(victim.hex(), 5000, height=91)
    broken["amount"] = "5000"
    pool_broken = make_transfer(victim.hex(), 5000, height=0, type="pool")
    del pool_broken["payment_id"]
    fake.add(make_transfer(good_a.hex(), 5000, height=90), broken,
             make_transfer(good_b.hex(), 6000, height=92), pool_broken)
    caplog.set_level(logging.DEBUG)
    async with monitored(tmp_path, fake) as (state, monitor):
        assert await monitor.poll_once() == 2
        assert await state.ledger.storage.get_cursor() == 100 - N
        assert counted(state, "invalid") == 2 and counted(state, "credited") == 2
        for pid, amount in ((good_a, 5000), (good_b, 6000)):
            result = await state.ledger.redeem(pid)
            assert isinstance(result, Claimed) and result.balance == amount
        with pytest.raises(PaymentNotFound):
            await state.ledger.redeem(victim)
        fake.height += 5
        await monitor.poll_once()
        await monitor.poll_once()
        assert counted(state, "invalid") == 2  # the pool one is seen every poll, counted once
    warnings = [r.getMessage() for r in caplog.records if "failed validation" in r.getMessage()]
    assert warnings == ["skipped a wallet entry that failed validation (field: amount)",
                        "skipped a wallet entry that failed validation (field: payment_id)"]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for secret in (good_a.hex(), good_b.hex(), victim.hex(), broken["txid"], pool_broken["txid"]):
        assert secret not in logged


# ---------------------------------------------------------------------- backoff and logs
class FixedJitter(random.Random):
    def __init__(self, factor: float) -> None:
        super().__init__(0)
        self.factor = factor

    def uniform(self, a: float, b: float) -> float:
        assert (a, b) == (0.5, 1.0)
        return a + (b - a) * self.factor


async def test_backoff_grows_exponentially_with_a_cap_and_jitter(tmp_path: Path, fake: FakeWallet) -> None:
    interval = 0.5
    bounds: dict[float, list[float]] = {}
    for factor in (0.0, 1.0):
        async with monitored(tmp_path / str(factor), fake, rng=FixedJitter(factor),
                             MONITOR_POLL_INTERVAL_SECS=interval) as (_, monitor):
            delays = []
            for failures in range(1, 16):
                monitor._failures = failures
                delays.append(monitor._backoff())
            bounds[factor] = delays
    assert bounds[1.0][:5] == [0.5, 1.0, 2.0, 4.0, 8.0]
    assert bounds[1.0][-1] == 60.0 and max(bounds[1.0]) == 60.0
    assert bounds[0.0][:3] == [0.25, 0.5, 1.0] and bounds[0.0][-1] == 30.0
    async with monitored(tmp_path / "real", fake, rng=random.Random(7)) as (_, monitor):
        monitor._failures = 3
        draws = {monitor._backoff() for _ in range(50)}
        lo, hi = 0.5 * 4 * 5.0, 4 * 5.0  # default interval 5 s, third failure
        assert len(draws) > 40 and all(lo <= d <= hi for d in draws)


class Stop(Exception):
    pass


async def test_the_run_loop_backs_off_resets_after_success_and_logs_state_changes_once(
    tmp_path: Path, fake: FakeWallet, caplog: pytest.LogCaptureFixture
) -> None:
    delays: list[float] = []

    async def fake_sleep(delay: float) -> None:
        delays.append(delay)
        if len(delays) == 9:
            raise Stop()
        await asyncio.sleep(0)

    fake.fail(Failure.HTTP_500, times=3, method="get_height")
    fake.fail(Failure.MALFORMED_JSON, times=2, method="get_height")
    caplog.set_level(logging.INFO, logger="anonticket.monitor")
    async with monitored(tmp_path, fake, rng=FixedJitter(1.0), sleep=fake_sleep,
                         MONITOR_POLL_INTERVAL_SECS="0.1") as (state, monitor):
        original = fake.methods["get_height"]
        served = []

        def height_then_fail(params: dict[str, Any]) -> Any:
            served.append(1)
            if len(served) == 2:  # the 2nd healthy poll: one more failure after a success
                fake.fail(Failure.HTTP_500, method="get_height")
            return original(params)

        fake.methods["get_height"] = height_then_fail
        with pytest.raises(Stop):
            await monitor.run()
        assert polls(state, "http_error") == 4 and polls(state, "bad_response") == 2
        assert polls(state, "ok") == 3
    # 5 failures doubling across the reason change, 2 healthy polls, a fresh failure from the base
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 0.1, 0.1, 0.1, 0.1])
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "wallet poll failed (http_error); retrying with backoff",
        "wallet poll failed (bad_response); retrying with backoff",
        "wallet poll recovered after 5 failed attempts",
        "wallet poll failed (http_error); retrying with backoff",
        "wallet poll recovered after 1 failed attempts",
    ]


async def test_an_unexpected_error_does_not_end_the_loop(
    tmp_path: Path, fake: FakeWallet, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = new_pid().hex()
    calls = []

    async def once(delay: float) -> None:
        calls.append(delay)
        if len(calls) == 2:
            raise Stop()

    async with monitored(tmp_path, fake, sleep=once) as (state, monitor):
        async def broken_credit(*args: Any) -> Any:
            raise RuntimeError(f"bug quoting {secret}")

        monkeypatch.setattr(state.ledger, "credit", broken_credit)
        with pytest.raises(Stop):
            await monitor.run()
        assert state.monitor.last_error == "internal" and monitor._failures == 2
    messages = [r.getMessage() for r in caplog.records if r.name == "anonticket.monitor"]
    assert messages == ["wallet poll failed (internal: RuntimeError); retrying with backoff"]
    assert secret not in caplog.text


# ---------------------------------------------------------------------- the running service
@asynccontextmanager
async def running(tmp_path: Path, fake: FakeWallet, **overrides: Any) -> AsyncIterator[Service]:
    config = monitor_config(tmp_path, fake, MONITOR_POLL_INTERVAL_SECS="0.02", **overrides)
    service = await start_service(config)
    try:
        yield service
    finally:
        await service.aclose()


async def test_readiness_turns_503_with_the_reason_and_recovers(
    tmp_path: Path, fake: FakeWallet, http: aiohttp.ClientSession
) -> None:
    fake.fail(Failure.HTTP_500, times=None)
    async with running(tmp_path, fake, MONITOR_READY_MAX_AGE_SECS="0.3") as service:
        public = url(service.public_address, "/health/ready")
        internal = url(service.internal_address, "/health/ready")

        async def status(where: str) -> tuple[int, dict[str, Any]]:
            async with http.get(where) as resp:
                return resp.status, await resp.json()

        assert (await status(public))[0] == 200  # start-up grace
        started = time.monotonic()

        async def not_ready() -> bool:
            return (await status(public))[0] == 503

        while not await not_ready():
            assert time.monotonic() - started < 10
            await asyncio.sleep(0.02)
        assert time.monotonic() - started >= 0.25
        code, body = await status(internal)
        assert code == 503 and body["status"] == "not_ready"
        assert "http_error" in body["reason"] and body["monitor"]["last_error"] == "http_error"
        fake.clear_failures()
        while (await status(public))[0] != 200:
            assert time.monotonic() - started < 20
            await asyncio.sleep(0.02)
        code, body = await status(internal)
        assert code == 200 and body["reason"] is None and body["monitor"]["wallet_height"] == 100


async def test_the_api_keeps_serving_while_a_poll_hangs(
    tmp_path: Path, fake: FakeWallet, http: aiohttp.ClientSession
) -> None:
    fake.fail(Failure.HANG, times=None)
    async with running(tmp_path, fake, MONERO_RPC_TIMEOUT_SECS="60") as service:
        pid = new_pid()
        await service.state.ledger.credit([transfer(pid, 5000, height=10)], None)
        await wait_for(lambda: fake.calls("get_height"))  # the first poll is now stuck
        started = time.monotonic()
        async with http.post(url(service.public_address, "/api/v1/redeem"), json={"pid": pid.hex()}) as resp:
            assert resp.status == 200 and (await resp.json())["status"] == "success"
        async with http.get(url(service.internal_address, "/health/live")) as resp:
            assert resp.status == 200
        assert time.monotonic() - started < 10  # far below the stuck call's 60 s timeout
        assert service.state.monitor.last_success is None and service.state.monitor.last_error is None
        assert len(fake.calls("get_height")) == 1  # still the same, unanswered poll
        stop_started = time.monotonic()
    assert time.monotonic() - stop_started < 5  # shutdown cancels the stuck call


# ---------------------------------------------------------------------- what gets credited
async def test_time_locked_transfers_are_never_credited(tmp_path: Path, fake: FakeWallet) -> None:
    locked_pid, pool_pid = new_pid(), new_pid()
    fake.add(make_transfer(locked_pid.hex(), 5000, height=50, unlock_time=60),
             make_transfer(pool_pid.hex(), 5000, height=0, type="pool", unlock_time=10**9))
    async with monitored(tmp_path, fake) as (state, monitor):
        for _ in range(3):
            assert await monitor.poll_once() == 0
            fake.height += 20
        assert counted(state, "locked") == 2 and counted(state, "credited") == 0
        for pid in (locked_pid, pool_pid):
            with pytest.raises(PaymentNotFound):
                await state.ledger.redeem(pid)
        assert (await state.ledger.storage.get_stats())["transfers"] == 0


@pytest.mark.parametrize("accept", [False, True])
async def test_long_pids_are_credited_only_with_the_opt_in(tmp_path: Path, fake: FakeWallet, accept: bool) -> None:
    entry = make_transfer(LONG_PID, 5000, height=60)
    fake.add(entry)
    async with monitored(tmp_path, fake, API_ACCEPT_LONG_PIDS=str(accept).lower()) as (state, monitor):
        assert await monitor.poll_once() == int(accept)
        assert counted(state, "long_pid") == int(not accept)
        pid = PaymentId.parse(LONG_PID, accept_long=True)
        if accept:
            result = await state.ledger.redeem(pid)
            assert isinstance(result, Claimed) and result.token == derive_service_token(pid, entry["txid"]).raw
        else:
            with pytest.raises(PaymentNotFound):
                await state.ledger.redeem(pid)


async def test_each_transfer_is_counted_once_per_result(tmp_path: Path, fake: FakeWallet) -> None:
    pid = new_pid()
    pooled = make_transfer(pid.hex(), 5000, height=0, type="pool")
    plain = make_transfer("0" * 16, 5000, height=0, type="pool")
    fake.add(pooled, plain)
    async with monitored(tmp_path, fake) as (state, monitor):
        for _ in range(5):
            await monitor.poll_once()
        assert counted(state, "pending") == 1 and counted(state, "zero_pid") == 1
        fake.confirm(pooled["txid"], 101)
        for _ in range(5):  # pending for N-1 more blocks, then credited, then seen again
            fake.height += 1
            await monitor.poll_once()
        assert counted(state, "pending") == 1 and counted(state, "credited") == 1
        assert counted(state, "zero_pid") == 1
        assert isinstance(await state.ledger.redeem(pid), Claimed)


async def test_the_negative_cache_forgets_a_pid_seen_pending_or_credited(tmp_path: Path, fake: FakeWallet) -> None:
    pending_pid, credited_pid = new_pid(), new_pid()
    async with monitored(tmp_path, fake) as (state, monitor):
        cache = state.ledger.negative_cache
        for pid in (pending_pid, credited_pid):
            with pytest.raises(PaymentNotFound):
                await state.ledger.redeem(pid)
            assert pid.raw in cache
        pooled = make_transfer(pending_pid.hex(), 5000, height=0, type="pool")
        fake.add(pooled, make_transfer(credited_pid.hex(), 5000, height=95))
        await monitor.poll_once()
        assert pending_pid.raw not in cache and credited_pid.raw not in cache
        assert await state.ledger.redeem(pending_pid) == Pending(0, N)
        assert isinstance(await state.ledger.redeem(credited_pid), Claimed)
        # a PID that was pending, vanished, got a 404 cached, then is credited
        fake.pool.clear()
        await monitor.poll_once()
        with pytest.raises(PaymentNotFound):
            await state.ledger.redeem(pending_pid)
        assert pending_pid.raw in cache
        fake.add(dict(pooled, type="in", height=fake.height - N))
        assert await monitor.poll_once() == 0  # at or below the cursor: already scanned
        fake.incoming.pop()
        fake.add(dict(pooled, type="in", height=fake.height + 1))
        fake.height += 1 + N
        assert await monitor.poll_once() == 1
        assert pending_pid.raw not in cache
        assert isinstance(await state.ledger.redeem(pending_pid), Claimed)


# ---------------------------------------------------------------------- the window
async def test_start_height_is_inclusive_on_an_empty_db_and_the_stored_cursor_wins(
    tmp_path: Path, fake: FakeWallet
) -> None:
    before, first, second = new_pid(), new_pid(), new_pid()
    fake.add(make_transfer(before.hex(), 5000, height=49), make_transfer(first.hex(), 5000, height=50),
             make_transfer(second.hex(), 5000, height=51))
    async with monitored(tmp_path, fake, MONITOR_START_HEIGHT=50) as (state, monitor):
        assert await monitor.poll_once() == 2
        assert fake.calls("get_transfers")[-1]["min_height"] == 49
        assert await state.ledger.storage.get_cursor() == 97
        assert state.metrics.scanned_height._value.get() == 97
        with pytest.raises(PaymentNotFound):
            await state.ledger.redeem(before)
    fake.height = 110
    async with monitored(tmp_path, fake, MONITOR_START_HEIGHT=0,
                         MONITOR_RESCAN_MARGIN_BLOCKS=5) as (state, monitor):
        assert await monitor.poll_once() == 0
        # from the stored cursor, then (a restart) the margin below it
        assert [c["min_height"] for c in fake.calls("get_transfers")[-2:]] == [97, 97 - 5]
        assert await state.ledger.storage.get_cursor() == 107
        assert (await state.ledger.storage.get_stats())["transfers"] == 2


async def test_a_young_chain_leaves_the_start_height_in_charge(tmp_path: Path, fake: FakeWallet) -> None:
    fake.height = 20  # below start height + N: nothing is fully scanned yet
    async with monitored(tmp_path, fake, MONITOR_START_HEIGHT=30) as (state, monitor):
        await monitor.poll_once()
        assert await state.ledger.storage.get_cursor() is None and monitor.cursor == 29
        pid = new_pid()
        fake.add(make_transfer(pid.hex(), 5000, height=30))
        fake.height = 30 + N
        assert await monitor.poll_once() == 1
        assert await state.ledger.storage.get_cursor() == 30


async def test_a_transfer_exactly_at_cursor_plus_one_is_credited(tmp_path: Path, fake: FakeWallet) -> None:
    # without the margin, so the poll asks from exactly the cursor (test_monitor_rescan.py has it on)
    async with monitored(tmp_path, fake, MONITOR_RESCAN_MARGIN_BLOCKS=0) as (state, monitor):
        await monitor.poll_once()
        cursor = await state.ledger.storage.get_cursor()
        assert cursor == 100 - N
        pid = new_pid()
        fake.add(make_transfer(pid.hex(), 5000, height=cursor + 1))
        fake.height += 1
        assert await monitor.poll_once() == 1
        assert fake.calls("get_transfers")[-1]["min_height"] == cursor
        assert await state.ledger.storage.get_cursor() == cursor + 1
        assert isinstance(await state.ledger.redeem(pid), Claimed)
