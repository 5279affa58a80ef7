"""PASETO v4.public (Ed25519 over a fixed, versioned format) and the PASERK k4 keys it uses.

Written from the specifications, using their names and steps:
- paseto-standard/paseto-spec `docs/01-Protocol-Versions/Version4.md` (Sign, Verify) and
  `Common.md` (PAE; strict base64url): `h` header, `m` message, `f` footer, `i` implicit
  assertion, `m2` the PAE that is signed, `sig`/`s` the 64-byte signature;
- paseto-standard/paserk `types/public.md`, `types/secret.md`, `types/pid.md` and
  `operations/ID.md`: `k4.public.`, `k4.secret.` and the key id `k4.pid.`.

Why by hand: pycryptodome (already the service's one cryptography dependency) does Ed25519; the
format around it is a hundred lines, and a PASETO library would add its own cryptography stack to
the service and to every third-party verifier (`anonticket.crypto.credential` needs pycryptodome
only). Proven by the official vectors and against `pyseto` in tests/crypto/test_paseto_v4.py.

Strict by design: one header (`v4.public.`), canonical unpadded base64url only (no `=`, no
second spelling through non-zero trailing bits), at least a signature's worth of payload, a
footer written only when non-empty. Anything else is a `PasetoError` whose message is fixed per
`code` and never contains the input, so it can be logged or returned as is. Keys are typed (a
`SecretKey` signs, a `PublicKey` verifies; raw bytes are neither), as the spec's "Type Safety
with Cryptographic Keys" asks, and a secret key's repr shows only its public key id.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Iterable, Sequence

from Crypto.PublicKey.ECC import EccKey
from Crypto.Random import get_random_bytes
from Crypto.Signature import eddsa

HEADER = "v4.public."
SIGNATURE_SIZE = 64
KEY_SIZE = 32
PUBLIC_PREFIX = "k4.public."
SECRET_PREFIX = "k4.secret."
PID_PREFIX = "k4.pid."
PID_DIGEST_SIZE = 33  # BLAKE2b-264: 44 base64url characters, no padding (operations/ID.md)

_HEADER_BYTES = HEADER.encode("ascii")
_B64URL = re.compile(r"[A-Za-z0-9_-]*")  # explicit ASCII ranges: str.isalnum() would take Unicode
_LE64_MASK = (1 << 63) - 1  # Common.md: the top bit of every LE64 is cleared


class PasetoError(ValueError):
    """A token or key was refused. `code` says why; the message is fixed for each code.

    Never built from the input: a token is a bearer credential and a PASERK may be key
    material, so neither may reach a log line or a response body through an exception.
    """

    MESSAGES: dict[str, str] = {
        "unsupported_token": "not a v4.public token",
        "malformed_token": "the token is not well formed",
        "invalid_signature": "the token's signature does not verify",
        "footer_mismatch": "the token's footer is not the expected one",
        "invalid_key": "not a valid k4 key",
    }

    def __init__(self, code: str) -> None:
        super().__init__(type(self).MESSAGES[code])
        self.code = code


# ---------------------------------------------------------------------------- Common.md
def b64url_encode(data: bytes) -> str:
    """Base64url (RFC 4648 §5) without `=` padding, as every PASETO and PASERK part is written."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Strict inverse of `b64url_encode` (Common.md, "Base64 Decoding").

    Padding is forbidden and the 2 or 4 trailing bits of a partial group must be clear: the
    re-encoding must give back the very same text, so one byte string has exactly one spelling
    and a token cannot be "re-encoded" into a different string that still verifies.
    """
    if len(text) % 4 == 1 or not _B64URL.fullmatch(text):
        raise PasetoError("malformed_token")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise PasetoError("malformed_token") from None
    if b64url_encode(data) != text:
        raise PasetoError("malformed_token")
    return data


def _le64(n: int) -> bytes:
    return (n & _LE64_MASK).to_bytes(8, "little")


def pae(pieces: Sequence[bytes]) -> bytes:
    """Pre-Authentication Encoding: LE64(count) || Σ (LE64(len(piece)) || piece).

    Every piece carries its length, so no choice of message, footer and implicit assertion can
    be shifted into another with the same signed bytes.
    """
    out = [_le64(len(pieces))]
    for piece in pieces:
        out.append(_le64(len(piece)))
        out.append(piece)
    return b"".join(out)


def _as_bytes(value: bytes | str) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


# ---------------------------------------------------------------------------- PASERK keys
def _paserk_payload(paserk: object, prefix: str, size: int) -> bytes:
    if not isinstance(paserk, str) or not paserk.startswith(prefix):
        raise PasetoError("invalid_key")
    try:
        raw = b64url_decode(paserk[len(prefix):])
    except PasetoError:
        raise PasetoError("invalid_key") from None
    if len(raw) != size:
        raise PasetoError("invalid_key")
    return raw


class PublicKey:
    """An Ed25519 public key for v4.public tokens; PASERK `k4.public.<base64url(32 bytes)>`.

    PASERK is a byte-level format (its vectors include byte strings that are not curve points),
    so construction checks only the length; `check()` validates the point, and `verify` uses a
    key only through it. The curve point is decoded once and kept: decoding is most of the cost
    of a verification's setup.
    """

    __slots__ = ("raw", "_pid", "_ecc")

    def __init__(self, raw: bytes) -> None:
        if not isinstance(raw, (bytes, bytearray)) or len(raw) != KEY_SIZE:
            raise PasetoError("invalid_key")
        self.raw = bytes(raw)
        self._pid: str | None = None
        self._ecc: EccKey | None = None

    @classmethod
    def from_paserk(cls, paserk: str) -> PublicKey:
        """Parse `k4.public.…`; any other version, type or spelling is `invalid_key`."""
        return cls(_paserk_payload(paserk, PUBLIC_PREFIX, KEY_SIZE))

    def to_paserk(self) -> str:
        return PUBLIC_PREFIX + b64url_encode(self.raw)

    def pid(self) -> str:
        """The PASERK key id: `k4.pid.` || base64url(BLAKE2b-264(`k4.pid.` || k4.public PASERK)).

        Derived from the key yet not the key: a footer `kid` selects a key the verifier already
        holds and can never introduce one (paseto-spec, Payload Processing, "Key-ID Support").
        """
        if self._pid is None:
            d = hashlib.blake2b((PID_PREFIX + self.to_paserk()).encode("ascii"),
                                digest_size=PID_DIGEST_SIZE).digest()
            self._pid = PID_PREFIX + b64url_encode(d)
        return self._pid

    def check(self) -> PublicKey:
        """Validate the key as an Ed25519 point of large order; return it for chaining.

        A small-order key (the all-zero one among them) lets anyone forge signatures, so it is
        refused here, where a verifier loads its keys, rather than discovered at a request.
        """
        self._ecc_key()
        return self

    def _ecc_key(self) -> EccKey:
        if self._ecc is None:
            try:
                key = eddsa.import_public_key(self.raw)
            except ValueError:
                raise PasetoError("invalid_key") from None
            if (key.pointQ * 8).is_point_at_infinity():
                raise PasetoError("invalid_key")
            self._ecc = key
        return self._ecc

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PublicKey) and other.raw == self.raw

    def __hash__(self) -> int:
        return hash(self.raw)

    def __repr__(self) -> str:
        return f"PublicKey({self.pid()!r})"


class SecretKey:
    """An Ed25519 signing key (RFC 8032 32-byte seed); PASERK `k4.secret.<base64url(seed || pk)>`.

    Its repr and str name only the public key id. `to_paserk()` is the one way the secret leaves
    the object: for storage that is itself secret, never for a log or a response.
    """

    __slots__ = ("_seed", "_ecc", "public_key")

    def __init__(self, seed: bytes) -> None:
        if not isinstance(seed, (bytes, bytearray)) or len(seed) != KEY_SIZE:
            raise PasetoError("invalid_key")
        self._seed = bytes(seed)
        self._ecc = eddsa.import_private_key(self._seed)
        self.public_key = PublicKey(self._ecc.public_key().export_key(format="raw"))

    @classmethod
    def generate(cls) -> SecretKey:
        return cls(get_random_bytes(KEY_SIZE))

    @classmethod
    def from_paserk(cls, paserk: str) -> SecretKey:
        """Parse `k4.secret.…` (seed || public key, 64 bytes); the public half must be the one
        the seed derives, so a corrupted or spliced stored key is refused, not half used."""
        raw = _paserk_payload(paserk, SECRET_PREFIX, 2 * KEY_SIZE)
        key = cls(raw[:KEY_SIZE])
        if not hmac.compare_digest(key.public_key.raw, raw[KEY_SIZE:]):
            raise PasetoError("invalid_key")
        return key

    def to_paserk(self) -> str:
        return SECRET_PREFIX + b64url_encode(self._seed + self.public_key.raw)

    def _sign(self, m2: bytes) -> bytes:
        """The one place a signature is made. Ed25519 (RFC 8032) is deterministic, so a
        subclass may make it with another implementation and sign the very same bytes: the
        service does, with libsodium (about six times faster), and a test checks that the
        two agree. PAE and the encoding stay here either way."""
        return eddsa.new(self._ecc, "rfc8032").sign(m2)

    @property
    def seed(self) -> bytes:
        """The RFC 8032 secret seed: for storage that is itself secret and for a subclass's
        signing backend, never for a log or a response."""
        return self._seed

    def __repr__(self) -> str:
        return f"<SecretKey for {self.public_key.pid()}>"

    __str__ = __repr__

    def __reduce__(self) -> object:
        raise TypeError("a SecretKey is not pickled: store its PASERK where secrets are kept")


# ---------------------------------------------------------------------------- Version4.md
def sign(secret_key: SecretKey, message: bytes, footer: bytes | str = b"",
         implicit: bytes | str = b"") -> str:
    """Version4.md "Sign": h || base64url(m || sig) [|| "." || base64url(f)]."""
    if not isinstance(secret_key, SecretKey):
        raise TypeError("v4.public tokens are signed with a SecretKey")
    m, f, i = bytes(message), _as_bytes(footer), _as_bytes(implicit)
    sig = secret_key._sign(pae([_HEADER_BYTES, m, f, i]))
    token = HEADER + b64url_encode(m + sig)
    return f"{token}.{b64url_encode(f)}" if f else token


def _parse(token: object) -> tuple[bytes, bytes, bytes]:
    """Split a token into (m, s, f), refusing every form the spec does not write."""
    if isinstance(token, (bytes, bytearray)):
        try:
            token = bytes(token).decode("ascii")
        except UnicodeDecodeError:
            raise PasetoError("malformed_token") from None
    if not isinstance(token, str):
        raise PasetoError("malformed_token")
    if not token.startswith(HEADER):
        raise PasetoError("unsupported_token")  # another version or purpose, or no PASETO at all
    parts = token[len(HEADER):].split(".")
    if len(parts) > 2:
        raise PasetoError("malformed_token")
    payload = b64url_decode(parts[0])
    if len(payload) < SIGNATURE_SIZE:
        raise PasetoError("malformed_token")
    f = b64url_decode(parts[1]) if len(parts) == 2 else b""
    if len(parts) == 2 and not f:
        raise PasetoError("malformed_token")  # an empty footer is written without its dot
    return payload[:-SIGNATURE_SIZE], payload[-SIGNATURE_SIZE:], f


def untrusted_footer(token: str | bytes) -> bytes:
    """The footer of a well-formed token, BEFORE any signature check.

    For key selection only (a `kid`): everything else in it must be distrusted until `verify`
    has passed (paseto-spec, Payload Processing, "Key-ID Support").
    """
    return _parse(token)[2]


def verify(public_keys: PublicKey | Iterable[PublicKey], token: str | bytes,
           implicit: bytes | str = b"", footer: bytes | str | None = None) -> tuple[bytes, bytes]:
    """Version4.md "Verify": return (m, f) if one of the keys signed the token, else raise.

    `footer`, when given, must equal the token's (compared in constant time, step 1). Several
    keys are tried in turn (rotation); select one by the footer's `kid` where there are many.
    """
    keys = (public_keys,) if isinstance(public_keys, PublicKey) else tuple(public_keys)
    if not all(isinstance(key, PublicKey) for key in keys):
        raise TypeError("v4.public tokens are verified with PublicKey objects")
    m, s, f = _parse(token)
    if footer is not None and not hmac.compare_digest(f, _as_bytes(footer)):
        raise PasetoError("footer_mismatch")
    m2 = pae([_HEADER_BYTES, m, f, _as_bytes(implicit)])
    for key in keys:
        try:
            eddsa.new(key._ecc_key(), "rfc8032").verify(m2, s)
        except ValueError as error:
            if isinstance(error, PasetoError):
                raise  # a key that is not a curve point: the verifier's set is wrong, say so
            continue
        return m, f
    raise PasetoError("invalid_signature")
