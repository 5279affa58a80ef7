"""What a payment can buy is bounded (anonticket/domain/timestamp.py), and no amount a wallet
reports stops the monitor; on SQLite and on PostgreSQL (``BOTH_BACKENDS``).

The review's case: at ``ACCESS_PRICE_PER_DAY=1`` (one piconero) a 1 XMR payment bought an
expiry ``time.gmtime`` cannot format, so every answer about that token was a 500, and a
~107 XMR payment overflowed the 64-bit column, so the credit failed and with it every
later poll: nobody's payment was credited any more.
"""

from __future__ import annotations

import logging
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager, closing
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from anonticket.service.app import Service, make_ledger, start_service
from anonticket.cli.parser import main
from anonticket.config import SETTINGS, Config
from anonticket.domain.ids import PaymentId
from anonticket.domain.errors import ConfigError
from anonticket.ledger.views import Claimed
from anonticket.runtime.metrics import Metrics
from anonticket.monitor.loop import Monitor
from anonticket.runtime.state import MonitorStatus, State
from anonticket.storage import Storage, is_postgres_url, open_storage
from anonticket.storage.ledger_rules import expiry_after, seconds_bought
from anonticket.domain.timestamp import MAX_CREDIT_SECONDS, MAX_TIMESTAMP, format_rfc3339
from conftest import make_config, transfer, url
from fake_wallet import FakeWallet, make_transfer

BOTH_BACKENDS = True
XMR = 10**12
HORIZON = "9999-12-31T23:59:59Z"
INT64_MAX = 2**63 - 1


# ---------------------------------------------------------------------- the rules
def test_one_credit_buys_at_most_the_cap_and_no_expiry_passes_the_horizon() -> None:
    assert seconds_bought(XMR, 1) == MAX_CREDIT_SECONDS  # was 86.4 quadrillion seconds
    assert seconds_bought(2**64 - 1, 1) == MAX_CREDIT_SECONDS
    assert seconds_bought(XMR, XMR) == 86400 and seconds_bought(XMR, None) is None
    assert expiry_after(1000, 86400) == 87400
    assert expiry_after(MAX_TIMESTAMP - 10, 86400) == MAX_TIMESTAMP
    assert expiry_after(0, 10**20) == MAX_CREDIT_SECONDS  # a row stored before the cap
    assert format_rfc3339(MAX_TIMESTAMP) == HORIZON


@pytest.mark.parametrize("stored", [MAX_TIMESTAMP + 1, 86400 * XMR, INT64_MAX, -1, -2**62])
def test_a_stored_time_beyond_what_gmtime_formats_prints_clamped(stored: int) -> None:
    assert format_rfc3339(stored) == (HORIZON if stored > 0 else "1970-01-01T00:00:00Z")


# ---------------------------------------------------------------------- the settings
def settings(**env: str) -> dict[str, str]:
    return {"MONITOR_MIN_PAYMENT_AMOUNT": "10000000000", **env}


@pytest.mark.parametrize("env, problem", [
    (settings(ACCESS_PRICE_PER_DAY="1"), "would buy more than 100 years"),
    (settings(ACCESS_PRICE_PER_DAY="273972"), "would buy more than 100 years"),
    (settings(ACCESS_PRICE_PER_DAY="0.01", MONITOR_MIN_PAYMENT_AMOUNT="1"),
     "would buy less than one second"),
    (settings(ACCESS_PRICE_PER_DAY="0.01", MONITOR_MIN_PAYMENT_AMOUNT="0"),
     "would buy less than one second"),
    (settings(ACCESS_PRICE_PER_DAY=str(86400 * 10**10 + 1)), "would buy less than one second"),
], ids=["one piconero", "just below 100 years", "minimum of one piconero", "no minimum",
        "just above one second"])
def test_a_price_that_cannot_be_meant_is_refused(env: dict[str, str], problem: str) -> None:
    with pytest.raises(ConfigError) as refused:
        Config.from_env(env)
    assert str(refused.value).startswith("ACCESS_PRICE_PER_DAY: MONITOR_MIN_PAYMENT_AMOUNT ")
    assert problem in str(refused.value)


@pytest.mark.parametrize("price, piconero", [("273973", 273973), ("0.01", 10**10),
                                             (str(86400 * 10**10), 86400 * 10**10)])
def test_prices_from_one_second_to_100_years_for_the_minimum_are_accepted(
        price: str, piconero: int) -> None:
    config = Config.from_env(settings(ACCESS_PRICE_PER_DAY=price))
    assert config.access_price_per_day == piconero


def test_config_check_refuses_it_in_one_line_with_exit_2(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for setting in SETTINGS:
        monkeypatch.delenv(setting.name, raising=False)
    monkeypatch.setenv("ACCESS_PRICE_PER_DAY", "1")
    assert main(["config", "--check"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("anonticket: configuration error: ACCESS_PRICE_PER_DAY: ")


# ---------------------------------------------------------------------- storage
NOW = 1_700_000_000


async def test_a_whale_payment_at_one_piconero_a_day_is_credited_and_capped(
        storage: Storage) -> None:
    """107 XMR at one piconero a day bought 9.2e18 seconds: the credit overflowed."""
    pid, whale = PaymentId.generate(), PaymentId.generate()
    result = await storage.credit_transfers(
        [transfer(pid, XMR), transfer(whale, 107 * XMR), transfer(whale, 5 * XMR)], 7, NOW, 1)
    assert result.transfers_credited == 3 and await storage.get_cursor() == 7
    rows = await storage.claim_payments([pid.raw, whale.raw], 1, NOW)
    for row in rows.values():
        assert row.record is not None and row.record.expires_at == NOW + MAX_CREDIT_SECONDS
    token = rows[whale.raw].token
    assert token is not None
    # more credit to the claimed PID extends its token, never past the horizon
    for _ in range(2):
        await storage.credit_transfers([transfer(whale, 200 * XMR)], None, MAX_TIMESTAMP - 10, 1)
    record = await storage.get_token(token)
    assert record is not None and record.expires_at == MAX_TIMESTAMP
    assert record.amount == 512 * XMR  # the money is all counted, only the time is capped
    assert await storage.ledger_problems() == []


async def test_a_top_up_at_the_horizon_stays_at_it(storage: Storage) -> None:
    near = MAX_TIMESTAMP - 100
    first, second = PaymentId.generate(), PaymentId.generate()
    await storage.credit_transfers([transfer(first, XMR), transfer(second, XMR)], None, near, 1)
    token = (await storage.claim_payments([first.raw], 1, near))[first.raw].token
    assert token is not None
    outcome = await storage.topup_token(token, second.raw, 1, near)
    assert outcome.kind == "topped_up" and outcome.record is not None
    assert outcome.record.expires_at == MAX_TIMESTAMP and outcome.record.amount == 2 * XMR


# ---------------------------------------------------------------------- the answers
async def store_expiry(database_url: str, token: bytes, expires_at: int) -> None:
    """Write an expiry as a database from before the cap may hold it."""
    if is_postgres_url(database_url):
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute("UPDATE service_tokens SET expires_at = $1 WHERE token = $2",
                               expires_at, token)
        finally:
            await conn.close()
        return
    with closing(sqlite3.connect(database_url)) as conn:
        conn.execute("UPDATE service_tokens SET expires_at = ? WHERE token = ?",
                     (expires_at, token))
        conn.commit()


@pytest.fixture
async def priced(tmp_path: Path, database_url: str) -> AsyncIterator[Service]:
    running = await start_service(make_config(
        tmp_path, DATABASE_URL=database_url, ACCESS_PRICE_PER_DAY="10000",
        API_INTERNAL_TOKEN="op-" + "ab" * 16))
    yield running
    await running.aclose()


async def answers_about(service: Service, http: aiohttp.ClientSession, token: str
                        ) -> list[tuple[int, Any]]:
    """Introspection (both listeners), a debit, a gateway check: each answer names the expiry."""
    auth = {"Authorization": f"Bearer {service.state.config.api_internal_token}"}
    got = []
    for address, headers in ((service.public_address, {}), (service.internal_address, auth)):
        async with http.get(url(address, f"/api/v1/token/{token}"), headers=headers) as resp:
            got.append((resp.status, (await resp.json())["expires_at"]))
    async with http.post(url(service.internal_address, f"/api/v1/token/{token}/debit"),
                         json={"amount": 1},
                         headers={**auth, "Idempotency-Key": secrets.token_hex(8)}) as resp:
        got.append((resp.status, (await resp.json())["expires_at"]))
    async with http.get(url(service.internal_address, "/api/v1/check"),
                        headers={**auth, "Authorization": f"Bearer {token}",
                                 "X-Anonticket-Gateway-Token":
                                     service.state.config.api_internal_token or ""}) as resp:
        got.append((resp.status, resp.headers.get("X-Anonticket-Expires-At")))
    return got


async def test_answers_about_a_token_bought_at_one_piconero_a_day_are_never_500(
        priced: Service, http: aiohttp.ClientSession, database_url: str) -> None:
    priced.state.ledger.price_per_day = 1  # what the settings now refuse, as before they did
    pid = PaymentId.generate()
    await priced.state.ledger.credit([transfer(pid, XMR)], None)
    async with http.post(url(priced.public_address, "/api/v1/redeem"),
                         json={"pid": pid.hex()}) as resp:
        assert resp.status == 200
        redeemed = await resp.json()
    token = redeemed["service_token"]
    stamp = format_rfc3339(int(time.time()) + MAX_CREDIT_SECONDS)
    assert redeemed["expires_at"][:4] == stamp[:4]  # a hundred years on, not year 2.7 billion
    assert [status for status, _ in await answers_about(priced, http, token)] == [200] * 4

    # a row written before the cap: beyond the horizon, and beyond what gmtime formats
    await store_expiry(database_url, bytes.fromhex(token), 86400 * XMR)
    priced.state.ledger._records.pop(bytes.fromhex(token))  # as after a restart
    assert await answers_about(priced, http, token) == [(200, HORIZON)] * 4


# ---------------------------------------------------------------------- the monitor
N = 3


@asynccontextmanager
async def monitoring(tmp_path: Path, database_url: str, fake: FakeWallet, clock: list[float]
                     ) -> AsyncIterator[tuple[State, Monitor]]:
    """A State over ``database_url`` and a Monitor of ``fake``, polled by hand; ``clock``
    is the monitor's (its margin re-read is due 120 s on)."""
    config = make_config(tmp_path, DATABASE_URL=database_url, MONERO_RPC_URL=fake.url,
                         MONITOR_ENABLED="true", MONITOR_MIN_CONFIRMATIONS=N)
    async with AsyncExitStack() as stack:
        storage = await open_storage(database_url)
        stack.push_async_callback(storage.close)
        metrics = Metrics()
        ledger = make_ledger(config, storage, metrics)
        await ledger.load()
        state = State(config, metrics, ledger, MonitorStatus(enabled=True))
        monitor = Monitor(state, clock=lambda: clock[0])
        await monitor.start()
        stack.push_async_callback(monitor.aclose)
        yield state, monitor


async def test_a_transfer_the_database_cannot_hold_is_reported_and_skipped(
        tmp_path: Path, database_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """Two wallet amounts that sum past 2^63 - 1 on one PID, and one amount past it: each
    is skipped and counted once, the good payments around them are credited and the
    cursor moves on; a later poll credits what comes next."""
    caplog.set_level(logging.INFO)
    big, good, late = PaymentId.generate(), PaymentId.generate(), PaymentId.generate()
    entries = [make_transfer(big.hex(), INT64_MAX, height=90),
               make_transfer(big.hex(), 5, height=91),
               make_transfer(PaymentId.generate().hex(), INT64_MAX + 1, height=92),
               make_transfer(good.hex(), 5000, height=93)]
    clock = [0.0]
    async with FakeWallet(height=100) as fake, monitoring(tmp_path, database_url, fake, clock) as (
            state, monitor):
        fake.add(*entries)
        assert await monitor.poll_once() == 2  # big's first and good
        assert await state.ledger.storage.get_cursor() == 100 - N
        assert isinstance(await state.ledger.redeem(good), Claimed)
        counted = state.metrics.transfer["uncreditable"]._value.get()
        assert counted == 2
        # the next poll re-reads the margin (the skipped transfers again): counted once
        fake.add(make_transfer(late.hex(), 6000, height=101))
        fake.height, clock[0] = 110, 1000.0
        asked = len(fake.requests)
        assert await monitor.poll_once() == 1
        margin = [params for method, params in list(fake.requests)[asked:]
                  if method == "get_transfers" and params.get("max_height") == 100 - N]
        assert margin, "the margin was not re-read"
        assert state.metrics.transfer["uncreditable"]._value.get() == 2
        assert isinstance(await state.ledger.redeem(late), Claimed)
        assert await state.ledger.storage.get_cursor() == 110 - N
        assert await state.ledger.storage.ledger_problems() == []
    warnings = [r.getMessage() for r in caplog.records if "cannot be credited" in r.getMessage()]
    assert len(warnings) == 2
    logged = " ".join(r.getMessage() for r in caplog.records).lower()
    for entry in entries:
        assert entry["txid"][:16] not in logged and entry["payment_id"] not in logged
