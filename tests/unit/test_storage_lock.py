"""One process per db_root_dir, enforced with flock and checked with real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dengine_trio.storage import DirectoryLock, Storage, StorageLockedError

HELPER = Path(__file__).with_name("storage_process.py")


def run_helper(command: str, db: Path) -> str:
    done = subprocess.run(
        [sys.executable, str(HELPER), command, str(db)],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def test_second_process_is_refused_while_the_first_holds_the_directory(tmp_path: Path) -> None:
    db = tmp_path / "db" / "1"
    storage = Storage.open(db)
    try:
        answer = run_helper("try", db)
        assert answer == (
            f"locked: db_root_dir {db} is in use by another process (pid {os.getpid()})"
        )
    finally:
        storage.close()
    assert run_helper("try", db) == "opened"


def test_lock_of_a_killed_process_is_released(tmp_path: Path) -> None:
    db = tmp_path / "db"
    holder = subprocess.Popen(
        [sys.executable, str(HELPER), "hold", str(db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == f"held {holder.pid}"
        with pytest.raises(StorageLockedError, match=rf"\(pid {holder.pid}\)"):
            Storage.open(db)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    Storage.open(db).close()


def test_second_open_in_the_same_process_is_refused(tmp_path: Path) -> None:
    with Storage.open(tmp_path):
        with pytest.raises(StorageLockedError, match="is in use by another process"):
            Storage.open(tmp_path)
        with pytest.raises(StorageLockedError):
            DirectoryLock.acquire(tmp_path)
    lock = DirectoryLock.acquire(tmp_path)
    assert lock.held
    assert (tmp_path / "LOCK").read_text() == f"{os.getpid()}\n"
    lock.release()
    lock.release()
    assert not lock.held
