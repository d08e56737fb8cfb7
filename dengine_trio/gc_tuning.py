"""CPython's cyclic garbage collector, set for a process that serves requests (issue 18).

Why. CPython runs a generation-0 collection whenever container allocations minus
deallocations exceed ``threshold0`` (700 by default), promotes what survives, and collects
the whole heap once enough was promoted. A leader answering 16 concurrent writes holds a few
thousand young containers at any moment (Hypercorn's streams, trio tasks and cancel scopes,
coroutine frames, h11 events): it crossed 700 about once per 9 writes, although what a
request allocates is freed by reference counting and almost none of it is cyclic garbage.
Each collection promoted the requests then in flight, and those promotions paid for a full
collection of the heap about once per 1,100 writes (30-45 ms each with the write benchmark's
data: a p99 step of the same size). Measured with ``python -m bench.http_side``'s probe and
``gc.callbacks`` on the leader, 16 connections of ``POST /kv``: about 50 µs of CPU per write
went to the collector (9% of the request); with the settings below about 2 µs.

What. :func:`tune_for_serving` raises ``threshold0`` to :data:`THRESHOLD0` (the in-flight peak
stays below it; a collection now comes every few thousand writes, driven by what the node
keeps, such as log entries) and leaves the older generations' thresholds as they are.
:func:`freeze_startup`, once the process serves, collects once and moves every object alive
then (modules, classes, functions, the configuration, the state restored at startup) to the
permanent generation, which no later collection traverses (``gc.freeze``).

The node's process and its HTTP workers apply both; an application that embeds the engine
owns its process and chooses for itself (docs/api.md). Garbage cycles are still collected,
just in larger batches: at most ``THRESHOLD0`` more young containers wait for it.
"""

from __future__ import annotations

import gc

__all__ = ["THRESHOLD0", "freeze_startup", "tune_for_serving"]

THRESHOLD0 = 20_000
"""Generation-0 threshold: net container allocations between two young collections."""


def tune_for_serving(threshold0: int = THRESHOLD0) -> None:
    """Set the collector's generation-0 threshold to ``threshold0`` (>= 1; the older
    generations' thresholds unchanged). Raises ValueError for ``threshold0`` < 1 (0 would
    disable the collector)."""
    if threshold0 < 1:
        raise ValueError(f"threshold0 must be >= 1, got {threshold0}")
    _, threshold1, threshold2 = gc.get_threshold()
    gc.set_threshold(threshold0, threshold1, threshold2)


def freeze_startup() -> int:
    """Collect once, then exclude every object alive now from all later collections
    (``gc.freeze``); returns how many objects were frozen. Call once the process serves:
    what it built to start is kept for its lifetime."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
