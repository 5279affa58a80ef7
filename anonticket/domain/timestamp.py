"""The service's time horizon and its RFC 3339 stamps: pure, no I/O.

A price lets a payment buy time, and a wallet reports any amount: at one piconero a day,
one XMR buys 86.4 quadrillion seconds, past what ``time.gmtime`` formats (so every answer
naming the expiry failed) and, from about 107 XMR, past a signed 64-bit column (so the
credit failed, and with it every later poll). Two bounds keep every stored time small:

- ``MAX_CREDIT_SECONDS``, 100 years: the most one credit buys (a transfer, a PID's sum, a
  top-up); nobody sells access for longer, and the excess payment still counts in the
  token's balance;
- ``MAX_TIMESTAMP``, 9999-12-31T23:59:59Z: no expiry passes it; the last second RFC 3339's
  four-digit year can write, and far from any overflow in the sums SQL makes of it.

``ACCESS_PRICE_PER_DAY`` is refused at start when ``MONITOR_MIN_PAYMENT_AMOUNT`` would buy
more than ``MAX_CREDIT_SECONDS`` (a price too low to be meant) or less than one second.
"""

from __future__ import annotations

import time

SECONDS_PER_DAY = 86400
MAX_CREDIT_SECONDS = 100 * 365 * SECONDS_PER_DAY
MAX_TIMESTAMP = 253_402_300_799  # 9999-12-31T23:59:59Z


def format_rfc3339(unix_seconds: int) -> str:
    """``2025-01-31T12:00:00Z``. A stored time beyond the horizon (written before the cap
    existed) prints as the horizon, and one before 1970 as 1970: never an error."""
    clamped = min(max(int(unix_seconds), 0), MAX_TIMESTAMP)
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(clamped))
