"""Write-ahead log recovery: torn tails are cut away, damage anywhere else is an error."""

from __future__ import annotations

import logging
import shutil
import struct
import tempfile
import zlib
from pathlib import Path

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dengine_trio.raft.messages import Entry
from dengine_trio.storage import CorruptLogError, WriteAheadLog
from dengine_trio.storage.wal import segment_name

SEGMENT_BYTES = 400


def make_entries(first: int, last: int, term: int = 1) -> list[Entry]:
    return [
        Entry(term=term, index=i, data=f"entry {i} of term {term}".encode())
        for i in range(first, last + 1)
    ]


def write_log(directory: Path, last: int = 40, batch: int = 4) -> list[Entry]:
    wal, _ = WriteAheadLog.open(directory, segment_bytes=SEGMENT_BYTES)
    written: list[Entry] = []
    for first in range(1, last + 1, batch):
        entries = make_entries(first, min(first + batch - 1, last))
        wal.append(entries)
        written += entries
    wal.close()
    return written


def mark_synced(directory: Path, segment: Path, synced_bytes: int) -> None:
    """Make the log look as if its last fsync covered ``synced_bytes`` of ``segment``: the
    marker file ``synced`` in the documented format, as a crash before the next sync leaves it.
    Damage past that point is then a torn write; damage before it, corruption."""
    body = struct.pack("<4sIQQ", b"DTSP", 1, int(segment.name.removesuffix(".wal")), synced_bytes)
    (directory / "synced").write_bytes(body + struct.pack("<I", zlib.crc32(body)))


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.wal"))


def record_spans(path: Path) -> list[tuple[int, int]]:
    """(start, end) of each record, read with the documented framing, not the module's code."""
    raw = path.read_bytes()
    spans = []
    position = 0
    while position < len(raw):
        (length,) = struct.unpack_from("<I", raw, position)
        spans.append((position, position + 8 + length))
        position += 8 + length
    return spans


def flip_byte(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0xFF
    path.write_bytes(bytes(raw))


def encode_record(term: int, index: int, kind: int, data: bytes) -> bytes:
    payload = msgpack.packb([term, index, kind, data])
    return struct.pack("<II", len(payload), zlib.crc32(payload)) + payload


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Entry]]:
    directory = tmp_path_factory.mktemp("template")
    written = write_log(directory)
    assert len(segments(directory)) >= 3
    return directory, written


@settings(max_examples=40, deadline=None)
@given(data=st.data(), zero_fill=st.booleans())
def test_torn_tail_recovers_exactly_the_intact_prefix(
    template: tuple[Path, list[Entry]], data: st.DataObject, zero_fill: bool
) -> None:
    source, written = template
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch) / "wal"
        shutil.copytree(source, directory)
        last = segments(directory)[-1]
        mark_synced(directory, last, 0)  # the last segment's writes were never synced
        raw = last.read_bytes()
        cut = data.draw(st.integers(min_value=0, max_value=len(raw) - 1), label="cut")
        # Without fill the file just ends early; with it, the lost bytes read as zeros, as
        # after a crash that extended the file but did not write its data.
        last.write_bytes(raw[:cut] + (b"\0" * (len(raw) - cut) if zero_fill else b""))

        spans = record_spans(source / last.name)
        intact = [end for _, end in spans if end <= cut]
        kept_bytes = intact[-1] if intact else 0
        first_in_last = int(last.name.removesuffix(".wal"))
        expected = [e for e in written if e.index < first_in_last + len(intact)]

        wal, entries = WriteAheadLog.open(directory, segment_bytes=SEGMENT_BYTES)
        assert entries == expected
        assert wal.last_index == expected[-1].index
        if kept_bytes:
            assert last.stat().st_size == kept_bytes
        else:
            assert not last.exists()
        # The recovered log takes appends right after the intact prefix.
        follow = make_entries(wal.last_index + 1, wal.last_index + 2, term=2)
        wal.append(follow)
        wal.close()
        again, entries = WriteAheadLog.open(directory, segment_bytes=SEGMENT_BYTES)
        again.close()
        assert entries == expected + follow


def test_torn_tail_is_reported_and_truncated(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    written = write_log(tmp_path)
    last = segments(tmp_path)[-1]
    start, end = record_spans(last)[-1]
    mark_synced(tmp_path, last, start)
    with open(last, "r+b") as f:
        f.truncate(end - 3)

    with caplog.at_level(logging.WARNING, logger="dengine_trio.storage"):
        wal, entries = WriteAheadLog.open(tmp_path, segment_bytes=SEGMENT_BYTES)
    wal.close()
    assert entries == written[:-1]
    assert last.stat().st_size == start
    [record] = [r for r in caplog.records if "torn write" in r.getMessage()]
    assert record.name == "dengine_trio.storage"
    assert str(last) in record.getMessage()
    assert f"offset {start}" in record.getMessage()


@pytest.mark.parametrize("where", ["length", "checksum", "payload"])
def test_flipped_byte_in_unsynced_last_record_is_truncated_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, where: str
) -> None:
    written = write_log(tmp_path)
    last = segments(tmp_path)[-1]
    start, end = record_spans(last)[-1]
    mark_synced(tmp_path, last, start)
    flip_byte(last, {"length": start + 1, "checksum": start + 5, "payload": end - 2}[where])

    with caplog.at_level(logging.WARNING, logger="dengine_trio.storage"):
        wal, entries = WriteAheadLog.open(tmp_path, segment_bytes=SEGMENT_BYTES)
    wal.close()
    assert entries == written[:-1]
    assert last.stat().st_size == start
    assert any(
        str(last) in r.getMessage() and f"offset {start}" in r.getMessage() for r in caplog.records
    )


@pytest.mark.parametrize("where", ["length", "checksum", "payload"])
def test_flipped_byte_in_a_middle_record_is_an_error(tmp_path: Path, where: str) -> None:
    write_log(tmp_path)
    last = segments(tmp_path)[-1]
    spans = record_spans(last)
    assert len(spans) >= 3
    start, end = spans[1]
    flip_byte(last, {"length": start + 1, "checksum": start + 5, "payload": end - 2}[where])
    size_before = last.stat().st_size

    with pytest.raises(CorruptLogError) as raised:
        WriteAheadLog.open(tmp_path, segment_bytes=SEGMENT_BYTES)
    message = str(raised.value)
    assert str(last) in message
    assert f"offset {start}" in message
    # Nothing was cut: the damage is left for a human to look at.
    assert last.stat().st_size == size_before


def test_flipped_byte_in_an_earlier_segment_is_an_error(tmp_path: Path) -> None:
    write_log(tmp_path)
    first = segments(tmp_path)[0]
    start, end = record_spans(first)[-1]
    flip_byte(first, end - 1)
    with pytest.raises(CorruptLogError, match="not the last") as raised:
        WriteAheadLog.open(tmp_path, segment_bytes=SEGMENT_BYTES)
    assert str(first) in str(raised.value)
    assert f"offset {start}" in str(raised.value)


def test_torn_end_of_an_earlier_segment_is_an_error(tmp_path: Path) -> None:
    write_log(tmp_path)
    first = segments(tmp_path)[0]
    with open(first, "r+b") as f:
        f.truncate(first.stat().st_size - 2)
    with pytest.raises(CorruptLogError, match="not the last"):
        WriteAheadLog.open(tmp_path, segment_bytes=SEGMENT_BYTES)


def test_missing_middle_segment_is_an_error(tmp_path: Path) -> None:
    write_log(tmp_path)
    names = segments(tmp_path)
    names[1].unlink()
    with pytest.raises(CorruptLogError, match="ends at index") as raised:
        WriteAheadLog.open(tmp_path, segment_bytes=SEGMENT_BYTES)
    assert str(names[2]) in str(raised.value)


def test_out_of_sequence_index_is_an_error(tmp_path: Path) -> None:
    write_log(tmp_path, last=10)
    last = segments(tmp_path)[-1]
    size = last.stat().st_size
    with open(last, "ab") as f:
        f.write(encode_record(1, 12, 0, b"skips 11"))
    with pytest.raises(CorruptLogError, match="holds index 12, expected 11") as raised:
        WriteAheadLog.open(tmp_path, segment_bytes=SEGMENT_BYTES)
    assert f"offset {size}" in str(raised.value)


def test_segment_name_must_match_its_first_record(tmp_path: Path) -> None:
    (tmp_path / segment_name(5)).write_bytes(encode_record(1, 6, 0, b"x"))
    with pytest.raises(CorruptLogError, match="holds index 6, expected 5"):
        WriteAheadLog.open(tmp_path)


def test_valid_checksum_with_garbage_payload_is_an_error(tmp_path: Path) -> None:
    payload = msgpack.packb(["not", "an", "entry", 1])
    record = struct.pack("<II", len(payload), zlib.crc32(payload)) + payload
    (tmp_path / segment_name(1)).write_bytes(encode_record(1, 1, 0, b"ok") + record)
    with pytest.raises(CorruptLogError, match="cannot be decoded"):
        WriteAheadLog.open(tmp_path)


def test_empty_last_segment_is_removed(tmp_path: Path) -> None:
    written = write_log(tmp_path, last=10)
    stray = tmp_path / segment_name(11)
    stray.touch()
    wal, entries = WriteAheadLog.open(tmp_path, segment_bytes=SEGMENT_BYTES)
    assert entries == written
    assert not stray.exists()
    wal.append(make_entries(11, 12, term=2))
    wal.close()
    wal, entries = WriteAheadLog.open(tmp_path, segment_bytes=SEGMENT_BYTES)
    wal.close()
    assert entries == written + make_entries(11, 12, term=2)


def test_empty_segment_before_the_last_is_an_error(tmp_path: Path) -> None:
    (tmp_path / segment_name(1)).touch()
    (tmp_path / segment_name(2)).write_bytes(encode_record(1, 2, 0, b"x"))
    with pytest.raises(CorruptLogError):
        WriteAheadLog.open(tmp_path)
