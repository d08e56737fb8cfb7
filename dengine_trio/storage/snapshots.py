"""Snapshot files: a state machine image as of a log index, written atomically, read in chunks.

Not wired into the node yet (issue 13): this module is the storage half of log compaction and
InstallSnapshot. Nothing here knows what the image means; the state machine writes and reads
the payload (``dengine_trio.statemachine``).

File format
===========

A snapshot lives in ``snapshots_dir`` as ``snapshot-<last index, 20 digits>-<last term, 20
digits>.snap``. All integers are little-endian::

    magic b"DTSN"                 4 bytes
    format version                u32   (FORMAT_VERSION = 2; 1 is still read)
    header length H               u32
    header                        H bytes: msgpack map, see below
    header CRC32                  u32   of every byte before it (magic .. header)
    payload                       any length: the state machine's image
    trailer magic b"DTSE"         4 bytes
    payload length                u64
    file CRC32                    u32   of every byte before it (the whole file but these 4)

The header map has ``"last_index"`` (int), ``"last_term"`` (int), ``"cluster_id"`` (str; ""
from a node that did not know its cluster's id yet, which any reader accepts as its own; in
version 1 files the configuration's id, which a cluster whose id was generated from it,
``<that id>-<suffix>``, accepts as its own),
``"membership"``: ``{"voters": [[id, address], ...]}``, the voters as of ``last_index`` (what
the configuration listed; kept for display), and since version 2 ``"config"``: the
membership in effect at ``last_index`` as ``raft.membership.encode_membership`` bytes (its
members, learners, uuid bindings and cluster id: what a node restarting from the snapshot, or
a follower installing it, adopts), or nil for a snapshot with no explicit membership (taken
before the cluster's first configuration entry; the node then uses the implicit membership of
its configuration). Version 1 files (before issue 14) have no ``"config"`` and are read with
``membership`` None: they were all written by clusters whose membership was the
configuration's. The version was bumped because an older reader, which ignores unknown keys,
would restore a snapshot without its membership.

The map can grow: a reader ignores keys it does not know, so an addition that older readers
may safely ignore keeps the version; anything an older reader must not misread bumps
``FORMAT_VERSION``, and readers refuse a version they do not know. The magic and version
fields stay where they are in every version.

The header has its own CRC so that a file's identity (index, term, cluster) can be trusted
before its payload has been read; the trailing CRC covers everything, so one pass over the file
verifies all of it. The payload length is known only at the end of a streamed write, hence the
trailer; it must match the file's size, which catches a truncation at any offset.

Checksum: CRC32 (``zlib.crc32``), as the write-ahead log and the hard state use. It is in the
standard library, runs at ~3.9 GB/s here (sha256: ~1.3 GB/s, blake2b: ~0.7 GB/s; 64 MiB of
random bytes, ``hashlib``/``zlib`` of this Python), and releases the GIL on large buffers. It
detects every burst error up to 32 bits and misses a random multi-byte corruption with
probability 2**-32: it guards against damage, not against an adversary (a foreign file is
recognised by its cluster id, not by its checksum). CRC32C is not in the standard library.

Atomicity
=========

``SnapshotWriter`` and ``SnapshotReceiver`` write to a temporary file in ``snapshots_dir``
(``.snapshot-*.tmp``, a unique name), then fsync it, rename it to its final name and fsync the
directory. A crash before the rename leaves only a temporary file, which
``remove_stale_temporaries`` deletes at startup; the snapshots already there are untouched.

Choosing the snapshot to restore
================================

``find_newest_valid`` verifies candidates newest first and returns the first valid one together
with the newer ones it had to reject (each logged with one line naming the file). Whether an
older snapshot may be used when a newer one is damaged is the caller's decision: only if the log
still holds every entry after the older snapshot's index (otherwise committed entries between
the two would be lost), so the storage layer reports and lets it decide.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import tempfile
import zlib
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import attrs
import msgpack

from ..raft.membership import decode_membership
from ..statemachine import SnapshotImage, StateMachine
from ._fs import fsync_directory, pwrite_all, write_all
from .errors import StorageError

logger = logging.getLogger("dengine_trio.storage")

FORMAT_VERSION = 2
"""The version every file is written in."""
READABLE_VERSIONS = (1, 2)
"""Versions a reader accepts (module docstring: what version 1 lacks)."""
DEFAULT_CHUNK_BYTES = 1 << 20
"""Default write buffer and read chunk: 1 MiB."""
MAX_HEADER_BYTES = 1 << 20
"""A header longer than this is damage (a membership of thousands of members is ~100 KiB)."""

SNAPSHOT_SUFFIX = ".snap"
TEMPORARY_PREFIX = ".snapshot-"
TEMPORARY_SUFFIX = ".tmp"
_HEX = re.compile(r"[0-9a-f]+")
_NAME = re.compile(r"snapshot-(\d{20})-(\d{20})" + re.escape(SNAPSHOT_SUFFIX))

_MAGIC = b"DTSN"
_TRAILER_MAGIC = b"DTSE"
_PREFIX = struct.Struct("<4sII")  # magic, version, header length
_CRC = struct.Struct("<I")
_TRAILER = struct.Struct("<4sQI")  # magic, payload length, file CRC32
_TRAILER_BODY = struct.Struct("<4sQ")


class SnapshotError(StorageError):
    """A snapshot file that must not be applied. ``str()`` is one line naming the file."""

    def __init__(self, path: str | Path, problem: str) -> None:
        super().__init__(f"snapshot {path}: {problem}")
        self.path = Path(path)
        self.problem = problem


class CorruptSnapshotError(SnapshotError):
    """Damaged: not a snapshot file, truncated, a checksum mismatch, an undecodable header."""


class UnsupportedSnapshotVersionError(SnapshotError):
    """Written in a format version this code does not know."""


class ForeignSnapshotError(SnapshotError):
    """Intact, but of another cluster (its cluster id is not the expected one)."""


class SnapshotChunkError(SnapshotError):
    """A streamed chunk that does not fit (wrong offset): the transfer must restart."""


def _sorted_members(voters: Mapping[int, str]) -> dict[int, str]:
    return dict(sorted(voters.items()))


def _optional_membership(value: bytes | None) -> bytes | None:
    """None or non-empty bytes; b"" (how ``InstallSnapshot``/``RestoreSnapshot`` say "none
    explicit") becomes None."""
    if value is not None and type(value) is not bytes:
        raise TypeError(f"membership must be bytes or None, not {type(value).__name__}")
    return value or None


@attrs.frozen(slots=True)
class SnapshotHeader:
    """What a snapshot covers: the log up to ``last_index`` (whose entry had ``last_term``),
    applied; ``voters`` (``{node id: raft address}``) the voters as of ``last_index`` as the
    configuration lists them (display); ``membership`` the membership in effect at
    ``last_index`` (``encode_membership`` bytes; None or b"": none explicit, the node uses
    the implicit one of its configuration); ``cluster_id`` the cluster the file belongs to.
    Raises ``TypeError`` for a membership that is not bytes."""

    last_index: int
    last_term: int
    cluster_id: str
    voters: Mapping[int, str] = attrs.field(converter=_sorted_members)
    membership: bytes | None = attrs.field(
        default=None, kw_only=True, converter=_optional_membership
    )

    def encode(self) -> bytes:
        """The header's msgpack map in the current ``FORMAT_VERSION``, as the file format
        above lays it out (``decode`` reads it back)."""
        return msgpack.packb(
            {
                "last_index": self.last_index,
                "last_term": self.last_term,
                "cluster_id": self.cluster_id,
                "membership": {"voters": [[i, a] for i, a in self.voters.items()]},
                "config": self.membership,
            }
        )

    @classmethod
    def decode(cls, raw: bytes, version: int = FORMAT_VERSION) -> SnapshotHeader:
        """Read a header of format ``version``. Raise ``ValueError`` (or a msgpack error,
        ``TypeError``, ``KeyError``) when ``raw`` is not a valid header: a missing or
        mistyped field, impossible index/term, a membership that does not decode
        (``raft.membership.decode_membership``: a CRC-valid header holding one is a bug or a
        hand-made file, never to be adopted)."""
        fields = msgpack.unpackb(raw)
        if not isinstance(fields, dict):
            raise ValueError("header is not a map")
        last_index = fields["last_index"]
        last_term = fields["last_term"]
        cluster_id = fields["cluster_id"]
        voters = fields["membership"]["voters"]
        if not (isinstance(last_index, int) and isinstance(last_term, int)):
            raise ValueError("last_index/last_term are not integers")
        if last_index < 0 or last_term < 0 or (last_index == 0) != (last_term == 0):
            raise ValueError(f"impossible last index/term {last_index}/{last_term}")
        if not isinstance(cluster_id, str):
            raise ValueError("cluster_id is not a string")
        members: dict[int, str] = {}
        for member in voters:
            node_id, address = member
            if not isinstance(node_id, int) or not isinstance(address, str):
                raise ValueError(f"bad voter {member!r}")
            members[node_id] = address
        membership = None
        if version >= 2:
            membership = fields["config"]
            if membership is not None:
                if type(membership) is not bytes:
                    raise ValueError("config is not bytes")
                decode_membership(membership)
        return cls(last_index, last_term, cluster_id, members, membership=membership)


@attrs.frozen(slots=True)
class SnapshotFile:
    """A snapshot file found in ``snapshots_dir``. ``header`` is None when only the name was
    read (``list_snapshots``); verification fills it."""

    path: Path
    last_index: int
    last_term: int
    header: SnapshotHeader | None = None
    size_bytes: int = 0
    payload_bytes: int = 0


def snapshot_name(last_index: int, last_term: int) -> str:
    """File name of the snapshot covering the log up to ``last_index`` (term ``last_term``)."""
    return f"snapshot-{last_index:020d}-{last_term:020d}{SNAPSHOT_SUFFIX}"


def list_snapshots(directory: str | Path) -> list[SnapshotFile]:
    """Snapshot files in ``directory`` by name, newest (highest index, then term) first.

    Nothing is read or verified; temporary files and other names are ignored. A missing
    directory has no snapshots.
    """
    found = []
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    for name in names:
        match = _NAME.fullmatch(name)
        if match:
            index, term = int(match[1]), int(match[2])
            found.append(SnapshotFile(Path(directory) / name, index, term))
    found.sort(key=lambda s: (s.last_index, s.last_term), reverse=True)
    return found


def _same_cluster(written: str, version: int, expected: str) -> bool:
    """Whether a file whose header names cluster ``written`` (format ``version``) belongs to
    cluster ``expected``: the same id; "" (written by a node that did not know its cluster's
    id yet, an implicit membership: its own file, taken before the id reached it); or, for a
    version 1 file, the configuration id it was written under when a cluster's id is now
    generated from it (``<that id>-<hex digits>``, issue 14; ``runtime/node.py``), so a
    directory from before then restarts from its snapshot, and its leader can send it, once
    the node has persisted the generated id. A restored cluster's id (``<that id>-r<hex>``,
    ``cluster_identity.restored_cluster_id``) accepts no such file: it starts from the backup
    alone."""
    if written == expected or not written:
        return True
    prefix = written + "-"
    return (
        version == 1
        and expected.startswith(prefix)
        and _HEX.fullmatch(expected[len(prefix) :]) is not None
    )


class SnapshotReader:
    """Reads one snapshot file's payload in chunks, verifying as it goes.

    ``open`` checks the prefix, the header (its CRC, decoding, cluster id), the trailer and
    that the payload length fits the file size; ``read`` returns payload bytes and, when it
    reaches the end of the payload, checks the file CRC before returning ``b""``: a reader
    that reads to the end never sees end-of-file on a damaged file, it gets
    ``CorruptSnapshotError`` instead. A state machine's ``restore`` must therefore read to
    the end (``b""``) before it commits what it read. Memory: one ``read`` request at a time.

    Raises ``CorruptSnapshotError``, ``UnsupportedSnapshotVersionError``,
    ``ForeignSnapshotError`` (``cluster_id`` given and the file of another cluster: see
    ``_same_cluster`` for the ids that count as the same), ``OSError`` from the disk.
    """

    def __init__(self, path: Path, fd: int, header: SnapshotHeader, start: int, end: int) -> None:
        self.path = path
        self.header = header
        self._fd = fd
        self._start = start  # file offset of the first payload byte
        self._position = start  # next payload byte to read (file offset)
        self._end = end  # file offset of the trailer
        self._crc = 0
        self._verified = False

    @classmethod
    def open(cls, path: str | Path, cluster_id: str | None = None) -> SnapshotReader:
        """Open ``path``; ``cluster_id`` None skips the cluster check (a backup tool)."""
        path = Path(path)
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            reader = cls._open_fd(path, fd, cluster_id)
        except BaseException:
            os.close(fd)
            raise
        return reader

    @classmethod
    def _open_fd(cls, path: Path, fd: int, cluster_id: str | None) -> SnapshotReader:
        size = os.fstat(fd).st_size
        prefix = os.pread(fd, _PREFIX.size, 0)
        if len(prefix) < _PREFIX.size:
            raise CorruptSnapshotError(path, f"truncated: {size} bytes, no complete file header")
        magic, version, header_length = _PREFIX.unpack(prefix)
        if magic != _MAGIC:
            raise CorruptSnapshotError(path, f"not a snapshot file (magic {magic!r})")
        if version not in READABLE_VERSIONS:
            raise UnsupportedSnapshotVersionError(
                path,
                f"format version {version}, this version of dengine-trio reads only "
                f"{', '.join(map(str, READABLE_VERSIONS))}",
            )
        if header_length > MAX_HEADER_BYTES:
            raise CorruptSnapshotError(path, f"header length {header_length} is impossible")
        start = _PREFIX.size + header_length + _CRC.size
        if size < start + _TRAILER.size:
            raise CorruptSnapshotError(path, f"truncated: {size} bytes")
        raw = os.pread(fd, header_length + _CRC.size, _PREFIX.size)
        (header_crc,) = _CRC.unpack_from(raw, header_length)
        crc = zlib.crc32(raw[:header_length], zlib.crc32(prefix))
        if crc != header_crc:
            raise CorruptSnapshotError(path, "header checksum mismatch, the file is damaged")
        try:
            header = SnapshotHeader.decode(raw[:header_length], version)
        except (ValueError, TypeError, KeyError, IndexError, msgpack.UnpackException) as exc:
            raise CorruptSnapshotError(path, f"undecodable header ({exc})") from None
        if cluster_id is not None and not _same_cluster(header.cluster_id, version, cluster_id):
            raise ForeignSnapshotError(
                path,
                f"cluster id {header.cluster_id!r}, expected {cluster_id!r}: a snapshot "
                "of another cluster",
            )
        end = size - _TRAILER.size
        trailer_magic, payload_length, _ = _TRAILER.unpack(os.pread(fd, _TRAILER.size, end))
        if trailer_magic != _TRAILER_MAGIC or payload_length != end - start:
            raise CorruptSnapshotError(path, f"truncated or damaged at the end ({size} bytes)")
        reader = cls(path, fd, header, start, end)
        reader._crc = zlib.crc32(raw, zlib.crc32(prefix))
        return reader

    @property
    def payload_bytes(self) -> int:
        """Length of the payload in bytes."""
        return self._end - self._start

    @property
    def size_bytes(self) -> int:
        """Length of the whole file in bytes."""
        return self._end + _TRAILER.size

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` payload bytes (all the rest when negative); ``b""`` at the end, only
        once the file CRC has matched (``CorruptSnapshotError`` otherwise)."""
        if size == 0:
            return b""
        remaining = self._end - self._position
        if remaining == 0:
            self._verify_end()
            return b""
        if size < 0 or size > remaining:
            size = remaining
        data = os.pread(self._fd, size, self._position)
        if not data:
            raise CorruptSnapshotError(self.path, "the file shrank while it was read")
        self._position += len(data)
        self._crc = zlib.crc32(data, self._crc)
        return data

    def _verify_end(self) -> None:
        if self._verified:
            return
        raw = os.pread(self._fd, _TRAILER.size, self._end)
        (file_crc,) = _CRC.unpack_from(raw, _TRAILER_BODY.size)
        crc = zlib.crc32(raw[: _TRAILER_BODY.size], self._crc)
        if crc != file_crc:
            raise CorruptSnapshotError(self.path, "checksum mismatch, the file is damaged")
        self._verified = True

    def verify(self, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> None:
        """Read the rest of the payload and check the file CRC (``CorruptSnapshotError``)."""
        while self.read(chunk_bytes):
            pass

    def close(self) -> None:
        """Close the file. Idempotent; ``read`` after it raises ``OSError``."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> SnapshotReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def verify_snapshot(
    path: str | Path, cluster_id: str | None, chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> SnapshotFile:
    """Read all of ``path`` in ``chunk_bytes`` chunks and check it; return what it holds.

    Raises the ``SnapshotError`` subclasses of ``SnapshotReader`` (and ``OSError``). The name
    must agree with the header: a file renamed to claim another index is damage.
    """
    path = Path(path)
    with SnapshotReader.open(path, cluster_id) as reader:
        reader.verify(chunk_bytes)
        header = reader.header
        size, payload = reader.size_bytes, reader.payload_bytes
    match = _NAME.fullmatch(path.name)
    if match and (int(match[1]), int(match[2])) != (header.last_index, header.last_term):
        raise CorruptSnapshotError(
            path,
            f"the name says index {int(match[1])} term {int(match[2])}, the header "
            f"{header.last_index} term {header.last_term}",
        )
    return SnapshotFile(path, header.last_index, header.last_term, header, size, payload)


@attrs.frozen(slots=True)
class SnapshotScan:
    """Result of ``find_newest_valid``: the newest snapshot that verified (None if none did)
    and the newer files rejected on the way, newest first, each with its error."""

    valid: SnapshotFile | None
    rejected: list[tuple[SnapshotFile, SnapshotError]]


def find_newest_valid(
    directory: str | Path, cluster_id: str, chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> SnapshotScan:
    """Verify the snapshots of ``directory`` newest first, up to the first valid one.

    Each rejected file is logged as one warning line naming it and its problem. Using
    ``valid`` when ``rejected`` is not empty is safe only if the log holds every entry after
    ``valid.last_index``; the caller checks that (see the module docstring).
    """
    rejected: list[tuple[SnapshotFile, SnapshotError]] = []
    for candidate in list_snapshots(directory):
        try:
            return SnapshotScan(verify_snapshot(candidate.path, cluster_id, chunk_bytes), rejected)
        except SnapshotError as exc:
            logger.warning("%s; skipped", exc)
            rejected.append((candidate, exc))
    return SnapshotScan(None, rejected)


def _create_temporary(directory: Path) -> tuple[int, Path]:
    fd, name = tempfile.mkstemp(prefix=TEMPORARY_PREFIX, suffix=TEMPORARY_SUFFIX, dir=directory)
    return fd, Path(name)


def _install(fd: int, temporary: Path, final: Path) -> None:
    """fsync the temporary file, rename it to ``final``, fsync the directory."""
    os.fsync(fd)
    os.replace(temporary, final)
    fsync_directory(final.parent)


def _make_directory(directory: str | Path) -> Path:
    """``directory`` as a Path, created (and its parent fsynced) if missing."""
    directory = Path(directory)
    if not directory.is_dir():
        directory.mkdir(parents=True)
        fsync_directory(directory.parent)
    return directory


_Self = TypeVar("_Self", bound="_TemporarySnapshot")


class _TemporarySnapshot:
    """A snapshot file under way in a temporary file of ``directory``: what the writer and
    the receiver share. Leaving a ``with`` block without installing it removes it."""

    def __init__(self, directory: Path, fd: int, temporary: Path) -> None:
        self.directory = directory
        self._fd = fd
        self._temporary = temporary
        self._done = False

    def _close(self) -> None:
        """Mark done and close the file (it has been installed or removed)."""
        self._done = True
        os.close(self._fd)

    def abort(self) -> None:
        """Discard the snapshot under way (its temporary file). Idempotent."""
        if self._done:
            return
        self._close()
        try:
            os.unlink(self._temporary)
        except FileNotFoundError:
            pass

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.abort()


class SnapshotWriter(_TemporarySnapshot):
    """Writes one snapshot file in ``directory``: the header at ``create``, the payload through
    ``write`` (buffered up to ``chunk_bytes``), atomically installed by ``commit``.

    Usable as a context manager: leaving the block without ``commit`` (an exception, a
    cancellation) removes the temporary file and leaves the directory as it was. Memory: the
    buffer, at most ``chunk_bytes`` plus one ``write`` argument. Blocking (disk I/O): run it in
    a worker thread, not on the trio loop.
    """

    def __init__(
        self, directory: Path, header: SnapshotHeader, fd: int, temporary: Path, chunk_bytes: int
    ) -> None:
        super().__init__(directory, fd, temporary)
        self.header = header
        self._chunk_bytes = chunk_bytes
        self._buffer = bytearray()
        self._crc = 0
        self._payload_bytes = 0

    @classmethod
    def create(
        cls,
        directory: str | Path,
        header: SnapshotHeader,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    ) -> SnapshotWriter:
        """Start a snapshot in ``directory`` (created if missing): a temporary file holding
        the prefix and ``header``. ``chunk_bytes``: the write buffer, bytes. Raises
        ``ValueError`` for a header over ``MAX_HEADER_BYTES``, ``OSError`` from the disk."""
        directory = _make_directory(directory)
        encoded = header.encode()
        if len(encoded) > MAX_HEADER_BYTES:
            raise ValueError(f"snapshot header of {len(encoded)} bytes exceeds {MAX_HEADER_BYTES}")
        fd, temporary = _create_temporary(directory)
        writer = cls(directory, header, fd, temporary, max(1, chunk_bytes))
        try:
            start = _PREFIX.pack(_MAGIC, FORMAT_VERSION, len(encoded)) + encoded
            writer._emit(start + _CRC.pack(zlib.crc32(start)))
        except BaseException:
            writer.abort()
            raise
        return writer

    def _emit(self, data: bytes | bytearray | memoryview) -> None:
        self._crc = zlib.crc32(data, self._crc)
        write_all(self._fd, data)

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append payload bytes; returns ``len(data)`` (a file-like ``write``). Raises
        ``ValueError`` after ``commit`` or ``abort``, ``OSError`` from the disk."""
        if self._done:
            raise ValueError("snapshot writer is closed")
        self._payload_bytes += len(data)
        if not self._buffer and len(data) >= self._chunk_bytes:
            self._emit(data)  # a large write goes straight to the file, not through a copy
            return len(data)
        self._buffer += data
        if len(self._buffer) >= self._chunk_bytes:
            self._flush()
        return len(data)

    def _flush(self) -> None:
        if self._buffer:
            self._emit(self._buffer)
            self._buffer = bytearray()

    def commit(self) -> SnapshotFile:
        """Write the trailer, fsync, rename to the final name, fsync the directory; return
        the installed file. Raises ``ValueError`` if already closed; on ``OSError`` the
        temporary file is removed and nothing is installed."""
        if self._done:
            raise ValueError("snapshot writer is closed")
        try:
            self._flush()
            trailer = _TRAILER_BODY.pack(_TRAILER_MAGIC, self._payload_bytes)
            self._emit(trailer + _CRC.pack(zlib.crc32(trailer, self._crc)))
            final = self.directory / snapshot_name(self.header.last_index, self.header.last_term)
            _install(self._fd, self._temporary, final)
            size = os.fstat(self._fd).st_size
        except BaseException:
            self.abort()
            raise
        self._close()
        return SnapshotFile(
            final,
            self.header.last_index,
            self.header.last_term,
            self.header,
            size,
            self._payload_bytes,
        )


def read_raw_chunk(path: str | Path, offset: int, size: int) -> bytes:
    """Up to ``size`` bytes of the file at ``offset`` (``b""`` past its end): what a leader
    sends of a snapshot file in one InstallSnapshot chunk (Raft paper section 7, Figure 13),
    verbatim. Raises ``OSError``."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.pread(fd, size, offset)
    finally:
        os.close(fd)


class SnapshotReceiver(_TemporarySnapshot):
    """Receives a snapshot file as raw chunks (InstallSnapshot on a follower) into a temporary
    file in ``directory``; ``finish`` verifies it and installs it atomically.

    Chunks must come in order: ``write_chunk`` with an offset other than the bytes received so
    far raises ``SnapshotChunkError`` (the caller drops the transfer; ``abort`` then removes the
    temporary file). To resume after a dropped connection instead, keep the receiver and ask
    the sender to continue at ``received_bytes`` (same snapshot: ``finish`` checks its index
    and term against ``expected``). A crash at any point leaves only a temporary file
    (``remove_stale_temporaries``), never a partial snapshot under a final name. Memory: one
    chunk. Blocking: run it in a worker thread.
    """

    def __init__(self, directory: Path, fd: int, temporary: Path) -> None:
        super().__init__(directory, fd, temporary)
        self.received_bytes = 0

    @classmethod
    def create(cls, directory: str | Path) -> SnapshotReceiver:
        """Start receiving into a new temporary file in ``directory`` (created if missing).
        Raises ``OSError``."""
        directory = _make_directory(directory)
        fd, temporary = _create_temporary(directory)
        return cls(directory, fd, temporary)

    def write_chunk(self, offset: int, data: bytes) -> None:
        """Append ``data``, which must start at byte ``offset`` of the snapshot file (the
        bytes received so far): else ``SnapshotChunkError``. ``ValueError`` once finished or
        aborted; ``OSError`` from the disk. Not fsynced until ``finish``.

        Written at ``offset`` itself (``pwrite``): a write that fails part way leaves
        ``received_bytes`` where it was, and the chunk sent again at that offset (a resume)
        overwrites the partial bytes instead of following them."""
        if self._done:
            raise ValueError("snapshot receiver is closed")
        if offset != self.received_bytes:
            raise SnapshotChunkError(
                self._temporary, f"chunk at offset {offset}, expected {self.received_bytes}"
            )
        pwrite_all(self._fd, data, offset)
        self.received_bytes += len(data)

    def finish(
        self,
        cluster_id: str | None,
        expected: tuple[int, int] | None = None,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    ) -> SnapshotFile:
        """Verify the whole file, and that it covers ``expected`` (last index, last term: what
        the sender announced) when given; then install it under its final name.
        ``cluster_id`` None accepts a file of any cluster (a node that has no cluster id yet:
        a joining node, which learns it from the snapshot's membership).

        A bad file raises ``SnapshotError`` naming it, and the temporary file is removed.
        Returns the installed file.
        """
        if self._done:
            raise ValueError("snapshot receiver is closed")
        try:
            # Bytes past ``received_bytes`` can only be what a failed write left.
            os.ftruncate(self._fd, self.received_bytes)
            os.fsync(self._fd)
            verified = verify_snapshot(self._temporary, cluster_id, chunk_bytes)
            got = (verified.last_index, verified.last_term)
            if expected is not None and got != expected:
                raise CorruptSnapshotError(
                    self._temporary,
                    f"holds index {got[0]} term {got[1]}, the sender announced "
                    f"index {expected[0]} term {expected[1]}",
                )
            final = self.directory / snapshot_name(verified.last_index, verified.last_term)
            os.replace(self._temporary, final)
            fsync_directory(self.directory)
        except BaseException:
            self.abort()
            raise
        self._close()
        return attrs.evolve(verified, path=final)


def remove_old_snapshots(
    directory: str | Path, keep: int, verified: Collection[Path] | None = None
) -> list[Path]:
    """Delete old snapshot files; return the removed paths.

    With ``verified`` (the paths of snapshots this node wrote or installed and verified,
    what a running node should always pass): keeps the ``keep`` (>= 1) newest of those still
    on disk, and deletes every other snapshot file named older than the oldest kept one
    (verified or not: older than what the node can restart from). A file not in
    ``verified`` named newer (planted by hand, another cluster's, damaged) is left alone and
    never counts among the kept, so it cannot cost the node a valid snapshot; the next
    ``Storage.open`` moves it aside if it fails verification. With none of ``verified`` on
    disk nothing is deleted.

    Without ``verified``: keeps the ``keep`` newest BY NAME, unverified (a file named newer
    that is not a valid snapshot of this cluster then costs a valid one: tools only).
    Temporary files are left alone (one may be in progress). Raises ``ValueError`` for
    ``keep`` < 1, ``OSError`` from the disk.
    """
    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")
    found = list_snapshots(directory)
    if verified is None:
        doomed = found[keep:]
    else:
        known = set(verified)
        kept = [f for f in found if f.path in known][:keep]
        if not kept:
            return []
        oldest = (kept[-1].last_index, kept[-1].last_term)
        doomed = [f for f in found if (f.last_index, f.last_term) < oldest]
    removed = []
    for old in doomed:
        try:
            os.unlink(old.path)
        except FileNotFoundError:
            continue
        removed.append(old.path)
    if removed:
        fsync_directory(Path(directory))
    return removed


REJECTED_SUFFIX = ".rejected"
"""Appended to the name of a snapshot file found unusable here (``move_aside``)."""


def move_aside(paths: Sequence[Path]) -> list[Path]:
    """Rename each of ``paths`` (snapshot files that failed verification: damaged, another
    cluster's, an unknown version) to ``<name>.rejected`` in its directory, then fsync the
    directories; return the new paths. Files left under their snapshot names would count,
    by name, among the newest snapshots kept by ``remove_old_snapshots`` and as cover for
    ``Storage.compact``, and so could cost the node its valid snapshots. Renamed, not
    deleted: the operator may want to look at them. Raises ``OSError``."""
    moved = []
    for path in paths:
        target = path.with_name(path.name + REJECTED_SUFFIX)
        os.replace(path, target)
        moved.append(target)
    for directory in {p.parent for p in moved}:
        fsync_directory(directory)
    return moved


def remove_stale_temporaries(directory: str | Path) -> list[Path]:
    """Delete the temporary files of interrupted writes and receives; call it at startup,
    before any writer or receiver of this process runs. Returns their paths (none for a
    missing ``directory``); raises ``OSError``."""
    removed = []
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    for name in names:
        if name.startswith(TEMPORARY_PREFIX) and name.endswith(TEMPORARY_SUFFIX):
            os.unlink(Path(directory) / name)
            removed.append(Path(directory) / name)
    if removed:
        fsync_directory(Path(directory))
    return removed


def write_snapshot(
    directory: str | Path,
    header: SnapshotHeader,
    image: SnapshotImage,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> SnapshotFile:
    """Write ``image`` (what ``StateMachine.snapshot()`` returned) as the snapshot ``header``
    describes, and install it atomically. Blocking: run it in a worker thread.

    If ``image`` raises, nothing is left behind and the exception propagates. Raises
    ``ValueError`` (header too large) and ``OSError`` as ``SnapshotWriter`` does.
    """
    with SnapshotWriter.create(directory, header, chunk_bytes) as writer:
        image(writer)
        return writer.commit()


def restore_snapshot(
    path: str | Path,
    cluster_id: str | None,
    state_machine: StateMachine,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> SnapshotHeader:
    """Verify ``path`` completely, then restore ``state_machine`` from it; return its header.
    ``cluster_id`` None accepts a file of any cluster (a node that knows no id yet).

    Two passes: the first checks the whole file before the state machine sees a byte (so even
    a ``restore`` that changes its state before reading to the end never sees a damaged
    file), the second streams it to ``restore`` and verifies again as it goes (the file could
    have changed in between). Raises ``SnapshotError`` naming the file, the state machine's
    ``SnapshotImageError``, ``OSError``. Blocking: run it in a worker thread, with no
    ``apply`` running meanwhile.
    """
    verify_snapshot(path, cluster_id, chunk_bytes)
    with SnapshotReader.open(path, cluster_id) as reader:
        state_machine.restore(reader)
        # A restore that stopped before the end has not seen the CRC checked; check it now.
        reader.verify(chunk_bytes)
        return reader.header
