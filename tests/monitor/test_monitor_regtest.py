"""The monitor against the REAL monero-wallet-rpc on a private regtest chain.

The network is shared by the whole session, so every test pays fresh random PIDs
and watches only its own window: ``MONITOR_START_HEIGHT`` is the height at the test's
start, after one block that sweeps whatever an earlier test left in the pool.
Window logic is driven with ``Monitor.poll_once()`` (deterministic); the customer's
view with the running service and real HTTP redeems.
"""

from __future__ import annotations

import asyncio
import time
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
from anonticket.regtest import RegtestNetwork
from anonticket.runtime.state import State
from anonticket.storage import is_postgres_url
from anonticket.storage.postgres.leader import take_over
from anonticket.monero.wallet_rpc import WalletUnauthorized
from conftest import claim_summary, make_config, url
from regtest_fixtures import DIGEST_LOGIN, random_pid16

pytestmark = pytest.mark.regtest

N = 3
XMR = 10**12
Net = RegtestNetwork


def pid_of(text: str) -> PaymentId:
    return PaymentId.parse(text)


async def start_window(net: Net) -> int:
    """Mine one block so no earlier test's pool transaction lands in our window."""
    return await asyncio.to_thread(net.mine, 1)


async def pay(net: Net, pid: str, amount: int, *, mine: int = 0, **options: Any) -> dict[str, Any]:
    """``net.pay`` that surely puts a mined payment in the first new block.

    monerod leaves a just-submitted transaction out of block templates until its
    Dandelion++ relay state turns public, a few ms later on another thread, so
    ``net.pay(mine=k)`` now and then mines past it. Mine only once it is in the template.
    """
    paid = await asyncio.to_thread(net.pay, pid, amount, **options)
    if mine:
        paid["height"] = await mine_including(net, [paid["txid"]], mine)
    return paid


async def mine_including(net: Net, txids: list[str], blocks: int) -> int:
    deadline = time.monotonic() + 20
    while True:
        template = await asyncio.to_thread(
            net.daemon_rpc, "get_block_template", {"wallet_address": net.payer_address, "reserve_size": 0})
        if all(txid in template["blocktemplate_blob"] for txid in txids):
            break
        assert time.monotonic() < deadline, "monerod never put the payment in a block template"
        await asyncio.sleep(0.02)
    height = await asyncio.to_thread(net.mine, blocks)
    for txid in txids:
        assert await in_block(net, txid) == height - blocks
    return height


async def in_block(net: Net, txid: str) -> int | None:
    got = await asyncio.to_thread(net.daemon_rpc, "/get_transactions", {"txs_hashes": [txid]})
    txs = got.get("txs") or []
    return None if not txs or txs[0].get("in_pool") else int(txs[0]["block_height"])


def config_for(net: Net, tmp_path: Path, start: int, **overrides: Any) -> Any:
    settings: dict[str, Any] = {
        "MONERO_RPC_URL": net.merchant_url, "MONITOR_ENABLED": "true", "MONITOR_MIN_CONFIRMATIONS": N,
        "MONITOR_START_HEIGHT": start, "MONITOR_POLL_INTERVAL_SECS": "0.05", "MONERO_RPC_TIMEOUT_SECS": "30",
        "API_NEGATIVE_CACHE_TTL_SECS": "0.5", "MONITOR_MIN_PAYMENT_AMOUNT": "1000",
    }
    if net.rpc_login:
        settings["MONERO_RPC_USER"], settings["MONERO_RPC_PASSWORD"] = net.rpc_login
    settings.update(overrides)
    return make_config(tmp_path, **{k: v for k, v in settings.items() if v is not None})  # None: the default


@asynccontextmanager
async def watching(net: Net, tmp_path: Path, start: int, **overrides: Any) -> AsyncIterator[tuple[State, Monitor]]:
    """A state and a monitor polled by hand, on a real SQLite file (or the PostgreSQL
    database a ``DATABASE_URL`` override names, as ``serving`` takes it)."""
    async with AsyncExitStack() as stack:
        config = config_for(net, tmp_path, start, **overrides)
        state = await open_state(config, stack)
        if is_postgres_url(config.database_url):
            await become_active(state)
        monitor = Monitor(state)
        await monitor.start()
        stack.push_async_callback(monitor.aclose)
        yield state, monitor


async def become_active(state: State) -> None:
    """What the leadership's takeover does on PostgreSQL, without the lock (one instance):
    bump the fencing epoch, so every write of the monitor runs fenced as in production,
    then load the views. ``open_state`` leaves that to the leadership."""
    await take_over(state.ledger.storage)  # type: ignore[arg-type]
    await state.ledger.load()
    state.active = True


@asynccontextmanager
async def serving(net: Net, tmp_path: Path, start: int, **overrides: Any) -> AsyncIterator[Service]:
    service = await start_service(config_for(net, tmp_path, start, **overrides))
    try:
        yield service
    finally:
        await service.aclose()


async def until(condition: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)
    return value


async def settled(service: Service, height: int) -> None:
    """Wait for a poll that STARTED after the wallet reached ``height``: two more successes."""
    state = service.state
    await until(lambda: (state.monitor.wallet_height or 0) >= height)
    ok = state.metrics.poll["ok"]
    seen = ok._value.get()
    await until(lambda: ok._value.get() >= seen + 2)


async def redeem(http: aiohttp.ClientSession, service: Service, pid: str) -> tuple[int, dict[str, Any]]:
    async with http.post(url(service.public_address, "/api/v1/redeem"), json={"pid": pid}) as resp:
        return resp.status, await resp.json()


def counted(state: State, result: str) -> float:
    return state.metrics.transfer[result]._value.get()


# ---------------------------------------------------------------------- the customer's view
@pytest.mark.parametrize("need", [N, 10])
async def test_pending_with_rising_confirmations_then_success_at_exactly_n(
    monero_regtest: Net, tmp_path: Path, http: aiohttp.ClientSession, need: int
) -> None:
    net = monero_regtest
    start = await start_window(net)
    pid = random_pid16()
    async with serving(net, tmp_path, start, MONITOR_MIN_CONFIRMATIONS=need if need != 10 else None) as service:
        assert service.state.config.monitor_min_confirmations == need
        paid = await pay(net, pid, 2 * XMR)
        await settled(service, paid["height"])
        assert await redeem(http, service, pid) == (202, {"status": "pending", "confirmations": 0, "required": need})
        height = paid["height"]
        for confirmations in range(1, need):
            if need > N and confirmations < need - 2:
                continue  # the long run: check the first and the last steps only
            blocks = confirmations - (height - paid["height"])
            if height == paid["height"]:
                height = await mine_including(net, [paid["txid"]], blocks)
            else:
                height = await asyncio.to_thread(net.mine, blocks)
            await settled(service, height)
            assert await redeem(http, service, pid) == (
                202, {"status": "pending", "confirmations": confirmations, "required": need})
        await settled(service, await asyncio.to_thread(net.mine, 1))
        status, body = await redeem(http, service, pid)
        assert status == 200, body
        assert body == {"status": "success", "balance": 2 * XMR, "remaining": 2 * XMR,
                        "expires_at": None,
                        "service_token": derive_service_token(pid_of(pid), paid["txid"]).hex()}
        assert await redeem(http, service, pid) == (200, dict(body, status="already_claimed"))


async def test_a_payment_in_the_block_right_after_each_poll_is_never_missed(
    monero_regtest: Net, tmp_path: Path
) -> None:
    net = monero_regtest
    start = await start_window(net)
    rounds = 5
    async with watching(net, tmp_path, start) as (state, monitor):
        await monitor.poll_once()
        paid, credited_per_poll = [], []
        for _ in range(rounds):
            payment = await pay(net, random_pid16(), XMR // 10, mine=1)  # in the very next block
            paid.append(payment)
            credited_per_poll.append(await monitor.poll_once())
        for _ in range(N - 1):
            await asyncio.to_thread(net.mine, 1)
            credited_per_poll.append(await monitor.poll_once())
        # each transfer is credited by the poll that first sees it at depth N, when it
        # sits exactly at the old cursor + 1 (the block min_height excludes if misused)
        assert credited_per_poll == [0] * (N - 1) + [1] * rounds
        for payment in paid:
            result = await state.ledger.redeem(pid_of(payment["payment_id"]))
            assert isinstance(result, Claimed) and result.status == "success"
            assert result.token == derive_service_token(pid_of(payment["payment_id"]), payment["txid"]).raw


async def test_plain_and_subaddress_payments_credit_nothing_and_the_zero_pid_stays_invalid(
    monero_regtest: Net, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    net = monero_regtest
    start = await start_window(net)
    async with serving(net, tmp_path, start) as service:
        sub = await asyncio.to_thread(net.pay_subaddress, XMR // 10)
        plain = await asyncio.to_thread(net.pay_address, net.merchant_address, XMR // 10)
        await settled(service, await mine_including(net, [sub["txid"], plain["txid"]], N))
        state = service.state
        # the plain payment has no PID; the one to a subaddress no checkout allocated is
        # reported as such (issue 26), whatever the checkout's mode: neither is credited
        assert (counted(state, "zero_pid"), counted(state, "unallocated_subaddress"),
                counted(state, "credited")) == (1, 1, 0)
        stats = await state.ledger.storage.get_stats()
        assert stats["transfers"] == 0 and stats["credited_piconero"] == 0
        for pid in ("0000000000000000", "0" * 64):
            status, body = await redeem(http, service, pid)
            assert status == 400 and body["error"] == "invalid_pid"
        assert state.metrics.redeem["invalid"].value == 2


async def test_two_payments_are_summed_and_a_top_up_raises_the_claimed_token(
    monero_regtest: Net, tmp_path: Path
) -> None:
    net = monero_regtest
    start = await start_window(net)
    pid = random_pid16()
    async with watching(net, tmp_path, start) as (state, monitor):
        first = await pay(net, pid, 3 * XMR // 10)
        second = await pay(net, pid, 4 * XMR // 10)
        await mine_including(net, [first["txid"], second["txid"]], N)
        assert await monitor.poll_once() == 2
        claimed = await state.ledger.redeem(pid_of(pid))
        earliest = min(first["txid"], second["txid"])  # same block: the lower txid
        assert isinstance(claimed, Claimed) and claimed.status == "success"
        assert claimed.balance == 7 * XMR // 10
        assert claimed.token == derive_service_token(pid_of(pid), earliest).raw
        await pay(net, pid, 5 * XMR // 10, mine=N)
        assert await monitor.poll_once() == 1
        again = await state.ledger.redeem(pid_of(pid))
        assert claim_summary(again) == ("already_claimed", claimed.token, 12 * XMR // 10)
        record = await state.ledger.storage.get_token(claimed.token)
        assert record is not None and record.amount == 12 * XMR // 10


async def test_an_underpayment_answers_402_until_a_second_payment_lifts_it(
    monero_regtest: Net, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    net = monero_regtest
    start = await start_window(net)
    pid = random_pid16()
    # the /json_rpc form of the URL works as well as the base URL
    async with serving(net, tmp_path, start, MONITOR_MIN_PAYMENT_AMOUNT=XMR,
                       MONERO_RPC_URL=net.merchant_url + "/json_rpc") as service:
        await pay(net, pid, 4 * XMR // 10, mine=N)
        await settled(service, await asyncio.to_thread(net.height))
        status, body = await redeem(http, service, pid)
        assert status == 402 and body["error"] == "underpaid"
        assert body["balance"] == 4 * XMR // 10 and body["minimum"] == XMR
        await pay(net, pid, 7 * XMR // 10, mine=N)
        await settled(service, await asyncio.to_thread(net.height))
        status, body = await redeem(http, service, pid)
        assert status == 200 and body["status"] == "success" and body["balance"] == 11 * XMR // 10


# ---------------------------------------------------------------------- restarts and chain trouble
def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not exported")


async def test_a_restart_mid_run_loses_and_duplicates_nothing(
    monero_regtest: Net, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    net = monero_regtest
    start = await start_window(net)
    pids = [random_pid16() for _ in range(4)]
    amounts = [XMR // 10, 2 * XMR // 10, 3 * XMR // 10, 4 * XMR // 10]
    async with serving(net, tmp_path, start) as first:
        await pay(net, pids[0], amounts[0], mine=N)
        await pay(net, pids[1], amounts[1], mine=1)  # pending when we stop
        height = await asyncio.to_thread(net.height)
        await settled(first, height)
        assert (await first.state.ledger.storage.get_stats())["transfers"] == 1
        cursor_before = await first.state.ledger.storage.get_cursor()
        assert cursor_before == height - N
    # while the service is down: the pending one confirms, two more arrive
    await pay(net, pids[2], amounts[2], mine=1)
    await pay(net, pids[3], amounts[3], mine=N)
    height = await asyncio.to_thread(net.height)
    # MONITOR_START_HEIGHT=0 would rescan the whole chain: the stored cursor must win. Without
    # the rescan margin: the shared chain holds other tests' payments just below this window,
    # and the margin stops at the start height only (test_monitor_rescan.py)
    async with serving(net, tmp_path, 0, MONITOR_RESCAN_MARGIN_BLOCKS=0) as second:
        await settled(second, height)
        stats = await second.state.ledger.storage.get_stats()
        assert stats["transfers"] == 4 and stats["credited_piconero"] == sum(amounts)
        assert stats["scanned_height"] == height - N
        async with http.get(url(second.internal_address, "/metrics")) as resp:
            assert metric(await resp.text(), "anonticket_monitor_scanned_height") == height - N
        for pid, amount in zip(pids, amounts):
            status, body = await redeem(http, second, pid)
            assert status == 200 and body["balance"] == amount
    async with serving(net, tmp_path, 0, MONITOR_RESCAN_MARGIN_BLOCKS=0) as third:  # nothing doubles
        await settled(third, height)
        stats = await third.state.ledger.storage.get_stats()
        assert stats["transfers"] == 4 and stats["credited_piconero"] == sum(amounts)


async def test_a_reorg_that_drops_an_unconfirmed_payment_removes_its_pending_state(
    monero_regtest: Net, tmp_path: Path
) -> None:
    net = monero_regtest
    start = await start_window(net)
    pid = random_pid16()
    async with watching(net, tmp_path, start) as (state, monitor):
        paid = await pay(net, pid, XMR // 10, mine=1)
        await monitor.poll_once()
        assert await state.ledger.redeem(pid_of(pid)) == Pending(1, N)
        cursor = monitor.cursor
        await asyncio.to_thread(net.reorg, 1, drop=[paid["txid"]])
        await monitor.poll_once()
        with pytest.raises(PaymentNotFound):
            await state.ledger.redeem(pid_of(pid))
        assert monitor.cursor is not None and cursor is not None and monitor.cursor >= cursor
        await asyncio.to_thread(net.mine, N)
        assert await monitor.poll_once() == 0
        assert (await state.ledger.storage.get_stats())["transfers"] == 0


async def test_a_zero_conf_double_spend_removes_pending_state(monero_regtest: Net, tmp_path: Path) -> None:
    net = monero_regtest
    start = await start_window(net)
    pid = random_pid16()
    async with watching(net, tmp_path, start) as (state, monitor):
        paid = await pay(net, pid, XMR // 10)
        await monitor.poll_once()
        assert await state.ledger.redeem(pid_of(pid)) == Pending(0, N)
        await asyncio.to_thread(net.double_spend, paid["txid"])
        await monitor.poll_once()
        with pytest.raises(PaymentNotFound):
            await state.ledger.redeem(pid_of(pid))
        await asyncio.to_thread(net.mine, N)
        assert await monitor.poll_once() == 0
        assert (await state.ledger.storage.get_stats())["transfers"] == 0


async def test_a_flagged_double_spend_attempt_is_counted_and_neither_pending_nor_credited(
    monero_regtest: Net, tmp_path: Path
) -> None:
    net = monero_regtest
    start = await start_window(net)
    pid = random_pid16()
    async with watching(net, tmp_path, start) as (state, monitor):
        paid = await pay(net, pid, XMR // 10, double_spend_attempt=True)
        for _ in range(3):
            assert await monitor.poll_once() == 0
        assert counted(state, "double_spend") == 1 and counted(state, "pending") == 0
        with pytest.raises(PaymentNotFound):
            await state.ledger.redeem(pid_of(pid))
        # Once mined, the conflicting spend has lost (wallet-rpc drops the flag for mined
        # transfers): at depth N this is money like any other payment, and is credited.
        await mine_including(net, [paid["txid"]], N)
        assert await monitor.poll_once() == 1
        assert counted(state, "double_spend") == 1
        result = await state.ledger.redeem(pid_of(pid))
        assert isinstance(result, Claimed) and result.balance == XMR // 10


# ---------------------------------------------------------------------- other wallet setups
async def test_a_watch_only_merchant_wallet_works_the_same(
    monero_regtest_view_only: Net, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    net = monero_regtest_view_only
    assert net.view_only
    start = await start_window(net)
    pid = random_pid16()
    async with serving(net, tmp_path, start) as service:
        paid = await pay(net, pid, XMR // 2)
        await settled(service, paid["height"])
        assert await redeem(http, service, pid) == (202, {"status": "pending", "confirmations": 0, "required": N})
        await settled(service, await mine_including(net, [paid["txid"]], N))
        status, body = await redeem(http, service, pid)
        assert (status, body["status"], body["balance"]) == (200, "success", XMR // 2)
        assert body["service_token"] == derive_service_token(pid_of(pid), paid["txid"]).hex()


async def test_digest_login_to_the_wallet(monero_regtest_digest: Net, tmp_path: Path) -> None:
    net = monero_regtest_digest
    assert net.rpc_login == DIGEST_LOGIN
    start = await start_window(net)
    pid = random_pid16()
    async with watching(net, tmp_path, start) as (state, monitor):
        paid = await pay(net, pid, XMR // 2, mine=N)
        assert await monitor.poll_once() == 1
        result = await state.ledger.redeem(pid_of(pid))
        assert isinstance(result, Claimed) and result.token == derive_service_token(pid_of(pid), paid["txid"]).raw
    async with watching(net, tmp_path / "nologin", start, MONERO_RPC_USER="", MONERO_RPC_PASSWORD="") as (_, monitor):
        with pytest.raises(WalletUnauthorized):
            await monitor.poll_once()
