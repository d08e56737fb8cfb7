"""The membership in a snapshot file's header (format version 2, issue 14): written, verified,
returned by ``Storage.open`` and ``install_snapshot``; version 1 files still read, with no
membership."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import msgpack
import pytest

from dengine_trio.raft.membership import Member, Membership, encode_membership
from dengine_trio.raft.messages import Entry
from dengine_trio.storage import Storage
from dengine_trio.storage.snapshots import (
    FORMAT_VERSION,
    CorruptSnapshotError,
    ForeignSnapshotError,
    SnapshotHeader,
    SnapshotReceiver,
    SnapshotWriter,
    read_raw_chunk,
    verify_snapshot,
)

CLUSTER = "c-0123456789abcdef"
VOTERS = {1: "127.0.0.1:9081", 2: "127.0.0.1:9082"}
MEMBERSHIP = encode_membership(
    Membership(CLUSTER, (Member(1, VOTERS[1], True, "ab" * 16), Member(2, VOTERS[2], False)))
)


def write(directory: Path, index: int, term: int, membership: bytes | None) -> Path:
    header = SnapshotHeader(index, term, CLUSTER, VOTERS, membership=membership)
    with SnapshotWriter.create(directory, header) as writer:
        writer.write(b"image %d;" % index * 10)
        return writer.commit().path


def rewrite(path: Path, version: int, fields: dict[str, object]) -> None:
    """The file again with another version and header map, every CRC recomputed."""
    raw = path.read_bytes()
    (length,) = struct.unpack_from("<I", raw, 8)
    payload = raw[12 + length + 4 : -16]
    new_header = msgpack.packb(fields)
    start = struct.pack("<4sII", b"DTSN", version, len(new_header)) + new_header
    data = start + struct.pack("<I", zlib.crc32(start)) + payload
    data += struct.pack("<4sQ", b"DTSE", len(payload))
    path.write_bytes(data + struct.pack("<I", zlib.crc32(data)))


def v1_fields(index: int, term: int) -> dict[str, object]:
    return {
        "last_index": index,
        "last_term": term,
        "cluster_id": CLUSTER,
        "membership": {"voters": [[i, a] for i, a in VOTERS.items()]},
    }


def test_files_are_written_in_version_2_with_the_membership(tmp_path: Path) -> None:
    assert FORMAT_VERSION == 2
    path = write(tmp_path, 10, 2, MEMBERSHIP)
    assert struct.unpack_from("<I", path.read_bytes(), 4) == (2,)
    found = verify_snapshot(path, CLUSTER)
    assert found.header is not None and found.header.membership == MEMBERSHIP
    none = verify_snapshot(write(tmp_path, 11, 2, None), CLUSTER)
    assert none.header is not None and none.header.membership is None


def test_a_version_1_file_reads_with_no_membership(tmp_path: Path) -> None:
    path = write(tmp_path, 10, 2, MEMBERSHIP)
    rewrite(path, 1, v1_fields(10, 2))
    found = verify_snapshot(path, CLUSTER)
    assert found.header == SnapshotHeader(10, 2, CLUSTER, VOTERS)
    assert found.header.membership is None
    # A version 1 file with a "config" key (no such writer exists) is still read as version 1.
    rewrite(path, 1, {**v1_fields(10, 2), "config": MEMBERSHIP})
    assert verify_snapshot(path, CLUSTER).header == SnapshotHeader(10, 2, CLUSTER, VOTERS)


@pytest.mark.parametrize(
    "config",
    ["text", 5, [1], {"a": 1}, True, "missing", b"garbage", MEMBERSHIP[:-1],
     msgpack.packb([1, CLUSTER, [[2, "a", True, "", False], [1, "b", True, "", False]]])],
)  # fmt: skip
def test_a_version_2_header_with_a_bad_membership_field_is_damage(
    tmp_path: Path, config: object
) -> None:
    path = write(tmp_path, 10, 2, MEMBERSHIP)
    fields = v1_fields(10, 2)
    if config != "missing":
        fields["config"] = config
    rewrite(path, 2, fields)
    with pytest.raises(CorruptSnapshotError, match="undecodable header"):
        verify_snapshot(path, CLUSTER)


def test_a_membership_that_does_not_decode_is_refused_so_an_older_snapshot_is_used(
    tmp_path: Path,
) -> None:
    """A header whose CRC matches but whose membership does not decode (a bug, or a file
    written by hand) is damage: restart falls back to the older file, as for any damage."""
    db, snapshots = tmp_path / "db", tmp_path / "db" / "snapshots"
    with Storage.open(db, snapshots_dir=snapshots, cluster_id=CLUSTER) as storage:
        storage.append([Entry(term=1, index=i) for i in range(1, 13)])
    write(snapshots, 5, 1, MEMBERSHIP)
    bad = write(snapshots, 9, 1, MEMBERSHIP)
    rewrite(bad, 2, {**v1_fields(9, 1), "config": b"\x93\x01"})
    with Storage.open(db, snapshots_dir=snapshots, cluster_id=CLUSTER) as storage:
        assert storage.snapshot_index == 5 and storage.snapshot_membership == MEMBERSHIP
    assert bad.with_name(bad.name + ".rejected").exists()


def test_the_header_refuses_a_membership_that_is_not_bytes() -> None:
    with pytest.raises(TypeError):
        SnapshotHeader(1, 1, CLUSTER, VOTERS, membership="text")  # type: ignore[arg-type]
    # b"" is how InstallSnapshot and RestoreSnapshot say "none explicit".
    assert SnapshotHeader(1, 1, CLUSTER, VOTERS, membership=b"").membership is None


def test_storage_open_returns_the_chosen_snapshots_membership(tmp_path: Path) -> None:
    db, snapshots = tmp_path / "db", tmp_path / "db" / "snapshots"
    with Storage.open(db, snapshots_dir=snapshots, cluster_id=CLUSTER) as storage:
        assert storage.snapshot_membership is None  # no snapshot
    write(snapshots, 5, 1, encode_membership(Membership(CLUSTER, ())))
    write(snapshots, 9, 2, MEMBERSHIP)
    with Storage.open(db, snapshots_dir=snapshots, cluster_id=CLUSTER) as storage:
        assert (storage.snapshot_index, storage.snapshot_term) == (9, 2)
        assert storage.snapshot_membership == MEMBERSHIP
    rewrite(
        snapshots / "snapshot-00000000000000000009-00000000000000000002.snap", 1, v1_fields(9, 2)
    )
    with Storage.open(db, snapshots_dir=snapshots, cluster_id=CLUSTER) as storage:
        assert storage.snapshot_index == 9 and storage.snapshot_membership is None


def test_install_snapshot_takes_the_received_files_membership(tmp_path: Path) -> None:
    leader = write(tmp_path / "leader", 20, 3, MEMBERSHIP)
    db = tmp_path / "db"
    with Storage.open(db, snapshots_dir=db / "snapshots", cluster_id=CLUSTER) as storage:
        receiver = SnapshotReceiver.create(db / "snapshots" / "incoming")
        receiver.write_chunk(0, read_raw_chunk(leader, 0, 1 << 20))
        # A node with no cluster id yet (a joining node) verifies with None: any id.
        staged = receiver.finish(None, (20, 3))
        storage.install_snapshot(20, 3, staged=staged.path)
        assert storage.snapshot_membership == MEMBERSHIP
    with Storage.open(db, snapshots_dir=db / "snapshots", cluster_id=CLUSTER) as storage:
        assert storage.snapshot_membership == MEMBERSHIP


def test_install_snapshot_with_an_unreadable_header_keeps_the_log(tmp_path: Path) -> None:
    db = tmp_path / "db"
    with Storage.open(db, snapshots_dir=db / "snapshots", cluster_id=CLUSTER) as storage:
        storage.append([Entry(term=1, index=1)])
        path = write(db / "snapshots", 20, 3, MEMBERSHIP)
        path.write_bytes(b"DTSN" + path.read_bytes()[4:40])  # truncated in place
        with pytest.raises(CorruptSnapshotError):
            storage.install_snapshot(20, 3)
        assert storage.last_index == 1


def test_a_snapshot_taken_before_the_node_knew_its_cluster_is_its_own(tmp_path: Path) -> None:
    """A node writes cluster id "" in the snapshots it takes before it has learned its
    cluster's id (an implicit membership: a directory from before issue 14, before its first
    leader's configuration entry applied). Once it has persisted the id, those files must still
    restart it (with its log compacted behind them it could not start otherwise) and be
    accepted by a follower that knows the id. Another non-empty id is still refused."""
    db, snapshots = tmp_path / "db", tmp_path / "db" / "snapshots"
    header = SnapshotHeader(9, 2, "", VOTERS)
    with SnapshotWriter.create(snapshots, header) as writer:
        writer.write(b"image")
        path = writer.commit().path
    with Storage.open(db, snapshots_dir=snapshots, cluster_id=CLUSTER) as storage:
        assert storage.snapshot_index == 9
    receiver = SnapshotReceiver.create(tmp_path / "follower")
    receiver.write_chunk(0, read_raw_chunk(path, 0, 1 << 20))
    assert receiver.finish(CLUSTER, (9, 2)).last_index == 9
    write(tmp_path / "other", 9, 2, None)  # CLUSTER's file, checked against another id
    with pytest.raises(ForeignSnapshotError):
        verify_snapshot(tmp_path / "other" / path.name, "c-another")


def test_a_version_1_file_belongs_to_the_clusters_derived_from_its_id(tmp_path: Path) -> None:
    """A version 1 file carries the id the configuration used to be hashed into; since issue
    14 a cluster's id is generated from it (``<that id>-<hex>``). A pre-issue-14 directory
    must still restart from its snapshot once its node has persisted the generated id, and a
    leader must still be able to send it (tests/integration/test_upgrade_identity.py)."""
    path = write(tmp_path, 10, 2, None)
    rewrite(path, 1, {**v1_fields(10, 2), "cluster_id": "dengine-7d4e9f4a1abc"})
    assert verify_snapshot(path, "dengine-7d4e9f4a1abc-05c417550eba").last_index == 10
    for other in (
        "dengine-7d4e9f4a1abcd",
        "dengine-7d4e9f4a1ab-x",
        "other-05c417550eba",
        "dengine-7d4e9f4a1abc-",
        "dengine-7d4e9f4a1abc-r05c417550eba",  # a restored cluster starts from its backup alone
    ):
        with pytest.raises(ForeignSnapshotError):
            verify_snapshot(path, other)
    # Only version 1 files: no writer of version 2 names a configuration's id.
    v2 = write(tmp_path / "v2", 10, 2, None)
    rewrite(v2, 2, {**v1_fields(10, 2), "cluster_id": "dengine-7d4e9f4a1abc", "config": None})
    with pytest.raises(ForeignSnapshotError):
        verify_snapshot(v2, "dengine-7d4e9f4a1abc-05c417550eba")
