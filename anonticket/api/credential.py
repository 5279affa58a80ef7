"""Credentials over HTTP: issuing one for a token, publishing the keys that verify them, and
the operator's key routes.

- ``POST /api/v1/credential`` (public listener): ``Authorization: Bearer <token>`` only (not
  the access cookie: a JSON route a browser would send a cookie to from any page is one more
  thing to defend, and the access page has its own way, api/access.py), an optional JSON body
  ``{"aud": "<one of CREDENTIAL_AUDIENCES>"}``. Refused exactly as the gateway check refuses
  the token (the same status, ``error`` code, ``WWW-Authenticate`` and reason header); a
  credential in place of the token is ``invalid_token``: a credential never buys another, or
  a stolen one could be kept alive past its token's revocation.
- ``GET /.well-known/anonticket-credential-keys`` (public listener): the key document
  (``anonticket.crypto.credential.key_document``), every stored credential key with its
  schedule, ``Cache-Control: public, max-age`` half a credential's lifetime and an ETag.
- ``GET /api/v1/keys`` and ``POST /api/v1/keys/rotate`` (internal listener, admin token):
  what ``anonticket keys list`` and ``keys rotate`` ask the running (active) instance.
  Never a secret: ids, purposes and times only.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime, timezone
from typing import Any

from aiohttp import web

from anonticket.api.gateway import bearer_token_only, denial
from anonticket.api.request import (
    STATE,
    json_body,
    json_bytes,
    json_stamp,
    read_json_object,
    rfc3339,
)
from anonticket.crypto.credential import KEY_DOCUMENT_PATH, KeyEntry, key_document
from anonticket.domain.errors import (
    InvalidAudience,
    InvalidRequest,
    ServiceError,
    TokenProvisional,
    Unavailable,
)
from anonticket.domain.ids import ServiceToken
from anonticket.ledger.credentials import Credentials, key_document_max_age
from anonticket.ledger.keyring import CREDENTIAL, KINDS
from anonticket.runtime.state import State
from anonticket.storage import SigningKeyRow

CREDENTIAL_PATH = "/api/v1/credential"
KEYS_PATH = "/api/v1/keys"
ROTATE_PATH = "/api/v1/keys/rotate"


def _credentials(state: State) -> Credentials:
    credentials = state.ledger.credentials
    if credentials is None:  # every ledger the service builds has them
        raise Unavailable()
    return credentials


def _audience(body: dict[str, Any]) -> str | None:
    """The requested audience, or None; 400 for a body of another shape."""
    if set(body) - {"aud"}:
        raise InvalidRequest("the body may only hold aud")
    audience = body.get("aud")
    if audience is not None and type(audience) is not str:
        raise InvalidRequest("aud must be a string or null")
    return audience


async def issue_credential(request: web.Request) -> web.Response:
    state = request.app[STATE]
    tallies = state.metrics.credential
    credentials = _credentials(state)
    # In the order of what is wrong with the request itself: a malformed body is 400
    # whoever sends it, then a missing or malformed token 401, then an audience the
    # operator does not issue 422 (well-formed, not acceptable here), and only then a lookup.
    try:
        audience = _audience(await read_json_object(request, allow_empty=True))
    except (InvalidRequest, web.HTTPRequestEntityTooLarge):
        tallies["invalid"].inc()
        raise
    raw = bearer_token_only(request.headers)
    if type(raw) is str:
        tallies[raw].inc()
        return _no_store(denial(raw))
    if audience is not None and audience not in credentials.audiences:
        tallies["invalid_audience"].inc()
        raise InvalidAudience()
    ledger = state.ledger
    try:
        record = await ledger.find_token(ServiceToken(raw))  # type: ignore[arg-type]
    except Unavailable:
        tallies["unavailable"].inc()
        raise
    status = None if record is None else record.status(ledger.clock())
    if record is None:
        reason = "token_not_found"
    elif status != "active":
        reason = {"revoked": "token_revoked", "withdrawn": "payment_withdrawn",
                  "expired": "token_expired"}[status]
    elif record.provisional:
        # A credential is checked offline until its exp: nothing could take it back if the
        # provisional payment were withdrawn (docs/credentials.md, security model). Once
        # every credit of the token is final, the same request is granted.
        tallies["token_provisional"].inc()
        raise TokenProvisional()
    else:
        issued = credentials.issue(record, audience)
        tallies["issued"].inc()
        # written by hand, as json.dumps would (a credential and a stamp need no escaping):
        # this route is on the issuer's hot path (docs/benchmarks.md, credential_issue)
        audience_json = "null" if audience is None else json.dumps(audience)
        return _no_store(json_bytes(
            f'{{"credential": "{issued.credential}", "expires_at": '
            f'{json_stamp(issued.expires_at)}, "audience": {audience_json}}}'.encode()))
    tallies[reason].inc()
    return _no_store(denial(reason))


def _no_store(response: web.Response) -> web.Response:
    """A credential, and the answer that refuses one, are nobody's to keep."""
    response.headers["Cache-Control"] = "no-store"
    return response


# ---------------------------------------------------------------------- the key document
def _moment(unix_seconds: int | None) -> datetime | None:
    return None if unix_seconds is None else datetime.fromtimestamp(unix_seconds, timezone.utc)


class _Document:
    """The document's bytes and ETag, made once per change of the key ring."""

    __slots__ = ("version", "body", "etag")

    def __init__(self) -> None:
        self.version = -1
        self.body = b""
        self.etag = ""


def make_key_document_handler(app: web.Application) -> Any:
    state = app[STATE]
    max_age = key_document_max_age(state.config.credential_ttl_secs)
    cached = _Document()

    async def keys_document(request: web.Request) -> web.Response:
        ring = _credentials(state).ring
        if cached.version != ring.version:
            entries = [KeyEntry(key.public_key, _moment(key.row.not_before),  # type: ignore[arg-type]
                                _moment(key.row.retired_at), _moment(key.row.expires_at))
                       for key in ring.keys(CREDENTIAL)]
            cached.body = json.dumps(key_document(entries), separators=(",", ":")).encode()
            cached.etag = '"' + hashlib.sha256(cached.body).hexdigest()[:32] + '"'
            cached.version = ring.version
        headers = {"Cache-Control": f"public, max-age={max_age}", "ETag": cached.etag,
                   "Access-Control-Allow-Origin": "*"}
        if cached.etag in request.headers.get("If-None-Match", ""):
            return web.Response(status=304, headers=headers)
        return web.Response(body=cached.body, content_type="application/json", headers=headers)

    return keys_document


# ---------------------------------------------------------------------- operator's routes
_PURPOSE = re.compile(r"credential|private_token:[a-z0-9][a-z0-9_-]{0,31}")


class PurposeRefused(ServiceError):
    """A well-formed purpose this deployment cannot rotate now (a unit not configured, or an
    issuer key without --now / --compromised): the request was understood, so 422."""

    status, code, message = 422, "invalid_request", "this key cannot be rotated so"

def key_view(row: SigningKeyRow, now: int) -> dict[str, Any]:
    """A key as the operator sees it: never its secret."""
    if row.retired_at is not None and row.retired_at <= now:
        status = "retired"  # verifies until expires_at
    elif row.not_before > now:
        status = "next"  # published, signs from not_before
    else:
        status = "signing"
    return {"key_id": row.key_id, "purpose": row.purpose, "status": status,
            "created_at": rfc3339(row.created_at), "age_seconds": max(0, now - row.created_at),
            "not_before": rfc3339(row.not_before), "retired_at": rfc3339(row.retired_at),
            "expires_at": rfc3339(row.expires_at)}


async def list_keys(request: web.Request) -> web.Response:
    state = request.app[STATE]
    now = state.ledger.clock()
    rows = await state.ledger.storage.list_signing_keys()
    return json_body({"keys": [key_view(row, now) for row in rows]})


async def rotate_keys(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body = await read_json_object(request, allow_empty=True)
    if set(body) - {"purpose", "immediately", "compromised"}:
        raise InvalidRequest("the body may hold purpose, immediately and compromised")
    purpose = body.get("purpose", CREDENTIAL)
    private_tokens = state.ledger.private_tokens
    units = private_tokens.purposes() if private_tokens is not None else {}
    if type(purpose) is not str or not _PURPOSE.fullmatch(purpose):
        raise InvalidRequest("purpose must be credential or private_token:<unit>")
    flags = [body.get(name, False) for name in ("immediately", "compromised")]
    if any(type(flag) is not bool for flag in flags):  # the form first (400), then meaning
        raise InvalidRequest("immediately and compromised must be true or false")
    if purpose not in KINDS and purpose not in units:
        raise PurposeRefused("purpose must be one of: " + ", ".join(sorted([*KINDS, *units])))
    if purpose in units:
        if not any(flags):
            raise PurposeRefused("an issuer key follows its epoch schedule: rotate it with "
                                 "immediately (--now) or compromised (--compromised)")
        key = await private_tokens.rotate(units[purpose],  # type: ignore[union-attr]
                                          compromised=flags[1])
    else:
        ring = _credentials(state).ring
        key = await ring.rotate(purpose, immediately=flags[0], compromised=flags[1])
    state.metrics.key_rotations.inc()
    now = state.ledger.clock()
    return json_body({"rotated": key_view(key.row, now),
                      "keys": [key_view(row, now)
                               for row in await state.ledger.storage.list_signing_keys()]})


def add_credential_routes(app: web.Application) -> None:
    """The customer's side, on the public listener."""
    app.router.add_post(CREDENTIAL_PATH, issue_credential)
    app.router.add_get(KEY_DOCUMENT_PATH, make_key_document_handler(app), allow_head=False)


def add_key_routes(app: web.Application) -> None:
    """The operator's side, on the internal listener."""
    app.router.add_get(KEYS_PATH, list_keys, allow_head=False)
    app.router.add_post(ROTATE_PATH, rotate_keys)
