"""XMR amounts as exact text and integer piconero. No I/O.

Amounts are exact decimals: a customer who types ``0.1`` must be asked for exactly
100000000000 piconero, which binary floating point cannot promise, so text goes
through ``Decimal`` straight to integer piconero and back. Settings (prices) and the
command line parse amounts with the same rules.
"""

from __future__ import annotations

import re
from decimal import Decimal

PICONERO_PER_XMR = 10**12
DECIMALS = 12
# a transfer amount is a uint64 of piconero in Monero's wire format
MAX_PICONERO = 2**64 - 1
_AMOUNT = re.compile(r"[0-9]+(?:\.[0-9]+)?")


def parse_xmr(text: str) -> int:
    """``"0.05"`` → 50000000000 piconero; ValueError (a fixed message) for anything else.

    Only plain decimal notation is accepted: no sign, exponent, spaces, ``nan`` or
    ``inf``, which ``Decimal`` alone would let through.
    """
    if not isinstance(text, str) or not _AMOUNT.fullmatch(text):
        raise ValueError("amount must be a decimal number of XMR such as 0.05")
    _, _, fraction = text.partition(".")
    if len(fraction) > DECIMALS:
        raise ValueError(f"amount has more than {DECIMALS} decimals (1 piconero = 1e-12 XMR)")
    piconero = int(Decimal(text) * PICONERO_PER_XMR)
    if piconero <= 0:
        raise ValueError("amount must be greater than zero")
    if piconero > MAX_PICONERO:
        raise ValueError("amount is larger than one Monero transfer can carry")
    return piconero


def format_xmr(piconero: int) -> str:
    """Shortest exact decimal text: 50000000000 → ``"0.05"``, 10**12 → ``"1"``."""
    whole, fraction = divmod(piconero, PICONERO_PER_XMR)
    if not fraction:
        return str(whole)
    return f"{whole}.{fraction:0{DECIMALS}d}".rstrip("0")
