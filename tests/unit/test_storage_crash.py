"""Crash durability: every entry a sync acknowledged survives SIGKILL of the writer."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from dengine_trio.storage import HardState, Storage

HELPER = Path(__file__).with_name("storage_process.py")
sys.path.insert(0, str(HELPER.parent))
from storage_process import SEGMENT_BYTES, WRITE_TERM, payload  # noqa: E402


def test_acknowledged_entries_survive_sigkill(tmp_path: Path) -> None:
    db = tmp_path / "db"
    writer = subprocess.Popen(
        [sys.executable, str(HELPER), "write", str(db)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    acknowledged: list[int] = []
    try:
        assert writer.stdout is not None
        # Enough acknowledgements to span several segments, then kill it mid-stride.
        while len(acknowledged) < 20 or acknowledged[-1] < 2000:
            line = writer.stdout.readline()
            assert line, f"writer exited early: {writer.stderr.read() if writer.stderr else ''}"
            word, index, term = line.split()
            assert word == "synced"
            assert int(term) == WRITE_TERM
            acknowledged.append(int(index))
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    assert writer.returncode == -signal.SIGKILL
    assert acknowledged == sorted(acknowledged)

    with Storage.open(db, segment_bytes=SEGMENT_BYTES) as storage:
        assert storage.hard_state == HardState(term=WRITE_TERM, voted_for=1)
        entries = storage.entries
    assert len(list((db / "wal").glob("*.wal"))) > 1
    assert len(entries) >= acknowledged[-1]
    for position, entry in enumerate(entries):
        assert entry.index == position + 1
        assert entry.term == WRITE_TERM
        assert entry.data == payload(entry.index)
