"""paused_gc: the collector is off inside and back to its previous state after."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from anonticket.monero.gc_pause import paused_gc


@pytest.fixture
def collector_state() -> Iterator[None]:
    was_enabled = gc.isenabled()
    yield
    if was_enabled:
        gc.enable()
    else:
        gc.disable()


@pytest.mark.parametrize("enabled_before", [True, False])
def test_collector_is_off_inside_and_restored_after(collector_state: None, enabled_before: bool) -> None:
    gc.enable() if enabled_before else gc.disable()
    with paused_gc():
        inside = gc.isenabled()
    assert (inside, gc.isenabled()) == (False, enabled_before)


def test_collector_is_restored_when_the_block_raises(collector_state: None) -> None:
    gc.enable()
    with pytest.raises(ValueError), paused_gc():
        raise ValueError("boom")
    assert gc.isenabled()
