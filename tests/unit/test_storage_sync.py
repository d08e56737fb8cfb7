"""Write-ahead log sync: what it reports, and group commit from a worker thread."""

from __future__ import annotations

import os
import random
import threading
from pathlib import Path

import pytest
import trio

from dengine_trio.raft.messages import Entry
from dengine_trio.storage import WriteAheadLog


def make_entries(first: int, last: int, term: int = 1) -> list[Entry]:
    return [Entry(term=term, index=i, data=b"%d/%d" % (i, term)) for i in range(first, last + 1)]


def reopen(directory: Path) -> list[Entry]:
    wal, entries = WriteAheadLog.open(directory)
    wal.close()
    return entries


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_sync_reports_the_last_entry_it_covers(tmp_path: Path) -> None:
    wal, _ = WriteAheadLog.open(tmp_path)
    assert wal.sync() == (0, 0)
    wal.append(make_entries(1, 5))
    assert wal.sync() == (5, 1)
    assert wal.sync() == (5, 1)
    wal.append(make_entries(6, 8, term=2))
    assert wal.sync() == (8, 2)
    wal.append(make_entries(7, 7, term=3))
    assert wal.sync() == (7, 3)
    wal.close()
    assert reopen(tmp_path) == make_entries(1, 5) + make_entries(6, 6, term=2) + [
        Entry(term=3, index=7, data=b"7/3")
    ]


async def test_group_commit_from_a_worker_thread(tmp_path: Path) -> None:
    """The runtime's pattern: append on the trio thread, fsync in a worker thread."""
    wal, _ = WriteAheadLog.open(tmp_path, segment_bytes=1024)
    written: list[Entry] = []
    observed: list[tuple[int, tuple[int, int], int]] = []
    appending = True

    async def append_all() -> None:
        nonlocal appending
        for first in range(1, 1500, 3):
            batch = make_entries(first, first + 2, term=1 + first // 500)
            wal.append(batch)
            written.extend(batch)
            await trio.sleep(0)
        appending = False

    async def sync_repeatedly() -> None:
        while appending:
            before = wal.last_index
            covered = await trio.to_thread.run_sync(wal.sync)
            observed.append((before, covered, wal.last_index))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sync_repeatedly)
        nursery.start_soon(append_all)

    assert observed
    terms = {entry.index: entry.term for entry in written}
    for before, (index, term), after in observed:
        # Everything appended before the sync started is covered, nothing not yet appended is.
        assert before <= index <= after
        assert index == 0 or terms[index] == term
    assert wal.sync() == (written[-1].index, written[-1].term)
    wal.close()
    assert reopen(tmp_path) == written


def test_sync_in_another_thread_while_appending_truncating_and_rolling(tmp_path: Path) -> None:
    fds_before = open_fds()
    wal, _ = WriteAheadLog.open(tmp_path, segment_bytes=256)
    model: list[Entry] = []
    ever_appended: set[tuple[int, int]] = set()
    reports: list[tuple[int, int]] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def sync_until_stopped() -> None:
        try:
            while not stop.is_set():
                reports.append(wal.sync())
        except BaseException as exc:
            failures.append(exc)

    syncer = threading.Thread(target=sync_until_stopped)
    syncer.start()
    rng = random.Random(20240601)
    term = 1
    try:
        for _ in range(600):
            if len(model) > 2 and rng.random() < 0.1:
                term += 1
                first = rng.randint(max(1, len(model) - 12), len(model))
            else:
                first = len(model) + 1
            batch = make_entries(first, first + rng.randint(0, 3), term)
            wal.append(batch)
            model[first - 1 :] = batch
            ever_appended.update((entry.index, entry.term) for entry in batch)
    finally:
        stop.set()
        syncer.join()

    assert failures == []
    assert reports
    assert all(report == (0, 0) or report in ever_appended for report in reports)
    assert wal.sync() == (model[-1].index, model[-1].term)
    wal.close()
    # Segments dropped by truncation while a sync was in flight were closed after it.
    assert open_fds() == fds_before
    assert reopen(tmp_path) == model


class PausedSync:
    """Runs ``wal.sync`` in a thread that stops just before its first fsync until released.

    Only the gate is added: the fsync itself is the real one.
    """

    def __init__(self, wal: WriteAheadLog, monkeypatch: pytest.MonkeyPatch) -> None:
        self.at_fsync = threading.Event()
        self.release = threading.Event()
        self.result: tuple[int, int] | None = None
        self.error: BaseException | None = None
        self.same_file = False
        real_fsync = os.fsync

        def gated_fsync(fd: int) -> None:
            if threading.current_thread() is self.thread and not self.at_fsync.is_set():
                before = os.readlink(f"/proc/self/fd/{fd}")
                self.at_fsync.set()
                self.release.wait()
                # Still the same open file: not closed, nor its number reused meanwhile.
                self.same_file = os.readlink(f"/proc/self/fd/{fd}") == before
            real_fsync(fd)

        monkeypatch.setattr(os, "fsync", gated_fsync)
        self.thread = threading.Thread(target=self._run, args=(wal,))
        self.thread.start()
        self.at_fsync.wait()

    def _run(self, wal: WriteAheadLog) -> None:
        try:
            self.result = wal.sync()
        except BaseException as exc:
            self.error = exc

    def finish(self) -> tuple[int, int] | None:
        self.release.set()
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.result


def test_truncation_during_a_sync_is_not_reported_as_covered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wal, _ = WriteAheadLog.open(tmp_path)
    wal.append(make_entries(1, 10))
    paused = PausedSync(wal, monkeypatch)  # has noted (10, 1) as what it covers
    wal.append(make_entries(5, 6, term=2))
    # (10, 1) no longer exists; the sync must cover the log as it now is.
    assert paused.finish() == (6, 2)
    wal.close()


def test_segment_rolled_during_a_sync_is_closed_only_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fds_before = open_fds()
    wal, _ = WriteAheadLog.open(tmp_path, segment_bytes=64)
    wal.append(make_entries(1, 10))
    paused = PausedSync(wal, monkeypatch)  # about to fsync segment 1's descriptor
    wal.append(make_entries(11, 12))  # rolls: segment 1 is retired
    wal.append(make_entries(13, 14))  # rolls again: segment 11 is retired
    wal.append(make_entries(12, 12, term=2))  # truncation drops segment 13 and reopens 11
    # The paused fsync ran on a still-open descriptor, then retried after the truncation.
    assert paused.finish() == (12, 2)
    assert paused.same_file
    wal.close()
    assert open_fds() == fds_before
    assert reopen(tmp_path) == make_entries(1, 11) + make_entries(12, 12, term=2)
