"""The write-ahead log: Raft entries appended to segment files, verified on recovery.

The on-disk format and the recovery rules are described in ``dengine_trio/storage/__init__.py``.

Threading: ``append`` runs on the trio thread, ``sync`` in a worker thread, possibly at the same
time (group commit). Everything that reads or changes the set of segments, the current file
descriptor or the last entry happens under ``_lock``; ``sync`` only holds it to note what it is
about to cover, never while it waits for the disk. File descriptors retired while a sync is in
flight are closed by that sync, so it never fsyncs a descriptor that was closed (or reused)
under it.

Torn tail or corruption: the synced-position marker
---------------------------------------------------
Recovery must tell a write interrupted by a crash (cut it away) from damage to records that
were durable (refuse to start). Bytes found after a bad record cannot decide it: a value may
embed a perfectly framed record, and the page cache writes the pages of unsynced appends back
in any order, so an intact-looking record after a bad one is what a torn write looks like
too. What decides it is whether the damage lies in the part of the log that an fsync had
covered. ``wal/synced`` (``SYNCED_MARKER``) records it: after every successful ``sync`` the
segment and byte offset it covered are written there with ``pwrite`` and no fsync of their
own. The marker is therefore a LOWER bound of what is durable: it is written only after the
fsync it describes returned, and a power loss can only leave an older value. A truncation
lowers it and fsyncs it before cutting, and recovery rewrites and fsyncs it, so it never
names bytes that are not durable. Consequences:

* damage at or past the marker is a torn tail, whatever follows it (never refused);
* damage before it, or a segment ending before it, is corruption of durable data
  (``CorruptLogError``);
* the only blind spot is damage to records fsynced after the marker's last write-back
  (after a power loss: at most the kernel's dirty write-back delay, ~30 s); those are cut as
  a torn tail, as a damaged last record always was before the marker existed. A missing or
  unreadable marker (a log from an older version) means "nothing known to be synced".
"""

from __future__ import annotations

import logging
import os
import re
import struct
import threading
import zlib
from array import array
from collections.abc import Sequence
from pathlib import Path

import attrs
import msgpack

from ..raft.messages import Entry, EntryKind
from ._fs import fsync_directory, write_all
from .errors import CorruptLogError, StorageError

logger = logging.getLogger("dengine_trio.storage")

DEFAULT_SEGMENT_BYTES = 4 * 1024 * 1024
"""4 MiB: small enough that compaction can drop what a snapshot covers and that the covered
part still on disk costs little at restart (recovery reads ~70-80 MiB/s), large enough that a
segment roll (an fsync, a directory fsync) comes once per ~14,000 entries of 300 bytes. The
reasoning and the measurement are in the package docstring, "Segment size"."""
SEGMENT_SUFFIX = ".wal"
SEGMENT_NAME_DIGITS = 20  # wide enough for any unsigned 64-bit index

RECORD_HEADER = struct.Struct("<II")
"""Record header: payload length in bytes, then CRC32 (``zlib.crc32``) of the payload."""

# The smallest payload msgpack can produce for an entry ([0, 0, 0, b""]); a shorter length
# can only be damage (a run of zero bytes reads as length 0 with a matching CRC of 0).
MIN_PAYLOAD_BYTES = 6

SYNCED_MARKER = "synced"
"""Name of the synced-position marker file in the log directory."""
SYNCED_FORMAT = struct.Struct("<4sIQQ")
"""Marker: magic ``b"DTSP"``, version 1 (u32), first index of the segment (u64), bytes of that
segment covered by an fsync (u64); then CRC32 of those 24 bytes (u32)."""
_SYNCED_MAGIC = b"DTSP"
_SYNCED_VERSION = 1
_SYNCED_BYTES = SYNCED_FORMAT.size + 4

_SEGMENT_NAME = re.compile(rf"(\d{{{SEGMENT_NAME_DIGITS}}}){re.escape(SEGMENT_SUFFIX)}")
_OPEN_FOR_APPEND = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC


def segment_name(first_index: int) -> str:
    """File name of the segment whose first record holds entry ``first_index``."""
    return f"{first_index:0{SEGMENT_NAME_DIGITS}d}{SEGMENT_SUFFIX}"


@attrs.define
class _Segment:
    first_index: int
    path: Path
    offsets: array  # byte offset of each record in the file, one per entry
    size_bytes: int

    @property
    def last_index(self) -> int:
        return self.first_index + len(self.offsets) - 1


class WriteAheadLog:
    """Append-only log of ``Entry`` records in one directory of segment files.

    Use ``WriteAheadLog.open``; the constructor is internal.
    """

    def __init__(
        self,
        directory: Path,
        segments: list[_Segment],
        last: tuple[int, int],
        segment_bytes: int,
        marker_fd: int,
        synced: tuple[int, int],
    ) -> None:
        self._directory = directory
        self._marker_fd = marker_fd
        # What the marker file holds: (first index of a segment, bytes of it fsynced).
        self._synced = synced
        self._segments = segments
        self._segment_bytes = segment_bytes
        self._last = last  # (index, term) of the last entry written, (0, 0) when empty
        self._fd: int | None = None
        self._lock = threading.Lock()
        self._sync_mutex = threading.Lock()  # one sync at a time; close waits for it
        self._compact_mutex = threading.Lock()  # one compaction at a time; reset, close wait
        self._sync_in_flight = False
        self._retired_fds: list[int] = []
        self._dir_dirty = False
        # Bumped by whatever lowers the marker (truncation, reset, compaction): a sync in
        # flight then neither writes the position it noted nor returns what it covered.
        self._truncations = 0
        self._failure: BaseException | None = None
        self._closed = False
        self._packer = msgpack.Packer()

    # -- recovery -------------------------------------------------------------------------

    @classmethod
    def open(
        cls, directory: str | Path, segment_bytes: int = DEFAULT_SEGMENT_BYTES
    ) -> tuple[WriteAheadLog, list[Entry]]:
        """Open (creating if needed) the log in ``directory`` and recover its entries.

        Returns the log, ready to append after its last entry, and every entry it holds in
        index order. Damage at or after the synced position (``wal/synced``, see the module
        docstring) is a torn tail: logged and truncated away. Damage before it, a segment that
        ends before it, and damage anywhere in a segment that is not the last raise
        ``CorruptLogError``. What is returned is durable, and the marker is set to its end.
        ``segment_bytes`` (bytes) must be positive (``ValueError``); ``OSError`` from the disk.
        """
        if segment_bytes <= 0:
            raise ValueError(f"segment_bytes must be positive, got {segment_bytes}")
        directory = Path(directory)
        created = not directory.exists()
        directory.mkdir(parents=True, exist_ok=True)
        if created:
            fsync_directory(directory.parent)
        found = sorted(
            (int(match.group(1)), path)
            for path in directory.iterdir()
            if (match := _SEGMENT_NAME.fullmatch(path.name))
        )
        marker = _read_marker(directory / SYNCED_MARKER)
        if marker is None and found:
            logger.warning(
                "%s: no readable synced-position marker (%s); any damage in the last segment "
                "will be taken for a torn write",
                directory,
                SYNCED_MARKER,
            )
        if marker is not None and marker[1] > 0 and marker[0] not in {f for f, _ in found}:
            raise CorruptLogError(
                f"{directory}: {SYNCED_MARKER} says {marker[1]} bytes of segment "
                f"{segment_name(marker[0])} were fsynced, but that segment is missing"
            )
        segments: list[_Segment] = []
        entries: list[Entry] = []
        for position, (first_index, path) in enumerate(found):
            is_last = position == len(found) - 1
            if segments and first_index != segments[-1].last_index + 1:
                raise CorruptLogError(
                    f"{path}: segment starts at index {first_index} but the previous segment "
                    f"{segments[-1].path.name} ends at index {segments[-1].last_index}"
                )
            synced_bytes = marker[1] if marker is not None and marker[0] == first_index else 0
            segment = _recover_segment(path, first_index, is_last, entries, synced_bytes)
            if segment.offsets:
                segments.append(segment)
            elif is_last:
                # A roll that crashed before its first write, or a tail torn at offset 0: the
                # file holds nothing, and the next append recreates it under the right name.
                path.unlink()
            else:
                raise CorruptLogError(f"{path}: segment holds no records but is not the last")
        last = (entries[-1].index, entries[-1].term) if entries else (0, 0)
        fd: int | None = None
        if segments:
            fd = os.open(segments[-1].path, _OPEN_FOR_APPEND)
            # A crashed process may have left written-but-unsynced data in the page cache;
            # recovery hands it out as the log, so make it durable now.
            os.fsync(fd)
        synced = (segments[-1].first_index, segments[-1].size_bytes) if segments else (0, 0)
        try:
            marker_fd = os.open(
                directory / SYNCED_MARKER, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644
            )
            try:
                _write_marker(marker_fd, synced)
                os.fsync(marker_fd)
                fsync_directory(directory)
            except BaseException:
                os.close(marker_fd)
                raise
        except BaseException:
            if fd is not None:
                os.close(fd)
            raise
        wal = cls(directory, segments, last, segment_bytes, marker_fd, synced)
        wal._fd = fd
        return wal, entries

    # -- writing --------------------------------------------------------------------------

    @property
    def last_index(self) -> int:
        """Index of the last entry appended; when the log is empty, the index it was
        ``reset`` to (0 for a fresh log)."""
        return self._last[0]

    @property
    def first_index(self) -> int:
        """Index of the first entry held, 0 when the log is empty."""
        segments = self._segments
        return segments[0].first_index if segments and self._last[0] else 0

    def append(self, entries: Sequence[Entry]) -> None:
        """Write ``entries`` (contiguous indexes) after truncating the log from the first one.

        Not durable until ``sync``. One encode and one ``os.write`` per call; truncation and
        the start of a new segment are the rare paths that also fsync. Raises ``ValueError``
        for entries that are not contiguous, would leave a gap after the last index, precede
        the first entry, or start below index 1; ``StorageError`` once closed or failed;
        ``OSError`` from the disk, after which the log takes no more writes.
        """
        if not entries:
            return
        first = entries[0].index
        payload, relative_offsets = self._encode(entries, first)
        with self._lock:
            self._check_usable()
            last_index = self._last[0]
            if self._segments:
                if first > last_index + 1:
                    raise ValueError(f"entry {first} would leave a gap after {last_index}")
                if first < self._segments[0].first_index:
                    raise ValueError(
                        f"entry {first} precedes the log's first entry "
                        f"{self._segments[0].first_index}"
                    )
            elif last_index and first != last_index + 1:
                # Empty after ``reset``: the log starts right after the snapshot it was reset to.
                raise ValueError(
                    f"the log was reset to start after index {last_index}; entry {first} "
                    f"is not {last_index + 1}"
                )
            elif first < 1:
                raise ValueError(f"entry indexes start at 1, got {first}")
            try:
                if first <= last_index:
                    self._truncate_from(first)
                if not self._segments or self._segments[-1].size_bytes >= self._segment_bytes:
                    self._start_segment(first)
                segment = self._segments[-1]
                assert self._fd is not None
                write_all(self._fd, payload)
            except BaseException as exc:
                # What reached the file is unknown now; recovery on restart sorts it out.
                self._failure = exc
                raise
            base = segment.size_bytes
            if base:
                segment.offsets.extend([base + offset for offset in relative_offsets])
            else:
                segment.offsets.extend(relative_offsets)
            segment.size_bytes = base + len(payload)
            self._last = (entries[-1].index, entries[-1].term)

    def compact(self, through_index: int) -> int:
        """Delete the segments whose entries all lie at or below ``through_index`` (a snapshot
        covers them), never the current (last) segment; return the new first index (0 when
        the log is empty). Segment granularity: up to a segment of covered entries stays.

        Oldest first, each removal made durable (directory fsync) before the next, so a crash
        at any point leaves a contiguous run of segments that recovery accepts: the log then
        starts at a later index, and the caller holds a snapshot covering what precedes it.
        If the synced-position marker names a segment to delete (the last sync covered it and
        the log rolled since), it is set to (0, 0) and fsynced first: a marker naming a
        missing segment would make recovery refuse the log.

        Meant for a worker thread while the owning thread appends: the segments leave the
        log under the lock, but the disk work (unlinks, fsyncs) runs outside it, so an
        ``append`` never waits for it. ``reset`` and ``close`` wait for a compaction under way.
        The caller must have made the snapshot durable first. Raises ``StorageError`` once
        closed or failed; ``OSError`` from the disk (the log then takes no more writes).
        """
        with self._compact_mutex:
            with self._lock:
                self._check_usable()
                segments = self._segments
                dropped: list[_Segment] = []
                while len(segments) > 1 and segments[0].last_index <= through_index:
                    dropped.append(segments.pop(0))
                first_index = self.first_index
                lower_marker = self._synced[1] > 0 and any(
                    s.first_index == self._synced[0] for s in dropped
                )
                if dropped:
                    # A sync in flight may have noted a dropped segment (before a roll): it
                    # must not write that position into the marker once the file is gone.
                    self._truncations += 1
                if lower_marker:
                    try:
                        self._set_marker((0, 0))
                    except BaseException as exc:
                        self._failure = exc
                        raise
            try:
                if lower_marker:
                    os.fsync(self._marker_fd)
                for segment in dropped:
                    segment.path.unlink()
                    fsync_directory(self._directory)
            except BaseException as exc:
                with self._lock:
                    self._failure = exc
                raise
            return first_index

    def reset(self, index: int, term: int) -> None:
        """Durably discard every entry: the log becomes empty and its next entry is
        ``index + 1`` (the entry after a snapshot through ``index``, whose entry had ``term``).

        Until the next append, ``last_index`` is ``index`` and ``sync`` returns
        ``(index, term)``; an append must start at ``index + 1`` (``ValueError`` otherwise).
        The order makes every crash point recoverable (see ``Storage.install_snapshot``):

        1. the synced-position marker is lowered to (0, 0) and fsynced, so it never names a
           segment that is gone;
        2. the segments are deleted NEWEST first, each removal made durable (directory fsync)
           before the next, so a crash leaves a prefix of the old log: contiguous, starting
           where it started, which recovery accepts;
        3. only then does the in-memory state change.

        A crash therefore leaves the old log, a prefix of it, or no segment at all. None of
        them holds an entry that contradicts a snapshot through ``index`` without recovery
        seeing it (``Storage.open`` compares the log with the snapshot), and none has a hole.

        Raises ``ValueError`` for an impossible (index, term) or when the log starts after
        ``index + 1`` (a crash mid-reset would leave a log starting after a gap);
        ``StorageError`` once closed or failed; ``OSError`` from the disk (the log then takes
        no more writes).
        """
        if index < 0 or term < 0 or (index == 0) != (term == 0):
            raise ValueError(f"impossible snapshot index/term {index}/{term}")
        # After a compaction's removals: a new segment index + 1 beside an old segment not yet
        # removed would read as a hole.
        with self._compact_mutex, self._lock:
            self._check_usable()
            segments = self._segments
            if segments and segments[0].first_index > index + 1:
                raise ValueError(
                    f"the log starts at index {segments[0].first_index}, after {index + 1}: "
                    "resetting it to an older snapshot is not possible"
                )
            # A sync in flight must neither return what it noted nor write its marker.
            self._truncations += 1
            try:
                if self._synced != (0, 0):
                    self._set_marker((0, 0))
                    os.fsync(self._marker_fd)
                if self._fd is not None:
                    self._retire(self._fd)
                    self._fd = None
                while segments:
                    dropped = segments.pop()
                    dropped.path.unlink()
                    fsync_directory(self._directory)
            except BaseException as exc:
                self._failure = exc
                raise
            self._dir_dirty = False
            self._last = (index, term)

    def _encode(self, entries: Sequence[Entry], first: int) -> tuple[bytes, array]:
        pack = self._packer.pack
        header = RECORD_HEADER.pack
        crc32 = zlib.crc32
        parts: list[bytes] = []
        offsets = array("Q")
        position = 0
        expected = first
        for entry in entries:
            if entry.index != expected:
                raise ValueError(f"entries are not contiguous: {entry.index} after {expected - 1}")
            expected += 1
            data = pack((entry.term, entry.index, entry.kind, entry.data))
            parts.append(header(len(data), crc32(data)))
            parts.append(data)
            offsets.append(position)
            position += RECORD_HEADER.size + len(data)
        return b"".join(parts), offsets

    def _start_segment(self, first_index: int) -> None:
        """Roll to a new segment. Called with ``_lock`` held."""
        if self._fd is not None:
            # The new file must never be durable while the old one's tail is not: recovery
            # would find a hole between them and, rightly, refuse the log.
            os.fsync(self._fd)
            self._retire(self._fd)
            self._fd = None
        path = self._directory / segment_name(first_index)
        self._fd = os.open(path, _OPEN_FOR_APPEND | os.O_CREAT | os.O_EXCL, 0o644)
        self._segments.append(_Segment(first_index, path, array("Q"), 0))
        self._dir_dirty = True

    def _truncate_from(self, index: int) -> None:
        """Drop entries ``index`` and later. Called with ``_lock`` held; rare, so it fsyncs."""
        self._truncations += 1
        segments = self._segments
        holder = next(s for s in reversed(segments) if s.first_index <= index)
        cut_point = (holder.first_index, holder.offsets[index - holder.first_index])
        if self._synced > cut_point:
            # Lowered durably BEFORE the cut: a marker naming bytes that are gone, or were
            # rewritten and not yet synced, would make recovery refuse a torn tail.
            self._set_marker(cut_point)
            os.fsync(self._marker_fd)
        removed = False
        while segments[-1].first_index > index:
            dropped = segments.pop()
            if self._fd is not None:
                self._retire(self._fd)
                self._fd = None
            dropped.path.unlink()
            removed = True
        if removed:
            # Removals first and durably: a cut segment followed by a stale later segment
            # would read as a hole in the log.
            fsync_directory(self._directory)
        segment = segments[-1]
        if self._fd is None:
            self._fd = os.open(segment.path, _OPEN_FOR_APPEND)
        keep = index - segment.first_index
        cut_at = segment.offsets[keep]
        os.ftruncate(self._fd, cut_at)
        os.fsync(self._fd)
        del segment.offsets[keep:]
        segment.size_bytes = cut_at

    def _set_marker(self, synced: tuple[int, int]) -> None:
        """Record ``synced`` in the marker file (no fsync). Called with ``_lock`` held."""
        _write_marker(self._marker_fd, synced)
        self._synced = synced

    def _retire(self, fd: int) -> None:
        """Close ``fd`` now, or after the sync in flight, which may be fsyncing it."""
        if self._sync_in_flight:
            self._retired_fds.append(fd)
        else:
            os.close(fd)

    # -- durability -----------------------------------------------------------------------

    def sync(self) -> tuple[int, int]:
        """Make everything appended so far durable; return the (index, term) it covers.

        Safe to call from a worker thread while the owning thread keeps appending: the result
        covers what was appended before the call and possibly more. An empty log returns
        the (index, term) it was ``reset`` to, (0, 0) when fresh.
        Raises ``StorageError`` when an fsync (or the marker's write) fails, and from then on
        on every call: after a failed fsync no later one can vouch for the dropped pages.
        """
        with self._sync_mutex:
            while True:
                with self._lock:
                    self._check_usable()
                    covered = self._last
                    fd = self._fd
                    noted = (
                        (self._segments[-1].first_index, self._segments[-1].size_bytes)
                        if self._segments
                        else None
                    )
                    done = False
                    dir_dirty = self._dir_dirty
                    self._dir_dirty = False
                    truncations = self._truncations
                    self._sync_in_flight = True
                try:
                    # Only the current segment can hold unsynced data: a roll fsyncs the
                    # segment it leaves.
                    if fd is not None:
                        os.fsync(fd)
                    if dir_dirty:
                        fsync_directory(self._directory)
                    done = True
                except OSError as exc:
                    # After a failed fsync the kernel may have dropped the dirty pages; no
                    # later fsync can vouch for them, so this log takes no more writes.
                    self._failure = exc
                    raise StorageError(f"fsync of the write-ahead log failed: {exc}") from exc
                finally:
                    with self._lock:
                        self._sync_in_flight = False
                        for retired in self._retired_fds:
                            os.close(retired)
                        self._retired_fds.clear()
                        truncated_meanwhile = self._truncations != truncations
                        if done and not truncated_meanwhile and noted and noted != self._synced:
                            # No fsync of its own: the marker only has to be a lower bound
                            # (see the module docstring), and a stale one is exactly that.
                            try:
                                self._set_marker(noted)
                            except OSError as exc:
                                self._failure = exc
                                raise StorageError(
                                    f"writing the synced-position marker failed: {exc}"
                                ) from exc
                # A truncation during the fsync may have cut away what ``covered`` names;
                # cover the log as it is now instead.
                if not truncated_meanwhile:
                    return covered

    def close(self) -> None:
        """Sync everything appended, then close the files. Idempotent."""
        if self._closed:
            return
        with self._compact_mutex:  # a compaction under way uses the marker's descriptor
            try:
                if self._failure is None:
                    self.sync()
                    # A graceful stop leaves an exact marker: recovery is strict about all of it.
                    os.fsync(self._marker_fd)
            finally:
                with self._sync_mutex, self._lock:
                    self._closed = True
                    if self._marker_fd >= 0:
                        os.close(self._marker_fd)
                        self._marker_fd = -1
                    if self._fd is not None:
                        os.close(self._fd)
                        self._fd = None
                    for retired in self._retired_fds:
                        os.close(retired)
                    self._retired_fds.clear()

    def _check_usable(self) -> None:
        if self._closed:
            raise StorageError(f"write-ahead log {self._directory} is closed")
        if self._failure is not None:
            raise StorageError(
                f"write-ahead log {self._directory} failed earlier ({self._failure!r}); "
                "restart the node to recover it"
            )


def _recover_segment(
    path: Path, first_index: int, is_last: bool, entries: list[Entry], synced_bytes: int
) -> _Segment:
    """Read and verify one segment, appending its entries to ``entries``.

    ``synced_bytes``: how much of this segment the marker says was fsynced (0: unknown). A bad
    record there is corruption; past it, in the last segment, it is where a torn write begins,
    and nothing after it (a value may hold framed records; pages of unsynced writes reach the
    disk in any order) is taken as evidence otherwise.
    """
    data = path.read_bytes()
    view = memoryview(data)
    offsets = array("Q")
    expected = first_index
    position = 0
    while position < len(data):
        end, problem = _frame_at(data, view, position)
        if problem is not None:
            if position < synced_bytes:
                raise CorruptLogError(
                    f"{path}: bad record at offset {position} ({problem}) in the synced part "
                    f"of the segment (fsynced up to offset {synced_bytes}, per "
                    f"{SYNCED_MARKER}); refusing to cut synced records"
                )
            if not is_last:
                raise CorruptLogError(
                    f"{path}: bad record at offset {position} ({problem}) in a segment that is "
                    "not the last"
                )
            logger.warning(
                "%s: torn write at offset %d (%s), past the synced position %d; truncating "
                "%d bytes",
                path,
                position,
                problem,
                synced_bytes,
                len(data) - position,
            )
            _truncate_file(path, position)
            break
        payload = view[position + RECORD_HEADER.size : end]
        try:
            entry = _decode(payload)
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            # The checksum matched, so this is not a torn write: the log was written wrong.
            raise CorruptLogError(
                f"{path}: record at offset {position} has a valid checksum but cannot be "
                f"decoded ({exc})"
            ) from exc
        if entry.index != expected:
            raise CorruptLogError(
                f"{path}: record at offset {position} holds index {entry.index}, "
                f"expected {expected}"
            )
        entries.append(entry)
        offsets.append(position)
        expected += 1
        position = end
    if position < synced_bytes:
        raise CorruptLogError(
            f"{path}: the segment ends at offset {position} but {synced_bytes} bytes of it were "
            f"fsynced (per {SYNCED_MARKER}); synced records are missing"
        )
    return _Segment(first_index, path, offsets, position)


def _frame_at(data: bytes, view: memoryview, position: int) -> tuple[int, str | None]:
    """Check the record framed at ``position``: (end offset, None) or (-1, what is wrong)."""
    available = len(data) - position
    if available < RECORD_HEADER.size:
        return -1, f"incomplete record header, {available} of {RECORD_HEADER.size} bytes"
    length, crc = RECORD_HEADER.unpack_from(data, position)
    if length < MIN_PAYLOAD_BYTES:
        return -1, f"impossible payload length {length}"
    start = position + RECORD_HEADER.size
    end = start + length
    if end > len(data):
        return -1, f"payload of {length} bytes runs past the end of the file"
    if zlib.crc32(view[start:end]) != crc:
        return -1, "checksum mismatch"
    return end, None


def _read_marker(path: Path) -> tuple[int, int] | None:
    """(first index of a segment, bytes of it fsynced) from the marker; None if absent or bad.

    A bad marker is not an error: it can only make recovery take damage for a torn write (the
    behaviour of a log that predates the marker), never refuse a torn write.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    if len(raw) != _SYNCED_BYTES:
        logger.warning("%s: %d bytes, expected %d; ignoring it", path, len(raw), _SYNCED_BYTES)
        return None
    magic, version, first_index, synced_bytes = SYNCED_FORMAT.unpack_from(raw)
    (crc,) = struct.unpack_from("<I", raw, SYNCED_FORMAT.size)
    if magic != _SYNCED_MAGIC or version != _SYNCED_VERSION or zlib.crc32(raw[:-4]) != crc:
        logger.warning("%s: bad magic, version or checksum; ignoring it", path)
        return None
    return first_index, synced_bytes


def _write_marker(fd: int, synced: tuple[int, int]) -> None:
    body = SYNCED_FORMAT.pack(_SYNCED_MAGIC, _SYNCED_VERSION, *synced)
    # One small pwrite at offset 0: within one sector, so it reaches the disk whole or not at
    # all on any device; the checksum catches the rest.
    os.pwrite(fd, body + struct.pack("<I", zlib.crc32(body)), 0)


def _decode(payload: memoryview) -> Entry:
    term, index, kind, data = msgpack.unpackb(payload)
    if not (isinstance(term, int) and isinstance(index, int) and isinstance(data, bytes)):
        raise TypeError("fields have the wrong types")
    return Entry(term=term, index=index, data=data, kind=EntryKind(kind))


def _truncate_file(path: Path, size_bytes: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.ftruncate(fd, size_bytes)
        os.fsync(fd)
    finally:
        os.close(fd)
