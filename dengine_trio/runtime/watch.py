"""Watches: the changes the state machine applies, delivered to watchers in index order.

``WatchHub`` is fed by ``KVStateMachine.listener`` (one ``KVChange`` per key put, deleted or
expired, in index order; a transaction gives one per operation, all at its index) and by
``KVStateMachine.listener_reset`` (the state was replaced by a snapshot as of an index: what
happened before it is no longer known here). It keeps

* a **retained history**: the most recent changes, at most ``history_events`` of them and
  about ``history_bytes`` of keys and values (the newest index is always kept whole), so a
  client that reconnects with ``from_index`` misses nothing the history still holds. It lives
  in memory on each node: after a restart it starts at the snapshot the node restored (the log
  after it is replayed through the listener), after an installed snapshot at that snapshot's
  index. ``from_index`` at or below ``compacted_through`` cannot be served without a gap:
  :class:`WatchCompacted` names the oldest index that can;
* the **watchers**, at most ``max_watchers`` (:class:`TooManyWatchers` beyond). Each has a
  bounded queue of the changes it matches (a key, or a key prefix): at most ``queue_events``
  changes and ``queue_bytes`` of keys and values (counted as the history counts them; one
  change is always taken, whatever its size) beyond the history it was given when it started.
  A change that finds the queue full drops it and ends the watcher with :class:`SlowConsumer`
  (the queue never grows past its bounds; the consumer learns why, and may come back with
  ``from_index`` = its last index + 1). The byte bound is what bounds memory: a queue holds
  its changes after the history evicted them, so without it one slow watcher of large values
  could pin ``queue_events`` x ``limits.max_value_bytes`` (about 1 GB by default). A reset
  whose index reaches a watcher's ``from_index`` ends it, after what it already holds, with
  :class:`WatchCompacted`. Closing the hub (the node stops) ends every watcher with
  ``Stopped``.

Exactly once, in order, no gap, per watcher: a watcher's queue is filled from the history
and registered in one step on the trio thread (no checkpoint in between), and the apply loop
calls the listener for whole entries between two checkpoints, so nothing is seen twice or
falls between the replay and the live changes; the queue is FIFO and appended in index order.

Cost on the apply path: one dict lookup for key watchers of the changed key, one
``startswith`` per prefix watcher, one append to the history; per watcher a change is queued
for, a compare for ``queue_events`` and an integer add and compare for ``queue_bytes`` (the
change's size is computed once, in ``on_change``: about 50 ns more per watcher than the
event bound alone, CPython 3.11).

All methods run on the node's trio thread, except :meth:`WatchHub.reset`, which a state
machine may call from the worker thread that restores a snapshot: it is then carried out on
the trio thread before anything else the hub does.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import trio

from ..errors import DengineError, Overloaded, Stopped

__all__ = [
    "DEFAULT_HISTORY_BYTES",
    "DEFAULT_HISTORY_EVENTS",
    "DEFAULT_MAX_WATCHERS",
    "DEFAULT_QUEUE_BYTES",
    "DEFAULT_QUEUE_EVENTS",
    "EVENT_OVERHEAD_BYTES",
    "SlowConsumer",
    "TooManyWatchers",
    "WatchCompacted",
    "WatchEvent",
    "WatchHub",
    "Watcher",
]

DEFAULT_HISTORY_EVENTS = 10_000
DEFAULT_HISTORY_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_WATCHERS = 1_000
DEFAULT_QUEUE_EVENTS = 1_000
DEFAULT_QUEUE_BYTES = 4 * 1024 * 1024
"""Bytes of changes one watcher may hold beyond its replay (``[watch] queue_bytes``): four
changes of the largest value (``limits.max_value_bytes``, 1 MiB) or the largest transaction
(``limits.max_txn_bytes``, 1 MiB), so a consumer that keeps up is not ended by one large
entry; about 4 KiB a change at ``queue_events`` (1,000), so with smaller values the event bound
is the one that ends a slow consumer, as before. Memory a node's watchers can pin beyond the
history: ``max_watchers`` x this (about 4 GiB at 1,000 watchers, reached only if each holds
different changes), where the event bound alone allowed about 1 TB."""
EVENT_OVERHEAD_BYTES = 64
"""What one retained change costs beyond its key and value (bytes, about: a tuple and ints),
counted toward ``history_bytes`` and ``queue_bytes`` so that empty values still count."""

Kind = Literal["put", "delete", "expire"]


@dataclass(slots=True)
class WatchEvent:
    """One change: ``key`` was put (``value`` its new value), deleted or expired (``value``
    None) by the log entry at ``index``. Shared by the history and every watcher's queue:
    never changed. ``size``: what it counts toward ``history_bytes`` and ``queue_bytes``
    (bytes: ``len(key) + len(value or b"") + EVENT_OVERHEAD_BYTES``, set by the hub; not
    compared)."""

    index: int
    key: bytes
    value: bytes | None
    kind: Kind
    size: int = field(default=0, compare=False, repr=False)


class WatchCompacted(DengineError):
    """The changes asked for are no longer retained on this node: ``oldest_index`` is the
    lowest ``from_index`` it can serve now (HTTP 410 ``compacted``)."""

    def __init__(self, oldest_index: int, message: str) -> None:
        super().__init__(message)
        self.oldest_index = oldest_index


class TooManyWatchers(Overloaded):
    """``[watch] max_watchers`` watchers are open on this node (HTTP 503)."""


class SlowConsumer(DengineError):
    """The watcher's queue was full (``queue_events`` changes, or no room for the change's
    bytes within ``queue_bytes``) when a change came: the watcher ended (its queue dropped).
    ``next_index``: the index of the first change it did not deliver, the ``from_index`` to
    come back with."""

    def __init__(self, next_index: int, message: str) -> None:
        super().__init__(message)
        self.next_index = next_index


class Watcher:
    """One watch: the changes of one ``key``, or of every key starting with ``prefix``, from
    ``from_index`` on. Made by :meth:`WatchHub.subscribe`; read with :meth:`next` (or
    :meth:`next_nowait`, or ``async for``); give it back with :meth:`close` (or use it as an
    async context manager). After :meth:`close`, reading raises ``Stopped``."""

    __slots__ = (
        "_bytes",
        "_end",
        "_hub",
        "_limit",
        "_max_bytes",
        "_queue",
        "_wake",
        "from_index",
        "key",
        "next_index",
        "prefix",
    )

    def __init__(
        self,
        hub: WatchHub,
        key: bytes | None,
        prefix: bytes | None,
        from_index: int,
        replay: deque[WatchEvent],
        queue_events: int,
        queue_bytes: int,
    ) -> None:
        self._hub = hub
        self.key = key
        self.prefix = prefix
        self.from_index = from_index
        self.next_index = from_index
        """The lowest index this watcher has not delivered a change of (its resume point)."""
        self._queue = replay
        # The replay counts toward the bound until it is delivered: the bound is on how far a
        # consumer falls behind the live changes, not on how much history it asked for.
        self._limit = queue_events + len(replay)
        # Bytes of the live changes queued (the replay's are not counted: same reason; they
        # are the history's, which bounds them). The replay is delivered first, so a change
        # delivered while _limit is above queue_events is the replay's, any other a live one.
        self._bytes = 0
        self._max_bytes = queue_bytes
        self._end: DengineError | None = None
        self._wake: trio.Event | None = None

    def matches(self, key: bytes) -> bool:
        """Whether a change of ``key`` is one this watcher delivers."""
        if self.key is not None:
            return key == self.key
        assert self.prefix is not None
        return key.startswith(self.prefix)

    @property
    def queued(self) -> int:
        """Changes waiting to be delivered."""
        return len(self._queue)

    @property
    def queued_bytes(self) -> int:
        """Bytes (as counted toward ``queue_bytes``) of the live changes waiting to be
        delivered: the replay's are not counted."""
        return self._bytes

    def next_nowait(self) -> WatchEvent:
        """The next change if one is queued; raises ``trio.WouldBlock`` if none, or the
        watcher's end (:class:`SlowConsumer`, :class:`WatchCompacted`, ``Stopped``) once its
        queue is delivered."""
        hub = self._hub
        if hub._reset_pending is not None:
            hub._settle_reset()
        queue = self._queue
        if queue:
            event = queue.popleft()
            if self._limit > hub.queue_events:
                self._limit -= 1
            else:
                self._bytes -= event.size
            # A transaction's changes share its index: it is delivered once all of them are.
            if not queue or queue[0].index != event.index:
                self.next_index = event.index + 1
            return event
        if self._end is not None:
            raise self._end
        raise trio.WouldBlock

    async def next(self) -> WatchEvent:
        """Wait for the next change (see :meth:`next_nowait` for the ends)."""
        while True:
            try:
                event = self.next_nowait()
            except trio.WouldBlock:
                self._wake = trio.Event()
                await self._wake.wait()
                continue
            await trio.lowlevel.checkpoint()
            return event

    async def wait_queued(self) -> None:
        """Wait until a change is queued or the watcher ended."""
        while not self._queue and self._end is None:
            if self._hub._reset_pending is not None:
                self._hub._settle_reset()
                continue
            self._wake = trio.Event()
            await self._wake.wait()

    def __aiter__(self) -> Watcher:
        return self

    async def __anext__(self) -> WatchEvent:
        return await self.next()

    async def __aenter__(self) -> Watcher:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop watching: the hub forgets this watcher and its queue. Idempotent."""
        self._hub._remove(self)
        self._queue.clear()
        self._bytes = 0
        if self._end is None:
            self._end = Stopped("this watcher was closed")
        self._wakeup()

    # -- the hub's side

    def _push(self, event: WatchEvent) -> None:
        if self._end is not None or event.index < self.from_index:
            return
        queue = self._queue
        size = event.size
        held = self._bytes + size
        # One live change is always taken (held == size: none was queued), whatever its size:
        # the bound is on what waits behind it.
        if len(queue) >= self._limit or (held > self._max_bytes and held != size):
            hub = self._hub
            behind = (
                f"{hub.queue_events} changes behind ([watch] queue_events)"
                if len(queue) >= self._limit
                else f"{hub.queue_bytes} bytes of changes behind ([watch] queue_bytes)"
            )
            queue.clear()
            self._bytes = 0
            resume = self.next_index
            self._finish(
                SlowConsumer(
                    resume,
                    f"the consumer fell more than {behind}; reconnect with from_index={resume}",
                )
            )
            return
        self._bytes = held
        queue.append(event)
        self._wakeup()

    def _finish(self, end: DengineError) -> None:
        if self._end is None:
            self._end = end
        self._hub._remove(self)
        self._wakeup()

    def _wakeup(self) -> None:
        wake = self._wake
        if wake is not None:
            self._wake = None
            wake.set()


class WatchHub:
    """Retained history and watchers of one node (see the module docstring).

    ``history_events`` (>= 1) and ``history_bytes`` bound the history, ``max_watchers`` the
    watchers open at once, ``queue_events`` (changes) and ``queue_bytes`` (bytes, counted as
    for ``history_bytes``; one change is always taken) each watcher's queue beyond its replay.
    ``compacted_through``: changes at or below this index are not known (0: all are, from the
    first entry of the log); :meth:`reset` raises it.
    """

    def __init__(
        self,
        *,
        history_events: int = DEFAULT_HISTORY_EVENTS,
        history_bytes: int = DEFAULT_HISTORY_BYTES,
        max_watchers: int = DEFAULT_MAX_WATCHERS,
        queue_events: int = DEFAULT_QUEUE_EVENTS,
        queue_bytes: int = DEFAULT_QUEUE_BYTES,
        compacted_through: int = 0,
    ) -> None:
        if min(history_events, history_bytes, max_watchers, queue_events, queue_bytes) < 1:
            raise ValueError("every watch bound must be at least 1")
        self.history_events = history_events
        self.history_bytes = history_bytes
        self.max_watchers = max_watchers
        self.queue_events = queue_events
        self.queue_bytes = queue_bytes
        self.compacted_through = compacted_through
        """Changes at or below this index are not retained: ``from_index`` must be above."""
        self.last_index = compacted_through
        """The highest index of a change (or reset) the hub has seen."""
        self._history: deque[WatchEvent] = deque()
        self._history_bytes = 0
        self._by_key: dict[bytes, list[Watcher]] = {}
        self._by_prefix: list[Watcher] = []
        self._count = 0
        self._closed: DengineError | None = None
        self._reset_pending: int | None = None
        self._trio_thread: int | None = None
        self._token: trio.lowlevel.TrioToken | None = None

    # -- the state machine's side

    def on_change(self, index: int, key: bytes, value: bytes | None, kind: Kind) -> None:
        """One applied change (the listener; called on the trio thread, in index order)."""
        if self._reset_pending is not None:
            self._settle_reset()
        size = len(key) + (len(value) if value else 0) + EVENT_OVERHEAD_BYTES
        event = WatchEvent(index, key, value, kind, size)
        history = self._history
        history.append(event)
        self._history_bytes += size
        if index > self.last_index:
            self.last_index = index
        if len(history) > self.history_events or self._history_bytes > self.history_bytes:
            self._evict()
        # Over copies: a push that overflows a queue removes its watcher from these lists.
        watchers = self._by_key.get(key)
        if watchers:
            for watcher in tuple(watchers):
                watcher._push(event)
        if self._by_prefix:
            for watcher in tuple(self._by_prefix):
                if key.startswith(watcher.prefix):  # type: ignore[arg-type]
                    watcher._push(event)

    def listener(self, change: object) -> None:
        """``KVStateMachine.listener``: a ``KVChange(index, key, value, kind)``."""
        self.on_change(
            change.index,  # type: ignore[attr-defined]
            change.key,  # type: ignore[attr-defined]
            change.value,  # type: ignore[attr-defined]
            change.kind,  # type: ignore[attr-defined]
        )

    def reset(self, index: int) -> None:
        """``KVStateMachine.listener_reset``: the state was replaced by an image as of
        ``index``; the history is dropped, and the watchers that wanted a change at or below
        ``index`` end with :class:`WatchCompacted` once they delivered what they hold.

        May be called from another thread than the trio thread (a restore runs in a worker
        thread): it is then carried out there before the hub's next operation."""
        self._reset_pending = (
            index if self._reset_pending is None else max(index, self._reset_pending)
        )
        if self._trio_thread is None or threading.get_ident() == self._trio_thread:
            self._settle_reset()
        elif self._token is not None:
            try:
                self._token.run_sync_soon(self._settle_reset)
            except trio.RunFinishedError:
                pass

    def starts_after(self, index: int) -> None:
        """The state machine holds the log through ``index`` (restored at start) and has applied
        nothing after it yet: changes at or below it are not known here. A no-op when a
        ``reset`` said so already, or once a later change was seen."""
        if self._reset_pending is not None:
            self._settle_reset()
        if index > self.compacted_through and self.last_index == self.compacted_through:
            self.compacted_through = self.last_index = index

    def _settle_reset(self) -> None:
        index = self._reset_pending
        if index is None:
            return
        self._reset_pending = None
        went_back = index < self.last_index
        self._history.clear()
        self._history_bytes = 0
        if went_back:
            self.compacted_through = self.last_index = index
        else:
            self.compacted_through = max(self.compacted_through, index)
            self.last_index = index
        for watcher in self._all():
            # A watcher from past the image's index loses nothing. One back in time (never
            # expected: an installed snapshot is ahead of what was applied) would see changes
            # again: it ends too.
            if watcher.from_index <= index or went_back:
                watcher._finish(
                    WatchCompacted(
                        index + 1,
                        f"this node installed a snapshot through index {index}: the changes "
                        "up to it are not retained; reconnect with from_index >= "
                        f"{index + 1} (or none, to watch from now)",
                    )
                )

    def _evict(self) -> None:
        history = self._history
        while len(history) > 1 and (
            len(history) > self.history_events or self._history_bytes > self.history_bytes
        ):
            newest = history[-1].index
            if history[0].index == newest:
                break  # the newest index is kept whole, whatever its size
            old = history.popleft()
            self._history_bytes -= old.size
            # Part of this index may stay: a from_index at it would then miss a change.
            self.compacted_through = max(self.compacted_through, old.index)

    # -- the watchers' side

    @property
    def watchers(self) -> int:
        """Watchers open now."""
        return self._count

    @property
    def oldest_index(self) -> int:
        """The lowest ``from_index`` :meth:`subscribe` serves now."""
        if self._reset_pending is not None:
            self._settle_reset()
        return self.compacted_through + 1

    def subscribe(
        self,
        *,
        key: bytes | None = None,
        prefix: bytes | None = None,
        from_index: int | None = None,
    ) -> Watcher:
        """A new watcher of ``key`` or (exclusive) of the keys starting with ``prefix`` (an
        empty prefix: every key), delivering the changes at ``from_index`` and after (None:
        those after the last change seen, i.e. from now on).

        Raises ``ValueError`` (neither or both of key and prefix, ``from_index`` < 1),
        :class:`WatchCompacted` (``from_index`` at or below ``compacted_through``),
        :class:`TooManyWatchers`, ``Stopped`` (the hub is closed). Call on the trio thread.
        """
        if (key is None) == (prefix is None):
            raise ValueError("watch exactly one of key and prefix")
        if from_index is not None and from_index < 1:
            raise ValueError("from_index must be at least 1")
        self._bind_thread()
        if self._reset_pending is not None:
            self._settle_reset()
        if self._closed is not None:
            raise self._closed
        if self._count >= self.max_watchers:
            raise TooManyWatchers(
                f"{self.max_watchers} watchers are open on this node ([watch] max_watchers)"
            )
        if from_index is None:
            from_index = self.last_index + 1
        elif from_index <= self.compacted_through:
            raise WatchCompacted(
                self.compacted_through + 1,
                f"changes before index {self.compacted_through + 1} are not retained on this "
                f"node (from_index {from_index})",
            )
        replay: deque[WatchEvent] = deque()
        if from_index <= self.last_index:
            for event in reversed(self._history):
                if event.index < from_index:
                    break
                if (key is not None and event.key == key) or (
                    prefix is not None and event.key.startswith(prefix)
                ):
                    replay.appendleft(event)
        watcher = Watcher(
            self, key, prefix, from_index, replay, self.queue_events, self.queue_bytes
        )
        if key is not None:
            self._by_key.setdefault(key, []).append(watcher)
        else:
            self._by_prefix.append(watcher)
        self._count += 1
        return watcher

    def close(self, end: DengineError | None = None) -> None:
        """End every watcher (after what it holds) with ``end`` (default ``Stopped``), and
        refuse new ones with it. Idempotent."""
        if self._closed is None:
            self._closed = end or Stopped("this node is shutting down")
        for watcher in self._all():
            watcher._finish(self._closed)

    def _all(self) -> list[Watcher]:
        found = list(self._by_prefix)
        for watchers in self._by_key.values():
            found.extend(watchers)
        return found

    def _remove(self, watcher: Watcher) -> None:
        if watcher.key is not None:
            watchers = self._by_key.get(watcher.key)
            if watchers is None or watcher not in watchers:
                return
            watchers.remove(watcher)
            if not watchers:
                del self._by_key[watcher.key]
        else:
            if watcher not in self._by_prefix:
                return
            self._by_prefix.remove(watcher)
        self._count -= 1

    def _bind_thread(self) -> None:
        if self._token is None:
            try:
                self._token = trio.lowlevel.current_trio_token()
            except RuntimeError:
                return
            self._trio_thread = threading.get_ident()


def attach(hub: WatchHub, state_machine: object) -> bool:
    """Make ``hub`` the listener of ``state_machine`` if it offers one
    (``KVStateMachine.listener`` and ``listener_reset``); whether it did."""
    if not hasattr(state_machine, "listener"):
        return False
    state_machine.listener = hub.listener
    if hasattr(state_machine, "listener_reset"):
        state_machine.listener_reset = hub.reset
    return True


ChangeListener = Callable[[object], None]
