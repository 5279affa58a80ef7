"""What a redeem answers, as values: claimed (with the token's record), pending, or "memory
cannot tell" (``ASK_STORAGE``). Shared by the ledger that makes them and the handlers that
render them; a claimed answer holds the token, so it prints as ``<redacted>``.
"""

from __future__ import annotations

from dataclasses import dataclass

from anonticket.storage import TokenRow


@dataclass(frozen=True, slots=True, repr=False)
class Claimed:
    status: str  # "success" | "already_claimed"
    token: bytes
    record: TokenRow

    @property
    def balance(self) -> int:
        """What was credited in all (the name the redeem answer has always used)."""
        return self.record.amount

    def __repr__(self) -> str:
        return f"Claimed({self.status}, <redacted>)"


@dataclass(frozen=True, slots=True)
class Pending:
    confirmations: int
    required: int


class AskStorage:
    """``Ledger.redeem_from_memory``'s "memory cannot tell": the claim must reach SQLite."""


ASK_STORAGE = AskStorage()
