"""A whole checkout run leaks no receipt, PID, integrated address, txid or token.

Create → pay → status (pending, confirmed) → redeem → status again, plus the usual
mistakes, against the real ``bin/anonticket serve`` with debug logging and the access
log on, the operator's address read from the wallet (``get_address``). Afterwards every
log line, every request URL, every response header (redirects included) and the
metrics text are searched for each secret in every spelling ``test_privacy`` knows;
the pages themselves must point at nothing but /pay, data: images and the wallet.

It runs against FakeWallet and against the real wallet on a private regtest chain.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from anonticket.domain.ids import Receipt, derive_receipt_token
from anonticket.regtest import MERCHANT_KEYS
from fake_wallet import FakeWallet
from page_helpers import SECURITY_HEADERS, LOCAL_TARGET, Page, assert_safe_page
from test_privacy import Chain, FakeChain, RegtestChain, Secrets, Served, poll, records, service_settings

N = 2  # MONITOR_MIN_CONFIRMATIONS in service_settings


@dataclass
class Seen:
    method: str
    url: str
    status: int
    headers: list[tuple[str, str]]
    page: Page
    typed: bool  # a URL the customer typed (a mistake the service must not repeat)


class Browser:
    """Sends forms like a browser without script would, and keeps every exchange."""

    def __init__(self, http: aiohttp.ClientSession, served: Served) -> None:
        self.http, self.base = http, f"http://{served.public}"
        self.seen: list[Seen] = []

    async def go(self, method: str, path: str, form: dict[str, str] | None = None,
                 typed: bool = False) -> tuple[int, Page]:
        async with self.http.request(method, self.base + path, data=form, allow_redirects=False) as resp:
            text = await resp.text()
            headers = list(resp.headers.items())
            status = resp.status
        page = assert_safe_page(text) if status != 303 else Page(text)
        self.seen.append(Seen(method, self.base + path, status, headers, page, typed))
        return status, page

    async def status(self, receipt: str) -> tuple[int, Page]:
        return await self.go("POST", "/pay/status", {"receipt": receipt})


def add_address(secret: Secrets, name: str, address: str) -> None:
    # whole, and its last blocks (the PID and the checksum): the first 95 characters are
    # nearly the operator's public address, which is no secret
    secret.items[name] = {address.lower(), address[-22:].lower()}


async def checkout_run(browser: Browser, chain: Chain, secret: Secrets) -> None:
    status, page = await browser.go("GET", "/pay")
    assert status == 200
    offer = [e.attrs["value"] for e in page.all("input") if e.attrs.get("type") == "radio"][0]
    status, page = await browser.go("POST", "/pay", {"offer": offer})
    assert status == 200, page.source
    shown, address = page.field("receipt"), page.field("address")
    receipt = Receipt.parse(shown)
    pid = receipt.pid.hex()
    secret.add_receipt("receipt", receipt)
    add_address(secret, "integrated address", address)

    status, page = await browser.status(shown)
    assert page.h1 == "Payment not seen yet"
    txid = await chain.pay(pid, 2 * 10**9)
    secret.add("txid", txid)
    await poll("the pending page", lambda: browser.status(shown),
               lambda s, p: p.h1.startswith("Payment seen"), chain.timeout)
    await chain.mine(1)
    _, page = await poll("one confirmation", lambda: browser.status(shown),
                         lambda s, p: p.h1.startswith("Payment seen")
                         and p.by_id("progress").attrs["value"] == "1", chain.timeout)
    assert f"1 of {N} confirmations" in page.source
    await chain.mine(N)
    await poll("the confirmed page", lambda: browser.status(shown),
               lambda s, p: p.h1 == "Payment confirmed", chain.timeout)
    status, page = await browser.go("POST", "/pay/redeem", {"receipt": receipt.hex()})
    token = derive_receipt_token(receipt.raw, bytes.fromhex(txid)).hex()
    secret.add("token", token)
    assert (status, page.h1, page.field("token")) == (200, "Your access token", token)
    assert (await browser.status(shown))[1].h1 == "Already redeemed"
    # the address and the PID (the payer's side knows both) show nothing and claim nothing
    for seen_by_the_payer in (address, pid):
        for path, field in (("/pay/redeem", "receipt"), ("/pay/status", "receipt"),
                            ("/pay/redeem", "pid")):
            status, page = await browser.go("POST", path, {field: seen_by_the_payer})
            assert (status, page.h1) == (200, "Payment not seen yet")
            # only what was typed comes back (the buttons send the address's PID back)
            assert secret.found_in(page.source.replace(address, "").replace(pid, "")) == []
            assert token not in page.source

    # reloads, bookmarks and mistakes
    for path in ("/pay/status", "/pay/redeem"):
        status, _ = await browser.go("GET", path)
        assert status == 303
    for bad in (receipt.hex() + "0", shown[:-1], pid + "0", address + "x", token + "-"):
        status, page = await browser.status(bad)
        assert status == 400 and secret.found_in(page.source) == []
    status, page = await browser.go("GET", f"/pay/{shown}", typed=True)
    assert status == 404 and secret.found_in(page.source) == []
    assert (await browser.go("PUT", "/pay/status", {"receipt": shown}))[0] == 405


def check_seen(seen: list[Seen], secret: Secrets) -> None:
    assert len(seen) >= 15
    for ex in seen:
        where = f"{ex.method} {ex.url} -> {ex.status}"
        assert ex.typed or secret.found_in(ex.url) == [], where
        names = {name for name, _ in ex.headers}
        assert set(SECURITY_HEADERS) <= names and "Set-Cookie" not in names, where
        for name, value in ex.headers:
            assert secret.found_in(value) == [], (where, name)
        if ex.status == 303:
            assert dict(ex.headers)["Location"] == "/pay" and ex.page.source == "", where
        for url in ex.page.urls():
            assert LOCAL_TARGET.fullmatch(url), (where, url)
            if not url.startswith(("monero:", "data:")):  # the wallet's own link and the QR
                assert secret.found_in(url) == [], (where, url)


async def run_and_check(tmp_path: Path, chain: Chain, wallet_url: str, start_height: int) -> None:
    secret = Secrets()
    served = Served(tmp_path, **service_settings(wallet_url, start_height))
    async with aiohttp.ClientSession(trust_env=False) as http:
        await served.start()
        try:
            browser = Browser(http, served)
            await checkout_run(browser, chain, secret)
            async with http.get(f"http://{served.internal}/metrics",
                                headers={"Authorization": f"Bearer {served.env['API_INTERNAL_TOKEN']}"}) as resp:
                metrics = await resp.text()
        finally:
            status = await served.stop()
    assert status == 0, served.log()[-2000:]
    assert 'route="/pay/redeem"' in metrics and secret.found_in(metrics) == []
    check_seen(browser.seen, secret)
    log = served.log()
    assert "checkout address read from the wallet" in log
    for expected in ("public POST /pay/status 200", "public POST /pay/redeem 200", "public GET /pay/status 303",
                     "public GET unmatched 404"):
        assert expected in log, f"the log misses {expected!r}: the check would be vacuous"
    check_log_lines(log, secret)


def check_log_lines(log: str, secret: Secrets) -> None:
    assert "LOG_LEVEL=DEBUG" in log, "the run was not at debug level"
    leaks = [(number, logger, found) for number, (logger, line) in enumerate(records(log.splitlines()), 1)
             if (found := secret.found_in(line))]
    assert leaks == [], f"secrets in the log (line, logger, which): {leaks}"


async def test_no_secret_leaves_a_checkout_run_fake_wallet(tmp_path: Path) -> None:
    async with FakeWallet(height=500) as wallet:
        wallet.methods["get_address"] = lambda params: {"address": MERCHANT_KEYS.address, "addresses": []}
        await run_and_check(tmp_path, FakeChain(wallet), wallet.url, start_height=500)


async def test_no_secret_leaves_a_checkout_run_regtest(tmp_path: Path, monero_regtest: Any) -> None:
    await run_and_check(tmp_path, RegtestChain(monero_regtest), monero_regtest.merchant_url,
                        start_height=monero_regtest.height())


def test_the_address_spellings_catch_a_leak() -> None:
    secret = Secrets()
    address = "4CmsPZPx2UfPHWEbixszvSfaG6UYdSwq7bEwRxJVTcea9Sz2YfppjWDFQBzniXsqhKYZo4FJQf4ZbJeSu9Pu8WxL6BnMUc71Dr4Tyd8GuK"
    add_address(secret, "address", address)
    assert secret.found_in(f"x {address[-30:]} y") == ["address"]
    assert secret.found_in(MERCHANT_KEYS.address) == []
    assert re.fullmatch(r"[1-9A-HJ-NP-Za-km-z]{106}", address)
