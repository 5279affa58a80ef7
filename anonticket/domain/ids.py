"""Payment IDs, receipts, service tokens and the derivations between them. No I/O.

These values are the only secrets of the system, so their ``repr``/``str`` never
show the value: a stray ``log.info("%s", pid)`` or an exception that captures one
prints a placeholder, and only an explicit ``.hex()`` reveals it.

A **receipt** is 32 random bytes only the customer holds. The PID it pays to is a
one-way hash of it, and the token of its payment hashes the receipt with the txid, so
the payer's side (an exchange, a wallet's history), which sees the PID inside the
integrated address and knows the txid, can neither claim the payment nor compute its
token. A bare PID (one not derived from a receipt) keeps the older derivation,
``SHA3-256("<pid hex>|<txid hex>")``. Exact derivations and vectors: docs/security.md.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field

from Crypto.Hash import SHA3_256

from anonticket.domain.errors import InvalidPid, InvalidReceipt, InvalidToken

SHORT_PID_BYTES = 8
LONG_PID_BYTES = 32
TOKEN_BYTES = 32
TXID_BYTES = 32
RECEIPT_BYTES = 32
_PADDING = bytes(LONG_PID_BYTES - SHORT_PID_BYTES)
# domain separation: the PID and the token of one receipt are hashes no other use shares
RECEIPT_PID_TAG = b"anonticket/pid/v1"
RECEIPT_TOKEN_TAG = b"anonticket/token/v1"
# the checkout shows a receipt as eight groups of eight hex digits joined by this
RECEIPT_GROUP_SEPARATOR = "-"
_RECEIPT_SEPARATORS = ("-", " ")
_GROUPED_RECEIPT_CHARS = 2 * RECEIPT_BYTES + 7


def _exact_hex(text: str) -> bytes | None:
    """The bytes of ``text`` if it is nothing but hex digits, else None.

    One C call (the monitor parses two per wallet entry, 100k a poll): ``fromhex``
    rejects every non-hex character except ASCII whitespace, which it skips, so
    exactly half as many bytes as characters means there was none.
    """
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        return None
    return raw if 2 * len(raw) == len(text) else None


@dataclass(frozen=True, slots=True, repr=False)
class PaymentId:
    """A Monero payment ID, stored as the wallet keeps it: 32 bytes, short ones zero-padded.

    ``is_short`` means an 8-byte ID, the only kind current wallets can send (through
    an integrated address, encrypted on chain). Long IDs travelled in clear text and
    can be front-run, so they are accepted only when the operator opts in.
    """

    raw: bytes

    @classmethod
    def parse(cls, text: object, *, accept_long: bool = False) -> PaymentId:
        """Parse 16 or 64 hex characters exactly as given (no trimming).

        Raises InvalidPid, whose message never contains the input.
        """
        if not isinstance(text, str) or len(text) not in (16, 64):
            raise InvalidPid()
        raw = _exact_hex(text)
        if raw is None:
            raise InvalidPid()
        if len(raw) == SHORT_PID_BYTES:
            raw += _PADDING
        pid = cls(raw)
        if not any(raw):
            # every plain or subaddress payment carries the zero PID: accepting it
            # would let anyone redeem other people's money
            raise InvalidPid()
        if not pid.is_short and not accept_long:
            raise InvalidPid("long (64 hex) payment IDs are not accepted by this service")
        return pid

    @classmethod
    def from_bytes(cls, raw: bytes) -> PaymentId:
        if len(raw) != LONG_PID_BYTES:
            raise InvalidPid()
        return cls(bytes(raw))

    @classmethod
    def generate(cls) -> PaymentId:
        """A fresh random short PID; retries the (2^-64) all-zero draw."""
        while True:
            short = secrets.token_bytes(SHORT_PID_BYTES)
            if any(short):
                return cls(short + _PADDING)

    @property
    def is_short(self) -> bool:
        return self.raw[SHORT_PID_BYTES:] == _PADDING

    def hex(self) -> str:
        """Canonical text: 16 lowercase hex for short PIDs, 64 for long ones."""
        return (self.raw[:SHORT_PID_BYTES] if self.is_short else self.raw).hex()

    def __repr__(self) -> str:
        return "PaymentId(<redacted>)"

    __str__ = __repr__


@dataclass(frozen=True, slots=True, repr=False)
class ServiceToken:
    """The bearer secret a customer gets for a redeemed payment."""

    raw: bytes

    @classmethod
    def parse(cls, text: object) -> ServiceToken:
        raw = _exact_hex(text) if isinstance(text, str) and len(text) == 2 * TOKEN_BYTES else None
        if raw is None:
            raise InvalidToken()
        return cls(raw)

    def hex(self) -> str:
        return self.raw.hex()

    def __repr__(self) -> str:
        return "ServiceToken(<redacted>)"

    __str__ = __repr__


def receipt_pid(receipt: bytes) -> bytes:
    """The raw (zero-padded, 32-byte) short PID a receipt pays to: the first 8 bytes of
    ``SHA3-256("anonticket/pid/v1" || receipt)``. ``hashlib``'s SHA3 (OpenSSL) costs
    half of pycryptodome's on 49 bytes, and redeem by receipt pays it on every request."""
    return hashlib.sha3_256(RECEIPT_PID_TAG + receipt).digest()[:SHORT_PID_BYTES] + _PADDING


@dataclass(frozen=True, slots=True, repr=False)
class Receipt:
    """The customer's secret of a payment: 32 random bytes, never stored by the service.

    Two receipts are equal when their bytes are, so one can key a batch of claims.
    """

    raw: bytes
    # the PID's raw bytes, hashed once: a claim asks for it several times on its way
    pid_raw: bytes = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pid_raw", receipt_pid(self.raw))

    @classmethod
    def parse(cls, text: object) -> Receipt:
        """64 hex digits (either case), or the grouping the checkout shows: eight groups
        of eight separated by single '-' (or single spaces, as one writes it down). Nothing
        else, not even surrounding blanks. Raises InvalidReceipt, which never holds the
        input."""
        if not isinstance(text, str):
            raise InvalidReceipt()
        if len(text) == _GROUPED_RECEIPT_CHARS:
            separator = text[8]
            groups = text.split(separator) if separator in _RECEIPT_SEPARATORS else []
            if len(groups) != 8 or any(len(group) != 8 for group in groups):
                raise InvalidReceipt()
            text = "".join(groups)
        raw = _exact_hex(text) if len(text) == 2 * RECEIPT_BYTES else None
        if raw is None:
            raise InvalidReceipt()
        return cls.from_bytes(raw)

    @classmethod
    def from_bytes(cls, raw: bytes) -> Receipt:
        """A receipt whose PID is the zero PID (a chance of 2^-64) is refused like the
        zero PID itself: every payment without a PID carries it."""
        receipt = cls(bytes(raw)) if len(raw) == RECEIPT_BYTES else None
        if receipt is None or not any(receipt.pid_raw):
            raise InvalidReceipt()
        return receipt

    @classmethod
    def generate(cls) -> Receipt:
        """A fresh receipt from ``secrets``; retries the (2^-64) draw whose PID is zero."""
        while True:
            receipt = cls(secrets.token_bytes(RECEIPT_BYTES))
            if any(receipt.pid_raw):
                return receipt

    @property
    def pid(self) -> PaymentId:
        """The short PID this receipt pays to (inside the integrated address)."""
        return PaymentId(self.pid_raw)

    def hex(self) -> str:
        """64 lowercase hex digits: what the command line prints."""
        return self.raw.hex()

    def grouped(self) -> str:
        """Eight groups of eight hex digits joined by '-': what the checkout shows."""
        text = self.raw.hex()
        return RECEIPT_GROUP_SEPARATOR.join(text[i:i + 8] for i in range(0, len(text), 8))

    def __repr__(self) -> str:
        return "Receipt(<redacted>)"

    __str__ = __repr__


def derive_receipt_token(receipt: bytes, txid: bytes) -> ServiceToken:
    """``SHA3-256("anonticket/token/v1" || receipt || txid)``, the txid as its 32 raw bytes:
    the token of a payment claimed with its receipt. The same payment always yields the
    same token (a retry is safe), and nobody without the receipt can compute it."""
    return ServiceToken(hashlib.sha3_256(RECEIPT_TOKEN_TAG + receipt + txid).digest())


def derive_service_token(pid: PaymentId, txid_text: str) -> ServiceToken:
    """SHA3-256 over ``canonical_pid_text|txid_text``.

    The txid text is taken verbatim (the wallet reports lowercase hex), so the same
    payment always yields the same token, which makes a redeem retry-safe.
    """
    digest = SHA3_256.new((pid.hex() + "|" + txid_text).encode()).digest()
    return ServiceToken(digest)


SUBADDRESS_TRANSFER_TAG = b"anonticket/subaddress-transfer/v1"


def subaddress_transfer_id(txid: bytes, account: int, index: int) -> bytes:
    """``SHA3-256("anonticket/subaddress-transfer/v1" || txid || account u32le || index u32le)``:
    what a transfer to an allocated subaddress is stored (and its token derived) under, in
    the place of its txid.

    One transaction can pay several customers' subaddresses at once (an exchange batching
    withdrawals): each output is its own payment, but they share the txid, which keys the
    transfers table. Keyed by this id instead, each is stored once, a re-read of the block
    finds the same id (so re-ingestion stays harmless), and the receipt's token
    ``SHA3-256("anonticket/token/v1" || receipt || id)`` stays out of reach of whoever sent it.
    """
    return hashlib.sha3_256(SUBADDRESS_TRANSFER_TAG + txid + account.to_bytes(4, "little")
                            + index.to_bytes(4, "little")).digest()


def parse_txid(text: object) -> bytes:
    """A wallet txid: 64 hex characters. Raises ValueError with a fixed message."""
    raw = _exact_hex(text) if isinstance(text, str) and len(text) == 2 * TXID_BYTES else None
    if raw is None:
        raise ValueError("txid must be 64 hex characters")
    return raw


@dataclass(frozen=True, slots=True, repr=False)
class Transfer:
    """One confirmed incoming wallet transfer, validated, ready to be credited."""

    txid: bytes
    pid: PaymentId
    amount: int
    height: int

    def __repr__(self) -> str:
        return f"Transfer(<redacted>, amount={self.amount}, height={self.height})"


def key_prefix(raw: bytes) -> int:
    """The first 8 bytes as an unsigned int: the in-memory index key of a PID or token."""
    return int.from_bytes(raw[:8], "big")


def _pseudonym(domain: bytes, token: bytes) -> str:
    # a token is 256 random bits: its SHA-256 under a fixed domain tag cannot be inverted,
    # and the tag keeps one pseudonym from being computed from another
    return hashlib.sha256(domain + b"\x00" + token).hexdigest()[:32]


def token_id(token: bytes) -> str:
    """The token's name in webhooks and internal introspection: stable, and the token
    cannot be recovered from it, so a backend can key its records on it without holding
    the bearer secret."""
    return _pseudonym(b"anonticket token id v1", token)


def token_subject(token: bytes) -> str:
    """The pseudonym the gateway hands a protected service: stable across restarts, not
    the bearer secret, and different from ``token_id`` so the service's logs and the
    webhook receiver's records cannot be joined without the operator's help."""
    return _pseudonym(b"anonticket subject v1", token)
