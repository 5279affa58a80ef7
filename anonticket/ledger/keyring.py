"""The signing keys in memory: a view of storage's ``signing_keys``, never a second truth.

Loaded with the other views (at start, and by an instance taking over on PostgreSQL, so a
standby that becomes active signs and verifies with exactly the keys the previous one used),
replaced by what storage holds after every key write this process makes, and re-read by
housekeeping. A write whose outcome is unknown (it raised) is followed by a re-read; if that
fails too, the next housekeeping round brings the view back to what is stored.

Keys are generated here, by anonticket, never supplied by an operator: the first start of a
deployment stores one, and ``rotate`` makes the next. Their secrets live in storage and in
the key objects below, whose repr names only the public id; nothing here logs or returns
one.

Generic over purposes (``kind_of``): each purpose says how its keys are made and read back.
Credentials (Ed25519, PASETO v4.public) and the Privacy Pass issuer keys of each unit
(``private_token:<unit>``, RSA-2048, ``ledger.private_tokens`` schedules them) share the
ring. A stored row already loaded keeps its key object across re-reads, so an RSA key is
parsed once, and the ring's ``version`` moves only when the set of keys does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from anonticket.crypto.paseto_v4 import PublicKey, SecretKey
from anonticket.crypto.privacy_pass import IssuerKey
from anonticket.storage import SigningKeyRow, Storage

log = logging.getLogger("anonticket.keys")

CREDENTIAL = "credential"


class FastSecretKey(SecretKey):
    """A credential signing key whose signature libsodium makes (PyNaCl): about 1.7x
    faster than OpenSSL's (`cryptography`) and 6x faster than pycryptodome's here
    (bench/credential_crypto.py). The signature is the largest part of issuing a
    credential, so this is what brings issuing to about half of /health/live
    (docs/benchmarks.md). Ed25519 is deterministic, so the bytes
    are the very ones ``SecretKey`` would make (tests/ledger/test_credentials.py); the PASETO
    encoding around them is ``anonticket.crypto.paseto_v4``'s, the one the shipped verifier
    reads."""

    __slots__ = ("_expanded", "_crypto_sign")

    def __init__(self, seed: bytes) -> None:
        super().__init__(seed)
        self._expanded = b""
        self._crypto_sign: Any = None

    def _sign(self, m2: bytes) -> bytes:
        if self._crypto_sign is None:
            # imported at the first signature, as private tokens import OpenSSL's bindings:
            # a deployment that issues no credential need not carry libsodium (peak RSS)
            from nacl.bindings import crypto_sign, crypto_sign_seed_keypair

            # libsodium's 64-byte secret key (seed || public key), made once per key
            self._expanded = crypto_sign_seed_keypair(self.seed)[1]
            self._crypto_sign = crypto_sign
        # crypto_sign answers signature || message: the signature is the first 64 bytes
        return self._crypto_sign(m2, self._expanded)[:64]  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True, repr=False)
class RingKey:
    """A stored key and its key object."""

    row: SigningKeyRow
    secret_key: SecretKey | IssuerKey

    @property
    def key_id(self) -> str:
        return self.row.key_id

    @property
    def public_key(self) -> PublicKey:
        return self.secret_key.public_key  # type: ignore[union-attr]

    @property
    def issuer_key(self) -> IssuerKey:
        assert isinstance(self.secret_key, IssuerKey)
        return self.secret_key

    def signs_at(self, now: int) -> bool:
        row = self.row
        return row.not_before <= now and (row.retired_at is None or now < row.retired_at)

    def __repr__(self) -> str:
        return f"RingKey({self.row!r})"


class KeyKind:
    """How the keys of one purpose are made and read back (credentials: Ed25519)."""

    def generate(self, purpose: str, now: int, not_before: int) -> SigningKeyRow:
        secret = SecretKey.generate()
        return SigningKeyRow(secret.public_key.pid(), purpose, secret.seed,
                             secret.public_key.raw, now, not_before)

    def load(self, row: SigningKeyRow) -> SecretKey:
        """The key object; a row whose public half is not its secret's is refused (a damaged
        or hand-edited row must stop the start, not sign credentials nobody can verify)."""
        key = FastSecretKey(row.secret)
        if key.public_key.raw != row.public or key.public_key.pid() != row.key_id:
            raise RuntimeError(f"the stored signing key {row.key_id} does not match its "
                               "public key; restore the database from a backup")
        return key


class IssuerKeyKind(KeyKind):
    """Privacy Pass issuer keys (token type 2): RSA-2048 in PKCS#8 DER, the public half as
    the SPKI a client sees, the key id the hex of its token key id (RFC 9578 §6.5)."""

    def generate(self, purpose: str, now: int, not_before: int) -> SigningKeyRow:
        return self.row_of(IssuerKey.generate(), purpose, now, not_before)

    @staticmethod
    def row_of(key: IssuerKey, purpose: str, now: int, not_before: int) -> SigningKeyRow:
        token_key = key.token_key
        return SigningKeyRow(token_key.token_key_id.hex(), purpose, key.to_pkcs8(),
                             token_key.spki, now, not_before)

    def load(self, row: SigningKeyRow) -> IssuerKey:  # type: ignore[override]
        key = IssuerKey.from_pkcs8(row.secret)
        if key.token_key.spki != row.public or key.token_key.token_key_id.hex() != row.key_id:
            raise RuntimeError(f"the stored issuer key {row.key_id} does not match its "
                               "public key; restore the database from a backup")
        return key


PRIVATE_TOKEN_PREFIX = "private_token:"
KINDS: dict[str, KeyKind] = {CREDENTIAL: KeyKind()}
_ISSUER_KIND = IssuerKeyKind()


def kind_of(purpose: str) -> KeyKind | None:
    if purpose.startswith(PRIVATE_TOKEN_PREFIX):
        return _ISSUER_KIND
    return KINDS.get(purpose)


class KeyRing:
    """Every stored key of every known purpose, oldest first, and the one that signs now."""

    def __init__(self, storage: Storage, *, clock: Callable[[], int], verify_secs: int,
                 publish_ahead_secs: int) -> None:
        self.storage = storage
        self.clock = clock
        self.verify_secs = verify_secs  # how long a retired key still verifies (the TTL)
        self.publish_ahead_secs = publish_ahead_secs  # a rotated-in key waits this long
        self._keys: dict[str, tuple[RingKey, ...]] = {}
        self.version = 0  # bumped whenever the set changes: verifiers rebuild on it

    async def load(self) -> None:
        """Read the keys; store a first credential key when none is in force (the first
        start of a deployment, or one whose keys were all removed), then read again, so
        whichever instance's key won is the one used."""
        rows = await self.storage.list_signing_keys()
        if not any(row.purpose == CREDENTIAL and row.retired_at is None for row in rows):
            now = self.clock()
            if await self.storage.add_first_signing_key(
                    KINDS[CREDENTIAL].generate(CREDENTIAL, now, now)):
                log.info("generated the first credential signing key")
            rows = await self.storage.list_signing_keys()
        self._replace(rows)

    async def refresh(self) -> None:
        self._replace(await self.storage.list_signing_keys())

    def _replace(self, rows: list[SigningKeyRow]) -> None:
        loaded = {key.row: key for found in self._keys.values() for key in found}
        keys: dict[str, list[RingKey]] = {}
        for row in rows:
            kind = kind_of(row.purpose)
            if kind is not None:  # a purpose a newer release added: not ours to use
                key = loaded.get(row) or RingKey(row, kind.load(row))
                keys.setdefault(row.purpose, []).append(key)
        new = {purpose: tuple(sorted(found, key=lambda k: (k.row.not_before,
                                                           k.row.retired_at is None, k.key_id)))
               for purpose, found in keys.items()}
        if new != self._keys:
            self._keys = new
            self.version += 1

    def items(self) -> list[tuple[str, tuple[RingKey, ...]]]:
        """Every purpose's keys."""
        return list(self._keys.items())

    def keys(self, purpose: str = CREDENTIAL) -> tuple[RingKey, ...]:
        """Every stored key of ``purpose``: what verifies (a retired key until housekeeping
        removes it at its ``expires_at``) and what is published."""
        return self._keys.get(purpose, ())

    def signing_key(self, purpose: str = CREDENTIAL, now: int | None = None) -> RingKey | None:
        """The key that signs at ``now``: started (``not_before``) and not yet retired."""
        moment = self.clock() if now is None else now
        for key in reversed(self._keys.get(purpose, ())):
            if key.signs_at(moment):
                return key
        return None

    async def rotate(self, purpose: str = CREDENTIAL, *, immediately: bool = False,
                     compromised: bool = False) -> RingKey:
        """Store a new key for ``purpose`` and return it.

        By default it is published now and signs from ``publish_ahead_secs`` on (a verifier
        that refetches the key document when its cache expires knows it before it sees it);
        the key in force signs until then and verifies ``verify_secs`` more. ``immediately``
        signs with it at once; ``compromised`` also deletes every previous key, so nothing
        they signed verifies here any more (``keys rotate --compromised``).
        """
        now = self.clock()
        start = now if immediately or compromised else now + self.publish_ahead_secs
        row = KINDS[purpose].generate(purpose, now, start)  # credentials only
        try:
            await self.storage.rotate_signing_key(row, verify_secs=self.verify_secs,
                                                  drop_previous=compromised)
        except BaseException:
            await self._reread_after_unknown_outcome()
            raise
        await self.refresh()
        log.info("rotated the %s signing key: %s signs from %d%s", purpose, row.key_id, start,
                 "; every previous key removed" if compromised else "")
        return next(key for key in self.keys(purpose) if key.key_id == row.key_id)

    async def remove_expired(self) -> int:
        """Delete the keys whose last signature has expired, then re-read (housekeeping)."""
        try:
            removed = await self.storage.remove_expired_signing_keys(self.clock())
        except BaseException:
            await self._reread_after_unknown_outcome()
            raise
        await self.refresh()
        if removed:
            log.info("removed %d signing key(s) whose last signature has expired", removed)
        return removed

    async def _reread_after_unknown_outcome(self) -> None:
        try:
            await self.refresh()
        except Exception:  # noqa: BLE001 - the write's own error is the one to raise
            log.warning("the signing keys could not be re-read after a failed write; "
                        "housekeeping reads them again")
