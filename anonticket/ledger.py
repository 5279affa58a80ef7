"""Redeem, introspection and crediting, with in-memory views kept coherent with SQLite.

This process is the only writer of its database, so what it caches can only change
through the methods below, which update the caches after each commit. Three views
keep the hot paths off SQLite:

- ``KeyIndex`` of every stored PID and token prefix: an unknown one is answered 404
  without a query (a prefix hit still asks the database);
- bounded maps PID → token and token → record for claimed PIDs, filled on first use;
- the pending view (PIDs the wallet shows unconfirmed), replaced by each monitor poll.

Concurrent claims are grouped: while one batch is in SQLite, new ones queue for the
next, so N concurrent redeems cost one transaction, not N.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, replace

from anonticket.cache import BoundedMap, TtlSet
from anonticket.domain import PaymentId, ServiceToken, Transfer
from anonticket.errors import PaymentNotFound, TokenNotFound, Underpaid
from anonticket.key_index import KeyIndex
from anonticket.storage import ClaimRow, CreditResult, Storage, TokenRow, unix_now

log = logging.getLogger("anonticket.ledger")

_MAX_CLAIM_BATCH = 256
_RECORD_CACHE_CAPACITY = 200_000


@dataclass(frozen=True, slots=True)
class Claimed:
    status: str  # "success" | "already_claimed"
    token: bytes
    balance: int


@dataclass(frozen=True, slots=True)
class Pending:
    confirmations: int
    required: int


class ClaimBatcher:
    """Groups concurrent claims into one storage call per batch."""

    def __init__(self, run: Callable[[list[bytes]], Awaitable[Mapping[bytes, ClaimRow]]]) -> None:
        self._run = run
        self._queue: dict[bytes, list[asyncio.Future[ClaimRow | None]]] = {}
        self._worker: asyncio.Task[None] | None = None

    async def claim(self, pid: bytes) -> tuple[ClaimRow | None, bool]:
        """Returns the PID's row and whether THIS caller is the one that claimed it."""
        future: asyncio.Future[ClaimRow | None] = asyncio.get_running_loop().create_future()
        waiters = self._queue.setdefault(pid, [])
        waiters.append(future)
        first_in_batch = len(waiters) == 1
        if self._worker is None:
            self._worker = asyncio.create_task(self._drain())
        row = await future
        return row, first_in_batch and row is not None and row.claimed_now

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch = dict(list(self._queue.items())[:_MAX_CLAIM_BATCH])
                for pid in batch:
                    del self._queue[pid]
                try:
                    rows = await self._run(list(batch))
                except BaseException as exc:
                    for futures in batch.values():
                        for future in futures:
                            if not future.done():
                                future.set_exception(exc)
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    continue
                for pid, futures in batch.items():
                    for future in futures:
                        if not future.done():
                            future.set_result(rows.get(pid))
        finally:
            self._worker = None
            for futures in self._queue.values():  # only left if we were cancelled
                for future in futures:
                    if not future.done():
                        future.cancel()


class _AskStorage:
    """``Ledger.redeem_from_memory``'s "memory cannot tell": the claim must reach SQLite."""


ASK_STORAGE = _AskStorage()


class Ledger:
    def __init__(
        self,
        storage: Storage,
        *,
        min_payment: int,
        min_confirmations: int,
        negative_cache: TtlSet[bytes],
        on_negative_cache_hit: Callable[[], None] = lambda: None,
        clock: Callable[[], int] = unix_now,
    ) -> None:
        self.storage = storage
        self.min_payment = min_payment
        self.min_confirmations = min_confirmations
        self.negative_cache = negative_cache
        self._on_negative_cache_hit = on_negative_cache_hit
        self._clock = clock
        self._known_pids = KeyIndex()
        self._known_tokens = KeyIndex()
        self._claimed: BoundedMap[bytes, tuple[bytes, int]] = BoundedMap(_RECORD_CACHE_CAPACITY)
        self._records: BoundedMap[bytes, TokenRow] = BoundedMap(_RECORD_CACHE_CAPACITY)
        self._pending: dict[bytes, int] = {}
        # bumped after every commit that changes a cached record, so a read that raced
        # with a write does not put the stale row it read into the cache
        self._write_version = 0
        self._claims = ClaimBatcher(self._claim_batch)

    async def load(self) -> None:
        """Build the prefix indexes from the database (start-up)."""
        self._known_pids.replace(await self.storage.load_pid_prefixes())
        self._known_tokens.replace(await self.storage.load_token_prefixes())
        log.info("loaded %d payments and %d tokens", len(self._known_pids), len(self._known_tokens))

    # ------------------------------------------------------------------ redeem
    async def redeem(self, pid: PaymentId) -> Claimed | Pending:
        answer = await self.redeem_or_none(pid)
        if answer is None:
            raise PaymentNotFound()
        return answer

    async def redeem_or_none(self, pid: PaymentId) -> Claimed | Pending | None:
        """``redeem``, with None for an unknown PID: in a flood of random PIDs raising
        and catching the 404 cost more than finding out (docs/benchmarks.md)."""
        answer = self.redeem_from_memory(pid.raw)
        if answer is ASK_STORAGE:
            return await self.redeem_from_storage(pid.raw)
        return answer  # type: ignore[return-value]

    def redeem_from_memory(self, raw: bytes) -> Claimed | Pending | None | _AskStorage:
        """What memory alone can answer (already claimed, pending, certainly unknown), or
        ``ASK_STORAGE``; synchronous, so the hot answers cost no coroutine."""
        claimed = self._claimed.get(raw)
        if claimed is not None:
            return Claimed("already_claimed", *claimed)
        pending = self._pending.get(raw)
        if pending is None and raw in self.negative_cache:
            self._on_negative_cache_hit()
            return None
        if not self._known_pids.might_contain(raw):
            # nothing credited yet: answer from memory, no SQLite round trip
            if pending is not None:
                return Pending(pending, self.min_confirmations)
            self._remember_unknown(raw)
            return None
        return ASK_STORAGE

    async def redeem_from_storage(self, raw: bytes) -> Claimed | Pending | None:
        """The rest of ``redeem_or_none``, after ``redeem_from_memory`` said ``ASK_STORAGE``."""
        pending = self._pending.get(raw)
        row, won = await self._claims.claim(raw)
        if row is not None and row.status == 1 and row.token is not None:
            return Claimed("success" if won else "already_claimed", row.token, row.amount)
        if pending is not None or (pending := self._pending.get(raw)) is not None:
            return Pending(pending, self.min_confirmations)
        if row is None:
            self._remember_unknown(raw)
            return None
        raise Underpaid(balance=row.amount, minimum=self.min_payment)

    def _remember_unknown(self, raw: bytes) -> None:
        self.negative_cache.add(raw)

    async def _claim_batch(self, pids: list[bytes]) -> Mapping[bytes, ClaimRow]:
        now = self._clock()
        try:
            rows = await self.storage.claim_payments(pids, self.min_payment, now)
        finally:
            self._write_version += 1
        # no await from here on: the caches are updated before any other write can start
        for pid, row in rows.items():
            if row.status == 1 and row.token is not None:
                if row.claimed_now:
                    self._known_tokens.add(row.token)
                    self._records.put(row.token, TokenRow(row.token, row.amount, now, None, None, 0))
                self._claimed.put(pid, (row.token, row.amount))
        return rows

    # ------------------------------------------------------------------ tokens
    async def introspect(self, token: ServiceToken) -> TokenRow:
        record = await self.find_token(token)
        if record is None:
            raise TokenNotFound()
        return record

    def cached_token(self, raw: bytes) -> TokenRow | None:
        """The record if this process has it in memory; None says nothing either way."""
        return self._records.get(raw)

    def token_certainly_unknown(self, raw: bytes) -> bool:
        """True when no issued token has this one's prefix: a 404 without I/O."""
        return not self._known_tokens.might_contain(raw)

    async def find_token(self, token: ServiceToken) -> TokenRow | None:
        """``introspect``, with None for an unknown token (no exception on the hot 404)."""
        raw = token.raw
        record = self._records.get(raw)
        if record is not None:
            return record
        if not self._known_tokens.might_contain(raw):
            return None
        version = self._write_version
        record = await self.storage.get_token(raw)
        if record is None:
            return None
        if version == self._write_version:
            self._records.put(raw, record)
        return record

    async def revoke(
        self, token: ServiceToken, reason: str | None, abuse_score: int | None
    ) -> TokenRow:
        try:
            record = await self.storage.revoke_token(token.raw, reason, abuse_score, self._clock())
        finally:
            self._write_version += 1
            self._records.pop(token.raw)
        if record is None:
            raise TokenNotFound()
        self._records.put(token.raw, record)
        return record

    # ------------------------------------------------------------------ monitor
    @property
    def pending_view(self) -> Mapping[bytes, int]:
        return self._pending

    def set_pending(self, pending: Mapping[bytes, int]) -> list[bytes]:
        """Replace the pending view; returns the PIDs that were not pending before."""
        new = [pid for pid in pending if pid not in self._pending]
        self._pending = dict(pending)
        for pid in new:
            self.negative_cache.discard(pid)
        return new

    async def credit(self, transfers: Iterable[Transfer], scanned_height: int | None) -> CreditResult:
        """Credit confirmed transfers and move the cursor atomically, then refresh the views.

        The write and the refresh run as one shielded task, and a cancel (the monitor
        stopping) waits for it before it propagates. aiosqlite commits on its own thread,
        so a cancel arriving during the COMMIT stops only the await, not the commit: the
        credit would be in the database but not in the views, and its PID answered 404
        from memory until a restart. The wait is that one write at most, bounded like any
        write by the write lock and the busy timeout.
        """

        async def write_then_refresh() -> CreditResult:
            try:
                result = await self.storage.credit_transfers(transfers, scanned_height, self._clock())
            finally:
                self._write_version += 1
            self._known_pids.add_many(result.credited_pids)
            discard = self.negative_cache.discard
            for pid in result.credited_pids:
                discard(pid)
            for pid, (token, amount) in result.topped_up.items():
                if self._claimed.get(pid) is not None:
                    self._claimed.put(pid, (token, amount))
                record = self._records.get(token)
                if record is not None:
                    self._records.put(token, replace(record, amount=amount))
            return result

        work = asyncio.ensure_future(write_then_refresh())
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            while not work.done():
                try:
                    await asyncio.wait((work,))  # a wait, unlike an await, never cancels work
                except asyncio.CancelledError:
                    pass  # cancelled again: still the same answer, after the write
            if not work.cancelled():
                work.exception()  # retrieved: a failed write was rolled back, the cancel wins
            raise
