"""The checkout's subaddress allocations (CHECKOUT_ADDRESS_MODE=subaddress), on SQLite.

A row ties an index of the wallet account to the receipt's PID (a one-way hash of the
receipt, which is never stored). The primary key (account, idx) is the proof that no index
is recorded twice, whatever two instances or two concurrent checkouts do: the wallet hands
out increasing indexes, and a second record of one is refused here, not overwritten.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from anonticket.storage.core import StorageCore, chunks, marks


@dataclass(frozen=True, slots=True, repr=False)
class Allocation:
    account: int
    index: int
    pid: bytes
    address: str
    created_at: int
    expires_at: int

    def __repr__(self) -> str:  # the address and the PID identify a payment
        return f"Allocation(account={self.account}, index={self.index}, <redacted>)"


class SubaddressStore(StorageCore):
    async def record_subaddress(self, allocation: Allocation) -> bool:
        """Record one allocation; False (and nothing written) if its (account, index) or its
        PID is already recorded."""
        a = allocation
        async with self._transaction() as db:
            rows = await db.execute_fetchall(
                """INSERT INTO subaddresses (account, idx, pid, address, created_at, expires_at)
                   VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING RETURNING idx""",
                (a.account, a.index, a.pid, a.address, a.created_at, a.expires_at))
        return bool(rows)

    async def count_unpaid_subaddresses(self, now: int) -> int:
        """Allocations not expired at ``now`` whose PID has no credited payment yet."""
        rows = await self._read(
            """SELECT count(*) FROM subaddresses AS s
               WHERE s.expires_at > ? AND NOT EXISTS (SELECT 1 FROM payments AS p WHERE p.pid = s.pid)""",
            (now,))
        return rows[0][0]

    async def subaddress_pids(self, account: int, indexes: Sequence[int]) -> dict[int, bytes]:
        """The PID of each recorded index of ``account`` among ``indexes``."""
        out: dict[int, bytes] = {}
        for chunk in chunks(sorted(set(indexes))):
            rows = await self._read(
                f"SELECT idx, pid FROM subaddresses WHERE account = ? AND idx IN ({marks(len(chunk))})",
                (account, *chunk))
            out.update((idx, bytes(pid)) for idx, pid in rows)
        return out

    async def subaddress_of(self, pid: bytes) -> str | None:
        """The subaddress allocated for ``pid`` (a status page shows it again), if any."""
        rows = await self._read("SELECT address FROM subaddresses WHERE pid = ?", (pid,))
        return rows[0][0] if rows else None

    async def highest_subaddress(self, account: int) -> tuple[int, str] | None:
        """The highest allocated index of ``account`` and its address: what a restored
        wallet's lookahead must reach."""
        rows = await self._read(
            "SELECT idx, address FROM subaddresses WHERE account = ? ORDER BY idx DESC LIMIT 1",
            (account,))
        return (rows[0][0], rows[0][1]) if rows else None
