"""The ledger's side of provisional credit (docs/operations.md#provisional-credit-access-from-the-pool):
credit an unconfirmed payment at once, withdraw it if it fails, and keep the in-memory views
a cache of what that stored. A mixin of ``Ledger`` (views.py), whose views it updates.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

from anonticket.domain.ids import Transfer
from anonticket.storage import ProvisionalResult, WithdrawResult

T = TypeVar("T")


class ProvisionalViews:
    """Uses ``Ledger``'s storage, clock, price and views (``self`` is a ``Ledger``; typed
    ``Any`` here so this module need not import the one that imports it)."""

    # ------------------------------------------------------------------ provisional credit
    async def credit_provisional(self: Any, transfers: Iterable[Transfer], *, max_per_pid: int,
                                 max_outstanding: int) -> ProvisionalResult:
        """Credit unconfirmed transfers at once, within the caps, then refresh the views as
        ``credit`` does (and, like it, shielded from a cancel): the PIDs become known, the
        cached rows of their tokens are replaced. A write that raised may have committed:
        its PIDs are indexed and their tokens' cached rows dropped (issue 20's rule)."""
        transfers = tuple(transfers)
        pids = [t.pid.raw for t in transfers]

        async def write_then_refresh() -> ProvisionalResult:
            try:
                result = await self.storage.credit_provisional(
                    transfers, self.clock(), max_per_pid=max_per_pid,
                    max_outstanding=max_outstanding, price_per_day=self.price_per_day)
            except BaseException:
                self._credit_unknown(pids)
                raise
            finally:
                self._write_version += 1
            self._index_pids(result.credited_pids)
            for token, record in result.stored.items():
                if self._records.get(token) is not None:
                    self._records.put(token, record)
            return result

        return await _shielded(write_then_refresh)

    async def withdraw(self: Any, txids: Iterable[bytes], pids: Iterable[bytes]) -> WithdrawResult:
        """Take provisional credits back out (``pids``: theirs, for the views). The cached
        rows of the tokens they were on are replaced by what is stored, or dropped when
        the outcome is unknown; the negative cache is not touched (a withdrawn unclaimed
        payment is simply gone, and its PID answers as unknown or pending again)."""
        txids, pids = tuple(txids), list(pids)

        async def write_then_refresh() -> WithdrawResult:
            try:
                result = await self.storage.withdraw_provisional(txids, self.clock())
            except BaseException:
                self._credit_unknown(pids)
                raise
            finally:
                self._write_version += 1
            for token, record in result.stored.items():
                self._records.pop(token)
                self._records.put(token, record)
            return result

        return await _shielded(write_then_refresh)

async def _shielded(work: Callable[[], Awaitable[T]]) -> T:
    """Run ``work`` (a write and its cache refresh) as one shielded task: a cancel waits for
    it before it propagates, so a COMMIT that lands is never left out of the views (see
    ``Ledger.credit``)."""
    task = asyncio.ensure_future(work())
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        while not task.done():
            try:
                await asyncio.wait((task,))
            except asyncio.CancelledError:
                pass
        if not task.cancelled():
            task.exception()
        raise
