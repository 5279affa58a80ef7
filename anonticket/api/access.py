"""The access page: a browser gives its token once and gets the cookie the gateway reads.

``GET /access`` is a form (paste the token), ``POST /access`` checks the token, sets the
access cookie and sends the browser on (303) to where the proxy's 401/403 page came
from; ``POST /access/logout`` clears the cookie. No script anywhere: plain forms, the
pages module's template and security headers.

The cookie (named by ``ACCESS_COOKIE_NAME``) is ``HttpOnly`` (no script can read the
bearer secret), ``SameSite=Strict`` (no other site's page can make the browser send it),
``Path=/`` and host-only (no ``Domain``: it goes to this host only). ``Secure`` follows
``ACCESS_COOKIE_SECURE``: with ``auto`` it is set when the proxy says the request came
over HTTPS (``X-Forwarded-Proto: https``, set by the shipped configs) and left off over a
plain-HTTP onion service, where Tor already encrypts end to end and browsers other than
Tor Browser (one behind Orbot, say) would refuse to send a Secure cookie over http.
A Secure cookie is named ``__Host-<name>``, which no sibling subdomain can set
(access_cookie.py).

With ``ACCESS_COOKIE_CREDENTIAL=true`` the access cookie holds a credential (it expires
after ``CREDENTIAL_TTL_SECS``, and the gateway then checks it without storage), and the
token goes into a second cookie that only ``/access`` receives (``Path=/access``, see
access_cookie.py). When the gateway finds the credential expired, the browser comes to
``/access`` (nginx, Caddy), and the page renews it from that cookie and sends the browser on,
with no form: but only when the browser's credential is one of ours, expired, and for the
very token in the refresh cookie (a planted refresh cookie names another subject, and gets
the form). A revoked or expired token gets the form with the reason, and loses the cookie.

Where to go on is a relative path only (``/…``, never ``//host`` or a scheme): an open
redirect would let anyone's link send a customer elsewhere straight after they logged in.
The proxy passes it as the last query parameter, verbatim (``/access?next=$request_uri``),
so a ``next`` that has its own query string arrives whole, without escaping in nginx.
The form POSTs are refused when the browser says they came from another site: a forged
login would set the attacker's token in the victim's browser, and whatever the victim
then did upstream would be kept under the attacker's subject (a forged log-out only
annoys). Browsers say it in ``Sec-Fetch-Site`` (cross-site or same-site: refused) and,
older ones and plain-HTTP pages included, in ``Origin``: refused when it is ``null`` (a
sandboxed frame, a ``data:`` page, some redirects) or names another host, or another
scheme than the one the proxy names in ``X-Forwarded-Proto``. The port is not compared:
cookies do not keep ports apart either, and nginx's ``$host`` drops it. A POST with
neither header (curl, a browser too old for both) is taken as it is.
"""

from __future__ import annotations


from urllib.parse import unquote, urlsplit

from aiohttp import web

from anonticket.api import pages
from anonticket.api.access_cookie import AccessCookie
from anonticket.api.forms import read_form
from anonticket.api.gateway import hex_token
from anonticket.api.pages import Markup
from anonticket.api.request import STATE
from anonticket.domain.ids import ServiceToken, token_subject
from anonticket.runtime.state import State
from anonticket.storage import TokenRow

ACCESS_PATH = "/access"
LOGOUT_PATH = "/access/logout"
MAX_NEXT_CHARS = 2048
_MAX_FIELDS = 3
# what the proxy's 403 page names, and what the access page then says about it
_REASONS = {
    "token_revoked": "This access token has been revoked: it no longer opens this service.",
    "token_expired": "The time this access token bought has run out.",
    "insufficient_balance": "This access token's balance is too low for that page.",
    "token_not_found": "The access token this browser sent is not known here.",
    "invalid_token": "This browser sent something that is not an access token.",
    "invalid_credential": "This browser's access pass is not valid here any more.",
    "credential_expired": "This browser's access pass has expired.",
    "credential_revoked": "This access token has been revoked: it no longer opens this service.",
    "token_required": "That part of the site is paid per request: it takes the access token "
                      "itself (in an Authorization header), which this browser does not send "
                      "there.",
}
_CROSS_SITE = frozenset({"cross-site", "same-site"})


def safe_next(text: str | None) -> str | None:
    """``text`` if it is a path on this site to send a browser to, else None.

    Visible ASCII only: browsers drop tabs and newlines from URLs (``/\\t/evil`` becomes
    ``//evil``) and read a backslash as a slash, so either could turn a path into a host.
    """
    if (not text or len(text) > MAX_NEXT_CHARS or text[0] != "/" or text[1:2] in ("/", "\\")
            or "\\" in text or not all("!" <= c <= "~" for c in text)):
        return None
    return text


def next_from_query(raw_query: str) -> str | None:
    """``next`` is everything after the first ``next=`` parameter, taken verbatim. Without
    one, a ``url`` parameter (what Traefik's errors middleware sends: the refused request's
    whole URL, escaped) gives its path and query; never its host, so it cannot lead away."""
    if raw_query.startswith("next="):
        value = raw_query[5:]
    elif "&next=" in raw_query:
        value = raw_query.split("&next=", 1)[1]
    else:
        for part in raw_query.split("&"):
            if part.startswith("url="):
                try:
                    target = urlsplit(unquote(part[4:]))
                except ValueError:
                    return None
                value = target.path + (f"?{target.query}" if target.query else "")
                break
        else:
            return None
    return safe_next(value)


def reason_from_query(raw_query: str) -> str | None:
    """A known ``reason`` before ``next``; the reasons need no decoding ([a-z_])."""
    head = raw_query if raw_query.startswith("next=") else raw_query.split("&next=", 1)[0]
    for part in head.split("&"):
        if part.startswith("reason=") and part[7:] in _REASONS:
            return part[7:]
    return None


def cookie_header(name: str, value: str, max_age: int | None, secure: bool,
                  path: str = "/") -> str:
    parts = [f"{name}={value}", f"Path={path}", "HttpOnly", "SameSite=Strict"]
    if max_age is not None:
        parts.append(f"Max-Age={max_age}")
    if secure:
        parts.append("Secure")
    return "; ".join(parts)


def set_access_cookie(response: web.Response, state: State, request: web.Request,
                      value: str, max_age: int | None) -> None:
    """Set (or with ``max_age`` 0 clear) the access cookie under this request's name.

    Over HTTPS that is the ``__Host-`` name, and a plain copy is expired alongside: one
    left from before, or planted by a sibling, would otherwise stay in the browser.
    """
    cookie = AccessCookie.from_config(state.config)
    secure = cookie.is_secure(request.headers.get("X-Forwarded-Proto"))
    name = cookie.name(secure)
    response.headers.add("Set-Cookie", cookie_header(name, value, max_age, secure))
    if secure and cookie.plain_name is not None and cookie.plain_name != name:
        response.headers.add("Set-Cookie", cookie_header(cookie.plain_name, "", 0, secure))


def set_refresh_cookie(response: web.Response, state: State, request: web.Request,
                       value: str, max_age: int | None) -> None:
    """Set (or with ``max_age`` 0 clear) the refresh cookie: the token, for /access only."""
    cookie = AccessCookie.refresh_from_config(state.config)
    secure = cookie.is_secure(request.headers.get("X-Forwarded-Proto"))
    name = cookie.name(secure)
    response.headers.add("Set-Cookie", cookie_header(name, value, max_age, secure, ACCESS_PATH))
    if secure and cookie.plain_name is not None and cookie.plain_name != name:
        response.headers.add("Set-Cookie",
                             cookie_header(cookie.plain_name, "", 0, secure, ACCESS_PATH))


def _one_cookie(request: web.Request, cookie: AccessCookie) -> str | None:
    """The one value of ``cookie`` this request carries (the secure name's over HTTPS), or
    None when it carries none or more than one, as the gateway check reads it."""
    secure, plain = cookie.copies(request.headers.getall("Cookie", ()))
    if len(secure) > 1 or len(plain) > 1:
        return None
    if secure:
        return secure[0].strip(" \t")
    if plain and not cookie.is_secure(request.headers.get("X-Forwarded-Proto")):
        return plain[0].strip(" \t")
    return None


def grant(response: web.Response, state: State, request: web.Request, record: TokenRow) -> None:
    """Log this browser in with ``record``'s token: the access cookie holds the token, or
    (``ACCESS_COOKIE_CREDENTIAL``) a credential, with the token in the refresh cookie."""
    max_age = state.config.access_cookie_max_age_secs or None
    credentials = state.ledger.credentials
    if state.config.access_cookie_credential and credentials is not None:
        issued = credentials.issue(record)
        set_access_cookie(response, state, request, issued.credential, max_age)
        set_refresh_cookie(response, state, request, record.token.hex(), max_age)
    else:
        set_access_cookie(response, state, request, record.token.hex(), max_age)


async def renewed(request: web.Request, state: State, next_path: str | None
                  ) -> web.Response | str | None:
    """``GET /access`` in credential mode: a response that renews this browser's expired
    credential and sends it on; a refusal reason (the token's, for the form's note, and the
    refresh cookie is gone); or None (nothing to renew: the form as usual)."""
    credentials = state.ledger.credentials
    if not state.config.access_cookie_credential or credentials is None:
        return None
    refresh = _one_cookie(request, AccessCookie.refresh_from_config(state.config))
    held = _one_cookie(request, AccessCookie.from_config(state.config))
    if refresh is None or held is None:
        return None
    raw = hex_token(refresh)
    signed = credentials.signed_subject(held)
    if type(raw) is str or signed is None or signed[0] != token_subject(raw):  # type: ignore[arg-type]
        return None  # not this browser's own login: the form
    if signed[1] > state.ledger.clock():
        return None  # still valid: whatever the gateway refused, renewing would not help
    record = await state.ledger.find_token(ServiceToken(raw))  # type: ignore[arg-type]
    status = "not_found" if record is None else record.status(state.ledger.clock())
    if record is None or status != "active":
        return {"not_found": "token_not_found", "revoked": "token_revoked"}.get(
            status, "token_expired")
    response = pages.see_other(next_path or "/")
    grant(response, state, request, record)
    return response


def foreign_origin(request: web.Request) -> bool:
    """True when ``Origin`` is ``null`` or names another host than ``Host``, or another
    scheme than the proxy's ``X-Forwarded-Proto``; absent, it proves nothing either way."""
    origin = request.headers.get("Origin")
    if origin is None:
        return False
    try:
        named, target = urlsplit(origin), urlsplit("//" + request.headers.get("Host", ""))
    except ValueError:  # a malformed [IPv6] literal
        return True
    if (named.scheme not in ("http", "https") or not named.hostname or named.path
            or named.query or named.fragment or named.username is not None):
        return True  # "null" and anything that is not scheme://host[:port]
    proto = request.headers.get("X-Forwarded-Proto")
    if proto is not None and proto.lower() != named.scheme:
        return True
    return named.hostname != target.hostname


def cross_site(request: web.Request) -> web.Response | None:
    """A 403 page when the browser says another site sent this form, else None."""
    if request.headers.get("Sec-Fetch-Site") not in _CROSS_SITE and not foreign_origin(request):
        return None
    return pages.page("Not from this site", Markup(_CROSS_SITE_TEXT), status=403,
                      home="/access", home_label="Enter your token here")


# ---------------------------------------------------------------------- templates
_FORM = """{note}
<p>Paste the access token you got for your payment. This browser keeps it in a cookie
for this site only{lifetime}, so the pages you bought open without asking again.</p>
<form method="post" action="/access">
<label for="token">Access token (64 characters, 0-9 and a-f)</label>
<textarea id="token" class="entry" name="token" rows="2" required maxlength="200"
 autocomplete="off" autocapitalize="none" spellcheck="false"></textarea>
<input type="hidden" name="next" value="{next}">
<button type="submit">Continue</button>
</form>
{resume}
<h2>No token yet?</h2>
<p><a href="/pay">Buy access</a>: pay with Monero, no account needed.</p>
<h2>Shared computer?</h2>
<form method="post" action="/access/logout">
<button type="submit">Forget the token in this browser</button>
</form>"""

_RESUME = """<p class="muted">Entered your token in this browser before? Links from other
sites do not carry this site's cookie: <a href="{next}">continue to the page</a>.</p>"""

_NOTE = """<p class="note warn">{text}</p>"""

_LOG_IN_BUTTON = """<form method="post" action="/access">
<input type="hidden" name="token" value="{token}">
<input type="hidden" name="next" value="{next}">
<button type="submit">{label}</button>
</form>"""

_CROSS_SITE_TEXT = """<p>This form was sent from another site, so it was ignored: only this
site's own access page can store or forget your token.</p>"""

_LOGGED_OUT = """<p class="note ok">This browser no longer holds your access token.</p>
<p>Your token still works: <a href="/access">enter it again</a> whenever you like.</p>"""


def form_page(state: State, *, next_path: str | None, note: str | None,
              status: int = 200) -> web.Response:
    lifetime = ("" if state.config.access_cookie_max_age_secs else
                " until you close the browser")
    body = pages.render(
        _FORM, next=next_path or "",
        note=pages.render(_NOTE, text=note) if note else Markup(""),
        lifetime=lifetime,
        resume=pages.render(_RESUME, next=next_path) if next_path else Markup(""))
    return pages.page("Enter your access token", body, status=status)


def log_in_form(token_hex: str, *, next_path: str = "/",
                label: str = "Use this token in this browser") -> Markup:
    """A button that logs this browser in with ``token_hex`` through ``POST /access``:
    for the checkout's token page (its ``access_login_form`` hook). The token travels in
    the form body, as the page the customer is looking at already shows it; never in a URL."""
    return pages.render(_LOG_IN_BUTTON, token=token_hex, next=safe_next(next_path) or "/",
                        label=label)


# ---------------------------------------------------------------------- handlers
async def access_form(request: web.Request) -> web.Response:
    state = request.app[STATE]
    raw_query = request.rel_url.raw_query_string
    reason = reason_from_query(raw_query)
    next_path = next_from_query(raw_query)
    outcome = await renewed(request, state, next_path)
    if isinstance(outcome, web.Response):
        return outcome
    if outcome is not None:  # the refresh cookie's token no longer opens anything
        response = form_page(state, next_path=next_path, note=_REASONS[outcome])
        set_refresh_cookie(response, state, request, "", 0)
        return response
    return form_page(state, next_path=next_path, note=_REASONS[reason] if reason else None)


async def log_in(request: web.Request) -> web.Response:
    if (refused := cross_site(request)) is not None:
        return refused
    state = request.app[STATE]
    form = await read_form(request, frozenset({"token", "next"}), _MAX_FIELDS)
    next_path = safe_next(form.get("next"))
    raw = hex_token(form.get("token", "").strip())
    if type(raw) is str:
        return form_page(state, next_path=next_path, status=400,
                         note="That is not an access token: it is 64 characters, 0-9 and a-f.")
    record = await state.ledger.find_token(ServiceToken(raw))  # type: ignore[arg-type]
    if record is None:
        return form_page(state, next_path=next_path, status=404, note=_REASONS["token_not_found"])
    status = record.status(state.ledger.clock())
    if status != "active":
        return form_page(state, next_path=next_path, status=403,
                         note=_REASONS["token_revoked" if status == "revoked" else "token_expired"])
    response = pages.see_other(next_path or "/")
    grant(response, state, request, record)
    return response


async def log_out(request: web.Request) -> web.Response:
    if (refused := cross_site(request)) is not None:
        return refused
    state = request.app[STATE]
    await read_form(request, frozenset(), _MAX_FIELDS)
    response = pages.page("Token forgotten", Markup(_LOGGED_OUT), home="/access",
                          home_label="Enter a token")
    set_access_cookie(response, state, request, "", 0)
    if state.config.access_cookie_credential:
        set_refresh_cookie(response, state, request, "", 0)
    return response


async def back_to_form(request: web.Request) -> web.Response:
    """GET on the POST-only logout: to the form, carrying nothing."""
    return pages.see_other(ACCESS_PATH)


def add_access_routes(app: web.Application) -> None:
    pages.serve_pages_under(app, ACCESS_PATH)
    app.router.add_get(ACCESS_PATH, access_form, allow_head=False)
    app.router.add_post(ACCESS_PATH, log_in)
    app.router.add_post(LOGOUT_PATH, log_out)
    app.router.add_get(LOGOUT_PATH, back_to_form, allow_head=False)
