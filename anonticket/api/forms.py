"""The browser pages' form input: the one place a urlencoded body becomes fields.

The checkout and access pages accept only the forms they render themselves, so anything
else (a field twice, a field of no form of ours, non-ASCII, too many fields) is refused as
a whole with the same 400 page rather than guessed at.
"""
from __future__ import annotations

import urllib.parse

from aiohttp import web

from anonticket.api.request import read_body
from anonticket.domain.errors import ServiceError


class BadForm(ServiceError):
    status, code, message = 400, "invalid_request", "the form is not one these pages send"


async def read_form(request: web.Request, fields: frozenset[str], max_fields: int) -> dict[str, str]:
    """The urlencoded body as fields: only ``fields``, each at most once (4 KiB and the body
    timeout, as every other route; ``max_fields`` bounds the parse before any field is read)."""
    raw = await read_body(request)
    try:
        pairs = urllib.parse.parse_qsl(raw.decode("ascii"), keep_blank_values=True,
                                       max_num_fields=max_fields, errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise BadForm() from None
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form or name not in fields:
            raise BadForm()
        form[name] = value
    return form
