"""Pausing the cyclic garbage collector around one synchronous burst of allocations.

Decoding a big wallet answer creates millions of dicts and strings that live until the
poll ends; each time the collector's thresholds trip it walks all of them, which cost
a tenth of a 100k-transfer poll (docs/benchmarks.md). The bursts wrapped in this have
no ``await`` inside, so no other task runs while the collector is off, and reference
counting still frees everything that is not a cycle.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def paused_gc() -> Iterator[None]:
    """Collector off for the block, back to its previous state after (even on error)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
