"""The in-memory views: TTL set (time injected, never slept), FIFO map, prefix index."""

from __future__ import annotations

from array import array

import pytest

import anonticket.ledger.key_index as key_index_module
from anonticket.ledger.cache import BoundedMap, TtlSet
from anonticket.domain.ids import key_prefix
from anonticket.ledger.key_index import KeyIndex


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def key(n: int) -> bytes:
    """A 32-byte key whose 8-byte prefix is ``n``."""
    return n.to_bytes(8, "big") + bytes(24)


# ---------------------------------------------------------------------- TtlSet
def test_entry_lives_exactly_ttl() -> None:
    clock = Clock()
    seen: TtlSet[bytes] = TtlSet(10, 0.5, clock)
    seen.add(b"a")
    clock.now += 0.499
    assert b"a" in seen
    clock.now += 0.001
    assert b"a" not in seen
    assert len(seen) == 0


def test_re_adding_refreshes_the_ttl_and_the_order() -> None:
    clock = Clock()
    seen: TtlSet[bytes] = TtlSet(2, 1.0, clock)
    seen.add(b"a")
    clock.now += 0.6
    seen.add(b"b")
    seen.add(b"a")  # now the newest, with a fresh second to live
    clock.now += 0.6
    assert (b"a" in seen, b"b" in seen) == (True, True)
    seen.add(b"c")  # over capacity: b is now the oldest and goes
    assert (b"a" in seen, b"b" in seen, b"c" in seen) == (True, False, True)


def test_capacity_bound_drops_the_oldest() -> None:
    clock = Clock()
    seen: TtlSet[int] = TtlSet(100, 60.0, clock)
    for i in range(1000):
        seen.add(i)
        clock.now += 0.001
        assert len(seen) <= 100
    assert len(seen) == 100
    assert all(i in seen for i in range(900, 1000))
    assert not any(i in seen for i in range(900))


def test_expired_entries_do_not_count() -> None:
    # len() feeds the negative-cache gauge: it must not report entries that answer "no"
    clock = Clock()
    seen: TtlSet[int] = TtlSet(100, 1.0, clock)
    for i in range(10):
        seen.add(i)
    clock.now += 0.5
    for i in range(10, 15):
        seen.add(i)
    clock.now += 0.6
    assert len(seen) == 5
    assert sorted(i for i in range(15) if i in seen) == list(range(10, 15))


def test_discard() -> None:
    seen: TtlSet[bytes] = TtlSet(10, 5.0, Clock())
    seen.add(b"a")
    seen.add(b"b")
    seen.discard(b"a")
    seen.discard(b"never there")
    assert (b"a" in seen, b"b" in seen, len(seen)) == (False, True, 1)


@pytest.mark.parametrize(("capacity", "ttl"), [(0, 5.0), (10, 0.0)])
def test_zero_capacity_or_ttl_turns_it_off(capacity: int, ttl: float) -> None:
    seen: TtlSet[bytes] = TtlSet(capacity, ttl, Clock())
    seen.add(b"a")
    assert (b"a" in seen, len(seen)) == (False, 0)


# ---------------------------------------------------------------------- BoundedMap
def test_bounded_map_forgets_the_oldest_insertion() -> None:
    cache: BoundedMap[int, str] = BoundedMap(3)
    for i in range(3):
        cache.put(i, str(i))
    cache.put(0, "zero")  # an update is not an insertion: nothing is evicted
    assert (len(cache), cache.get(0)) == (3, "zero")
    cache.put(3, "3")
    assert (cache.get(0), cache.get(1), cache.get(3), len(cache)) == (None, "1", "3", 3)
    cache.pop(1)
    cache.pop(99)
    assert (cache.get(1), len(cache)) == (None, 2)


def test_bounded_map_of_capacity_zero_stores_nothing() -> None:
    cache: BoundedMap[int, str] = BoundedMap(0)
    cache.put(1, "x")
    assert (cache.get(1), len(cache)) == (None, 0)


# ---------------------------------------------------------------------- KeyIndex
def test_index_answers_from_snapshot_and_additions() -> None:
    index = KeyIndex(array("Q", [1, 5, 9]))
    index.add(key(7))
    assert [n for n in range(12) if index.might_contain(key(n))] == [1, 5, 7, 9]
    # only the prefix counts: a different key with a known prefix is a "maybe"
    assert index.might_contain(key(5)[:8] + b"\xff" * 24)
    assert len(index) == 4


def test_unsorted_snapshot_is_sorted() -> None:
    # reversed input makes a binary search miss most keys unless it is sorted first
    keys = list(range(200, 0, -3))
    index = KeyIndex(array("Q", keys))
    assert all(index.might_contain(key(n)) for n in keys)
    assert not any(index.might_contain(key(n)) for n in range(201) if n not in keys)


def test_replace_drops_additions() -> None:
    index = KeyIndex(array("Q", [1]))
    index.add(key(2))
    index.replace(array("Q", [3, 4]))
    assert [n for n in range(6) if index.might_contain(key(n))] == [3, 4]


def test_merge_keeps_every_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(key_index_module, "_MERGE_AT", 8)
    snapshot = list(range(0, 1000, 10))
    index = KeyIndex(array("Q", snapshot))
    added = [n for n in range(5, 1000, 17) if n % 10]  # interleaved with the snapshot
    for n in added:
        index.add(key(n))
        assert index.might_contain(key(n))
    assert len(added) > 5 * 8  # several merges happened
    assert len(index._recent) < 8  # the additions really went into the sorted array
    expected = sorted(snapshot + added)
    assert list(index._sorted) == [k for k in expected if k not in index._recent]
    assert all(index.might_contain(key(n)) for n in expected)
    assert not any(index.might_contain(key(n)) for n in range(1000) if n not in expected)
    assert len(index) == len(expected)


def test_adding_a_known_key_again_does_not_grow_the_index(monkeypatch: pytest.MonkeyPatch) -> None:
    # every top-up re-adds its PID; the index must stay one entry per prefix
    monkeypatch.setattr(key_index_module, "_MERGE_AT", 4)
    index = KeyIndex(array("Q", [key_prefix(key(1))]))
    for _ in range(3):
        for n in range(1, 10):
            index.add(key(n))
    assert len(index) == 9
    assert sorted(list(index._sorted) + sorted(index._recent)) == list(range(1, 10))


def test_add_many_is_adding_one_by_one(monkeypatch: pytest.MonkeyPatch) -> None:
    # the monitor adds a poll's PIDs in bulk: top-ups, repeats and a merge in the middle
    monkeypatch.setattr(key_index_module, "_MERGE_AT", 16)
    snapshot = array("Q", range(0, 400, 4))
    batch = [key(n) for n in [*range(0, 200, 3), 5, 5, 7, *range(0, 60, 4)]]
    one_by_one, bulk = KeyIndex(array("Q", snapshot)), KeyIndex(array("Q", snapshot))
    for raw in batch:
        one_by_one.add(raw)
    bulk.add_many(batch)
    expected = sorted(set(snapshot) | {key_prefix(raw) for raw in batch})
    assert len(bulk._recent) < 16  # the bulk add merged too
    assert sorted([*bulk._sorted, *bulk._recent]) == expected
    assert sorted([*one_by_one._sorted, *one_by_one._recent]) == expected
    assert [n for n in range(400) if bulk.might_contain(key(n))] == expected
