"""Choosing the snapshot a node restarts from, and what of its write-ahead log follows it.

``Storage.open`` calls ``choose_snapshot`` with the recovered log; the rules are described in
the package docstring (``dengine_trio/storage/__init__.py``, "Restart from a snapshot").
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import attrs

from ..raft.messages import Entry
from .errors import UnrecoverableStorageError
from .snapshots import SnapshotError, SnapshotFile, list_snapshots, verify_snapshot

logger = logging.getLogger("dengine_trio.storage")


@attrs.frozen(slots=True)
class SnapshotChoice:
    """What recovery decided. ``snapshot``: the snapshot to restore (None: replay the log
    from its start). ``reset_log``: the log contradicts ``snapshot`` or ends before it, and
    must be reset to start after it. ``rejected``: files that were not used, each with the
    reason, newest first (already logged). ``invalid``: those of them that failed
    verification (damaged, another cluster's, unknown version): never usable here."""

    snapshot: SnapshotFile | None
    reset_log: bool
    rejected: list[tuple[Path, str]]
    invalid: list[Path] = attrs.Factory(list)


def _log_holds(entries: Sequence[Entry], index: int, term: int) -> bool:
    """Whether ``entries`` (contiguous) hold entry ``index`` with ``term``."""
    if not entries:
        return False
    position = index - entries[0].index
    return 0 <= position < len(entries) and entries[position].term == term


def _describe(entries: Sequence[Entry]) -> str:
    if not entries:
        return "the log is empty"
    return f"the log holds indexes {entries[0].index}..{entries[-1].index}"


def choose_snapshot(
    snapshots_dir: Path, cluster_id: str | None, entries: Sequence[Entry]
) -> SnapshotChoice:
    """Pick the snapshot to restart from, given the entries the log recovered (contiguous).

    Candidates are verified newest first (whole file: ``verify_snapshot``). The newest valid
    one is used unless it lies before a hole (the log starts after its index + 1); if the log
    contradicts it (holds its index with another term) or ends before it, ``reset_log`` is
    set: what the log holds then is the remains of an interrupted InstallSnapshot or of
    unsynced appends the snapshot already covers. An OLDER valid snapshot (a newer one was
    rejected) is used only if the log holds every entry after it: holds its (index, term),
    or starts right after it. With no usable snapshot, the log alone is used only if it
    starts at index 1 (or is empty and there was no snapshot file at all).

    Each file not used is logged with one WARNING line naming it and the reason. Raises
    ``UnrecoverableStorageError`` naming the files when no choice keeps every entry,
    ``OSError`` from the disk.
    """
    rejected: list[tuple[Path, str]] = []
    invalid: list[Path] = []

    def reject(candidate: SnapshotFile, reason: str) -> None:
        logger.warning("snapshot %s: %s; not used", candidate.path, reason)
        rejected.append((candidate.path, reason))

    candidates = list_snapshots(snapshots_dir)
    first = entries[0].index if entries else 0
    for candidate in candidates:
        try:
            snapshot = verify_snapshot(candidate.path, cluster_id)
        except SnapshotError as exc:
            reject(candidate, exc.problem)
            invalid.append(candidate.path)
            continue
        index, term = snapshot.last_index, snapshot.last_term
        follows = first == index + 1 or _log_holds(entries, index, term)
        if follows:
            return SnapshotChoice(snapshot, False, rejected, invalid)
        if rejected:
            # A newer snapshot was damaged: this older one may lack entries the newer one
            # covered, which only the log can still supply.
            reject(
                candidate,
                f"valid, but a newer snapshot was rejected and {_describe(entries)}, not "
                f"every entry after index {index}",
            )
            continue
        if entries and first > index + 1:
            raise UnrecoverableStorageError(
                f"snapshot {snapshot.path} covers indexes up to {index} but the log starts at "
                f"index {first}: entries {index + 1}..{first - 1} are in neither; refusing to "
                "start with a hole in the log"
            )
        if entries:
            logger.warning(
                "snapshot %s covers up to index %d (term %d) and %s, %s; discarding the log "
                "(an interrupted snapshot install or unsynced appends the snapshot covers)",
                snapshot.path,
                index,
                term,
                _describe(entries),
                "which ends before it" if entries[-1].index < index else "with another term there",
            )
        return SnapshotChoice(snapshot, bool(entries), rejected, invalid)
    if first == 1 or (not entries and not candidates):
        return SnapshotChoice(None, False, rejected, invalid)
    if not candidates:
        raise UnrecoverableStorageError(
            f"{_describe(entries)} but {snapshots_dir} has no snapshot: entries "
            f"1..{first - 1} are in neither; refusing to start without them"
        )
    files = "; ".join(f"{path}: {reason}" for path, reason in rejected)
    raise UnrecoverableStorageError(
        f"no usable snapshot in {snapshots_dir} and {_describe(entries)}, not from index 1: "
        f"starting would lose committed entries ({files})"
    )
