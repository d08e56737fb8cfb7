"""``<db_root_dir>/node_uuid`` (dengine_trio/storage/node_identity.py): the identity of a data
directory, which a membership binds a member to (issue 14)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from dengine_trio.raft.messages import Entry
from dengine_trio.storage import Storage, StorageError
from dengine_trio.storage.node_identity import (
    NODE_UUID_FILE,
    CorruptNodeUuidError,
    load_node_uuid,
    load_or_create_node_uuid,
    new_node_uuid,
)


def test_the_first_open_creates_a_uuid_that_later_opens_keep(tmp_path: Path) -> None:
    db = tmp_path / "db"
    with Storage.open(db) as storage:
        first = storage.node_uuid
        storage.save_hard_state(term=3, voted_for=2)
    assert len(first) == 32 and int(first, 16) >= 0
    assert (db / NODE_UUID_FILE).read_text() == first + "\n"
    with Storage.open(db) as storage:
        assert storage.node_uuid == first


def test_a_wiped_directory_gets_another_uuid(tmp_path: Path) -> None:
    db = tmp_path / "db"
    with Storage.open(db) as storage:
        old = storage.node_uuid
        storage.append([Entry(term=1, index=1)])
    shutil.rmtree(db)
    with Storage.open(db) as storage:
        assert storage.node_uuid != old


def test_a_directory_with_data_but_no_uuid_gets_one(tmp_path: Path) -> None:
    # A directory of an older version: it keeps its data, and gets an identity at this open.
    with Storage.open(tmp_path) as storage:
        storage.append([Entry(term=1, index=1)])
    (tmp_path / NODE_UUID_FILE).unlink()
    with Storage.open(tmp_path) as storage:
        assert storage.entries == [Entry(term=1, index=1)]
        assert load_node_uuid(tmp_path) == storage.node_uuid


def test_a_leftover_temporary_file_is_replaced(tmp_path: Path) -> None:
    (tmp_path / (NODE_UUID_FILE + ".tmp")).write_bytes(b"\x00garbage of a crash")
    made, created = load_or_create_node_uuid(tmp_path)
    assert created and load_or_create_node_uuid(tmp_path) == (made, False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [NODE_UUID_FILE]


@pytest.mark.parametrize(
    "content",
    [b"", b"\n", b"0123", b"g" * 32, b"0" * 31, b"0" * 33, b"A" * 32, b"0" * 32 + b"\n" * 40,
     b"\xff" * 32],
)  # fmt: skip
def test_a_damaged_file_stops_the_open_naming_it(tmp_path: Path, content: bytes) -> None:
    (tmp_path / NODE_UUID_FILE).write_bytes(content)
    for _ in range(2):  # the lock is released: the second attempt meets the same error
        with pytest.raises(CorruptNodeUuidError, match=str(tmp_path / NODE_UUID_FILE)) as caught:
            Storage.open(tmp_path)
        assert isinstance(caught.value, StorageError)
        assert "\n" not in str(caught.value)
    assert (tmp_path / NODE_UUID_FILE).read_bytes() == content  # never replaced silently


def test_a_new_uuid_replaces_the_old_one_durably(tmp_path: Path) -> None:
    # What `snapshot restore` does to the directory it seeds: a damaged file is replaced too.
    old, _ = load_or_create_node_uuid(tmp_path)
    fresh = new_node_uuid(tmp_path)
    assert fresh != old and load_node_uuid(tmp_path) == fresh
    (tmp_path / NODE_UUID_FILE).write_bytes(b"damaged")
    replaced = new_node_uuid(tmp_path)
    assert load_node_uuid(tmp_path) == replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == [NODE_UUID_FILE]
