"""WAL compaction: whole segments a snapshot covers are deleted, oldest first; the log that is
left recovers, appends and truncates as before, starting at a later index."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dengine_trio.raft.messages import Entry
from dengine_trio.storage import CorruptLogError, Storage, WriteAheadLog
from dengine_trio.storage import wal as wal_module

SEGMENT_BYTES = 512


def entries(first: int, last: int, term: int = 1) -> list[Entry]:
    return [Entry(term=term, index=i, data=b"%d:" % i * 8) for i in range(first, last + 1)]


def segments(directory: Path) -> list[int]:
    return sorted(int(p.name.removesuffix(".wal")) for p in directory.glob("*.wal"))


def filled(directory: Path, last: int) -> WriteAheadLog:
    wal, _ = WriteAheadLog.open(directory, segment_bytes=SEGMENT_BYTES)
    for first in range(1, last + 1, 5):
        wal.append(entries(first, min(first + 4, last)))
    wal.sync()
    return wal


def test_compact_deletes_whole_covered_segments_and_recovery_starts_after_them(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "wal"
    wal = filled(directory, 200)
    before = segments(directory)
    assert len(before) > 5 and before[0] == 1
    first = wal.compact(100)
    after = segments(directory)
    # Every segment left holds an entry above 100; every one deleted held only entries <= 100.
    assert after == [s for s in before if s >= after[0]]
    assert first == after[0] and 100 - SEGMENT_BYTES // 40 <= first <= 101
    assert wal.first_index == first
    wal.append(entries(201, 210))
    wal.close()

    wal, recovered = WriteAheadLog.open(directory, segment_bytes=SEGMENT_BYTES)
    assert [e.index for e in recovered] == list(range(first, 211))
    assert recovered == [e for e in entries(1, 210) if e.index >= first]
    assert wal.first_index == first
    # Truncation inside what is left works; below it, it is refused.
    wal.append(entries(150, 151, term=2))
    with pytest.raises(ValueError, match="precedes the log's first entry"):
        wal.append(entries(first - 1, first, term=2))
    wal.close()
    _, recovered = WriteAheadLog.open(directory, segment_bytes=SEGMENT_BYTES)
    assert recovered[-1] == entries(151, 151, term=2)[0]
    assert [e.index for e in recovered] == list(range(first, 152))


def test_compact_never_deletes_the_current_segment(tmp_path: Path) -> None:
    directory = tmp_path / "wal"
    wal = filled(directory, 60)
    last_segment = segments(directory)[-1]
    assert wal.compact(10_000) == last_segment
    assert segments(directory) == [last_segment]
    wal.append(entries(61, 61))
    wal.close()
    _, recovered = WriteAheadLog.open(directory, segment_bytes=SEGMENT_BYTES)
    assert [e.index for e in recovered] == list(range(last_segment, 62))


def test_compact_of_an_empty_log_and_below_the_first_segment(tmp_path: Path) -> None:
    wal, _ = WriteAheadLog.open(tmp_path / "empty")
    assert wal.compact(50) == 0
    wal.close()
    wal = filled(tmp_path / "wal", 80)
    before = segments(tmp_path / "wal")
    assert wal.compact(0) == 1 and segments(tmp_path / "wal") == before
    wal.close()


def test_a_crash_mid_compaction_leaves_a_log_recovery_accepts(tmp_path: Path) -> None:
    """Deleted oldest first: a crash leaves a suffix of the segments, which recovers. A hole
    (what deleting in another order could leave) is refused, which is why the order matters."""
    directory = tmp_path / "wal"
    filled(directory, 200).close()
    names = sorted(directory.glob("*.wal"))
    names[0].unlink()  # a compaction interrupted after its first removal
    _, recovered = WriteAheadLog.open(directory, segment_bytes=SEGMENT_BYTES)
    assert recovered[0].index == segments(directory)[0] and recovered[-1].index == 200
    names[2].unlink()  # a hole
    with pytest.raises(CorruptLogError, match="segment starts at index"):
        WriteAheadLog.open(directory, segment_bytes=SEGMENT_BYTES)


def test_storage_compact_while_a_sync_runs_in_a_thread(tmp_path: Path) -> None:
    with Storage.open(tmp_path / "db", segment_bytes=SEGMENT_BYTES) as storage:
        storage.append(entries(1, 100))
        stop = threading.Event()
        errors: list[BaseException] = []

        def sync_forever() -> None:
            try:
                while not stop.is_set():
                    storage.sync()
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        worker = threading.Thread(target=sync_forever)
        worker.start()
        try:
            for last in range(100, 400, 10):
                storage.append(entries(last + 1, last + 10))
                storage.compact(last - 50)
        finally:
            stop.set()
            worker.join(10)
        assert errors == []
        first = storage.first_index
        assert 1 < first <= 400 - 50
    with Storage.open(tmp_path / "db", segment_bytes=SEGMENT_BYTES) as storage:
        assert [e.index for e in storage.entries] == list(range(first, 401))


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    steps=st.lists(
        st.one_of(
            st.tuples(st.just("append"), st.integers(1, 12)),
            st.tuples(st.just("truncate"), st.integers(0, 30)),
            st.tuples(st.just("compact"), st.integers(0, 40)),
            st.tuples(st.just("reopen")),
        ),
        max_size=40,
    )
)
def test_compaction_interleaved_with_appends_truncations_and_reopens(
    tmp_path_factory: pytest.TempPathFactory, steps: list[tuple]
) -> None:
    """The log always holds exactly the model's entries from its first index on, and the first
    index never passes what was compacted plus one segment."""
    directory = tmp_path_factory.mktemp("wal")
    wal, _ = WriteAheadLog.open(directory, segment_bytes=200)
    model: dict[int, Entry] = {}
    term = 1
    last = 0
    compactions = 0
    try:
        for step in steps:
            if step[0] == "append":
                batch = entries(last + 1, last + step[1], term)
                wal.append(batch)
                model.update((e.index, e) for e in batch)
                last += step[1]
            elif step[0] == "truncate" and last:
                at = max(wal.first_index, last - step[1])
                term += 1
                wal.append(entries(at, at, term))
                model = {i: e for i, e in model.items() if i < at}
                model[at] = entries(at, at, term)[0]
                last = at
            elif step[0] == "compact":
                previous_first = wal.first_index
                first = wal.compact(last - step[1])
                # Nothing above the covered index is deleted.
                assert first <= max(last - step[1] + 1, previous_first)
                compactions += first > previous_first
                model = {i: e for i, e in model.items() if i >= first}
            elif step[0] == "reopen":
                wal.close()
                wal, recovered = WriteAheadLog.open(directory, segment_bytes=200)
                assert recovered == [model[i] for i in sorted(model)]
            assert wal.last_index == last
            assert wal.first_index == (min(model) if model else 0)
    finally:
        wal.close()
    _, recovered = WriteAheadLog.open(directory, segment_bytes=200)
    assert recovered == [model[i] for i in sorted(model)]


def test_each_removal_is_made_durable_before_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "wal"
    wal = filled(directory, 200)
    calls: list[str] = []
    real_unlink, real_fsync = os.unlink, os.fsync

    def unlink(path: str | Path, *args: object, **kwargs: object) -> None:
        calls.append(f"unlink {Path(path).name}")
        real_unlink(path)

    def fsync(fd: int) -> None:
        calls.append(f"fsync {Path(os.readlink(f'/proc/self/fd/{fd}')).name}")
        real_fsync(fd)

    monkeypatch.setattr(os, "unlink", unlink)
    monkeypatch.setattr(os, "fsync", fsync)
    names = sorted(p.name for p in directory.glob("*.wal"))
    removed = names[:3]
    wal.compact(int(names[3].removesuffix(".wal")) - 1)  # the last index of the third
    monkeypatch.undo()
    wal.close()
    assert calls == [
        f"unlink {removed[0]}", "fsync wal",
        f"unlink {removed[1]}", "fsync wal",
        f"unlink {removed[2]}", "fsync wal",
    ]  # fmt: skip


def test_compacting_the_segment_the_marker_names_then_crashing_recovers(tmp_path: Path) -> None:
    """The last sync covered segment X; appends then rolled to a new segment, and compaction
    deleted X before the next sync. A crash there must not leave a marker naming a deleted
    segment (recovery would refuse the log as corrupt)."""
    directory = tmp_path / "wal"
    wal, _ = WriteAheadLog.open(directory, segment_bytes=SEGMENT_BYTES)
    wal.append(entries(1, 5))
    wal.sync()  # the marker names segment 1
    last = 5
    while len(segments(directory)) < 2:
        wal.append(entries(last + 1, last + 1))
        last += 1
    first_of_new = segments(directory)[-1]
    assert wal.compact(first_of_new - 1) == first_of_new
    # The process dies: no sync, no close.
    wal._failure = RuntimeError("killed")
    wal.close()
    _, recovered = WriteAheadLog.open(directory, segment_bytes=SEGMENT_BYTES)
    assert [e.index for e in recovered] == list(range(first_of_new, last + 1))


def test_an_append_does_not_wait_for_the_disk_work_of_a_compaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runtime compacts in a worker thread while the trio thread appends: an append must
    not block behind the compaction's unlinks and directory fsyncs (a slow disk would stall
    the event loop). The directory fsync is held until the append has returned."""
    directory = tmp_path / "wal"
    wal = filled(directory, 200)
    in_fsync, release = threading.Event(), threading.Event()
    real_fsync_directory = wal_module.fsync_directory

    def held_fsync_directory(path: Path) -> None:
        in_fsync.set()
        release.wait(30)
        real_fsync_directory(path)

    monkeypatch.setattr(wal_module, "fsync_directory", held_fsync_directory)
    compactor = threading.Thread(target=wal.compact, args=(100,))
    compactor.start()
    appended = threading.Event()
    try:
        assert in_fsync.wait(30)
        appender = threading.Thread(target=lambda: (wal.append(entries(201, 201)), appended.set()))
        appender.start()
        # Bounded only so that a regression fails instead of hanging; no timing is asserted.
        assert appended.wait(30), "append waited for the compaction's directory fsync"
    finally:
        release.set()
        compactor.join(30)
    monkeypatch.undo()
    wal.close()
    _, recovered = WriteAheadLog.open(directory, segment_bytes=SEGMENT_BYTES)
    assert recovered[-1].index == 201 and recovered[0].index > 1


def test_a_sync_in_flight_never_writes_back_a_segment_compaction_deleted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sync notes the current segment and fsyncs it; meanwhile the log rolls and a
    compaction deletes that segment. The sync must not then record the deleted segment in
    the marker, or a crash leaves a log recovery refuses."""
    directory = tmp_path / "wal"
    wal, _ = WriteAheadLog.open(directory, segment_bytes=SEGMENT_BYTES)
    wal.append(entries(1, 5))
    syncer: threading.Thread | None = None
    in_fsync, release = threading.Event(), threading.Event()
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if threading.current_thread() is syncer:
            in_fsync.set()
            release.wait(30)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)

    def sync() -> None:
        nonlocal syncer
        syncer = threading.current_thread()
        wal.sync()

    worker = threading.Thread(target=sync)
    worker.start()
    try:
        assert in_fsync.wait(30)  # the sync noted segment 1 and is in its fsync
        last = 5
        while len(segments(directory)) < 2:
            wal.append(entries(last + 1, last + 1))
            last += 1
        first_of_new = segments(directory)[-1]
        assert wal.compact(first_of_new - 1) == first_of_new
    finally:
        release.set()
        worker.join(30)
    monkeypatch.undo()
    wal._failure = RuntimeError("killed")  # the process dies: no sync, no close
    wal.close()
    _, recovered = WriteAheadLog.open(directory, segment_bytes=SEGMENT_BYTES)
    assert [e.index for e in recovered] == list(range(first_of_new, last + 1))
