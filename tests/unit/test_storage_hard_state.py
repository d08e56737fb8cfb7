"""Hard state: atomic, checksummed, and never silently reset."""

from __future__ import annotations

from pathlib import Path

import pytest

from dengine_trio.storage import (
    CorruptHardStateError,
    HardState,
    Storage,
    load_hard_state,
    save_hard_state,
)
from dengine_trio.storage.hard_state import HARD_STATE_FILE


def test_missing_file_is_a_fresh_node(tmp_path: Path) -> None:
    assert load_hard_state(tmp_path) == HardState(term=0, voted_for=0)


def test_round_trip_and_overwrite(tmp_path: Path) -> None:
    save_hard_state(tmp_path, HardState(term=3, voted_for=2))
    assert load_hard_state(tmp_path) == HardState(term=3, voted_for=2)
    save_hard_state(tmp_path, HardState(term=2**63, voted_for=0))
    assert load_hard_state(tmp_path) == HardState(term=2**63, voted_for=0)
    # The temporary file was renamed over the real one, not left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == [HARD_STATE_FILE]


def test_leftover_temporary_file_is_ignored_and_replaced(tmp_path: Path) -> None:
    save_hard_state(tmp_path, HardState(term=4, voted_for=1))
    # What a crash in the middle of the next save leaves behind.
    (tmp_path / (HARD_STATE_FILE + ".tmp")).write_bytes(b"half a")
    assert load_hard_state(tmp_path) == HardState(term=4, voted_for=1)
    save_hard_state(tmp_path, HardState(term=5, voted_for=3))
    assert load_hard_state(tmp_path) == HardState(term=5, voted_for=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == [HARD_STATE_FILE]


@pytest.mark.parametrize("offset", [0, 4, 8, 16, 24, 27])
def test_flipped_byte_is_detected(tmp_path: Path, offset: int) -> None:
    save_hard_state(tmp_path, HardState(term=7, voted_for=3))
    path = tmp_path / HARD_STATE_FILE
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptHardStateError, match="checksum mismatch") as raised:
        load_hard_state(tmp_path)
    assert str(path) in str(raised.value)


@pytest.mark.parametrize("size", [0, 10, 27, 29])
def test_wrong_size_is_detected(tmp_path: Path, size: int) -> None:
    save_hard_state(tmp_path, HardState(term=7, voted_for=3))
    path = tmp_path / HARD_STATE_FILE
    raw = path.read_bytes()
    path.write_bytes((raw + b"\0")[:size])
    with pytest.raises(CorruptHardStateError, match=f"{size} bytes, expected 28"):
        load_hard_state(tmp_path)


def test_storage_keeps_hard_state_across_reopen(tmp_path: Path) -> None:
    with Storage.open(tmp_path / "db") as storage:
        assert storage.hard_state == HardState()
        storage.save_hard_state(term=9, voted_for=2)
        assert storage.hard_state == HardState(term=9, voted_for=2)
    with Storage.open(tmp_path / "db") as storage:
        assert storage.hard_state == HardState(term=9, voted_for=2)


def test_storage_refuses_to_open_with_corrupt_hard_state(tmp_path: Path) -> None:
    save_hard_state(tmp_path, HardState(term=1, voted_for=1))
    (tmp_path / HARD_STATE_FILE).write_bytes(b"\0" * 28)
    with pytest.raises(CorruptHardStateError):
        Storage.open(tmp_path)
    # The failed open let go of the directory.
    (tmp_path / HARD_STATE_FILE).unlink()
    Storage.open(tmp_path).close()
