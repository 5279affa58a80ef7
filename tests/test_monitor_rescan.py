"""A transfer the wallet reports for the first time at or below the cursor is still credited.

A reorg deeper than N mines a payment that waited in the pool below the cursor: a poll
re-reads the last ``MONITOR_RESCAN_MARGIN_BLOCKS`` scanned blocks, against
tests/fake_wallet.py (a regtest chain cannot keep a payment in its pool while mining
past it).

Re-reading must stay cheap: the margin is read in a second call only when the wallet's
view under the cursor may have changed (and by a backstop), so a common poll is one call.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from anonticket.app import open_state
from anonticket.domain import derive_service_token
from anonticket.errors import PaymentNotFound
from anonticket.ledger import Claimed, Pending
from anonticket.monitor import Monitor
from anonticket.state import State
from fake_wallet import MAX_BLOCK_NUMBER, FakeWallet, RawReply, make_transfer
from test_monitor_fake_wallet import N, counted, monitor_config, new_pid


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
