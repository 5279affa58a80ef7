"""pytest fixtures for a private regtest Monero network (``anonticket.regtest``).

The shared conftest star-imports this module. The networks are session-scoped and
created only when a test asks for one: each costs 10-20 s of mining and wallet
setup. ``owner_pid`` makes a watchdog stop them if pytest is killed before its
teardown runs. A test using any of them (REGTEST_FIXTURES) is marked ``regtest`` by
conftest.py at collection time, so ``-m "not regtest"`` and ``--quick`` skip it without
starting anything.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from anonticket.regtest import RegtestNetwork

__all__ = [
    "DIGEST_LOGIN", "REGTEST_FIXTURES", "monero_regtest", "monero_regtest_digest", "monero_regtest_view_only",
    "random_pid16",
]

DIGEST_LOGIN = ("anon", "ticket-test")
REGTEST_FIXTURES = frozenset({"monero_regtest", "monero_regtest_view_only", "monero_regtest_digest"})


def random_pid16() -> str:
    """A fresh integrated-address payment id, so tests sharing a network never collide."""
    return secrets.token_hex(8)


def _network(factory: pytest.TempPathFactory, name: str, **options: Any) -> Iterator[RegtestNetwork]:
    net = RegtestNetwork.start(factory.mktemp(name), owner_pid=os.getpid(), **options)
    try:
        yield net
    finally:
        net.stop()


@pytest.fixture(scope="session")
def monero_regtest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegtestNetwork]:
    """monerod + a full merchant wallet-rpc + a funded payer, no RPC login."""
    yield from _network(tmp_path_factory, "xmr")


@pytest.fixture(scope="session")
def monero_regtest_view_only(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegtestNetwork]:
    """The production setup: the merchant wallet is watch-only (view key, no spend key)."""
    yield from _network(tmp_path_factory, "xmr-vo", view_only=True)


@pytest.fixture(scope="session")
def monero_regtest_digest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegtestNetwork]:
    """The merchant wallet-rpc demands HTTP digest auth with ``DIGEST_LOGIN``."""
    yield from _network(tmp_path_factory, "xmr-dg", merchant_rpc_login=DIGEST_LOGIN)
