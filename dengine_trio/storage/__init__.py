"""Durable state of one node: the write-ahead log of Raft entries and the hard state.

On-disk format
==============

Everything lives under ``db_root_dir``::

    <db_root_dir>/LOCK          flock(2) lock; holds the pid of the owning process
    <db_root_dir>/node_uuid     this directory's identity (32 hex digits; created at the
                                first open: ``storage/node_identity.py``)
    <db_root_dir>/cluster_id    the cluster this directory belongs to, once known
                                (``storage/cluster_identity.py``)
    <db_root_dir>/hard_state    current term and vote (28 bytes)
    <db_root_dir>/wal/<first index, 20 digits>.wal   write-ahead log segments
    <db_root_dir>/wal/synced    synced-position marker (28 bytes)
    <snapshots_dir>/snapshot-<last index>-<last term>.snap   snapshots (format and
                                atomicity in ``storage/snapshots.py``; ``snapshots_dir`` is
                                configured, by default ``<db_root_dir>/snapshots``)
    <snapshots_dir>/.snapshot-*.tmp   a snapshot being written or received (deleted at open)

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
                 (int, int, int: 0 = command, 1 = no-op, 2 = configuration
                 (a membership, issue 14), bin)

    Segments form one contiguous run of indexes: each segment starts at the index after the
    last one of its predecessor. The first need not start at 1: ``compact`` deletes the oldest
    segments once a snapshot covers them (oldest first, a directory fsync after each; if
    ``wal/synced`` names one of them it is first set to (0, 0) and fsynced). A new
    segment is started when an append finds the current one at or past ``segment_bytes``
    (default 4 MiB, see "Segment size"), so a segment exceeds that size by at most one append
    batch. After ``install_snapshot`` (``reset``) the log has no segment at all, and the
    next append starts a segment named after the snapshot's index + 1. Before the
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

Restart from a snapshot
=======================

``Storage.open(..., snapshots_dir=...)`` (``storage/recovery.py``) restarts a node from the
newest snapshot it can trust and the log after it:

1. Temporary files of interrupted snapshot writes and receives (``.snapshot-*.tmp``) are
   deleted; the log is recovered as above (torn tail cut, damage refused).
2. Snapshot files are verified newest first (whole file: both CRCs, version, cluster id, name
   against header). Each file not used is logged with one WARNING line naming it and why.
   Once the choice is made, the files that failed verification are renamed to
   ``<name>.rejected`` (``move_aside``): left under a snapshot name they would count, by
   name, among the two newest kept after each snapshot and as ``compact``'s cover.
3. The newest valid snapshot (index S, term T) is used, and the log after it:
   * the log holds entry S with term T: the entries after S (the ones at or below S stay on
     disk until ``compact``);
   * the log starts at S + 1: all of it;
   * the log is empty: nothing; the next append must be S + 1;
   * the log holds entry S with another term, or ends before S: it is the remains of an
     interrupted ``install_snapshot`` (or, under MemFirst, unsynced appends the snapshot
     already covers). Raft paper section 7: a log that does not hold the snapshot's last
     entry is discarded whole. It is reset durably (as ``install_snapshot`` does, one
     WARNING) and nothing follows the snapshot;
   * the log starts after S + 1: the entries in between are nowhere (a newer snapshot was
     deleted by hand): ``UnrecoverableStorageError``, nothing is discarded.
4. An OLDER valid snapshot, used because a newer one was rejected, must have the log hold
   every entry after it (its entry S with term T, or the log starts at S + 1): the newer
   snapshot may have covered entries the log no longer holds, and starting without them
   would forget committed entries. Otherwise it is rejected too.
5. No snapshot usable: the log alone, if it starts at index 1 (or there was no snapshot
   file and no log: a fresh node). Otherwise ``UnrecoverableStorageError`` naming every file
   and its problem: the node never starts silently empty or with a hole.
6. A hard state whose term is below T is moved durably to term T with no vote: the file
   proves the term exists, a node below it never voted in it, and the Raft core refuses a
   term below its snapshot's. (A received snapshot renamed in before the core stepped its
   message, whose term it would have persisted, leaves this.)

``storage.snapshot`` is the chosen file (None: none), ``storage.entries`` the entries after
it, ``snapshot_index`` / ``snapshot_term`` its (S, T) ((0, 0): none). The runtime restores the
state machine from the file and hands both to the Raft core.

``install_snapshot`` and its crash points
-----------------------------------------

A follower that receives a snapshot its log does not hold discards the log (Raft paper
section 7). ``Storage.install_snapshot(S, T, staged=path)`` does, in this order, each step
durable before the next:

1. ``staged`` (already verified) is renamed to ``snapshots_dir/snapshot-S-T.snap``; both
   directories are fsynced. (Without ``staged`` the file must already be there.)
2. The ``wal/synced`` marker is set to (0, 0) and fsynced, so it never names a deleted
   segment.
3. The segments are deleted newest first, a directory fsync after each.

A crash before 1 restarts from the old snapshot and the old log. A crash after 1 finds the
snapshot (S, T) newest, and the old log, or a prefix of it (step 3 deletes from the end, so no
hole appears: the old log starts at or below S, because it only ever dropped entries a
snapshot at or below the commit index covered, and a follower installs only a snapshot above
its commit index). That log does not hold (S, T), so it contradicts S or ends before it and
recovery resets it (point 3 above). After 3: the snapshot and an empty log. Either way the
node restarts in the old state or the new one. Test: ``tests/unit/
test_storage_snapshot_restart.py`` stops the sequence before each file operation in turn.

Segment size
============

Compaction (``compact(S - retained)``, after each snapshot) deletes whole segments only, and
never the one being written, so the covered entries still on disk are at most one segment.
The log on disk is therefore at most ``segment_bytes`` + (``retained_log_entries`` +
``max_log_entries_before_snapshot``) x entry size (+ one append batch), and recovery reads
all of it (~70-80 MiB/s here: it checks every CRC and decodes every entry). With the old
64 MiB segments and a snapshot every 10,000 entries of ~300 bytes (3 MB), a segment was
dropped only once 64 MiB of entries had been written: up to 65 MiB on disk, and up to ~0.8 s
of a restart spent reading entries the snapshot already covers. ``.venv/bin/python -m
bench.wal_segments`` (305,000 entries of 305 bytes, a snapshot every 10,000, 1,000 retained)
measured a WAL peak of 65.3 MiB with 64 MiB segments, 17.3 with 16, 9.6 with 8, 5.5 with 4
and 2.6 with 1 MiB. Each roll costs an fsync of the old segment, a new file and a directory
fsync; 1 MiB segments roll 4x as often as 4 MiB for 3 MiB less. 4 MiB rolls once per
~14,000 such entries and keeps the restart cost of the covered part under ~60 ms. Rolling a
segment at each snapshot was the other option; with 4 MiB segments it would save at most
4 MiB and add a roll per snapshot, so it is not done.

Durability contract
===================

``append`` only writes (one ``os.write`` per batch); ``sync`` fsyncs the current segment (and
the directory when segments were created) and returns the (index, term) of the last entry it
covers. The runtime may run ``sync`` in a worker thread while it keeps appending: one fsync
covers every entry appended before it started (group commit). ``save_hard_state`` is durable
when it returns. ``compact`` and ``install_snapshot`` are durable when they return (run them
in a worker thread: they unlink and fsync); an append waits for an ``install_snapshot`` under
way, never for a ``compact``. ``close`` syncs, closes the log and releases the lock.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from ..raft.messages import Entry
from ._fs import fsync_directory
from .errors import (
    CorruptHardStateError,
    CorruptLogError,
    StorageError,
    StorageLockedError,
    UnrecoverableStorageError,
)
from .hard_state import HARD_STATE_FILE, HardState, load_hard_state, save_hard_state
from .lock import DirectoryLock
from .node_identity import CorruptNodeUuidError, load_or_create_node_uuid
from .recovery import choose_snapshot
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
    list_snapshots,
    move_aside,
    remove_stale_temporaries,
    snapshot_name,
)
from .wal import DEFAULT_SEGMENT_BYTES, WriteAheadLog

__all__ = [
    "DEFAULT_SEGMENT_BYTES",
    "CorruptHardStateError",
    "CorruptLogError",
    "CorruptNodeUuidError",
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
    "UnrecoverableStorageError",
    "UnsupportedSnapshotVersionError",
    "WriteAheadLog",
    "load_hard_state",
    "save_hard_state",
]

WAL_DIR = "wal"

logger = logging.getLogger("dengine_trio.storage")


class Storage:
    """A node's durable state in ``db_root_dir``, held exclusively while open.

    After ``open``: ``node_uuid`` this directory's identity (``storage/node_identity.py``);
    ``hard_state`` the current hard state; ``snapshot`` the snapshot to restore (None: none,
    or no ``snapshots_dir``); ``entries`` the log entries AFTER it, in index order (every
    entry of the log when there is no snapshot). The caller may drop the list once it has
    loaded it.
    """

    def __init__(
        self,
        db_root_dir: Path,
        lock: DirectoryLock,
        wal: WriteAheadLog,
        hard_state: HardState,
        entries: list[Entry],
        snapshots_dir: Path | None = None,
        snapshot: SnapshotFile | None = None,
        node_uuid: str = "",
    ) -> None:
        self.db_root_dir = db_root_dir
        self.node_uuid = node_uuid
        self.snapshots_dir = snapshots_dir
        self.hard_state = hard_state
        self.snapshot = snapshot
        self.entries = entries
        self._lock = lock
        self._wal = wal

    @classmethod
    def open(
        cls,
        db_root_dir: str | Path,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        *,
        snapshots_dir: str | Path | None = None,
        cluster_id: str | None = None,
    ) -> Storage:
        """Create ``db_root_dir`` if needed, lock it and recover hard state, snapshot and log.

        First ``node_uuid`` is read, or created durably when the directory has none
        (``storage/node_identity.py``). ``segment_bytes``: WAL segment size, bytes (see
        "Segment size"). ``snapshots_dir`` None: no snapshots (``snapshot`` is None and
        ``entries`` is the whole log, which may then start above 1 only if something
        compacted it). Otherwise, in this order (see "Restart from a snapshot"): the
        temporary files of interrupted snapshot writes and receives are deleted; the log is
        recovered (torn tail cut); the snapshot is chosen (``cluster_id``: the expected
        cluster, None accepts any); if the log contradicts it or ends before it, the log is
        reset durably (``install_snapshot``'s steps) to start after it; ``entries`` keeps
        only the entries after the snapshot's index. A hard state whose term is below the
        snapshot's is moved durably to that term with no vote (one WARNING), so
        ``hard_state.term >= snapshot_term`` always holds. ``snapshot_membership`` is the
        chosen snapshot's membership bytes (None: no snapshot, or one without a
        membership).

        Raises ``StorageLockedError`` (another process has it), ``CorruptNodeUuidError``,
        ``CorruptHardStateError``, ``CorruptLogError`` (see Recovery above),
        ``UnrecoverableStorageError`` (no snapshot and log that together hold every entry:
        its message names each file and why it was not used), ``ValueError``
        (``segment_bytes`` not positive), ``OSError``; the lock is
        released on any failure.
        """
        root = Path(db_root_dir)
        if not root.exists():
            root.mkdir(parents=True)
            fsync_directory(root.parent)
        lock = DirectoryLock.acquire(db_root_dir)
        wal: WriteAheadLog | None = None
        try:
            # First, before any vote or entry is stored: everything this directory holds is
            # then held under its uuid (storage/node_identity.py).
            node_uuid, created = load_or_create_node_uuid(root)
            if created:
                logger.info("%s: new data directory identity %s", root, node_uuid)
            hard_state = load_hard_state(root)
            snapshots = None if snapshots_dir is None else Path(snapshots_dir)
            if snapshots is not None:
                for stale in remove_stale_temporaries(snapshots):
                    logger.info("removed %s, left by an interrupted snapshot write", stale)
            wal, entries = WriteAheadLog.open(root / WAL_DIR, segment_bytes=segment_bytes)
            snapshot = None
            if snapshots is not None:
                choice = choose_snapshot(snapshots, cluster_id, entries)
                snapshot = choice.snapshot
                if snapshot is not None and hard_state.term < snapshot.last_term:
                    # The file proves that term T exists. A node whose hard state is below T
                    # never voted in T or later, so moving to T without a vote is what
                    # receiving any message of term T does (Raft paper Figure 2, "All
                    # servers"). It happens when a received snapshot reached snapshots_dir
                    # before the core stepped its message (or a restore wrote no term); the
                    # core refuses a term below its snapshot's.
                    logger.warning(
                        "%s: term %d is below term %d of snapshot %s; moving to term %d, no vote",
                        root / HARD_STATE_FILE,
                        hard_state.term,
                        snapshot.last_term,
                        snapshot.path,
                        snapshot.last_term,
                    )
                    hard_state = HardState(term=snapshot.last_term, voted_for=0)
                    save_hard_state(root, hard_state)
                for moved in move_aside(choice.invalid):
                    # Out of the snapshot names: the keep-the-newest clean-up and compact's
                    # guard go by name, and must only ever count this node's valid files.
                    logger.info("moved %s aside to %s", moved.with_suffix(""), moved)
                if snapshot is not None:
                    if choice.reset_log or not entries:
                        wal.reset(snapshot.last_index, snapshot.last_term)
                        entries = []
                    else:
                        entries = entries[max(0, snapshot.last_index + 1 - entries[0].index) :]
        except BaseException:
            try:
                if wal is not None:
                    wal.close()
            finally:
                lock.release()
            raise
        return cls(root, lock, wal, hard_state, entries, snapshots, snapshot, node_uuid)

    @property
    def snapshot_index(self) -> int:
        """Last index ``snapshot`` covers, 0 when there is none."""
        return self.snapshot.last_index if self.snapshot is not None else 0

    @property
    def snapshot_term(self) -> int:
        """Term of the entry at ``snapshot_index``, 0 when there is no snapshot."""
        return self.snapshot.last_term if self.snapshot is not None else 0

    @property
    def snapshot_membership(self) -> bytes | None:
        """The membership in effect at ``snapshot_index`` as the snapshot's header holds it
        (``raft.membership.encode_membership`` bytes), None when there is no snapshot or it
        has no explicit membership (a version 1 file, or one taken before the cluster's first
        configuration entry): the node then starts from the implicit membership of its
        configuration, plus the configuration entries of ``entries``."""
        if self.snapshot is None or self.snapshot.header is None:
            return None
        return self.snapshot.header.membership

    def entries_after_snapshot(self) -> list[Entry]:
        """The log entries after ``snapshot_index`` found at ``open`` (``entries``)."""
        return self.entries

    def install_snapshot(self, index: int, term: int, *, staged: Path | None = None) -> None:
        """Durably discard the whole log; the next append must be entry ``index + 1``.

        For a follower that received a snapshot through ``index`` (whose entry had
        ``term``) that its log does not hold (Raft paper section 7: "discard the entire
        log"). The snapshot file comes first: ``staged`` (a verified file, e.g. what
        ``SnapshotReceiver.finish`` installed in a staging directory on the same file
        system) is renamed to ``snapshots_dir/snapshot-<index>-<term>.snap`` and both
        directories are fsynced; without ``staged`` the file must already be there. With
        ``snapshots_dir`` set, a missing file raises ``StorageError`` and nothing is
        discarded. Crash points (see "Restart from a snapshot"): before or during the reset
        a restart finds the new snapshot and the old log, or a prefix of it, which
        contradicts the snapshot or ends before it, and resets it again; after it, the
        snapshot and an empty log. ``snapshot`` becomes that file (its header read first:
        ``snapshot_membership`` is the file's; a header that does not read raises
        ``SnapshotError`` before anything is discarded). Raises ``ValueError``
        (impossible index/term, or the log starts after ``index + 1``), ``StorageError``
        once the log is closed or failed, ``OSError`` from the disk (the log then takes no
        more writes). Safe while a ``sync`` runs in a worker thread.
        """
        path: Path | None = None
        header: SnapshotHeader | None = None
        if staged is not None and self.snapshots_dir is None:
            raise StorageError(f"install_snapshot: {staged} given but no snapshots_dir")
        if self.snapshots_dir is not None:
            path = self.snapshots_dir / snapshot_name(index, term)
            if staged is not None:
                os.replace(staged, path)
                fsync_directory(self.snapshots_dir)
                fsync_directory(Path(staged).parent)
            if not path.is_file():
                raise StorageError(
                    f"install_snapshot({index}, {term}): {path} does not exist; install the "
                    "snapshot file before discarding the log"
                )
            # Its header (membership) before the log goes: a file whose header cannot be
            # read must not cost the node its log.
            with SnapshotReader.open(path) as reader:
                header = reader.header
        self._wal.reset(index, term)
        if path is not None:
            self.snapshot = SnapshotFile(path, index, term, header)

    @property
    def last_index(self) -> int:
        """Index of the last entry in the log; when the log is empty, the index it starts
        after (``snapshot_index`` after ``open`` or ``install_snapshot``, 0 when fresh)."""
        return self._wal.last_index

    @property
    def first_index(self) -> int:
        """Index of the first entry in the log (above 1 after ``compact``), 0 when empty."""
        return self._wal.first_index

    def compact(self, through_index: int, covered_by: Path | None = None) -> int:
        """Drop whole WAL segments covered by a durable snapshot through ``through_index``;
        return the new first index (0: empty log). See ``WriteAheadLog.compact``: the segment
        being written is never dropped, so up to ``segment_bytes`` of covered entries stay.
        With ``snapshots_dir`` set, a snapshot file through ``through_index`` or later must
        be there (``StorageError`` otherwise: compacting without one would make the log
        unrecoverable): ``covered_by``, the path of a snapshot the caller wrote or installed
        and verified (what a running node passes), must still exist and be named through
        that index or later; without it the newest file BY NAME is trusted (a planted or
        damaged file named newer passes: tools and tests only). Raises ``StorageError`` once
        the log is closed or has failed, ``OSError`` from the disk."""
        if self.snapshots_dir is not None and through_index > 0:
            if covered_by is not None:
                named = [f for f in list_snapshots(covered_by.parent) if f.path == covered_by]
                if not named or named[0].last_index < through_index:
                    raise StorageError(
                        f"compact({through_index}): snapshot {covered_by} is gone or does "
                        "not cover that index; write the snapshot before compacting the log"
                    )
            else:
                newest = list_snapshots(self.snapshots_dir)
                if not newest or newest[0].last_index < through_index:
                    raise StorageError(
                        f"compact({through_index}): no snapshot in {self.snapshots_dir} "
                        "covers that index; write the snapshot before compacting the log"
                    )
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
        """Fsync what was appended; return (index, term) of the last entry covered. An empty
        log returns the (index, term) it starts after (the snapshot's), (0, 0) when fresh.

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
