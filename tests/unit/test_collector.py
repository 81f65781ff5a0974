"""The server settles Python's garbage collector once aNode has started (``server.gc_threshold``)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from anode.api.app import settle_collector
from anode.config import ServerSettings


@pytest.fixture
def collector() -> Iterator[None]:
    threshold = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


def test_the_heap_alive_at_start_is_frozen_and_the_threshold_raised(collector: None) -> None:
    gc.set_threshold(700, 10, 10)
    settle_collector(ServerSettings().gc_threshold)
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == (50_000, 20, 20)


def test_zero_keeps_pythons_threshold(collector: None) -> None:
    gc.set_threshold(700, 10, 10)
    settle_collector(0)
    assert gc.get_threshold() == (700, 10, 10)
    assert gc.get_freeze_count() > 0


def test_the_setting_is_bounded() -> None:
    with pytest.raises(ValueError, match="gc_threshold"):
        ServerSettings(gc_threshold=-1)
