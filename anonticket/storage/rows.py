"""What storage returns: plain rows whose repr never shows a PID, token or key.

They hold raw secrets (a token, a PID) for the ledger to use, so a stray ``log.info("%r",
row)`` or an exception that captures one must print a placeholder, as ``PaymentId`` and
``ServiceToken`` do.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True, repr=False)
class TokenRow:
    token: bytes
    amount: int  # credited in all, piconero
    issued_at: int
    revoked_at: int | None
    revoke_reason: str | None
    abuse_score: int
    spent: int = 0
    expires_at: int | None = None
    # how many provisional credits it holds (docs/operations.md#provisional-credit): the
    # token is provisional while any is; withdrawn: a withdrawal left it without any credit
    provisional: int = 0
    withdrawn: int = 0

    @property
    def remaining(self) -> int:
        return self.amount - self.spent

    def with_spent(self, spent: int) -> TokenRow:
        """This row after a debit; ``dataclasses.replace`` costs four times as much, once
        per debit of a batch on the writer's thread."""
        return TokenRow(self.token, self.amount, self.issued_at, self.revoked_at,
                        self.revoke_reason, self.abuse_score, spent, self.expires_at,
                        self.provisional, self.withdrawn)

    def status(self, now: int) -> str:
        """``revoked`` wins over ``withdrawn`` (its provisional credit was taken back and
        nothing is left), which wins over ``expired``, which wins over ``active``."""
        if self.revoked_at is not None:
            return "revoked"
        if self.withdrawn:
            return "withdrawn"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"

    def __repr__(self) -> str:
        return (f"TokenRow(<redacted>, amount={self.amount}, spent={self.spent}, "
                f"issued_at={self.issued_at}, expires_at={self.expires_at}, "
                f"revoked_at={self.revoked_at}, provisional={self.provisional}, "
                f"withdrawn={self.withdrawn})")


def is_storable_text(text: str) -> bool:
    """Whether both backends can store ``text``: valid UTF-8 (a lone surrogate is not:
    sqlite3 cannot bind it) without U+0000 (PostgreSQL refuses it in any text; SQLite
    would keep it, so the backends would disagree). Two C calls for ASCII text."""
    if "\0" in text:
        return False
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


# the columns of a TokenRow, in field order, for SELECT and RETURNING
TOKEN_COLUMNS = ("token, amount, issued_at, revoked_at, revoke_reason, abuse_score, spent, "
                 "expires_at, provisional, withdrawn")


@dataclass(frozen=True, slots=True, repr=False)
class ClaimRow:
    """A PID's state after a claim attempt: claimed (now or before) or not claimable."""

    status: int  # 0 unclaimed (underpaid), 1 claimed (redeemed or added to a token by a top-up)
    amount: int
    token: bytes | None
    claimed_now: bool
    record: TokenRow | None = None  # the token's row, when the claim reached it

    def __repr__(self) -> str:
        return (f"ClaimRow(status={self.status}, amount={self.amount}, token=<redacted>, "
                f"claimed_now={self.claimed_now})")


@dataclass(frozen=True, slots=True, repr=False)
class CreditResult:
    credited_pids: list[bytes]  # PIDs that received new credit in this call
    topped_up: dict[bytes, TokenRow]  # token -> its row after this credit, for claimed PIDs
    transfers_credited: int
    # token -> its row as stored after this credit, for every token an incoming PID is
    # claimed onto, whether or not this call changed it: a retry of a credit whose answer
    # was lost changes nothing, yet the ledger must refresh what the first one changed
    stored: dict[bytes, TokenRow] = field(default_factory=dict)

    def __repr__(self) -> str:
        return (f"CreditResult(<{len(self.credited_pids)} PIDs>, <{len(self.topped_up)} tokens>, "
                f"transfers_credited={self.transfers_credited})")


@dataclass(frozen=True, slots=True, repr=False)
class DebitRequest:
    """One debit to apply; ``key`` None is a gateway check's debit (no replay, no record
    of the answer), otherwise the caller's Idempotency-Key. ``final_only``: refuse (403
    ``token_provisional``) while the token holds provisional credit, decided inside the
    debit's transaction (private-token issuance: what it buys cannot be taken back)."""

    token: bytes
    amount: int
    key: str | None = None
    request_digest: bytes = b""
    memo: str | None = None
    final_only: bool = False

    def __repr__(self) -> str:
        return f"DebitRequest(<redacted>, amount={self.amount})"


@dataclass(frozen=True, slots=True, repr=False)
class DebitOutcome:
    """What a debit answered: ``status`` is the HTTP status, ``body`` its JSON fields.

    ``body`` holds raw values (``expires_at`` in unix seconds) so that a replay renders
    exactly as the first answer did. ``replayed`` marks the stored answer of an earlier
    request with the same key; ``record`` is the token's row after this debit (None for
    an unknown token, a conflict or a replay).
    """

    status: int
    body: dict[str, object]
    replayed: bool = False
    record: TokenRow | None = None

    def __repr__(self) -> str:
        return f"DebitOutcome(status={self.status}, replayed={self.replayed})"


@dataclass(frozen=True, slots=True, repr=False)
class TopupOutcome:
    """A top-up's result: ``kind`` is topped_up | pending_or_unknown | underpaid |
    pid_already_claimed | token_not_found | token_revoked."""

    kind: str
    amount: int = 0  # the PID's confirmed total
    record: TokenRow | None = None

    def __repr__(self) -> str:
        return f"TopupOutcome({self.kind}, amount={self.amount})"


@dataclass(frozen=True, slots=True, repr=False)
class ProvisionalResult:
    """A provisional credit's result: the PIDs credited now, how many transfers a cap left
    waiting for confirmations, and the stored rows of the tokens the credited PIDs are
    claimed onto (for the ledger's cache)."""

    credited_pids: list[bytes]
    over_cap: list[bytes]  # txids a cap left waiting for confirmations
    stored: dict[bytes, TokenRow] = field(default_factory=dict)
    transfers_credited: int = 0

    def __repr__(self) -> str:
        return (f"ProvisionalResult(<{len(self.credited_pids)} PIDs>, "
                f"over_cap={len(self.over_cap)})")


@dataclass(frozen=True, slots=True, repr=False)
class WithdrawResult:
    """What a withdrawal took back: piconero per withdrawn transfer (for the metric), what
    debits had already spent of them (never taken back), and the tokens' rows after it."""

    amounts: list[int]
    unrecovered: int
    stored: dict[bytes, TokenRow] = field(default_factory=dict)
    pids: list[bytes] = field(default_factory=list)

    def __repr__(self) -> str:
        return f"WithdrawResult(<{len(self.amounts)} withdrawn>, unrecovered={self.unrecovered})"


# the columns of a SigningKeyRow, in field order
SIGNING_KEY_COLUMNS = "key_id, purpose, secret, public, created_at, not_before, retired_at, expires_at"


@dataclass(frozen=True, slots=True, repr=False)
class SigningKeyRow:
    """One signing key as stored (``signing_keys``): the secret is raw bytes the ledger turns
    into a key object; the repr names the key by its public id and never shows the secret."""

    key_id: str
    purpose: str
    secret: bytes
    public: bytes
    created_at: int
    not_before: int  # when it starts signing (it is published before)
    retired_at: int | None = None  # when the next key took over; None while in force
    expires_at: int | None = None  # when the last thing it signed has expired

    def __repr__(self) -> str:
        return (f"SigningKeyRow({self.key_id!r}, purpose={self.purpose!r}, secret=<redacted>, "
                f"not_before={self.not_before}, retired_at={self.retired_at}, "
                f"expires_at={self.expires_at})")
