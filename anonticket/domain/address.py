"""Monero address codec: base58 in 8-byte blocks, Keccak-256 checksum. No I/O.

The service hands each customer an integrated address (the operator's primary
address with the customer's payment ID inside), so it must build them exactly
as the wallet does without a round trip to wallet-rpc. An integrated address
reveals its payment ID to anyone who can decode it, so it is as secret as the
PID: no message here ever contains the input, and ``MoneroAddress`` does not
show the payment ID in its ``repr``.

The decoder checks the encoding (alphabet, blocks, length, prefix, checksum) but
not that the keys are points on the curve, which the wallet also checks: keys
with a valid checksum come from a wallet in practice, and an Ed25519 check is not
worth its weight here.

Regtest has no prefixes of its own: it uses the mainnet ones, so a regtest
address decodes as ``mainnet``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from Crypto.Hash import keccak

from anonticket.domain.ids import SHORT_PID_BYTES, PaymentId
from anonticket.domain.errors import InvalidPid

ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_INDEX = {c: i for i, c in enumerate(ALPHABET)}
_BLOCK_BYTES = 8
_BLOCK_CHARS = 11
# characters taken by a block of n bytes; Monero pads every block to this width
# (unlike Bitcoin's base58), which keeps the output length a function of the input length
_ENCODED_CHARS = (0, 2, 3, 5, 6, 7, 9, 10, 11)
_DECODED_BYTES = {chars: n for n, chars in enumerate(_ENCODED_CHARS) if n}

KEY_BYTES = 32
CHECKSUM_BYTES = 4
NETWORKS = ("mainnet", "testnet", "stagenet")
KINDS = ("standard", "integrated", "subaddress")
# (network, kind) -> prefix, from cryptonote_config.h. Every value is below 128,
# so its varint is the byte itself and a first byte >= 128 can only be unknown.
_PREFIXES = {
    ("mainnet", "standard"): 18,
    ("mainnet", "integrated"): 19,
    ("mainnet", "subaddress"): 42,
    ("testnet", "standard"): 53,
    ("testnet", "integrated"): 54,
    ("testnet", "subaddress"): 63,
    ("stagenet", "standard"): 24,
    ("stagenet", "integrated"): 25,
    ("stagenet", "subaddress"): 36,
}
_BY_PREFIX = {prefix: key for key, prefix in _PREFIXES.items()}
_BODY_BYTES = {
    "standard": 1 + 2 * KEY_BYTES,
    "subaddress": 1 + 2 * KEY_BYTES,
    "integrated": 1 + 2 * KEY_BYTES + SHORT_PID_BYTES,
}
# text lengths of the two possible byte lengths (69 -> 95, 77 -> 106); checked
# before decoding so huge inputs cost nothing
_TEXT_LENGTHS = frozenset(
    n // _BLOCK_BYTES * _BLOCK_CHARS + _ENCODED_CHARS[n % _BLOCK_BYTES]
    for n in (body + CHECKSUM_BYTES for body in _BODY_BYTES.values())
)

_BAD_CHARACTER = "text contains a character outside the Monero base58 alphabet"
_BAD_BLOCK = "base58 text ends in a block of impossible length"
_OVERFLOW = "a base58 block encodes a value too large for its byte count"
_BAD_LENGTH = "address has the wrong length"
_BAD_CHECKSUM = "address checksum does not match (mistyped address?)"
_UNKNOWN_PREFIX = "address has an unknown network prefix"
_NOT_PRIMARY = "integrated addresses are built from a primary address"
_BAD_PID = "payment id must be exactly 16 hex characters and not all zero"


class AddressError(ValueError):
    """An address or base58 text was refused; the message is one of the fixed strings above."""


def base58_encode(data: bytes) -> str:
    out = []
    for start in range(0, len(data), _BLOCK_BYTES):
        block = data[start : start + _BLOCK_BYTES]
        num = int.from_bytes(block, "big")
        chars = []
        for _ in range(_ENCODED_CHARS[len(block)]):
            num, digit = divmod(num, 58)
            chars.append(ALPHABET[digit])
        out.append("".join(reversed(chars)))
    return "".join(out)


def base58_decode(text: str) -> bytes:
    """Inverse of ``base58_encode``; refuses any text it could not have produced."""
    if not isinstance(text, str) or any(c not in _INDEX for c in text):
        raise AddressError(_BAD_CHARACTER)
    tail = len(text) % _BLOCK_CHARS
    if tail and tail not in _DECODED_BYTES:
        raise AddressError(_BAD_BLOCK)
    out = bytearray()
    for start in range(0, len(text), _BLOCK_CHARS):
        chunk = text[start : start + _BLOCK_CHARS]
        num = 0
        for c in chunk:
            num = num * 58 + _INDEX[c]
        size = _DECODED_BYTES[len(chunk)]
        # 11 base58 digits reach 58^11 > 2^64: without this check two texts
        # would decode to the same bytes and the wallet would reject both
        if num >> (8 * size):
            raise AddressError(_OVERFLOW)
        out += num.to_bytes(size, "big")
    return bytes(out)


def _checksum(body: bytes) -> bytes:
    # the original Keccak padding, as Monero uses it; SHA3-256 gives other bytes
    return keccak.new(digest_bits=256, data=body).digest()[:CHECKSUM_BYTES]


@dataclass(frozen=True, slots=True, repr=False)
class MoneroAddress:
    """A decoded address; construct one only with valid fields (checked here)."""

    network: str
    kind: str
    spend_key: bytes
    view_key: bytes
    payment_id: bytes | None = None

    def __post_init__(self) -> None:
        if (self.network, self.kind) not in _PREFIXES:
            raise ValueError("network or kind is not one Monero defines")
        if len(self.spend_key) != KEY_BYTES or len(self.view_key) != KEY_BYTES:
            raise ValueError("public keys must be 32 bytes")
        if (self.kind == "integrated") != (self.payment_id is not None):
            raise ValueError("a payment id belongs to integrated addresses only")
        if self.payment_id is not None and len(self.payment_id) != SHORT_PID_BYTES:
            raise ValueError("an integrated address carries an 8-byte payment id")

    def encode(self) -> str:
        body = bytes([_PREFIXES[self.network, self.kind]]) + self.spend_key + self.view_key
        if self.payment_id is not None:
            body += self.payment_id
        return base58_encode(body + _checksum(body))

    def standard_address(self) -> str | None:
        """The primary address these keys form, as wallet-rpc's ``split_integrated_address``
        gives it for an integrated one; None for a subaddress (its keys are derived ones)."""
        if self.kind == "subaddress":
            return None
        return MoneroAddress(self.network, "standard", self.spend_key, self.view_key).encode()

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of ``anonticket address decode``."""
        return {
            "network": self.network,
            "kind": self.kind,
            "public_spend_key": self.spend_key.hex(),
            "public_view_key": self.view_key.hex(),
            "payment_id": None if self.payment_id is None else self.payment_id.hex(),
            "standard_address": self.standard_address(),
        }

    def __repr__(self) -> str:
        return f"MoneroAddress({self.network}, {self.kind})"

    __str__ = __repr__


def decode_address(text: str) -> MoneroAddress:
    """Parse an address exactly as given (no trimming); raises only AddressError."""
    if not isinstance(text, str):
        raise AddressError(_BAD_CHARACTER)
    if len(text) not in _TEXT_LENGTHS:
        raise AddressError(_BAD_LENGTH)
    data = base58_decode(text)
    network_kind = _BY_PREFIX.get(data[0])
    if network_kind is None:
        raise AddressError(_UNKNOWN_PREFIX)
    network, kind = network_kind
    body, checksum = data[:-CHECKSUM_BYTES], data[-CHECKSUM_BYTES:]
    if len(body) != _BODY_BYTES[kind]:
        raise AddressError(_BAD_LENGTH)
    if checksum != _checksum(body):
        raise AddressError(_BAD_CHECKSUM)
    end = 1 + 2 * KEY_BYTES
    return MoneroAddress(
        network=network,
        kind=kind,
        spend_key=body[1 : 1 + KEY_BYTES],
        view_key=body[1 + KEY_BYTES : end],
        payment_id=body[end:] if kind == "integrated" else None,
    )


def make_integrated_address(address: str, pid16_hex: str) -> str:
    """The integrated address wallet-rpc would build from a primary address and a short PID.

    Subaddresses (and integrated addresses) are refused, as wallet-rpc refuses
    them: Monero defines no integrated form of a subaddress. Unlike wallet-rpc,
    the all-zero PID is refused too: it is what every payment without a PID
    carries, so it could never identify one customer.
    """
    primary = decode_address(address)
    if primary.kind != "standard":
        raise AddressError(_NOT_PRIMARY)
    if not isinstance(pid16_hex, str) or len(pid16_hex) != 2 * SHORT_PID_BYTES:
        raise AddressError(_BAD_PID)
    try:
        pid = PaymentId.parse(pid16_hex)
    except InvalidPid:
        raise AddressError(_BAD_PID) from None
    return MoneroAddress(
        network=primary.network,
        kind="integrated",
        spend_key=primary.spend_key,
        view_key=primary.view_key,
        payment_id=pid.raw[:SHORT_PID_BYTES],
    ).encode()
