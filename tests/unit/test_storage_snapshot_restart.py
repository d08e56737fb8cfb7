"""Restart from a snapshot and resetting the log for InstallSnapshot (issue 13, storage half).

``Storage.open(..., snapshots_dir=...)`` chooses the snapshot and what of the write-ahead log
follows it; ``Storage.install_snapshot`` discards the log durably. Every test uses real files;
the crash tests stop the sequence before each of its file-system operations in turn and
restart from what is on disk then.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from dengine_trio.raft.messages import Entry
from dengine_trio.storage import (
    DEFAULT_SEGMENT_BYTES,
    HardState,
    Storage,
    StorageError,
    UnrecoverableStorageError,
    WriteAheadLog,
)
from dengine_trio.storage.snapshots import (
    SnapshotHeader,
    SnapshotReceiver,
    SnapshotWriter,
    list_snapshots,
    read_raw_chunk,
    remove_old_snapshots,
    snapshot_name,
)

CLUSTER = "test-cluster-0001"
SEGMENT_BYTES = 300


def entries(first: int, last: int, term: int = 1) -> list[Entry]:
    return [
        Entry(term=term, index=i, data=b"%d/%d;" % (i, term) * 4) for i in range(first, last + 1)
    ]


def write_snapshot(directory: Path, index: int, term: int, cluster: str = CLUSTER) -> Path:
    with SnapshotWriter.create(directory, SnapshotHeader(index, term, cluster, {1: "a:1"})) as w:
        w.write(b"state as of %d;" % index * 20)
        return w.commit().path


def open_storage(db: Path) -> Storage:
    return Storage.open(
        db, segment_bytes=SEGMENT_BYTES, snapshots_dir=db / "snapshots", cluster_id=CLUSTER
    )


def feed(log: Storage | WriteAheadLog, items: list[Entry]) -> None:
    """Append ``items`` three at a time, so that they span several segments."""
    for start in range(0, len(items), 3):
        log.append(items[start : start + 3])


def log_with(db: Path, *batches: list[Entry]) -> None:
    """A node's log; its term is the last entry's, as the core persists a term first."""
    with Storage.open(db, segment_bytes=SEGMENT_BYTES) as storage:
        storage.save_hard_state(max(e.term for batch in batches for e in batch), 1)
        for batch in batches:
            feed(storage, batch)


def segments(db: Path) -> list[int]:
    return sorted(int(p.name.removesuffix(".wal")) for p in (db / "wal").glob("*.wal"))


def damage(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x40
    path.write_bytes(bytes(raw))


# -- the write-ahead log reset ----------------------------------------------------------------


def test_reset_discards_every_entry_and_the_next_is_index_plus_one(tmp_path: Path) -> None:
    directory = tmp_path / "wal"
    wal, _ = WriteAheadLog.open(directory, segment_bytes=SEGMENT_BYTES)
    feed(wal, entries(1, 40))
    wal.sync()
    assert len(list(directory.glob("*.wal"))) > 3
    wal.reset(60, 4)
    assert list(directory.glob("*.wal")) == []
    assert (wal.last_index, wal.first_index) == (60, 0)
    assert wal.sync() == (60, 4)  # what the runtime reports as durable: the snapshot's entry
    with pytest.raises(ValueError, match="entry 62 is not 61"):
        wal.append(entries(62, 62, term=4))
    with pytest.raises(ValueError, match="entry 60 is not 61"):
        wal.append(entries(60, 61, term=4))
    wal.append(entries(61, 70, term=4))
    assert wal.sync() == (70, 4)
    wal.close()
    assert sorted(p.name for p in directory.glob("*.wal"))[0] == "00000000000000000061.wal"
    wal, recovered = WriteAheadLog.open(directory, segment_bytes=SEGMENT_BYTES)
    assert recovered == entries(61, 70, term=4)
    wal.close()


def test_reset_below_the_first_index_is_refused(tmp_path: Path) -> None:
    """A crash mid-reset must leave no hole: a log starting after index + 1 cannot be reset."""
    wal, _ = WriteAheadLog.open(tmp_path / "wal", segment_bytes=SEGMENT_BYTES)
    feed(wal, entries(1, 40))
    wal.compact(30)
    first = wal.first_index
    assert first > 2
    with pytest.raises(ValueError, match="starts at index"):
        wal.reset(first - 2, 1)
    wal.reset(first - 1, 1)  # right before it: allowed
    wal.close()


def test_reset_lowers_the_marker_first_then_deletes_newest_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "wal"
    wal, _ = WriteAheadLog.open(directory, segment_bytes=SEGMENT_BYTES)
    feed(wal, entries(1, 30))
    wal.sync()
    names = sorted(p.name for p in directory.glob("*.wal"))
    calls: list[str] = []
    real_unlink, real_fsync, real_pwrite = os.unlink, os.fsync, os.pwrite

    def unlink(path: str | Path, *args: object, **kwargs: object) -> None:
        calls.append(f"unlink {Path(path).name}")
        real_unlink(path)

    def fsync(fd: int) -> None:
        calls.append(f"fsync {Path(os.readlink(f'/proc/self/fd/{fd}')).name}")
        real_fsync(fd)

    def pwrite(fd: int, data: bytes, offset: int) -> int:
        calls.append(f"pwrite {Path(os.readlink(f'/proc/self/fd/{fd}')).name}")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "unlink", unlink)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "pwrite", pwrite)
    wal.reset(100, 2)
    monkeypatch.undo()
    wal.close()
    expected = ["pwrite synced", "fsync synced"]
    for name in reversed(names):
        expected += [f"unlink {name}", "fsync wal"]
    assert calls == expected


# -- recovery with snapshots ------------------------------------------------------------------


def test_existing_callers_without_snapshots_dir_see_the_whole_log(tmp_path: Path) -> None:
    db = tmp_path / "db"
    log_with(db, entries(1, 20))
    write_snapshot(db / "snapshots", 10, 1)
    with Storage.open(db, segment_bytes=SEGMENT_BYTES) as storage:
        assert storage.snapshot is None and (storage.snapshot_index, storage.snapshot_term) == (
            0,
            0,
        )
        assert storage.entries == entries(1, 20)


def test_the_log_holds_the_snapshot_entry_only_the_entries_after_it(tmp_path: Path) -> None:
    db = tmp_path / "db"
    log_with(db, entries(1, 20, term=1), entries(21, 30, term=2))
    write_snapshot(db / "snapshots", 25, 2)
    with open_storage(db) as storage:
        assert (storage.snapshot_index, storage.snapshot_term) == (25, 2)
        assert storage.snapshot is not None and storage.snapshot.header is not None
        assert storage.entries == storage.entries_after_snapshot() == entries(26, 30, term=2)
        assert storage.first_index == 1 and storage.last_index == 30  # nothing discarded
        storage.append(entries(31, 31, term=2))
    with open_storage(db) as storage:
        assert storage.entries == entries(26, 30, term=2) + entries(31, 31, term=2)


def test_the_log_starts_right_after_the_snapshot(tmp_path: Path) -> None:
    db = tmp_path / "db"
    write_snapshot(db / "snapshots", 10, 3)
    with open_storage(db) as storage:  # no log yet: it starts after the snapshot
        assert storage.entries == [] and storage.last_index == 10
        storage.append(entries(11, 15, term=3))
    with open_storage(db) as storage:
        assert storage.snapshot_index == 10 and storage.entries == entries(11, 15, term=3)


def test_a_log_that_ends_before_the_snapshot_is_reset(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """E.g. MemFirst: a snapshot through 30 is durable, the appends after 20 were not."""
    db = tmp_path / "db"
    log_with(db, entries(1, 20))
    write_snapshot(db / "snapshots", 30, 1)
    with caplog.at_level(logging.WARNING, "dengine_trio.storage"), open_storage(db) as storage:
        assert storage.snapshot_index == 30 and storage.entries == []
        assert storage.last_index == 30 and segments(db) == []
        with pytest.raises(ValueError):
            storage.append(entries(21, 21))
        storage.append(entries(31, 32))
    assert "ends before it" in caplog.text and "snapshot-00000000000000000030" in caplog.text
    with open_storage(db) as storage:
        assert storage.entries == entries(31, 32) and segments(db) == [31]


def test_a_log_that_contradicts_the_snapshot_is_reset(tmp_path: Path) -> None:
    """Raft paper section 7: a log without the snapshot's (index, term) is discarded whole,
    even its entries after that index (they belong to another history)."""
    db = tmp_path / "db"
    log_with(db, entries(1, 10, term=1), entries(11, 40, term=2))
    write_snapshot(db / "snapshots", 25, 3)
    with open_storage(db) as storage:
        assert storage.snapshot_index == 25 and storage.entries == [] and segments(db) == []
        storage.append(entries(26, 27, term=3))
    with open_storage(db) as storage:
        assert storage.entries == entries(26, 27, term=3)


def test_a_hole_between_the_snapshot_and_the_log_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "db"
    log_with(db, entries(1, 60))
    with Storage.open(db, segment_bytes=SEGMENT_BYTES) as storage:
        first = storage.compact(40)
    assert first > 12
    write_snapshot(db / "snapshots", 10, 1)  # the snapshot through 40 is gone
    with pytest.raises(UnrecoverableStorageError, match=rf"entries 11\.\.{first - 1}"):
        open_storage(db)
    assert segments(db)[0] == first  # nothing was discarded
    Storage.open(db).close()  # and the lock was released


def test_a_damaged_newest_snapshot_falls_back_only_if_the_log_covers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "db"
    log_with(db, entries(1, 50))
    write_snapshot(db / "snapshots", 10, 1)
    newest = write_snapshot(db / "snapshots", 40, 1)
    damage(newest)
    with caplog.at_level(logging.WARNING, "dengine_trio.storage"), open_storage(db) as storage:
        assert storage.snapshot_index == 10 and storage.entries == entries(11, 50)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(newest) in warnings[0] and "checksum" in warnings[0]


def test_a_damaged_newest_snapshot_and_a_log_that_does_not_cover_the_older_one(
    tmp_path: Path,
) -> None:
    """The log was compacted through the newer snapshot: the older one lacks entries that
    only the damaged file held. Starting from it would forget committed entries."""
    db = tmp_path / "db"
    log_with(db, entries(1, 60))
    older = write_snapshot(db / "snapshots", 10, 1)
    newest = write_snapshot(db / "snapshots", 40, 1)
    with Storage.open(db, segment_bytes=SEGMENT_BYTES) as storage:
        assert storage.compact(40) > 11
    damage(newest)
    with pytest.raises(UnrecoverableStorageError) as raised:
        open_storage(db)
    message = str(raised.value)
    assert str(newest) in message and "checksum" in message
    assert str(older) in message and "not every entry after index 10" in message


def test_an_older_snapshot_after_a_reset_log_is_not_enough(tmp_path: Path) -> None:
    """After an install the log is empty: with the installed snapshot damaged, the older one
    is not used (entries between them would be lost)."""
    db = tmp_path / "db"
    write_snapshot(db / "snapshots", 10, 1)
    with open_storage(db) as storage:
        feed(storage, entries(11, 20))
        installed = write_snapshot(db / "snapshots", 90, 4)
        storage.install_snapshot(90, 4)
    damage(installed)
    with pytest.raises(UnrecoverableStorageError, match="the log is empty"):
        open_storage(db)


def test_every_snapshot_damaged_and_a_log_from_index_1(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "db"
    log_with(db, entries(1, 30))
    foreign = write_snapshot(db / "snapshots", 20, 1, cluster="another-cluster")
    damaged = write_snapshot(db / "snapshots", 10, 1)
    damage(damaged)
    with caplog.at_level(logging.WARNING, "dengine_trio.storage"), open_storage(db) as storage:
        assert storage.snapshot is None and storage.entries == entries(1, 30)
    assert str(foreign) in caplog.text and "another cluster" in caplog.text
    assert str(damaged) in caplog.text


@pytest.mark.parametrize("log", ["empty", "compacted"])
def test_every_snapshot_damaged_and_no_log_from_index_1_is_unrecoverable(
    tmp_path: Path, log: str
) -> None:
    db = tmp_path / "db"
    if log == "compacted":
        log_with(db, entries(1, 60))
    only = write_snapshot(db / "snapshots", 40, 1)
    if log == "compacted":
        with Storage.open(db, segment_bytes=SEGMENT_BYTES) as storage:
            storage.compact(40)
    damage(only)
    with pytest.raises(UnrecoverableStorageError, match="no usable snapshot") as raised:
        open_storage(db)
    assert str(only) in str(raised.value)


def test_a_compacted_log_without_any_snapshot_is_unrecoverable(tmp_path: Path) -> None:
    db = tmp_path / "db"
    log_with(db, entries(1, 60))
    write_snapshot(db / "snapshots", 40, 1)
    with Storage.open(db, segment_bytes=SEGMENT_BYTES) as storage:
        first = storage.compact(40)
    for snapshot in (db / "snapshots").glob("*.snap"):
        snapshot.unlink()
    with pytest.raises(UnrecoverableStorageError, match=rf"entries 1\.\.{first - 1}"):
        open_storage(db)


def test_stale_temporaries_are_removed_at_open(tmp_path: Path) -> None:
    db = tmp_path / "db"
    write_snapshot(db / "snapshots", 5, 1)
    receiver = SnapshotReceiver.create(db / "snapshots")
    receiver.write_chunk(0, b"partial")
    stale = list((db / "snapshots").glob(".snapshot-*.tmp"))
    assert len(stale) == 1
    with open_storage(db) as storage:
        assert storage.snapshot_index == 5
    assert list((db / "snapshots").glob(".snapshot-*.tmp")) == []


def test_install_snapshot_needs_the_file_and_compact_needs_a_covering_snapshot(
    tmp_path: Path,
) -> None:
    db = tmp_path / "db"
    with open_storage(db) as storage:
        feed(storage, entries(1, 40))
        with pytest.raises(StorageError, match="does not exist"):
            storage.install_snapshot(50, 2)
        with pytest.raises(StorageError, match="no snapshot"):
            storage.compact(30)
        assert storage.first_index == 1 and storage.last_index == 40
        write_snapshot(db / "snapshots", 30, 1)
        assert storage.compact(30) > 1


def test_compact_guarded_by_a_named_snapshot_ignores_files_named_newer(tmp_path: Path) -> None:
    """A running node names the snapshot it just wrote: a file planted under a newer name
    (damaged, another cluster's) is no cover once that snapshot is gone."""
    db = tmp_path / "db"
    with open_storage(db) as storage:
        feed(storage, entries(1, 40))
        own = write_snapshot(db / "snapshots", 30, 1)
        (db / "snapshots" / snapshot_name(99_999, 1)).write_bytes(b"not a snapshot")
        with pytest.raises(StorageError, match="does not cover"):
            storage.compact(35, covered_by=own)
        own.unlink()
        with pytest.raises(StorageError, match="is gone"):
            storage.compact(30, covered_by=own)
        assert storage.first_index == 1
        own = write_snapshot(db / "snapshots", 30, 1)
        assert storage.compact(30, covered_by=own) > 1


# -- install_snapshot, crashed at every step ---------------------------------------------------


class Crash(Exception):
    """The process died here (nothing after this point reached the disk)."""


@contextmanager
def crash_before_operation(number: int) -> Iterator[list[str]]:
    """Raise ``Crash`` instead of the ``number``-th (0-based) file-system operation that
    changes the disk or makes it durable (write, pwrite, ftruncate, fsync, rename, unlink).

    In the sequences under test each metadata step (rename, unlink) and the marker write is
    fsynced before the next step that depends on it, so stopping before operation k leaves
    what a power loss there can leave, except for unsynced file contents; the only such file
    is the temporary one being received, which a restart deletes."""
    performed: list[str] = []
    names = ["write", "pwrite", "ftruncate", "fsync", "replace", "rename", "unlink"]
    real = {name: getattr(os, name) for name in names}

    def wrap(name: str) -> Callable[..., object]:
        def operation(*args: object, **kwargs: object) -> object:
            if len(performed) == number:
                raise Crash(f"before {name} #{number}")
            performed.append(name)
            return real[name](*args, **kwargs)

        return operation

    for name in names:
        setattr(os, name, wrap(name))
    try:
        yield performed
    finally:
        for name, function in real.items():
            setattr(os, name, function)


def install_from_leader(db: Path, storage: Storage, leader_file: Path, staged: bool) -> None:
    """What a follower does for InstallSnapshot: receive the file in chunks, verify and
    rename it into place (``staged``: first into a staging directory, then moved by
    ``install_snapshot``), then reset the log."""
    receiver = SnapshotReceiver.create(
        db / "snapshots" / "incoming" if staged else db / "snapshots"
    )
    size = leader_file.stat().st_size
    for offset in range(0, size, 64):
        receiver.write_chunk(offset, read_raw_chunk(leader_file, offset, 64))
    installed = receiver.finish(CLUSTER, expected=(70, 5))
    if staged:
        storage.install_snapshot(70, 5, staged=installed.path)
    else:
        storage.install_snapshot(70, 5)


@pytest.mark.parametrize("staged", [False, True], ids=["received-in-place", "staged"])
def test_install_snapshot_crashed_at_every_step_restarts_consistent(
    tmp_path: Path, staged: bool
) -> None:
    """Old state: snapshot (10, 1), log 1..50 (term 1 up to 30, then 2). The leader's snapshot
    (70, 5) contradicts nothing it can check (the log ends before 70). A crash at any step
    restarts into either the old state or the new one, never anything else, and the node
    can go on (append, restart)."""
    leader_file = write_snapshot(tmp_path / "leader", 70, 5)
    number = 0
    outcomes = set()
    while True:
        db = tmp_path / f"db{number}"
        log_with(db, entries(1, 30, term=1) + entries(31, 50, term=2))
        write_snapshot(db / "snapshots", 10, 1)
        storage = open_storage(db)
        assert len(segments(db)) > 3
        crashed = False
        with crash_before_operation(number):
            try:
                install_from_leader(db, storage, leader_file, staged)
            except Crash:
                crashed = True
        storage._wal._failure = Crash()  # the process is gone: no sync at close
        storage.close()
        with open_storage(db) as restarted:
            state = (restarted.snapshot_index, restarted.snapshot_term)
            if state == (10, 1):
                outcomes.add("old")
                assert restarted.entries == entries(11, 30, 1) + entries(31, 50, 2)
                assert segments(db)[0] == 1
            else:
                outcomes.add("new")
                assert state == (70, 5)
                assert restarted.entries == [] and segments(db) == []
                restarted.append(entries(71, 72, term=5))
        if state == (70, 5):
            with open_storage(db) as again:
                assert again.entries == entries(71, 72, term=5)
        assert list((db / "snapshots").glob(".snapshot-*")) == []
        if not crashed:
            break
        number += 1
    assert outcomes == {"old", "new"}
    assert number > 20  # every chunk write, the receiver's fsyncs and rename, each unlink


def test_install_snapshot_crashed_where_the_log_holds_an_older_entry_of_the_same_index(
    tmp_path: Path,
) -> None:
    """The log reaches past the snapshot with another term at its index (a deposed leader's
    uncommitted entries): every crash point restarts either old or new, and in the new state
    none of the contradicting entries after the snapshot survive."""
    leader_file = write_snapshot(tmp_path / "leader", 70, 5)
    number = 0
    while True:
        db = tmp_path / f"db{number}"
        log_with(db, entries(1, 30, term=1) + entries(31, 90, term=4))
        write_snapshot(db / "snapshots", 10, 1)
        storage = open_storage(db)
        crashed = False
        with crash_before_operation(number):
            try:
                install_from_leader(db, storage, leader_file, staged=False)
            except Crash:
                crashed = True
        storage._wal._failure = Crash()
        storage.close()
        with open_storage(db) as restarted:
            if restarted.snapshot_index == 10:
                assert restarted.entries == entries(11, 30, term=1) + entries(31, 90, term=4)
            else:
                assert (restarted.snapshot_index, restarted.snapshot_term) == (70, 5)
                assert restarted.entries == [] and segments(db) == []
        if not crashed:
            break
        number += 1


# -- segment size: the footprint follows the snapshot window -----------------------------------


def test_with_the_default_segment_size_compaction_bounds_the_log_on_disk(tmp_path: Path) -> None:
    """The node's defaults: a snapshot every 10,000 entries, 1,000 retained. The log on disk
    stays within one segment plus the retained and not-yet-snapshotted entries (documented
    bound), which is a few MiB, not the whole history (60,000 entries, ~18 MB here)."""
    every, retained, batch = 10_000, 1_000, 100
    value = b"v" * 280
    db = tmp_path / "db"
    peak = 0
    with Storage.open(db, snapshots_dir=db / "snapshots", cluster_id=CLUSTER) as storage:
        for first in range(1, 60_001, batch):
            last = first + batch - 1
            storage.append([Entry(term=1, index=i, data=value) for i in range(first, last + 1)])
            if last % every == 0:
                storage.sync()
                write_snapshot(db / "snapshots", last, 1)
                storage.compact(last - retained)
            peak = max(peak, sum(p.stat().st_size for p in (db / "wal").glob("*.wal")))
    entry_bytes = 8 + 3 + 3 + 1 + 2 + len(value)  # record header, msgpack array of the entry
    bound = DEFAULT_SEGMENT_BYTES + (retained + every + batch) * entry_bytes
    assert peak <= bound
    assert peak < 60_000 * entry_bytes / 2  # not the history


# -- against a model -----------------------------------------------------------------------------


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    steps=st.lists(
        st.one_of(
            st.tuples(st.just("append"), st.integers(1, 9)),
            st.tuples(st.just("truncate"), st.integers(0, 12)),
            st.tuples(st.just("snapshot"), st.integers(0, 15), st.integers(0, 8)),
            st.tuples(st.just("install"), st.integers(-6, 20)),
            st.tuples(st.just("crash-install"), st.integers(-6, 20), st.integers(0, 12)),
            st.tuples(st.just("reopen")),
        ),
        max_size=30,
    )
)
# An install cut short inside a log that contradicts the snapshot, and one past the log's end.
@example(steps=[("append", 9), ("append", 9), ("crash-install", -3, 0), ("append", 2)])
@example(steps=[("append", 9), ("snapshot", 2, 1), ("append", 9), ("crash-install", 5, 3)])
def test_appends_snapshots_compaction_installs_and_restarts_match_a_model(
    tmp_path_factory: pytest.TempPathFactory, steps: list[tuple]
) -> None:
    """The model: the snapshot (index, term) and the log entries after it. A restart must give
    back exactly those, whatever the interleaving of appends, Raft truncations, snapshots with
    compaction (keeping 2 files), installs of a leader's snapshot (ahead of the log, or inside
    it with a newer term: a contradiction), installs cut short by a crash at any of their
    file operations, and restarts."""
    db = tmp_path_factory.mktemp("db")
    snapshots = db / "snapshots"

    def reopen() -> Storage:
        return Storage.open(db, segment_bytes=200, snapshots_dir=snapshots, cluster_id=CLUSTER)

    storage = reopen()
    snapshot = (0, 0)
    log: list[Entry] = []  # the entries after the snapshot
    term = 1

    def last_index() -> int:
        return log[-1].index if log else snapshot[0]

    try:
        for step in steps:
            if step[0] == "append":
                batch = entries(last_index() + 1, last_index() + step[1], term)
                feed(storage, batch)
                log += batch
            elif step[0] == "truncate" and log:
                at = max(snapshot[0] + 1, last_index() - step[1])
                term += 1
                storage.append(entries(at, at, term))
                log = [e for e in log if e.index < at] + entries(at, at, term)
            elif step[0] == "snapshot" and log:
                kept = min(step[1], len(log) - 1)
                covered = log[len(log) - 1 - kept]
                storage.sync()
                write_snapshot(snapshots, covered.index, covered.term)
                storage.compact(max(0, covered.index - step[2]))
                remove_old_snapshots(snapshots, keep=2)
                snapshot = (covered.index, covered.term)
                log = [e for e in log if e.index > covered.index]
            elif step[0].endswith("install") and last_index() + step[1] > snapshot[0]:
                # A leader's snapshot: past the log's end, or inside it with a newer term.
                term += 1
                index = last_index() + step[1]
                write_snapshot(snapshots, index, term)
                if step[0] == "install":
                    storage.install_snapshot(index, term)
                else:
                    # The process dies before the step[2]-th file operation of the reset.
                    with crash_before_operation(step[2]):
                        try:
                            storage.install_snapshot(index, term)
                        except Crash:
                            pass
                    storage._wal._failure = Crash()
                    storage.close()
                    storage = reopen()
                snapshot, log = (index, term), []
            elif step[0] == "reopen":
                storage.close()
                storage = reopen()
                assert (storage.snapshot_index, storage.snapshot_term) == snapshot
                assert storage.entries == log
            assert storage.last_index == last_index()
    finally:
        storage.close()
    with reopen() as storage:
        assert (storage.snapshot_index, storage.snapshot_term) == snapshot
        assert storage.entries == log


def test_a_hard_state_below_the_snapshot_term_moves_to_it_without_a_vote(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A received snapshot renamed into place before the core stepped its message (whose term
    it would have persisted first): the Raft core refuses a term below its snapshot's, so
    storage moves to that term, durably, with no vote (it never voted in it)."""
    db = tmp_path / "db"
    with Storage.open(db) as storage:
        storage.save_hard_state(2, 1)
    write_snapshot(db / "snapshots", 10, 3)
    with caplog.at_level(logging.WARNING, "dengine_trio.storage"), open_storage(db) as storage:
        assert storage.hard_state == HardState(term=3, voted_for=0)
    assert "term 2 is below term 3 of snapshot" in caplog.text
    with Storage.open(db) as storage:
        assert storage.hard_state == HardState(term=3, voted_for=0)
    with Storage.open(db) as storage:
        storage.save_hard_state(4, 2)
    with open_storage(db) as storage:
        assert storage.hard_state == HardState(term=4, voted_for=2)  # a higher term is kept


@pytest.mark.parametrize("kept", [0, 5, 30])
def test_a_torn_first_write_after_an_install(tmp_path: Path, kept: int) -> None:
    """After a reset the marker says nothing is synced; the first segment after the snapshot
    torn at any point is cut as a torn tail (emptied: deleted), and the log still starts
    right after the snapshot."""
    db = tmp_path / "db"
    log_with(db, entries(1, 20))
    with open_storage(db) as storage:
        write_snapshot(db / "snapshots", 50, 2)
        storage.install_snapshot(50, 2)
        storage.append(entries(51, 53, term=2))
        storage._wal._failure = Crash()  # dies before any sync
    segment = db / "wal" / "00000000000000000051.wal"
    with open(segment, "r+b") as file:
        file.truncate(kept)
    with open_storage(db) as storage:
        assert storage.snapshot_index == 50
        survivors = storage.entries
        assert survivors == entries(51, 51 + len(survivors) - 1, term=2)
        assert len(survivors) < 3
        storage.append(entries(51 + len(survivors), 54, term=2))
    with open_storage(db) as storage:
        assert storage.entries == entries(51, 54, term=2)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    log_first=st.integers(1, 12),
    log_length=st.integers(0, 25),
    term_steps=st.lists(st.integers(0, 1), min_size=40, max_size=40),
    files=st.lists(
        st.tuples(st.integers(1, 45), st.integers(1, 4), st.booleans()),
        max_size=3,
        unique_by=lambda f: f[0],
    ),
)
def test_the_choice_at_restart_keeps_every_entry_or_refuses(
    tmp_path_factory: pytest.TempPathFactory,
    log_first: int,
    log_length: int,
    term_steps: list[int],
    files: list[tuple[int, int, bool]],
) -> None:
    """Any log (possibly compacted: starting above 1) and any set of snapshot files, some
    damaged: a restart either refuses, or gives a snapshot that verified and the log's own
    entries from right after it, with no hole, and discards the log only when the newest
    snapshot of all (no newer file rejected) contradicts it or passes its end; and it does not
    refuse when the newest file is valid and the log has no hole after it."""
    db = tmp_path_factory.mktemp("db")
    terms = [1]
    for step in term_steps:
        terms.append(terms[-1] + step)
    log = [
        Entry(term=terms[i], index=i, data=b"%d" % i)
        for i in range(log_first, log_first + log_length)
    ]
    with Storage.open(db) as storage:
        storage.save_hard_state(10, 0)
    wal, _ = WriteAheadLog.open(db / "wal", segment_bytes=SEGMENT_BYTES)
    if log_first > 1:
        wal.reset(log_first - 1, terms[log_first - 1])  # a log compacted up to log_first
    feed(wal, log)
    wal.close()
    written = {}
    for index, term, damaged in files:
        path = write_snapshot(db / "snapshots", index, term)
        if damaged:
            damage(path)
        written[index] = (term, damaged)
    held = {e.index: e for e in log}

    def follows(index: int, term: int) -> bool:
        return (log_first == index + 1 and bool(log)) or (
            index in held and held[index].term == term
        )

    newest = max(written, default=None)
    try:
        storage = open_storage(db)
    except UnrecoverableStorageError:
        if newest is not None and not written[newest][1]:
            assert log and log_first > newest + 1  # refused only for a hole
        else:
            assert not (log and log_first == 1)
        return
    with storage:
        snapshot = (storage.snapshot_index, storage.snapshot_term)
        got = storage.entries
    if storage.snapshot is None:
        assert not log or log_first == 1
        assert got == log
        return
    index, term = snapshot
    assert written[index] == (term, False)  # a file that verified
    rejected_newer = [i for i in written if i > index]
    # A newer file is passed over only if damaged, or if it is valid but older than a damaged
    # one and the log does not hold every entry after it (choose_snapshot's documented rule:
    # e.g. files 1, 2, 3 with 3 damaged and a log of index 1 only restart from 1).
    newest_damaged = max((i for i in written if written[i][1]), default=0)
    assert all(
        written[i][1] or (i < newest_damaged and not follows(i, written[i][0]))
        for i in rejected_newer
    )
    if rejected_newer:
        assert follows(index, term)  # an older snapshot only with the log covering it
    if got:
        assert follows(index, term)
        assert got == [e for e in log if e.index > index]
    elif log and log[-1].index > index:
        # The log was discarded: only for the newest snapshot, which it contradicts at its
        # index (a log starting after index + 1 is a hole: refused, never discarded).
        assert not rejected_newer and index in held and held[index].term != term


def test_files_rejected_at_open_are_moved_aside_and_never_count_as_kept_snapshots(
    tmp_path: Path,
) -> None:
    """Files named newer than the node's own snapshots that are not valid here (damaged, or
    another cluster's backup copied in by hand) are skipped at open AND renamed aside
    (``<name>.rejected``): before, they stayed in ``snapshots_dir``, and the keep-the-newest-two
    clean-up (by name) after the next snapshots deleted every valid file while keeping them,
    and ``compact``'s guard trusted them, so the next start after compaction refused
    (tests/e2e/test_newcomer_snapshot_files.py). A failed open moves nothing."""
    db = tmp_path / "db"
    snapshots = db / "snapshots"
    log_with(db, entries(1, 60))
    own = write_snapshot(snapshots, 20, 1)
    damaged = write_snapshot(snapshots, 900, 1)
    damage(damaged)
    foreign = write_snapshot(snapshots, 800, 1, cluster="another-cluster-0002")
    with open_storage(db) as storage:
        assert storage.snapshot_index == 20
        assert [s.path for s in list_snapshots(snapshots)] == [own]
        # Two more snapshots of this node and the usual clean-up keep valid files only,
        # and compaction past the first needs a real snapshot through that index.
        newer = write_snapshot(snapshots, 40, 1)
        remove_old_snapshots(snapshots, 2)
        assert [s.path for s in list_snapshots(snapshots)] == [newer, own]
        storage.compact(40)
    for path in (damaged, foreign):
        assert not path.exists() and path.with_name(path.name + ".rejected").exists()
    with open_storage(db) as storage:
        assert storage.snapshot_index == 40 and storage.entries == entries(41, 60)


def test_a_failed_open_moves_no_file_aside(tmp_path: Path) -> None:
    db = tmp_path / "db"
    log_with(db, entries(1, 60))
    write_snapshot(db / "snapshots", 10, 1)
    newest = write_snapshot(db / "snapshots", 40, 1)
    with Storage.open(db, segment_bytes=SEGMENT_BYTES) as storage:
        storage.compact(40)
    damage(newest)
    with pytest.raises(UnrecoverableStorageError):
        open_storage(db)
    assert newest.exists()


def test_compaction_racing_the_truncation_of_a_conflicting_suffix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seam of the runtime (compaction in a worker thread after a snapshot) and the core (a
    new leader's entries truncate a conflicting suffix, appended on the trio thread): the
    truncation lands between the compaction's in-memory step and its unlinks/fsyncs, which
    run outside the log's lock. A crash before each file operation in turn: the restart finds
    the snapshot, every synced entry after it, then a prefix of either the old suffix (the
    truncation had not happened or not all of it) or the new entries; never a hole, never old
    entries after new ones. Completed: the new log exactly. The truncation point is above the
    compaction point, as the core guarantees (compaction at or below the applied index,
    truncation above the commit index)."""
    import dengine_trio.storage.wal as wal_module

    old = entries(1, 40, term=1)
    new = entries(35, 38, term=2)
    kept_entries = entries(21, 34, term=1)
    real_fsync_directory = wal_module.fsync_directory
    for number in range(60):
        db = tmp_path / f"run{number}" / "db"
        log_with(db, old)
        write_snapshot(db / "snapshots", 20, 1)
        storage = open_storage(db)
        raced: list[bool] = []

        def racing(directory: Path, storage: Storage = storage, raced: list[bool] = raced) -> None:
            if not raced:
                raced.append(True)
                storage.append(new)  # truncates 35..40, as the trio thread would
            real_fsync_directory(directory)

        monkeypatch.setattr(wal_module, "fsync_directory", racing)
        crashed = False
        with crash_before_operation(number):
            try:
                storage.compact(20)
                storage.sync()
            except Crash:
                crashed = True
        monkeypatch.setattr(wal_module, "fsync_directory", real_fsync_directory)
        storage._wal._failure = Crash()  # the crashed process is gone: no graceful close
        storage._lock.release()
        with open_storage(db) as reopened:
            got = reopened.entries
            assert reopened.snapshot_index == 20
        assert got[: len(kept_entries)] == kept_entries, (number, got)
        rest = got[len(kept_entries) :]
        assert rest in (old[34 : 34 + len(rest)], new[: len(rest)]), (number, rest)
        if not crashed:
            assert raced and got == kept_entries + new
            break
    else:
        pytest.fail("the sequence never completed")
