"""Shared fixtures: a real SQLite file (or PostgreSQL database) per test, real sockets,
the real service.

A module that sets ``BOTH_BACKENDS = True`` runs each test asking for ``backend`` (or
``storage``, ``database_url``) once on SQLite and once on a throwaway PostgreSQL cluster
started once per session (tests/pg_cluster.py); ``@pytest.mark.sqlite_only`` keeps a
test about the SQLite file itself to SQLite.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from anonticket.service.app import Service, start_service
from anonticket.config import Config
from anonticket.domain.ids import PaymentId, Transfer
from anonticket.storage import Storage, open_storage
from anonticket.storage.postgres import PostgresIntegrityError
import pg_cluster

REPO = Path(__file__).resolve().parent.parent

# the regtest network fixtures (real monerod + wallet-rpc); tests using them are marked regtest
from regtest_fixtures import *  # noqa: E402,F401,F403


def make_config(tmp_path: Path, **overrides: Any) -> Config:
    """Test defaults: own DB file, free loopback ports, no monitor, no access log noise, and
    bare PIDs redeem (REDEEM_PLAIN_PIDS=allow): most tests credit a random PID and redeem it,
    the seeds' contract; tests/ledger/test_receipts.py and its siblings run the default."""
    env = {
        "REDEEM_PLAIN_PIDS": "allow",
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
def config_factory(tmp_path: Path, database_url: str) -> Callable[..., Config]:
    return lambda **overrides: make_config(tmp_path, **{"DATABASE_URL": database_url, **overrides})


# what a key, foreign key or CHECK refusing a row raises, on either backend: a bug, not a 503
INTEGRITY_ERRORS = (sqlite3.IntegrityError, PostgresIntegrityError)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" not in metafunc.fixturenames:
        return
    both = getattr(metafunc.module, "BOTH_BACKENDS", False)
    if metafunc.definition.get_closest_marker("sqlite_only"):
        both = False
    metafunc.parametrize("backend", ["sqlite", "postgres"] if both else ["sqlite"],
                         indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    return getattr(request, "param", "sqlite")


@pytest.fixture(scope="session")
def pg() -> Iterator[pg_cluster.Cluster]:
    """One throwaway cluster for the whole session; each test gets its own database."""
    reason = pg_cluster.missing()
    if reason:
        pytest.skip(reason)
    cluster = pg_cluster.start_cluster(max_connections="200")
    try:
        yield cluster
    finally:
        pg_cluster.remove(cluster)


@pytest.fixture
def database_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """DATABASE_URL of a fresh, empty database of ``backend``."""
    if backend == "sqlite":
        yield str(tmp_path / "anonticket.db")
        return
    yield request.getfixturevalue("pg_url")


@pytest.fixture
def pg_url(pg: pg_cluster.Cluster) -> Iterator[str]:
    """DSN of a fresh database of its own in the session's cluster, dropped afterwards."""
    name = pg.create_database()
    try:
        yield pg.dsn(name)
    finally:
        pg.drop_database(name)


@pytest.fixture
async def storage(database_url: str) -> AsyncIterator[Storage]:
    store = await open_storage(database_url)
    yield store
    await store.close()


@pytest.fixture
async def service(tmp_path: Path, database_url: str) -> AsyncIterator[Service]:
    running = await start_service(make_config(tmp_path, DATABASE_URL=database_url))
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
    from anonticket.ledger.views import Claimed
    assert isinstance(answer, Claimed), answer
    return answer.status, answer.token, answer.balance
