"""A merchant wallet restored from its keys no longer knows a subaddress the checkout
allocated beyond its lookahead (issue 26): the service detects it and reports it (metric,
``stats``, a log line without the address).

On a network of its own (the restore replaces the wallet its merchant wallet-rpc serves,
which the session's shared networks must keep): the checkout allocates past index 200 (a
restore's default lookahead covers indexes 0-199 of each account), the wallet is restored
view-only from the merchant's address and view key into a new file, and a service started
on the same database reports the allocated index as unknown; reopening the original wallet
file makes it known again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from anonticket.config import Config
from anonticket.regtest import MERCHANT_KEYS, RegtestNetwork
from anonticket.service.app import start_service
from conftest import make_config, url

LOOKAHEAD = 200  # wallet2's default minor lookahead
TIMEOUT = 60.0


@pytest.fixture(scope="module")
def own_network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegtestNetwork]:
    net = RegtestNetwork.start(tmp_path_factory.mktemp("xmr-restore"), view_only=True, blocks=80,
                               owner_pid=os.getpid())
    try:
        yield net
    finally:
        net.stop()


async def reported(config: Config) -> dict[str, Any]:
    """``stats`` once the monitor's first restore check has run, from a fresh service."""
    service = await start_service(config)
    try:
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + TIMEOUT
            while True:
                async with http.get(url(service.internal_address, "/api/v1/stats")) as resp:
                    counts = json.loads(await resp.read())
                if counts["subaddress_known_to_wallet"] is not None:
                    counts["gauge"] = service.state.metrics.subaddress_unknown_to_wallet._value.get()
                    return counts
                assert time.monotonic() < deadline, f"no restore check within {TIMEOUT:.0f}s: {counts}"
                await asyncio.sleep(0.1)
    finally:
        await service.aclose()


@pytest.mark.regtest
async def test_a_wallet_restored_from_keys_that_misses_an_allocated_index_is_reported(
        own_network: RegtestNetwork, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    net = own_network
    caplog.set_level(logging.INFO, logger="anonticket")
    config = make_config(tmp_path, MONERO_RPC_URL=net.merchant_url, MONITOR_ENABLED="true",
                         MONITOR_POLL_INTERVAL_SECS="0.1", MONERO_RPC_TIMEOUT_SECS="30",
                         CHECKOUT_ADDRESS_MODE="subaddress", SUBADDRESS_ALLOCATIONS_PER_SEC="1000")
    for _ in range(LOOKAHEAD + 5):  # the operator's own use of the account, or earlier checkouts
        net.merchant_rpc("create_address", {"account_index": 0})
    service = await start_service(config)
    try:
        async with aiohttp.ClientSession() as http, http.post(
                url(service.public_address, "/pay"), data={"offer": str(config.monitor_min_payment_amount)}) as resp:
            assert resp.status == 200
    finally:
        await service.aclose()
    before = await reported(config)
    assert before["subaddress_known_to_wallet"] is True and before["gauge"] == 0
    highest = before["subaddress_highest_index"]
    assert highest > LOOKAHEAD

    # the operator restores the watch-only wallet from its keys into a new file
    net.merchant_rpc("generate_from_keys", {
        "restore_height": 0, "filename": "restored", "password": "", "address": MERCHANT_KEYS.address,
        "viewkey": MERCHANT_KEYS.view_key, "autosave_current": True})
    try:
        after = await reported(config)
        assert after["subaddress_known_to_wallet"] is False and after["gauge"] == 1
        assert after["subaddress_highest_index"] == highest
        line = next(r.getMessage() for r in caplog.records if "does not know subaddress index" in r.getMessage())
        assert str(highest) in line  # the index is named...
        assert not any(word.startswith("8") and len(word) >= 95 for word in line.split())  # ...never the address
    finally:
        net.merchant_rpc("open_wallet", {"filename": "merchant", "password": ""})
    again = await reported(config)
    assert again["subaddress_known_to_wallet"] is True and again["gauge"] == 0
