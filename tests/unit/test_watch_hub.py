"""WatchHub (runtime/watch.py): history, per-watcher queues, ends; plus a model-based check
that every watcher delivers exactly the changes it matches, in order, once, with no gap."""

from __future__ import annotations

import threading

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from dengine_trio.errors import Stopped
from dengine_trio.runtime.watch import (
    EVENT_OVERHEAD_BYTES,
    SlowConsumer,
    TooManyWatchers,
    WatchCompacted,
    WatchEvent,
    WatchHub,
)


def drain(watcher: object) -> list[WatchEvent]:
    out = []
    while True:
        try:
            out.append(watcher.next_nowait())  # type: ignore[attr-defined]
        except trio.WouldBlock:
            return out


def test_key_and_prefix_watchers_get_their_changes_in_order() -> None:
    hub = WatchHub()
    by_key = hub.subscribe(key=b"a")
    by_prefix = hub.subscribe(prefix=b"u/")
    everything = hub.subscribe(prefix=b"")
    hub.on_change(1, b"a", b"1", "put")
    hub.on_change(2, b"u/1", b"x", "put")
    hub.on_change(3, b"ab", b"2", "put")
    hub.on_change(4, b"a", None, "delete")
    hub.on_change(5, b"u/2", None, "expire")
    assert [(e.index, e.kind) for e in drain(by_key)] == [(1, "put"), (4, "delete")]
    assert [e.key for e in drain(by_prefix)] == [b"u/1", b"u/2"]
    assert [e.index for e in drain(everything)] == [1, 2, 3, 4, 5]


def test_from_index_replays_the_history_then_continues_live() -> None:
    hub = WatchHub()
    for index in range(1, 6):
        hub.on_change(index, b"k", str(index).encode(), "put")
    watcher = hub.subscribe(key=b"k", from_index=3)
    hub.on_change(6, b"k", b"6", "put")
    assert [e.index for e in drain(watcher)] == [3, 4, 5, 6]
    # No from_index: only what comes after.
    later = hub.subscribe(key=b"k")
    hub.on_change(7, b"k", b"7", "put")
    assert [e.index for e in drain(later)] == [7]
    # A from_index in the future waits for it.
    future = hub.subscribe(key=b"k", from_index=9)
    hub.on_change(8, b"k", b"8", "put")
    hub.on_change(9, b"k", b"9", "put")
    assert [e.index for e in drain(future)] == [9]


def test_a_from_index_older_than_the_history_is_compacted() -> None:
    hub = WatchHub(history_events=3)
    for index in range(1, 6):
        hub.on_change(index, b"k", b"v", "put")
    assert hub.oldest_index == 3
    with pytest.raises(WatchCompacted) as caught:
        hub.subscribe(key=b"k", from_index=2)
    assert caught.value.oldest_index == 3
    assert [e.index for e in drain(hub.subscribe(key=b"k", from_index=3))] == [3, 4, 5]


def test_a_transaction_partly_evicted_is_compacted_whole() -> None:
    hub = WatchHub(history_events=3)
    hub.on_change(1, b"a", b"v", "put")
    hub.on_change(2, b"a", b"v", "put")
    hub.on_change(2, b"b", b"v", "put")
    hub.on_change(3, b"a", b"v", "put")  # evicts index 1
    hub.on_change(3, b"b", b"v", "put")  # evicts the first change of index 2
    with pytest.raises(WatchCompacted) as caught:
        hub.subscribe(prefix=b"", from_index=2)
    assert caught.value.oldest_index == 3


def test_the_newest_index_is_kept_whole_beyond_the_bounds() -> None:
    hub = WatchHub(history_events=2, history_bytes=10)
    for key in (b"a", b"b", b"c", b"d"):
        hub.on_change(7, key, b"x" * 100, "put")
    assert [e.key for e in drain(hub.subscribe(prefix=b"", from_index=7))] == [
        b"a",
        b"b",
        b"c",
        b"d",
    ]
    hub.on_change(8, b"e", b"", "put")
    assert hub.oldest_index == 8


def test_history_bytes_bounds_the_history() -> None:
    hub = WatchHub(history_bytes=1000)
    for index in range(1, 11):
        hub.on_change(index, b"k", b"x" * 300, "put")
    assert hub.oldest_index == 9  # two changes of ~364 bytes fit in 1000


def test_a_consumer_that_falls_behind_ends_with_slow_consumer_and_drops_its_queue() -> None:
    hub = WatchHub(queue_events=3)
    watcher = hub.subscribe(key=b"k")
    for index in range(1, 4):
        hub.on_change(index, b"k", b"v", "put")
    assert watcher.next_nowait().index == 1
    hub.on_change(4, b"k", b"v", "put")  # queue: 2, 3, 4: full
    assert watcher.queued == 3
    hub.on_change(5, b"k", b"v", "put")  # no room: the watcher ends
    assert watcher.queued == 0
    with pytest.raises(SlowConsumer) as caught:
        watcher.next_nowait()
    assert caught.value.next_index == 2  # resume where nothing is lost
    assert hub.watchers == 0
    # Changes of other keys do not fill it.
    other = hub.subscribe(key=b"k")
    for index in range(6, 20):
        hub.on_change(index, b"other", b"v", "put")
    assert drain(other) == []


def test_the_replay_does_not_count_toward_the_queue_bound() -> None:
    hub = WatchHub(queue_events=2)
    for index in range(1, 11):
        hub.on_change(index, b"k", b"v", "put")
    watcher = hub.subscribe(key=b"k", from_index=1)
    hub.on_change(11, b"k", b"v", "put")
    hub.on_change(12, b"k", b"v", "put")
    assert [e.index for e in drain(watcher)] == list(range(1, 13))
    # Once the replay is delivered, the bound is queue_events again.
    for index in range(13, 16):
        hub.on_change(index, b"k", b"v", "put")
    with pytest.raises(SlowConsumer):
        drain(watcher)


# -- queue_bytes: the byte bound on one watcher's queue ------------------------------------------

BIG = b"x" * 3000
BIG_SIZE = len(b"p/1") + len(BIG) + EVENT_OVERHEAD_BYTES  # what a change of p/<digit> counts


def test_a_watcher_of_large_values_overflows_on_bytes_before_events() -> None:
    hub = WatchHub(queue_events=1000, queue_bytes=3 * BIG_SIZE + 10)
    slow = hub.subscribe(prefix=b"p/")
    small = hub.subscribe(prefix=b"s/")
    for index in range(1, 4):
        hub.on_change(index, b"p/%d" % index, BIG, "put")
        hub.on_change(index, b"s/%d" % index, b"v", "put")
    assert (slow.queued, slow.queued_bytes) == (3, 3 * BIG_SIZE)
    hub.on_change(4, b"p/4", BIG, "put")  # 4 changes, far below 1000, but over the bytes
    assert (slow.queued, slow.queued_bytes) == (0, 0)
    with pytest.raises(SlowConsumer) as caught:
        slow.next_nowait()
    assert caught.value.next_index == 1  # nothing delivered: resume from the first
    assert "[watch] queue_bytes" in str(caught.value)
    assert hub.watchers == 1  # removed from the hub's lists; the other watcher stays
    hub.on_change(5, b"p/5", BIG, "put")
    assert [e.index for e in drain(small)] == [1, 2, 3]


def test_a_change_larger_than_the_bound_is_still_delivered_alone() -> None:
    hub = WatchHub(queue_bytes=100)
    watcher = hub.subscribe(key=b"p/1")
    hub.on_change(1, b"p/1", BIG, "put")  # 30x the bound, into an empty queue: taken
    assert watcher.queued_bytes == BIG_SIZE
    assert watcher.next_nowait().value == BIG
    hub.on_change(2, b"p/1", BIG, "put")  # delivered: the next is taken too
    assert watcher.next_nowait().index == 2
    hub.on_change(3, b"p/1", BIG, "put")
    hub.on_change(4, b"p/1", None, "delete")  # even 67 bytes do not fit behind it
    assert watcher.queued == 0
    with pytest.raises(SlowConsumer) as caught:
        watcher.next_nowait()
    assert caught.value.next_index == 3


def test_delivering_frees_the_byte_budget() -> None:
    hub = WatchHub(queue_bytes=2 * BIG_SIZE)  # exactly two: a full queue is not an overflow
    watcher = hub.subscribe(prefix=b"p/")
    index = 0
    for _ in range(50):  # 100 changes, 300 KB through a 6 KB queue
        for _ in range(2):
            index += 1
            hub.on_change(index, b"p/%d" % (index % 10), BIG, "put")
        assert watcher.queued_bytes == 2 * BIG_SIZE
        assert [e.index for e in drain(watcher)] == [index - 1, index]
        assert watcher.queued_bytes == 0
    assert hub.watchers == 1


def test_the_replay_does_not_count_toward_the_byte_bound() -> None:
    hub = WatchHub(queue_bytes=2 * BIG_SIZE)
    for index in range(1, 11):
        hub.on_change(index, b"p/%d" % (index % 10), BIG, "put")
    watcher = hub.subscribe(prefix=b"p/", from_index=1)  # a replay of 5x the bound
    assert (watcher.queued, watcher.queued_bytes) == (10, 0)
    hub.on_change(11, b"p/1", BIG, "put")
    hub.on_change(12, b"p/2", BIG, "put")  # two live changes fit, behind the replay
    assert watcher.queued_bytes == 2 * BIG_SIZE
    assert [e.index for e in drain(watcher)] == list(range(1, 13))
    # Once the replay is delivered, the bound is queue_bytes of live changes, as before.
    assert watcher.queued_bytes == 0
    for index in range(13, 16):
        hub.on_change(index, b"p/1", BIG, "put")
    with pytest.raises(SlowConsumer) as caught:
        drain(watcher)
    assert caught.value.next_index == 13


def test_live_changes_behind_a_replay_are_still_bounded_in_bytes() -> None:
    hub = WatchHub(queue_bytes=2 * BIG_SIZE)
    for index in range(1, 11):
        hub.on_change(index, b"p/%d" % (index % 10), BIG, "put")
    watcher = hub.subscribe(prefix=b"p/", from_index=1)
    hub.on_change(11, b"p/1", BIG, "put")
    hub.on_change(12, b"p/2", BIG, "put")
    hub.on_change(13, b"p/3", BIG, "put")  # a third live change: over, replay or not
    with pytest.raises(SlowConsumer) as caught:
        drain(watcher)
    assert caught.value.next_index == 1  # dropped with the queue: nothing was delivered


def test_a_transaction_over_the_bound_ends_a_watcher_that_kept_up_and_replays_whole() -> None:
    # What docs/configuration.md says of a queue_bytes below a transaction's size: its changes
    # come together, so a watch of them all is ended; from_index resumes it from the history.
    hub = WatchHub(queue_bytes=2 * BIG_SIZE)
    hub.on_change(4, b"q", b"v", "put")
    watcher = hub.subscribe(prefix=b"p/")  # from index 5 on
    for key in (b"p/1", b"p/2", b"p/3"):
        hub.on_change(5, key, BIG, "put")
    with pytest.raises(SlowConsumer) as caught:
        drain(watcher)
    assert caught.value.next_index == 5
    again = hub.subscribe(prefix=b"p/", from_index=caught.value.next_index)
    assert [e.key for e in drain(again)] == [b"p/1", b"p/2", b"p/3"]


def test_watchers_are_bounded_and_closing_one_frees_its_place() -> None:
    hub = WatchHub(max_watchers=2)
    first = hub.subscribe(key=b"a")
    hub.subscribe(prefix=b"b")
    with pytest.raises(TooManyWatchers):
        hub.subscribe(key=b"c")
    first.close()
    first.close()
    assert hub.watchers == 1
    hub.subscribe(key=b"c")
    with pytest.raises(Stopped):
        first.next_nowait()


def test_bad_arguments() -> None:
    hub = WatchHub()
    with pytest.raises(ValueError):
        hub.subscribe()
    with pytest.raises(ValueError):
        hub.subscribe(key=b"a", prefix=b"a")
    with pytest.raises(ValueError):
        hub.subscribe(key=b"a", from_index=0)
    with pytest.raises(ValueError):
        WatchHub(queue_events=0)
    with pytest.raises(ValueError):
        WatchHub(queue_bytes=0)


def test_a_reset_ends_the_watchers_that_lost_changes_after_what_they_hold() -> None:
    hub = WatchHub()
    hub.on_change(1, b"k", b"v", "put")
    caught_up = hub.subscribe(key=b"k", from_index=1)
    ahead = hub.subscribe(key=b"k", from_index=50)
    hub.reset(40)
    assert caught_up.next_nowait().index == 1
    with pytest.raises(WatchCompacted) as caught:
        caught_up.next_nowait()
    assert caught.value.oldest_index == 41
    hub.on_change(50, b"k", b"v", "put")
    assert [e.index for e in drain(ahead)] == [50]
    with pytest.raises(WatchCompacted):
        hub.subscribe(key=b"k", from_index=40)
    assert [e.index for e in drain(hub.subscribe(key=b"k", from_index=41))] == [50]


def test_close_ends_every_watcher_with_stopped_and_refuses_new_ones() -> None:
    hub = WatchHub()
    watcher = hub.subscribe(key=b"k")
    hub.on_change(1, b"k", b"v", "put")
    hub.close()
    assert watcher.next_nowait().index == 1
    with pytest.raises(Stopped):
        watcher.next_nowait()
    with pytest.raises(Stopped):
        hub.subscribe(key=b"k")


async def test_next_waits_for_a_change_and_async_for_iterates() -> None:
    hub = WatchHub()
    got: list[int] = []

    async def consume() -> None:
        async with hub.subscribe(prefix=b"") as watcher:
            async for event in watcher:
                got.append(event.index)
                if event.index == 3:
                    return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consume)
        await trio.testing.wait_all_tasks_blocked()
        for index in (1, 2, 3):
            hub.on_change(index, b"k", b"v", "put")
            await trio.sleep(0)
    assert got == [1, 2, 3]
    assert hub.watchers == 0


async def test_a_reset_from_another_thread_is_carried_out_on_the_trio_thread() -> None:
    hub = WatchHub()
    watcher = hub.subscribe(key=b"k", from_index=1)
    thread = threading.Thread(target=hub.reset, args=(10,))
    thread.start()
    thread.join()
    with pytest.raises(WatchCompacted):
        await watcher.next()
    assert hub.oldest_index == 11


# -- model check: a random run of changes, resets, subscribes and reads -----------------------

KEYS = [b"a", b"b", b"ab", b"ba"]

operation = st.one_of(
    st.tuples(
        st.just("change"),
        st.integers(1, 3),
        st.lists(st.sampled_from(KEYS), min_size=1, max_size=3),
    ),
    st.tuples(
        st.just("subscribe"), st.sampled_from([b"a", b"ab"]), st.booleans(), st.integers(0, 8)
    ),
    st.tuples(st.just("read"), st.integers(0, 5), st.integers(1, 6)),
    st.tuples(st.just("reset"), st.integers(1, 6)),
)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(operation, max_size=60),
    st.integers(2, 6),
    st.integers(1, 4),
    st.integers(1, 300),  # a change here counts 66-70 bytes: 0 to 4 of them
)
def test_model_every_watcher_delivers_its_changes_once_in_order_without_gap(
    ops: list[tuple[object, ...]], history: int, queue: int, queue_bytes: int
) -> None:
    hub = WatchHub(history_events=history, queue_events=queue, queue_bytes=queue_bytes)
    log: list[WatchEvent] = []  # every change applied, in order
    index = 0
    watchers: list[tuple[object, bytes, bool, int, list[WatchEvent]]] = []
    ended: dict[int, BaseException] = {}
    for op in ops:
        if op[0] == "change":
            _, step, keys = op
            index += step  # type: ignore[operator]
            for key in keys:  # type: ignore[attr-defined]
                hub.on_change(index, key, b"%d" % index, "put")
                log.append(WatchEvent(index, key, b"%d" % index, "put"))
        elif op[0] == "reset":
            index += op[1]  # type: ignore[operator]
            hub.reset(index)
            log.append(WatchEvent(index, b"", None, "delete"))  # marks the unknown gap
        elif op[0] == "subscribe":
            _, watched, is_prefix, back = op
            wanted = max(1, index + 1 - back)  # type: ignore[operator]
            try:
                watcher = hub.subscribe(
                    key=None if is_prefix else watched,  # type: ignore[arg-type]
                    prefix=watched if is_prefix else None,  # type: ignore[arg-type]
                    from_index=wanted,
                )
            except WatchCompacted as exc:
                # Refused only if a change at or after wanted is truly gone.
                assert exc.oldest_index > wanted
                continue
            watchers.append((watcher, watched, is_prefix, wanted, []))  # type: ignore[arg-type]
        else:
            _, which, count = op
            if not watchers:
                continue
            position = which % len(watchers)  # type: ignore[operator]
            watcher, _, _, _, got = watchers[position]
            for _ in range(count):  # type: ignore[call-overload]
                try:
                    got.append(watcher.next_nowait())  # type: ignore[attr-defined]
                except trio.WouldBlock:
                    break
                except (SlowConsumer, WatchCompacted) as exc:
                    ended[position] = exc
                    break
    for position, (watcher, watched, is_prefix, wanted, got) in enumerate(watchers):
        try:
            got.extend(drain(watcher))
        except (SlowConsumer, WatchCompacted) as exc:
            ended[position] = exc
        expected = []
        for event in log:
            if event.index < wanted:
                continue
            if event.key == b"":  # a reset: a watcher from before it ends there
                break
            if event.key == watched or (is_prefix and event.key.startswith(watched)):
                expected.append(event)
        # A prefix of what it should see, all of it unless it ended; in order, once.
        assert got == expected[: len(got)]
        assert watcher.queued_bytes == 0  # type: ignore[attr-defined]
        if position not in ended:
            assert got == expected


def test_starts_after_covers_a_restored_state_that_named_no_index() -> None:
    hub = WatchHub()
    hub.reset(0)  # a version-1 image: no index
    hub.starts_after(30)
    assert hub.oldest_index == 31
    with pytest.raises(WatchCompacted):
        hub.subscribe(key=b"k", from_index=5)
    hub.on_change(31, b"k", b"v", "put")
    hub.starts_after(20)  # older, or after changes: nothing
    hub.starts_after(40)
    assert hub.oldest_index == 31


def test_a_watcher_ended_by_a_change_does_not_make_the_next_one_miss_it() -> None:
    # Found by the model check: the first watcher's overflow removed it from the list being
    # walked, and the second never got the change.
    hub = WatchHub(queue_events=1)
    first = hub.subscribe(prefix=b"a")
    second = hub.subscribe(prefix=b"a")
    by_key = [hub.subscribe(key=b"a"), hub.subscribe(key=b"a")]
    hub.on_change(1, b"a", b"1", "put")
    hub.on_change(2, b"a", b"2", "put")
    for watcher in (first, second, *by_key):
        with pytest.raises(SlowConsumer):
            watcher.next_nowait()
    assert hub.watchers == 0
