"""The Storage facade: one directory, one lock, hard state and log together."""

from __future__ import annotations

from pathlib import Path

import pytest

from dengine_trio.raft.membership import Member, Membership, encode_membership
from dengine_trio.raft.messages import Entry, EntryKind
from dengine_trio.storage import (
    CorruptLogError,
    HardState,
    Storage,
    StorageError,
    StorageLockedError,
)


def test_open_creates_the_layout_and_round_trips(tmp_path: Path) -> None:
    db = tmp_path / "db" / "1"
    written = [Entry(term=1, index=1, kind=EntryKind.NOOP)] + [
        Entry(term=1, index=i, data=b"put k%d" % i) for i in range(2, 6)
    ]
    with Storage.open(db, segment_bytes=128) as storage:
        assert storage.entries == []
        assert storage.hard_state == HardState()
        assert storage.last_index == 0
        storage.save_hard_state(term=1, voted_for=1)
        storage.append(written[:2])
        storage.append(written[2:])
        assert storage.sync() == (5, 1)
        assert storage.last_index == 5
    assert sorted(p.name for p in db.iterdir()) == ["LOCK", "hard_state", "node_uuid", "wal"]

    storage = Storage.open(db, segment_bytes=128)
    assert storage.entries == written
    assert storage.hard_state == HardState(term=1, voted_for=1)
    storage.close()
    storage.close()
    with pytest.raises(StorageError):
        storage.append([Entry(term=1, index=6)])


def test_close_makes_unsynced_appends_durable(tmp_path: Path) -> None:
    storage = Storage.open(tmp_path)
    storage.append([Entry(term=2, index=1, data=b"a")])
    storage.close()
    with Storage.open(tmp_path) as storage:
        assert storage.entries == [Entry(term=2, index=1, data=b"a")]


def test_failed_recovery_releases_the_directory(tmp_path: Path) -> None:
    with Storage.open(tmp_path, segment_bytes=64) as storage:
        for index in range(1, 30):
            storage.append([Entry(term=1, index=index, data=b"x" * 20)])
    first_segment = sorted((tmp_path / "wal").glob("*.wal"))[0]
    raw = bytearray(first_segment.read_bytes())
    raw[-1] ^= 0xFF
    first_segment.write_bytes(bytes(raw))
    # Twice: the second attempt would meet StorageLockedError if the first kept the lock.
    for _ in range(2):
        with pytest.raises(CorruptLogError):
            Storage.open(tmp_path, segment_bytes=64)


def test_error_classes_share_a_base() -> None:
    for error in (CorruptLogError, StorageLockedError):
        assert issubclass(error, StorageError)


def test_config_entries_survive_a_restart_as_config_entries(tmp_path: Path) -> None:
    """Issue 14: a membership is persisted in the log as a CONFIG entry (kind 2 on disk)."""
    config = encode_membership(Membership("c-1", (Member(1, "127.0.0.1:9081", True, "ab" * 16),)))
    written = [
        Entry(term=1, index=1, kind=EntryKind.NOOP),
        Entry(term=1, index=2, data=config, kind=EntryKind.CONFIG),
        Entry(term=1, index=3, data=b"put"),
    ]
    with Storage.open(tmp_path) as storage:
        storage.append(written)
    with Storage.open(tmp_path) as storage:
        assert storage.entries == written
        assert [type(e.kind) for e in storage.entries] == [EntryKind] * 3
