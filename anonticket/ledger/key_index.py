"""A compact in-memory index of the 8-byte prefixes of every stored PID (or token).

It answers "certainly unknown" without touching SQLite, which is what keeps a flood of
random PIDs or tokens cheap: a sorted ``array('Q')`` costs 8 bytes per key (~8 MB for a
million) where a set of ints would cost ~85 MB. New keys go to a small set and are merged
into the array in bulk, so inserting stays cheap. A hit only means "maybe": the caller
still asks the database, because distinct keys can share a prefix.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Iterable
from heapq import merge
from itertools import islice
from operator import gt

from anonticket.domain.ids import key_prefix

# ~70 bytes a key in the set: at most ~9 MB before the merge folds them into the array
_MERGE_AT = 131072
# Keys are bucketed by their top 16 bits: a lookup bisects ~15 keys of one bucket, not
# the whole array, which on a million keys halves its cost (fewer cache misses).
_BUCKET_SHIFT = 48


class KeyIndex:
    def __init__(self, sorted_prefixes: array | None = None) -> None:
        self._sorted = array("Q")
        self._bounds = _bucket_bounds(self._sorted)
        self._recent: set[int] = set()
        if sorted_prefixes is not None:
            self.replace(sorted_prefixes)

    def replace(self, prefixes: array) -> None:
        """Load a full snapshot; sorts it only if it is not already in order."""
        if any(map(gt, prefixes, islice(prefixes, 1, None))):  # C-level pairwise check
            prefixes = array("Q", sorted(prefixes))
        self._sorted = prefixes
        self._bounds = _bucket_bounds(prefixes)
        self._recent.clear()

    def add(self, raw: bytes) -> None:
        self.add_many((raw,))

    def add_many(self, raws: Iterable[bytes]) -> None:
        """Add keys, merging at most once: a monitor poll credits up to 100k PIDs at a time."""
        recent, keys, bounds = self._recent, self._sorted, self._bounds
        for raw in raws:
            key = int.from_bytes(raw[:8], "big")  # key_prefix, inlined for the bulk case
            if key in recent:
                continue
            # every top-up re-adds its PID: without this check each one would become a
            # duplicate in the sorted array at the next merge, growing it without bound
            bucket = key >> _BUCKET_SHIFT
            end = bounds[bucket + 1]
            i = bisect_left(keys, key, bounds[bucket], end)
            if i == end or keys[i] != key:
                recent.add(key)
        if len(recent) >= _MERGE_AT:
            self._merge()

    def might_contain(self, raw: bytes) -> bool:
        key = key_prefix(raw)
        if key in self._recent:
            return True
        keys, bounds = self._sorted, self._bounds
        bucket = key >> _BUCKET_SHIFT
        end = bounds[bucket + 1]
        i = bisect_left(keys, key, bounds[bucket], end)
        return i < end and keys[i] == key

    def __len__(self) -> int:
        return len(self._sorted) + len(self._recent)

    def _merge(self) -> None:
        # a streaming merge keeps the peak at two arrays, not a million-int list or set
        # (a list of 1.1M ints would add ~40 MB for the length of the merge)
        self._sorted = array("Q", merge(self._sorted, sorted(self._recent)))
        self._bounds = _bucket_bounds(self._sorted)
        self._recent.clear()


def _bucket_bounds(keys: array) -> array:
    """Where each top-16-bit bucket starts in ``keys`` (sorted), plus the end: 65,537 entries."""
    buckets = 1 << (64 - _BUCKET_SHIFT)
    return array("Q", [bisect_left(keys, b << _BUCKET_SHIFT) for b in range(buckets)] + [len(keys)])
