"""Subaddress checkouts with real payments (issue 26): monerod and monero-wallet-rpc on a
private regtest chain, the checkout allocating through the merchant wallet, the monitor
crediting what the wallet reports, on SQLite and on PostgreSQL, with a full and a
view-only merchant wallet.

One transaction paying two customers' subaddresses and a third address (an exchange's
batch) credits each customer exactly their output; a payment to an expired
allocation is credited; a payment to a subaddress no checkout allocated is counted, not
credited; an allocated address the wallet does not know is reported; allocations
never repeat an index under concurrency; the cap and the global rate refuse a flood
without storing anything past the cap.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest

from anonticket.config import Config
from anonticket.domain.address import decode_address
from anonticket.domain.ids import Receipt, derive_receipt_token, subaddress_transfer_id
from anonticket.regtest import RegtestNetwork
from anonticket.service.app import Service, start_service
from anonticket.storage import Allocation
from conftest import url
from page_helpers import Page, parse_page

BOTH_BACKENDS = True
N = 2  # confirmations
AMOUNT = 2 * 10**9
TIMEOUT = 120.0


@pytest.fixture(params=["full", "view_only"])
def net(request: pytest.FixtureRequest, monero_regtest: RegtestNetwork) -> RegtestNetwork:
    """Both merchant wallets: the view-only one is the production setup, and create_address
    must work on it too. (``monero_regtest`` is named here so that the tier marks see a
    regtest fixture: the view-only one is asked for by name.)"""
    if request.param == "full":
        return monero_regtest
    return request.getfixturevalue("monero_regtest_view_only")


@asynccontextmanager
async def shop(net: RegtestNetwork, config_factory: Callable[..., Config], **settings: Any
               ) -> AsyncIterator[Service]:
    start = await asyncio.to_thread(net.mine, 1)  # a window of our own on the shared chain
    options: dict[str, Any] = dict(
        MONERO_RPC_URL=net.merchant_url, MONITOR_ENABLED="true", MONITOR_START_HEIGHT=start,
        MONITOR_MIN_CONFIRMATIONS=N, MONITOR_POLL_INTERVAL_SECS="0.1", MONERO_RPC_TIMEOUT_SECS="30",
        MONITOR_MIN_PAYMENT_AMOUNT=AMOUNT // 2, CHECKOUT_ADDRESS_MODE="subaddress",
        SUBADDRESS_ALLOCATIONS_PER_SEC="1000")
    options.update(settings)
    service = await start_service(config_factory(**options))
    try:
        yield service
    finally:
        await service.aclose()


async def post(http: aiohttp.ClientSession, service: Service, path: str, body: dict[str, str]
               ) -> tuple[int, dict[str, Any]]:
    async with http.post(url(service.public_address, path), json=body) as resp:
        return resp.status, json.loads(await resp.read())


async def stats(http: aiohttp.ClientSession, service: Service) -> dict[str, Any]:
    async with http.get(url(service.internal_address, "/api/v1/stats")) as resp:
        assert resp.status == 200
        return json.loads(await resp.read())


async def checkout(http: aiohttp.ClientSession, service: Service) -> tuple[int, Page | None]:
    async with http.post(url(service.public_address, "/pay"), data={"offer": str(AMOUNT // 2)}) as resp:
        text = await resp.text()
        return resp.status, parse_page(text) if resp.status == 200 else None


async def buy(http: aiohttp.ClientSession, service: Service) -> tuple[Receipt, str]:
    """What a customer gets from /pay: the receipt and the subaddress to pay."""
    status, shown = await checkout(http, service)
    assert status == 200 and shown is not None
    address = shown.field("address").strip()
    assert decode_address(address).kind == "subaddress"
    return Receipt.parse(shown.field("receipt").strip()), address


async def until(what: str, attempt: Callable[[], Awaitable[Any]], done: Callable[[Any], bool]) -> Any:
    deadline = time.monotonic() + TIMEOUT
    while True:
        got = await attempt()
        if done(got):
            return got
        assert time.monotonic() < deadline, f"no {what} within {TIMEOUT:.0f}s; last {got}"
        await asyncio.sleep(0.1)


async def redeemed(http: aiohttp.ClientSession, service: Service, receipt: Receipt) -> dict[str, Any]:
    _, body = await until("a redeem", lambda: post(http, service, "/api/v1/redeem",
                                                    {"receipt": receipt.hex()}),
                          lambda got: got[0] == 200)
    return body


def wallet_index(net: RegtestNetwork, address: str) -> int:
    return int(net.merchant_rpc("get_address_index", {"address": address})["index"]["minor"])


async def test_a_batched_payment_credits_each_customer_its_own_output(
        net: RegtestNetwork, config_factory: Callable[..., Config],
        http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="anonticket")
    async with shop(net, config_factory) as service:
        (first, first_address), (second, second_address) = [await buy(http, service) for _ in "ab"]
        assert first_address != second_address
        # the wallet made them: it knows both, at the indexes the checkout recorded
        first_index, second_index = (wallet_index(net, a) for a in (first_address, second_address))
        assert 0 < first_index < second_index
        # and a third output elsewhere (the payer's own address: an exchange's change, or
        # another shop). wallet-rpc 0.18 refuses to build one transaction paying an integrated
        # address and a subaddress ("transaction was not constructed"): why batching
        # senders cannot pay integrated addresses at all
        elsewhere = str(net.payer_rpc("get_address", {"account_index": 0})["address"])
        paid = await asyncio.to_thread(net.pay_many, [
            (first_address, AMOUNT), (second_address, 2 * AMOUNT), (elsewhere, 3 * AMOUNT)])
        txid = bytes.fromhex(paid["txid"])
        await asyncio.to_thread(net.mine, N)

        first_body = await redeemed(http, service, first)
        second_body = await redeemed(http, service, second)
        assert (first_body["balance"], second_body["balance"]) == (AMOUNT, 2 * AMOUNT)
        account = service.state.config.subaddress_account
        # each subaddress payment's token derives from its receipt and its own output's id
        assert first_body["service_token"] == derive_receipt_token(
            first.raw, subaddress_transfer_id(txid, account, first_index)).hex()
        assert second_body["service_token"] == derive_receipt_token(
            second.raw, subaddress_transfer_id(txid, account, second_index)).hex()
        counts = await stats(http, service)
        assert counts["subaddresses_unpaid"] == 0
    # nothing that claims or identifies a payment reached a log line
    for secret in (first.hex(), second.hex(), first.pid.hex(), second.pid.hex(), first_address,
                   second_address, paid["txid"], first_body["service_token"]):
        assert secret not in caplog.text
        assert counts["subaddress_highest_index"] is None or counts["subaddress_highest_index"] >= 0


async def test_an_expired_allocation_is_still_credited_and_an_unallocated_one_is_not(
        net: RegtestNetwork, config_factory: Callable[..., Config],
        http: aiohttp.ClientSession) -> None:
    async with shop(net, config_factory) as service:
        storage = service.state.ledger.storage
        account = service.state.config.subaddress_account
        # an allocation that expired a day ago (the checkout only makes fresh ones)
        made = net.merchant_rpc("create_address", {"account_index": account})
        receipt, now = Receipt.generate(), int(time.time())
        assert await storage.record_subaddress(Allocation(
            account, int(made["address_index"]), receipt.pid.raw, str(made["address"]),
            now - 2 * 86400, now - 86400))
        assert (await stats(http, service))["subaddresses_unpaid"] == 0  # expired: not counted
        await asyncio.to_thread(net.pay_address, str(made["address"]), AMOUNT)
        # and a subaddress of the account no checkout allocated
        before = (await stats(http, service))["unallocated_subaddress_transfers"]
        await asyncio.to_thread(net.pay_subaddress, AMOUNT)
        await asyncio.to_thread(net.mine, N)

        assert (await redeemed(http, service, receipt))["balance"] == AMOUNT
        await until("the unallocated transfer reported", lambda: stats(http, service),
                    lambda got: got["unallocated_subaddress_transfers"] > before)


async def test_an_allocated_address_the_wallet_does_not_know_is_reported(
        net: RegtestNetwork, config_factory: Callable[..., Config],
        http: aiohttp.ClientSession) -> None:
    """What a wallet restored from keys with too short a lookahead answers for the highest
    allocated subaddress (get_address_index: not this wallet's), made here with a row
    whose address is the payer's: the monitor's check at its first poll reports it."""
    async with shop(net, config_factory) as service:
        await until("the first check", lambda: stats(http, service),
                    lambda got: got["subaddress_known_to_wallet"] is not None)
        storage = service.state.ledger.storage
        account = service.state.config.subaddress_account
        highest = (await storage.highest_subaddress(account) or (0, ""))[0]
        foreign = net.payer_rpc("create_address", {"account_index": 0})["address"]
        now = int(time.time())
        assert await storage.record_subaddress(Allocation(
            account, highest + 100_000, Receipt.generate().pid.raw, foreign, now, now + 60))
    async with shop(net, config_factory) as service:
        counts = await until("the report", lambda: stats(http, service),
                             lambda got: got["subaddress_known_to_wallet"] is not None)
        assert counts["subaddress_known_to_wallet"] is False
        assert counts["subaddress_highest_index"] == highest + 100_000
        assert service.state.metrics.subaddress_unknown_to_wallet._value.get() == 1


async def test_concurrent_checkouts_never_share_an_index(
        net: RegtestNetwork, config_factory: Callable[..., Config],
        http: aiohttp.ClientSession) -> None:
    async with shop(net, config_factory) as service:
        bought = await asyncio.gather(*(buy(http, service) for _ in range(12)))
        addresses = [address for _, address in bought]
        assert len(set(addresses)) == len(addresses)
        indexes = [wallet_index(net, a) for a in addresses]
        assert len(set(indexes)) == len(indexes)
        storage = service.state.ledger.storage
        account = service.state.config.subaddress_account
        recorded = await storage.subaddress_pids(account, indexes)
        assert recorded == {index: receipt.pid.raw for index, (receipt, _) in zip(indexes, bought)}


async def test_a_flood_is_refused_past_the_cap_and_the_rate(
        net: RegtestNetwork, config_factory: Callable[..., Config],
        http: aiohttp.ClientSession) -> None:
    async with shop(net, config_factory, SUBADDRESS_MAX_UNPAID="3") as service:
        storage = service.state.ledger.storage
        start = await storage.count_unpaid_subaddresses(int(time.time()))
        # hostile forms are refused before anything is allocated
        for form in ({"offer": "nope"}, {"offer": str(AMOUNT // 2), "extra": "1"}, {},
                     {"offer": "\x00" * 10_000}):
            async with http.post(url(service.public_address, "/pay"), data=form) as resp:
                assert resp.status in (400, 404, 413)
        assert await storage.count_unpaid_subaddresses(int(time.time())) == start
        answers = [await checkout(http, service) for _ in range(8)]
        allowed = max(3 - start, 0)
        assert [status for status, _ in answers] == [200] * allowed + [503] * (8 - allowed)
        assert await storage.count_unpaid_subaddresses(int(time.time())) == max(start, 3)
        counters = service.state.metrics.subaddress_allocations
        assert counters["capped"].value == 8 - allowed
    # one allocation a minute, a burst of 1: the second checkout at once is refused
    async with shop(net, config_factory, SUBADDRESS_ALLOCATIONS_PER_SEC="0.016",
                    SUBADDRESS_MAX_UNPAID="100000") as service:
        assert (await checkout(http, service))[0] == 200
        async with http.post(url(service.public_address, "/pay"),
                             data={"offer": str(AMOUNT // 2)}) as resp:
            assert resp.status == 503 and resp.headers["Retry-After"] == "5"
            assert "try again" in await resp.text()
        assert service.state.metrics.subaddress_allocations["rate_limited"].value == 1
