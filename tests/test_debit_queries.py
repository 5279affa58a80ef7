"""The debit batch's reads stay index lookups however many keys are kept.

A day of Idempotency-Keys can be millions of rows; a query that scans them is correct
and fast on a test database and a 10 ms stall per batch in production. The plan is
what SQLite will do, so the test asserts the plan, not a time.
"""

from __future__ import annotations

import os
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from anonticket.domain import PaymentId, Transfer
from anonticket.storage import DebitRequest, Storage
from anonticket.storage.core import CHUNK
from anonticket.storage.tokens import keys_lookup_sql


@pytest.mark.parametrize("count", [1, 2, 64, CHUNK])
async def test_the_key_lookup_probes_the_primary_key(storage: Storage, tmp_path: Path,
                                                     count: int) -> None:
    with closing(sqlite3.connect(tmp_path / "anonticket.db")) as conn:
        plan = conn.execute("EXPLAIN QUERY PLAN " + keys_lookup_sql(count),
                            [b"t" * 32, "k"] * count).fetchall()
    details = [row[3] for row in plan]
    assert any("USING PRIMARY KEY (token=? AND key=?)" in d for d in details), details
    # the only scan is of the VALUES list itself (which SQLite names "wanted")
    assert not any(d.startswith(("SCAN k", "SCAN idempotency_keys")) for d in details), details


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
