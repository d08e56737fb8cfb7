"""Durable state of one node: the write-ahead log of Raft entries and the hard state.

On-disk format
==============

Everything lives under ``db_root_dir``::

    <db_root_dir>/LOCK          flock(2) lock; holds the pid of the owning process
    <db_root_dir>/hard_state    current term and vote (28 bytes)
    <db_root_dir>/wal/<first index, 20 digits>.wal   write-ahead log segments
    <db_root_dir>/wal/synced    synced-position marker (28 bytes)
    <snapshots_dir>/snapshot-<last index>-<last term>.snap   snapshots (not used by the node
                                yet; format and atomicity in ``storage/snapshots.py``)

``LOCK``
    Held with ``flock(LOCK_EX | LOCK_NB)`` for as long as the node runs; a second process on
    the same directory fails with ``StorageLockedError``. The kernel releases it when the
    holder exits, so a crash leaves no stale lock.

``hard_state``
    Little-endian: magic ``b"DTHS"`` (4 bytes), format version ``1`` (u32), ``term`` (u64),
    ``voted_for`` (u64, 0 = no vote), CRC32 of the preceding 24 bytes (u32). Replaced
    atomically: written to ``hard_state.tmp``, fsynced, renamed over ``hard_state``, then the
    directory is fsynced. Missing file: a fresh node, term 0, no vote. A file of the wrong
    size, with a bad checksum, magic or version raises ``CorruptHardStateError``; it is never
    reset silently, since forgetting a vote could let this node vote twice in one term.

Write-ahead log segments (``wal/*.wal``)
    Each file is named by the index of its first entry, zero-padded to 20 digits (e.g.
    ``00000000000000000001.wal``), and holds records for consecutive indexes, with no file
    header. Each record is::

        u32 payload length in bytes (little-endian)
        u32 CRC32 (zlib.crc32) of the payload (little-endian)
        payload: msgpack array [term, index, kind, data]
                 (int, int, int: 0 = command, 1 = no-op, bin)

    Segments form one contiguous run of indexes: each segment starts at the index after the
    last one of its predecessor. The first need not start at 1: ``compact`` deletes the oldest
    segments once a snapshot covers them (oldest first, a directory fsync after each). A new
    segment is started when an append finds the current one at or past ``segment_bytes``
    (default 64 MiB), so a segment exceeds that size by at most one append batch. Before the
    new file is created the old one is fsynced, so only the last segment can ever hold data
    that is not durable.

    Truncation (an append whose first index is at or below the last index) first removes
    whole segments that start after that index (then fsyncs the directory), then cuts the
    segment holding it at that record's offset (``ftruncate`` + fsync), then writes. If the
    cut falls on the first record of a segment, the emptied file is kept and written to.

``wal/synced``
    Little-endian: magic ``b"DTSP"`` (4 bytes), format version ``1`` (u32), first index of a
    segment (u64), bytes of that segment covered by an fsync (u64), CRC32 of the preceding 24
    bytes (u32). Written in place (one ``pwrite`` at offset 0) after every successful sync,
    without an fsync of its own, so after a power loss it may be older than the log but never
    ahead of what is durable. A truncation that cuts below it lowers it and fsyncs it first;
    recovery and ``close`` leave it exact and fsynced. (0, 0): nothing synced.

Recovery
========

``Storage.open`` / ``WriteAheadLog.open`` read segments in index order and check every record:
framing (length at least 6 bytes and within the file), CRC32, a payload that decodes to an
entry, and the index: the first record of a segment must hold the index in the file name, and
each record the index after its predecessor's.

A record is bad when it is incomplete (short header or payload running past the end of the
file), has an impossible length or a checksum mismatch. Whether a bad record is a torn write or
corruption is decided by the synced position in ``wal/synced``, never by what follows it: a
value may embed well-framed records, and the pages of unsynced appends reach the disk in any
order, so intact-looking records after a bad one prove nothing.

* Torn tail: a bad record of the LAST segment at or past the synced position. It and
  everything after it is the remains of an interrupted write: a warning on the
  ``dengine_trio.storage`` logger names the file and offset, the file is truncated there
  (ftruncate + fsync) and recovery returns the entries before it.
* Anything else raises ``CorruptLogError`` naming the file, the offset and the damage: a bad
  record before the synced position (whatever follows it), a segment that ends before it, a
  marker naming a segment that is missing, a bad record in a segment that is not the last, a
  record whose CRC is valid but whose payload does not decode, an index out of sequence, a
  segment whose name does not follow its predecessor, or an empty segment that is not the
  last. Recovery never skips a damaged record: a hole in a Raft log could lose committed
  entries.
* No marker, or an unreadable one (a log written before it existed): a warning, and nothing
  of the last segment counts as synced, so damage there is cut as a torn tail.
* A last segment left with no records (a crash just after starting it, or a tail torn at
  offset 0) is deleted.

What recovery returns is durable: the last segment, the marker (set to the log's end) and the
directory are fsynced at open, because a crashed predecessor may have left written but
unsynced data in the page cache.

Durability contract
===================

``append`` only writes (one ``os.write`` per batch); ``sync`` fsyncs the current segment (and
the directory when segments were created) and returns the (index, term) of the last entry it
covers. The runtime may run ``sync`` in a worker thread while it keeps appending: one fsync
covers every entry appended before it started (group commit). ``save_hard_state`` is durable
when it returns. ``close`` syncs, closes the log and releases the lock.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from ..raft.messages import Entry
from ._fs import fsync_directory
from .errors import CorruptHardStateError, CorruptLogError, StorageError, StorageLockedError
from .hard_state import HardState, load_hard_state, save_hard_state
from .lock import DirectoryLock
from .snapshots import (
    CorruptSnapshotError,
    ForeignSnapshotError,
    SnapshotChunkError,
    SnapshotError,
    SnapshotFile,
    SnapshotHeader,
    SnapshotReader,
    SnapshotReceiver,
    SnapshotWriter,
    UnsupportedSnapshotVersionError,
)
from .wal import DEFAULT_SEGMENT_BYTES, WriteAheadLog

__all__ = [
    "DEFAULT_SEGMENT_BYTES",
    "CorruptHardStateError",
    "CorruptLogError",
    "CorruptSnapshotError",
    "DirectoryLock",
    "ForeignSnapshotError",
    "HardState",
    "SnapshotChunkError",
    "SnapshotError",
    "SnapshotFile",
    "SnapshotHeader",
    "SnapshotReader",
    "SnapshotReceiver",
    "SnapshotWriter",
    "Storage",
    "StorageError",
    "StorageLockedError",
    "UnsupportedSnapshotVersionError",
    "WriteAheadLog",
    "load_hard_state",
    "save_hard_state",
]

WAL_DIR = "wal"


class Storage:
    """A node's durable state in ``db_root_dir``, held exclusively while open.

    ``hard_state`` is the current hard state and ``entries`` the log recovery found (the
    caller may drop the list once it has loaded it).
    """

    def __init__(
        self,
        db_root_dir: Path,
        lock: DirectoryLock,
        wal: WriteAheadLog,
        hard_state: HardState,
        entries: list[Entry],
    ) -> None:
        self.db_root_dir = db_root_dir
        self.hard_state = hard_state
        self.entries = entries
        self._lock = lock
        self._wal = wal

    @classmethod
    def open(cls, db_root_dir: str | Path, segment_bytes: int = DEFAULT_SEGMENT_BYTES) -> Storage:
        """Create ``db_root_dir`` if needed, lock it and recover hard state and log
        (``segment_bytes``: WAL segment size, bytes). Raises ``StorageLockedError`` (another
        process has it), ``CorruptHardStateError``, ``CorruptLogError`` (see Recovery above),
        ``ValueError`` (``segment_bytes`` not positive), ``OSError``; the lock is released
        on any failure."""
        root = Path(db_root_dir)
        if not root.exists():
            root.mkdir(parents=True)
            fsync_directory(root.parent)
        lock = DirectoryLock.acquire(db_root_dir)
        try:
            hard_state = load_hard_state(root)
            wal, entries = WriteAheadLog.open(root / WAL_DIR, segment_bytes=segment_bytes)
        except BaseException:
            lock.release()
            raise
        return cls(root, lock, wal, hard_state, entries)

    @property
    def last_index(self) -> int:
        """Index of the last entry in the log, 0 when empty."""
        return self._wal.last_index

    @property
    def first_index(self) -> int:
        """Index of the first entry in the log (above 1 after ``compact``), 0 when empty."""
        return self._wal.first_index

    def compact(self, through_index: int) -> int:
        """Drop whole WAL segments covered by a durable snapshot through ``through_index``;
        return the new first index (0: empty log). See ``WriteAheadLog.compact``. Raises
        ``StorageError`` once the log is closed or has failed, ``OSError`` from the disk."""
        return self._wal.compact(through_index)

    def save_hard_state(self, term: int, voted_for: int) -> None:
        """Durably record ``term`` and ``voted_for`` (0: no vote) before returning (Raft
        paper Figure 2: persistent state is updated on stable storage before responding to
        RPCs). Raises ``OSError``; ``hard_state`` is updated only on success."""
        hard_state = HardState(term=term, voted_for=voted_for)
        save_hard_state(self.db_root_dir, hard_state)
        self.hard_state = hard_state

    def append(self, entries: Sequence[Entry]) -> None:
        """Append ``entries`` (contiguous indexes), truncating the log from
        ``entries[0].index`` first (Raft paper section 5.3: a conflicting suffix is
        deleted). No fsync. Raises ``ValueError`` for entries that would leave a gap or
        precede the log's first entry, ``StorageError`` once the log is closed or has
        failed, ``OSError`` from the write (the log then takes no more writes)."""
        self._wal.append(entries)

    def sync(self) -> tuple[int, int]:
        """Fsync what was appended; return (index, term) of the last entry covered, (0, 0)
        for an empty log.

        May run in a worker thread concurrently with ``append``. Raises ``StorageError`` when
        the fsync fails (the log then takes no more writes: the kernel may have dropped the
        unsynced pages), or once the log is closed or has failed.
        """
        return self._wal.sync()

    def close(self) -> None:
        """Sync and close the log, then release ``db_root_dir`` (even if the sync raises
        ``StorageError``). Idempotent."""
        try:
            self._wal.close()
        finally:
            self._lock.release()

    def __enter__(self) -> Storage:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
