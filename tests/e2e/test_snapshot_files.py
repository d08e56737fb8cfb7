"""``dengine-trio snapshot save|restore`` against bad input, as real processes.

Restore: a corrupt, truncated, unknown-version or foreign-format file, a missing one, and a data
directory that already holds a node's data are each refused with one line naming the file or
directory, exit 2, and nothing is applied. Save: a node-like HTTP server (real TCP, a thread of
this test) that serves a damaged, truncated or foreign snapshot: nothing is saved at FILE.
The happy paths against a real cluster are in ``test_snapshot_backup.py``.
"""

from __future__ import annotations

import http.server
import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from dengine_trio.config import NodeConfig
from dengine_trio.statemachine import KVStateMachine, encode_put
from dengine_trio.storage.cluster_identity import load_cluster_id
from dengine_trio.storage.hard_state import HardState, load_hard_state, save_hard_state
from dengine_trio.storage.node_identity import load_node_uuid, load_or_create_node_uuid
from dengine_trio.storage.snapshots import (
    SnapshotHeader,
    list_snapshots,
    verify_snapshot,
    write_snapshot,
)
from tests.e2e.cluster import free_ports, run_cli
from tests.support.cluster import write_cluster

KEYS = 200


def make_snapshot(directory: Path, cluster_id: str = "old-cluster-0123456789ab") -> Path:
    """A valid snapshot file of a KV state of :data:`KEYS` keys, index 500, term 7."""
    machine = KVStateMachine()
    for i in range(KEYS):
        machine.apply(i + 1, encode_put(f"k{i}".encode(), f"v{i}".encode()))
    header = SnapshotHeader(500, 7, cluster_id, {1: "10.0.0.1:9081", 2: "10.0.0.2:9081"})
    return write_snapshot(directory, header, machine.snapshot()).path


@pytest.fixture
def target(tmp_path: Path) -> list[NodeConfig]:
    """Config files of a three-node cluster under tmp_path/new, data dirs not yet created."""
    return write_cluster(tmp_path / "new", free_ports(3))


@pytest.fixture
def good(tmp_path: Path) -> Path:
    return make_snapshot(tmp_path / "backup")


def restore(file: Path, config: NodeConfig, cwd: Path) -> tuple[int, str, str]:
    done = run_cli(["snapshot", "restore", str(file), "--config-path", str(config.path)], cwd)
    return done.returncode, done.stdout, done.stderr


def assert_nothing_applied(config: NodeConfig) -> None:
    assert not (config.db_root_path() / "hard_state").exists()
    assert list_snapshots(config.snapshots_path()) == []


def damaged(good: Path, change: Callable[[bytearray], bytearray | bytes]) -> Path:
    data = bytearray(good.read_bytes())
    bad = good.with_name("damaged.snap")
    bad.write_bytes(change(data))
    return bad


def flip_payload_byte(data: bytearray) -> bytearray:
    data[len(data) // 2] ^= 0x40
    return data


def unknown_version(data: bytearray) -> bytearray:
    struct.pack_into("<I", data, 4, 99)
    return data


BAD_FILES = [
    ("corrupt", flip_payload_byte, "checksum mismatch"),
    ("truncated", lambda d: d[: len(d) - 100], "truncated"),
    ("cut-to-header", lambda d: d[:10], "truncated"),
    ("unknown-version", unknown_version, "format version 99"),
    ("not-a-snapshot", lambda d: b"SQLite format 3\x00" + bytes(d[16:]), "not a snapshot file"),
    ("empty", lambda d: b"", "truncated"),
]


@pytest.mark.parametrize(
    ("change", "problem"), [b[1:] for b in BAD_FILES], ids=[b[0] for b in BAD_FILES]
)
def test_restore_refuses_a_bad_file_with_one_line_and_applies_nothing(
    tmp_path: Path,
    good: Path,
    target: list[NodeConfig],
    change: Callable[[bytearray], bytearray | bytes],
    problem: str,
) -> None:
    bad = damaged(good, change)
    code, out, err = restore(bad, target[0], tmp_path)
    assert code == 2, (out, err)
    assert err.count("\n") == 1, err
    assert str(bad) in err and problem in err, err
    assert "Traceback" not in err and out == ""
    assert_nothing_applied(target[0])
    checked = run_cli(["snapshot", "status", str(bad)], tmp_path)
    assert checked.returncode == 2 and checked.stdout == "", checked.stdout
    assert checked.stderr.count("\n") == 1 and str(bad) in checked.stderr, checked.stderr
    assert problem in checked.stderr


def test_status_of_a_good_file_says_what_it_holds(tmp_path: Path, good: Path) -> None:
    checked = run_cli(["snapshot", "status", str(good)], tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout == (
        f"{good}: index 500, term 7, cluster old-cluster-0123456789ab, members "
        f"1=10.0.0.1:9081,2=10.0.0.2:9081, {good.stat().st_size} bytes: ok\n"
    )


def test_restore_of_a_snapshot_of_nothing_is_refused(
    tmp_path: Path, target: list[NodeConfig]
) -> None:
    empty = write_snapshot(
        tmp_path / "backup", SnapshotHeader(0, 0, "c-0", {1: "a:1"}), KVStateMachine().snapshot()
    ).path
    code, _, err = restore(empty, target[0], tmp_path)
    assert code == 2 and err.count("\n") == 1 and "nothing to restore" in err, err
    assert_nothing_applied(target[0])


def test_restore_of_a_missing_file_or_a_directory_is_one_line(
    tmp_path: Path, target: list[NodeConfig]
) -> None:
    for given, problem in ((tmp_path / "nope.snap", "No such file"), (tmp_path, "directory")):
        code, _, err = restore(given, target[0], tmp_path)
        assert code == 2 and err.count("\n") == 1 and str(given) in err and problem in err, err
        assert_nothing_applied(target[0])


@pytest.mark.parametrize("holding", ["hard_state", "wal", "snapshots"])
def test_restore_refuses_a_data_directory_that_is_not_empty(
    tmp_path: Path, good: Path, target: list[NodeConfig], holding: str
) -> None:
    config = target[1]
    db = config.db_root_path()
    db.mkdir(parents=True)
    if holding == "hard_state":
        save_hard_state(db, HardState(term=3, voted_for=2))
    elif holding == "wal":
        (db / "wal").mkdir()
        (db / "wal" / f"{1:020d}.wal").write_bytes(b"")
    else:
        make_snapshot(config.snapshots_path(), config.cluster_id())
    before = sorted(p.relative_to(db) for p in db.rglob("*"))
    code, out, err = restore(good, config, tmp_path)
    assert code == 2, (out, err)
    assert err.count("\n") == 1 and str(db) in err and "not empty" in err, err
    assert sorted(p.relative_to(db) for p in db.rglob("*") if p.name != "LOCK") == [
        p for p in before if p.name != "LOCK"
    ]
    if holding == "hard_state":
        assert load_hard_state(db) == HardState(term=3, voted_for=2)


def test_restore_seeds_each_node_for_the_target_cluster(
    tmp_path: Path, good: Path, target: list[NodeConfig]
) -> None:
    original = verify_snapshot(good, None)
    # Empty directories (a node started once and stopped) hold nothing to lose.
    (target[2].db_root_path() / "wal").mkdir(parents=True)
    (target[2].snapshots_path() / "incoming").mkdir(parents=True)
    # ... and the identity it then got: a leader may have bound it; the restored directory
    # gets a new one (storage/node_identity.py).
    started_once, _ = load_or_create_node_uuid(target[2].db_root_path())
    restored_ids = set()
    for config in target:
        code, out, err = restore(good, config, tmp_path)
        assert code == 0, err
        assert out.count("\n") == 1 and "index 500, term 7" in out, out
        (installed,) = list_snapshots(config.snapshots_path())
        # Rewritten for the new cluster: its id (the configuration's, bound to this file,
        # persisted in db_root_dir) and members, the same index, term and payload.
        cluster_id = load_cluster_id(config.db_root_path())
        assert cluster_id is not None and cluster_id.startswith(config.cluster_id() + "-r")
        restored_ids.add(cluster_id)
        checked = verify_snapshot(installed.path, cluster_id)
        assert checked.header is not None
        assert (checked.last_index, checked.last_term) == (500, 7)
        assert dict(checked.header.voters) == {
            p.id: p.address for p in config.cluster.initial_cluster
        }
        assert checked.payload_bytes == original.payload_bytes
        # A node's term is never below its log's last term (the snapshot's).
        assert load_hard_state(config.db_root_path()) == HardState(term=7, voted_for=0)
    assert len(restored_ids) == 1  # the same file: one cluster
    uuids = {load_node_uuid(config.db_root_path()) for config in target}
    assert None not in uuids and started_once not in uuids and len(uuids) == 3
    # Twice is refused: the directory now holds the restored node.
    code, _, err = restore(good, target[0], tmp_path)
    assert code == 2 and "not empty" in err


# ---------------------------------------------------------------------------------------------
# save: what a node-like server sends that must not end up at FILE


@contextmanager
def serving(
    body: bytes, headers: dict[str, str], cut_after: int | None = None, status: int = 200
) -> Iterator[str]:
    """An HTTP server on 127.0.0.1 answering GET /snapshot with ``status`` and ``body``;
    ``cut_after``: close the connection after that many bytes of it. Yields its URL."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body if cut_after is None else body[:cut_after])
            self.wfile.flush()
            self.close_connection = True

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def snapshot_headers(body: bytes, cluster_id: str, index: int = 500, term: int = 7) -> dict:
    return {
        "Content-Length": str(len(body)),
        "X-Dengine-Snapshot-Index": str(index),
        "X-Dengine-Snapshot-Term": str(term),
        "X-Dengine-Cluster-Id": cluster_id,
        "Content-Type": "application/octet-stream",
    }


CLUSTER = "old-cluster-0123456789ab"


def save(endpoints: list[str], file: Path, cwd: Path) -> tuple[int, str, str]:
    args = ["snapshot", "save", str(file)]
    for endpoint in endpoints:
        args += ["--endpoint", endpoint]
    done = run_cli(args, cwd)
    return done.returncode, done.stdout, done.stderr


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_save_writes_a_verified_file_from_the_first_endpoint_that_answers(
    tmp_path: Path, good: Path
) -> None:
    body = good.read_bytes()
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    dead = f"http://127.0.0.1:{free_ports(1)[0]}"
    with serving(body, snapshot_headers(body, CLUSTER)) as url:
        code, out, err = save([dead, url], out_dir / "backup.snap", tmp_path)
    assert code == 0, err
    assert out == f"saved {out_dir / 'backup.snap'}: index 500, term 7, {len(body)} bytes " \
        f"(from {url})\n"  # fmt: skip
    assert (out_dir / "backup.snap").read_bytes() == body
    assert leftovers(out_dir) == ["backup.snap"]


SAVE_REFUSALS = [
    # (name, change to the body, headers' cluster id, exit status, words of the line)
    ("corrupt", flip_payload_byte, CLUSTER, 2, "checksum mismatch"),
    ("unknown-version", unknown_version, CLUSTER, 2, "format version 99"),
    ("foreign", lambda d: d, "other-cluster-ffffffffffff", 2, "of another cluster"),
]


@pytest.mark.parametrize(
    ("change", "cluster_id", "status", "problem"),
    [r[1:] for r in SAVE_REFUSALS],
    ids=[r[0] for r in SAVE_REFUSALS],
)
def test_save_refuses_a_bad_download_and_leaves_no_file(
    tmp_path: Path,
    good: Path,
    change: Callable[[bytearray], bytearray],
    cluster_id: str,
    status: int,
    problem: str,
) -> None:
    body = bytes(change(bytearray(good.read_bytes())))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "backup.snap").write_bytes(b"the previous backup")
    with serving(body, snapshot_headers(body, cluster_id)) as url:
        code, out, err = save([url], out_dir / "backup.snap", tmp_path)
    assert code == status, (out, err)
    assert err.count("\n") == 1 and str(out_dir / "backup.snap") in err and problem in err, err
    # Nothing replaced the previous file, and no temporary file is left.
    assert (out_dir / "backup.snap").read_bytes() == b"the previous backup"
    assert leftovers(out_dir) == ["backup.snap"]


def test_save_of_a_download_cut_short_saves_nothing(tmp_path: Path, good: Path) -> None:
    body = good.read_bytes()
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with serving(body, snapshot_headers(body, CLUSTER), cut_after=len(body) // 2) as url:
        code, _, err = save([url], out_dir / "backup.snap", tmp_path)
    assert code == 1, err
    assert err.count("\n") == 1 and "cut short" in err and url in err, err
    assert leftovers(out_dir) == []


def test_save_with_no_endpoint_answering_is_one_line(tmp_path: Path) -> None:
    dead = [f"http://127.0.0.1:{port}" for port in free_ports(2)]
    code, _, err = save(dead, tmp_path / "backup.snap", tmp_path)
    assert code == 1
    assert err.count("\n") == 1 and all(d in err for d in dead) and "unreachable" in err, err
    assert not (tmp_path / "backup.snap").exists()


def test_save_from_a_kv_port_says_to_use_the_health_port(tmp_path: Path) -> None:
    with serving(b'{"error":"not_found","message":"no such route"}', {}, status=404) as url:
        code, _, err = save([url], tmp_path / "backup.snap", tmp_path)
    assert code == 1 and err.count("\n") == 1, err
    assert "HTTP 404 not_found" in err and "takes a health port" in err, err
