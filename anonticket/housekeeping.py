"""Background chores that must never run on a request's path: forgetting old
Idempotency-Key answers. A start/stop pair like the monitor, with its own backoff."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from anonticket.errors import StorageUnavailable
from anonticket.state import State

log = logging.getLogger("anonticket.housekeeping")

# often enough that the table holds about one TTL plus an hour of keys, rarely enough to
# cost nothing; a failed prune is retried on the next round
PRUNE_INTERVAL_SECS = 3600.0


class Housekeeper:
    def __init__(self, state: State, *,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.state = state
        self._sleep = sleep

    async def prune_once(self) -> int:
        ledger = self.state.ledger
        cutoff = ledger.clock() - self.state.config.debit_idempotency_ttl_secs
        pruned = await ledger.storage.prune_idempotency_keys(cutoff)
        if pruned:
            log.info("forgot %d idempotency keys older than the retention period", pruned)
        return pruned

    async def run(self) -> None:
        # the first round waits too: start-up (and the monitor's first credit) goes first,
        # and keys younger than the retention period have nothing to prune anyway
        while True:
            await self._sleep(PRUNE_INTERVAL_SECS)
            try:
                await self.prune_once()
            except StorageUnavailable:
                pass  # storage already logged it; the next round retries
            except Exception as exc:  # noqa: BLE001 - a bug must not end the task silently
                log.error("housekeeping failed (%s)", type(exc).__name__)
