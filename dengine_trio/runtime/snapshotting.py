"""Snapshots in the node: taking them (log compaction), and installing one a leader sent.

Taking (Raft paper section 7; etcd raft's ``CreateSnapshot`` + ``Compact``): once the applied
index is ``max_log_entries_before_snapshot`` past the newest snapshot's, and right after the
``Apply`` that got it there, the state machine captures its image on the trio loop
(``StateMachine.snapshot()``: O(1) copy-on-write for ``KVStateMachine``). A worker thread
serializes it into a snapshot file (``storage.snapshots.write_snapshot``: temporary name,
fsync, rename, directory fsync). Then the core hears ``SnapshotTaken(index, term,
compact_through)`` and drops its in-memory log through ``compact_through`` (``index -
retained_log_entries``), the WAL drops the segments wholly at or below it, and snapshot files
but the newest two are deleted. One snapshot at a time; ``take_snapshot`` (``GET /snapshot``)
waits for the one under way and takes a fresh one if the applied index moved since.

Installing (the follower's half of InstallSnapshot): the transport stages a complete,
verified file and hands it over with ``stage``; the core decides in the step that takes the
``InstallSnapshot`` message. If it emits ``RestoreSnapshot(index, term)`` (a barrier: nothing
later is carried out before it is done) the file is renamed into ``snapshots_dir``, the WAL is
reset to start after ``index`` (``Storage.install_snapshot``), the state machine is restored
from the file in a worker thread, and ``applied_index`` becomes ``index``. Otherwise (the log
already holds that entry, or the commit index is past it) the staged file is deleted.

Why the serialization runs in a thread of this process and not in a forked child: see
``docs/architecture.md``, "Snapshots in the node".
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from ..errors import Stopped
from ..raft import Effect, RestoreSnapshot, SnapshotTaken
from ..raft.membership import Membership, encode_membership
from ..statemachine import SnapshotImage, SnapshotSink
from ..storage import StorageError
from ..storage._fs import fsync_directory
from ..storage.snapshots import (
    SnapshotFile,
    SnapshotHeader,
    remove_old_snapshots,
    remove_stale_temporaries,
    restore_snapshot,
    snapshot_name,
    write_snapshot,
)

if TYPE_CHECKING:
    from .node import NodeRuntime

__all__ = ["INCOMING_SUBDIR", "KEEP_SNAPSHOTS", "SnapshotFile", "Snapshotter"]

log = logging.getLogger("dengine_trio.node")

KEEP_SNAPSHOTS = 2
"""Snapshot files kept after each new one: the newest, and one older in case the newest turns
out damaged at restart (storage then falls back to it if the log still covers the gap)."""
INCOMING_SUBDIR = "incoming"
"""Subdirectory of ``snapshots_dir`` where received snapshots are staged until the core takes
them: outside ``snapshots_dir`` proper, so recovery never picks one the core has not accepted."""
RETRY_AFTER_FAILURE_S = 5.0
"""After a snapshot failed (a full disk, the state machine's ``snapshot()`` raised), the next
automatic attempt waits this long (s)."""


class _Cancelled(Exception):
    """Raised in the writer thread when the node stops: the temporary file is removed."""


class _Run:
    """One snapshot under way: as of applied entry (``index``, ``term``). ``stopped`` (set by
    the loop, read by the writer thread) abandons it at its next write: the node stops, or a
    leader's snapshot is about to replace the state."""

    def __init__(self, index: int, term: int, membership: Membership) -> None:
        self.index = index
        self.term = term
        self.membership = membership
        """The membership in effect at ``index`` (the core's ``membership_at``)."""
        self.done = trio.Event()
        self.written: SnapshotFile | None = None
        self.error: BaseException | None = None
        self.stopped = False


class _StoppableSink:
    """A sink that raises ``_Cancelled`` on the next write once ``run.stopped`` is set, so
    nobody waits for a multi-second image to finish."""

    def __init__(self, sink: SnapshotSink, run: _Run) -> None:
        self._sink = sink
        self._run = run

    def write(self, data: bytes, /) -> object:
        if self._run.stopped:
            raise _Cancelled
        return self._sink.write(data)


class Snapshotter:
    """Takes and installs the snapshots of ``node`` (a ``NodeRuntime``).

    Reads ``[raft.snapshot]`` of the node's config: ``enable``, ``max_log_entries_before_snapshot``
    (entries), ``retained_log_entries`` (entries), ``chunk_size`` (bytes, the file writer's
    buffer), and ``NodeConfig.snapshots_path()``.
    """

    def __init__(self, node: NodeRuntime) -> None:
        cfg = node.config
        snap = cfg.raft.snapshot
        self._node = node
        self.enable = snap.enable
        self.threshold = snap.max_log_entries_before_snapshot
        self.retained = snap.retained_log_entries
        self.chunk_bytes = snap.chunk_size
        self.directory: Path = cfg.snapshots_path()
        self.incoming: Path = self.directory / INCOMING_SUBDIR
        self.latest: SnapshotFile | None = None
        """The newest snapshot file of this node (taken, installed, or recovered at start);
        what a leader streams to a follower that needs one."""
        self.taken = 0
        """Snapshots this process wrote."""
        self.installed = 0
        """Snapshots this process installed from a leader."""
        self._run: _Run | None = None
        self._retry_at = -float("inf")
        self._staged: dict[tuple[int, int], Path] = {}
        self._installing: trio.Event | None = None  # set when the install under way ends
        self._verified: dict[Path, SnapshotFile] = {}
        """This node's own snapshot files known good: written by this process, installed
        (verified on receipt), or chosen and verified by ``Storage.open``. Only these count
        among the files kept after a snapshot and as cover for the WAL's compaction: a file
        merely named like a snapshot (planted, damaged, another cluster's) never costs the
        node one of these."""

    @property
    def cluster_id(self) -> str | None:
        """The cluster id a snapshot file must name to be read: the node's, or None (any)
        while it knows none."""
        return self._node.cluster_id or None

    # -- taking ----------------------------------------------------------------------------

    @property
    def in_progress(self) -> bool:
        """A snapshot is being written."""
        return self._run is not None

    def applied(self, index: int, term: int) -> None:
        """Called after each ``Apply`` (``index``, ``term``: the last entry applied), on the
        loop: starts a snapshot when ``enable`` and the applied index is
        ``max_log_entries_before_snapshot`` past the core's snapshot. Cheap when it does not."""
        raft = self._node.raft
        if (
            self._run is None
            and self.enable
            and raft is not None
            and index - raft.snapshot_index >= self.threshold
            and index >= raft.snapshot_index
            and trio.current_time() >= self._retry_at
            and self._node.nursery is not None
            and not self._node.stopped
        ):
            try:
                self._start(index, term)
            except Exception as exc:  # the state machine's snapshot() failed: try again later
                self._retry_at = trio.current_time() + RETRY_AFTER_FAILURE_S
                log.error(
                    "node %d: %s.snapshot() raised %r; the log is not compacted",
                    self._node.node_id,
                    type(self._node.state_machine).__name__,
                    exc,
                )

    def _start(self, index: int, term: int) -> _Run:
        """Capture the image now (on the loop, between two applies) and write it in a task."""
        nursery = self._node.nursery
        if nursery is None or self._node.stopped:
            raise Stopped("node is stopping")
        raft = self._node.raft
        assert raft is not None
        run = self._run = _Run(index, term, raft.membership_at(index))
        started = time.perf_counter()
        try:
            image = self._node.state_machine.snapshot()
        except BaseException:
            self._run = None
            raise
        nursery.start_soon(self._write, run, image, started)
        return run

    async def _write(self, run: _Run, image: SnapshotImage, started: float) -> None:
        node = self._node
        m = run.membership
        voters = {
            v.id: v.address or node.membership.listed_address(v.id) for v in m.members if v.voter
        }
        header = SnapshotHeader(
            run.index,
            run.term,
            node.cluster_id or m.cluster_id,
            voters,
            # The implicit membership is not written: a restart rebuilds it from the config.
            membership=None if m.implicit else encode_membership(m),
        )

        def stoppable(sink: SnapshotSink) -> None:
            image(_StoppableSink(sink, run))

        try:
            try:
                run.written = await trio.to_thread.run_sync(
                    write_snapshot, self.directory, header, stoppable, self.chunk_bytes
                )
            except _Cancelled:
                return
            except Exception as exc:
                run.error = exc
                self._retry_at = trio.current_time() + RETRY_AFTER_FAILURE_S
                log.error(
                    "node %d could not write a snapshot as of index %d to %s: %s",
                    self._node.node_id,
                    run.index,
                    self.directory,
                    exc,
                )
                return
            written = run.written
            seconds = time.perf_counter() - started
            self.taken += 1
            self._verified[written.path] = written
            if self.latest is None or written.last_index >= self.latest.last_index:
                self.latest = written
            self._node.metrics.snapshot_saved(seconds, written.size_bytes)
            log.info(
                "node %d wrote snapshot %s (%d bytes) in %.3f s",
                self._node.node_id,
                written.path.name,
                written.size_bytes,
                seconds,
            )
            await self._compact(written)
        finally:
            if self._run is run:
                self._run = None
            run.done.set()

    async def _compact(self, written: SnapshotFile) -> None:
        """Tell the core about the snapshot ``written`` (it drops its log through
        ``compact_through``), then drop the WAL segments below that (both only with
        ``enable``) and the old snapshot files (``_remove_old``). A disk error here is
        logged: the node goes on with a longer log."""
        index, term = written.last_index, written.last_term
        node = self._node
        raft, driver, storage = node.raft, node.driver, node.storage
        assert raft is not None and driver is not None and storage is not None
        compact_through = max(0, index - self.retained)
        # With ``enable`` off the log is never compacted: a snapshot asked for
        # (``take_snapshot``) is a backup, and the core does not hear of it.
        if self.enable and index > raft.snapshot_index:
            driver.submit(SnapshotTaken(index, term, compact_through))

        # The WAL keeps every entry after the next older snapshot kept: if ``written`` is
        # found damaged at a restart, storage falls back to that one only when the log still
        # holds every entry after it (compacting through ``compact_through`` alone left the
        # kept older file useless whenever the threshold exceeds ``retained``). Costs about
        # one more ``max_log_entries_before_snapshot`` of entries on disk, not in memory.
        fallback = max((f.last_index for f in self._verified.values() if f.last_index < index),
                       default=0)  # fmt: skip
        wal_through = min(compact_through, fallback)

        def compact() -> None:
            # The snapshot file is durable (write_snapshot fsynced it and its directory), so
            # every entry at or below ``index`` is covered even if the core has not stepped
            # SnapshotTaken yet. The guard names that file, not whatever is named newest.
            storage.compact(wal_through, covered_by=written.path)

        if self.enable:
            try:
                await trio.to_thread.run_sync(compact)
            except (StorageError, OSError) as exc:
                log.error(
                    "node %d: could not compact the log through index %d: %s",
                    node.node_id,
                    wal_through,
                    exc,
                )
        await self._remove_old()

    async def _remove_old(self) -> None:
        """Delete snapshot files but the newest ``KEEP_SNAPSHOTS`` of this node's own
        verified ones (``remove_old_snapshots`` with ``verified``); files it does not know
        are never counted among the kept."""
        verified = tuple(self._verified)
        try:
            removed = await trio.to_thread.run_sync(
                remove_old_snapshots, self.directory, KEEP_SNAPSHOTS, verified
            )
        except OSError as exc:
            log.error(
                "node %d: could not remove old snapshots in %s: %s",
                self._node.node_id,
                self.directory,
                exc,
            )
            return
        for path in removed:
            self._verified.pop(path, None)

    async def take_snapshot(self) -> SnapshotFile:
        """A complete snapshot file as of the current applied index: waits for the one under
        way, then returns it if it is as of the applied index, else takes a fresh one.

        Works whether ``enable`` is set or not; with it off the log is not compacted behind
        the file (a backup only). The file may be deleted once two
        newer snapshots exist: open it at once. Raises ``Stopped`` (the node is stopping),
        ``OSError`` (the disk) and what the state machine's ``snapshot()`` raises.
        """
        node = self._node
        while True:
            if node.stopped:
                raise Stopped("node is stopping")
            if self._installing is not None:
                # The state machine is being replaced: capture the new state once it is in.
                await self._installing.wait()
                continue
            raft = node.raft
            if raft is not None and node.applied_index < raft.snapshot_index:
                # The core took a leader's snapshot whose install has not begun yet (the
                # barrier waits for the Raft loop): the state to capture is the installed one.
                await trio.sleep(0.005)
                continue
            run = self._run
            if run is None:
                latest = self.latest
                if (
                    latest is not None
                    and latest.last_index == node.applied_index
                    and latest.path.exists()
                ):
                    return latest
                run = self._start(node.applied_index, node.applied_term)
                await run.done.wait()
                if run.error is not None:
                    raise run.error
                if run.written is not None:
                    return run.written
                continue  # abandoned for an install (or a stop): look again
            await run.done.wait()

    def snapshot_damaged(self, file: SnapshotFile | None) -> None:
        """The transport cannot send this node's newest snapshot ``file``: it is damaged on
        disk (a follower refused it; the transport renamed it aside), gone from disk (an
        operator, a clean-up job), unreadable, or there is none (``file`` None) that covers
        the core's snapshot index. Forget it and take a fresh snapshot as of the applied
        index (at or past the core's snapshot index, so the core's next InstallSnapshot finds
        a file that covers it). Without this the same file would be asked for and found
        unusable at every heartbeat answer, and a follower behind the compacted log would
        stay behind until ``max_log_entries_before_snapshot`` more writes came. At most one
        attempt per ``RETRY_AFTER_FAILURE_S`` (s) after a failed one; none while one is
        under way (it becomes the newest file). Call in the trio thread."""
        if file is not None:
            self._verified.pop(file.path, None)
            if self.latest is not None and self.latest.path == file.path:
                self.latest = None
        node = self._node
        if (
            self._run is not None
            or node.stopped
            or node.nursery is None
            or trio.current_time() < self._retry_at
        ):
            return
        log.info(
            "node %d: taking a fresh snapshot as of index %d: %s cannot be sent",
            node.node_id,
            node.applied_index,
            "no snapshot file" if file is None else file.path.name,
        )
        try:
            self._start(node.applied_index, node.applied_term)
        except Exception as exc:  # the state machine's snapshot() failed
            self._retry_at = trio.current_time() + RETRY_AFTER_FAILURE_S
            log.error(
                "node %d: could not start a snapshot to replace %s: %r",
                node.node_id,
                "no snapshot file" if file is None else file.path,
                exc,
            )

    def stop(self) -> None:
        """The node is stopping: a snapshot being written is abandoned at its next write."""
        if self._run is not None:
            self._run.stopped = True

    # -- at start --------------------------------------------------------------------------

    def clean_incoming(self) -> None:
        """Delete what a previous process left staged (blocking: at start, in a thread)."""
        if not self.incoming.is_dir():
            return
        removed = remove_stale_temporaries(self.incoming)
        for name in os.listdir(self.incoming):
            path = self.incoming / name
            if path.is_file():
                path.unlink()
                removed.append(path)
        if removed:
            fsync_directory(self.incoming)
            log.info(
                "node %d removed %d staged snapshot file(s) left in %s",
                self._node.node_id,
                len(removed),
                self.incoming,
            )

    async def restore_at_start(self, snapshot: SnapshotFile) -> None:
        """Restore the state machine from ``snapshot`` (chosen by ``Storage.open``), in a
        worker thread. Raises ``SnapshotError`` (the file changed since it was verified),
        the state machine's ``SnapshotImageError``, ``OSError``."""
        started = time.perf_counter()
        await trio.to_thread.run_sync(
            restore_snapshot,
            snapshot.path,
            self.cluster_id,
            self._node.state_machine,
            self.chunk_bytes,
        )
        self.latest = snapshot
        self._verified[snapshot.path] = snapshot
        log.info(
            "node %d restored its state machine from %s (index %d, term %d) in %.3f s",
            self._node.node_id,
            snapshot.path.name,
            snapshot.last_index,
            snapshot.last_term,
            time.perf_counter() - started,
        )

    # -- installing a snapshot from the leader ---------------------------------------------

    def stage(self, index: int, term: int, path: Path) -> None:
        """Take ownership of a complete, verified snapshot file at ``path`` (as of entry
        (``index``, ``term``)), received for the ``InstallSnapshot`` about to be stepped."""
        previous = self._staged.pop((index, term), None)
        if previous is not None and previous != path:
            _unlink(previous)
        self._staged[(index, term)] = path

    def stepped(self, effects: Sequence[Effect]) -> None:
        """The step that took staged files' messages returned ``effects``: a file no
        ``RestoreSnapshot`` among them names is not needed (the log already holds its entry,
        or the commit index is past it) and is deleted."""
        keep = {(e.index, e.term) for e in effects if type(e) is RestoreSnapshot}
        for key in [k for k in self._staged if k not in keep]:
            _unlink(self._staged.pop(key))

    async def install(self, effect: RestoreSnapshot) -> None:
        """Carry out ``RestoreSnapshot`` (a barrier): the staged file goes into
        ``snapshots_dir`` first, then the WAL is reset to start after ``effect.index``
        (a crash between the two restarts from the file, whose entry the old log may not
        hold: storage then resets the log itself), then the state machine is restored from
        the file in a worker thread (swapped in whole, only once read and verified), and the
        node's applied index becomes ``effect.index``. Raises ``RuntimeError`` if no file was
        staged for it, and what the disk and the state machine raise (the node stops).
        A snapshot being taken meanwhile is abandoned first; ``take_snapshot`` waits for the
        install and then captures the new state."""
        staged = self._staged.pop((effect.index, effect.term), None)
        if staged is None:
            raise RuntimeError(
                f"RestoreSnapshot({effect.index}, {effect.term}) without a staged snapshot file"
            )
        started = time.perf_counter()
        installing = self._installing = trio.Event()
        try:
            await self._install(effect, staged, started)
        finally:
            self._installing = None
            installing.set()

    async def _install(self, effect: RestoreSnapshot, staged: Path, started: float) -> None:
        node = self._node
        storage = node.storage
        assert storage is not None
        run = self._run
        if run is not None:
            # A snapshot of the state about to be replaced: abandon it (its writer stops at its
            # next chunk) rather than let the state machine be restored under its capture.
            run.stopped = True
            await run.done.wait()
        final = self.directory / snapshot_name(effect.index, effect.term)

        def put_in_place() -> int:
            # The file first (renamed in, both directories fsynced), then the WAL reset.
            storage.install_snapshot(
                effect.index, effect.term, staged=None if staged == final else staged
            )
            return final.stat().st_size

        size = await trio.to_thread.run_sync(put_in_place)
        header = await trio.to_thread.run_sync(
            restore_snapshot,
            final,
            self.cluster_id,
            node.state_machine,
            self.chunk_bytes,
        )
        self.latest = SnapshotFile(final, effect.index, effect.term, header, size)
        self._verified[final] = self.latest
        self.installed += 1
        node.snapshot_installed(effect.index, effect.term)
        node.metrics.snapshot_received(size)
        log.info(
            "node %d installed snapshot %s from its leader (%d bytes) in %.3f s",
            node.node_id,
            final.name,
            size,
            time.perf_counter() - started,
        )
        await self._remove_old()

    def discard_staged(self) -> None:
        """Delete every staged file (the node stops)."""
        for path in self._staged.values():
            _unlink(path)
        self._staged.clear()


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("could not remove staged snapshot %s: %s", path, exc)
