"""Active/passive on PostgreSQL: every instance starts and serves /health and /metrics, the
one holding the leader lock is active (serves the API, runs the monitor and housekeeping),
the others stand by and answer 503 with Retry-After, which nginx and Onionbalance read as
"ask the other one".

A start/stop pair like the monitor. Standing by, it tries the lock every
``check_secs``; active, it checks the lock as often, and also wakes the moment the lock's
connection reports its end, or a write of its term is fenced out (another instance took
over: the epoch says so, whatever the lock check would answer). On any doubt it steps down
first (stops serving and stops the monitor) and releases the lock after, so at no moment
does it serve without the lock it believes it has. Taking over bumps the fencing epoch
before anything else, which waits for the previous leader's writes in flight and refuses
its later ones; then ``on_elected`` builds fresh in-memory views from the database: the
previous leader's writes never passed through this process's caches, and none can land
after the load.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress

from anonticket.domain.errors import StorageUnavailable
from anonticket.runtime.state import State
from anonticket.storage.postgres.core import PostgresCore
from anonticket.storage.postgres.leader import LeaderLock, take_over

log = logging.getLogger("anonticket.leadership")

DEFAULT_CHECK_SECS = 1.0


class Leadership:
    def __init__(
        self, state: State, storage: PostgresCore, lock: LeaderLock, *,
        on_elected: Callable[[], Awaitable[None]], on_deposed: Callable[[], Awaitable[None]],
        check_secs: float = DEFAULT_CHECK_SECS,
    ) -> None:
        self.state = state
        self._storage = storage
        self._lock = lock
        self._on_elected = on_elected
        self._on_deposed = on_deposed
        self._check_secs = check_secs
        self.terms = 0  # how many times this instance became active
        self.step_downs = 0
        self._hold_off = 0  # rounds to sit out after stepping down
        self.became_active_at: float | None = None  # monotonic, for the takeover drills

    async def attempt(self) -> None:
        """One round: check the lock if active (stepping down if it is gone), else try to
        take it. ``start_service`` runs one before it returns, so a lone instance starts
        active. A deposed instance lets two rounds pass before it tries again: a healthy
        peer (polling every round) should win, and if there is none it costs two rounds."""
        if self.state.active:
            if self._storage.fenced_out.is_set():
                await self.step_down("another instance took over (a write was fenced out)")
                self._hold_off = 2
                return
            if await self._lock.still_held():
                return
            await self.step_down("the leader lock is no longer held")
            self._hold_off = 2
            return
        if self._hold_off:
            self._hold_off -= 1
            return
        if await self._lock.try_acquire():
            await self._become_active()

    async def run(self) -> None:
        """Rounds forever, every ``check_secs`` (see ``attempt``); the stop is a cancel."""
        try:
            while True:
                await self._wait()
                await self.attempt()
        finally:
            # on cancel (shutdown) or a bug: stop serving before the lock goes
            with suppress(Exception):
                await asyncio.shield(self.step_down("stopping"))

    async def _wait(self) -> None:
        """Sleep ``check_secs``, or less when the lock's connection ends or a write is
        fenced out meanwhile."""
        if not self.state.active:
            await asyncio.sleep(self._check_secs)
            return
        waits = [asyncio.ensure_future(self._lock.lost.wait()),
                 asyncio.ensure_future(self._storage.fenced_out.wait())]
        try:
            await asyncio.wait(waits, timeout=self._check_secs,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()

    async def _become_active(self) -> None:
        try:
            epoch = await take_over(self._storage)
            await self._on_elected()
        except StorageUnavailable:
            log.warning("taking over failed: the database is unavailable; standing by")
            await self._abandon()
            return
        except BaseException:
            await self._abandon()
            raise
        self.state.active = True
        self.terms += 1
        self.became_active_at = time.monotonic()
        self.state.metrics.active.set(1)
        log.info("this instance is now active (fencing epoch %d)", epoch)

    async def _abandon(self) -> None:
        with suppress(Exception):
            await self._on_deposed()
        await self._lock.release()

    async def step_down(self, why: str) -> None:
        was_active = self.state.active
        self.state.active = False
        self.state.metrics.active.set(0)
        if was_active:
            self.step_downs += 1
            log.warning("standing by: %s", why)
        # the storage keeps its (now stale) fencing epoch: should anything still try to
        # write, it rolls back; the next takeover fences it with a new one
        try:
            await self._on_deposed()
        finally:
            await self._lock.release()
