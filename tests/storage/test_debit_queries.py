"""The debit batch's storage: reads that stay index lookups however many keys are kept,
and a fast path (one call on the writer's thread) that does exactly what the general
path (statement by statement) does.

A day of Idempotency-Keys can be millions of rows; a query that scans them is correct
and fast on a test database and a 10 ms stall per batch in production. The plan is
what SQLite will do, so the test asserts the plan, not a time.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import tempfile
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anonticket.api.balance import request_digest
from anonticket.domain.ids import PaymentId, Transfer
from anonticket.storage import DebitRequest, Storage
from anonticket.storage.core import CHUNK
from anonticket.storage.tokens import batch_read_sql

T0 = 1_700_000_000


@pytest.mark.parametrize("count", [1, 2, 64, CHUNK])
async def test_the_batch_read_probes_keys(storage: Storage, tmp_path: Path,
                                                 count: int) -> None:
    with closing(sqlite3.connect(tmp_path / "anonticket.db")) as conn:
        plan = conn.execute("EXPLAIN QUERY PLAN " + batch_read_sql(count),
                            [b"t" * 32, "k"] * count).fetchall()
    details = [row[3] for row in plan]
    assert any(d.startswith("SEARCH t USING PRIMARY KEY (token=?)") for d in details), details
    # schema 4: the UNIQUE (token, key) index of a rowid table, where the primary key was
    assert any(d.startswith("SEARCH k USING INDEX idempotency_keys_by_key "
                            "(token=? AND key=?)") for d in details), details
    assert any(d == "SEARCH debits" for d in details), details  # max(id): the last row, no scan
    # the only scans are of the VALUES list itself
    scans = [d for d in details if d.startswith("SCAN")]
    assert scans and all(d == "SCAN w" or "CONSTANT ROW" in d for d in scans), details


async def test_replays_find_exactly_their_own_key_among_many(storage: Storage) -> None:
    """Same key on another token, another key on the same token: neither is a replay."""
    pids = [PaymentId.generate() for _ in range(3)]
    await storage.credit_transfers([Transfer(os.urandom(32), p, 5000, 10) for p in pids], 10, 1)
    claimed = await storage.claim_payments([p.raw for p in pids], 1000, 1)
    a, b, c = (claimed[p.raw].token for p in pids)
    digest = bytes(32)
    first = await storage.apply_debits(
        [DebitRequest(a, 10, "shared", digest), DebitRequest(b, 20, "shared", digest),
         DebitRequest(a, 30, "own", digest)], 2)
    assert [o.status for o in first] == [200, 200, 200]
    again = await storage.apply_debits(
        [DebitRequest(b, 20, "shared", digest), DebitRequest(c, 40, "shared", digest),
         DebitRequest(a, 10, "shared", digest), DebitRequest(a, 50, "new", digest)], 3)
    assert [(o.status, o.replayed) for o in again] == [(200, True), (200, False), (200, True),
                                                       (200, False)]
    assert again[0].body == first[1].body and again[2].body == first[0].body
    assert [(await storage.get_token(t)).spent for t in (a, b, c)] == [90, 20, 40]  # type: ignore[union-attr]
    assert await storage.ledger_problems() == []


# ---------------------------------------------------------------------- fast path = general
async def _ledger_state(path: Path, one_call: bool, batches: list[list[tuple[Any, ...]]],
                        ) -> tuple[list[Any], list[Any]]:
    """Three tokens (plain, revoked, expiring at T0 + 100) and an unknown one, debited in
    ``batches`` of (token index, amount, key, memo, seconds after T0); returns every
    outcome and the debit tables' rows."""
    store = await Storage.open(path)
    store.debits_in_one_call = one_call
    try:
        pids = [PaymentId(bytes([i + 1]) * 8 + bytes(24)) for i in range(3)]
        transfers = [Transfer(bytes([i + 1]) * 32, p, 5000, 10) for i, p in enumerate(pids)]
        await store.credit_transfers(transfers[:2], 10, T0)
        await store.credit_transfers(transfers[2:], 10, T0, price_per_day=5000 * 864)
        claimed = await store.claim_payments([p.raw for p in pids], 1000, T0)
        tokens = [claimed[p.raw].token for p in pids] + [bytes(32)]
        await store.revoke_token(tokens[1], "test", None, T0)
        outcomes = []
        for batch in batches:
            requests = [DebitRequest(tokens[t], amount, key, request_digest(amount, memo), memo)
                        for t, amount, key, memo, _ in batch]
            outcomes.append(await store.apply_debits(requests, T0 + batch[0][4]))
        with closing(sqlite3.connect(path)) as conn:
            rows = [conn.execute(sql).fetchall() for sql in (
                "SELECT * FROM debits ORDER BY id",
                "SELECT * FROM idempotency_keys ORDER BY token, key",
                "SELECT token, amount, spent, expires_at FROM service_tokens ORDER BY token")]
        assert await store.ledger_problems() == []
    finally:
        await store.close()
    return outcomes, rows


_request = st.tuples(st.integers(0, 3), st.integers(1, 3000),
                     st.sampled_from([None, "a", "b", "c", "d"]), st.sampled_from([None, "m"]),
                     st.sampled_from([0, 0, 200]))


@settings(max_examples=40, deadline=None)
@given(batches=st.lists(st.lists(_request, min_size=1, max_size=12), min_size=1, max_size=5))
def test_one_call_on_the_writer_thread_does_what_the_general_path_does(
        batches: list[list[tuple[Any, ...]]]) -> None:
    """Replays, conflicts, keyless debits, unknown, revoked and expired tokens, overdrafts:
    the same answers in the same order, and the same rows, both ways."""
    with tempfile.TemporaryDirectory() as directory:
        fast = asyncio.run(_ledger_state(Path(directory) / "fast.db", True, batches))
        general = asyncio.run(_ledger_state(Path(directory) / "general.db", False, batches))
    assert fast == general
    assert fast[1][0] or all(o.status != 200 for batch in fast[0] for o in batch)
