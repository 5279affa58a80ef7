"""A watch-only wallet restored with too high a restore height, against the REAL wallet-rpc.

Its payments below the restore height are missing, and by the time the operator notices,
the monitor's cursor has passed them: without ``monitor rescan`` they are never credited.
What brings them back on the wallet's side is checked here too, because the operations
guide tells the operator to do it: ``rescan_blockchain`` does not (it rescans from the
wallet's own restore height); a wallet made again from the keys with the right height does.

The test swaps the wallet the session's merchant wallet-rpc has open and reopens the
original one afterwards, so the other regtest tests keep their wallet.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest

from anonticket.service.app import open_state
from anonticket.domain.ids import derive_service_token
from anonticket.domain.errors import PaymentNotFound
from anonticket.ledger.views import Claimed
from anonticket.monitor.loop import Monitor
from anonticket.regtest import MERCHANT_KEYS, RegtestNetwork
from anonticket.runtime.state import State
from regtest_fixtures import random_pid16
from test_monitor_regtest import XMR, N, config_for, in_block, pay, pid_of, start_window

pytestmark = pytest.mark.regtest


def restore_merchant(net: RegtestNetwork, restore_height: int) -> None:
    """What the operations guide does: a watch-only wallet from the address and view key."""
    net.merchant.call("generate_from_keys", {
        "filename": f"restored-{secrets.token_hex(4)}", "password": "", "autosave_current": True,
        "address": MERCHANT_KEYS.address, "viewkey": MERCHANT_KEYS.view_key,
        "restore_height": restore_height}, timeout=120)
    net.merchant.call("refresh", timeout=120)


@contextmanager
def merchant_wallet_swapped(net: RegtestNetwork) -> Iterator[None]:
    try:
        yield
    finally:
        net.merchant.call("open_wallet", {"filename": "merchant", "password": ""}, timeout=120)
        net.merchant.call("refresh", timeout=120)


def reported_heights(net: RegtestNetwork, txid: str) -> list[int]:
    got = net.merchant.call("get_transfers", {"in": True})
    return [entry["height"] for entry in got.get("in", []) if entry["txid"] == txid]


@asynccontextmanager
async def watching(net: RegtestNetwork, tmp_path: Path, start: int,
                   **overrides: Any) -> AsyncIterator[tuple[State, Monitor]]:
    """A monitor polled by hand whose clock stands still: the margin's backstop stays out."""
    async with AsyncExitStack() as stack:
        state = await open_state(config_for(net, tmp_path, start, **overrides), stack)
        monitor = Monitor(state, clock=lambda: 0.0)
        await monitor.start()
        stack.push_async_callback(monitor.aclose)
        yield state, monitor


async def test_a_wallet_restored_too_high_then_fixed_is_credited_after_a_monitor_rescan(
    monero_regtest: RegtestNetwork, tmp_path: Path
) -> None:
    net = monero_regtest
    start = await start_window(net)
    pid = random_pid16()
    paid = await pay(net, pid, XMR // 10, mine=1)
    mined_at = await in_block(net, paid["txid"])
    assert mined_at is not None
    too_high = await asyncio.to_thread(net.mine, N + 5)
    with merchant_wallet_swapped(net):
        await asyncio.to_thread(restore_merchant, net, too_high)
        assert await asyncio.to_thread(reported_heights, net, paid["txid"]) == []
        async with watching(net, tmp_path, start, MONITOR_RESCAN_MARGIN_BLOCKS=2) as (state, monitor):
            assert await monitor.poll_once() == 0
            assert monitor.cursor == too_high - N and monitor.cursor - 2 > mined_at  # beyond the margin
            # the wallet's own rescan starts from its (wrong) restore height: no help
            await asyncio.to_thread(net.merchant.call, "rescan_blockchain", None, timeout=120)
            assert await asyncio.to_thread(reported_heights, net, paid["txid"]) == []
            # made again from the keys with the right height, the wallet reports the payment…
            await asyncio.to_thread(restore_merchant, net, start)
            assert await asyncio.to_thread(reported_heights, net, paid["txid"]) == [mined_at]
            # …below the monitor's cursor, where no poll looks again
            assert await monitor.poll_once() == 0
            with pytest.raises(PaymentNotFound):
                await state.ledger.redeem(pid_of(pid))
            state.monitor.request_rescan(start)
            assert await monitor.poll_once() == 1
            assert await state.ledger.storage.get_cursor() == await asyncio.to_thread(net.height) - N
            result = await state.ledger.redeem(pid_of(pid))
            assert isinstance(result, Claimed) and result.balance == XMR // 10
            assert result.token == derive_service_token(pid_of(pid), paid["txid"]).raw
