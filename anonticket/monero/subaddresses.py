"""Subaddress checkouts (CHECKOUT_ADDRESS_MODE=subaddress): one fresh subaddress of the
wallet per payment, allocated through the wallet so it watches every index handed out.

An integrated address carries its PID inside the transaction, which a sender batching
several payments (an exchange) cannot do; a subaddress needs no payment ID, so anyone can
pay it. The price is state before payment: an allocation row. It is bounded three ways —
a global token bucket (over Tor there is no client identity to limit by, so the rate is
for everyone at once), a cap on unpaid, unexpired allocations, and allocations are serial
within the process (so the cap is a count, not a race). The row holds the receipt's PID,
a one-way hash of it, never the receipt.

``wallet_knows`` is the restore check: a wallet restored from keys recognises outputs only
to the subaddresses its lookahead table covers, so payments to a higher allocated index
would go unseen. It asks the wallet whether it knows the highest allocated address.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from anonticket.config import Config
from anonticket.domain.address import AddressError, decode_address
from anonticket.domain.errors import StorageUnavailable
from anonticket.domain.ids import PaymentId
from anonticket.monero.wallet_rpc import WalletError, WalletRpc, WalletRpcFault
from anonticket.storage import Allocation, Storage

log = logging.getLogger("anonticket.subaddresses")

# a burst of this many seconds' worth of allocations is allowed at once
BURST_SECONDS = 10
# an index recorded by another instance already (a takeover): ask the wallet again
_RECORD_ATTEMPTS = 3


class AllocationRefused(Exception):
    """No subaddress was allocated; ``reason`` is an ALLOCATION_OUTCOMES word."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up; ``take`` spends one or says no."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate, self._burst, self._clock = rate, burst, clock
        self._tokens, self._at = burst, clock()

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


def check_subaddress(text: object, network: str) -> str:
    """``text`` if it is a subaddress of ``network``, else WalletError (never quoting it)."""
    try:
        decoded = decode_address(text)  # type: ignore[arg-type]
    except AddressError:
        raise WalletError("create_address", "address missing or not an address") from None
    if decoded.kind != "subaddress" or decoded.network != network:
        raise WalletError("create_address", "not a subaddress of MONERO_NETWORK")
    return text  # type: ignore[return-value]  # decoded: a str


class SubaddressAllocator:
    """Allocates one subaddress per subaddress checkout; ``start``/``aclose`` own its wallet
    connection (its own, so a checkout never queues behind the monitor's long poll)."""

    def __init__(self, config: Config, storage: Storage, wallet: WalletRpc | None = None, *,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self._config, self._storage = config, storage
        self._wallet = wallet or WalletRpc(
            config.monero_rpc_url, timeout=config.monero_rpc_timeout_secs,
            user=config.monero_rpc_user, password=config.monero_rpc_password)
        rate = config.subaddress_allocations_per_sec
        self._bucket = TokenBucket(rate, max(1.0, rate * BURST_SECONDS), clock)
        self._wall_clock = wall_clock
        self._lock = asyncio.Lock()

    @property
    def account(self) -> int:
        return self._config.subaddress_account

    async def start(self) -> None:
        await self._wallet.start()

    async def aclose(self) -> None:
        await self._wallet.close()

    async def allocate(self, pid: PaymentId) -> str:
        """A fresh subaddress recorded against ``pid``; AllocationRefused otherwise."""
        if not self._bucket.take():
            raise AllocationRefused("rate_limited")
        config = self._config
        async with self._lock:
            now = int(self._wall_clock())
            try:
                if await self._storage.count_unpaid_subaddresses(now) >= config.subaddress_max_unpaid:
                    raise AllocationRefused("capped")
                for _ in range(_RECORD_ATTEMPTS):
                    index, address = await self._create()
                    recorded = await self._storage.record_subaddress(Allocation(
                        self.account, index, pid.raw, address, now,
                        now + config.subaddress_unpaid_ttl_secs))
                    if recorded:
                        return address
                    log.warning("subaddress index %d of account %d was recorded already (by "
                                "another instance?); asking the wallet for the next", index,
                                self.account)
            except StorageUnavailable:
                raise AllocationRefused("unavailable") from None
            except WalletError as exc:
                log.warning("the wallet did not allocate a subaddress (%s)", exc.reason)
                raise AllocationRefused("wallet_error") from None
        raise AllocationRefused("wallet_error")

    async def _create(self) -> tuple[int, str]:
        result = await self._wallet.call("create_address", {"account_index": self.account})
        index = result.get("address_index")
        if type(index) is not int or index <= 0:
            raise WalletError("create_address", "address_index missing or not a positive integer")
        return index, check_subaddress(result.get("address"), self._config.monero_network)


@dataclass(frozen=True, slots=True)
class WalletCoverage:
    """What the restore check found: the highest allocated index (None: none yet) and
    whether the wallet recognises its address (None: could not tell)."""

    highest: int | None
    known: bool | None


async def wallet_knows(wallet: WalletRpc, storage: Storage, account: int) -> WalletCoverage:
    """Whether the wallet still knows the highest subaddress the checkout allocated.

    ``get_address_index`` answers from the same table the wallet scans outputs against,
    so a wallet restored from keys whose lookahead does not reach the index answers it
    with an error: payments to that subaddress (and those above) would never be seen."""
    highest = await storage.highest_subaddress(account)
    if highest is None:
        return WalletCoverage(None, True)
    index, address = highest
    try:
        result = await wallet.call("get_address_index", {"address": address})
    except WalletRpcFault:
        return WalletCoverage(index, False)
    except WalletError:
        return WalletCoverage(index, None)
    where = result.get("index")
    known = (isinstance(where, dict) and where.get("major") == account
             and where.get("minor") == index)
    return WalletCoverage(index, known)
