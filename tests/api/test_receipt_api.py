"""Receipts over HTTP, on both backends: redeem and top-up take them, a bare PID under
REDEEM_PLAIN_PIDS=refuse gets byte for byte what an unknown PID gets (the API and the
checkout pages, the metrics too), and hostile receipt input is a 400 that repeats nothing.

The service is the real one on real sockets; payments are credited the way the monitor
credits them (``Ledger.credit``, ``set_pending``), the regtest test does it with a wallet.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from anonticket.config import Config
from anonticket.domain.address import make_integrated_address
from anonticket.domain.errors import InvalidReceipt
from anonticket.domain.ids import PaymentId, Receipt, derive_receipt_token, derive_service_token
from anonticket.regtest import MERCHANT_KEYS
from anonticket.service.app import Service, start_service
from conftest import transfer, url
from page_helpers import Page, parse_page

BOTH_BACKENDS = True
MIN = 1000
DOCUMENTED = re.compile(r"[0-9a-fA-F]{64}|[0-9a-fA-F]{8}(-[0-9a-fA-F]{8}){7}|[0-9a-fA-F]{8}( [0-9a-fA-F]{8}){7}")


@pytest.fixture
async def refusing(config_factory: Callable[..., Config]) -> AsyncIterator[Service]:
    """The production default, REDEEM_PLAIN_PIDS=refuse, with a checkout."""
    service = await start_service(config_factory(REDEEM_PLAIN_PIDS="refuse",
                                                 MERCHANT_ADDRESS=MERCHANT_KEYS.address))
    yield service
    await service.aclose()


async def post(http: aiohttp.ClientSession, service: Service, path: str, body: Any,
               raw: bytes | None = None) -> tuple[int, bytes]:
    data = raw if raw is not None else json.dumps(body).encode()
    async with http.post(url(service.public_address, path), data=data) as resp:
        return resp.status, await resp.read()


async def redeem(http: aiohttp.ClientSession, service: Service, **body: str) -> tuple[int, dict[str, Any]]:
    status, answer = await post(http, service, "/api/v1/redeem", body)
    return status, json.loads(answer)


async def page(http: aiohttp.ClientSession, service: Service, path: str, form: dict[str, str]) -> Page:
    async with http.post(url(service.public_address, path), data=form) as resp:
        assert resp.status == 200
        return parse_page(await resp.text())


def outcomes(service: Service) -> dict[str, float]:
    return {name: float(counter.value) for name, counter in service.state.metrics.redeem.items()}


async def credit(service: Service, pid: PaymentId, amount: int, height: int = 100) -> bytes:
    t = transfer(pid, amount, height)
    await service.state.ledger.credit([t], None)
    return t.txid


# ---------------------------------------------------------------------- redeem and top-up
async def test_a_receipt_redeems_by_every_body_shape(refusing: Service, http: aiohttp.ClientSession) -> None:
    receipt = Receipt.generate()
    assert await redeem(http, refusing, receipt=receipt.hex()) == (
        404, {"error": "payment_not_found", "message": "no confirmed or pending payment for this receipt or pid"})
    refusing.state.ledger.set_pending({receipt.pid_raw: 2})
    assert await redeem(http, refusing, receipt=receipt.grouped()) == (
        202, {"status": "pending", "confirmations": 2, "required": 10})
    txid = await credit(refusing, receipt.pid, 5000)
    refusing.state.ledger.set_pending({})
    token = derive_receipt_token(receipt.raw, txid).hex()
    status, body = await redeem(http, refusing, receipt=receipt.hex().upper())
    assert (status, body) == (200, {"status": "success", "service_token": token, "balance": 5000,
                                    "remaining": 5000, "expires_at": None})
    assert token != derive_service_token(receipt.pid, txid.hex()).hex()
    # the fast path's body, the general path's (escapes, spaces, another field) and the grouped
    # spellings all answer the same
    spellings = [b'{"receipt":"%s"}' % receipt.hex().encode(),
                 b' {\n"receipt" : "%s" }\t' % receipt.grouped().replace("-", " ").encode(),
                 json.dumps({"receipt": receipt.grouped(), "note": 1}).encode(),
                 b'{"receipt":"\\u0030' + receipt.hex()[1:].encode() + b'"}' if receipt.hex()[0] == "0"
                 else b'{"\\u0072eceipt":"%s"}' % receipt.hex().encode()]
    for raw in spellings:
        status, answer = await post(http, refusing, "/api/v1/redeem", None, raw)
        assert (status, json.loads(answer)["status"], json.loads(answer)["service_token"]) == (
            200, "already_claimed", token), raw
    assert outcomes(refusing)["success"] == 1 and outcomes(refusing)["already_claimed"] == len(spellings)


async def test_a_top_up_takes_a_receipt(refusing: Service, http: aiohttp.ClientSession) -> None:
    own, extra = Receipt.generate(), Receipt.generate()
    await credit(refusing, own.pid, 5000)
    await credit(refusing, extra.pid, 3000)
    token = (await redeem(http, refusing, receipt=own.hex()))[1]["service_token"]
    path = f"/api/v1/token/{token}/topup"
    status, body = await post(http, refusing, path, {"pid": extra.pid.hex()})
    assert (status, json.loads(body)["error"]) == (404, "payment_not_found")
    for _ in range(2):  # a retry answers the same and credits nothing twice
        status, body = await post(http, refusing, path, {"receipt": extra.grouped()})
        answer = json.loads(body)
        assert (status, answer["status"], answer["credited"], answer["balance"]) == (200, "topped_up", 3000, 8000)
    assert (await redeem(http, refusing, receipt=extra.hex()))[1]["service_token"] == token
    status, body = await post(http, refusing, path, {"receipt": extra.hex(), "pid": extra.pid.hex()})
    assert (status, json.loads(body)["error"]) == (400, "invalid_request")


# ---------------------------------------------------------------------- refuse: as unknown
async def test_under_refuse_a_bare_pid_gets_what_an_unknown_pid_gets(
        refusing: Service, http: aiohttp.ClientSession) -> None:
    """In every state a payment can be in, the bare PID's answer is the unknown PID's, byte for
    byte, and so is what the metrics count; the receipts meanwhile see their payments."""
    ledger = refusing.state.ledger
    pending, underpaid, credited, redeemed = (Receipt.generate() for _ in range(4))
    await credit(refusing, underpaid.pid, 10)
    await credit(refusing, credited.pid, 5000)
    await credit(refusing, redeemed.pid, 5000)
    ledger.set_pending({pending.pid_raw: 0})
    assert (await redeem(http, refusing, receipt=redeemed.hex()))[0] == 200
    token = (await redeem(http, refusing, receipt=redeemed.hex()))[1]["service_token"]

    async def answer(pid: str) -> tuple[int, bytes, dict[str, float]]:
        before = outcomes(refusing)
        status, body = await post(http, refusing, "/api/v1/redeem", {"pid": pid})
        after = outcomes(refusing)
        return status, body, {k: after[k] - before[k] for k in after if after[k] != before[k]}

    unknown = await answer(PaymentId.generate().hex())
    assert unknown[0] == 404 and unknown[2] == {"not_found": 1.0}
    for receipt in (pending, underpaid, credited, redeemed):
        assert await answer(receipt.pid.hex()) == unknown
        assert await answer(receipt.pid.hex().upper()) == unknown
        status, body = await post(http, refusing, f"/api/v1/token/{token}/topup", {"pid": receipt.pid.hex()})
        assert (status, body) == (404, unknown[1])
    # nothing was claimed or hidden by those: the receipts still redeem
    assert (await redeem(http, refusing, receipt=pending.hex()))[0] == 202
    assert (await redeem(http, refusing, receipt=underpaid.hex()))[0] == 402
    assert (await redeem(http, refusing, receipt=credited.hex()))[1]["status"] == "success"


async def test_under_refuse_the_checkout_shows_a_pid_or_an_address_nothing(
        refusing: Service, http: aiohttp.ClientSession) -> None:
    """Pasted in place of the receipt, what the payer's wallet shows reveals neither the
    payment's state nor its token: the page is the unknown PID's."""
    ledger = refusing.state.ledger
    pending, underpaid, credited, redeemed = (Receipt.generate() for _ in range(4))
    await credit(refusing, underpaid.pid, 10)
    await credit(refusing, credited.pid, 5000)
    await credit(refusing, redeemed.pid, 5000)
    ledger.set_pending({pending.pid_raw: 0})
    token = (await redeem(http, refusing, receipt=redeemed.hex()))[1]["service_token"]

    def without(shown: Page, value: str) -> str:
        return shown.source.replace(value, "VALUE")

    stranger = PaymentId.generate().hex()
    for path in ("/pay/status", "/pay/redeem"):
        expected = without(await page(http, refusing, path, {"receipt": stranger}), stranger)
        assert "Payment not seen yet" in expected
        for receipt in (pending, underpaid, credited, redeemed):
            pid = receipt.pid.hex()
            address = make_integrated_address(MERCHANT_KEYS.address, pid)
            for form in ({"receipt": pid}, {"receipt": address}, {"pid": pid}, {"pid": address}):
                shown = await page(http, refusing, path, form)
                assert without(shown, pid) == expected, (path, form)
                assert token not in shown.source
        # and the receipts still show their states
        assert (await page(http, refusing, path, {"receipt": pending.grouped()})).h1.startswith("Payment seen")
    assert (await page(http, refusing, "/pay/status", {"receipt": credited.hex()})).h1 == "Payment confirmed"
    assert (await page(http, refusing, "/pay/redeem", {"receipt": credited.hex()})).h1 == "Your access token"


async def test_under_allow_a_bare_pid_claims_as_before_receipts(
        config_factory: Callable[..., Config], http: aiohttp.ClientSession) -> None:
    service = await start_service(config_factory(REDEEM_PLAIN_PIDS="allow"))
    try:
        receipt = Receipt.generate()
        txid = await credit(service, receipt.pid, 5000)
        status, body = await redeem(http, service, pid=receipt.pid.hex())
        assert (status, body["service_token"]) == (200, derive_service_token(receipt.pid, txid.hex()).hex())
        status, again = await redeem(http, service, receipt=receipt.hex())
        assert (again["status"], again["service_token"]) == ("already_claimed", body["service_token"])
    finally:
        await service.aclose()


async def test_the_default_setting_is_refuse(tmp_path: Any) -> None:
    assert Config.from_env({"DATABASE_URL": str(tmp_path / "x.db")}).redeem_plain_pids == "refuse"


# ---------------------------------------------------------------------- hostile input
HOSTILE = [
    "", "a" * 63, "a" * 65, "a" * 63 + "g", " " + "a" * 64, "a" * 64 + " ", "a" * 64 + "\n",
    "\u0663" * 64, "\uff41" * 64, "a" * 4000, "<script>" + "a" * 56, "-".join(["aaaaaaaa"] * 7 + ["aaaaaaa"]),
    "_".join(["aaaaaaaa"] * 8), "-".join(["aaaaaaaa"] * 4) + " " + " ".join(["aaaaaaaa"] * 4),
    "0x" + "a" * 64, "a" * 62 + "%0a",
]


@pytest.mark.parametrize("bad", HOSTILE)
async def test_a_malformed_receipt_is_400_and_repeats_nothing(
        refusing: Service, http: aiohttp.ClientSession, bad: str) -> None:
    token = "ab" * 32
    for path in ("/api/v1/redeem", f"/api/v1/token/{token}/topup"):
        status, body = await post(http, refusing, path, {"receipt": bad})
        if status == 413:  # the 4 KiB body limit comes first
            continue
        assert (status, json.loads(body)) == (400, {"error": "invalid_receipt", "message": InvalidReceipt.message})
    assert outcomes(refusing)["invalid"] >= 1


@pytest.mark.parametrize("value", [None, 7, 1.5, True, [Receipt.generate().hex()], {"receipt": "a" * 64}])
async def test_a_receipt_that_is_not_a_string_is_400(refusing: Service, http: aiohttp.ClientSession,
                                                     value: object) -> None:
    status, body = await post(http, refusing, "/api/v1/redeem", {"receipt": value})
    assert (status, json.loads(body)["error"]) == (400, "invalid_receipt")


async def test_both_fields_or_neither_is_400(refusing: Service, http: aiohttp.ClientSession) -> None:
    receipt = Receipt.generate()
    for body in ({"receipt": receipt.hex(), "pid": receipt.pid.hex()}, {}, {"Receipt": receipt.hex()}):
        status, answer = await post(http, refusing, "/api/v1/redeem", body)
        parsed = json.loads(answer)
        assert (status, parsed["error"]) == (400, "invalid_request")
        assert receipt.hex() not in answer.decode() and receipt.pid.hex() not in answer.decode()


async def test_any_text_as_a_receipt_is_answered_without_echo(refusing: Service) -> None:
    """Whatever text arrives, a receipt of the documented forms is looked up (404: nobody
    paid it) and anything else is 400 invalid_receipt; the answer never holds the input."""
    address = refusing.public_address

    @settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(text=st.text(max_size=90) | st.text(alphabet="0123456789abcdefABCDEF- ", min_size=62, max_size=72)
           | st.builds(lambda r: r.grouped(), st.builds(Receipt.generate)))
    @example(text="0" * 64)
    def check(text: str) -> None:
        import urllib.request
        request = urllib.request.Request(f"http://{address}/api/v1/redeem",
                                         data=json.dumps({"receipt": text}).encode())
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(request, timeout=10) as resp:
                status, body = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, body = exc.code, exc.read()
        answer = json.loads(body)
        if DOCUMENTED.fullmatch(text):
            assert (status, answer["error"]) == (404, "payment_not_found"), text
        elif "\0" in text or any(0xD800 <= ord(c) <= 0xDFFF for c in text):
            assert (status, answer["error"]) == (400, "invalid_request")
        else:
            assert (status, answer) == (400, {"error": "invalid_receipt", "message": InvalidReceipt.message})
        rest = answer["message"]  # a fixed text: the words of it a text may contain are not an echo
        assert rest in (InvalidReceipt.message, "no confirmed or pending payment for this receipt or pid") \
            or answer["error"] == "invalid_request"
        for piece in re.findall(r"[0-9A-Za-z]{8,}", text):
            assert piece.lower() not in body.decode().lower().replace(rest.lower(), "")

    await asyncio.to_thread(check)
