"""The checkout: buy access from a browser with no script, at ``/pay``.

``POST /pay`` makes a fresh **receipt** and shows it with the integrated address of the
PID derived from it: the receipt is what claims the payment, so the payer's wallet or
exchange, which sees the address, cannot. A receipt, a PID, an integrated address and a
token are all secrets, so none of them ever travels in a URL, a redirect, a cookie or a
header: every step is a POST whose form body carries the receipt, and every answer is
the page itself (200), never a redirect to one. A GET on a POST-only route is sent back
to ``/pay`` carrying nothing.

In CHECKOUT_ADDRESS_MODE=subaddress, ``POST /pay`` shows a fresh subaddress of the wallet
instead (``monero.subaddresses``: exchanges and batching wallets can pay it, and no
customer sees the operator's primary address); the receipt is still the only secret, and
the allocation row holds only the receipt's PID. A refused allocation (the cap, the global
rate, the wallet down) is a 503 page and stores nothing.

In the integrated mode ``POST /pay`` stores nothing: the service first hears of the PID when the wallet reports
a payment, and of the receipt when the customer claims. ``/pay/status`` only reads
(``Ledger.peek``), so checking never claims; ``/pay/redeem`` claims through the very
ledger call ``/api/v1/redeem`` uses, counted in the same metrics. A payment ID or an
address typed in instead (a payment made before receipts) follows REDEEM_PLAIN_PIDS like
the API: under ``refuse`` it shows a receipt payment as not seen, as for an unknown PID.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiohttp import web

from anonticket.domain.address import AddressError, decode_address
from anonticket.domain.amount import format_xmr
from anonticket.api import pages
from anonticket.api.access import log_in_form
from anonticket.api.forms import BadForm, read_form
from anonticket.api.pages import Markup
from anonticket.api.request import STATE
from anonticket.domain.ids import PaymentId, Receipt
from anonticket.domain.errors import InvalidPid, InvalidReceipt, Underpaid, Unavailable
from anonticket.ledger.views import Claimed, Ledger
from anonticket.domain.payment_request import PaymentRequest, new_payment_request, payment_request
from anonticket.monero.subaddresses import AllocationRefused
from anonticket.runtime.state import State

# one block every two minutes on average (DIFFICULTY_TARGET_V2 = 120 s)
MINUTES_PER_BLOCK = 2
_MAX_FIELDS = 4
# "receipt" on every form these pages render; "pid" on those rendered before receipts (a
# customer's open payment page across an upgrade) and for a payment ID typed in
_CLAIM_FORM, _OFFER_FORM = frozenset({"receipt", "pid"}), frozenset({"offer"})


@dataclass(frozen=True, slots=True)
class PricedOffer:
    key: str
    label: str
    piconero: int | None  # None: any amount (no minimum declared)


def priced_offers(state: State) -> list[PricedOffer]:
    """CHECKOUT_OFFERS with their prices; none declared: one at the minimum payment."""
    config = state.config
    out = []
    for offer in config.checkout_offers:
        price = config.offer_price(offer)
        if offer.days is not None:
            what = "1 day" if offer.days == 1 else f"{offer.days} days"
            label = f"{what} of access: {format_xmr(price)} XMR"
        else:
            label = f"{format_xmr(price)} XMR of credit"
        out.append(PricedOffer(offer.key, label, price))
    if not out:
        minimum = config.monitor_min_payment_amount
        if minimum:
            out.append(PricedOffer(str(minimum), f"Access: {format_xmr(minimum)} XMR", minimum))
        else:
            out.append(PricedOffer("any", "Access: any amount you choose", None))
    return out


# ---------------------------------------------------------------------- what a PID's state is
@dataclass(frozen=True, slots=True)
class PaymentState:
    kind: str  # "unseen" | "pending" | "underpaid" | "provisional" | "confirmed" | "redeemed"
    balance: int = 0
    confirmations: int = 0
    required: int = 0
    minimum: int = 0


async def read_payment_state(ledger: Ledger, claim: PaymentId | Receipt) -> PaymentState:
    """What a redeem would find, without claiming: the order is redeem's own (a claimable
    total wins over a pending top-up; pending over an underpaid total)."""
    row, pending = await ledger.peek(claim)
    if row is not None and row.status == 1:
        return PaymentState("redeemed", balance=row.amount)
    if row is not None and row.amount >= ledger.min_payment:
        raw = claim.raw if isinstance(claim, PaymentId) else claim.pid_raw
        if pending is not None and await ledger.storage.pid_is_provisional(raw):
            # credited from the pool (docs/operations.md#provisional-credit): ready now
            return PaymentState("provisional", balance=row.amount, confirmations=pending,
                                required=ledger.min_confirmations)
        return PaymentState("confirmed", balance=row.amount)
    if pending is not None:
        return PaymentState("pending", balance=row.amount if row else 0, confirmations=pending,
                            required=ledger.min_confirmations)
    if row is not None:
        return PaymentState("underpaid", balance=row.amount, minimum=ledger.min_payment)
    return PaymentState("unseen")


# ---------------------------------------------------------------------- form input
def parse_pid_field(text: str | None, merchant: str | None, accept_long: bool) -> PaymentId:
    """A pasted PID, or an integrated address of this shop (what a wallet's history
    shows); surrounding blanks are forgiven, anything else is InvalidPid."""
    if text is None:
        raise InvalidPid()
    text = text.strip()
    if len(text) > 64 and merchant is not None:
        try:
            decoded = decode_address(text)
        except AddressError:
            raise InvalidPid() from None
        if decoded.payment_id is None or decoded.standard_address() != merchant:
            raise InvalidPid()
        text = decoded.payment_id.hex()
    return PaymentId.parse(text, accept_long=accept_long)


def parse_claim_field(form: dict[str, str], merchant: str | None, accept_long: bool
                      ) -> PaymentId | Receipt:
    """The ``receipt`` field (a receipt as the payment page shows it, or for a payment made
    before receipts its PID or integrated address) or an older page's ``pid`` field; one of
    them. Surrounding blanks are forgiven; anything else is InvalidReceipt or InvalidPid."""
    receipt, pid = form.get("receipt"), form.get("pid")
    if receipt is None:
        return parse_pid_field(pid, merchant, accept_long)
    if pid is not None:
        raise InvalidReceipt()
    text = receipt.strip()
    try:
        return Receipt.parse(text)
    except InvalidReceipt:
        pass
    try:
        return parse_pid_field(text, merchant, accept_long)
    except InvalidPid:
        raise InvalidReceipt() from None


async def _claim_from_form(request: web.Request, state: State) -> PaymentId | Receipt:
    form = await read_form(request, _CLAIM_FORM, _MAX_FIELDS)
    return parse_claim_field(form, state.merchant.address, state.config.api_accept_long_pids)


def claim_field(claim: PaymentId | Receipt) -> tuple[str, str]:
    """The hidden form field the next page's buttons send the claim back in."""
    if isinstance(claim, Receipt):
        return "receipt", claim.hex()
    return "pid", claim.hex()


# ---------------------------------------------------------------------- rendering helpers
def _pay_to(wanted: PaymentRequest) -> Markup:
    """QR, wallet link and copy fields. Makes the QR: call it off the event loop."""
    qr = wanted.qr()
    # the image's size is given, so the page does not move when it is drawn
    return pages.pay_to_body(qr=qr.data_uri, qr_size=qr.pixels, uri=wanted.uri,
                             address=wanted.integrated_address,
                             amount=wanted.amount_xmr or "any amount")


def _bad_claim() -> web.Response:
    return pages.page("Not a receipt", pages.bad_claim_body(), status=400)


def _remaining(confirmations: int, required: int) -> str:
    blocks = max(required - confirmations, 0)
    if blocks == 0:
        return "Confirmed; it counts at the next check, within a minute."
    minutes = blocks * MINUTES_PER_BLOCK
    return (f"{blocks} more block{'s' if blocks != 1 else ''} to go: about {minutes} minutes "
            f"(a block every {MINUTES_PER_BLOCK} minutes on average).")


async def state_page(state: State, claim: PaymentId | Receipt, found: PaymentState
                     ) -> web.Response:
    # only the underpaid page draws a QR (the rest to pay): that one off the event loop
    if found.kind == "underpaid":
        subaddress = None
        if isinstance(claim, Receipt):  # a subaddress checkout: the rest goes to the same one
            subaddress = await state.ledger.storage.subaddress_of(claim.pid.raw)
        return await asyncio.to_thread(render_state, state, claim, found, subaddress)
    return render_state(state, claim, found)


def render_state(state: State, claim: PaymentId | Receipt, found: PaymentState,
                 subaddress: str | None = None) -> web.Response:
    shown = claim_field(claim)
    pid = claim.pid if isinstance(claim, Receipt) else claim
    if found.kind == "redeemed":
        return pages.page("Already redeemed", pages.redeemed_body(shown))
    if found.kind == "confirmed":
        return pages.page("Payment confirmed", pages.confirmed_body(
            shown, balance=format_xmr(found.balance)))
    if found.kind == "provisional":
        return pages.page("Access ready", pages.provisional_body(
            shown, balance=format_xmr(found.balance), required=found.required,
            remaining=_remaining(found.confirmations, found.required)))
    if found.kind == "pending":
        return pages.page("Payment seen, waiting for confirmations", pages.pending_body(
            shown, confirmations=found.confirmations, required=found.required,
            remaining=_remaining(found.confirmations, found.required)))
    if found.kind == "underpaid":
        missing = found.minimum - found.balance
        merchant = state.merchant.address
        if subaddress is not None:
            pay_to: Markup | None = _pay_to(PaymentRequest(pid, subaddress, missing))
        else:
            pay_to = (_pay_to(payment_request(merchant, pid, missing))
                      if merchant is not None and pid.is_short else None)
        return pages.page("Payment incomplete", pages.underpaid_body(
            shown, balance=format_xmr(found.balance), minimum=format_xmr(found.minimum),
            missing=format_xmr(missing), pay_to=pay_to))
    return pages.page("Payment not seen yet", pages.unseen_body(shown))


# ---------------------------------------------------------------------- handlers
async def shop(request: web.Request) -> web.Response:
    offers = priced_offers(request.app[STATE])
    return pages.page("Buy access", pages.shop_body([(o.key, o.label) for o in offers]))


async def create_payment(request: web.Request) -> web.Response:
    state = request.app[STATE]
    form = await read_form(request, _OFFER_FORM, _MAX_FIELDS)
    chosen = [o for o in priced_offers(state) if o.key == form.get("offer")]
    if not chosen:
        return pages.page("Offer not available", Markup(
            "<p>That offer is not (or no longer) on sale.</p><p><a href=\"/pay\">See the offers"
            "</a></p>"), status=404)
    if state.subaddresses is not None:
        made_or_refusal = await _new_subaddress_payment(state, chosen[0].piconero)
        if isinstance(made_or_refusal, web.Response):
            return made_or_refusal
        receipt, made, pay_to = made_or_refusal
    else:
        merchant = state.merchant.address
        if merchant is None:
            return _unavailable()
        # ~10 ms of pure Python (QR masks): off the event loop, so redeems keep their latency
        receipt, made, pay_to = await asyncio.to_thread(_new_payment, merchant,
                                                        chosen[0].piconero)
    config = state.config
    body = pages.payment_body(
        pay_to=pay_to, receipt=receipt.grouped(), field=claim_field(receipt),
        confirmations=config.monitor_min_confirmations,
        minutes=config.monitor_min_confirmations * MINUTES_PER_BLOCK)
    amount = made.amount_xmr
    return pages.page(f"Pay {amount} XMR" if amount else "Pay any amount", body)


def _unavailable() -> web.Response:
    return pages.page("Checkout unavailable", Markup(
        "<p>Payments cannot be created right now. Please try again later.</p>"), status=503)


# seconds a refused subaddress checkout is told to wait (Retry-After)
_RETRY_AFTER_SECS = {"rate_limited": 5, "capped": 300}


async def _new_subaddress_payment(state: State, piconero: int | None
                                  ) -> tuple[Receipt, PaymentRequest, Markup] | web.Response:
    """A receipt, a fresh subaddress recorded against its PID, and what to show; or the
    503 page when the allocation is refused (nothing stored then)."""
    assert state.subaddresses is not None
    counters = state.metrics.subaddress_allocations
    receipt = Receipt.generate()
    try:
        address = await state.subaddresses.allocate(receipt.pid)
    except AllocationRefused as exc:
        counters[exc.reason].inc()
        if exc.reason not in _RETRY_AFTER_SECS:
            return _unavailable()
        response = pages.page("Checkout busy", Markup(
            "<p>Too many payments are being created right now. Please try again in a few "
            "minutes.</p>"), status=503)
        response.headers["Retry-After"] = str(_RETRY_AFTER_SECS[exc.reason])
        return response
    counters["allocated"].inc()
    made = PaymentRequest(receipt.pid, address, piconero)
    return receipt, made, await asyncio.to_thread(_pay_to, made)


def _new_payment(merchant: str, piconero: int | None) -> tuple[Receipt, PaymentRequest, Markup]:
    receipt, made = new_payment_request(merchant, piconero)
    return receipt, made, _pay_to(made)


async def payment_status(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        claim = await _claim_from_form(request, state)
    except (InvalidPid, InvalidReceipt):
        return _bad_claim()
    return await state_page(state, claim, await read_payment_state(state.ledger, claim))


async def redeem(request: web.Request) -> web.Response:
    state = request.app[STATE]
    counters = state.metrics.redeem
    try:
        claim = await _claim_from_form(request, state)
    except (InvalidPid, InvalidReceipt):
        counters["invalid"].inc()
        return _bad_claim()
    except BadForm:
        counters["invalid"].inc()
        raise
    try:
        result = await state.ledger.redeem_or_none(claim)
    except Underpaid as exc:
        counters["underpaid"].inc()
        found = PaymentState("underpaid", balance=exc.extra["balance"], minimum=exc.extra["minimum"])
        return await state_page(state, claim, found)
    except Unavailable:
        counters["unavailable"].inc()
        raise
    if result is None:
        counters["not_found"].inc()
        return await state_page(state, claim, PaymentState("unseen"))
    if not isinstance(result, Claimed):
        counters["pending"].inc()
        return await state_page(state, claim, PaymentState(
            "pending", confirmations=result.confirmations, required=result.required))
    counters[result.status].inc()
    return pages.page("Your access token", pages.token_body(
        token=result.token.hex(), balance=format_xmr(result.balance),
        login=access_login_form(result.token.hex())))


def access_login_form(token_hex: str) -> Markup | None:
    """The token page's "use it in this browser" button: a form that POSTs the token to the
    gateway's access page (``/access``), which sets the access cookie the proxy's check
    reads. The token travels in the body, never the URL; nothing happens unless clicked."""
    return log_in_form(token_hex)


async def back_to_shop(request: web.Request) -> web.Response:
    """GET on a POST-only page (a bookmark, a reload after the browser forgot the form):
    back to the start, with nothing in the Location."""
    return pages.see_other("/pay")


def add_checkout_routes(app: web.Application) -> None:
    pages.serve_pages_under(app, "/pay")
    app.router.add_get("/pay", shop, allow_head=False)
    app.router.add_post("/pay", create_payment)
    app.router.add_post("/pay/status", payment_status)
    app.router.add_get("/pay/status", back_to_shop, allow_head=False)
    app.router.add_post("/pay/redeem", redeem)
    app.router.add_get("/pay/redeem", back_to_shop, allow_head=False)
