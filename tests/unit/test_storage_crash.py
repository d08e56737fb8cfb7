"""Crash durability: every entry a sync acknowledged survives SIGKILL of the writer."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
from pathlib import Path

from dengine_trio.storage import HardState, Storage

HELPER = Path(__file__).with_name("storage_process.py")
sys.path.insert(0, str(HELPER.parent))
from storage_process import (  # noqa: E402
    SEGMENT_BYTES,
    SNAPSHOT_CLUSTER,
    WRITE_TERM,
    payload,
    term_payload,
)


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


def test_snapshots_compaction_and_installs_survive_sigkill_at_any_point(tmp_path: Path) -> None:
    """A real process takes snapshots, compacts and installs leader snapshots (staged, moved,
    log reset) while appending; it is killed at an arbitrary point five times, restarting on
    the same directory each time. Every restart finds a consistent snapshot and log: what
    was acknowledged (synced, snapshotted, installed) is there, the entries after the
    snapshot are contiguous and hold what was written."""
    db = tmp_path / "db"
    rng = random.Random(13)
    installs = 0
    for _round in range(5):
        writer = subprocess.Popen(
            [sys.executable, str(HELPER), "install", str(db)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        synced = snapshot = installed = (0, 0)
        seen_installs = 0
        extra = rng.randrange(0, 60)
        try:
            assert writer.stdout is not None
            while seen_installs < 2 or extra > 0:
                line = writer.stdout.readline()
                assert line, f"writer exited early: {writer.stderr.read() if writer.stderr else ''}"
                word, index, term = line.split()
                if word == "synced":
                    synced = (int(index), int(term))
                elif word == "snapshot":
                    snapshot = (int(index), int(term))
                elif word == "installed":
                    installed = (int(index), int(term))
                    seen_installs += 1
                if seen_installs >= 2:
                    extra -= 1
        finally:
            writer.send_signal(signal.SIGKILL)
            writer.wait()
        installs += seen_installs
        with Storage.open(
            db,
            segment_bytes=SEGMENT_BYTES,
            snapshots_dir=db / "snapshots",
            cluster_id=SNAPSHOT_CLUSTER,
        ) as storage:
            start = storage.snapshot_index
            assert storage.snapshot is not None and start >= max(snapshot[0], installed[0])
            assert storage.hard_state.term >= storage.snapshot_term
            assert [e.index for e in storage.entries] == list(
                range(start + 1, start + 1 + len(storage.entries))
            )
            terms = [storage.snapshot_term] + [e.term for e in storage.entries]
            assert terms == sorted(terms)
            for entry in storage.entries:
                assert entry.data == term_payload(entry.index, entry.term)
            assert max(start, storage.last_index) >= synced[0]
            if synced[0] > start:
                assert storage.entries[synced[0] - start - 1].term == synced[1]
            assert len(list((db / "wal").glob("*.wal"))) <= 8  # compaction keeps up
    assert installs >= 10
