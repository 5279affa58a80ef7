"""Provisional credit against the REAL wallet-rpc on the regtest chain (issue 25):
access within one poll of the payment entering the pool, final at exactly N, a double
spend (and a payment evicted from the pool) withdrawn and refused at the gateway, caps
under many payments at once, and a withdrawn payment mined after all credited once.

Windows and helpers as in test_monitor_regtest.py (same folder): each test pays fresh PIDs
after a block that sweeps what an earlier test left in the pool. Every test runs on both
backends: on PostgreSQL ``watching`` fences the monitor's writes with a fresh epoch, as a
takeover does, so the provisional writes are checked fenced.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import time
from collections.abc import Awaitable, Callable

import aiohttp
import pytest

from anonticket.domain.ids import ServiceToken
from anonticket.ledger.views import Claimed
from conftest import url
from regtest_fixtures import random_pid16
from test_monitor_regtest import (
    XMR,
    N,
    Net,
    counted,
    mine_including,
    pay,
    pid_of,
    serving,
    start_window,
    until,
    watching,
)

pytestmark = pytest.mark.regtest
BOTH_BACKENDS = True  # every test runs on SQLite and on PostgreSQL (database_url)

PROVISIONAL = {"PROVISIONAL_MAX_PER_PID": str(XMR), "PROVISIONAL_MAX_OUTSTANDING": str(5 * XMR),
               "PROVISIONAL_WITHDRAW_GRACE_SECS": "0.3"}


async def eventually(attempt: Callable[[], Awaitable[Any]], timeout: float = 30.0) -> Any:
    """Await ``attempt`` until it returns something truthy, to a deadline."""
    deadline = time.monotonic() + timeout
    while not (value := await attempt()):
        assert time.monotonic() < deadline, "not reached in time"
        await asyncio.sleep(0.02)
    return value


async def gateway(http: aiohttp.ClientSession, service: Any, token: str) -> tuple[int, Any]:
    async with http.get(url(service.internal_address, "/api/v1/check"),
                        headers={"Authorization": f"Bearer {token}"}) as resp:
        return resp.status, resp.headers


async def test_access_within_one_poll_and_final_at_exactly_n(
        monero_regtest: Net, tmp_path: Path, database_url: str) -> None:
    net = monero_regtest
    start = await start_window(net)
    pid = random_pid16()
    async with watching(net, tmp_path, start, DATABASE_URL=database_url,
                        **PROVISIONAL) as (state, monitor):
        paid = await pay(net, pid, XMR // 10)
        await monitor.poll_once()  # the one poll after the payment entered the pool
        answer = await state.ledger.redeem(pid_of(pid))
        assert isinstance(answer, Claimed) and answer.status == "success"
        assert (answer.record.amount, answer.record.provisional) == (XMR // 10, 1)
        assert state.metrics.provisional_credited._value.get() == 1
        height = await mine_including(net, [paid["txid"]], N - 1)
        await monitor.poll_once()
        record = await state.ledger.introspect(ServiceToken(answer.token))
        assert record.provisional == 1  # N - 1 confirmations: still provisional
        await asyncio.to_thread(net.mine, 1)
        assert await monitor.poll_once() == 1  # exactly N: the transfer is final
        record = await state.ledger.introspect(ServiceToken(answer.token))
        assert (record.amount, record.provisional) == (XMR // 10, 0)
        assert (await state.ledger.storage.get_stats())["transfers"] == 1
        assert await state.ledger.storage.ledger_problems() == []
        assert height  # mined where asked


async def test_a_double_spend_withdraws_and_the_gateway_refuses(
        monero_regtest: Net, tmp_path: Path, database_url: str,
        http: aiohttp.ClientSession) -> None:
    net = monero_regtest
    start = await start_window(net)
    pid = random_pid16()
    async with serving(net, tmp_path, start, DATABASE_URL=database_url, **PROVISIONAL) as service:
        paid = await pay(net, pid, XMR // 10)
        async def redeemed() -> Any:
            async with http.post(url(service.public_address, "/api/v1/redeem"),
                                 json={"pid": pid}) as resp:
                return (await resp.json()) if resp.status == 200 else None
        body = await eventually(redeemed)
        token = body["service_token"]
        status, headers = await gateway(http, service, token)
        assert (status, headers.get("X-Anonticket-Provisional")) == (200, "true")
        async with http.get(url(service.public_address, f"/api/v1/token/{token}")) as resp:
            assert (await resp.json())["provisional"] is True
        await asyncio.to_thread(net.double_spend, paid["txid"])
        metrics = service.state.metrics
        await until(lambda: metrics.provisional_withdrawn._value.get() == 1)
        status, headers = await gateway(http, service, token)
        assert (status, headers.get("X-Anonticket-Reason")) == (403, "payment_withdrawn")
        assert metrics.provisional_withdrawn_piconero._value.get() == XMR // 10
        await asyncio.to_thread(net.mine, N + 1)  # the double spend is mined, not the payment
        seen = metrics.poll["ok"]._value.get()
        await until(lambda: metrics.poll["ok"]._value.get() >= seen + 2)
        assert (await gateway(http, service, token))[0] == 403
        storage = service.state.ledger.storage
        assert (await storage.get_stats())["transfers"] == 0
        assert await storage.ledger_problems() == []


async def test_a_flagged_double_spend_is_never_credited_provisionally(
        monero_regtest: Net, tmp_path: Path, database_url: str) -> None:
    net = monero_regtest
    start = await start_window(net)
    pid = random_pid16()
    async with watching(net, tmp_path, start, DATABASE_URL=database_url,
                        **PROVISIONAL) as (state, monitor):
        await pay(net, pid, XMR // 10, double_spend_attempt=True)
        for _ in range(2):
            await monitor.poll_once()
        assert counted(state, "double_spend") == 1
        assert state.metrics.provisional_credited._value.get() == 0
        assert await state.ledger.redeem_or_none(pid_of(pid)) is None


async def test_caps_hold_when_many_payments_arrive_at_once(
        monero_regtest: Net, tmp_path: Path, database_url: str) -> None:
    """Six payments of 0.1 XMR in the pool at once, four to one PID: at most 0.25 XMR per
    PID and 0.4 XMR in all are provisional, so exactly four are credited now (two of the
    busy PID's and the two others), whatever their order; the rest wait for N."""
    net = monero_regtest
    start = await start_window(net)
    busy, *others = [random_pid16() for _ in range(3)]
    caps = {"PROVISIONAL_MAX_PER_PID": str(XMR // 4), "PROVISIONAL_MAX_OUTSTANDING": str(4 * XMR // 10),
            "PROVISIONAL_WITHDRAW_GRACE_SECS": "30"}
    async with watching(net, tmp_path, start, DATABASE_URL=database_url,
                        **caps) as (state, monitor):
        paid = await asyncio.gather(*(pay(net, pid, XMR // 10) for pid in [busy] * 4 + others))
        await monitor.poll_once()
        storage = state.ledger.storage
        outstanding = await storage.outstanding_provisional()  # txid -> PID, either backend
        assert set(outstanding) <= {bytes.fromhex(p["txid"]) for p in paid}  # 0.1 XMR each
        credited = Counter(pid[:8].hex() for pid in outstanding.values())
        assert credited == {busy: 2, others[0]: 1, others[1]: 1}
        assert state.metrics.provisional_over_cap._value.get() == 2
        for pid in others:
            assert isinstance(await state.ledger.redeem(pid_of(pid)), Claimed)
        await mine_including(net, [p["txid"] for p in paid], N)
        await monitor.poll_once()
        answer = await state.ledger.redeem(pid_of(busy))
        assert isinstance(answer, Claimed) and answer.balance == 4 * XMR // 10
        assert answer.record.provisional == 0
        assert (await storage.get_stats())["transfers"] == 6
        assert await storage.ledger_problems() == []


async def test_evicted_then_mined_after_all_is_credited_again_once(
        monero_regtest: Net, tmp_path: Path, database_url: str) -> None:
    net = monero_regtest
    start = await start_window(net)
    pid = random_pid16()
    async with watching(net, tmp_path, start, DATABASE_URL=database_url,
                        **PROVISIONAL) as (state, monitor):
        paid = await pay(net, pid, XMR // 10)
        await monitor.poll_once()
        answer = await state.ledger.redeem(pid_of(pid))
        assert isinstance(answer, Claimed)
        blob = await asyncio.to_thread(net.evict, paid["txid"])
        withdrawn = state.metrics.provisional_withdrawn

        async def poll_until_withdrawn() -> bool:
            await monitor.poll_once()
            return withdrawn._value.get() == 1

        await eventually(poll_until_withdrawn)
        record = await state.ledger.introspect(ServiceToken(answer.token))
        assert record.status(state.ledger.clock()) == "withdrawn"
        await asyncio.to_thread(net.resubmit, blob, paid["txid"])
        await mine_including(net, [paid["txid"]], N)
        assert await monitor.poll_once() == 1
        for _ in range(2):  # and never again
            await monitor.poll_once()
        record = await state.ledger.introspect(ServiceToken(answer.token))
        assert (record.amount, record.status(state.ledger.clock()), record.provisional) == (
            XMR // 10, "active", 0)
        assert state.metrics.provisional_credited._value.get() == 1
        assert await state.ledger.storage.ledger_problems() == []
