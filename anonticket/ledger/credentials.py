"""Credentials: issued for a token, checked at the gateway without storage.

A credential is a PASETO v4.public token (``anonticket.crypto.credential``) signed with the
ring's credential key in force, with these claims:

- ``sub``: ``token_subject(token)``, the pseudonym the gateway already sends upstream;
- ``iat`` and ``nbf``: the moment of issue; ``exp``: the earlier of issue + ``CREDENTIAL_TTL_SECS``
  and the token's own expiry, so a credential never outlives its token;
- ``jti``: 128 random bits, base64url; ``aud``: only when the customer asked for one of the
  operator's ``CREDENTIAL_AUDIENCES``;
- ``unlimited``: true when the token has no time limit; otherwise ``token_expires_at``, its
  expiry. Never the token, never a balance: a metered debit still goes to anonticket.

The check verifies the signature and claims once per credential and keeps the result in a
bounded cache keyed by the credential's text until its ``exp`` (a verification costs ~400 µs,
a cache hit a dict lookup). Revocation is not in the credential: this instance keeps the
subjects of tokens revoked within the last ``CREDENTIAL_TTL_SECS`` (loaded from storage with
the other views, and added to by every revocation it makes) and refuses their credentials
on every request, cached or not. After that window every credential issued before the
revocation has expired anyway. What each other place sees, and when, is in
docs/operations.md ("Credentials").
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import lru_cache

from anonticket.crypto.credential import (
    CredentialError,
    CredentialVerifier,
    parse_time,
    sign_message,
)
from anonticket.domain.errors import Unavailable
from anonticket.domain.ids import token_subject
from anonticket.domain.timestamp import format_rfc3339
from anonticket.ledger.cache import ExpiringMap
from anonticket.ledger.keyring import CREDENTIAL, KeyRing
from anonticket.storage import Storage, TokenRow

# verified credentials kept; a credential is ~420 characters, so ~7 MB at most. More
# customers than this at once cost one verification each per eviction, not a refusal
CACHE_CAPACITY = 16_384
_SUBJECT = re.compile(r"[0-9a-f]{32}")
# a leeway that takes every time claim: only the signature and the subject matter
_FOREVER = timedelta(days=365 * 100)


def key_document_max_age(ttl: int) -> int:
    """How long the published key document may be cached (its Cache-Control max-age): half
    a credential's lifetime. A rotated-in key is published that long before it signs, so a
    verifier that refetches the document when its copy expires knows the key before it
    meets it; a key removed at once (``keys rotate --compromised``) stops verifying at such
    a verifier within that time."""
    return max(1, ttl // 2)


def _moment(unix_seconds: int) -> datetime:
    return datetime.fromtimestamp(unix_seconds, timezone.utc)


@lru_cache(maxsize=4096)
def _stamp(unix_seconds: int) -> str:
    # every credential issued in one second shares its iat, nbf and exp: formatted once
    return format_rfc3339(unix_seconds)


def claims_json(subject: str, now: int, expires: int, token_expires_at: int | None,
                audience_json: str | None) -> bytes:
    """The claims of a credential, written as ``encode_claims`` writes the same claims (the
    same bytes: tests/ledger/test_credentials.py) without building datetimes or running the
    encoder: this is the issuer's hot path, where the signature alone costs a good part of
    what /health/live costs (docs/benchmarks.md). Only text that needs no JSON escaping is put in unquoted: a hex
    subject, a base64url jti, RFC 3339 stamps; the audience comes already encoded."""
    stamp = _stamp(now)
    text = (f'{{"sub":"{subject}","iat":"{stamp}","nbf":"{stamp}","exp":"{_stamp(expires)}",'
            f'"jti":"{secrets.token_urlsafe(16)}","unlimited":')
    if token_expires_at is None:
        text += "true"
    else:
        text += f'false,"token_expires_at":"{_stamp(token_expires_at)}"'
    if audience_json is not None:
        text += f',"aud":{audience_json}'
    return (text + "}").encode()


@dataclass(frozen=True, slots=True)
class Issued:
    credential: str
    expires_at: int  # the credential's exp, unix seconds
    audience: str | None


@dataclass(frozen=True, slots=True)
class Checked:
    """What the gateway needs of a verified credential."""

    subject: str
    expires_at: int  # exp
    token_expires_at: int | None  # the token's own expiry (None: no time limit)


class Revocations:
    """The subjects of tokens revoked within the last ``ttl`` seconds, each kept until every
    credential issued before its revocation has expired (revoked_at + ttl). Never bounded by
    count: forgetting one early would let its credentials through."""

    def __init__(self, ttl: int, clock: Callable[[], int]) -> None:
        self.ttl = ttl
        self.clock = clock
        self._subjects: ExpiringMap[str, int] = ExpiringMap(None, clock)

    async def load(self, storage: Storage) -> None:
        for token, revoked_at in await storage.list_revoked_since(self.clock() - self.ttl):
            self.add(token, revoked_at)

    def add(self, token: bytes, revoked_at: int) -> None:
        self._subjects.purge()
        self._subjects.put(token_subject(token), revoked_at, revoked_at + self.ttl)

    def __contains__(self, subject: str) -> bool:
        return subject in self._subjects

    def __len__(self) -> int:
        self._subjects.purge()
        return len(self._subjects)


class Credentials:
    def __init__(self, ring: KeyRing, revocations: Revocations, *, ttl: int,
                 audiences: tuple[str, ...] = (), clock: Callable[[], int],
                 cache_capacity: int = CACHE_CAPACITY) -> None:
        self.ring = ring
        self.revocations = revocations
        self.ttl = ttl
        self.audiences = frozenset(audiences)
        # each audience as JSON text once, for the claims written without the encoder
        self._audience_json = {name: json.dumps(name, ensure_ascii=False) for name in audiences}
        self.clock = clock
        self._cache: ExpiringMap[str, Checked] = ExpiringMap(cache_capacity, clock)
        self._verifier: CredentialVerifier | None = None
        self._verifier_version = -1

    async def load(self, storage: Storage) -> None:
        """The keys (generating the first one if there is none) and the recent revocations:
        what a start or a takeover reads."""
        await self.ring.load()
        await self.revocations.load(storage)

    # ------------------------------------------------------------------ issue
    def issue(self, record: TokenRow, audience: str | None = None) -> Issued:
        """A credential for ``record``'s token, which the caller found active (as the
        gateway check would). ``audience`` must be one of ``audiences`` (the caller says
        so to the customer); Unavailable when no key signs (never on an active instance)."""
        if audience is not None and audience not in self.audiences:
            raise ValueError("not a configured audience")
        now = self.clock()
        key = self.ring.signing_key(CREDENTIAL, now)
        if key is None:
            raise Unavailable()
        expires = now + self.ttl
        if record.expires_at is not None:
            expires = min(expires, record.expires_at)
        message = claims_json(token_subject(record.token), now, expires, record.expires_at,
                              None if audience is None else self._audience_json[audience])
        return Issued(sign_message(key.secret_key, message), expires, audience)

    def issue_session(self, seconds: int) -> tuple[str, Issued]:
        """A credential for a session a spent private token bought: a fresh random subject,
        tied to no token and no payment, ``exp`` = now + ``seconds``. Returns the subject
        too (the gateway sends it upstream)."""
        now = self.clock()
        key = self.ring.signing_key(CREDENTIAL, now)
        if key is None:
            raise Unavailable()
        subject = secrets.token_hex(16)
        expires = now + seconds
        message = claims_json(subject, now, expires, expires, None)
        return subject, Issued(sign_message(key.secret_key, message), expires, None)

    # ------------------------------------------------------------------ check
    def verifier(self) -> CredentialVerifier | None:
        """The verifier over the ring's credential keys, rebuilt when they change (a
        rotation, a removal): the cache is emptied then too, so a removed key's credentials
        stop at once. None while there is no key (a standby that never loaded)."""
        if self._verifier_version != self.ring.version:
            keys = [key.public_key for key in self.ring.keys(CREDENTIAL)]
            self._verifier = CredentialVerifier(
                keys, clock=lambda: _moment(self.clock())) if keys else None
            self._verifier_version = self.ring.version
            self._cache.clear()
        return self._verifier

    def check(self, text: str) -> Checked | str:
        """The verified credential, or why not (a gateway reason): ``invalid_credential``,
        ``credential_expired`` or ``credential_revoked``."""
        checked = self._cache.get(text) if self._verifier_version == self.ring.version else None
        if checked is None:
            verified = self._verify(text)
            if type(verified) is str:
                return verified
            checked = verified  # type: ignore[assignment]
            self._cache.put(text, checked, checked.expires_at)  # type: ignore[union-attr]
        if checked.subject in self.revocations:  # type: ignore[union-attr]
            return "credential_revoked"
        return checked  # type: ignore[return-value]

    def signed_subject(self, text: str) -> tuple[str, int] | None:
        """(subject, exp) of a credential one of the ring's keys signed, expired or not;
        None for anything else. For the access page, which renews an expired credential
        only for the browser that holds it (api/access.py)."""
        keys = [key.public_key for key in self.ring.keys(CREDENTIAL)]
        try:
            verifier = CredentialVerifier(keys, leeway=_FOREVER,
                                          clock=lambda: _moment(self.clock()))
            credential = verifier.verify(text)
        except (CredentialError, ValueError):  # ValueError: no key at all
            return None
        subject = credential.subject
        if not (type(subject) is str and _SUBJECT.fullmatch(subject)):
            return None
        return subject, int(credential.expires.timestamp())

    def _verify(self, text: str) -> Checked | str:
        verifier = self.verifier()
        if verifier is None:
            raise Unavailable()
        try:
            credential = verifier.verify(text)
            subject = credential.subject
            if credential.audience is not None or not (
                    type(subject) is str and _SUBJECT.fullmatch(subject)):
                return "invalid_credential"
            token_expires = credential.claims.get("token_expires_at")
            token_expires_at = (None if token_expires is None
                                else int(parse_time(token_expires).timestamp()))
        except CredentialError as error:
            return "credential_expired" if error.code == "expired" else "invalid_credential"
        return Checked(subject, int(credential.expires.timestamp()), token_expires_at)
