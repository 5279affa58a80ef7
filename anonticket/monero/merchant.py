"""The operator's primary address: every checkout integrated address is built from it.

It comes from ``MERCHANT_ADDRESS`` or, when that is empty, from the wallet the monitor
watches (``get_address``). A wrong address is the worst silent failure the checkout
could have — customers would pay someone else, or a wallet that never reports their
payment — so both sources are checked (checksum, primary kind, ``MONERO_NETWORK``) and,
when both exist, must agree: at start the service refuses to run otherwise (exit 2).

The wallet may be down when the service starts; the service still starts (it serves
redeems from its database), and ``AddressCheck`` keeps asking in the background until
the wallet answers once. Until an address is known, the checkout answers "unavailable".
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import suppress
from dataclasses import dataclass

from anonticket.domain.address import AddressError, decode_address
from anonticket.config import Config
from anonticket.domain.errors import ConfigError
from anonticket.monero.wallet_rpc import WalletError, WalletRpc, WalletRpcFault

log = logging.getLogger("anonticket.merchant")

# how long start-up waits for the wallet's answer before going on without it
FIRST_ANSWER_SECS = 3.0
_RETRY_FIRST_SECS = 1.0
_RETRY_CAP_SECS = 60.0


@dataclass
class Merchant:
    """Where the checkout finds the address; ``None`` until it is known (or if refused)."""

    address: str | None = None


def check_address(text: str, network: str, source: str) -> str:
    """``text`` if it is a primary address of ``network``; ConfigError naming ``source``.

    The message never quotes the address: a mistyped one may be an integrated address
    (which holds a payment ID) or someone else's.
    """
    try:
        decoded = decode_address(text)
    except AddressError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    if decoded.kind != "standard":
        raise ConfigError(f"{source}: must be a primary (standard) address, not a {decoded.kind} one")
    if decoded.network != network:
        raise ConfigError(f"{source}: is a {decoded.network} address but MONERO_NETWORK is {network}")
    return text


def configured_address(config: Config) -> str | None:
    """MERCHANT_ADDRESS checked (for ``serve`` and ``config --check``), or None if unset."""
    text = config.merchant_address
    return None if text is None else check_address(text.strip(), config.monero_network,
                                                   "MERCHANT_ADDRESS")


def reconcile(configured: str | None, from_wallet: str, network: str) -> str:
    """The address to use once the wallet has told its own."""
    wallet_address = check_address(from_wallet, network, "the wallet's get_address")
    if configured is not None and configured != wallet_address:
        raise ConfigError("MERCHANT_ADDRESS: does not match the wallet's primary address "
                          "(get_address): payments to it would never be seen")
    return wallet_address


async def wallet_address(wallet: WalletRpc) -> str:
    """The wallet's primary address (account 0, index 0), as wallet-rpc reports it."""
    result = await wallet.call("get_address", {"account_index": 0, "address_index": [0]})
    address = result.get("address")
    if not isinstance(address, str):
        raise WalletError("get_address", "address missing or not a string")
    return address


class AddressCheck:
    """A start/stop pair: learns (or confirms) the address from the wallet.

    ``start`` waits up to ``FIRST_ANSWER_SECS`` for the wallet: an address that does
    not match raises ConfigError there, before any listener opens. If the wallet is
    unreachable a background task retries with capped exponential backoff until one
    answer; a wallet that answers with an error (no such method, a wallet-rpc without
    a wallet) is not asked again, and the checkout keeps MERCHANT_ADDRESS or stays off.
    """

    def __init__(self, config: Config, wallet: WalletRpc | None = None) -> None:
        self._config = config
        self._merchant = Merchant()
        self._configured = configured_address(config)
        self._wallet = wallet
        self._task: asyncio.Task[None] | None = None

    async def start(self, merchant: Merchant) -> None:
        self._merchant = merchant
        merchant.address = self._configured
        if not self._config.monitor_enabled:
            if self._configured is None:
                log.info("checkout off: MERCHANT_ADDRESS is empty and the monitor (which "
                            "would ask the wallet) is disabled")
            return
        config = self._config
        if self._wallet is None:
            self._wallet = WalletRpc(config.monero_rpc_url, timeout=config.monero_rpc_timeout_secs,
                                     user=config.monero_rpc_user, password=config.monero_rpc_password)
        await self._wallet.start()
        first = asyncio.create_task(self._ask(), name="anonticket-address-check")
        try:
            done = await asyncio.wait_for(asyncio.shield(first), FIRST_ANSWER_SECS)
        except TimeoutError:
            done = False
        except BaseException:
            await self.aclose()
            raise
        if not done:
            self._task = asyncio.create_task(self._retry(first), name="anonticket-address-check")
        else:
            await self._wallet.close()

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
        if self._wallet is not None:
            await self._wallet.close()

    async def _ask(self) -> bool:
        """One question; True once settled (address known, or not worth asking again)."""
        assert self._wallet is not None
        try:
            answer = await wallet_address(self._wallet)
        except WalletRpcFault as exc:
            log.warning("the wallet refused get_address (%s); checkout %s", exc,
                        "uses MERCHANT_ADDRESS unchecked" if self._configured else "off")
            return True
        except WalletError as exc:
            log.info("the wallet did not tell its address yet (%s); asking again", exc.reason)
            return False
        self._merchant.address = reconcile(self._configured, answer, self._config.monero_network)
        log.info("checkout address %s", "confirmed by the wallet" if self._configured
                 else "read from the wallet")
        return True

    async def _retry(self, first: asyncio.Task[bool]) -> None:
        try:
            settled = await first
        except ConfigError as exc:
            self._refuse(exc)
            return
        delay = _RETRY_FIRST_SECS
        while not settled:
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RETRY_CAP_SECS)
            try:
                settled = await self._ask()
            except ConfigError as exc:
                self._refuse(exc)
                return
        assert self._wallet is not None
        await self._wallet.close()

    def _refuse(self, exc: ConfigError) -> None:
        # too late to refuse to start: keep serving redeems, but sell nothing to an
        # address the wallet does not watch
        self._merchant.address = None
        log.error("checkout off: %s", exc)
