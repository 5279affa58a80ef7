"""Background chores that must never run on a request's path: noticing expired tokens
(their ``token.expired`` events), removing the signing keys whose last signature has expired
(and re-reading the key ring), forgetting old Idempotency-Key answers and delivered webhook
events. A start/stop pair like the monitor, with its own backoff."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from anonticket.domain.errors import StorageUnavailable
from anonticket.runtime.state import State

log = logging.getLogger("anonticket.housekeeping")

# often enough that the table holds about one TTL plus an hour of keys, rarely enough to
# cost nothing; a failed prune is retried on the next round
PRUNE_INTERVAL_SECS = 3600.0
# how late a token.expired may be: the sweep is a read on a partial index that is empty
# unless some token's time ran out, so a short interval costs nothing
EXPIRY_SWEEP_INTERVAL_SECS = 10.0


class Housekeeper:
    def __init__(self, state: State, *,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.state = state
        self._sleep = sleep
        self._monotonic = monotonic

    async def prune_once(self) -> int:
        ledger = self.state.ledger
        cutoff = ledger.clock() - self.state.config.debit_idempotency_ttl_secs
        pruned = await ledger.storage.prune_idempotency_keys(cutoff)
        if pruned:
            log.info("forgot %d idempotency keys older than the retention period", pruned)
        webhooks = ledger.clock() - self.state.config.webhook_retention_secs
        forgotten = await ledger.storage.prune_webhook_events(webhooks)
        if forgotten:
            log.info("forgot %d delivered webhook events older than the retention period",
                     forgotten)
        return pruned

    async def sweep_expired(self) -> int:
        """Mark every token whose time ran out (with its event while webhooks are on),
        in bounded transactions; returns how many."""
        storage, now = self.state.ledger.storage, self.state.ledger.clock()
        total = 0
        while marked := await storage.notice_expired_tokens(now):
            total += marked
        return total

    async def tend_keys(self) -> int:
        """Remove the signing keys nothing they signed can still be presented with, and
        read the ring again (a cheap read: it also repairs the view after a key write whose
        outcome was unknown); returns how many were removed."""
        credentials = self.state.ledger.credentials
        if credentials is None:
            return 0
        return await credentials.ring.remove_expired()

    async def run(self) -> None:
        # the first round waits too: start-up (and the monitor's first credit) goes first
        last_prune = self._monotonic()
        while True:
            await self._sleep(EXPIRY_SWEEP_INTERVAL_SECS)
            await self._guarded(self.sweep_expired)
            await self._guarded(self.tend_keys)
            now = self._monotonic()
            if now - last_prune >= PRUNE_INTERVAL_SECS:
                last_prune = now
                await self._guarded(self.prune_once)

    async def _guarded(self, chore: Callable[[], Awaitable[int]]) -> None:
        try:
            await chore()
        except StorageUnavailable:
            pass  # storage already logged it; the next round retries
        except Exception as exc:  # noqa: BLE001 - a bug must not end the task silently
            log.error("housekeeping failed (%s)", type(exc).__name__)
