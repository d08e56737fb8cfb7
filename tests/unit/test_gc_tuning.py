"""``dengine_trio.gc_tuning`` in this process: the generation-0 threshold it sets and what it
freezes. Each test puts the process's collector back as it found it (thresholds, frozen
objects), so the rest of the suite runs with the interpreter's own settings."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from dengine_trio import gc_tuning


@pytest.fixture(autouse=True)
def restore_collector() -> Iterator[None]:
    thresholds = gc.get_threshold()
    # Nothing in the suite freezes objects but these tests (unfreezing could not tell a
    # test's frozen objects from earlier ones).
    assert gc.get_freeze_count() == 0
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


def test_tune_for_serving_sets_threshold0_and_keeps_the_older_generations() -> None:
    gc.set_threshold(700, 13, 17)  # older thresholds the call must carry over, not reset
    gc_tuning.tune_for_serving()
    assert gc.get_threshold() == (gc_tuning.THRESHOLD0, 13, 17)
    gc_tuning.tune_for_serving(1234)
    assert gc.get_threshold() == (1234, 13, 17)


@pytest.mark.parametrize("threshold0", [0, -1])
def test_tune_for_serving_refuses_a_threshold_below_one(threshold0: int) -> None:
    gc.set_threshold(700, 10, 10)
    with pytest.raises(ValueError, match="threshold0 must be >= 1"):
        gc_tuning.tune_for_serving(threshold0)
    assert gc.get_threshold() == (700, 10, 10)  # 0 would have turned the collector off


def test_freeze_startup_freezes_what_is_alive_and_returns_the_count() -> None:
    kept = [[] for _ in range(1000)]  # containers alive at the freeze: they must be frozen
    frozen = gc_tuning.freeze_startup()
    assert frozen == gc.get_freeze_count()
    assert frozen > len(kept)
    # Frozen objects are out of every generation: a full collection no longer sees them.
    assert sum(len(gc.get_objects(generation)) for generation in range(3)) < frozen
    assert not any(obj is kept for obj in gc.get_objects())
