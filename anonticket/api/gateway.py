"""The gateway check: the one route a reverse proxy asks before it serves a protected request.

nginx ``auth_request``, Caddy ``forward_auth`` and Traefik ``ForwardAuth`` send the
customer's request headers here (never its body) and serve the upstream on a 2xx. nginx
passes only 401 and 403 on to the client and turns any other status into a 500, so:

- 200: allowed, with the headers the proxy forwards upstream (``X-Anonticket-Subject``,
  ``-Remaining``, ``-Expires-At``, and ``-Provisional: true`` while the token holds credit
  from a payment not yet confirmed: a service may hold back what it will not risk); no
  body, nothing the proxy has to read;
- 401: the customer has no usable token (missing, malformed, unknown), with
  ``WWW-Authenticate: Bearer``; 403: revoked, its payment withdrawn, expired or not
  enough balance. Both carry
  the reason in ``X-Anonticket-Reason`` for the proxy's error pages;
- everything that is not the customer's doing fails closed as a non-401/403 status, so
  nginx answers 500 and never opens the door: storage unavailable (503), a proxy without
  the gateway credential (407), a cost header that is not a number (400); a charge whose
  storage call failed is 500, never 503, because it may have been applied and a proxy
  asks another instance after a 503 (a standby's, which comes before anything is read).

The token comes from ``Authorization: Bearer`` or the access cookie (``__Host-`` over
HTTPS, see access_cookie.py), never from the URL. Either may hold a credential instead
(``v4.public.…``, from ``POST /api/v1/credential`` or the access page): it is verified
without storage (``ledger/credentials.py``: a cache of verified credentials, the recent
revocations) and opens what a token opens except a metered location, where only a token
can pay (401 ``token_required``). Its refusals have reasons of their own:
``invalid_credential`` and ``credential_expired`` (401: get a new one),
``credential_revoked`` (403). The upstream gets the credential's subject, and its token's
expiry; no remaining balance (a credential carries none).
A request carrying two of either (two ``Authorization`` headers, the access cookie twice,
whatever else it carries) is refused, and so are two cost headers: a proxy strips or
replaces what it knows of, and the copy it missed must never be the one that counts or
the one the upstream receives.
When ``API_INTERNAL_TOKEN`` is set the proxy proves itself in a header of its own
(``X-Anonticket-Gateway-Token``): ``Authorization`` here is the customer's, so the admin
middleware skips this route and the two secrets are never compared with each other.

Check-only answers (no cost) come from the ledger's record cache without a coroutine, as
introspection does; a cost is one ``Ledger.debit`` (batched, decided in one transaction,
committed before the answer).
"""

from __future__ import annotations

import hmac
import json
import re
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from anonticket.api.access_cookie import AccessCookie
from anonticket.api.request import STATE, rfc3339
from anonticket.crypto.privacy_pass import PrivacyPassError, Token
from anonticket.crypto.privacy_pass_http import b64url_decode, parse_authorization
from anonticket.domain.ids import ServiceToken, token_subject
from anonticket.domain.errors import (
    ChargeUnconfirmed,
    GatewayUnauthorized,
    InsufficientBalance,
    InvalidRequest,
    NotActive,
    PaymentWithdrawn,
    TokenExpired,
    TokenRevoked,
    Unavailable,
)
from anonticket.ledger.credentials import Checked
from anonticket.storage import DebitRequest, TokenRow

CHECK_PATH = "/api/v1/check"
COST_HEADER = "X-Anonticket-Cost"
CREDENTIAL_HEADER = "X-Anonticket-Gateway-Token"
SUBJECT_HEADER = "X-Anonticket-Subject"
REMAINING_HEADER = "X-Anonticket-Remaining"
EXPIRES_HEADER = "X-Anonticket-Expires-At"
REASON_HEADER = "X-Anonticket-Reason"
PROVISIONAL_HEADER = "X-Anonticket-Provisional"
# the credential of a session a spent private token bought, for the proxy to hand the client
SESSION_HEADER = "X-Anonticket-Credential"
CACHE_HEADER = "Cache-Control"
# what a cost can be: a debit's own limit (amounts and their sums fit SQLite's INTEGER)
MAX_COST = 2**62
_MAX_COST_DIGITS = len(str(MAX_COST))
_CHALLENGE = 'Bearer realm="anonticket"'
_CHALLENGE_INVALID = 'Bearer realm="anonticket", error="invalid_token"'

# reason -> (status, message, WWW-Authenticate); the reasons are also the metric outcomes
DENIALS: dict[str, tuple[int, str, str | None]] = {
    "token_missing": (401, "a service token is required: Authorization: Bearer <token> "
                           "or the access cookie", _CHALLENGE),
    "invalid_token": (401, "the service token must be 64 hex characters, sent once",
                      _CHALLENGE_INVALID),
    "token_not_found": (401, "no such service token", _CHALLENGE_INVALID),
    "token_revoked": (403, TokenRevoked.message, None),
    "payment_withdrawn": (403, PaymentWithdrawn.message, None),
    "token_expired": (403, TokenExpired.message, None),
    "insufficient_balance": (403, InsufficientBalance.message, None),
    "invalid_credential": (401, "the credential is not valid (malformed, another version, an "
                                "unknown key or a bad signature): get a new one with the "
                                "service token", _CHALLENGE_INVALID),
    "credential_expired": (401, "the credential has expired: get a new one with the service "
                                "token", _CHALLENGE_INVALID),
    "credential_revoked": (403, "the credential's token has been revoked", None),
    "token_required": (401, "this location is metered: it takes the service token itself, "
                            "a credential cannot pay", _CHALLENGE_INVALID),
    "private_token_invalid": (401, "the private token is not valid (malformed, another type, "
                                   "an unknown or removed key, another issuer's challenge or "
                                   "a bad signature)", _CHALLENGE),
    "private_token_spent": (401, "the private token has been spent already", _CHALLENGE),
}
_DENIAL_BODIES = {reason: json.dumps({"error": reason, "message": message}).encode()
                  for reason, (_, message, _) in DENIALS.items()}
# what a refused debit's stored code means at the gateway
_DEBIT_REFUSALS = {"token_not_found": "token_not_found", "token_revoked": "token_revoked",
                   "payment_withdrawn": "payment_withdrawn",
                   "token_expired": "token_expired", "insufficient_balance": "insufficient_balance"}


CREDENTIAL_PREFIX = "v4.public."
# what is read as a credential rather than a token: any PASETO-looking value (v1 to v4,
# local or public), so another version is refused as an invalid credential, not a token
_PASETO_LIKE = re.compile(r"v[0-9]\.[a-z]+\.")
# Authorization: PrivateToken token="<base64url of a 354-byte token>", as clients write it
_PRIVATE_TOKEN = re.compile(r'PrivateToken token="([A-Za-z0-9_-]{472}={0,2})"')


class Presented(str):
    """A credential's text as the customer presented it: a ``str`` that is not a refusal
    reason (those are plain ``str``), told apart by ``type(...) is Presented``."""

    __slots__ = ()


def hex_token(text: str) -> bytes | str:
    """32 bytes from exactly 64 hex characters, else the reason ``invalid_token``.

    ``bytes.fromhex`` skips ASCII whitespace, so 64 characters that give 32 bytes held none.
    """
    if len(text) != 64:
        return "invalid_token"
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        return "invalid_token"
    return raw if len(raw) == 32 else "invalid_token"


def bearer_value(text: str) -> bytes | str:
    """A token (32 bytes), a credential (``Presented``), or the reason ``invalid_token``."""
    if len(text) != 64 and _PASETO_LIKE.match(text):
        return Presented(text)
    return hex_token(text)


def bearer_token_only(headers: Any) -> bytes | str:
    """The service token of ``Authorization: Bearer`` and nothing else, or why not (a reason
    of ``DENIALS``): what the routes that spend or vouch for a token take (a credential,
    issuing private tokens). Two ``Authorization`` headers, or a credential in place of the
    token, are ``invalid_token``: a credential never buys a credential or pays."""
    authorizations = headers.getall("Authorization", ())
    if len(authorizations) > 1:
        return "invalid_token"
    if not authorizations or authorizations[0][:7].lower() != "bearer ":
        return "token_missing"
    raw = bearer_value(authorizations[0][7:].strip(" \t"))
    return "invalid_token" if type(raw) is Presented else raw


def token_from(headers: Any, cookie: AccessCookie) -> bytes | str:
    """The customer's token (or credential, a ``Presented``), or why there is none (a
    reason of ``DENIALS``).

    ``Authorization: Bearer`` wins; another scheme (a site's own Basic auth) is not ours
    and is passed over. Two ``Authorization`` headers, or either name of the cookie twice
    across every Cookie header (another path's or a subdomain's cookie of the same name),
    are refused whatever else the request carries: a proxy strips one copy, and the other
    would reach the upstream next to a Bearer token that let the request through. The
    ``__Host-`` copy is read first; the plain one only when the request is not known to
    have come over HTTPS, where a sibling site could have planted it (access_cookie.py).
    """
    authorizations = headers.getall("Authorization", ())
    secure, plain = cookie.copies(headers.getall("Cookie", ()))
    if len(authorizations) > 1 or len(secure) > 1 or len(plain) > 1:
        return "invalid_token"
    if authorizations and authorizations[0][:7].lower() == "bearer ":
        return bearer_value(authorizations[0][7:].strip(" \t"))
    if secure:
        return bearer_value(secure[0].strip(" \t"))
    if plain and not cookie.is_secure(headers.get("X-Forwarded-Proto")):
        return bearer_value(plain[0].strip(" \t"))
    return "token_missing"


def parse_cost(text: str | None) -> int:
    """The proxy's per-location cost in piconero; absent or 0: check only."""
    if not text:
        return 0
    if not (text.isascii() and text.isdigit()) or len(text) > _MAX_COST_DIGITS:
        raise InvalidRequest("X-Anonticket-Cost must be a whole number of piconero")
    cost = int(text)
    if cost > MAX_COST:
        raise InvalidRequest("X-Anonticket-Cost must be a whole number of piconero")
    return cost


def credential_headers(checked: Checked) -> dict[str, str]:
    headers = {SUBJECT_HEADER: checked.subject}
    if checked.token_expires_at is not None:
        headers[EXPIRES_HEADER] = rfc3339(checked.token_expires_at)  # type: ignore[assignment]
    return headers


def allowed_headers(record: TokenRow) -> dict[str, str]:
    headers = {SUBJECT_HEADER: token_subject(record.token),
               REMAINING_HEADER: str(record.remaining)}
    if record.expires_at is not None:
        headers[EXPIRES_HEADER] = rfc3339(record.expires_at)  # type: ignore[assignment]
    if record.provisional:
        headers[PROVISIONAL_HEADER] = "true"
    return headers


def denial(reason: str, remaining: int | None = None,
           private_token_challenges: str = "") -> web.Response:
    """The refusal; a 401 also offers ``private_token_challenges`` (RFC 9577's PrivateToken
    challenge for each unit, when Privacy Pass is on) beside the Bearer challenge, in one
    WWW-Authenticate value: a proxy that passes one header on passes them all."""
    status, _, challenge = DENIALS[reason]
    headers = {REASON_HEADER: reason}
    if challenge is not None:
        headers["WWW-Authenticate"] = (f"{challenge}, {private_token_challenges}"
                                       if private_token_challenges else challenge)
    if remaining is not None:
        headers[REMAINING_HEADER] = str(remaining)
    return web.Response(status=status, body=_DENIAL_BODIES[reason],
                        content_type="application/json", headers=headers)


def make_check_handler(app: web.Application) -> Callable[[web.Request], Awaitable[web.Response]]:
    state = app[STATE]
    config = state.config
    tallies, debited = state.metrics.gateway, state.metrics.gateway_debited
    cookie = AccessCookie.from_config(config)
    # encoded like the admin middleware's: a header that is not UTF-8 is a wrong credential
    credential = (config.api_internal_token.encode("utf-8", "surrogateescape")
                  if config.api_internal_token else None)
    allowed_tally, credential_tally = tallies["allowed"], tallies["allowed_credential"]
    private_token_tally = tallies["allowed_private_token"]

    def with_credential(text: str, cost: int) -> web.Response:
        """The check for a credential: never storage, never a charge."""
        if cost:
            return refuse("token_required")
        credentials = state.ledger.credentials
        if credentials is None:
            return refuse("invalid_credential")
        try:
            checked = credentials.check(text)
        except Unavailable:
            tallies["unavailable"].inc()
            raise
        if type(checked) is str:
            return refuse(checked)
        credential_tally.inc()
        return web.Response(headers=credential_headers(checked))  # type: ignore[arg-type]

    def refuse(reason: str, remaining: int | None = None) -> web.Response:
        tallies[reason].inc()
        private_tokens = state.ledger.private_tokens
        if private_tokens is not None and DENIALS[reason][0] == 401:
            return denial(reason, remaining, private_tokens.challenges())
        return denial(reason, remaining)

    async def with_private_token(value: str, cost: int, secure: bool) -> web.Response:
        """RFC 9577 §2.2: verify offline, then spend the nonce; grant what the unit is worth."""
        private_tokens = state.ledger.private_tokens
        if private_tokens is None:
            return refuse("token_missing")
        try:
            canonical = _PRIVATE_TOKEN.fullmatch(value)
            # the form every client sends, read without the RFC 9110 parser (the same
            # answer: tests/api/test_private_tokens_service.py)
            token = (Token.decode(b64url_decode(canonical.group(1))) if canonical
                     else parse_authorization(value))
            if token is None:
                return refuse("private_token_invalid")
            found = private_tokens.verify(token)
        except PrivacyPassError:
            return refuse("private_token_invalid")
        if cost and found.unit.grants == "session":
            return refuse("token_required")  # a session is a credential: it cannot pay
        try:
            won = await private_tokens.spend(found, token)
        except NotActive:
            tallies["unavailable"].inc()
            raise  # fenced out before anything was spent: a standby's 503, ask the other
        except Unavailable:
            tallies["unavailable"].inc()
            raise ChargeUnconfirmed() from None
        if not won:
            return refuse("private_token_spent")
        private_token_tally.inc()
        if found.unit.grants == "request":
            return web.Response(headers={SUBJECT_HEADER: secrets.token_hex(16),
                                         CACHE_HEADER: "no-store"})
        credentials = state.ledger.credentials
        if credentials is None:
            raise Unavailable()
        subject, issued = credentials.issue_session(found.unit.seconds)
        response = web.Response(headers={
            SUBJECT_HEADER: subject, EXPIRES_HEADER: rfc3339(issued.expires_at),
            SESSION_HEADER: issued.credential, CACHE_HEADER: "no-store"})
        response.set_cookie(cookie.name(secure), issued.credential, path="/",
                            max_age=found.unit.seconds, secure=secure, httponly=True,
                            samesite="Lax")
        return response

    async def metered(raw: bytes, cost: int) -> web.Response:
        try:
            outcome = await state.ledger.debit(DebitRequest(raw, cost))
        except NotActive:
            tallies["unavailable"].inc()
            raise  # fenced out before anything was charged: a standby's 503, ask the other
        except Unavailable:
            tallies["unavailable"].inc()
            raise ChargeUnconfirmed() from None
        if outcome.status == 200 and outcome.record is not None:
            allowed_tally.inc()
            debited.inc(cost)
            return web.Response(headers=allowed_headers(outcome.record))
        reason = _DEBIT_REFUSALS[str(outcome.body["error"])]
        remaining = outcome.body.get("remaining") if reason == "insufficient_balance" else None
        return refuse(reason, remaining)  # type: ignore[arg-type]

    async def check(request: web.Request) -> web.Response:
        headers = request.headers
        if credential is not None:
            given = headers.get(CREDENTIAL_HEADER, "").encode("utf-8", "surrogateescape")
            if not hmac.compare_digest(given, credential):
                tallies["gateway_unauthorized"].inc()
                raise GatewayUnauthorized()
        cost_text = headers.get(COST_HEADER)
        cost = 0
        if cost_text is not None:
            try:
                if len(headers.getall(COST_HEADER)) > 1:  # a proxy that appends: ambiguous
                    raise InvalidRequest("X-Anonticket-Cost must be sent once")
                if cost_text != "0":
                    cost = parse_cost(cost_text)
            except InvalidRequest:
                tallies["invalid_cost"].inc()
                raise
        # the usual request, one "Bearer <64 hex>" and no cookie, without a call; anything
        # else (another spelling, a cookie, a second copy, garbage) takes token_from, which
        # answers the same for it
        authorization = headers.get("Authorization")
        raw: bytes | str | None = None
        if authorization is not None and authorization[:13].lower() == "privatetoken ":
            if len(headers.getall("Authorization")) > 1:
                return refuse("invalid_token")
            return await with_private_token(
                authorization, cost, cookie.is_secure(headers.get("X-Forwarded-Proto")))
        if (authorization is not None and authorization[:7] == "Bearer "
                and "Cookie" not in headers and len(headers.getall("Authorization")) == 1):
            if len(authorization) == 71:
                try:
                    raw = bytes.fromhex(authorization[7:])
                except ValueError:
                    raw = None
                if raw is not None and len(raw) != 32:
                    raw = None
            elif authorization[7:17] == CREDENTIAL_PREFIX and authorization[-1] not in " \t":
                # the usual credential request, as token_from would read it
                return with_credential(authorization[7:], cost)
        if raw is None:
            raw = token_from(headers, cookie)
            if type(raw) is Presented:
                return with_credential(raw, cost)
            if type(raw) is str:
                return refuse(raw)
        if cost:
            return await metered(raw, cost)  # type: ignore[arg-type]
        # check only: what introspection does, without a coroutine for a cached record;
        # the ledger is read per request: a PostgreSQL takeover replaces it (service/app.py)
        ledger = state.ledger
        record = ledger.cached_token(raw)  # type: ignore[arg-type]
        if record is None:
            if ledger.token_certainly_unknown(raw):  # type: ignore[arg-type]
                return refuse("token_not_found")
            try:
                record = await ledger.find_token(ServiceToken(raw))  # type: ignore[arg-type]
            except Unavailable:
                tallies["unavailable"].inc()
                raise
            if record is None:
                return refuse("token_not_found")
        if record.revoked_at is not None:
            return refuse("token_revoked")
        if record.withdrawn:
            return refuse("payment_withdrawn")
        if record.expires_at is not None and record.expires_at <= ledger.clock():
            return refuse("token_expired")
        allowed_tally.inc()
        return web.Response(headers=allowed_headers(record))

    return check


def add_check_route(app: web.Application) -> None:
    """Any method: nginx's auth subrequest keeps the customer's (a POST to a protected
    form is checked as a POST, without its body); Caddy's is always GET."""
    app.router.add_route("*", CHECK_PATH, make_check_handler(app))
