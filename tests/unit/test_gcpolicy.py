"""gcpolicy.tune: what start-up left is frozen, the young generation is collected less often,
and cycles made afterwards are still collected."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from orchestrator import gcpolicy


@pytest.fixture
def restored_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector frees it


@pytest.mark.usefixtures("restored_gc")
def test_tune_freezes_start_up_and_raises_only_the_young_threshold() -> None:
    _, middle, old = gc.get_threshold()
    gc.unfreeze()
    survivor = Node()  # held through start-up, like a module's objects
    gcpolicy.tune()
    assert gc.get_threshold() == (gcpolicy.YOUNG_THRESHOLD, middle, old)
    assert gc.get_freeze_count() > 0
    # Frozen: no later collection walks it.
    assert all(o is not survivor for o in gc.get_objects())


@pytest.mark.usefixtures("restored_gc")
def test_cycles_made_after_tune_are_still_collected() -> None:
    gcpolicy.tune()
    gone = weakref.ref(Node())
    assert gone() is not None
    gc.collect()
    assert gone() is None
