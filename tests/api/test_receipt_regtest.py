"""Receipts with real payments: monerod and monero-wallet-rpc on a private regtest chain,
the service's monitor crediting what the wallet reports, on SQLite and on PostgreSQL.

What the payer's side knows — the integrated address (and so the PID), the txid, the
amount — claims nothing and computes no token under REDEEM_PLAIN_PIDS=refuse; the receipt
redeems, its retries return the same token, and it tops a token up. Under ``allow`` the
bare PID claims the payment as before receipts.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from Crypto.Hash import SHA3_256

from anonticket.config import Config
from anonticket.domain.ids import PaymentId, Receipt, derive_receipt_token, derive_service_token
from anonticket.regtest import RegtestNetwork
from anonticket.service.app import Service, start_service
from conftest import url
from page_helpers import Page, parse_page

BOTH_BACKENDS = True
N = 2  # confirmations
AMOUNT = 2 * 10**9
TIMEOUT = 120.0


@asynccontextmanager
async def shop(net: RegtestNetwork, config_factory: Callable[..., Config], plain_pids: str
               ) -> AsyncIterator[Service]:
    start = await asyncio.to_thread(net.mine, 1)  # a window of our own on the shared chain
    service = await start_service(config_factory(
        MONERO_RPC_URL=net.merchant_url, MONITOR_ENABLED="true", MONITOR_START_HEIGHT=start,
        MONITOR_MIN_CONFIRMATIONS=N, MONITOR_POLL_INTERVAL_SECS="0.1", MONERO_RPC_TIMEOUT_SECS="30",
        MONITOR_MIN_PAYMENT_AMOUNT=AMOUNT // 2, REDEEM_PLAIN_PIDS=plain_pids))
    try:
        yield service
    finally:
        await service.aclose()


async def pay(net: RegtestNetwork, receipt: Receipt, amount: int = AMOUNT) -> dict[str, Any]:
    """What the customer's wallet (or exchange) does with the integrated address."""
    return await asyncio.to_thread(net.pay, receipt.pid.hex(), amount)


async def post(http: aiohttp.ClientSession, service: Service, path: str, body: dict[str, str]
               ) -> tuple[int, dict[str, Any]]:
    async with http.post(url(service.public_address, path), json=body) as resp:
        return resp.status, json.loads(await resp.read())


async def page(http: aiohttp.ClientSession, service: Service, path: str, form: dict[str, str]) -> Page:
    async with http.post(url(service.public_address, path), data=form) as resp:
        assert resp.status == 200
        return parse_page(await resp.text())


async def until(what: str, attempt: Callable[[], Awaitable[tuple[int, dict[str, Any]]]],
                done: Callable[[int, dict[str, Any]], bool]) -> dict[str, Any]:
    deadline = time.monotonic() + TIMEOUT
    while True:
        status, body = await attempt()
        if done(status, body):
            return body
        assert time.monotonic() < deadline, f"no {what} within {TIMEOUT:.0f}s; last {status} {body}"
        await asyncio.sleep(0.1)


def public_guesses(pid: PaymentId, txid: bytes, amount: int, address: str) -> set[bytes]:
    """Hashes a payer's side could make of what it knows; a receipt token is none of them."""
    pieces = [pid.raw[:8], pid.raw, pid.hex().encode(), txid, txid.hex().encode(), address.encode(),
              str(amount).encode(), b"anonticket/token/v1"]
    guesses = {derive_service_token(pid, txid.hex()).raw}
    for a in pieces:
        guesses.add(SHA3_256.new(a).digest())
        for b in pieces:
            guesses.add(SHA3_256.new(a + b).digest())
            guesses.add(SHA3_256.new(b"anonticket/token/v1" + a + b).digest())
    return guesses


async def test_the_payers_side_cannot_claim_see_or_compute_a_receipt_payment(
        monero_regtest: RegtestNetwork, config_factory: Callable[..., Config],
        http: aiohttp.ClientSession) -> None:
    net = monero_regtest
    async with shop(net, config_factory, "refuse") as service:
        receipt = Receipt.generate()
        pid = receipt.pid.hex()
        address = str(net.merchant_rpc("make_integrated_address", {"payment_id": pid})["integrated_address"])
        unknown = await post(http, service, "/api/v1/redeem", {"pid": PaymentId.generate().hex()})
        assert unknown[0] == 404
        paid = await pay(net, receipt)
        txid = bytes.fromhex(paid["txid"])
        assert paid["amount"] == AMOUNT

        # in the pool: the receipt sees it pending, the PID and the address see nothing
        await until("pending", lambda: post(http, service, "/api/v1/redeem", {"receipt": receipt.hex()}),
                    lambda s, b: s == 202)
        assert await post(http, service, "/api/v1/redeem", {"pid": pid}) == unknown
        for form in ({"receipt": address}, {"receipt": pid}, {"pid": pid}):
            assert (await page(http, service, "/pay/status", form)).h1 == "Payment not seen yet"

        # confirmed: the receipt redeems, its token is the receipt's, retries get it again
        await asyncio.to_thread(net.mine, N)
        body = await until("success", lambda: post(http, service, "/api/v1/redeem", {"receipt": receipt.hex()}),
                           lambda s, b: s == 200)
        token = derive_receipt_token(receipt.raw, txid).raw
        assert (body["status"], body["service_token"], body["balance"]) == ("success", token.hex(), AMOUNT)
        assert token not in public_guesses(receipt.pid, txid, AMOUNT, address)
        for spelling in (receipt.hex(), receipt.grouped(), receipt.grouped().replace("-", " ").upper()):
            status, again = await post(http, service, "/api/v1/redeem", {"receipt": spelling})
            assert (status, again["status"], again["service_token"]) == (200, "already_claimed", token.hex())
        # and the payer's side still gets nothing: not by the PID, not by the address
        assert await post(http, service, "/api/v1/redeem", {"pid": pid}) == unknown
        for path in ("/pay/status", "/pay/redeem"):
            for form in ({"receipt": address}, {"pid": address}, {"pid": pid}):
                shown = await page(http, service, path, form)
                assert shown.h1 == "Payment not seen yet" and token.hex() not in shown.source
        assert (await page(http, service, "/pay/redeem", {"receipt": receipt.grouped()})).field("token") \
            == token.hex()


async def test_a_receipt_tops_up_a_token_with_real_payments(
        monero_regtest: RegtestNetwork, config_factory: Callable[..., Config],
        http: aiohttp.ClientSession) -> None:
    net = monero_regtest
    async with shop(net, config_factory, "refuse") as service:
        own, extra = Receipt.generate(), Receipt.generate()
        await pay(net, own)
        extra_txid = (await pay(net, extra, AMOUNT // 2))["txid"]
        await asyncio.to_thread(net.mine, N)
        body = await until("success", lambda: post(http, service, "/api/v1/redeem", {"receipt": own.hex()}),
                           lambda s, b: s == 200)
        token = body["service_token"]
        path = f"/api/v1/token/{token}/topup"
        assert (await post(http, service, path, {"pid": extra.pid.hex()}))[0] == 404
        topped = await until("the top-up", lambda: post(http, service, path, {"receipt": extra.grouped()}),
                             lambda s, b: s == 200)
        assert (topped["status"], topped["credited"], topped["balance"]) == ("topped_up", AMOUNT // 2,
                                                                            AMOUNT + AMOUNT // 2)
        status, again = await post(http, service, path, {"receipt": extra.hex()})
        assert (status, again["balance"]) == (200, AMOUNT + AMOUNT // 2)  # a retry: nothing twice
        status, shown = await post(http, service, "/api/v1/redeem", {"receipt": extra.hex()})
        assert (status, shown["status"], shown["service_token"]) == (200, "already_claimed", token)
        assert token != derive_receipt_token(extra.raw, bytes.fromhex(extra_txid)).hex()


async def test_under_allow_the_bare_pid_claims_a_receipt_payment(
        monero_regtest: RegtestNetwork, config_factory: Callable[..., Config],
        http: aiohttp.ClientSession) -> None:
    """The documented risk of REDEEM_PLAIN_PIDS=allow, with a real payment: the bare PID wins
    and gets the token the payer's side can compute; the receipt then shows that token."""
    net = monero_regtest
    async with shop(net, config_factory, "allow") as service:
        receipt = Receipt.generate()
        paid = await pay(net, receipt)
        await until("pending", lambda: post(http, service, "/api/v1/redeem", {"pid": receipt.pid.hex()}),
                    lambda s, b: s == 202)
        await asyncio.to_thread(net.mine, N)
        body = await until("success", lambda: post(http, service, "/api/v1/redeem", {"pid": receipt.pid.hex()}),
                           lambda s, b: s == 200)
        assert body["service_token"] == derive_service_token(receipt.pid, paid["txid"]).hex()
        status, again = await post(http, service, "/api/v1/redeem", {"receipt": receipt.hex()})
        assert (status, again["status"], again["service_token"]) == (200, "already_claimed", body["service_token"])
