"""Shared fixtures: a real SQLite file (or PostgreSQL database) per test, real sockets,
the real service.

A module that sets ``BOTH_BACKENDS = True`` runs each test asking for ``backend`` (or
``storage``, ``database_url``) once on SQLite and once on a throwaway PostgreSQL cluster
started once per session (tests/pg_cluster.py); ``@pytest.mark.sqlite_only`` keeps a
test about the SQLite file itself to SQLite.

The tiers (docs/testing.md): a test is *heavy* when it carries one of HEAVY_MARKS, and
``--quick`` leaves the heavy ones out. The marks come from what a test uses, so nobody has to
remember them: the regtest fixtures, the ``pg``/``pg_url`` fixtures or the PostgreSQL backend,
the folders whose every test drives a production tool (HEAVY_FOLDERS); the helpers that start a
heavy part by hand skip their test in the quick tier (tests/tiers.py). Only ``slow`` (long
rounds of a part the quick tier has) is set by hand, and the quick tier's summary names any
test of its own that took longer than QUICK_TEST_BUDGET_SECS.
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
import tiers

REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / "tests"

# the regtest network fixtures (real monerod + wallet-rpc); tests using them are marked regtest
from regtest_fixtures import *  # noqa: E402,F401,F403


def make_config(tmp_path: Path, **overrides: Any) -> Config:
    """Test defaults: own DB file, free loopback ports, no monitor, no access log noise, and
    bare PIDs redeem (REDEEM_PLAIN_PIDS=allow): most tests credit a random PID and redeem it,
    the seeds' contract; tests/ledger/test_receipt_ledger.py and its siblings run the default."""
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


# ---------------------------------------------------------------------- the tiers
HEAVY_MARKS = ("regtest", "postgres", "browser", "proxy", "slow")
HEAVY_FIXTURES = {"pg": "postgres", "pg_url": "postgres",
                  **{name: "regtest" for name in REGTEST_FIXTURES}}  # noqa: F405
HEAVY_FOLDERS = {"deploy": "proxy", "regtest": "regtest"}
QUICK_TEST_BUDGET_SECS = 5.0


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--quick", action="store_true",
                     help="the quick tier: leave out the tests that need a regtest chain, PostgreSQL, "
                          "a browser or a proxy, and the slow ones (docs/testing.md)")


def pytest_configure(config: pytest.Config) -> None:
    tiers.QUICK = bool(config.getoption("quick"))


def heavy_marks(item: pytest.Item) -> set[str]:
    """What makes ``item`` heavy: its marks, the fixtures it uses (indirectly too), the
    PostgreSQL backend it is parametrized with, and its folder."""
    found = {mark.name for mark in item.iter_markers() if mark.name in HEAVY_MARKS}
    found |= {HEAVY_FIXTURES[name] for name in HEAVY_FIXTURES.keys() & set(getattr(item, "fixturenames", ()))}
    callspec = getattr(item, "callspec", None)
    if callspec is not None and callspec.params.get("backend") == "postgres":
        found.add("postgres")
    folder = item.path.relative_to(TESTS).parts[0] if item.path.is_relative_to(TESTS) else ""
    if folder in HEAVY_FOLDERS:
        found.add(HEAVY_FOLDERS[folder])
    return found


@pytest.hookimpl(tryfirst=True)  # before -m reads the marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    heavy = []
    grouped = config.pluginmanager.hasplugin("xdist")
    for item in items:
        marks = heavy_marks(item)
        for name in sorted(marks):
            item.add_marker(name)
        if marks:
            heavy.append(item)
        if grouped and "regtest" in marks:  # --dist loadgroup: one worker mines the chains
            item.add_marker(pytest.mark.xdist_group("regtest"))
    if config.getoption("quick") and heavy:
        config.hook.pytest_deselected(items=heavy)
        left_out = set(map(id, heavy))
        items[:] = [item for item in items if id(item) not in left_out]


_over_budget: list[tuple[str, float]] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if tiers.QUICK and report.duration > QUICK_TEST_BUDGET_SECS:
        _over_budget.append((f"{report.nodeid} ({report.when})", report.duration))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _over_budget:
        terminalreporter.section("quick tier: over its budget")
        terminalreporter.write_line(
            f"these took over {QUICK_TEST_BUDGET_SECS:g} s; if they always do, mark them slow:")
        for name, seconds in sorted(_over_budget, key=lambda entry: -entry[1]):
            terminalreporter.write_line(f"  {seconds:6.1f} s  {name}")


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
