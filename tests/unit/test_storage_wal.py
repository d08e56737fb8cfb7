"""Write-ahead log: round trips, segment rolling and truncation, checked across reopen."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import msgpack
import pytest

from dengine_trio.raft.messages import Entry, EntryKind
from dengine_trio.storage import StorageError, WriteAheadLog
from dengine_trio.storage.wal import segment_name


def make_entries(first: int, last: int, term: int = 1, size: int = 24) -> list[Entry]:
    return [
        Entry(
            term=term,
            index=index,
            data=f"{index}@{term}:".encode().ljust(size, b"."),
            kind=EntryKind.NOOP if index % 7 == 0 else EntryKind.COMMAND,
        )
        for index in range(first, last + 1)
    ]


def segment_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("*.wal"))


def reopen(directory: Path, segment_bytes: int = 1 << 20) -> list[Entry]:
    wal, entries = WriteAheadLog.open(directory, segment_bytes=segment_bytes)
    wal.close()
    return entries


def test_empty_log(tmp_path: Path) -> None:
    wal, entries = WriteAheadLog.open(tmp_path / "wal")
    assert entries == []
    assert wal.last_index == 0
    assert wal.first_index == 0
    assert wal.sync() == (0, 0)
    wal.close()
    assert segment_files(tmp_path / "wal") == []
    assert reopen(tmp_path / "wal") == []


def test_round_trip_across_reopen(tmp_path: Path) -> None:
    directory = tmp_path / "wal"
    wal, _ = WriteAheadLog.open(directory)
    written = make_entries(1, 10) + make_entries(11, 25, term=3)
    wal.append(written[:10])
    wal.append(written[10:])
    wal.close()

    wal, entries = WriteAheadLog.open(directory)
    assert entries == written
    assert wal.last_index == 25
    assert wal.first_index == 1
    more = make_entries(26, 30, term=4)
    wal.append(more)
    wal.close()
    assert reopen(directory) == written + more


def test_log_may_start_after_index_one(tmp_path: Path) -> None:
    wal, _ = WriteAheadLog.open(tmp_path)
    wal.append(make_entries(40, 45))
    wal.close()
    assert segment_files(tmp_path) == [segment_name(40)]
    assert reopen(tmp_path) == make_entries(40, 45)


def test_records_follow_the_documented_format(tmp_path: Path) -> None:
    wal, _ = WriteAheadLog.open(tmp_path)
    written = make_entries(1, 8, term=2)
    wal.append(written)
    wal.close()
    raw = (tmp_path / "00000000000000000001.wal").read_bytes()
    decoded = []
    position = 0
    while position < len(raw):
        length, crc = struct.unpack_from("<II", raw, position)
        payload = raw[position + 8 : position + 8 + length]
        assert zlib.crc32(payload) == crc
        term, index, kind, data = msgpack.unpackb(payload)
        decoded.append(Entry(term=term, index=index, data=data, kind=EntryKind(kind)))
        position += 8 + length
    assert decoded == written


def test_segments_roll_and_reopen(tmp_path: Path) -> None:
    directory = tmp_path / "wal"
    wal, _ = WriteAheadLog.open(directory, segment_bytes=300)
    written: list[Entry] = []
    for first in range(1, 61, 3):
        batch = make_entries(first, first + 2)
        wal.append(batch)
        written += batch
    wal.close()

    names = segment_files(directory)
    assert len(names) > 3
    # A segment is named by its first entry, and the segments tile the log without gaps.
    firsts = [int(name.removesuffix(".wal")) for name in names]
    assert firsts[0] == 1
    for name, first in zip(names, firsts, strict=True):
        assert name == segment_name(first)
        head = (directory / name).read_bytes()
        length, _ = struct.unpack_from("<II", head)
        assert msgpack.unpackb(head[8 : 8 + length])[1] == first
    # No segment grows past the limit by more than one batch.
    largest = max((directory / name).stat().st_size for name in names)
    assert largest < 300 + 3 * 60

    wal, entries = WriteAheadLog.open(directory, segment_bytes=300)
    assert entries == written
    more = make_entries(61, 90, term=2)
    wal.append(more)
    wal.close()
    assert reopen(directory, 300) == written + more


def test_truncate_inside_a_segment(tmp_path: Path) -> None:
    wal, _ = WriteAheadLog.open(tmp_path)
    wal.append(make_entries(1, 20))
    wal.append(make_entries(15, 18, term=2))
    assert wal.last_index == 18
    assert wal.sync() == (18, 2)
    wal.close()
    assert reopen(tmp_path) == make_entries(1, 14) + make_entries(15, 18, term=2)
    assert segment_files(tmp_path) == [segment_name(1)]


def test_truncate_across_segments(tmp_path: Path) -> None:
    wal, _ = WriteAheadLog.open(tmp_path, segment_bytes=200)
    for first in range(1, 41, 2):
        wal.append(make_entries(first, first + 1))
    before = segment_files(tmp_path)
    assert len(before) >= 4
    cut_segment_first = int(before[1].removesuffix(".wal"))
    cut_at = cut_segment_first + 1  # inside the second segment

    wal.append(make_entries(cut_at, cut_at + 2, term=5))
    wal.close()
    # Every segment after the cut one is gone; the cut one now ends with the new entries.
    assert segment_files(tmp_path) == before[:2]
    assert reopen(tmp_path, 200) == make_entries(1, cut_at - 1) + make_entries(
        cut_at, cut_at + 2, term=5
    )


def test_truncate_at_the_first_entry_of_a_segment(tmp_path: Path) -> None:
    wal, _ = WriteAheadLog.open(tmp_path, segment_bytes=200)
    for first in range(1, 31, 2):
        wal.append(make_entries(first, first + 1))
    names = segment_files(tmp_path)
    third_first = int(names[2].removesuffix(".wal"))
    wal.append(make_entries(third_first, third_first, term=2))
    wal.close()
    assert segment_files(tmp_path) == names[:3]
    assert reopen(tmp_path, 200) == make_entries(1, third_first - 1) + make_entries(
        third_first, third_first, term=2
    )


def test_truncate_the_whole_log(tmp_path: Path) -> None:
    wal, _ = WriteAheadLog.open(tmp_path, segment_bytes=200)
    wal.append(make_entries(1, 30))
    wal.append(make_entries(31, 40))
    wal.append(make_entries(1, 2, term=9))
    assert wal.last_index == 2
    wal.close()
    assert segment_files(tmp_path) == [segment_name(1)]
    assert reopen(tmp_path, 200) == make_entries(1, 2, term=9)


def test_truncate_after_reopen(tmp_path: Path) -> None:
    wal, _ = WriteAheadLog.open(tmp_path, segment_bytes=200)
    for first in range(1, 41, 4):
        wal.append(make_entries(first, first + 3))
    wal.close()
    wal, _ = WriteAheadLog.open(tmp_path, segment_bytes=200)
    wal.append(make_entries(3, 5, term=2))
    wal.close()
    assert reopen(tmp_path, 200) == make_entries(1, 2) + make_entries(3, 5, term=2)


def test_append_refuses_gaps_and_disorder(tmp_path: Path) -> None:
    wal, _ = WriteAheadLog.open(tmp_path)
    with pytest.raises(ValueError, match="start at 1"):
        wal.append(make_entries(0, 1))
    wal.append(make_entries(5, 9))
    with pytest.raises(ValueError, match="gap"):
        wal.append(make_entries(11, 12))
    with pytest.raises(ValueError, match="precedes"):
        wal.append(make_entries(4, 6))
    with pytest.raises(ValueError, match="not contiguous"):
        wal.append([*make_entries(10, 11), *make_entries(13, 13)])
    wal.append([])
    # A refused append leaves the log as it was, and usable.
    wal.append(make_entries(10, 10))
    wal.close()
    assert reopen(tmp_path) == make_entries(5, 10)


def test_closed_log_refuses_work(tmp_path: Path) -> None:
    wal, _ = WriteAheadLog.open(tmp_path)
    wal.append(make_entries(1, 3))
    wal.close()
    wal.close()
    with pytest.raises(StorageError, match="closed"):
        wal.append(make_entries(4, 4))
    with pytest.raises(StorageError, match="closed"):
        wal.sync()
