"""The ``monero:`` payment URI a wallet scans. No I/O; amounts come from ``amount``.
"""

from __future__ import annotations

from anonticket.domain.amount import DECIMALS, MAX_PICONERO, PICONERO_PER_XMR, format_xmr, parse_xmr

__all__ = ["DECIMALS", "MAX_PICONERO", "PICONERO_PER_XMR", "format_xmr", "parse_xmr", "payment_uri"]


def payment_uri(address: str, piconero: int | None = None) -> str:
    """``monero:<address>[?tx_amount=<XMR>]``; the address is base58, so it needs no escaping."""
    if piconero is None:
        return f"monero:{address}"
    return f"monero:{address}?tx_amount={format_xmr(piconero)}"
