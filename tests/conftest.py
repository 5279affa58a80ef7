"""Shared fixtures: a real SQLite file per test, real sockets, the real service."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from anonticket.app import Service, start_service
from anonticket.config import Config
from anonticket.domain import PaymentId, Transfer
from anonticket.storage import Storage

REPO = Path(__file__).resolve().parent.parent

# the regtest network fixtures (real monerod + wallet-rpc); tests using them are marked regtest
from regtest_fixtures import *  # noqa: E402,F401,F403


def make_config(tmp_path: Path, **overrides: Any) -> Config:
    """Test defaults: own DB file, free loopback ports, no monitor, no access log noise."""
    env = {
        "DATABASE_URL": str(tmp_path / "anonticket.db"),
        "API_BIND_ADDRESS": "127.0.0.1:0",
        "API_INTERNAL_BIND_ADDRESS": "127.0.0.1:0",
        "MONITOR_ENABLED": "false",
        "API_ACCESS_LOG": "false",
        "MONITOR_MIN_PAYMENT_AMOUNT": "1000",
    }
    env.update({k: str(v) for k, v in overrides.items()})
    return Config.from_env(env)


@pytest.fixture
def config_factory(tmp_path: Path) -> Callable[..., Config]:
    return lambda **overrides: make_config(tmp_path, **overrides)


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[Storage]:
    store = await Storage.open(tmp_path / "anonticket.db")
    yield store
    await store.close()


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[Service]:
    running = await start_service(make_config(tmp_path))
    yield running
    await running.aclose()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(trust_env=False) as session:
        yield session


def url(address: str, path: str) -> str:
    return f"http://{address}{path}"


def random_txid() -> bytes:
    return os.urandom(32)


def transfer(pid: PaymentId, amount: int = 5000, height: int = 100, txid: bytes | None = None) -> Transfer:
    return Transfer(txid or random_txid(), pid, amount, height)


def claim_summary(answer: object) -> tuple[str, bytes, int]:
    """A redeem's Claimed answer as (status, token, credited balance), for comparisons."""
    from anonticket.ledger import Claimed
    assert isinstance(answer, Claimed), answer
    return answer.status, answer.token, answer.balance
