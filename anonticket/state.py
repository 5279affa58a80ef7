"""The one object both listeners and the monitor share (no module globals)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from anonticket.config import Config
from anonticket.ledger import Ledger
from anonticket.merchant import Merchant
from anonticket.metrics import Metrics


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


@dataclass
class State:
    config: Config
    metrics: Metrics
    ledger: Ledger
    monitor: MonitorStatus
    merchant: Merchant = field(default_factory=Merchant)
