"""The /pay pages over real sockets, every state rendered from a real ledger state.

The ledger is driven the way the monitor drives it (``credit``, ``set_pending``) on a
real SQLite file; the pages are fetched with a plain HTTP client, parsed, and checked
for what a browser at Tor Browser's "Safest" needs: no script, no SVG, a PNG QR that
is segno's for the URI, a CSP whose hash is the page's one style block.
"""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import segno

from anonticket.domain.address import decode_address
from anonticket.api.pages import STYLE, security_headers
from anonticket.service.app import Service, start_service
from anonticket.domain.ids import PaymentId, Receipt, derive_receipt_token, derive_service_token
from anonticket.domain.payment_uri import parse_xmr
from anonticket.regtest import MERCHANT_KEYS, PAYER_KEYS
from conftest import make_config, transfer, url
from page_helpers import SECURITY_HEADERS, Page, assert_safe_page, style_hash, zbar_decode

MERCHANT = MERCHANT_KEYS.address
MINIMUM = 10**10  # 0.01 XMR
URI = re.compile(r"monero:([1-9A-HJ-NP-Za-km-z]{106})(?:\?tx_amount=((?:0|[1-9][0-9]*)(?:\.[0-9]{0,11}[1-9])?))?")


@pytest.fixture
async def shop(tmp_path: Path) -> AsyncIterator[Service]:
    service = await start_service(make_config(
        tmp_path, MERCHANT_ADDRESS=MERCHANT, MONITOR_MIN_PAYMENT_AMOUNT=MINIMUM,
        CHECKOUT_OFFERS="7d, 30d, 0.5", ACCESS_PRICE_PER_DAY="0.01", API_ACCESS_LOG="true"))
    yield service
    await service.aclose()


async def fetch(http: aiohttp.ClientSession, service: Service, method: str, path: str,
                form: dict[str, str] | bytes | None = None, **kwargs: Any
                ) -> tuple[int, Page, aiohttp.ClientResponse]:
    headers = {"Content-Type": "application/x-www-form-urlencoded"} if isinstance(form, bytes) else None
    async with http.request(method, url(service.public_address, path), data=form, headers=headers,
                            allow_redirects=False, **kwargs) as resp:
        text = await resp.text()
    for name, value in security_headers().items():
        assert resp.headers.get(name) == value, (path, name)
    assert "Set-Cookie" not in resp.headers
    if resp.status == 303:
        return resp.status, Page(text), resp
    assert resp.content_type == "text/html" and resp.charset == "utf-8"
    return resp.status, assert_safe_page(text), resp


async def create(http: aiohttp.ClientSession, service: Service, offer: str = "7d") -> Page:
    status, page, _ = await fetch(http, service, "POST", "/pay", {"offer": offer})
    assert status == 200, page.source
    return page


async def status_of(http: aiohttp.ClientSession, service: Service, claim: str,
                    path: str = "/pay/status", field: str = "receipt") -> Page:
    """The page for a receipt (or what else a customer types into the receipt field);
    ``field="pid"``: as a payment page rendered before receipts sends it."""
    status, page, _ = await fetch(http, service, "POST", path, {field: claim})
    assert status == 200, page.source
    return page


def pid_of(receipt: str) -> PaymentId:
    """The PID a receipt shown on a page pays to."""
    return Receipt.parse(receipt).pid


async def credit(service: Service, receipt_or_pid: str, amount: int, height: int = 100) -> bytes:
    pid = PaymentId.parse(receipt_or_pid) if len(receipt_or_pid) == 16 else pid_of(receipt_or_pid)
    t = transfer(pid, amount, height)
    await service.state.ledger.credit([t], None)
    return t.txid


# ---------------------------------------------------------------------- the shop and the payment page
async def test_shop_lists_the_declared_offers_and_both_forms(shop: Service, http: aiohttp.ClientSession) -> None:
    status, page, _ = await fetch(http, shop, "GET", "/pay")
    assert status == 200 and page.h1 == "Buy access"
    radios = [e.attrs for e in page.all("input") if e.attrs.get("type") == "radio"]
    assert [r["value"] for r in radios] == ["7d", "30d", "500000000000"]
    assert "checked" in radios[0] and "checked" not in radios[1]
    assert "7 days of access: 0.07 XMR" in page.source and "0.5 XMR of credit" in page.source
    assert [action for action, _ in page.forms()] == ["/pay", "/pay/status"]
    check = page.by_id("check-receipt").attrs
    assert check["autocomplete"] == "off" and check["name"] == "receipt"
    assert check["aria-describedby"] == "check-hint" and "payment ID" in page.by_id("check-hint").text


async def test_without_declared_offers_one_offer_at_the_minimum(config_factory, http: aiohttp.ClientSession) -> None:  # type: ignore[no-untyped-def]
    service = await start_service(config_factory(MERCHANT_ADDRESS=MERCHANT, MONITOR_MIN_PAYMENT_AMOUNT=MINIMUM))
    try:
        _, page, _ = await fetch(http, service, "GET", "/pay")
        assert [e.attrs["value"] for e in page.all("input") if e.attrs.get("type") == "radio"] == [str(MINIMUM)]
        made = await create(http, service, str(MINIMUM))
        assert made.field("amount") == "0.01" and made.h1 == "Pay 0.01 XMR"
    finally:
        await service.aclose()


async def test_payment_page_builds_the_integrated_address_uri_and_qr(shop: Service, http: aiohttp.ClientSession) -> None:
    page = await create(http, shop, "30d")
    receipt, address, amount = page.field("receipt"), page.field("address"), page.field("amount")
    # the receipt as eight groups of eight, and the address carries the PID derived from it
    assert re.fullmatch(r"[0-9a-f]{8}(-[0-9a-f]{8}){7}", receipt)
    pid = pid_of(receipt).hex()
    decoded = decode_address(address)
    assert (decoded.kind, decoded.payment_id.hex() if decoded.payment_id else None) == ("integrated", pid)
    primary = decode_address(MERCHANT)
    assert (decoded.spend_key, decoded.view_key) == (primary.spend_key, primary.view_key)
    assert amount == "0.3" and parse_xmr(amount) == 30 * 10**10
    # the wallet link: lowercase scheme, the PID only inside the address, a plain decimal
    (uri,) = [a.attrs["href"] for a in page.all("a") if a.attrs["href"].startswith("monero")]
    match = URI.fullmatch(uri)
    assert match and match.group(1) == address and match.group(2) == amount, uri
    assert "tx_payment_id" not in uri and "e" not in (match.group(2) or "")
    # the QR: a PNG data: URI, byte for byte what segno makes for the URI, sized to match
    (image,) = page.all("img")
    expected = segno.make(uri, error="m", micro=False).png_data_uri(scale=5, border=4)
    assert image.attrs["src"] == expected and expected.startswith("data:image/png;base64,")
    code = segno.make(uri, error="m", micro=False)
    assert (code.mode, code.error, code.is_micro) == ("byte", "M", False)
    assert image.attrs["width"] == image.attrs["height"] == str(code.symbol_size(scale=5, border=4)[0])
    # the receipt is the thing to keep, and the address alone claims nothing
    text = re.sub(r"\s+", " ", page.source)
    assert "This is your receipt. Keep it secret: whoever has it can claim the access." in text
    assert "The address below no longer claims anything" in text
    assert page.by_id("address").tag == "textarea" and "readonly" in page.by_id("address").attrs
    assert page.by_id("receipt").tag == "textarea"
    assert all("readonly" in page.by_id(i).attrs for i in ("receipt", "amount"))
    assert "user-select:all" in page.style
    assert page.forms()[-1] == ("/pay/status", {"receipt": Receipt.parse(receipt).hex()})
    assert pid not in page.source.replace(address, "")  # the PID only inside the address


async def test_the_qr_png_reads_back_as_the_uri(shop: Service, http: aiohttp.ClientSession,
                                                tmp_path: Path) -> None:
    page = await create(http, shop)
    (image,) = page.all("img")
    png = tmp_path / "qr.png"
    png.write_bytes(base64.b64decode(image.attrs["src"].split(",", 1)[1]))
    (uri,) = [a.attrs["href"] for a in page.all("a") if a.attrs["href"].startswith("monero:")]
    assert zbar_decode(png) == [uri]


async def test_every_payment_is_a_fresh_receipt_and_nothing_is_stored(shop: Service, http: aiohttp.ClientSession) -> None:
    receipts = {(await create(http, shop)).field("receipt") for _ in range(5)}
    assert len(receipts) == 5 and len({pid_of(r) for r in receipts}) == 5
    assert (await shop.state.ledger.storage.get_stats())["payments_unclaimed"] == 0
    for receipt in receipts:
        assert await shop.state.ledger.storage.get_claim(pid_of(receipt).raw) is None


async def test_csp_hash_is_the_style_block(shop: Service, http: aiohttp.ClientSession) -> None:
    _, page, resp = await fetch(http, shop, "GET", "/pay")
    assert page.style == STYLE
    assert resp.headers["Content-Security-Policy"] == (
        f"default-src 'none'; img-src data:; style-src {style_hash(page.style)}; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
    assert '<link rel="icon" href="data:,">' in page.source
    # dark mode, and the QR box stays white in it
    assert "prefers-color-scheme:dark" in page.style and ".qr{background:#fff" in page.style


# ---------------------------------------------------------------------- every state, from the ledger
async def test_every_state_from_the_real_ledger(shop: Service, http: aiohttp.ClientSession) -> None:
    shown = (await create(http, shop)).field("receipt")
    receipt, pid = Receipt.parse(shown), pid_of(shown).hex()
    hidden = {"receipt": receipt.hex()}  # what the buttons send back
    ledger = shop.state.ledger

    page = await status_of(http, shop, shown)
    assert page.h1 == "Payment not seen yet" and page.forms() == [("/pay/status", hidden)]

    ledger.set_pending({PaymentId.parse(pid).raw: 4})
    page = await status_of(http, shop, receipt.hex())
    assert page.h1 == "Payment seen, waiting for confirmations"
    bar = page.by_id("progress").attrs
    assert (bar["value"], bar["max"]) == ("4", "10")
    assert "4 of 10 confirmations" in page.source and "about 12 minutes" in page.source

    txid = await credit(shop, pid, MINIMUM // 4)  # the pending payment lands, below the minimum
    ledger.set_pending({})
    page = await status_of(http, shop, shown)
    assert page.h1 == "Payment incomplete"
    assert "Received 0.0025 XMR, but the minimum is 0.01 XMR" in page.source
    assert "0.0075 XMR missing" in page.source
    (uri,) = [a.attrs["href"] for a in page.all("a") if a.attrs["href"].startswith("monero:")]
    rest = URI.fullmatch(uri)
    assert rest and rest.group(2) == "0.0075" and decode_address(rest.group(1)).payment_id.hex() == pid  # type: ignore[union-attr]
    assert page.all("img")[0].attrs["src"] == segno.make(uri, error="m", micro=False).png_data_uri(scale=5, border=4)

    await credit(shop, pid, MINIMUM, height=101)
    page = await status_of(http, shop, shown)
    assert page.h1 == "Payment confirmed" and "0.0125 XMR is confirmed" in page.source
    assert page.forms() == [("/pay/redeem", hidden)]
    again = await status_of(http, shop, shown)  # checking never claims
    assert again.h1 == "Payment confirmed"

    page = await status_of(http, shop, receipt.hex(), "/pay/redeem")
    # the receipt's token, not the one its PID and the txid would give
    token = derive_receipt_token(receipt.raw, txid).hex()
    assert token != derive_service_token(PaymentId.parse(pid), txid.hex()).hex()
    assert page.h1 == "Your access token" and page.field("token") == token
    # the button that hands the token to the gateway's access page (a POST body, not a URL)
    assert page.forms() == [("/access", {"token": token, "next": "/"})]
    assert "Paid: 0.0125 XMR." in page.source and "Keep it secret." in page.source
    assert shop.state.metrics.redeem["success"].value == 1

    page = await status_of(http, shop, shown)
    assert page.h1 == "Already redeemed" and page.forms() == [("/pay/redeem", hidden)]
    page = await status_of(http, shop, shown.replace("-", " ").upper(), "/pay/redeem")
    assert page.field("token") == token and shop.state.metrics.redeem["already_claimed"].value == 1


async def test_redeem_page_answers_each_state_like_the_api(shop: Service, http: aiohttp.ClientSession) -> None:
    unseen, pending, short = (Receipt.generate().hex() for _ in range(3))
    assert (await status_of(http, shop, unseen, "/pay/redeem")).h1 == "Payment not seen yet"
    shop.state.ledger.set_pending({pid_of(pending).raw: 0})
    page = await status_of(http, shop, pending, "/pay/redeem")
    assert page.h1 == "Payment seen, waiting for confirmations" and page.by_id("progress").attrs["value"] == "0"
    await credit(shop, short, 5)
    assert (await status_of(http, shop, short, "/pay/redeem")).h1 == "Payment incomplete"
    counts = shop.state.metrics.redeem
    assert (counts["not_found"].value, counts["pending"].value, counts["underpaid"].value) == (1, 1, 1)


async def test_a_payment_id_or_address_checks_a_payment_made_before_receipts(
        shop: Service, http: aiohttp.ClientSession) -> None:
    """REDEEM_PLAIN_PIDS=allow (the shop fixture) stands for a payment a bare PID may claim:
    typed into the receipt field, or sent by a payment page rendered before receipts."""
    from anonticket.domain.address import make_integrated_address
    pid = PaymentId.generate().hex()
    address = make_integrated_address(MERCHANT, pid)
    await credit(shop, pid, MINIMUM)
    assert (await status_of(http, shop, f"  {address}\n")).h1 == "Payment confirmed"
    assert (await status_of(http, shop, pid.upper() + " ")).h1 == "Payment confirmed"
    page = await status_of(http, shop, pid, field="pid")
    assert page.h1 == "Payment confirmed" and page.forms() == [("/pay/redeem", {"pid": pid})]
    # an integrated address of someone else's wallet is not this shop's payment
    foreign = make_integrated_address(PAYER_KEYS.address, pid)
    for field in ("receipt", "pid"):
        status, page, _ = await fetch(http, shop, "POST", "/pay/status", {field: foreign})
        assert status == 400 and foreign not in page.source and pid not in page.source


# ---------------------------------------------------------------------- refusals
@pytest.mark.parametrize("bad", ["", "0000000000000000", "0123456789abcdeg", "0123456789abcde",
                                 "x" * 106, "<script>0123456789abcdef", "ab" * 31 + "ag",
                                 "-".join(["0123abcd"] * 7 + ["0123abc"]),
                                 "-".join(["0123abcd"] * 4) + " " + " ".join(["0123abcd"] * 4),
                                 "_".join(["0123abcd"] * 8), "ab" * 33])
async def test_a_malformed_receipt_is_a_400_page_that_does_not_echo_it(
        shop: Service, http: aiohttp.ClientSession, bad: str) -> None:
    for path in ("/pay/status", "/pay/redeem"):
        for field in ("receipt", "pid"):
            status, page, _ = await fetch(http, shop, "POST", path, {field: bad})
            assert (status, page.h1) == (400, "Not a receipt")
            assert not bad or bad not in page.source
            assert "0123456789abcde" not in page.source and "0123abc" not in page.source
    status, page, _ = await fetch(http, shop, "POST", "/pay/status",
                                  {"receipt": Receipt.generate().hex(), "pid": "0123456789abcdef"})
    assert (status, page.h1) == (400, "Not a receipt")


async def test_refused_forms_and_methods_are_pages_with_the_headers(shop: Service, http: aiohttp.ClientSession) -> None:
    status, page, _ = await fetch(http, shop, "POST", "/pay", {"offer": "1d"})
    assert (status, page.h1) == (404, "Offer not available")
    status, page, _ = await fetch(http, shop, "POST", "/pay/status", b"pid=a&pid=b")
    assert (status, page.h1) == (400, "Request not understood")
    status, page, _ = await fetch(http, shop, "POST", "/pay/status", b"pid=\xff")
    assert status == 400
    status, page, _ = await fetch(http, shop, "POST", "/pay/status", b"pid=" + b"a" * 5000)
    assert (status, page.h1) == (413, "Too much data")
    status, page, resp = await fetch(http, shop, "PUT", "/pay")
    assert (status, page.h1, resp.headers["Allow"]) == (405, "Not possible here", "GET,POST")
    token = "ab" * 32
    status, page, _ = await fetch(http, shop, "GET", f"/pay/{token}")
    assert (status, page.h1) == (404, "Page not found") and token not in page.source
    status, page, _ = await fetch(http, shop, "POST", f"/pay/status/{token}", {"pid": token})
    assert status == 404 and token not in page.source


@pytest.mark.parametrize("path", ["/pay/status", "/pay/redeem"])
async def test_get_on_a_post_route_goes_back_to_the_start_carrying_nothing(
        shop: Service, http: aiohttp.ClientSession, path: str) -> None:
    status, page, resp = await fetch(http, shop, "GET", path + "?pid=0123456789abcdef")
    assert (status, resp.headers["Location"], page.source) == (303, "/pay", "")


async def test_checkout_off_without_an_address(config_factory, http: aiohttp.ClientSession) -> None:  # type: ignore[no-untyped-def]
    service = await start_service(config_factory())  # no MERCHANT_ADDRESS, no wallet to ask
    try:
        status, page, _ = await fetch(http, service, "GET", "/pay")
        assert status == 200
        status, page, _ = await fetch(http, service, "POST", "/pay", {"offer": "1000"})
        assert (status, page.h1) == (503, "Checkout unavailable")
        pid = PaymentId.generate().hex()
        assert (await status_of(http, service, pid)).h1 == "Payment not seen yet"  # checking still works
    finally:
        await service.aclose()


async def test_the_access_log_names_route_templates_only(shop: Service, http: aiohttp.ClientSession,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    receipt = (await create(http, shop)).field("receipt")
    await status_of(http, shop, receipt)
    await fetch(http, shop, "GET", f"/pay/{receipt}")
    await shop.aclose()  # flushes the access log
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "anonticket.access" in line]
    assert [line.split()[4:7] for line in lines] == [
        ["POST", "/pay", "200"], ["POST", "/pay/status", "200"], ["GET", "unmatched", "404"]]
    assert receipt not in err and receipt.replace("-", "") not in err
    assert pid_of(receipt).hex() not in err
