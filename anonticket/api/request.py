"""What every handler shares: the ``State`` key, reading a bounded body, JSON answers and
their timestamps.

Every route module imports these and none imports another route module for them, so the
pages (checkout, access) and the JSON routes (public, internal, balance, webhooks, the
gateway check) can use each other without a circle. The body limit and the parsing rules
are the same on every route: one place to read them.
"""

from __future__ import annotations

import asyncio
import json
from functools import lru_cache
from typing import Any

from aiohttp import web

from anonticket.domain.errors import InvalidRequest, RequestTimeout
from anonticket.runtime.state import State
from anonticket.storage import is_storable_text
from anonticket.domain.timestamp import format_rfc3339

STATE = web.AppKey("state", State)
# Requests larger than this are refused with 413 before they are read; a redeem body is ~30 bytes.
MAX_BODY_BYTES = 4096
JSON_TYPE = "application/json"


def json_body(payload: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(status=status, body=json.dumps(payload).encode(), content_type=JSON_TYPE)


def json_bytes(body: bytes, status: int = 200) -> web.Response:
    return web.Response(status=status, body=body, content_type=JSON_TYPE)


async def read_body(request: web.Request) -> bytes:
    """The request body; with it all received already (the usual small POST), no await.

    Same limit and same 413 as ``request.read()``, which the slow path still uses.
    """
    declared = request.content_length  # parsed from the header on each access: read once
    if declared is not None and declared > MAX_BODY_BYTES:
        # refuse on the declared size: reading first would wait for a body that may never come
        raise web.HTTPRequestEntityTooLarge(MAX_BODY_BYTES, declared)
    payload = request.content
    if payload.is_eof():
        raw = payload.read_nowait()
        if len(raw) > MAX_BODY_BYTES:
            raise web.HTTPRequestEntityTooLarge(MAX_BODY_BYTES, len(raw))
        return raw
    # a client that sends headers and then stalls the body must give its slot back
    try:
        async with asyncio.timeout(request.app[STATE].config.api_body_timeout_secs):
            return await request.read()
    except TimeoutError:
        raise RequestTimeout() from None


async def read_json_object(request: web.Request, *, allow_empty: bool = False) -> dict[str, Any]:
    """The body as a JSON object. Any content type is accepted: ``curl -d`` sends a form type.
    ``allow_empty``: no body at all stands for ``{}``; whitespace alone is not JSON (400)."""
    raw = await read_body(request)
    if allow_empty and not raw:
        return {}
    return json_object(raw)


def json_object(raw: bytes) -> dict[str, Any]:
    # RecursionError: 4 KiB of "[[[[" nests deeper than json's C scanner may recurse; it
    # unwinds cleanly, and it is the client's malformed body, not a 500 with a traceback
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise InvalidRequest("request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    if not is_storable_json(body):
        raise InvalidRequest("request body holds a string that is not valid Unicode text "
                             "(a lone surrogate, or U+0000)")
    return body


def is_storable_json(value: object) -> bool:
    """True when every string in a parsed JSON value, keys included, encodes as UTF-8
    and holds no U+0000 (``storage.is_storable_text``).

    A ``\\ud800`` escape, or the raw bytes of one (json.loads decodes bytes with
    surrogatepass), gives Python a lone surrogate: a str that SQLite cannot bind and a
    UTF-8 log cannot write. PostgreSQL refuses a ``\\u0000`` in any text (SQLite keeps it,
    so the backends would disagree). Either would fail far from the edge, as a 500, and
    inside a batch of debits it would fail everyone's. Every JSON body passes here, so a
    string field added later is covered without a line of its own; text taken from
    elsewhere (a header, a form) needs the same check. A loop, not recursion: the value
    may be nested as deep as json.loads allowed.
    """
    pending = [value]
    while pending:
        item = pending.pop()
        if type(item) is str:
            if not is_storable_text(item):
                return False
        elif type(item) is dict:
            pending.extend(item)
            pending.extend(item.values())
        elif type(item) is list:
            pending.extend(item)
    return True


@lru_cache(maxsize=4096)
def format_stamp(unix_seconds: int) -> str:
    # tokens issued in the same second share their stamp; cached because formatting
    # a time costs more than the rest of an introspection answer
    return format_rfc3339(unix_seconds)


def rfc3339(unix_seconds: int | None) -> str | None:
    return None if unix_seconds is None else format_stamp(unix_seconds)


def json_stamp(unix_seconds: int | None) -> str:
    """An RFC 3339 stamp (or null) as JSON text, for answers formatted without the encoder."""
    return "null" if unix_seconds is None else f'"{format_stamp(unix_seconds)}"'
