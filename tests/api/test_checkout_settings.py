"""The checkout's settings: the offers, and the operator's address — MERCHANT_ADDRESS
checked, the wallet's read (``get_address``), the two reconciled.

FakeWallet answers ``get_address`` like wallet-rpc; the real wallet's answer is checked
by the sandbox test and the regtest checkout tests.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path

import pytest

from anonticket.domain.address import MoneroAddress, decode_address, make_integrated_address
from anonticket.service.app import start_service
from anonticket.config import Config
from anonticket.domain.errors import ConfigError
from anonticket.monero.merchant import AddressCheck, Merchant, check_address, reconcile
from anonticket.regtest import MERCHANT_KEYS, PAYER_KEYS
from conftest import REPO, make_config
from fake_wallet import Failure, FakeWallet

MERCHANT = MERCHANT_KEYS.address
_KEYS = decode_address(MERCHANT)
STAGENET = MoneroAddress("stagenet", "standard", _KEYS.spend_key, _KEYS.view_key).encode()


def answering(wallet: FakeWallet, address: str) -> FakeWallet:
    wallet.methods["get_address"] = lambda params: {"address": address, "addresses": []}
    return wallet


@pytest.mark.parametrize(("text", "error"), [
    (MERCHANT[:-1] + "1", "MERCHANT_ADDRESS: address checksum does not match"),
    (MERCHANT[:50], "MERCHANT_ADDRESS: address has the wrong length"),
    (make_integrated_address(MERCHANT, "0123456789abcdef"),
     "MERCHANT_ADDRESS: must be a primary (standard) address, not a integrated one"),
])
def test_a_bad_merchant_address_is_refused_without_quoting_it(text: str, error: str) -> None:
    with pytest.raises(ConfigError) as caught:
        check_address(text, "mainnet", "MERCHANT_ADDRESS")
    assert str(caught.value).startswith(error) and text not in str(caught.value)


def test_the_network_must_match() -> None:
    with pytest.raises(ConfigError, match="is a mainnet address but MONERO_NETWORK is stagenet"):
        check_address(MERCHANT, "stagenet", "MERCHANT_ADDRESS")


def test_reconcile() -> None:
    assert reconcile(None, MERCHANT, "mainnet") == MERCHANT
    assert reconcile(MERCHANT, MERCHANT, "mainnet") == MERCHANT
    with pytest.raises(ConfigError, match="MERCHANT_ADDRESS: does not match the wallet's primary"):
        reconcile(PAYER_KEYS.address, MERCHANT, "mainnet")
    with pytest.raises(ConfigError, match="the wallet's get_address: address checksum"):
        reconcile(None, MERCHANT[:-1] + "1", "mainnet")


def wallet_config(tmp_path: Path, wallet: FakeWallet, **settings: object) -> Config:
    return make_config(tmp_path, MONITOR_ENABLED="true", MONERO_RPC_URL=wallet.url,
                       MONITOR_POLL_INTERVAL_SECS="60", **settings)


async def test_the_address_is_read_from_the_wallet(tmp_path: Path) -> None:
    async with FakeWallet() as wallet:
        service = await start_service(wallet_config(tmp_path, answering(wallet, MERCHANT)))
        try:
            assert service.state.merchant.address == MERCHANT
            assert wallet.calls("get_address") == [{"account_index": 0, "address_index": [0]}]
        finally:
            await service.aclose()


async def test_a_contradicting_wallet_stops_the_start(tmp_path: Path) -> None:
    async with FakeWallet() as wallet:
        with pytest.raises(ConfigError, match="MERCHANT_ADDRESS: does not match"):
            await start_service(wallet_config(tmp_path, answering(wallet, MERCHANT),
                                              MERCHANT_ADDRESS=PAYER_KEYS.address))


async def test_a_wallet_without_get_address_leaves_merchant_address_unchecked(tmp_path: Path) -> None:
    async with FakeWallet() as wallet:  # FakeWallet answers "Method not found" by default
        service = await start_service(wallet_config(tmp_path, wallet, MERCHANT_ADDRESS=MERCHANT))
        try:
            assert service.state.merchant.address == MERCHANT
            assert len(wallet.calls("get_address")) == 1  # not asked again
        finally:
            await service.aclose()


async def test_a_wallet_down_at_start_is_asked_again_in_the_background(tmp_path: Path) -> None:
    async with FakeWallet() as wallet:
        answering(wallet, MERCHANT).fail(Failure.HTTP_500, times=2, method="get_address")
        merchant = Merchant()
        check = AddressCheck(wallet_config(tmp_path, wallet))
        started = time.monotonic()
        await check.start(merchant)
        try:
            assert merchant.address is None and time.monotonic() - started < 2
            deadline = time.monotonic() + 10
            while merchant.address is None:  # retries after 1 s, then 2 s
                assert time.monotonic() < deadline, "the address check never retried"
                await asyncio.sleep(0.05)
            assert merchant.address == MERCHANT and len(wallet.calls("get_address")) == 3
        finally:
            await check.aclose()


async def test_a_hanging_wallet_delays_the_start_by_a_bounded_time(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Start-up waits FIRST_ANSWER_SECS (0.3 s here), not the wallet's 3 s timeout: the bound
    sits between the two with room to spare, so a busy machine cannot fail it."""
    monkeypatch.setattr("anonticket.monero.merchant.FIRST_ANSWER_SECS", 0.3)
    async with FakeWallet() as wallet:
        answering(wallet, MERCHANT).fail(Failure.HANG, times=1, method="get_address")
        wallet.hang_seconds = 4.0
        merchant = Merchant()
        check = AddressCheck(wallet_config(tmp_path, wallet, MONERO_RPC_TIMEOUT_SECS="3"))
        started = time.monotonic()
        await check.start(merchant)
        try:
            assert time.monotonic() - started < 2.0 and merchant.address is None
            deadline = time.monotonic() + 10
            while merchant.address is None:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
        finally:
            await check.aclose()


async def test_a_late_contradiction_turns_the_checkout_off(tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    async with FakeWallet() as wallet:
        answering(wallet, PAYER_KEYS.address).fail(Failure.HTTP_500, times=1, method="get_address")
        merchant = Merchant()
        check = AddressCheck(wallet_config(tmp_path, wallet, MERCHANT_ADDRESS=MERCHANT))
        await check.start(merchant)
        try:
            assert merchant.address == MERCHANT  # until the wallet says otherwise
            deadline = time.monotonic() + 10
            while merchant.address is not None:
                assert time.monotonic() < deadline, "the retry never happened"
                await asyncio.sleep(0.05)
            assert len(wallet.calls("get_address")) == 2
            assert "checkout off: MERCHANT_ADDRESS: does not match" in caplog.text
        finally:
            await check.aclose()


def test_serve_exits_2_with_one_line_on_a_bad_address(tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], "DATABASE_URL": str(tmp_path / "db"), "MONITOR_ENABLED": "false",
           "API_BIND_ADDRESS": "127.0.0.1:0", "API_INTERNAL_BIND_ADDRESS": "127.0.0.1:0",
           "MERCHANT_ADDRESS": STAGENET}
    for argv in (["serve"], ["config", "--check"]):
        done = subprocess.run([str(REPO / "bin" / "anonticket"), *argv], env=env, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 2, (argv, done.stderr)
        assert done.stderr.splitlines() == [
            "anonticket: configuration error: MERCHANT_ADDRESS: is a stagenet address but MONERO_NETWORK "
            "is mainnet"], done.stderr
        assert STAGENET not in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "db").exists()  # refused before the database was touched


# ---------------------------------------------------------------------- settings
@pytest.mark.parametrize(("settings", "error"), [
    ({"CHECKOUT_OFFERS": "7d"}, "CHECKOUT_OFFERS: offers in days need ACCESS_PRICE_PER_DAY"),
    ({"CHECKOUT_OFFERS": "0.001", "MONITOR_MIN_PAYMENT_AMOUNT": "10000000000"},
     "CHECKOUT_OFFERS: an offer below MONITOR_MIN_PAYMENT_AMOUNT could never be redeemed"),
    ({"CHECKOUT_OFFERS": "7d, 7d", "ACCESS_PRICE_PER_DAY": "0.01"}, "CHECKOUT_OFFERS: an offer is listed twice"),
    ({"CHECKOUT_OFFERS": "0d"}, "CHECKOUT_OFFERS: must be at least 1"),
    ({"CHECKOUT_OFFERS": "1e3"}, "CHECKOUT_OFFERS: each offer is"),
    ({"CHECKOUT_OFFERS": "99999999999999999999"}, "CHECKOUT_OFFERS: an offer is larger than"),
    ({"MONERO_NETWORK": "regtest"}, "MONERO_NETWORK: expected mainnet"),
])
def test_bad_checkout_settings_name_the_variable(settings: dict[str, str], error: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Config.from_env(settings)
    assert str(caught.value).startswith(error), caught.value


def test_offers_parse_in_order_and_print_back() -> None:
    config = Config.from_env({"CHECKOUT_OFFERS": " 30d,1d , 0.25,50000000000", "ACCESS_PRICE_PER_DAY": "0.01"})
    assert [o.key for o in config.checkout_offers] == ["30d", "1d", "250000000000", "50000000000"]
    assert [config.offer_price(o) for o in config.checkout_offers] == [3 * 10**11, 10**10, 25 * 10**10, 5 * 10**10]
    assert config.describe()["CHECKOUT_OFFERS"] == "30d, 1d, 250000000000, 50000000000"
