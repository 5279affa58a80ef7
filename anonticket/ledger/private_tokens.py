"""Privacy Pass (token type 2) for the units an operator sells: the issuer keys on their
schedule, blind signing, and redemption against a durable spent-set.

Keys. Every unit has its own RSA-2048 key per epoch (``PRIVATE_TOKEN_KEY_EPOCH_SECS``),
the same for every customer: a key per customer would tell the operator whose token it is
(docs/security.md). The key ring (``ledger.keyring``) holds them as ``signing_keys`` rows of
purpose ``private_token:<unit>``; ``ensure_keys`` (at load, at a takeover, and from
housekeeping) stores the first key of a unit, and publishes the next one ``ahead`` seconds
before the current epoch ends with its ``not-before`` (the old one is then retired at that
moment, and redeems for ``PRIVATE_TOKEN_KEY_GRACE_SECS`` more before housekeeping removes it
and its spent nonces). No two stored issuer keys share the last byte of their token key id,
which is all a TokenRequest names: a new key that would is generated again.

Issuance signs whatever the customer's blinded messages are (``sign``); the debit that pays
for them is the API's business (one debit, with the Idempotency-Key). Blind RSA signing is
deterministic, so a retry of the same body gets the same signatures without anything being
stored about them.

Redemption (``verify`` then ``spend``): the token's key id picks the unit; its challenge
digest must be this deployment's one challenge (type 2, ``PRIVATE_TOKEN_ISSUER_NAME``, no
redemption context, no origin info: a token is good at every location of this deployment
that takes its unit); the signature is verified offline; the nonce is then inserted in the
spent-set, batched like the debits, where the primary key decides which of two
redemptions of one token wins.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import rsa

from anonticket.config.units import Unit
from anonticket.crypto.blind_rsa import SALT_LEN
from anonticket.crypto.privacy_pass import (
    TOKEN_TYPE,
    IssuerKey,
    InvalidToken,
    PrivacyPassError,
    Token,
    TokenChallenge,
    TokenRequest,
    TokenResponse,
    UnknownTokenKey,
    UnsupportedTokenType,
)
from anonticket.crypto.privacy_pass_http import (
    b64url_encode,
    format_www_authenticate,
    issuer_directory,
)
from anonticket.ledger.batching import KeyedBatcher
from anonticket.ledger.keyring import PRIVATE_TOKEN_PREFIX, IssuerKeyKind, KeyRing, RingKey
from anonticket.storage import SigningKeyRow, Storage

log = logging.getLogger("anonticket.private_tokens")

# how long after its epoch ended a key still signs a retried (or late) issuance: the same
# window the retry record is kept (a retry after it is a new issuance)
RETRY_WINDOW_SECS = 600
MAX_AHEAD_SECS = 7 * 86_400


@functools.cache
def _openssl() -> tuple[Any, ...]:
    """`cryptography`'s RSA verify, imported at the first redemption: OpenSSL's bindings
    hold about 7 MB, which a deployment without private tokens need not carry
    (docs/benchmarks.md, peak RSS). (InvalidSignature, RSAPublicNumbers, PSS, SHA384)."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=SALT_LEN)
    return InvalidSignature, rsa.RSAPublicNumbers, pss, hashes.SHA384()


@dataclass(frozen=True, slots=True)
class UnitKey:
    unit: Unit
    key: RingKey


class PrivateTokens:
    def __init__(self, ring: KeyRing, units: Sequence[Unit], *, epoch_secs: int,
                 grace_secs: int, issuer_name: str, max_batch: int,
                 clock: Callable[[], int]) -> None:
        self.ring = ring
        self.units = tuple(units)
        self.by_name = {unit.name: unit for unit in self.units}
        self.epoch_secs = epoch_secs
        self.grace_secs = grace_secs
        self.ahead_secs = min(epoch_secs // 4, MAX_AHEAD_SECS)
        self.max_batch = max_batch
        self.clock = clock
        self.issuer_name = issuer_name
        self.challenge = TokenChallenge(issuer_name).encode()
        self.challenge_digest = hashlib.sha256(self.challenge).digest()
        self._index_version = -1
        self._by_key_id: dict[bytes, UnitKey] = {}
        self._verifiers: dict[str, rsa.RSAPublicKey] = {}
        self._spends: KeyedBatcher[tuple[str, bytes], bool] = KeyedBatcher(
            self._spend_batch, lambda inserted: inserted)
        self._storage: Storage = ring.storage

    # ------------------------------------------------------------------ keys
    async def load(self) -> None:
        """What a start or a takeover does once the ring is loaded."""
        await self.ensure_keys()

    def _all_issuer_keys(self) -> list[RingKey]:
        return [key for purpose, keys in self.ring.items() if purpose.startswith(
            PRIVATE_TOKEN_PREFIX) for key in keys]

    async def _generate(self, unit: Unit, now: int, not_before: int) -> SigningKeyRow:
        """A new key row whose truncated key id no stored issuer key has."""
        taken = {key.issuer_key.token_key.truncated_token_key_id
                 for key in self._all_issuer_keys()}
        while True:
            key = await asyncio.to_thread(IssuerKey.generate)  # ~1 s of CPU: off the loop
            if key.token_key.truncated_token_key_id not in taken:
                return IssuerKeyKind.row_of(key, unit.purpose, now, not_before)

    async def ensure_keys(self) -> int:
        """Store the keys the schedule needs now; returns how many were stored. The ring is
        read again after every write, whatever its outcome (one that raised may have
        committed); a round with nothing to do reads nothing."""
        stored = 0
        for unit in self.units:
            now = self.clock()
            in_force = [key for key in self.ring.keys(unit.purpose) if key.row.retired_at is None]
            if not in_force:
                row = await self._generate(unit, now, now)
                write = self._storage.add_first_signing_key(row)
                what = f"generated the first issuer key of unit {unit.name}"
            else:
                current = in_force[-1]
                end = current.row.not_before + self.epoch_secs
                if current.row.not_before > now or now < end - self.ahead_secs:
                    continue  # the next key is published already, or not due yet
                row = await self._generate(unit, now, max(end, now))
                write = self._rotate(row)
                what = (f"published the next issuer key of unit {unit.name}: it signs from "
                        f"{row.not_before}")
            try:
                if await write:
                    stored += 1
                    log.info("%s", what)
            finally:
                await self.ring.refresh()
        return stored

    def purposes(self) -> dict[str, Unit]:
        """Each configured unit by its keys' purpose."""
        return {unit.purpose: unit for unit in self.units}

    async def rotate(self, unit: Unit, *, compromised: bool = False) -> RingKey:
        """A new key for ``unit`` that signs at once, for an epoch from now (``keys rotate
        --purpose private_token:<unit> --now``). The old key still redeems what it signed
        through the grace, unless ``compromised``: then every previous key of the unit is
        deleted at once (its tokens are worthless from now on, here and at every instance)."""
        now = self.clock()
        row = await self._generate(unit, now, now)
        try:
            await self._storage.rotate_signing_key(row, verify_secs=self.grace_secs,
                                                   drop_previous=compromised)
        finally:
            await self.ring.refresh()
        log.info("rotated the issuer key of unit %s%s", unit.name,
                 "; every previous key removed" if compromised else "")
        return next(key for key in self.ring.keys(unit.purpose) if key.key_id == row.key_id)

    async def _rotate(self, row: SigningKeyRow) -> bool:
        await self._storage.rotate_signing_key(row, verify_secs=self.grace_secs)
        return True

    def _index(self) -> dict[bytes, UnitKey]:
        if self._index_version != self.ring.version:
            self._verifiers.clear()
            self._by_key_id = {
                key.issuer_key.token_key.token_key_id: UnitKey(unit, key)
                for unit in self.units for key in self.ring.keys(unit.purpose)}
            self._index_version = self.ring.version
        return self._by_key_id

    def signing_keys(self, now: int | None = None) -> list[UnitKey]:
        """The key each unit signs with now (a unit whose key is not loaded is left out)."""
        moment = self.clock() if now is None else now
        found = []
        for unit in self.units:
            key = self.ring.signing_key(unit.purpose, moment)
            if key is not None:
                found.append(UnitKey(unit, key))
        return found

    # ------------------------------------------------------------------ directory, challenge
    def directory(self, issuer_request_uri: str) -> dict[str, object]:
        """RFC 9578 §4: for each unit, the key signing now and the next one (with their
        not-before); each entry also names its unit (``anonticket-unit``, which standard
        clients ignore) so a client knows which key sells what."""
        now = self.clock()
        entries: list[tuple[Unit, RingKey]] = []
        for unit in self.units:
            for key in self.ring.keys(unit.purpose):
                if key.row.retired_at is None or now < key.row.retired_at:
                    entries.append((unit, key))
        document = issuer_directory(issuer_request_uri, [
            (key.issuer_key.token_key, key.row.not_before) for _, key in entries])
        for item, (unit, _) in zip(document["token-keys"], entries, strict=True):
            item["anonticket-unit"] = unit.name
        # the one challenge this deployment accepts, so a client can fetch ahead of a visit
        document["anonticket-challenge"] = b64url_encode(self.challenge)
        return document

    def challenges(self) -> str:
        """``PrivateToken challenge=…, token-key=…`` for each unit, comma-separated (one
        WWW-Authenticate value beside the Bearer challenge)."""
        return ", ".join(format_www_authenticate(self.challenge, found.key.issuer_key.token_key)
                         for found in self.signing_keys())

    # ------------------------------------------------------------------ issuance
    def issuing_key(self, request: TokenRequest) -> UnitKey:
        """The unit and key a request names by its truncated key id: a key signing now, or
        one whose epoch ended less than RETRY_WINDOW_SECS ago (a retry across the change);
        UnknownTokenKey otherwise (a 422)."""
        now = self.clock()
        for unit in self.units:
            for key in self.ring.keys(unit.purpose):
                row = key.row
                if (row.not_before <= now
                        and (row.retired_at is None or now < row.retired_at + RETRY_WINDOW_SECS)
                        and key.issuer_key.token_key.truncated_token_key_id
                        == request.truncated_token_key_id):
                    return UnitKey(unit, key)
        raise UnknownTokenKey()

    @staticmethod
    def sign(pairs: Sequence[tuple[TokenRequest, UnitKey]]) -> list[TokenResponse]:
        """Blind-sign each request (a thread's work: ~3 ms of CPU each). MalformedMessage for
        a blinded message not below n; SigningFailure (the fault check) is internal."""
        return [found.key.issuer_key.issue(request) for request, found in pairs]

    # ------------------------------------------------------------------ redemption
    def verify(self, token: Token) -> UnitKey:
        """The unit and key of a valid token, not yet spent-checked; InvalidToken or
        UnknownTokenKey (PrivacyPassError) otherwise.

        The signature is checked by ``cryptography`` (OpenSSL: ~75 µs here against
        pycryptodome's ~390 µs, what keeps redemption above half of /health/live,
        docs/benchmarks.md): RSASSA-PSS-VERIFY with SHA-384, MGF1-SHA-384 and a 48-byte salt,
        exactly RFC 9578 §6.4's check, which ``crypto.privacy_pass.verify_token`` (the
        pycryptodome one a third party imports) makes too; tests/ledger pins the two to the
        same answers."""
        found = self._index().get(token.token_key_id)
        if found is None or found.key.row.not_before > self.clock():
            raise UnknownTokenKey()
        if not hmac.compare_digest(token.challenge_digest, self.challenge_digest):
            raise InvalidToken()
        if token.token_type != TOKEN_TYPE:
            raise UnsupportedTokenType()
        invalid_signature, public_numbers, pss, sha384 = _openssl()
        verifier = self._verifiers.get(found.key.key_id)
        if verifier is None:
            public = found.key.issuer_key.token_key.public_key
            verifier = public_numbers(public.e, public.n).public_key()
            self._verifiers[found.key.key_id] = verifier
        try:
            verifier.verify(token.authenticator, token.token_input, pss, sha384)
        except invalid_signature:
            raise InvalidToken() from None
        return found

    async def spend(self, found: UnitKey, token: Token) -> bool:
        """True for the one redemption that spent this token; False if it was spent before
        (or by a concurrent redemption). Unavailable when storage could not say: the token
        may or may not be spent then."""
        _, won = await self._spends.submit((found.key.key_id, token.nonce))
        return won

    async def _spend_batch(self, spends: list[tuple[str, bytes]]) -> dict[tuple[str, bytes], bool]:
        inserted = await self._storage.spend_private_tokens(spends, self.clock())
        return {spend: True for spend in inserted}

    async def remove_orphans(self) -> int:
        return await self._storage.remove_orphan_spent_tokens()


__all__ = ["PrivacyPassError", "PrivateTokens", "RETRY_WINDOW_SECS", "UnitKey"]
