"""The one object both listeners and the monitor share (no module globals)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from anonticket.config import Config
from anonticket.ledger.views import Ledger
from anonticket.monero.merchant import Merchant
from anonticket.monero.subaddresses import SubaddressAllocator
from anonticket.runtime.metrics import Metrics


@dataclass
class MonitorStatus:
    """What readiness needs to know about the wallet monitor.

    Times are monotonic. Start-up counts as grace: until the first success, the age
    is measured from when the monitor started.
    """

    enabled: bool
    started_at: float = field(default_factory=time.monotonic)
    last_success: float | None = None
    last_error: str | None = None
    wallet_height: int | None = None
    scanned_height: int | None = None
    # an operator's rescan request (POST /api/v1/monitor/rescan), waiting for the next poll;
    # the API only records it, so the monitor stays the one writer of the cursor
    rescan_from: int | None = None
    # the subaddress restore check (monero/subaddresses.py ``wallet_knows``): the highest
    # allocated index, and whether the wallet knows it (None: not checked or could not tell)
    subaddress_highest: int | None = None
    subaddress_known: bool | None = None

    def request_rescan(self, from_height: int) -> int:
        """Ask the monitor to re-read from ``from_height`` before its next poll; returns the
        height it will re-read from (two requests before that poll: the lower one wins)."""
        if self.rescan_from is None or from_height < self.rescan_from:
            self.rescan_from = from_height
        return self.rescan_from

    def take_rescan(self) -> int | None:
        """The waiting request, if any, now owned by the caller (the monitor)."""
        height, self.rescan_from = self.rescan_from, None
        return height

    def problem(self, max_age: float, now: float | None = None) -> str | None:
        if not self.enabled:
            return None
        now = time.monotonic() if now is None else now
        since = self.last_success if self.last_success is not None else self.started_at
        age = now - since
        if age <= max_age:
            return None
        what = self.last_error or "no answer yet"
        return f"no successful wallet poll for {age:.0f}s (last error: {what})"


@dataclass(frozen=True)
class WebhookControl:
    """What the admin routes may ask of the webhook sender, which they cannot import
    (api and the sender are one layer): wake it, and send a signed test ping."""

    wake: Callable[[], None]
    ping: Callable[[], Awaitable[dict[str, Any]]]


@dataclass
class State:
    config: Config
    metrics: Metrics
    ledger: Ledger
    monitor: MonitorStatus
    webhooks: WebhookControl | None = None  # None while WEBHOOK_URL is empty
    # False while another instance on the same PostgreSQL database is the active one
    # (anonticket/service/leadership.py): the API then answers 503 (api/standby.py)
    active: bool = True
    merchant: Merchant = field(default_factory=Merchant)
    # set when CHECKOUT_ADDRESS_MODE=subaddress: /pay allocates through it
    subaddresses: SubaddressAllocator | None = None
