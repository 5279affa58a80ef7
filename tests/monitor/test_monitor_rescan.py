"""A transfer the wallet reports for the first time at or below the cursor is still credited.

Two real ways there, both against tests/fake_wallet.py (the restored wallet also runs
against the real wallet-rpc in test_monitor_rescan_regtest.py):

- a reorg deeper than N mines a payment that waited in the pool below the cursor: every
  poll re-reads ``MONITOR_RESCAN_MARGIN_BLOCKS`` below the cursor;
- a watch-only wallet restored with too high a restore height is rescanned by the
  operator: ``POST /api/v1/monitor/rescan`` (``anonticket monitor rescan``) lowers the
  cursor before the next poll.

Re-reading must stay cheap: the margin is read in a second call only when the wallet's
view under the cursor may have changed (and by a backstop), so a common poll is one call.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
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
from conftest import url
from fake_wallet import MAX_BLOCK_NUMBER, Failure, FakeWallet, RawReply, make_transfer
from cli_helpers import cli, clean_env, one_error_line
from test_monitor_fake_wallet import N, counted, monitor_config, new_pid, wait_for


@pytest.fixture
async def fake() -> AsyncIterator[FakeWallet]:
    async with FakeWallet(height=100) as wallet:
        yield wallet


@asynccontextmanager
async def monitored(tmp_path: Path, fake: FakeWallet, *, clock: Callable[[], float] | None = None,
                    **overrides: Any) -> AsyncIterator[tuple[State, Monitor]]:
    """A State on a real SQLite file and a Monitor polling the fake wallet, driven by hand."""
    async with AsyncExitStack() as stack:
        state = await open_state(monitor_config(tmp_path, fake, **overrides), stack)
        monitor = Monitor(state, **({"clock": clock} if clock else {}))
        await monitor.start()
        stack.push_async_callback(monitor.aclose)
        yield state, monitor


def min_heights(fake: FakeWallet) -> list[int]:
    return [params["min_height"] for params in fake.calls("get_transfers")]


# ---------------------------------------------------------------------- the margin
@pytest.mark.parametrize("margin, credited", [(None, True), ("3", True), ("2", False), ("0", False)])
async def test_a_reorg_deeper_than_n_mines_a_pool_payment_below_the_cursor(
    tmp_path: Path, fake: FakeWallet, margin: str | None, credited: bool
) -> None:
    pid = new_pid()
    pooled = make_transfer(pid.hex(), 5000, height=0, type="pool")
    fake.add(pooled)
    settings = {} if margin is None else {"MONITOR_RESCAN_MARGIN_BLOCKS": margin}
    async with monitored(tmp_path, fake, **settings) as (state, monitor):
        for height in (100, 110):  # seen in the pool at both heights
            fake.height = height
            assert await monitor.poll_once() == 0
            assert await state.ledger.redeem(pid) == Pending(0, N)
        assert monitor.cursor == 107
        # a reorg deeper than N (the new chain forked below 105) mined the payment at 105:
        # the third-last block the next poll's cursor (107) covers, and below the cursor
        # that poll moves to (109), from which no poll would ever ask for 105 again
        fake.confirm(pooled["txid"], 105)
        fake.height = 112
        assert await monitor.poll_once() == int(credited)
        assert monitor.cursor == 109
        if margin != "0":  # the pending payment vanished from above the cursor: the margin
            below = fake.calls("get_transfers")[-1]
            assert (below["min_height"], below["max_height"], below["pool"]) == (
                107 - int(margin or 100), 107, False)
        if credited:
            result = await state.ledger.redeem(pid)
            assert isinstance(result, Claimed) and result.balance == 5000
            assert result.token == derive_service_token(pid, pooled["txid"]).raw
        else:  # beyond the margin (or none): lost for good, as before the margin
            for _ in range(3):
                fake.height += 1
                assert await monitor.poll_once() == 0
            with pytest.raises(PaymentNotFound):
                await state.ledger.redeem(pid)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_the_margin_is_read_when_the_view_under_the_cursor_may_have_changed(
    tmp_path: Path, fake: FakeWallet
) -> None:
    clock = Clock()
    old = make_transfer(new_pid().hex(), 5000, height=90)
    fake.add(old)
    async with monitored(tmp_path, fake, clock=clock) as (state, monitor):

        async def calls_of_one_poll() -> int:
            before = len(fake.calls("get_transfers"))
            await monitor.poll_once()
            return len(fake.calls("get_transfers")) - before

        # a fresh database: at its first poll nothing is below the cursor yet
        assert [await calls_of_one_poll() for _ in range(3)] == [1, 1, 1]
        assert await state.ledger.storage.get_cursor() == 97
        dropped = make_transfer(new_pid().hex(), 5000, height=0, type="pool")
        fake.add(dropped)
        assert await calls_of_one_poll() == 1  # pending now, and watched
        fake.pool.clear()  # double spent, or mined below the cursor: the margin tells
        assert [await calls_of_one_poll() for _ in range(2)] == [2, 1]
        fake.height += 1
        assert await calls_of_one_poll() == 1
        fake.height -= 1  # the wallet went back: a reorg to a shorter chain, another wallet
        assert [await calls_of_one_poll() for _ in range(2)] == [2, 1]
        clock.now += 119
        assert await calls_of_one_poll() == 1
        clock.now += 1  # the backstop, whatever happened
        assert [await calls_of_one_poll() for _ in range(2)] == [2, 1]
        # the margin's transfers are credited already: the credit skips them by txid
        stats = await state.ledger.storage.get_stats()
        assert stats["transfers"] == 1 and counted(state, "credited") == 1
    async with monitored(tmp_path, fake, clock=clock) as (state, monitor):
        before = len(fake.calls("get_transfers"))
        assert await monitor.poll_once() == 0  # a restart forgets what was pending: re-read
        assert len(fake.calls("get_transfers")) - before == 2
        assert (await state.ledger.storage.get_stats())["transfers"] == 1


async def test_a_failed_margin_read_does_not_fail_the_poll(
    tmp_path: Path, fake: FakeWallet, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    async with monitored(tmp_path, fake, clock=clock) as (state, monitor):
        await monitor.poll_once()  # cursor 97
    late, fresh = new_pid(), new_pid()
    fake.add(make_transfer(late.hex(), 5000, height=95),  # first reported below the cursor
             make_transfer(fresh.hex(), 6000, height=98))
    fake.height = 101
    serve = fake.methods["get_transfers"]
    broken = {"margin": True}

    def margin_fails(params: dict[str, Any]) -> Any:
        if broken["margin"] and params["max_height"] != MAX_BLOCK_NUMBER:
            return RawReply("Internal Server Error", status=500)
        return serve(params)

    fake.methods["get_transfers"] = margin_fails
    caplog.set_level(logging.INFO, logger="anonticket.monitor")
    async with monitored(tmp_path, fake, clock=clock) as (state, monitor):
        assert await monitor.poll_once() == 1  # the fresh one, above the cursor
        assert state.monitor.last_error is None and await state.ledger.storage.get_cursor() == 98
        clock.now += 120
        assert await monitor.poll_once() == 0
        broken["margin"] = False
        clock.now += 120
        assert await monitor.poll_once() == 1
        assert isinstance(await state.ledger.redeem(late), Claimed)
    messages = [r.getMessage() for r in caplog.records if "below the cursor" in r.getMessage()]
    assert messages == [  # once per outage, not per retry
        "re-reading the 98 blocks below the cursor failed (http_error); polls go on without "
        "them and retry every 120 s",
        "re-reading the blocks below the cursor works again"]


async def test_the_margin_never_reads_below_the_start_height(tmp_path: Path, fake: FakeWallet) -> None:
    # the operator chose the first height to credit: older payments may have been served
    # elsewhere, so a margin reaching under it would pay them twice
    older, first = new_pid(), new_pid()
    fake.add(make_transfer(older.hex(), 5000, height=45), make_transfer(first.hex(), 5000, height=50))
    for calls in (2, 5):  # and after a restart, whose first poll reads the margin
        async with monitored(tmp_path, fake, MONITOR_START_HEIGHT=50) as (state, monitor):
            await monitor.poll_once()
            fake.height += 5
            await monitor.poll_once()
            assert len(fake.calls("get_transfers")) == calls
            assert min(min_heights(fake)) == 49
            with pytest.raises(PaymentNotFound):
                await state.ledger.redeem(older)
            assert isinstance(await state.ledger.redeem(first), Claimed)


# ---------------------------------------------------------------------- the operator's rescan
async def restored_wallet_missed_a_payment(fake: FakeWallet, state: State, monitor: Any) -> tuple[PaymentId, str]:
    """The cursor at 202, then the wallet, rescanned, reports a payment at 150."""
    fake.height = 205
    assert await monitor.poll_once() == 0
    assert monitor.cursor == 202
    pid = new_pid()
    entry = make_transfer(pid.hex(), 9000, height=150)
    fake.add(entry)
    fake.height += 1
    assert await monitor.poll_once() == 0  # 150 is far below the margin (10 here)
    with pytest.raises(PaymentNotFound):
        await state.ledger.redeem(pid)
    return pid, entry["txid"]


async def test_a_rescan_credits_what_a_restored_wallet_reports_far_below_the_cursor(
    tmp_path: Path, fake: FakeWallet
) -> None:
    async with monitored(tmp_path, fake, MONITOR_RESCAN_MARGIN_BLOCKS=10) as (state, monitor):
        pid, txid = await restored_wallet_missed_a_payment(fake, state, monitor)
        assert state.monitor.request_rescan(160) == 160
        assert state.monitor.request_rescan(150) == 150  # the lower one wins
        assert state.monitor.request_rescan(170) == 150
        assert await monitor.poll_once() == 1
        assert fake.calls("get_transfers")[-1]["min_height"] == 149
        assert state.monitor.rescan_from is None and monitor.cursor == 203
        assert await state.ledger.storage.get_cursor() == 203
        result = await state.ledger.redeem(pid)
        assert isinstance(result, Claimed) and result.token == derive_service_token(pid, txid).raw
        # from above the cursor: nothing to do, the cursor stays
        state.monitor.request_rescan(300)
        await monitor.poll_once()
        assert fake.calls("get_transfers")[-1]["min_height"] == 203
        assert (await state.ledger.storage.get_stats())["transfers"] == 1


async def test_a_rescan_survives_a_failed_poll_and_a_restart(tmp_path: Path, fake: FakeWallet) -> None:
    async with monitored(tmp_path, fake, MONITOR_RESCAN_MARGIN_BLOCKS=10) as (state, monitor):
        pid, _ = await restored_wallet_missed_a_payment(fake, state, monitor)
        state.monitor.request_rescan(150)
        fake.fail(Failure.HTTP_500, method="get_transfers")
        with pytest.raises(WalletError):
            await monitor.poll_once()
        # lowered in the database before the wallet was asked
        assert await state.ledger.storage.get_cursor() == 149
        assert state.monitor.rescan_from is None
    async with monitored(tmp_path, fake, MONITOR_RESCAN_MARGIN_BLOCKS=10) as (state, monitor):
        assert await monitor.poll_once() == 1
        assert await state.ledger.storage.get_cursor() == 203
        assert isinstance(await state.ledger.redeem(pid), Claimed)


async def test_a_rescan_whose_cursor_write_fails_stays_requested(
    tmp_path: Path, fake: FakeWallet, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with monitored(tmp_path, fake, MONITOR_RESCAN_MARGIN_BLOCKS=10) as (state, monitor):
        pid, _ = await restored_wallet_missed_a_payment(fake, state, monitor)
        state.monitor.request_rescan(150)
        credit = state.ledger.credit

        async def broken(*args: Any) -> Any:
            raise RuntimeError("disk on fire")

        monkeypatch.setattr(state.ledger, "credit", broken)
        with pytest.raises(RuntimeError):
            await monitor.poll_once()
        assert state.monitor.rescan_from == 150 and monitor.cursor == 203
        monkeypatch.setattr(state.ledger, "credit", credit)
        assert await monitor.poll_once() == 1
        assert isinstance(await state.ledger.redeem(pid), Claimed)


# ---------------------------------------------------------------------- the route and the command
@asynccontextmanager
async def running(tmp_path: Path, fake: FakeWallet, **overrides: Any) -> AsyncIterator[Service]:
    config = monitor_config(tmp_path, fake, MONITOR_POLL_INTERVAL_SECS="0.02", **overrides)
    service = await start_service(config)
    try:
        yield service
    finally:
        await service.aclose()


async def post_rescan(http: aiohttp.ClientSession, address: str, body: Any) -> tuple[int, dict[str, Any]]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with http.post(url(address, "/api/v1/monitor/rescan"), data=data) as resp:
        return resp.status, await resp.json()


async def test_the_route_schedules_a_rescan_that_the_running_monitor_applies(
    tmp_path: Path, fake: FakeWallet, http: aiohttp.ClientSession
) -> None:
    pid = new_pid()
    fake.height = 205
    async with running(tmp_path, fake, MONITOR_RESCAN_MARGIN_BLOCKS=10) as service:
        state = service.state
        await wait_for(lambda: state.monitor.scanned_height == 202)
        fake.add(make_transfer(pid.hex(), 9000, height=150))
        for bad in ({}, {"from_height": -1}, {"from_height": "150"}, {"from_height": True},
                    {"from_height": 1.5}, {"from_height": 2**62 + 1}, [150], b"from_height=150"):
            status, body = await post_rescan(http, service.internal_address, bad)
            assert (status, body["error"]) == (400, "invalid_request"), bad
        status, body = await post_rescan(http, service.public_address, {"from_height": 150})
        assert (status, body["error"]) == (404, "not_found")
        assert state.monitor.rescan_from is None
        status, body = await post_rescan(http, service.internal_address, {"from_height": 150})
        assert status == 202
        assert body == {"status": "scheduled", "from_height": 150, "scanned_height": 202}
        await wait_for(lambda: state.monitor.rescan_from is None and counted(state, "credited") == 1)
        async with http.post(url(service.public_address, "/api/v1/redeem"), json={"pid": pid.hex()}) as resp:
            assert resp.status == 200 and (await resp.json())["balance"] == 9000


async def test_the_route_refuses_when_the_monitor_is_off(tmp_path: Path, fake: FakeWallet,
                                                         http: aiohttp.ClientSession) -> None:
    async with running(tmp_path, fake, MONITOR_ENABLED="false") as service:
        status, body = await post_rescan(http, service.internal_address, {"from_height": 150})
        assert (status, body["error"]) == (409, "monitor_disabled")
        assert service.state.monitor.rescan_from is None


async def test_the_command_asks_the_running_service(tmp_path: Path, fake: FakeWallet) -> None:
    pid = new_pid()
    fake.height = 205
    async with running(tmp_path, fake, MONITOR_RESCAN_MARGIN_BLOCKS=10,
                       API_INTERNAL_TOKEN="s3cret-admin-token") as service:
        state = service.state
        await wait_for(lambda: state.monitor.scanned_height == 202)
        fake.add(make_transfer(pid.hex(), 9000, height=150))
        env = clean_env(API_INTERNAL_BIND_ADDRESS=service.internal_address,
                        API_INTERNAL_TOKEN="s3cret-admin-token")
        code, out, err = await cli(env, "monitor", "rescan", "--from-height", "150")
        assert (code, err) == (0, "")
        assert json.loads(out) == {"status": "scheduled", "from_height": 150, "scanned_height": 202}
        await wait_for(lambda: counted(state, "credited") == 1)
        assert isinstance(await state.ledger.redeem(pid), Claimed)
        for bad in ("-1", "abc", str(2**62 + 1)):
            code, out, err = await cli(env, "monitor", "rescan", "--from-height", bad)
            assert (code, out) == (2, "") and "--from-height" in one_error_line(err)
        code, _, err = await cli(env, "monitor", "rescan")
        assert code == 2 and "--from-height" in one_error_line(err)
        code, _, err = await cli({**env, "API_INTERNAL_TOKEN": "wrong"}, "monitor", "rescan",
                                 "--from-height", "150")
        assert code == 1 and "refused the admin token" in one_error_line(err)
    async with running(tmp_path / "off", fake, MONITOR_ENABLED="false") as service:
        env = clean_env(API_INTERNAL_BIND_ADDRESS=service.internal_address)
        code, out, err = await cli(env, "monitor", "rescan", "--from-height", "150")
        assert (code, out) == (1, "") and "monitor_disabled" in one_error_line(err)
    code, _, err = await cli(env, "monitor", "rescan", "--from-height", "150", "--timeout", "2")
    assert code == 1 and "cannot reach the internal listener" in one_error_line(err)
