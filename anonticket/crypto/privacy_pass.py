"""Privacy Pass token type 0x0002 (Blind RSA 2048): RFC 9578 §6 over RFC 9577.

The binary wire formats and the three roles, with nothing of HTTP:

- the issuer (``IssuerKey``): decodes a ``TokenRequest``, checks its type, size and truncated
  key id (each a 422 in RFC 9578 §6.2), blind-signs it, answers a ``TokenResponse``;
- the client: ``create_token_request`` from a challenge and the issuer's ``TokenKey``, then
  ``finalize_token`` with the response, which yields a ``Token`` it can spend;
- the origin: ``verify_token`` with the issuer's public key, offline.

``TokenChallenge`` and ``Token`` are RFC 9577's structures (§2.1, §2.2); their HTTP header
values and the issuer directory (RFC 9578 §4) are in ``privacy_pass_http``. A key is named by its
``token_key_id``: SHA-256 of its SubjectPublicKeyInfo with the id-RSASSA-PSS OID and the PSS
parameters spelled out (RFC 9578 §6.5), the only encoding of the key a client ever sees.

Every decoder raises only ``PrivacyPassError`` subclasses, whose ``code`` the API layer maps to a
422 (or to a 401 for a bad token); their messages are fixed and never carry the input.
"""

from __future__ import annotations

import hashlib
import secrets
import struct
from dataclasses import dataclass, field

from Crypto.PublicKey import RSA
from Crypto.PublicKey.RSA import RsaKey
from Crypto.Util.asn1 import DerBitString, DerInteger, DerObjectId, DerSequence

from anonticket.crypto import blind_rsa

TOKEN_TYPE = 0x0002  # Blind RSA (2048-bit)
NK = 256  # bytes of a blinded message, a blind signature and an authenticator
NID = 32  # bytes of a token key id
NONCE_LEN = 32
MODULUS_BITS = 2048
REQUEST_MEDIA_TYPE = "application/private-token-request"
RESPONSE_MEDIA_TYPE = "application/private-token-response"

_RSASSA_PSS = "1.2.840.113549.1.1.10"
_SHA384 = "2.16.840.1.101.3.4.2.2"
_MGF1 = "1.2.840.113549.1.1.8"
_MAX_U16 = 0xFFFF


class PrivacyPassError(ValueError):
    """Base of the format errors; ``code`` is the API's error code, the message is fixed."""

    code = "malformed_message"
    message = "malformed Privacy Pass message"

    def __init__(self) -> None:
        super().__init__(self.message)


class MalformedMessage(PrivacyPassError):
    """Wrong size, a bad structure, bad base64url or a bad header (RFC 9578: 422)."""


class UnsupportedTokenType(PrivacyPassError):
    code = "unsupported_token_type"
    message = "unsupported token type"


class UnknownTokenKey(PrivacyPassError):
    code = "unknown_token_key"
    message = "unknown token key"


class InvalidTokenKey(PrivacyPassError):
    code = "invalid_token_key"
    message = "not an RSASSA-PSS SHA-384 2048-bit token key"


class InvalidToken(PrivacyPassError):
    code = "invalid_token"
    message = "token signature does not verify"


# --- the token key (RFC 9578 §6.5) ----------------------------------------------------------

# AlgorithmIdentifier { id-RSASSA-PSS, RSASSA-PSS-params { [0] sha384, [1] mgf1(sha384),
# [2] saltLength 48 } }, the hash parameters omitted as RFC 9578 §6.5 requires
_PSS_ALGORITHM = DerSequence([
    DerObjectId(_RSASSA_PSS),
    DerSequence([
        DerSequence([DerObjectId(_SHA384)], explicit=0),
        DerSequence([DerObjectId(_MGF1), DerSequence([DerObjectId(_SHA384)])], explicit=1),
        DerInteger(blind_rsa.SALT_LEN, explicit=2),
    ]),
]).encode()


def encode_spki(key: RsaKey) -> bytes:
    """The DER SubjectPublicKeyInfo of a token key, with the id-RSASSA-PSS OID."""
    rsa_public_key = DerSequence([key.n, key.e]).encode()
    return DerSequence([_PSS_ALGORITHM, DerBitString(rsa_public_key)]).encode()


def decode_spki(spki: bytes) -> RsaKey:
    """The public key of an RSASSA-PSS SPKI; only the exact encoding RFC 9578 names passes."""
    try:
        outer = DerSequence().decode(spki, strict=True)
        if len(outer) != 2 or outer[0] != _PSS_ALGORITHM:
            raise InvalidTokenKey()
        key_der = DerBitString().decode(outer[1], strict=True).value
        n, e = DerSequence().decode(key_der, strict=True, nr_elements=2, only_ints_expected=True)
        key = RSA.construct((n, e))
    except PrivacyPassError:
        raise
    except (ValueError, TypeError, IndexError, EOFError):
        raise InvalidTokenKey() from None
    if key.n.bit_length() != MODULUS_BITS or encode_spki(key) != spki:
        raise InvalidTokenKey()
    return key


@dataclass(frozen=True, eq=False)
class TokenKey:
    """An issuer's public key for type 0x0002, with its SPKI and token_key_id."""

    public_key: RsaKey = field(repr=False)
    spki: bytes = field(repr=False)
    token_key_id: bytes

    @classmethod
    def from_public_key(cls, key: RsaKey) -> TokenKey:
        if key.n.bit_length() != MODULUS_BITS:
            raise InvalidTokenKey()
        public = key.public_key()
        spki = encode_spki(public)
        return cls(public, spki, hashlib.sha256(spki).digest())

    @classmethod
    def from_spki(cls, spki: bytes) -> TokenKey:
        return cls(decode_spki(spki), bytes(spki), hashlib.sha256(spki).digest())

    @property
    def truncated_token_key_id(self) -> int:
        """The last byte of the key id, all a TokenRequest carries (RFC 9578 §6.1)."""
        return self.token_key_id[-1]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TokenKey) and other.spki == self.spki

    def __hash__(self) -> int:
        return hash(self.spki)


# --- messages -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenChallenge:
    """RFC 9577 §2.1.1. ``origin_info`` is the list the wire joins with commas."""

    issuer_name: str
    redemption_context: bytes = b""
    origin_info: tuple[str, ...] = ()
    token_type: int = TOKEN_TYPE

    def encode(self) -> bytes:
        issuer = self.issuer_name.encode("ascii")
        origins = ",".join(self.origin_info).encode("ascii")
        if (
            not 0 <= self.token_type <= _MAX_U16
            or not 1 <= len(issuer) <= _MAX_U16
            or len(self.redemption_context) not in (0, 32)
            or len(origins) > _MAX_U16
            or any(not name or "," in name for name in self.origin_info)
        ):
            raise MalformedMessage()
        return b"".join([
            struct.pack("!HH", self.token_type, len(issuer)), issuer,
            struct.pack("!B", len(self.redemption_context)), self.redemption_context,
            struct.pack("!H", len(origins)), origins,
        ])

    @classmethod
    def decode(cls, data: bytes) -> TokenChallenge:
        reader = _Reader(data)
        token_type = reader.u16()
        issuer = reader.take(reader.u16())
        context = reader.take(reader.u8())
        origins = reader.take(reader.u16())
        reader.end()
        try:
            issuer_name, origin_text = issuer.decode("ascii"), origins.decode("ascii")
        except UnicodeDecodeError:
            raise MalformedMessage() from None
        origin_info = tuple(origin_text.split(",")) if origin_text else ()
        if not issuer_name or len(context) not in (0, 32) or "" in origin_info:
            raise MalformedMessage()
        return cls(issuer_name, context, origin_info, token_type)


@dataclass(frozen=True)
class TokenRequest:
    """RFC 9578 §6.1: u16 token_type, u8 truncated_token_key_id, blinded_msg[Nk]."""

    truncated_token_key_id: int
    blinded_msg: bytes
    token_type: int = TOKEN_TYPE

    def encode(self) -> bytes:
        return struct.pack("!HB", self.token_type, self.truncated_token_key_id) + self.blinded_msg

    @classmethod
    def decode(cls, data: bytes) -> TokenRequest:
        """The type is checked first, so a request of another type says so, whatever its size."""
        if len(data) >= 2 and struct.unpack_from("!H", data)[0] != TOKEN_TYPE:
            raise UnsupportedTokenType()
        if len(data) != 3 + NK:
            raise MalformedMessage()
        return cls(data[2], bytes(data[3:]))


@dataclass(frozen=True)
class TokenResponse:
    """RFC 9578 §6.2: blind_sig[Nk]."""

    blind_sig: bytes

    def encode(self) -> bytes:
        return self.blind_sig

    @classmethod
    def decode(cls, data: bytes) -> TokenResponse:
        if len(data) != NK:
            raise MalformedMessage()
        return cls(bytes(data))


def token_input(nonce: bytes, challenge_digest: bytes, token_key_id: bytes) -> bytes:
    """What the issuer blind-signs and the origin verifies (RFC 9578 §6.1, §6.4)."""
    if len(nonce) != NONCE_LEN or len(challenge_digest) != 32 or len(token_key_id) != NID:
        raise MalformedMessage()
    return struct.pack("!H", TOKEN_TYPE) + nonce + challenge_digest + token_key_id


@dataclass(frozen=True)
class Token:
    """RFC 9577 §2.2: token_type, nonce[32], challenge_digest[32], token_key_id[32],
    authenticator[Nk]. The nonce is what an origin's spent-set keeps."""

    nonce: bytes
    challenge_digest: bytes
    token_key_id: bytes
    authenticator: bytes
    token_type: int = TOKEN_TYPE

    SIZE = 2 + NONCE_LEN + 32 + NID + NK

    @property
    def token_input(self) -> bytes:
        return token_input(self.nonce, self.challenge_digest, self.token_key_id)

    def encode(self) -> bytes:
        return struct.pack("!H", self.token_type) + self.nonce + self.challenge_digest \
            + self.token_key_id + self.authenticator

    @classmethod
    def decode(cls, data: bytes) -> Token:
        if len(data) >= 2 and struct.unpack_from("!H", data)[0] != TOKEN_TYPE:
            raise UnsupportedTokenType()
        if len(data) != cls.SIZE:
            raise MalformedMessage()
        data = bytes(data)
        return cls(data[2:34], data[34:66], data[66:98], data[98:])


class _Reader:
    """Reads a TLS-presentation struct front to back; short input is malformed."""

    def __init__(self, data: bytes) -> None:
        self._data, self._pos = bytes(data), 0

    def take(self, length: int) -> bytes:
        if self._pos + length > len(self._data):
            raise MalformedMessage()
        self._pos += length
        return self._data[self._pos - length : self._pos]

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def end(self) -> None:
        if self._pos != len(self._data):
            raise MalformedMessage()


# --- the three roles ------------------------------------------------------------------------


class IssuerKey:
    """An issuer's private key and its TokenKey. Its repr shows no key material."""

    def __init__(self, private_key: RsaKey) -> None:
        if not private_key.has_private():
            raise TypeError("an issuer key is a private key")
        self._private_key = private_key
        self.token_key = TokenKey.from_public_key(private_key)

    @classmethod
    def generate(cls) -> IssuerKey:
        return cls(RSA.generate(MODULUS_BITS))

    @classmethod
    def from_pkcs8(cls, der: bytes) -> IssuerKey:
        """Load the DER PKCS#8 form ``to_pkcs8`` wrote (what storage keeps)."""
        try:
            key = RSA.import_key(der)
        except (ValueError, IndexError, TypeError):
            raise ValueError("not an RSA private key in PKCS#8 DER") from None
        return cls(key)

    def to_pkcs8(self) -> bytes:
        return self._private_key.export_key("DER", pkcs=8)

    def issue(self, request: TokenRequest) -> TokenResponse:
        """RFC 9578 §6.2: check the request is for this key, then BlindSign it.

        A blinded message of the right size but not below n is malformed (422) too. A
        ``blind_rsa.SigningFailure`` (the fault check) is an internal error, not the client's.
        """
        if request.token_type != TOKEN_TYPE:
            raise UnsupportedTokenType()
        if request.truncated_token_key_id != self.token_key.truncated_token_key_id:
            raise UnknownTokenKey()
        try:
            return TokenResponse(blind_rsa.blind_sign(self._private_key, request.blinded_msg))
        except (blind_rsa.UnexpectedInputSize, blind_rsa.MessageOutOfRange):
            raise MalformedMessage() from None

    def __repr__(self) -> str:
        return f"IssuerKey(token_key_id={self.token_key.token_key_id.hex()[:8]}…)"


@dataclass(frozen=True, repr=False)
class PendingToken:
    """The client's secret between request and response: ``inv`` links the two, so it lives
    only in the client's memory and is dropped once the token is finalized."""

    token_key: TokenKey
    token_input: bytes
    inv: int


def challenge_digest(challenge: bytes) -> bytes:
    """SHA-256 of the TokenChallenge bytes exactly as the origin sent them."""
    return hashlib.sha256(challenge).digest()


def create_token_request(challenge: bytes, token_key: TokenKey) -> tuple[TokenRequest, PendingToken]:
    """RFC 9578 §6.1: a request for one token answering ``challenge`` (its encoded bytes)."""
    return _create_token_request(challenge, token_key, secrets.token_bytes(NONCE_LEN),
                                 secrets.token_bytes(blind_rsa.SALT_LEN),
                                 secrets.randbelow(token_key.public_key.n - 1) + 1)


def _create_token_request(challenge: bytes, token_key: TokenKey, nonce: bytes, salt: bytes,
                          r: int) -> tuple[TokenRequest, PendingToken]:
    """The steps with nonce, salt and r given: only tests fix them (the RFC 9578 vectors)."""
    if TokenChallenge.decode(challenge).token_type != TOKEN_TYPE:
        raise UnsupportedTokenType()
    message = token_input(nonce, challenge_digest(challenge), token_key.token_key_id)
    blinded_msg, inv = blind_rsa._blind(token_key.public_key, message, salt, r)
    request = TokenRequest(token_key.truncated_token_key_id, blinded_msg)
    return request, PendingToken(token_key, message, inv)


def finalize_token(pending: PendingToken, response: TokenResponse) -> Token:
    """RFC 9578 §6.3: unblind and verify; a response that does not verify raises InvalidToken."""
    try:
        authenticator = blind_rsa.finalize(pending.token_key.public_key, pending.token_input,
                                           response.blind_sig, pending.inv)
    except blind_rsa.BlindRSAError:
        raise InvalidToken() from None
    message = pending.token_input
    return Token(message[2:34], message[34:66], message[66:98], authenticator)


def verify_token(token: Token, token_key: TokenKey) -> None:
    """RFC 9578 §6.4: the signature, offline, with the issuer's public key.

    The origin still has to check ``token.challenge_digest`` against the challenges it
    accepts and keep ``token.nonce`` in its spent-set: neither is the key's business.
    """
    if token.token_type != TOKEN_TYPE:
        raise UnsupportedTokenType()
    if not secrets.compare_digest(token.token_key_id, token_key.token_key_id):
        raise UnknownTokenKey()
    try:
        blind_rsa.verify(token_key.public_key, token.token_input, token.authenticator)
    except blind_rsa.BlindRSAError:
        raise InvalidToken() from None
