"""Standard Webhooks v1, the sender's half: secrets, message ids, event bodies, signatures.

Pure functions over bytes, no I/O, standard library only, so that what a receiver must
re-implement (docs/webhooks.md) is all here: the signature is HMAC-SHA256, keyed with the
base64-decoded secret, over ``"{webhook-id}.{webhook-timestamp}.{body}"``, sent as
``v1,<base64>``. tests/domain/test_webhook_signing.py checks it against the ``standardwebhooks``
package, written by others from the same specification.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from collections.abc import Iterable, Mapping
from typing import Any

from anonticket.domain.timestamp import format_rfc3339

SECRET_PREFIX = "whsec_"
# the specification's bounds for a symmetric secret: 192 to 512 bits
MIN_SECRET_BYTES = 24
MAX_SECRET_BYTES = 64
NEW_SECRET_BYTES = 32
MESSAGE_ID_PREFIX = "msg_"
EVENT_TYPES = ("token.issued", "token.topped_up", "token.revoked", "token.expired")
TEST_EVENT_TYPE = "webhook.test"
_SECRET_RULE = (f"expected {SECRET_PREFIX} followed by the base64 of {MIN_SECRET_BYTES} to "
                f"{MAX_SECRET_BYTES} random bytes (make one with 'anonticket webhook secret')")


def parse_secret(text: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret; ValueError with a fixed text otherwise.

    Strict base64 (no stray characters, correct padding): a secret mangled by a shell or
    an editor must fail at start-up, not as signatures no receiver accepts.
    """
    if not text.startswith(SECRET_PREFIX):
        raise ValueError(_SECRET_RULE)
    try:
        key = base64.b64decode(text[len(SECRET_PREFIX):], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(_SECRET_RULE) from None
    if not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
        raise ValueError(_SECRET_RULE)
    return key


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(NEW_SECRET_BYTES)).decode()


def new_message_id() -> str:
    """A random ``webhook-id``: never reused, not even after the outbox is pruned or the
    database restored from a backup (a receiver dedupes on it), and it tells the receiver
    nothing, not even how many events came before. Hex, so never a ``.``."""
    return MESSAGE_ID_PREFIX + secrets.token_hex(16)


def rfc3339(unix_seconds: int | None) -> str | None:
    return None if unix_seconds is None else format_rfc3339(unix_seconds)


def event_body(event_type: str, occurred_at: int, data: Mapping[str, Any]) -> str:
    """The exact text sent, fixed once at enqueue time so every attempt signs the same bytes.

    Compact and ASCII-only (``ensure_ascii`` escapes an operator's non-ASCII revoke
    reason), so no receiver's text decoding can change a byte before it verifies.
    """
    payload = {"type": event_type, "timestamp": rfc3339(occurred_at), "data": dict(data)}
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=True)


def signature(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    """One ``v1,<base64>`` signature over ``id.timestamp.body``."""
    signed = b"%s.%d.%s" % (message_id.encode(), timestamp, body)
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(keys: Iterable[bytes], message_id: str, timestamp: int,
                   body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers of one attempt; one signature per key, space
    separated, the current key first (a receiver accepts any that matches)."""
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(signature(key, message_id, timestamp, body)
                                      for key in keys),
    }
