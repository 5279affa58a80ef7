"""The database holds every unredeemed PID and live token: its files are the owner's alone,
and no row object prints a secret."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from anonticket.domain.ids import PaymentId
from anonticket.storage import ClaimRow, CreditResult, DebitRequest, Storage, TokenRow
from conftest import transfer


@pytest.fixture
def loose_umask() -> Iterator[None]:
    previous = os.umask(0o022)  # what a login shell usually has: 0755 dirs, 0644 files
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


async def test_a_new_database_and_its_directory_are_private(tmp_path: Path, loose_umask: None) -> None:
    path = tmp_path / "var" / "anonticket.db"
    store = await Storage.open(path)
    try:
        pid = PaymentId.generate()
        await store.credit_transfers([transfer(pid)], 10, 1)  # the WAL and shm files exist now
        await store.claim_payments([pid.raw], 1, 2)
        files = {p.name: mode(p) for p in path.parent.iterdir()}
    finally:
        await store.close()
    assert mode(path.parent) == 0o700
    assert files == {"anonticket.db": 0o600, "anonticket.db-wal": 0o600, "anonticket.db-shm": 0o600}


async def test_an_existing_world_readable_database_is_reported(
        tmp_path: Path, loose_umask: None, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "anonticket.db"
    await (await Storage.open(path)).close()
    os.chmod(path, 0o644)
    with caplog.at_level(logging.WARNING, logger="anonticket.storage"):
        await (await Storage.open(path)).close()
    assert any("readable by every local user" in r.getMessage() for r in caplog.records)
    assert mode(path) == 0o644  # the operator's choice is reported, not overridden


def test_rows_never_print_a_token_or_pid() -> None:
    token, pid = bytes(range(32)), bytes(range(32, 64))
    rows = [TokenRow(token, 5, 1, None, None, 0),
            ClaimRow(1, 5, token, True, TokenRow(token, 5, 1, None, None, 0)),
            CreditResult([pid], {token: TokenRow(token, 5, 1, None, None, 0)}, 1),
            DebitRequest(token, 5, "key")]
    for row in rows:
        text = repr(row) + str(row) + f"{row}"
        for secret in (token, pid):
            assert secret.hex() not in text and repr(secret) not in text, text
            assert str(list(secret)) not in text
