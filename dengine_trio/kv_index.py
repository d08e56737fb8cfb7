"""The key index of ``KVStateMachine``: its keys in byte order, for prefix listing (issue 17).

A list of sorted chunks (what ``sortedcontainers.SortedList`` does, without its positional
index): ``bisect`` over the chunks' last keys, then ``insort`` into one chunk of at most
``2 * LOAD`` keys, so an insert or removal moves at most a chunk's pointers, not the whole
list's. Only creations and deletions of keys touch it (an overwrite does not).

Why this and not the alternatives, measured on this machine (1,000,000 random 15-byte keys,
``python bench/kv_apply.py`` has the state machine's figures):

* ``sortedcontainers.SortedList.add``: 1.9 us per new key, ``remove`` 2.3 us; this class
  1.6 us and 1.8 us (no positional index to keep), and no new runtime dependency.
* Sorting on demand with a cache (nothing on the write path): ``sorted()`` of 1,000,000 keys
  takes 0.47 s, on the event loop at the first listing after any key was created or deleted;
  a workload that writes new keys and lists would stall the loop (and its heartbeats) for
  that long at every listing.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, insort
from collections.abc import Iterable, Iterator
from itertools import islice

LOAD = 512
"""A chunk is split in two once it holds more than ``2 * LOAD`` keys."""
SORT_RUN = 32_768
"""Keys sorted by one ``sorted()`` call when an index is built (~10 ms of GIL at most)."""


class SortedKeys:
    """A set of bytes keys iterated in byte order. ``add`` / ``discard`` O(log n) plus a memmove
    of at most ``2 * LOAD`` pointers; ``iter_from`` O(log n) to the first key."""

    __slots__ = ("_chunks", "_len", "_maxes")

    def __init__(self, keys: Iterable[bytes] = ()) -> None:
        """The index of ``keys`` (distinct). Built by ``restore``, in a worker thread: sorted
        in runs of ``SORT_RUN`` keys merged in Python, because one ``sorted()`` of 1,000,000
        keys holds the GIL, and so stalls the event loop, for ~0.5 s."""
        keys = list(keys)
        if len(keys) <= SORT_RUN:
            merged: Iterator[bytes] = iter(sorted(keys))
        else:
            runs = [sorted(keys[at : at + SORT_RUN]) for at in range(0, len(keys), SORT_RUN)]
            merged = heapq.merge(*runs)
        self._chunks: list[list[bytes]] = []
        while chunk := list(islice(merged, LOAD)):
            self._chunks.append(chunk)
        self._maxes: list[bytes] = [chunk[-1] for chunk in self._chunks]
        self._len = len(keys)

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._chunks:
            yield from chunk

    def add(self, key: bytes) -> None:
        """Insert ``key``; the caller guarantees it is not present (the state machine adds a
        key only when it creates it)."""
        maxes = self._maxes
        if not maxes:
            self._chunks.append([key])
            maxes.append(key)
            self._len = 1
            return
        pos = bisect_left(maxes, key)
        if pos == len(maxes):
            pos -= 1
            chunk = self._chunks[pos]
            chunk.append(key)
            maxes[pos] = key
        else:
            chunk = self._chunks[pos]
            insort(chunk, key)
        self._len += 1
        if len(chunk) > 2 * LOAD:
            half = chunk[LOAD:]
            del chunk[LOAD:]
            maxes[pos] = chunk[-1]
            self._chunks.insert(pos + 1, half)
            maxes.insert(pos + 1, half[-1])

    def discard(self, key: bytes) -> None:
        """Remove ``key`` if present."""
        maxes = self._maxes
        pos = bisect_left(maxes, key)
        if pos == len(maxes):
            return
        chunk = self._chunks[pos]
        at = bisect_left(chunk, key)
        if at < len(chunk) and chunk[at] == key:
            del chunk[at]
            self._len -= 1
            if not chunk:
                del self._chunks[pos]
                del maxes[pos]
            elif at == len(chunk):
                maxes[pos] = chunk[-1]

    def iter_from(self, start: bytes) -> Iterator[bytes]:
        """The keys ``>= start`` in byte order. Do not change the set while iterating."""
        maxes = self._maxes
        pos = bisect_left(maxes, start)
        if pos == len(maxes):
            return
        chunks = self._chunks
        chunk = chunks[pos]
        yield from chunk[bisect_left(chunk, start) :]
        for later in range(pos + 1, len(chunks)):
            yield from chunks[later]
