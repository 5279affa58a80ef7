"""Bounded in-memory maps: the negative PID cache (with a TTL), a FIFO record cache, and a
map whose entries expire at times of their own (verified credentials, revoked subjects).

Both are plain dicts underneath because the redeem and introspection hot paths call
them on every request; the clock is injected so tests control time without sleeping.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class TtlSet(Generic[K]):
    """Keys remembered for ``ttl`` seconds, at most ``capacity`` of them (oldest go first).

    Every entry lives exactly ``ttl``, so insertion order is expiry order and expired
    entries are always at the front of the dict: purging is amortised O(1).
    """

    def __init__(self, capacity: int, ttl: float, clock: Callable[[], float] = time.monotonic):
        self._capacity = capacity
        self._ttl = ttl
        self._clock = clock
        # OrderedDict, not dict: a dict keeps a hole for every key deleted from its
        # front, and next(iter()) walks them all, so a busy FIFO cost ~13 us per add
        self._expiry: OrderedDict[K, float] = OrderedDict()

    def __contains__(self, key: K) -> bool:
        expiry = self._expiry.get(key)
        if expiry is None:
            return False
        if expiry <= self._clock():
            del self._expiry[key]
            return False
        return True

    def add(self, key: K) -> None:
        if self._capacity <= 0 or self._ttl <= 0:
            return
        now = self._clock()
        self._expiry.pop(key, None)  # re-adding moves the key to the back (newest)
        self._expiry[key] = now + self._ttl
        self._purge(now)

    def _purge(self, now: float) -> None:
        entries = self._expiry
        while entries:
            oldest = next(iter(entries))
            if entries[oldest] > now and len(entries) <= self._capacity:
                return
            del entries[oldest]

    def discard(self, key: K) -> None:
        self._expiry.pop(key, None)

    def __len__(self) -> int:
        """Live entries only: expired ones would otherwise linger in the gauge until the next add."""
        self._purge(self._clock())
        return len(self._expiry)


class BoundedMap(Generic[K, V]):
    """A dict that forgets its oldest insertion when full: a cache with no TTL.

    Used for records this process is the only writer of, so they never go stale while
    cached; FIFO instead of LRU because a hit must stay as cheap as a dict lookup.
    """

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._items: OrderedDict[K, V] = OrderedDict()  # O(1) oldest, see TtlSet

    def get(self, key: K) -> V | None:
        return self._items.get(key)

    def put(self, key: K, value: V) -> None:
        items = self._items
        if key not in items and len(items) >= self._capacity:
            if not items:  # capacity 0: caching is off
                return
            del items[next(iter(items))]
        items[key] = value

    def pop(self, key: K) -> None:
        self._items.pop(key, None)

    def __len__(self) -> int:
        return len(self._items)


class ExpiringMap(Generic[K, V]):
    """Entries that each expire at a time of their own (``clock``'s seconds: the ledger's
    wall clock, as credentials' ``exp`` are), at most ``capacity`` of them, the oldest
    inserted going first (None: no bound, for a set that must never forget early).

    An expired entry is never answered: ``get`` drops it when it meets it, and ``purge``
    drops expired ones from the front (where they collect when entries are inserted in
    expiry order, as revocations are).
    """

    def __init__(self, capacity: int | None, clock: Callable[[], float]) -> None:
        self._capacity = capacity
        self._clock = clock
        self._items: OrderedDict[K, tuple[V, float]] = OrderedDict()  # O(1) oldest, see TtlSet

    def get(self, key: K) -> V | None:
        entry = self._items.get(key)
        if entry is None:
            return None
        if entry[1] <= self._clock():
            del self._items[key]
            return None
        return entry[0]

    def __contains__(self, key: K) -> bool:
        return self.get(key) is not None

    def put(self, key: K, value: V, expires_at: float) -> None:
        items = self._items
        items.pop(key, None)  # re-inserting moves the key to the back
        if self._capacity is not None:
            if self._capacity <= 0:
                return
            while len(items) >= self._capacity:
                del items[next(iter(items))]
        items[key] = (value, expires_at)

    def purge(self) -> None:
        """Drop the expired entries at the front."""
        items, now = self._items, self._clock()
        while items:
            oldest = next(iter(items))
            if items[oldest][1] > now:
                return
            del items[oldest]

    def clear(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)
