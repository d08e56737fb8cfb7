"""Snapshot files: round trips, atomic replacement, and every damage detected before it is applied.

The damage tests are exhaustive over a small file: every byte flipped, every truncation length,
so every offset class (prefix, header, header CRC, payload, trailer) is covered.
"""

from __future__ import annotations

import io
import logging
import os
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dengine_trio import statemachine
from dengine_trio.statemachine import (
    KV_BATCH_BYTES,
    MERGE_PER_APPLY,
    KVStateMachine,
    SnapshotImageError,
    SnapshotSink,
    SnapshotSource,
    encode_delete,
    encode_put,
    read_kv_image,
)
from dengine_trio.storage import StorageError
from dengine_trio.storage.snapshots import (
    FORMAT_VERSION,
    CorruptSnapshotError,
    ForeignSnapshotError,
    SnapshotChunkError,
    SnapshotError,
    SnapshotHeader,
    SnapshotReader,
    SnapshotReceiver,
    SnapshotWriter,
    UnsupportedSnapshotVersionError,
    find_newest_valid,
    list_snapshots,
    read_raw_chunk,
    remove_old_snapshots,
    remove_stale_temporaries,
    restore_snapshot,
    snapshot_name,
    verify_snapshot,
)
from dengine_trio.storage.snapshots import write_snapshot as write_snapshot_file

CLUSTER = "test-0123456789ab"
VOTERS = {1: "127.0.0.1:9081", 2: "127.0.0.1:9082", 3: "127.0.0.1:9083"}


def header(index: int = 10, term: int = 2, cluster_id: str = CLUSTER) -> SnapshotHeader:
    return SnapshotHeader(last_index=index, last_term=term, cluster_id=cluster_id, voters=VOTERS)


def kv(pairs: dict[bytes, bytes]) -> KVStateMachine:
    sm = KVStateMachine()
    for key, value in pairs.items():
        sm.apply(0, encode_put(key, value))
    return sm


def write_snapshot(
    directory: Path,
    sm: KVStateMachine,
    index: int = 10,
    term: int = 2,
    chunk_bytes: int = 1 << 20,
    cluster_id: str = CLUSTER,
) -> Path:
    image = sm.snapshot()
    with SnapshotWriter.create(directory, header(index, term, cluster_id), chunk_bytes) as writer:
        image(writer)
        return writer.commit().path


def restore(path: Path, cluster_id: str | None = CLUSTER, read_bytes: int = 4096) -> KVStateMachine:
    sm = KVStateMachine()

    class Chunked:
        """Hands the state machine at most ``read_bytes`` per read."""

        def __init__(self, reader: SnapshotReader) -> None:
            self.reader = reader

        def read(self, size: int = -1) -> bytes:
            return self.reader.read(read_bytes if size < 0 else min(size, read_bytes))

    with SnapshotReader.open(path, cluster_id) as reader:
        sm.restore(Chunked(reader))
    return sm


SMALL = {b"a": b"1", b"": b"", "ключ ✓".encode(): "значение 🐍".encode(), b"\x00\xff": b"z" * 40}

keys_or_values = st.one_of(
    st.binary(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=20).map(str.encode),
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    pairs=st.dictionaries(keys_or_values, keys_or_values, max_size=40),
    chunk_bytes=st.integers(1, 200),
    read_bytes=st.integers(1, 97),
    index=st.integers(1, 2**64 - 1),
    term=st.integers(1, 2**64 - 1),
)
def test_kv_round_trip_through_a_snapshot_file(
    tmp_path: Path,
    pairs: dict[bytes, bytes],
    chunk_bytes: int,
    read_bytes: int,
    index: int,
    term: int,
) -> None:
    directory = tmp_path / f"s{index}-{term}-{chunk_bytes}"
    path = write_snapshot(directory, kv(pairs), index, term, chunk_bytes)
    assert path.name == snapshot_name(index, term)
    found = verify_snapshot(path, CLUSTER, chunk_bytes=read_bytes)
    assert found.header == header(index, term)
    assert found.header is not None and found.header.voters == VOTERS
    assert restore(path, read_bytes=read_bytes).data == pairs
    # Nothing but the snapshot is left in the directory.
    assert os.listdir(directory) == [path.name]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    pieces=st.lists(st.binary(max_size=300), max_size=30),
    chunk_bytes=st.integers(1, 512),
    read_sizes=st.lists(st.integers(-1, 700).filter(bool), min_size=1, max_size=10),
)
def test_streamed_payload_round_trip(
    tmp_path: Path, pieces: list[bytes], chunk_bytes: int, read_sizes: list[int]
) -> None:
    """Any payload, written in any pieces with any buffer size, reads back in any read sizes;
    no read returns more than it asked for, and the end is reported only once verified."""
    directory = tmp_path / f"raw-{chunk_bytes}-{len(pieces)}-{sum(map(len, pieces))}"
    with SnapshotWriter.create(directory, header(), chunk_bytes) as writer:
        for piece in pieces:
            assert writer.write(piece) == len(piece)
        written = writer.commit()
    payload = b"".join(pieces)
    assert written.payload_bytes == len(payload)
    assert written.size_bytes == written.path.stat().st_size
    got = b""
    with SnapshotReader.open(written.path, CLUSTER) as reader:
        assert reader.payload_bytes == len(payload)
        assert reader.read(0) == b""  # as io's read(0): nothing, not the end
        for turn in range(len(payload) + 2):
            size = read_sizes[turn % len(read_sizes)]
            data = reader.read(size)
            assert size < 0 or len(data) <= size
            if not data and size != 0:
                break
            got += data
        assert reader.read(10) == b""
    assert got == payload


def test_the_image_is_the_state_when_snapshot_was_called(tmp_path: Path) -> None:
    sm = kv({b"k": b"before", b"gone": b"x"})
    image = sm.snapshot()
    # apply goes on while the image is written (in a worker thread in the runtime).
    sm.apply(0, encode_put(b"k", b"after"))
    sm.apply(0, encode_delete(b"gone"))
    sm.apply(0, encode_put(b"new", b"y"))
    with SnapshotWriter.create(tmp_path, header()) as writer:
        image(writer)
        path = writer.commit().path
    assert restore(path).data == {b"k": b"before", b"gone": b"x"}


def test_the_kv_image_is_written_in_batches_not_as_one_object() -> None:
    sm = kv({b"%06d" % i: b"v" * 200 for i in range(5000)})
    writes: list[int] = []

    class Sink:
        def write(self, data: bytes) -> int:
            writes.append(len(data))
            return len(data)

    sm.snapshot()(Sink())
    assert len(writes) > 3
    # A batch closes at KV_BATCH_BYTES of keys and values; msgpack adds a few bytes per item.
    assert max(writes) < KV_BATCH_BYTES + 4096 * 4


def test_restore_of_an_empty_state(tmp_path: Path) -> None:
    path = write_snapshot(tmp_path, KVStateMachine())
    sm = kv({b"old": b"state"})
    with SnapshotReader.open(path, CLUSTER) as reader:
        sm.restore(reader)
    assert sm.data == {}


def small_snapshot(directory: Path) -> Path:
    return write_snapshot(directory, kv(SMALL), chunk_bytes=16)


def assert_refused(path: Path, exc_type: type[SnapshotError] = SnapshotError) -> SnapshotError:
    """The file is refused by verification and by a restore, which leaves the state as it was."""
    with pytest.raises(exc_type) as raised:
        verify_snapshot(path, CLUSTER)
    assert str(path) in str(raised.value)
    assert "\n" not in str(raised.value)
    before = {b"live": b"state"}
    sm = kv(before)
    with pytest.raises((SnapshotError, SnapshotImageError)):
        with SnapshotReader.open(path, CLUSTER) as reader:
            sm.restore(reader)
    assert sm.data == before
    return raised.value


def test_every_flipped_byte_is_detected_and_never_applied(tmp_path: Path) -> None:
    path = small_snapshot(tmp_path / "good")
    original = path.read_bytes()
    damaged = tmp_path / "damaged" / path.name
    damaged.parent.mkdir()
    for offset in range(len(original)):
        for mask in (0x01, 0x80, 0xFF):
            raw = bytearray(original)
            raw[offset] ^= mask
            damaged.write_bytes(bytes(raw))
            assert_refused(damaged)


def test_every_truncation_is_detected(tmp_path: Path) -> None:
    path = small_snapshot(tmp_path / "good")
    original = path.read_bytes()
    damaged = tmp_path / "damaged" / path.name
    damaged.parent.mkdir()
    for length in range(len(original)):
        damaged.write_bytes(original[:length])
        assert_refused(damaged, CorruptSnapshotError)
    # And bytes appended after the end.
    damaged.write_bytes(original + b"\x00")
    assert_refused(damaged, CorruptSnapshotError)


def test_a_payload_flip_that_still_decodes_is_refused_at_the_end(tmp_path: Path) -> None:
    """The KV image decodes fine with a changed value: only the file CRC, checked by the reader
    before it reports the end, keeps it from being applied."""
    path = write_snapshot(tmp_path, kv({b"key": b"value-AAAA"}))
    raw = bytearray(path.read_bytes())
    at = raw.index(b"value-AAAA")
    raw[at + 6] = ord("B")
    path.write_bytes(bytes(raw))
    # Decodes to a plausible state when read without verification ...
    prefix = struct.calcsize("<4sII")
    (header_length,) = struct.unpack_from("<I", raw, 8)
    payload = bytes(raw[prefix + header_length + 4 : -16])
    assert read_kv_image(io.BytesIO(payload)) == {b"key": b"value-BAAA"}
    # ... but never through a snapshot reader.
    error = assert_refused(path, CorruptSnapshotError)
    assert "checksum mismatch" in str(error)


def rewrite_prefix(
    path: Path, version: int | None = None, header_bytes: bytes | None = None
) -> None:
    """Rewrite the file with another version or header and every CRC recomputed: a well-formed
    file that differs only in that field."""
    raw = path.read_bytes()
    magic, old_version, length = struct.unpack_from("<4sII", raw)
    old_header = raw[12 : 12 + length]
    body_start = 12 + length + 4
    payload = raw[body_start:-16]
    new_header = old_header if header_bytes is None else header_bytes
    start = struct.pack(
        "<4sII", magic, old_version if version is None else version, len(new_header)
    )
    start += new_header
    data = start + struct.pack("<I", zlib.crc32(start)) + payload
    data += struct.pack("<4sQ", b"DTSE", len(payload))
    path.write_bytes(data + struct.pack("<I", zlib.crc32(data)))


def test_rewrite_prefix_keeps_a_valid_file(tmp_path: Path) -> None:
    path = small_snapshot(tmp_path)
    rewrite_prefix(path)
    assert restore(path).data == SMALL


def test_unknown_format_version_is_refused(tmp_path: Path) -> None:
    path = small_snapshot(tmp_path)
    rewrite_prefix(path, version=FORMAT_VERSION + 1)
    error = assert_refused(path, UnsupportedSnapshotVersionError)
    assert f"format version {FORMAT_VERSION + 1}" in str(error)


def test_snapshot_of_another_cluster_is_refused(tmp_path: Path) -> None:
    path = write_snapshot(tmp_path, kv(SMALL), cluster_id="other-aaaaaaaaaaaa")
    error = assert_refused(path, ForeignSnapshotError)
    assert "other-aaaaaaaaaaaa" in str(error) and CLUSTER in str(error)
    # Without a cluster to check against (a backup tool), the file is intact.
    assert restore(path, cluster_id=None).data == SMALL


def test_a_header_that_decodes_to_nonsense_is_refused(tmp_path: Path) -> None:
    path = small_snapshot(tmp_path)
    rewrite_prefix(path, header_bytes=b"\x93\x01\x02\x03")  # msgpack [1, 2, 3]
    assert "undecodable header" in str(assert_refused(path, CorruptSnapshotError))


def test_a_file_renamed_to_another_index_is_refused(tmp_path: Path) -> None:
    path = small_snapshot(tmp_path)
    renamed = path.with_name(snapshot_name(99, 2))
    path.rename(renamed)
    with pytest.raises(CorruptSnapshotError, match="the name says index 99"):
        verify_snapshot(renamed, CLUSTER)


def test_an_image_of_another_state_machine_is_refused(tmp_path: Path) -> None:
    with SnapshotWriter.create(tmp_path, header()) as writer:
        writer.write(b"COUNTER 42")
        path = writer.commit().path
    sm = kv({b"live": b"state"})
    with pytest.raises(SnapshotImageError, match="not a key-value image"):
        with SnapshotReader.open(path, CLUSTER) as reader:
            sm.restore(reader)
    assert sm.data == {b"live": b"state"}


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        (b"DTKV\x04\x00\x00\x00", "version 4"),
        (b"DTKV\x01\x00\x00\x00", "ends before its key count"),
        (b"DTKV\x01\x00\x00\x00\x92\xc4\x01a\xc4\x01b\x02", "holds 1 keys, its end says 2"),
        (b"DTKV\x01\x00\x00\x00\x91\xc4\x01a\x00", "not a list of key, value pairs"),
        (b"DTKV\x01\x00\x00\x00\x92\xa1a\xc4\x01b\x01", "not bytes"),
        (b"DTKV\x01\x00\x00\x00\x00\x00", "after the end"),
        (b"DTKV\x01\x00\x00\x00\xc1", "malformed"),
        (b"DTK", "ends after 3 bytes"),
    ],
)
def test_malformed_kv_images(payload: bytes, problem: str) -> None:
    sm = kv({b"live": b"state"})
    with pytest.raises(SnapshotImageError, match=problem):
        sm.restore(io.BytesIO(payload))
    assert sm.data == {b"live": b"state"}


def test_newest_valid_falls_back_and_reports_the_damaged_newer_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    older = write_snapshot(tmp_path, kv({b"k": b"1"}), index=10)
    newer = write_snapshot(tmp_path, kv({b"k": b"2"}), index=20)
    assert find_newest_valid(tmp_path, CLUSTER).valid is not None
    assert find_newest_valid(tmp_path, CLUSTER).valid.path == newer  # type: ignore[union-attr]
    raw = bytearray(newer.read_bytes())
    raw[len(raw) // 2] ^= 0x10
    newer.write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING, logger="dengine_trio.storage"):
        scan = find_newest_valid(tmp_path, CLUSTER)
    assert scan.valid is not None and scan.valid.path == older and scan.valid.last_index == 10
    assert [(f.path, type(e)) for f, e in scan.rejected] == [(newer, CorruptSnapshotError)]
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and str(newer) in messages[0] and "\n" not in messages[0]


def test_no_valid_snapshot(tmp_path: Path) -> None:
    assert find_newest_valid(tmp_path / "missing", CLUSTER) == find_newest_valid(tmp_path, CLUSTER)
    only = write_snapshot(tmp_path, kv(SMALL), cluster_id="other-aaaaaaaaaaaa")
    scan = find_newest_valid(tmp_path, CLUSTER)
    assert scan.valid is None
    assert [(f.path, type(e)) for f, e in scan.rejected] == [(only, ForeignSnapshotError)]


def test_an_aborted_write_leaves_the_previous_snapshot(tmp_path: Path) -> None:
    previous = write_snapshot(tmp_path, kv({b"k": b"1"}), index=10)
    sm = kv({b"k": b"2"})
    with pytest.raises(RuntimeError, match="disk on fire"):
        with SnapshotWriter.create(tmp_path, header(index=20), chunk_bytes=4) as writer:
            sm.snapshot()(writer)
            raise RuntimeError("disk on fire")
    assert sorted(tmp_path.iterdir()) == [previous]
    assert restore(previous).data == {b"k": b"1"}


def test_a_crash_before_the_rename_leaves_only_a_temporary_file(tmp_path: Path) -> None:
    """What a crash mid-write leaves, built by hand (the subprocess test kills a real writer)."""
    previous = write_snapshot(tmp_path, kv({b"k": b"1"}), index=10)
    writer = SnapshotWriter.create(tmp_path, header(index=20), chunk_bytes=1)
    kv({b"k": b"2" * 100}).snapshot()(writer)
    # No commit: the process "dies" here.
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len(names) == 2 and previous.name in names
    assert [s.path for s in list_snapshots(tmp_path)] == [previous]
    assert find_newest_valid(tmp_path, CLUSTER).valid.path == previous  # type: ignore[union-attr]
    assert remove_stale_temporaries(tmp_path) != []
    assert sorted(tmp_path.iterdir()) == [previous]
    writer.abort()  # the temporary is already gone: abort tolerates it


def test_cleanup_keeps_the_newest(tmp_path: Path) -> None:
    paths = [
        write_snapshot(tmp_path, kv({b"i": b"%d" % i}), index=i, term=1) for i in (5, 50, 7, 40)
    ]
    paths.append(write_snapshot(tmp_path, kv({}), index=50, term=3))
    temporary = tmp_path / ".snapshot-inprogress.tmp"
    temporary.write_bytes(b"partial")
    (tmp_path / "unrelated").write_bytes(b"x")
    assert [(s.last_index, s.last_term) for s in list_snapshots(tmp_path)] == [
        (50, 3), (50, 1), (40, 1), (7, 1), (5, 1)
    ]  # fmt: skip
    removed = remove_old_snapshots(tmp_path, keep=2)
    assert sorted(removed) == sorted([paths[0], paths[2], paths[3]])
    assert [(s.last_index, s.last_term) for s in list_snapshots(tmp_path)] == [(50, 3), (50, 1)]
    assert temporary.exists() and (tmp_path / "unrelated").exists()
    assert remove_old_snapshots(tmp_path, keep=2) == []
    with pytest.raises(ValueError, match="keep must be at least 1"):
        remove_old_snapshots(tmp_path, keep=0)


def test_cleanup_with_verified_files_never_gives_up_one_for_an_unknown_file(
    tmp_path: Path,
) -> None:
    """Files merely named newer (planted by hand, damaged, another cluster's) do not count
    among the kept: the node's own verified snapshots stay; older files of any kind go."""
    own = [write_snapshot(tmp_path, kv({b"i": b"%d" % i}), index=i, term=1) for i in (10, 20, 30)]
    older = tmp_path / snapshot_name(5, 1)
    older.write_bytes(b"an unverified file older than what is kept")
    planted = [tmp_path / snapshot_name(99_999, 1), tmp_path / snapshot_name(500, 1)]
    for path in planted:
        path.write_bytes(b"not a snapshot of this node")
    removed = remove_old_snapshots(tmp_path, 2, verified=own)
    assert sorted(removed) == sorted([own[0], older])
    assert all(path.exists() for path in [own[1], own[2], *planted])
    # None of the verified files on disk any more: nothing to measure by, nothing deleted.
    assert remove_old_snapshots(tmp_path, 1, verified=[own[0]]) == []
    assert all(path.exists() for path in [own[1], own[2], *planted])


def transfer(source: Path, receiver: SnapshotReceiver, chunk: int) -> None:
    offset = 0
    while data := read_raw_chunk(source, offset, chunk):
        receiver.write_chunk(offset, data)
        offset += len(data)


@pytest.mark.parametrize("chunk", [1, 7, 64, 1 << 20])
def test_receiver_installs_a_streamed_snapshot(tmp_path: Path, chunk: int) -> None:
    source = write_snapshot(tmp_path / "leader", kv(SMALL), index=30, term=4)
    follower = tmp_path / "follower"
    previous = write_snapshot(follower, kv({b"k": b"old"}), index=10)
    with SnapshotReceiver.create(follower) as receiver:
        transfer(source, receiver, chunk)
        installed = receiver.finish(CLUSTER, expected=(30, 4), chunk_bytes=chunk)
    assert installed.path == follower / source.name
    assert installed.path.read_bytes() == source.read_bytes()
    assert sorted(follower.iterdir()) == sorted([previous, installed.path])
    assert restore(installed.path).data == SMALL


def test_receiver_refuses_a_chunk_out_of_order(tmp_path: Path) -> None:
    source = small_snapshot(tmp_path / "leader")
    follower = tmp_path / "follower"
    with SnapshotReceiver.create(follower) as receiver:
        receiver.write_chunk(0, read_raw_chunk(source, 0, 10))
        with pytest.raises(SnapshotChunkError, match="chunk at offset 20, expected 10"):
            receiver.write_chunk(20, read_raw_chunk(source, 20, 10))
    assert list(follower.iterdir()) == []


@pytest.mark.parametrize("damage", ["flip", "truncate", "foreign"])
def test_receiver_never_installs_a_bad_transfer(tmp_path: Path, damage: str) -> None:
    cluster = "other-aaaaaaaaaaaa" if damage == "foreign" else CLUSTER
    source = write_snapshot(tmp_path / "leader", kv(SMALL), cluster_id=cluster)
    raw = bytearray(source.read_bytes())
    if damage == "flip":
        raw[40] ^= 0x04
    elif damage == "truncate":
        del raw[-5:]
    source.write_bytes(bytes(raw))
    follower = tmp_path / "follower"
    previous = write_snapshot(follower, kv({b"k": b"old"}), index=3)
    receiver = SnapshotReceiver.create(follower)
    transfer(source, receiver, 16)
    with pytest.raises(SnapshotError) as raised:
        receiver.finish(CLUSTER)
    assert ".snapshot-" in str(raised.value)
    assert sorted(follower.iterdir()) == [previous]
    assert isinstance(raised.value, StorageError)


def test_sigkill_mid_write_leaves_the_previous_snapshot_loadable(tmp_path: Path) -> None:
    """A real writer process is killed at an arbitrary moment of its stream of snapshots:
    every file under a snapshot name is complete and valid, and the newest one is at least
    the last whose commit was reported."""
    helper = Path(__file__).with_name("storage_process.py")
    sys.path.insert(0, str(helper.parent))
    from storage_process import SNAPSHOT_CLUSTER, snapshot_state

    directory = tmp_path / "snapshots"
    writer = subprocess.Popen(
        [sys.executable, str(helper), "snapshots", str(directory)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    committed: list[int] = []
    try:
        assert writer.stdout is not None
        while len(committed) < 5:
            line = writer.stdout.readline()
            assert line, f"writer exited early: {writer.stderr.read() if writer.stderr else ''}"
            word, index = line.split()
            assert word == "committed"
            committed.append(int(index))
        # Kill it a little into the next snapshot (or into its commit).
        time.sleep(0.005 * (committed[-1] % 7))
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    assert writer.returncode == -signal.SIGKILL

    for found in list_snapshots(directory):
        verify_snapshot(found.path, SNAPSHOT_CLUSTER)  # raises if a partial file got a name
    scan = find_newest_valid(directory, SNAPSHOT_CLUSTER)
    assert scan.rejected == []
    assert scan.valid is not None and scan.valid.last_index >= committed[-1]
    sm = KVStateMachine()
    with SnapshotReader.open(scan.valid.path, SNAPSHOT_CLUSTER) as reader:
        sm.restore(reader)
    assert sm.data == snapshot_state(scan.valid.last_index).data
    remove_stale_temporaries(directory)
    assert all(name.endswith(".snap") for name in os.listdir(directory))


class Hasty:
    """A state machine that breaks the restore contract: it takes the first bytes it reads as
    its state at once, without reading to the end."""

    def __init__(self) -> None:
        self.state = b"initial"

    def apply(self, index: int, command: bytes) -> bytes:
        self.state = command
        return b""

    def reset(self) -> None:
        self.state = b""

    def snapshot(self) -> Callable[[SnapshotSink], None]:
        state = self.state
        return lambda sink: sink.write(state)

    def restore(self, source: SnapshotSource) -> None:
        self.state = source.read(len(b"initial"))


def test_write_and_restore_snapshot_helpers(tmp_path: Path) -> None:
    written = write_snapshot_file(tmp_path, header(index=7, term=3), kv(SMALL).snapshot(), 8)
    sm = kv({b"old": b"x"})
    assert restore_snapshot(written.path, CLUSTER, sm, chunk_bytes=5) == header(index=7, term=3)
    assert sm.data == SMALL


def test_restore_snapshot_verifies_before_a_hasty_state_machine_reads(tmp_path: Path) -> None:
    source = Hasty()
    source.apply(1, b"damaged-at-the-end")
    path = write_snapshot_file(tmp_path, header(), source.snapshot()).path
    raw = bytearray(path.read_bytes())
    raw[-17] ^= 0x01  # the last payload byte (the trailer is 16 bytes), after what Hasty reads
    path.write_bytes(bytes(raw))
    target = Hasty()
    with pytest.raises(CorruptSnapshotError, match=str(path)):
        restore_snapshot(path, CLUSTER, target)
    assert target.state == b"initial"


def test_write_snapshot_leaves_nothing_when_the_image_fails(tmp_path: Path) -> None:
    def failing(sink: SnapshotSink) -> None:
        sink.write(b"x" * 100)
        raise OSError("image failed")

    with pytest.raises(OSError, match="image failed"):
        write_snapshot_file(tmp_path, header(), failing, 10)
    assert list(tmp_path.iterdir()) == []


def record_durability_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Record fsyncs (of what path) and renames, in order."""
    calls: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(source: str | Path, target: str | Path) -> None:
        calls.append(("rename", f"{source} -> {target}"))
        real_replace(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return calls


def assert_fsync_rename_fsync(calls: list[tuple[str, str]], final: Path) -> None:
    renames = [i for i, (kind, _) in enumerate(calls) if kind == "rename"]
    assert len(renames) == 1
    at = renames[0]
    temporary = calls[at][1].split(" -> ")[0]
    assert calls[at][1] == f"{temporary} -> {final}"
    assert ("fsync", temporary) in calls[:at], "the file must be durable before it is named"
    assert ("fsync", str(final.parent)) in calls[at + 1 :], "the rename must be made durable"


def test_writer_fsyncs_the_file_before_the_rename_and_the_directory_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "s").mkdir()
    calls = record_durability_calls(monkeypatch)
    written = write_snapshot_file(tmp_path / "s", header(), kv(SMALL).snapshot(), 8)
    assert_fsync_rename_fsync(calls, written.path)


def test_receiver_fsyncs_the_file_before_the_rename_and_the_directory_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = small_snapshot(tmp_path / "leader")
    (tmp_path / "follower").mkdir()
    calls = record_durability_calls(monkeypatch)
    with SnapshotReceiver.create(tmp_path / "follower") as receiver:
        transfer(source, receiver, 64)
        installed = receiver.finish(CLUSTER)
    assert_fsync_rename_fsync(calls, installed.path)


@pytest.mark.parametrize(
    "command",
    [
        msgpack.packb((0, 5, b"v")),
        msgpack.packb((0, "text key", b"v")),
        msgpack.packb((0, b"k", "text value")),
        msgpack.packb((0, b"k", None)),
        msgpack.packb((1, 7)),
    ],
)
def test_a_committed_command_with_keys_or_values_not_bytes_cannot_poison_the_snapshot(
    tmp_path: Path, command: bytes
) -> None:
    """Such a command is a no-op on every node (result b"\\x00"), so the state stays
    something a snapshot can hold and every node can restore."""
    sm = kv({b"k": b"before"})
    assert sm.apply(1, command) == b"\x00"
    assert sm.data == {b"k": b"before"}
    path = write_snapshot(tmp_path, sm)
    assert restore(path).data == {b"k": b"before"}


small_keys = st.sampled_from([b"a", b"b", b"c", b"", "é".encode()])
kv_steps = st.lists(
    st.one_of(
        st.tuples(st.just("put"), small_keys, st.binary(max_size=3)),
        st.tuples(st.just("put"), small_keys, st.binary(max_size=3)),
        st.tuples(st.just("put"), small_keys, st.binary(max_size=3)),
        st.tuples(st.just("delete"), small_keys),
        st.tuples(st.just("snapshot")),
        st.tuples(st.just("write"), st.integers(0, 3)),
        st.tuples(st.just("reset")),
        st.tuples(st.just("restore"), st.dictionaries(small_keys, st.binary(max_size=3))),
    ),
    max_size=40,
)


@settings(max_examples=600, deadline=None)
@given(steps=kv_steps, merge_per_apply=st.sampled_from([1, 2, MERGE_PER_APPLY]))
def test_kv_snapshot_interleaved_with_applies_matches_a_model(
    steps: list[tuple], merge_per_apply: int
) -> None:
    """Any interleaving of applies, snapshots, image writes (late, out of order, never),
    resets and restores, with the overlay drained back a few keys per apply: live reads
    always match a plain dict, and every image that gets written holds exactly the state at
    its ``snapshot()`` call."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(statemachine, "MERGE_PER_APPLY", merge_per_apply)
        check_against_model(steps)


def check_against_model(steps: list[tuple]) -> None:
    sm = KVStateMachine()
    model: dict[bytes, bytes] = {}
    pending: list[tuple[Callable[[SnapshotSink], None], dict[bytes, bytes]]] = []
    for step in steps:
        if step[0] == "put":
            assert sm.apply(1, encode_put(step[1], step[2])) == b""
            model[step[1]] = step[2]
        elif step[0] == "delete":
            assert sm.apply(1, encode_delete(step[1])) == b""
            model.pop(step[1], None)
        elif step[0] == "snapshot":
            pending.append((sm.snapshot(), dict(model)))
        elif step[0] == "write" and pending:
            image, expected = pending.pop(step[1] % len(pending))
            sink = io.BytesIO()
            try:
                image(sink)
            except RuntimeError as exc:
                # Only an image abandoned by a later snapshot(), reset() or restore() refuses.
                assert "already abandoned" in str(exc)
                continue
            assert read_kv_image(io.BytesIO(sink.getvalue())) == expected
        elif step[0] == "reset":
            sm.reset()
            model = {}
        elif step[0] == "restore":
            sink = io.BytesIO()
            kv(step[1]).snapshot()(sink)
            sm.restore(io.BytesIO(sink.getvalue()))
            model = dict(step[1])
        assert dict(sm.data) == model
        assert len(sm.data) == len(model)
        for key in (b"a", b"b", b"c", b"", "é".encode(), b"absent"):
            assert sm.get(key) == model.get(key)
            assert (key in sm.data) == (key in model)


def test_snapshot_while_the_previous_image_is_being_written(tmp_path: Path) -> None:
    """The image runs in a worker thread while the loop applies and reads; a second snapshot
    is refused until it has finished, then merges the changes made meanwhile."""
    sm = kv({b"k": b"1", b"gone": b"x"})
    image = sm.snapshot()
    entered, release = threading.Event(), threading.Event()

    class SlowSink:
        def __init__(self) -> None:
            self.parts: list[bytes] = []

        def write(self, data: bytes) -> int:
            entered.set()
            release.wait(10)
            self.parts.append(data)
            return len(data)

    sink = SlowSink()
    worker = threading.Thread(target=image, args=(sink,))
    worker.start()
    assert entered.wait(10)
    sm.apply(2, encode_put(b"k", b"2"))
    sm.apply(3, encode_delete(b"gone"))
    assert sm.get(b"k") == b"2" and sm.get(b"gone") is None
    with pytest.raises(RuntimeError, match="still being written"):
        sm.snapshot()
    release.set()
    worker.join(10)
    assert read_kv_image(io.BytesIO(b"".join(sink.parts))) == {b"k": b"1", b"gone": b"x"}
    with pytest.raises(RuntimeError, match="already finished"):
        image(io.BytesIO())
    second = sm.snapshot()
    assert type(sm.data) is not dict  # a capture again
    out = io.BytesIO()
    second(out)
    assert read_kv_image(io.BytesIO(out.getvalue())) == {b"k": b"2"}
    sm.apply(4, encode_put(b"n", b"3"))  # the first apply after the write merges
    assert type(sm.data) is dict and sm.data == {b"k": b"2", b"n": b"3"}


def test_the_overlay_drains_back_a_few_keys_per_apply_and_reads_stay_right() -> None:
    """After the image is written, each apply moves MERGE_PER_APPLY changes back (no long merge
    on the loop); every read in between sees the latest state."""
    sm = kv({b"%03d" % i: b"old" for i in range(100)})
    model = dict(sm.data)
    image = sm.snapshot()
    for i in range(0, 100, 2):
        sm.apply(1, encode_put(b"%03d" % i, b"new"))
        model[b"%03d" % i] = b"new"
    for i in range(1, 100, 4):
        sm.apply(1, encode_delete(b"%03d" % i))
        del model[b"%03d" % i]
    for i in range(100, 150):
        sm.apply(1, encode_put(b"%03d" % i, b"added"))
        model[b"%03d" % i] = b"added"
    image(io.BytesIO())
    overlay = len(sm.data.changes)  # type: ignore[attr-defined]
    applies = 0
    while type(sm.data) is not dict:
        key = b"%03d" % (applies % 160)
        sm.apply(1, encode_put(key, b"drain"))
        model[key] = b"drain"
        applies += 1
        assert dict(sm.data) == model and len(sm.data) == len(model)
        assert all(sm.get(b"%03d" % i) == model.get(b"%03d" % i) for i in range(170))
    # Each apply moves MERGE_PER_APPLY changes back, and its own write goes to the dict.
    assert 1 < applies <= -(-overlay // MERGE_PER_APPLY)
    assert sm.data == model


def test_receiver_resumes_at_received_bytes_and_checks_the_announced_snapshot(
    tmp_path: Path,
) -> None:
    source = write_snapshot(tmp_path / "leader", kv(SMALL), index=30, term=4)
    size = source.stat().st_size
    follower = tmp_path / "follower"
    receiver = SnapshotReceiver.create(follower)
    receiver.write_chunk(0, read_raw_chunk(source, 0, 50))
    # The connection drops; the follower answers the next attempt with where it stands.
    resume_at = receiver.received_bytes
    assert resume_at == 50
    receiver.write_chunk(resume_at, read_raw_chunk(source, resume_at, size))
    assert receiver.finish(CLUSTER, expected=(30, 4)).path == follower / source.name

    # A file that is intact but not the one announced is not installed.
    other = SnapshotReceiver.create(follower)
    transfer(source, other, 1000)
    with pytest.raises(CorruptSnapshotError, match="the sender announced index 31 term 4"):
        other.finish(CLUSTER, expected=(31, 4))
    assert sorted(p.name for p in follower.iterdir()) == [source.name]


def test_a_chunk_write_that_fails_part_way_is_redone_whole_on_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk takes part of a chunk and then fails (ENOSPC): ``received_bytes`` does not
    move, and the resumed transfer's chunk at that offset replaces the partial bytes instead
    of following them (which would leave a file that never verifies)."""
    source = write_snapshot(tmp_path / "leader", kv(SMALL), index=30, term=4)
    size = source.stat().st_size
    receiver = SnapshotReceiver.create(tmp_path / "follower")
    receiver.write_chunk(0, read_raw_chunk(source, 0, 40))
    real_write, real_pwrite = os.write, os.pwrite

    def half_then_full(fd: int, data: bytes, *offset: int) -> int:
        monkeypatch.undo()
        half = bytes(data[: len(data) // 2])
        real_pwrite(fd, half, *offset) if offset else real_write(fd, half)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_full)
    monkeypatch.setattr(os, "pwrite", half_then_full)
    with pytest.raises(OSError, match="No space"):
        receiver.write_chunk(40, read_raw_chunk(source, 40, 60))
    assert receiver.received_bytes == 40
    receiver.write_chunk(40, read_raw_chunk(source, 40, size))
    installed = receiver.finish(CLUSTER, expected=(30, 4))
    assert installed.path.read_bytes() == source.read_bytes()
