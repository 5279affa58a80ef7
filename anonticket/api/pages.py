"""Server-rendered HTML pages: escaped templates and the one helper that sets their headers.

The pages must work in Tor Browser at "Safest": no script, no SVG, no remote font, so
they are plain HTML forms styled by one inline ``<style>`` that the Content-Security-
Policy allows by its hash (``default-src 'none'`` forbids everything else). Every value
reaches the HTML through ``render``, which escapes it unless it is ``Markup`` made by
this module; no template decides anything — handlers pass finished texts.

``serve_pages_under(app, prefix)`` makes every answer under a prefix a page: the
security headers on all of them, and aiohttp's own 404/405/413 and every other error
rendered as an HTML page with a fixed text instead of the API's JSON error.
"""

from __future__ import annotations

import base64
import hashlib
import html
import logging
from collections.abc import Awaitable, Callable, Iterable
from functools import cache

from aiohttp import web

from anonticket.api.errors import route_template
from anonticket.domain.errors import ServiceError

log = logging.getLogger("anonticket.api")

PAGE_PREFIXES = web.AppKey("page_prefixes", list)

# System fonts only (Safest blocks downloadable ones); the QR box stays white in dark
# mode, because phone scanners expect dark modules on a light ground.
STYLE = """\
:root{color-scheme:light dark;--bg:#fff;--fg:#1b1b1b;--muted:#4d4d4d;--line:#6b6b6b;\
--accent:#0a4fbf;--on-accent:#fff;--field:#f4f4f4;--warn-bg:#fff3c4;--warn-fg:#3b2c00;\
--ok-bg:#e3f4e6;--ok-fg:#0f3d1a}
@media (prefers-color-scheme:dark){:root{--bg:#131313;--fg:#ededed;--muted:#c8c8c8;\
--line:#a0a0a0;--accent:#9cc0ff;--on-accent:#0b1a33;--field:#222;--warn-bg:#3b2c00;\
--warn-fg:#ffe7a0;--ok-bg:#0f3d1a;--ok-fg:#c9f2d2}}
*{box-sizing:border-box}
html{background:var(--bg);color:var(--fg);\
font:1rem/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans","DejaVu Sans",sans-serif}
body{margin:0 auto;max-width:40rem;padding:1rem}
h1{font-size:1.5rem;line-height:1.25;margin:.5rem 0 1rem}
h2{font-size:1.15rem;margin:1.75rem 0 .5rem}
a{color:var(--accent)}
p,ol{margin:.75rem 0}
.note{border-left:.3rem solid currentColor;padding:.6rem .9rem;margin:1rem 0}
.warn{background:var(--warn-bg);color:var(--warn-fg)}
.ok{background:var(--ok-bg);color:var(--ok-fg)}
.muted{color:var(--muted)}
label,legend{display:block;font-weight:600;margin:1rem 0 .25rem}
.copy,.entry{display:block;width:100%;margin:0;padding:.5rem;border:1px solid var(--line);\
border-radius:.25rem;background:var(--field);color:var(--fg);\
font:1rem/1.4 ui-monospace,"DejaVu Sans Mono","Liberation Mono",monospace;word-break:break-all}
.copy{user-select:all;-webkit-user-select:all;resize:none}
fieldset{border:1px solid var(--line);border-radius:.25rem;margin:1rem 0;padding:.25rem 1rem .75rem}
.choice{display:flex;gap:.6rem;align-items:baseline;font-weight:400;margin:.6rem 0}
button,.button{display:inline-block;margin:.75rem 0;padding:.6rem 1.1rem;border:0;\
border-radius:.25rem;background:var(--accent);color:var(--on-accent);font:inherit;\
font-weight:600;text-decoration:none;cursor:pointer}
.qr{background:#fff;padding:.5rem;margin:1rem 0;width:max-content;max-width:100%}
.qr img{display:block;max-width:100%;height:auto;image-rendering:pixelated}
progress{display:block;width:100%;height:1.25rem}
footer{margin-top:2rem;padding-top:.5rem;border-top:1px solid var(--line)}
"""

_LAYOUT = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<meta name="robots" content="noindex, nofollow">
<title>{title}</title>
<link rel="icon" href="data:,">
<style>{style}</style>
</head>
<body>
<main>
<h1>{title}</h1>
{body}
</main>
<footer><a href="{home}">{home_label}</a></footer>
</body>
</html>
"""


class Markup(str):
    """Text that is already HTML: made only by ``render``, ``join`` and ``escape``."""

    __slots__ = ()


def escape(value: object) -> Markup:
    if isinstance(value, Markup):
        return value
    return Markup(html.escape(str(value), quote=True))


def render(template: str, **values: object) -> Markup:
    """``template`` with every ``{name}`` replaced by its value, escaped."""
    return Markup(template.format_map({name: escape(value) for name, value in values.items()}))


def join(parts: Iterable[Markup | None]) -> Markup:
    return Markup("\n".join(part for part in parts if part))


@cache
def style_source_hash() -> str:
    """The CSP source that allows exactly ``STYLE`` and no other inline style."""
    digest = hashlib.sha256(STYLE.encode()).digest()
    return f"'sha256-{base64.b64encode(digest).decode()}'"


@cache
def security_headers() -> dict[str, str]:
    """On every page answer: nothing loads but the page itself, its inline style and
    ``data:`` images; it cannot be framed, cached, sniffed or leak its URL onwards."""
    return {
        "Content-Security-Policy": (
            f"default-src 'none'; img-src data:; style-src {style_source_hash()}; "
            "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
    }


def page(title: str, body: Markup, *, status: int = 200, home: str = "/pay",
         home_label: str = "Buy access") -> web.Response:
    """A whole HTML page with the security headers."""
    text = render(_LAYOUT, title=title, style=Markup(STYLE), body=body, home=home,
                  home_label=home_label)
    response = web.Response(status=status, text=text, content_type="text/html", charset="utf-8")
    response.headers.update(security_headers())
    return response


def see_other(location: str) -> web.Response:
    """303 to a fixed path of ours (never one carrying data), with the page headers."""
    response = web.Response(status=303, headers={"Location": location})
    response.headers.update(security_headers())
    return response


# ---------------------------------------------------------------------- errors
_ERRORS = {
    400: ("Request not understood", "The form sent something this page does not accept."),
    404: ("Page not found", "There is no page at this address."),
    405: ("Not possible here", "This page cannot be used this way. Start again from the link below."),
    408: ("Too slow", "The form did not arrive in time. Please send it again."),
    413: ("Too much data", "The form sent more data than this page accepts."),
    503: ("Busy, please retry", "The service cannot answer right now. Please try again in a minute."),
}
_INTERNAL = ("Something went wrong", "The service could not answer. Please try again later.")


def error_page(status: int, *, headers: dict[str, str] | None = None) -> web.Response:
    title, text = _ERRORS.get(status, _INTERNAL)
    response = page(title, render("<p>{text}</p>", text=text), status=status)
    if headers:
        response.headers.update(headers)
    return response


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _is_page(request: web.Request) -> bool:
    path = request.path
    return any(path == prefix or path.startswith(prefix + "/")
               for prefix in request.app[PAGE_PREFIXES])


@web.middleware
async def _page_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not _is_page(request):
        return await handler(request)
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return error_page(exc.status if exc.status >= 400 else 500, headers=headers)
    except ServiceError as exc:  # fixed texts only: never the error's own message
        return error_page(exc.status, headers=exc.headers or None)
    except ConnectionResetError:
        raise
    except Exception:
        # the request's path and body are never logged: the body holds a PID
        log.exception("unhandled error on %s %s", request.method, route_template(request))
        return error_page(500)
    response.headers.update(security_headers())
    return response


def serve_pages_under(app: web.Application, prefix: str) -> None:
    """Every answer at ``prefix`` or below it is a page (see the module docstring).

    Runs inside the API's error middleware, which still bounds and times the request.
    """
    prefixes = app.get(PAGE_PREFIXES)
    if prefixes is None:
        prefixes = app[PAGE_PREFIXES] = []
        app.middlewares.append(_page_middleware)
    prefixes.append(prefix)


# ---------------------------------------------------------------------- checkout
# Texts are finished by the handlers (amounts formatted, counts counted); these only
# place and escape them.
_OFFER = """<label class="choice"><input type="radio" name="offer" value="{key}"{checked}> {label}</label>"""

_SHOP = """<p>Pay with Monero, get an access token. No account, no e-mail, nothing about you is
kept: the receipt you get on the next page is the only proof of your payment.</p>
<form method="post" action="/pay">
<fieldset>
<legend>What would you like to buy?</legend>
{offers}
</fieldset>
<button type="submit">Create payment</button>
</form>
<h2>Already paid?</h2>
<form method="post" action="/pay/status">
<label for="check-receipt">Your receipt</label>
<input id="check-receipt" class="entry" type="text" name="receipt" required maxlength="120"
 autocomplete="off" autocapitalize="none" spellcheck="false" aria-describedby="check-hint">
<p id="check-hint" class="muted">Paid before this shop gave receipts? Enter that payment's
payment ID, or the address you paid, instead.</p>
<button type="submit">Check payment</button>
</form>"""

_RECEIPT_WARNING = """<p class="note warn"><strong>This is your receipt. Keep it secret: whoever has
it can claim the access.</strong> It is the only proof that you paid. The address below no
longer claims anything: your wallet's history, the exchange you pay from or a screenshot of the
address cannot take your access. Write the receipt down (or keep this window open) before you
pay; this page is not stored anywhere and cannot be shown again.</p>"""

_PAY_TO = """<div class="qr"><img src="{qr}" width="{qr_size}" height="{qr_size}"
 alt="QR code of the payment: scan it with a Monero wallet"></div>
<p><a class="button" href="{uri}">Open in my wallet</a></p>
<p class="muted">If the button does nothing (Tor Browser opens no wallet), copy the
address and the amount into your wallet instead.</p>
<label for="address">Address to pay</label>
<textarea id="address" class="copy" rows="4" readonly spellcheck="false">{address}</textarea>
<label for="amount">Amount (XMR)</label>
<input id="amount" class="copy" type="text" readonly value="{amount}">"""

_PAYMENT = """{warning}
<label for="receipt">Your receipt</label>
<textarea id="receipt" class="copy" rows="2" readonly spellcheck="false">{receipt}</textarea>
<h2>Pay</h2>
{pay_to}
<h2>Then</h2>
<ol>
<li>Send exactly the amount to the address above, from any Monero wallet.</li>
<li>Wait for {confirmations} confirmations, about {minutes} minutes.</li>
<li>Check the payment and get your access token:</li>
</ol>
{check}"""

# the claim travels back in a hidden field: ("receipt" | "pid", its value)
_CHECK = """<form method="post" action="/pay/status">
<input type="hidden" name="{field}" value="{value}">
<button type="submit">{label}</button>
</form>"""

_REDEEM = """<form method="post" action="/pay/redeem">
<input type="hidden" name="{field}" value="{value}">
<button type="submit">{label}</button>
</form>"""

# one text whether a receipt or a payment ID was entered, and whether nothing was paid or a
# payment ID does not reach this payment (REDEEM_PLAIN_PIDS=refuse): the page tells nothing
_UNSEEN = """<p>No payment for this receipt has reached the operator's wallet yet.</p>
<p>A payment shows here within a minute or two of being sent. If you paid a while ago,
check that you entered the receipt shown on the payment page and paid the address shown with
it (a plain address claims nothing). A payment ID or an address works only for a payment
made before this shop gave receipts.</p>
{check}"""

_PENDING = """<p class="note ok">Your payment has been seen. It is safe now; it only needs
confirmations.</p>
<label for="progress">{confirmations} of {required} confirmations</label>
<progress id="progress" max="{required}" value="{confirmations}">{confirmations} of {required}</progress>
<p>{remaining}</p>
{check}"""

_UNDERPAID = """<p class="note warn">Received {balance} XMR, but the minimum is {minimum} XMR:
<strong>{missing} XMR missing</strong>. Pay the rest to the same address; payments to the
same address add up.</p>
{pay_to}
{check}"""

_CONFIRMED = """<p class="note ok">Your payment of {balance} XMR is confirmed.</p>
{redeem}"""

_REDEEMED = """<p>This payment was already exchanged for an access token. You can show the
same token again; payments made later to the same address top it up.</p>
{redeem}"""

_TOKEN = """<p class="note warn"><strong>This token is your access. Keep it secret.</strong>
Whoever has it can use it. Store it now (a password manager is a good place): this page is
not stored anywhere.</p>
<label for="token">Access token</label>
<textarea id="token" class="copy" rows="2" readonly spellcheck="false">{token}</textarea>
<p>Paid: {balance} XMR.</p>
<h2>What to do with it</h2>
<p>Give the token to the service you bought access to, where it asks for one. Payments
made later to the same address top this token up. Your receipt shows this token again at
any time.</p>
{login}"""

_BAD_CLAIM = """<p>That is not a receipt. A receipt is 64 characters, 0-9 and a-f, as shown
on the payment page (with or without the dashes between its groups of eight). For a payment
made before this shop gave receipts, its 16-character payment ID or the address you paid
works too.</p>
<p><a href="/pay">Try again</a></p>"""


def shop_body(offers: list[tuple[str, str]]) -> Markup:
    """``offers``: (key, label) pairs; the first is preselected."""
    items = [render(_OFFER, key=key, label=label, checked=Markup(" checked" if i == 0 else ""))
             for i, (key, label) in enumerate(offers)]
    return render(_SHOP, offers=join(items))


def pay_to_body(*, qr: str, qr_size: int, uri: str, address: str, amount: str) -> Markup:
    return render(_PAY_TO, qr=qr, qr_size=qr_size, uri=uri, address=address, amount=amount)


Field = tuple[str, str]  # the hidden field a claim travels back in: (name, value)


def check_form(field: Field, label: str = "Check the payment") -> Markup:
    return render(_CHECK, field=field[0], value=field[1], label=label)


def redeem_form(field: Field, label: str) -> Markup:
    return render(_REDEEM, field=field[0], value=field[1], label=label)


def payment_body(*, pay_to: Markup, receipt: str, field: Field, confirmations: int,
                 minutes: int) -> Markup:
    return render(_PAYMENT, warning=Markup(_RECEIPT_WARNING), pay_to=pay_to, receipt=receipt,
                  confirmations=confirmations, minutes=minutes,
                  check=check_form(field, "I have paid: check the payment"))


def unseen_body(field: Field) -> Markup:
    return render(_UNSEEN, check=check_form(field, "Check again"))


def pending_body(field: Field, *, confirmations: int, required: int, remaining: str) -> Markup:
    return render(_PENDING, confirmations=confirmations, required=required, remaining=remaining,
                  check=check_form(field, "Check again"))


def underpaid_body(field: Field, *, balance: str, minimum: str, missing: str,
                   pay_to: Markup | None) -> Markup:
    return render(_UNDERPAID, balance=balance, minimum=minimum, missing=missing,
                  pay_to=pay_to or Markup(""), check=check_form(field, "Check again"))


def confirmed_body(field: Field, *, balance: str) -> Markup:
    return render(_CONFIRMED, balance=balance, redeem=redeem_form(field, "Get my access"))


def redeemed_body(field: Field) -> Markup:
    return render(_REDEEMED, redeem=redeem_form(field, "Show my token again"))


def token_body(*, token: str, balance: str, login: Markup | None) -> Markup:
    return render(_TOKEN, token=token, balance=balance, login=login or Markup(""))


def bad_claim_body() -> Markup:
    return Markup(_BAD_CLAIM)
