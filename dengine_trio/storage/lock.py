"""One process per ``db_root_dir``: an exclusive ``flock`` on ``<db_root_dir>/LOCK``.

The kernel drops the lock when the holder exits, however it exits, so a crash never leaves a
stale lock behind. The file keeps the holder's pid only to name it in the error.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from ._fs import write_all
from .errors import StorageLockedError

LOCK_FILE = "LOCK"


class DirectoryLock:
    """Holds the lock of ``db_root_dir`` from ``acquire`` until ``release``."""

    def __init__(self, db_root_dir: str | Path) -> None:
        self.db_root_dir = db_root_dir
        self.path = Path(db_root_dir) / LOCK_FILE
        self._fd: int | None = None

    @classmethod
    def acquire(cls, db_root_dir: str | Path) -> DirectoryLock:
        """Take the lock, or raise ``StorageLockedError`` naming the process that has it."""
        lock = cls(db_root_dir)
        fd = os.open(lock.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            raise StorageLockedError(
                f"db_root_dir {db_root_dir} is in use by another process (pid {holder})"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        write_all(fd, f"{os.getpid()}\n".encode())
        lock._fd = fd
        return lock

    @property
    def held(self) -> bool:
        """True from ``acquire`` until ``release``."""
        return self._fd is not None

    def release(self) -> None:
        """Let another process have the directory. Idempotent."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


def _read_pid(fd: int) -> str:
    # The holder writes its pid just after locking; a reader can race it and see nothing.
    text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return text or "unknown"
