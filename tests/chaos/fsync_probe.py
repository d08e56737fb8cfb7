"""Run a node whose fsyncs are recorded, so a power cut can be imitated after a SIGKILL.

``python -m tests.chaos.fsync_probe <the node's own arguments>`` runs ``python -m dengine_trio``
with ``os.fsync`` wrapped: every fsync of a regular file appends ``<size> <path>`` (the file's
size when the fsync began, hence covered by it) to the file named by ``DENGINE_FSYNC_LOG``,
once the fsync has returned and before anything the node does because of it. A killed
process's unsynced writes survive in the page cache; :func:`power_cut` then removes them the
way a power loss would: each WAL segment is cut back to its last recorded fsynced size, and a
segment never fsynced is removed.

The imitation errs toward losing more, never less: a record not yet written when the process
died makes its fsync count as never done.

The WAL's synced-position marker (``wal/synced``, fixed size, fsynced at open) keeps its latest
content: the log writes it only after the fsync it names has returned, and so after this probe
recorded that fsync, so it never names more than the cut segments keep.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _typeshed import HasFileno

__all__ = ["LOG_ENV", "install", "power_cut"]

LOG_ENV = "DENGINE_FSYNC_LOG"


def install(log_path: str) -> None:
    """Wrap ``os.fsync`` for this process (the storage layer looks it up at each call)."""
    log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    real_fsync = os.fsync

    def fsync(fd: int | HasFileno) -> None:
        if not isinstance(fd, int):
            fd = fd.fileno()
        info = os.fstat(fd)
        path = os.readlink(f"/proc/self/fd/{fd}") if stat.S_ISREG(info.st_mode) else ""
        real_fsync(fd)
        if path:
            # One os.write of one line on an O_APPEND descriptor: whole lines, even from the
            # storage layer's worker threads.
            os.write(log_fd, f"{info.st_size} {path}\n".encode())

    os.fsync = fsync


def power_cut(db_dir: Path, log_path: Path) -> int:
    """Cut every WAL segment under ``db_dir`` back to what was fsynced; return bytes dropped.

    Run only while the node is not running.
    """
    synced: dict[str, int] = {}
    if log_path.exists():
        for line in log_path.read_text().splitlines():
            synced_size, _, path = line.partition(" ")
            synced[path] = int(synced_size)  # the last fsync of a file is what a power loss keeps
    dropped = 0
    wal_dir = db_dir / "wal"
    if not wal_dir.is_dir():
        return 0
    for segment in sorted(wal_dir.iterdir()):
        size = segment.stat().st_size
        keep = synced.get(str(segment.resolve()))
        if keep is None:
            segment.unlink()
            dropped += size
        elif size > keep:
            os.truncate(segment, keep)
            dropped += size - keep
    return dropped


if __name__ == "__main__":
    install(os.environ[LOG_ENV])
    from dengine_trio.__main__ import main

    sys.exit(main(sys.argv[1:]))
