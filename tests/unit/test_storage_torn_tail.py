"""A torn last write is cut away whatever its value holds; damage to synced records is refused.

Issue 11 item 4: a value embedding a well-formed WAL record, inside a record cut by a power
loss, made recovery see "a bad record followed by an intact one" and refuse to start. The rule
now (``dengine_trio/storage/wal.py``, ``docs/durability.md``): what separates a torn tail from
corruption is the synced position (``wal/synced``), never bytes found after the damage.

Crash images are built the way a crash leaves them: entries appended and synced, more appended
and not synced, then a copy of the directory taken while the log is still open (what the page
cache holds, which a process kill keeps), and the unsynced part of the copy torn (what a power
loss may do to it).
"""

from __future__ import annotations

import logging
import shutil
import struct
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dengine_trio.raft.messages import Entry
from dengine_trio.storage import CorruptLogError, WriteAheadLog

SEGMENT_BYTES = 1 << 20


def encode_record(term: int, index: int, kind: int, data: bytes) -> bytes:
    """One record in the documented format, built without the module's code."""
    payload = msgpack.packb([term, index, kind, data])
    return struct.pack("<II", len(payload), zlib.crc32(payload)) + payload


def plain_entries(first: int, last: int, term: int = 1) -> list[Entry]:
    return [Entry(term=term, index=i, data=f"value {i}".encode()) for i in range(first, last + 1)]


def crash_image(
    workdir: Path, synced: Sequence[Entry], unsynced: Sequence[Entry]
) -> tuple[Path, int]:
    """Directory of a log that synced ``synced`` and then appended ``unsynced``; and where the
    last segment's synced part ends (bytes)."""
    live = workdir / "live"
    wal, _ = WriteAheadLog.open(live, segment_bytes=SEGMENT_BYTES)
    wal.append(synced)
    wal.sync()
    synced_bytes = _last_segment(live).stat().st_size if synced else 0
    if unsynced:
        wal.append(unsynced)
    image = workdir / "image"
    shutil.copytree(live, image)
    wal.close()
    return image, synced_bytes


def _last_segment(directory: Path) -> Path:
    return sorted(directory.glob("*.wal"))[-1]


def tear(path: Path, cut: int, fill: str) -> None:
    """Cut ``path`` at ``cut``: the rest is gone, zeros, or garbage (a crash that extended the
    file without writing its data, or wrote other pages of the same write)."""
    raw = path.read_bytes()
    rest = len(raw) - cut
    tail = {"gone": b"", "zeros": b"\0" * rest, "kept-after": raw[cut:]}[fill]
    if fill == "kept-after" and rest:
        # One lost page in the middle of the unsynced writes, the pages after it written.
        lost = min(rest, 16)
        tail = b"\0" * lost + raw[cut + lost :]
    path.write_bytes(raw[:cut] + tail)


def test_reported_torn_value_holding_a_record_does_not_stop_recovery(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The reported input: the last write's value holds a well-formed record (here the very
    record that would come next), and the write is torn after it."""
    synced = plain_entries(1, 3)
    embedded = encode_record(1, 5, 0, b"looks like the next record")
    last = Entry(term=1, index=4, data=b"user bytes " + embedded + b" more user bytes")
    image, synced_bytes = crash_image(tmp_path, synced, [last])
    segment = _last_segment(image)
    size = segment.stat().st_size
    # Torn a few bytes before the end: the embedded record is complete, the outer one is not.
    tear(segment, size - 5, "gone")

    with caplog.at_level(logging.WARNING, logger="dengine_trio.storage"):
        wal, entries = WriteAheadLog.open(image, segment_bytes=SEGMENT_BYTES)
    assert entries == synced
    assert segment.stat().st_size == synced_bytes
    assert any(f"offset {synced_bytes}" in r.getMessage() for r in caplog.records)
    # The log carries on after its intact prefix, and the result is durable and reopenable.
    wal.append([Entry(term=2, index=4, data=b"after the tear")])
    wal.close()
    again, entries = WriteAheadLog.open(image, segment_bytes=SEGMENT_BYTES)
    again.close()
    assert entries == [*synced, Entry(term=2, index=4, data=b"after the tear")]


# Values built to look like log records: whole frames (some with the index that would come
# next, some with any index), bare headers, and the 0x94 byte every payload starts with.
_frame = st.builds(
    encode_record,
    st.integers(0, 3),
    st.integers(0, 12),
    st.sampled_from([0, 1]),
    st.binary(max_size=12),
)
_piece = st.one_of(
    _frame,
    st.binary(max_size=10),
    st.just(b"\x94"),
    st.builds(lambda n: struct.pack("<II", n, 0), st.integers(0, 64)),
)
frame_values = st.lists(_piece, min_size=1, max_size=4).map(b"".join)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    values=st.lists(frame_values, min_size=1, max_size=3),
    synced_count=st.integers(0, 3),
    fill=st.sampled_from(["gone", "zeros", "kept-after"]),
)
def test_torn_unsynced_write_recovers_the_intact_prefix_at_every_offset(
    values: list[bytes], synced_count: int, fill: str
) -> None:
    """Unsynced records whose values contain valid frames, the first of them torn at EVERY
    byte offset of its extent: recovery always succeeds and keeps exactly the records before
    the tear, which include everything synced."""
    synced = plain_entries(1, synced_count)
    unsynced = [
        Entry(term=1, index=synced_count + 1 + i, data=value) for i, value in enumerate(values)
    ]
    with tempfile.TemporaryDirectory() as scratch:
        image, synced_bytes = crash_image(Path(scratch), synced, unsynced)
        pristine = _last_segment(image).read_bytes() if synced or unsynced else b""
        spans = []
        position = synced_bytes
        for entry in unsynced:
            length = len(encode_record(entry.term, entry.index, 0, entry.data))
            spans.append((position, position + length))
            position += length
        for cut in range(synced_bytes, spans[0][1]):
            trial = Path(scratch) / f"cut{cut}"
            shutil.copytree(image, trial)
            segment = _last_segment(trial)
            tear(segment, cut, fill)
            torn = segment.read_bytes() if segment.exists() else b""
            # Intact prefix: the unsynced records whose bytes all survived the tear (zeros
            # written over zeros change nothing), up to the first that did not.
            kept = 0
            while kept < len(spans) and torn[slice(*spans[kept])] == pristine[slice(*spans[kept])]:
                kept += 1
            expected = synced + unsynced[:kept]
            wal, entries = WriteAheadLog.open(trial, segment_bytes=SEGMENT_BYTES)
            wal.close()
            assert entries == expected, f"cut at {cut} ({fill})"
            if expected:
                assert segment.stat().st_size == (spans[kept - 1][1] if kept else synced_bytes)
            shutil.rmtree(trial)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data(), values=st.lists(frame_values, min_size=2, max_size=5))
def test_damage_to_a_synced_record_is_refused_naming_it(
    data: st.DataObject, values: list[bytes]
) -> None:
    """True mid-log corruption: a byte of a synced record damaged, synced records (and maybe
    unsynced ones) after it. Recovery refuses with an error naming the file and the record's
    offset, and cuts nothing."""
    synced = [Entry(term=1, index=i + 1, data=v) for i, v in enumerate(values)]
    spans = []
    position = 0
    for entry in synced:
        length = len(encode_record(entry.term, entry.index, 0, entry.data))
        spans.append((position, position + length))
        position += length
    unsynced = data.draw(st.lists(frame_values, max_size=2), label="unsynced values")
    with tempfile.TemporaryDirectory() as scratch:
        image, synced_bytes = crash_image(
            Path(scratch),
            synced,
            [Entry(term=1, index=len(synced) + 1 + i, data=v) for i, v in enumerate(unsynced)],
        )
        assert synced_bytes == spans[-1][1]
        # Any synced record: mostly with synced records after it; the last one too.
        victim = data.draw(st.integers(0, len(spans) - 1), label="damaged record")
        start, end = spans[victim]
        offset = data.draw(st.integers(start, end - 1), label="damaged byte")
        mask = data.draw(st.integers(1, 255), label="xor mask")
        segment = _last_segment(image)
        raw = bytearray(segment.read_bytes())
        raw[offset] ^= mask
        segment.write_bytes(bytes(raw))
        size_before = segment.stat().st_size
        try:
            WriteAheadLog.open(image, segment_bytes=SEGMENT_BYTES)
        except CorruptLogError as exc:
            message = str(exc)
        else:
            raise AssertionError(f"damage at byte {offset} of record {victim} was accepted")
        assert str(segment) in message
        # Either the damaged record is named, or (a length field changed so that its frame
        # swallows the next) an index out of sequence at or after it is.
        assert any(f"offset {s}" in message for s, _ in spans[victim:]), message
        assert segment.stat().st_size == size_before


def read_marker(directory: Path) -> tuple[int, int]:
    """(first index of a segment, bytes fsynced) from ``synced``, in the documented format."""
    raw = (directory / "synced").read_bytes()
    assert len(raw) == 28
    assert zlib.crc32(raw[:24]) == struct.unpack_from("<I", raw, 24)[0]
    magic, version, first_index, synced_bytes = struct.unpack_from("<4sIQQ", raw)
    assert (magic, version) == (b"DTSP", 1)
    return first_index, synced_bytes


def test_each_sync_records_what_it_covered(tmp_path: Path) -> None:
    wal, _ = WriteAheadLog.open(tmp_path, segment_bytes=200)
    assert read_marker(tmp_path) == (0, 0)
    wal.append(plain_entries(1, 3))
    assert read_marker(tmp_path) == (0, 0)  # appended, not synced: not claimed
    wal.sync()
    assert read_marker(tmp_path) == (1, _last_segment(tmp_path).stat().st_size)
    for first in range(4, 40, 3):
        wal.append(plain_entries(first, first + 2))
    wal.sync()
    last = _last_segment(tmp_path)
    assert len(list(tmp_path.glob("*.wal"))) > 1
    assert read_marker(tmp_path) == (int(last.stem), last.stat().st_size)
    wal.close()


@pytest.mark.parametrize("across_segments", [False, True])
def test_a_raft_truncation_lowers_the_marker_so_a_later_torn_write_recovers(
    tmp_path: Path, across_segments: bool
) -> None:
    """Synced 1..30, then a new leader's entries from 5 (truncating) appended but not synced
    and torn by a crash: the tear lies below the old marker, which must not make it look like
    corruption of synced records."""
    live = tmp_path / "live"
    wal, _ = WriteAheadLog.open(live, segment_bytes=200 if across_segments else SEGMENT_BYTES)
    for first in range(1, 31, 3):
        wal.append(plain_entries(first, first + 2))
    wal.sync()
    assert (len(list(live.glob("*.wal"))) > 1) == across_segments
    replacement = [Entry(term=2, index=i, data=b"x" * 40) for i in range(5, 8)]
    wal.append(replacement)
    image = tmp_path / "image"
    shutil.copytree(live, image)
    wal.close()
    segment = _last_segment(image)
    tear(segment, segment.stat().st_size - 10, "zeros")

    wal, entries = WriteAheadLog.open(image)
    wal.close()
    assert entries == plain_entries(1, 4) + replacement[:2]


def test_a_log_without_marker_takes_damage_in_its_last_segment_for_a_torn_write(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A log written before the marker existed (or whose marker was lost): nothing is known to
    be synced, so recovery never refuses on the last segment's account, and says so."""
    image, _ = crash_image(tmp_path, plain_entries(1, 5), [])
    (image / "synced").unlink()
    segment = _last_segment(image)
    raw = bytearray(segment.read_bytes())
    raw[20] ^= 0xFF  # inside record 1: everything from there on is cut
    segment.write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING, logger="dengine_trio.storage"):
        wal, entries = WriteAheadLog.open(image)
    wal.close()
    assert entries == []
    assert any("no readable synced-position marker" in r.getMessage() for r in caplog.records)
    assert read_marker(image) == (0, 0)


def test_a_segment_shorter_than_its_synced_size_is_refused(tmp_path: Path) -> None:
    """Whole records missing from the synced part (cut at a record boundary): corruption."""
    image, synced_bytes = crash_image(tmp_path, plain_entries(1, 5), [])
    segment = _last_segment(image)
    record = len(encode_record(1, 5, 0, b"value 5"))
    with open(segment, "r+b") as f:
        f.truncate(synced_bytes - record)
    with pytest.raises(CorruptLogError, match="synced records are missing") as raised:
        WriteAheadLog.open(image)
    assert str(segment) in str(raised.value)
    assert segment.stat().st_size == synced_bytes - record


def test_a_missing_synced_segment_is_refused(tmp_path: Path) -> None:
    live = tmp_path / "live"
    wal, _ = WriteAheadLog.open(live, segment_bytes=100)
    for first in range(1, 20, 2):
        wal.append(plain_entries(first, first + 1))
    wal.close()
    last = _last_segment(live)
    last.unlink()
    with pytest.raises(CorruptLogError, match="that segment is missing") as raised:
        WriteAheadLog.open(live)
    assert last.name in str(raised.value)


def test_an_unreadable_marker_is_ignored_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    image, _ = crash_image(tmp_path, plain_entries(1, 5), plain_entries(6, 6))
    raw = bytearray((image / "synced").read_bytes())
    raw[10] ^= 0x01
    (image / "synced").write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING, logger="dengine_trio.storage"):
        wal, entries = WriteAheadLog.open(image)
    wal.close()
    assert entries == plain_entries(1, 6)
    assert any("ignoring it" in r.getMessage() for r in caplog.records)


def test_a_torn_write_in_a_segment_the_marker_does_not_name_yet_is_cut(tmp_path: Path) -> None:
    """The unsynced append started a new segment: the marker still names the previous one,
    which the roll fsynced whole; the new segment's torn record, holding a frame, is cut."""
    live = tmp_path / "live"
    wal, _ = WriteAheadLog.open(live, segment_bytes=100)
    synced: list[Entry] = []
    while not synced or _last_segment(live).stat().st_size < 100:
        synced += plain_entries(len(synced) + 1, len(synced) + 1)
        wal.append(synced[-1:])
    wal.sync()  # the next append rolls to a new segment
    marker_before = read_marker(live)
    assert marker_before == (1, _last_segment(live).stat().st_size)
    embedded = encode_record(1, len(synced) + 2, 0, b"next-looking record")
    torn = Entry(term=1, index=len(synced) + 1, data=b"<" + embedded + b">")
    wal.append([torn])
    image = tmp_path / "image"
    shutil.copytree(live, image)
    wal.close()
    segment = _last_segment(image)
    assert segment.name == f"{torn.index:020d}.wal"
    assert read_marker(image) == marker_before  # it names the previous segment
    tear(segment, segment.stat().st_size - 2, "gone")

    wal, entries = WriteAheadLog.open(image)
    wal.close()
    assert entries == synced
    assert not segment.exists()
