"""``<db_root_dir>/cluster_id`` (dengine_trio/storage/cluster_identity.py): the persisted id of
a restored cluster."""

from __future__ import annotations

from pathlib import Path

import pytest

from dengine_trio.storage import StorageError
from dengine_trio.storage.cluster_identity import (
    CLUSTER_ID_FILE,
    ClusterIdMismatchError,
    CorruptClusterIdError,
    load_cluster_id,
    persist_cluster_id,
    restored_cluster_id,
    save_cluster_id,
)


def test_a_directory_without_the_file_has_no_persisted_id(tmp_path: Path) -> None:
    assert load_cluster_id(tmp_path) is None
    assert load_cluster_id(tmp_path / "missing") is None


def test_the_id_survives_a_replacement_and_leaves_no_temporary(tmp_path: Path) -> None:
    save_cluster_id(tmp_path, "a-1", origin="restore", detail={"x": 1})
    save_cluster_id(tmp_path, "a-2", origin="bootstrap")
    assert load_cluster_id(tmp_path) == "a-2"
    assert sorted(p.name for p in tmp_path.iterdir()) == [CLUSTER_ID_FILE]


@pytest.mark.parametrize(
    "content",
    [b"", b"{", b"[]", b'{"format": 2, "cluster_id": "x"}', b'{"format": 1, "cluster_id": ""}',
     b" " * 70_000],
)  # fmt: skip
def test_a_damaged_file_is_refused_naming_it(tmp_path: Path, content: bytes) -> None:
    (tmp_path / CLUSTER_ID_FILE).write_bytes(content)
    with pytest.raises(CorruptClusterIdError, match=str(tmp_path / CLUSTER_ID_FILE)) as caught:
        load_cluster_id(tmp_path)
    assert isinstance(caught.value, StorageError)  # the node refuses to start, one line


def test_the_restored_id_is_bound_to_the_backup_file() -> None:
    source = {"cluster_id": "old-1", "last_index": 500, "last_term": 7, "crc32": 1234}
    same = restored_cluster_id("new-abc", dict(source))
    assert same == restored_cluster_id("new-abc", source)
    assert same.startswith("new-abc-r")
    for key, other in (("last_index", 501), ("last_term", 8), ("crc32", 1235), ("cluster_id", "o")):
        assert restored_cluster_id("new-abc", {**source, key: other}) != same


def test_a_learned_id_is_written_once_and_another_is_refused_in_one_line(tmp_path: Path) -> None:
    assert persist_cluster_id(tmp_path, "c-1", origin="learned") is True
    assert persist_cluster_id(tmp_path, "c-1", origin="learned") is False
    before = (tmp_path / CLUSTER_ID_FILE).read_bytes()
    with pytest.raises(ClusterIdMismatchError) as caught:
        persist_cluster_id(tmp_path, "c-2", origin="learned")
    assert isinstance(caught.value, StorageError)
    message = str(caught.value)
    assert "\n" not in message and "'c-1'" in message and "'c-2'" in message
    assert str(tmp_path / CLUSTER_ID_FILE) in message
    assert (tmp_path / CLUSTER_ID_FILE).read_bytes() == before
    assert load_cluster_id(tmp_path) == "c-1"


def test_a_restored_id_is_kept_when_the_cluster_brings_the_same(tmp_path: Path) -> None:
    save_cluster_id(tmp_path, "c-r1", origin="restore", detail={"source": {}})
    before = (tmp_path / CLUSTER_ID_FILE).read_bytes()
    assert persist_cluster_id(tmp_path, "c-r1", origin="bootstrap") is False
    assert (tmp_path / CLUSTER_ID_FILE).read_bytes() == before  # its origin stays "restore"
    with pytest.raises(ValueError):
        persist_cluster_id(tmp_path, "", origin="learned")
