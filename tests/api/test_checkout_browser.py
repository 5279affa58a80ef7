"""The checkout in real browsers, against the real wallet on a private regtest chain.

Debian's chromium, driven by Playwright with JavaScript disabled, walks the flow as a
customer would: pick an offer, keep the receipt, read the address and amount, pay them
from the payer wallet, watch the confirmations, redeem, see the token, and find that the
address pasted in place of the receipt shows nothing — checking what is on screen
(the QR in a screenshot decodes to the payment URI), that axe-core finds no
accessibility violation in light and dark mode at 360 px, and that no URL, Referer or
cookie ever carries a secret. Then Debian's firefox-esr, headless over Marionette with
Tor Browser "Safest"'s prefs (no JavaScript, no SVG, no downloadable fonts), walks it
again, underpaying first, and screenshots each state; as a control, an SVG image must
not render there, while chromium draws it.

The chain is the session's watch-only one (``monero_regtest_view_only``); each test
runs its own service on its own database. ``ANONTICKET_SCREENSHOTS=docs/checkout``
writes the Firefox screenshots where the README and docs/customers.md show them.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
import segno

from anonticket.service.app import Service, start_service
from anonticket.domain.ids import Receipt, derive_receipt_token, derive_service_token
from anonticket.domain.payment_uri import parse_xmr
from anonticket.regtest import MERCHANT_KEYS, RegtestNetwork
from anonticket.regtest.actions import wait_until_minable
from conftest import REPO, make_config
from marionette import SAFEST, Firefox, MarionetteError, firefox_binary
from page_helpers import zbar_decode
import tiers

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
N = 3  # confirmations: pending shows 0, then 1 of 3, then confirmed
PRICE_PER_DAY = 10**9  # 0.001 XMR
WEEK = 7 * PRICE_PER_DAY
TIMEOUT = 90.0
T = TypeVar("T")


@asynccontextmanager
async def shop(net: RegtestNetwork, tmp_path: Path) -> AsyncIterator[Service]:
    start = await asyncio.to_thread(net.mine, 1)  # a window of our own on the shared chain
    service = await start_service(make_config(
        tmp_path, MONERO_RPC_URL=net.merchant_url, MONITOR_ENABLED="true", MONITOR_START_HEIGHT=start,
        MONITOR_MIN_CONFIRMATIONS=N, MONITOR_POLL_INTERVAL_SECS="0.2", MONERO_RPC_TIMEOUT_SECS="30",
        CHECKOUT_OFFERS="7d, 30d", ACCESS_PRICE_PER_DAY=PRICE_PER_DAY, MONITOR_MIN_PAYMENT_AMOUNT=WEEK,
        REDEEM_PLAIN_PIDS="refuse"))  # the production default: the address claims nothing
    try:
        # the address comes from the watch-only wallet itself (MERCHANT_ADDRESS is unset)
        assert service.state.merchant.address == net.merchant_address == MERCHANT_KEYS.address
        yield service
    finally:
        await service.aclose()


async def pay(net: RegtestNetwork, address: str, amount_xmr: str) -> str:
    """What the customer's wallet does with the address and amount from the page."""
    paid = await asyncio.to_thread(net.pay_address, address, parse_xmr(amount_xmr))
    await asyncio.to_thread(wait_until_minable, net, [paid["txid"]])
    return str(paid["txid"])


async def until(what: str, attempt: Callable[[], Awaitable[T]], done: Callable[[T], bool]) -> T:
    deadline = time.monotonic() + TIMEOUT
    while not done(value := await attempt()):
        assert time.monotonic() < deadline, f"no {what} within {TIMEOUT:.0f}s; last: {value!r}"
        await asyncio.sleep(0.2)
    return value


def wallet_address(net: RegtestNetwork, receipt: str) -> str:
    """The wallet's own integrated address for the PID the receipt on the page derives."""
    pid = Receipt.parse(receipt).pid.hex()
    return str(net.merchant_rpc("make_integrated_address", {"payment_id": pid})["integrated_address"])


def receipt_token(receipt: str, txid: str) -> str:
    """The token a receipt payment redeems to; never the one its PID and txid would give."""
    parsed = Receipt.parse(receipt)
    token = derive_receipt_token(parsed.raw, bytes.fromhex(txid)).hex()
    assert token != derive_service_token(parsed.pid, txid).hex()
    return token


# ---------------------------------------------------------------------- chromium
async def launch_chromium(p: Any) -> Any:
    tiers.starting("chromium")
    try:
        return await p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
    except Exception as exc:  # noqa: BLE001 - any launch failure is the skip reason
        pytest.skip(f"chromium could not start ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
                    "bin/setup --test installs Debian's chromium")


def playwright_or_skip() -> Any:
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.skip("playwright is not installed (bin/setup --test installs the test extra)")
    return async_playwright


class Axe:
    """axe-core's WCAG 2 A/AA rules, in light and in dark mode, on what the customer's
    page shows. axe needs timers, which a page with JavaScript off never fires, so it
    runs on a copy of the page's HTML in a second, script-enabled tab of the same size
    (the pages have no script of their own: the copy renders the same)."""

    def __init__(self, checker: Any) -> None:
        import importlib.resources

        self.checker = checker
        # axe-core as the PyPI package axe-playwright-python ships it (no npm needed)
        self.script = (importlib.resources.files("axe_playwright_python") / "axe.min.js").read_text()

    async def violations(self, page: Any) -> list[str]:
        await self.checker.set_content(await page.content())
        await self.checker.evaluate(self.script)
        found = []
        for scheme in ("light", "dark"):
            await self.checker.emulate_media(color_scheme=scheme)
            result = await self.checker.evaluate(
                "axe.run(document, {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21aa', "
                "'best-practice']}, resultTypes: ['violations']})")
            found += [f"{scheme}: {v['id']}: {[n['target'] for n in v['nodes']]}" for v in result["violations"]]
        return found


async def test_a_customer_buys_access_in_chromium_without_javascript(
        monero_regtest_view_only: RegtestNetwork, tmp_path: Path) -> None:
    net = monero_regtest_view_only
    async_playwright = playwright_or_skip()
    async with shop(net, tmp_path) as service, async_playwright() as p:
        browser = await launch_chromium(p)
        context = await browser.new_context(java_script_enabled=False, viewport={"width": 360, "height": 780})
        page = await context.new_page()
        axe = Axe(await (await browser.new_context(viewport={"width": 360, "height": 780})).new_page())
        sent: list[tuple[str, str, dict[str, str]]] = []
        page.on("request", lambda r: sent.append((r.method, r.url, dict(r.headers))))
        answered: list[tuple[str, int, dict[str, str]]] = []
        page.on("response", lambda r: answered.append((r.url, r.status, dict(r.headers))))
        ran_script: list[str] = []
        page.on("console", lambda m: ran_script.append(m.text))
        base = f"http://{service.public_address}"
        violations: dict[str, list[str]] = {}

        async def submit(button: str) -> None:
            async with page.expect_navigation():
                await page.get_by_role("button", name=button).click()
            shown = await page.inner_text("h1")
            if shown not in violations:  # each kind of page once: axe takes a while
                violations[shown] = await axe.violations(page)

        async def heading() -> str:
            return await page.inner_text("h1")

        await page.goto(base + "/pay")
        violations["shop"] = await axe.violations(page)
        assert await heading() == "Buy access"
        await page.get_by_label("30 days of access: 0.03 XMR").check()
        await page.get_by_label("7 days of access: 0.007 XMR").check()
        await submit("Create payment")

        # the payment page, as the customer sees it
        assert await heading() == "Pay 0.007 XMR"
        assert await page.get_by_text("This is your receipt. Keep it secret: whoever has it can "
                                      "claim the access.").is_visible()
        assert await page.get_by_text("The address below no longer claims anything").is_visible()
        receipt = await page.input_value("#receipt")
        address = await page.input_value("#address")
        amount = await page.input_value("#amount")
        assert amount == "0.007" and address == wallet_address(net, receipt)
        pid = Receipt.parse(receipt).pid.hex()
        secrets = (receipt, receipt.replace("-", ""), pid, address)
        uri = await page.get_by_role("link", name="Open in my wallet").get_attribute("href")
        assert uri == f"monero:{address}?tx_amount=0.007"
        qr = page.locator(".qr img")
        assert await qr.evaluate("img => img.complete && img.naturalWidth") > 0
        shot = await qr.screenshot(path=str(tmp_path / "qr.png"))
        assert shot and zbar_decode(tmp_path / "qr.png") == [uri]
        box = await qr.bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= 360  # fits a 360 px screen
        assert await page.evaluate("document.documentElement.scrollWidth") <= 360

        await submit("I have paid: check the payment")
        assert await heading() == "Payment not seen yet"
        txid = await pay(net, address, amount)
        await until("the pending page", lambda: submit_and_read(submit, heading),
                    lambda h: h.startswith("Payment seen"))
        assert await page.locator("#progress").get_attribute("value") == "0"
        assert await page.get_by_text(f"0 of {N} confirmations").is_visible()

        await asyncio.to_thread(net.mine, 1)
        await until("one confirmation", lambda: submit_and_read(submit, lambda: page.inner_text("label")),
                    lambda label: label == f"1 of {N} confirmations")
        assert "2 more blocks to go: about 4 minutes" in await page.inner_text("main")

        await asyncio.to_thread(net.mine, N - 1)
        await until("the confirmed page", lambda: submit_and_read(submit, heading),
                    lambda h: h == "Payment confirmed")
        await submit("Get my access")
        assert await heading() == "Your access token"
        token = await page.input_value("#token")
        assert token == receipt_token(receipt, txid)
        assert "Paid: 0.007 XMR." in await page.inner_text("main")

        # later, from the start page, with the receipt kept
        await page.goto(base + "/pay")
        await page.get_by_label("Your receipt").fill(receipt)
        await submit("Check payment")
        assert await heading() == "Already redeemed"
        await submit("Show my token again")
        assert await page.input_value("#token") == token
        # what the payer's wallet history shows, pasted in its place, claims and shows nothing
        for seen_by_the_payer in (address, pid):
            await page.goto(base + "/pay")
            await page.get_by_label("Your receipt").fill(seen_by_the_payer)
            await submit("Check payment")
            assert await heading() == "Payment not seen yet"
            assert token not in await page.content()
        # a reload of a POST-only page goes back to the start, carrying nothing
        await page.goto(base + "/pay/status")
        assert page.url == base + "/pay" and await heading() == "Buy access"

        assert set(violations) == {"shop", "Pay 0.007 XMR", "Payment not seen yet",
                                   "Payment seen, waiting for confirmations", "Payment confirmed",
                                   "Your access token", "Already redeemed"}
        assert {name: v for name, v in violations.items() if v} == {}
        # and axe would have said so: an unlabelled field in grey on grey
        await page.set_content('<html lang="en"><title>t</title><main><p>x</p>'
                               '<input type="text"></main></html>')
        assert any("label" in v for v in await axe.violations(page))
        assert await context.cookies() == [] and ran_script == []
        for method, url, headers in sent:
            assert not any(secret in url for secret in (*secrets, token)), url
            assert "referer" not in headers and "cookie" not in headers, (method, url, headers)
        for url, status, headers in answered:
            assert "set-cookie" not in headers
            assert status != 303 or headers["location"] == "/pay"
        await browser.close()


async def submit_and_read(submit: Callable[[str], Awaitable[None]], read: Callable[[], Awaitable[str]]) -> str:
    """Press "Check again", as a customer waiting for the confirmations does."""
    await submit("Check again")
    return await read()


# ---------------------------------------------------------------------- firefox at "Safest"
class SafestFirefox:
    """Firefox over Marionette from the event loop: each call in a thread, since the
    service under test answers on this very loop."""

    def __init__(self, firefox: Firefox) -> None:
        self.ff = firefox

    async def __call__(self, method: str, *args: Any) -> Any:
        return await asyncio.to_thread(getattr(self.ff, method), *args)

    async def heading(self) -> str:
        return str(await self("text", "h1"))

    async def press(self, form_action: str) -> str:
        await self("click", f'form[action="{form_action}"] button')
        return await self.heading()


def start_firefox(directory: Path, prefs: dict[str, Any] | None = None, width: int = 700) -> Firefox:
    if firefox_binary() is None:
        pytest.skip("firefox-esr is not installed (bin/setup --test installs Debian's firefox-esr)")
    try:
        return Firefox(directory, prefs).start(width, 1000)
    except MarionetteError as exc:
        pytest.skip(f"firefox-esr could not start: {exc}")


def screenshot_dir(tmp_path: Path) -> Path:
    chosen = os.environ.get("ANONTICKET_SCREENSHOTS")
    directory = (REPO / chosen) if chosen else tmp_path / "screenshots"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


async def test_a_customer_buys_access_in_firefox_at_safest_and_each_state_is_screenshot(
        monero_regtest_view_only: RegtestNetwork, tmp_path: Path) -> None:
    net = monero_regtest_view_only
    shots = screenshot_dir(tmp_path)
    firefox = start_firefox(tmp_path / "profile")
    ff = SafestFirefox(firefox)
    try:
        async with shop(net, tmp_path) as service:
            base = f"http://{service.public_address}"

            async def shot(name: str) -> Path:
                return Path(await ff("screenshot", shots / f"{name}.png"))

            await ff("go", base + "/pay")
            assert await ff.heading() == "Buy access"
            assert "30 days of access: 0.03 XMR" in await ff("text")
            await shot("1-shop")
            assert await ff.press("/pay") == "Pay 0.007 XMR"
            receipt, address = await ff("value", "#receipt"), await ff("value", "#address")
            assert address == wallet_address(net, receipt) and await ff("value", "#amount") == "0.007"
            assert "This is your receipt. Keep it secret: whoever has it can claim the access." \
                in await ff("text")
            uri = await ff("attribute", "a.button", "href")
            assert uri == f"monero:{address}?tx_amount=0.007"
            # the PNG QR is drawn at Safest, and reads back as the URI
            assert zbar_decode(await ff("screenshot", tmp_path / "qr.png", ".qr img")) == [uri]
            assert zbar_decode(await shot("2-payment")) == [uri]
            assert await ff("url") == base + "/pay"  # the page came from a POST: nothing in the URL

            assert await ff.press("/pay/status") == "Payment not seen yet"
            await shot("3-not-seen")
            first = await pay(net, address, "0.003")  # too little: the wallet's user mistyped
            await until("the pending page", lambda: ff.press("/pay/status"), lambda h: h.startswith("Payment seen"))
            assert f"0 of {N} confirmations" in await ff("text")
            await shot("4-pending")

            await asyncio.to_thread(net.mine, N)
            assert await until("the underpaid page", lambda: ff.press("/pay/status"),
                               lambda h: h != "Payment seen, waiting for confirmations") == "Payment incomplete"
            assert "0.004 XMR missing" in await ff("text")
            rest = await ff("attribute", "a.button", "href")
            assert rest == f"monero:{address}?tx_amount=0.004" and await ff("value", "#amount") == "0.004"
            assert zbar_decode(await shot("5-underpaid")) == [rest]

            await pay(net, address, "0.004")
            await until("the second payment", lambda: ff.press("/pay/status"), lambda h: h.startswith("Payment seen"))
            await asyncio.to_thread(net.mine, N)
            await until("the confirmed page", lambda: ff.press("/pay/status"), lambda h: h == "Payment confirmed")
            assert "0.007 XMR is confirmed" in await ff("text")
            await shot("6-confirmed")
            assert await ff.press("/pay/redeem") == "Your access token"
            # the token derives from the receipt and the earliest payment
            assert await ff("value", "#token") == receipt_token(receipt, first)
            await shot("7-token")

            await ff("go", base + "/pay")
            await ff("type", "#check-receipt", receipt)
            assert await ff.press("/pay/status") == "Already redeemed"
            await shot("8-redeemed")
            assert await ff("url") == base + "/pay/status"
            await ff("go", base + "/pay")
            await ff("type", "#check-receipt", address)  # the address claims nothing
            assert await ff.press("/pay/status") == "Payment not seen yet"
    finally:
        await asyncio.to_thread(firefox.close)


# ---------------------------------------------------------------------- the control
def control_page(directory: Path) -> Path:
    """Three QR codes: a PNG, an SVG image and an inline SVG, each of its own text."""
    png = segno.make("control: png", error="m", micro=False).png_data_uri(scale=6, border=4)
    svg = segno.make("control: svg image", error="m", micro=False).svg_data_uri(scale=6, border=4)
    inline = segno.make("control: inline svg", error="m", micro=False).svg_inline(scale=6, border=4)
    page = directory / "control.html"
    page.write_text(f"""<!doctype html><html lang="en"><title>control</title><body>
<p><img src="{png}" alt="png"></p><p><img src="{svg}" alt="svg"></p><p>{inline}</p></body></html>""")
    return page


async def chromium_sees(page: Path, shot: Path) -> list[str]:
    async_playwright = playwright_or_skip()
    async with async_playwright() as p:
        browser = await launch_chromium(p)
        tab = await (await browser.new_context(java_script_enabled=False)).new_page()
        await tab.goto(page.as_uri())
        await tab.screenshot(path=str(shot), full_page=True)
        await browser.close()
    return sorted(zbar_decode(shot))


def firefox_sees(page: Path, directory: Path, prefs: dict[str, Any]) -> list[str]:
    firefox = start_firefox(directory / "profile", prefs)
    try:
        firefox.go(page.as_uri())
        return sorted(zbar_decode(firefox.screenshot(directory / "shot.png")))
    finally:
        firefox.close()


async def test_control_an_svg_does_not_render_at_safest_while_the_png_does(tmp_path: Path) -> None:
    page = control_page(tmp_path)
    every = ["control: inline svg", "control: png", "control: svg image"]
    # the screenshots and zbar can see all three: chromium draws SVG
    assert await chromium_sees(page, tmp_path / "chromium.png") == every
    for name, prefs, expected in (("safest", SAFEST, ["control: png"]),
                                  ("svg-on", {**SAFEST, "svg.disabled": False}, every)):
        (tmp_path / name).mkdir()
        assert await asyncio.to_thread(firefox_sees, page, tmp_path / name, prefs) == expected, name
