"""The subaddress checkout (CHECKOUT_ADDRESS_MODE=subaddress) in real browsers with no
script, against the real view-only wallet on the private regtest chain: chromium (Playwright,
JavaScript off) and firefox-esr at Tor Browser "Safest" each buy access by paying the
subaddress the page shows; in Firefox the customer underpays first, and the page asks for the
rest on the same subaddress. ``ANONTICKET_SCREENSHOTS=docs/checkout`` writes the Firefox
screenshots (``subaddress-*.png``) where docs/customers.md shows them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from anonticket.domain.address import decode_address
from anonticket.domain.ids import Receipt, derive_receipt_token, subaddress_transfer_id
from anonticket.regtest import RegtestNetwork
from anonticket.service.app import Service, start_service
from conftest import make_config
from page_helpers import zbar_decode
from test_checkout_browser import (
    N, PRICE_PER_DAY, WEEK, SafestFirefox, launch_chromium, pay, playwright_or_skip, screenshot_dir,
    start_firefox, submit_and_read, until)


@asynccontextmanager
async def shop(net: RegtestNetwork, tmp_path: Path) -> AsyncIterator[Service]:
    start = await asyncio.to_thread(net.mine, 1)  # a window of our own on the shared chain
    service = await start_service(make_config(
        tmp_path, MONERO_RPC_URL=net.merchant_url, MONITOR_ENABLED="true", MONITOR_START_HEIGHT=start,
        MONITOR_MIN_CONFIRMATIONS=N, MONITOR_POLL_INTERVAL_SECS="0.2", MONERO_RPC_TIMEOUT_SECS="30",
        CHECKOUT_OFFERS="7d, 30d", ACCESS_PRICE_PER_DAY=PRICE_PER_DAY, MONITOR_MIN_PAYMENT_AMOUNT=WEEK,
        CHECKOUT_ADDRESS_MODE="subaddress"))
    try:
        yield service
    finally:
        await service.aclose()


def allocated_index(net: RegtestNetwork, address: str) -> int:
    """The wallet's own index for the subaddress the page shows: it made it."""
    assert decode_address(address).kind == "subaddress"
    where = net.merchant_rpc("get_address_index", {"address": address})["index"]
    assert where["major"] == 0 and where["minor"] > 0
    return int(where["minor"])


def token_of(receipt: str, txid: str, index: int) -> str:
    return derive_receipt_token(Receipt.parse(receipt).raw,
                                subaddress_transfer_id(bytes.fromhex(txid), 0, index)).hex()


async def test_a_customer_pays_a_subaddress_in_chromium_without_javascript(
        monero_regtest_view_only: RegtestNetwork, tmp_path: Path) -> None:
    net = monero_regtest_view_only
    async_playwright = playwright_or_skip()
    async with shop(net, tmp_path) as service, async_playwright() as p:
        browser = await launch_chromium(p)
        context = await browser.new_context(java_script_enabled=False, viewport={"width": 360, "height": 780})
        page = await context.new_page()
        sent: list[str] = []
        page.on("request", lambda r: sent.append(r.url))

        async def submit(button: str) -> None:
            async with page.expect_navigation():
                await page.get_by_role("button", name=button).click()

        async def heading() -> str:
            return await page.inner_text("h1")

        await page.goto(f"http://{service.public_address}/pay")
        await page.get_by_label("7 days of access: 0.007 XMR").check()
        await submit("Create payment")
        assert await heading() == "Pay 0.007 XMR"
        receipt, address = await page.input_value("#receipt"), await page.input_value("#address")
        index = allocated_index(net, address)
        uri = await page.get_by_role("link", name="Open in my wallet").get_attribute("href")
        assert uri == f"monero:{address}?tx_amount=0.007"
        await page.locator(".qr img").screenshot(path=str(tmp_path / "qr.png"))
        assert zbar_decode(tmp_path / "qr.png") == [uri]

        txid = await pay(net, address, "0.007")
        await asyncio.to_thread(net.mine, N)
        await submit("I have paid: check the payment")
        if await heading() != "Payment confirmed":  # the monitor may not have polled yet
            await until("the confirmed page", lambda: submit_and_read(submit, heading),
                        lambda h: h == "Payment confirmed")
        await submit("Get my access")
        assert await heading() == "Your access token"
        token = await page.input_value("#token")
        assert token == token_of(receipt, txid, index)
        assert not any(secret in url for url in sent for secret in (receipt, address, token))
        assert await context.cookies() == []
        await browser.close()


async def test_a_customer_pays_a_subaddress_in_firefox_at_safest(
        monero_regtest_view_only: RegtestNetwork, tmp_path: Path) -> None:
    net = monero_regtest_view_only
    shots = screenshot_dir(tmp_path)
    firefox = start_firefox(tmp_path / "profile")
    ff = SafestFirefox(firefox)
    try:
        async with shop(net, tmp_path) as service:
            await ff("go", f"http://{service.public_address}/pay")
            assert await ff.press("/pay") == "Pay 0.007 XMR"
            receipt, address = await ff("value", "#receipt"), await ff("value", "#address")
            index = allocated_index(net, address)
            uri = await ff("attribute", "a.button", "href")
            assert zbar_decode(await ff("screenshot", shots / "subaddress-2-payment.png")) == [uri]

            first = await pay(net, address, "0.003")  # too little
            await asyncio.to_thread(net.mine, N)
            assert await until("the underpaid page", lambda: ff.press("/pay/status"),
                               lambda h: h not in ("Payment not seen yet",
                                                   "Payment seen, waiting for confirmations")
                               ) == "Payment incomplete"
            # the rest goes to the same subaddress, not to an integrated address
            rest = await ff("attribute", "a.button", "href")
            assert rest == f"monero:{address}?tx_amount=0.004"
            assert zbar_decode(await ff("screenshot", shots / "subaddress-5-underpaid.png")) == [rest]

            await pay(net, address, "0.004")
            await asyncio.to_thread(net.mine, N)
            await until("the confirmed page", lambda: ff.press("/pay/status"), lambda h: h == "Payment confirmed")
            assert await ff.press("/pay/redeem") == "Your access token"
            assert await ff("value", "#token") == token_of(receipt, first, index)
    finally:
        await asyncio.to_thread(firefox.close)
