"""A newcomer's attacks on the snapshot files of a running node (issue 13), as real processes.

Files that are not this node's valid snapshots can end up in ``snapshots_dir``: a backup
copied there by hand, another cluster's file, a damaged file. The node must skip them at start
(it does, with one WARNING each) and must never let them cost it its own valid snapshots: the
node's log is compacted behind those, so losing them loses committed entries, and the node
refuses to start.
"""

from __future__ import annotations

from pathlib import Path

from dengine_trio.config import load_config
from dengine_trio.storage.cluster_identity import load_cluster_id
from dengine_trio.storage.snapshots import (
    SnapshotError,
    list_snapshots,
    snapshot_name,
    verify_snapshot,
)
from tests.e2e.cluster import Cluster, Node, key_path, wait_until
from tests.e2e.test_snapshot_files import make_snapshot

WAIT_S = 60.0
"""Generous: interpreters start on a shared two-core machine."""

LOW_THRESHOLD = {
    "raft.snapshot.max_log_entries_before_snapshot": 10,
    "raft.snapshot.retained_log_entries": 0,
}


def put(node: Node, key: str, value: str) -> None:
    response = node.kv.post("/kv", json={"key": key, "value": value})
    assert response.status_code == 200, response.text


def value_of(node: Node, key: str) -> str | None:
    response = node.kv.get(key_path(key), params={"consistency": "eventual"})
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.text
    value: str = response.json()["value"]
    return value


def restart(cluster: Cluster, node: Node) -> None:
    node.terminate()
    assert node.wait() == 0, cluster.logs()
    node.stop_requested = False
    node.start(cluster.root)


def _valid_here(path: Path, cluster: Cluster) -> bool:
    config = load_config(cluster.nodes[0].config_path)
    try:
        # The cluster's id, persisted by the node (issue 14: not the configuration's).
        verify_snapshot(path, load_cluster_id(config.db_root_path()))
    except (SnapshotError, FileNotFoundError):  # deleted by the node's clean-up meanwhile
        return False
    return True


def valid_snapshots(snapshots: Path, cluster: Cluster) -> list[str] | None:
    """This node's valid snapshot files, or None (for wait_until: a clean-up may be under
    way right after the last write)."""
    valid = [f.path.name for f in list_snapshots(snapshots) if _valid_here(f.path, cluster)]
    return valid or None


def _plant(directory: Path) -> None:
    """Two files the node must not use, named ahead of anything it writes in this test: a
    damaged one, and a valid snapshot of another cluster (index 500): as many as it keeps."""
    (directory / snapshot_name(99_999, 1)).write_bytes(b"not a snapshot at all")
    make_snapshot(directory)


def test_invalid_files_named_newer_do_not_cost_the_node_its_snapshots(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, size=1, settings=LOW_THRESHOLD)
    node = cluster.nodes[0]
    snapshots = tmp_path / "db" / "1" / "snapshots"
    written: dict[str, str] = {}
    try:
        cluster.start()
        cluster.wait_for_leader()
        for i in range(30):
            put(node, f"a{i}", f"v{i}")
            written[f"a{i}"] = f"v{i}"
        wait_until(lambda: list_snapshots(snapshots) or None, WAIT_S, "a first snapshot")
        node.terminate()  # planted while the node is stopped
        assert node.wait() == 0, cluster.logs()
        _plant(snapshots)
        node.stop_requested = False
        node.start(cluster.root)
        cluster.wait_for_leader()  # both skipped at start (one WARNING each)
        # Several automatic snapshots, each followed by the clean-up; 100 KB values roll the
        # write-ahead log past a 4 MiB segment, so compaction drops the log's start.
        for i in range(60):
            value = f"{i}-" + "x" * 100_000
            put(node, f"b{i % 5}", value)
            written[f"b{i % 5}"] = value
        try:
            wait_until(lambda: valid_snapshots(snapshots, cluster), 10, "a valid snapshot")
        except AssertionError:
            names = sorted(p.name for p in snapshots.iterdir())
            raise AssertionError((names, cluster.logs())) from None
        restart(cluster, node)
        # "node 1 exited with 1" today, once the log no longer starts at index 1.
        cluster.wait_for_leader(WAIT_S)
        missing = [k for k, v in written.items() if value_of(node, k) != v]
        assert not missing, (missing, cluster.logs())
    finally:
        cluster.stop()


def test_invalid_files_planted_while_the_node_runs_do_not_cost_it_its_snapshots(
    tmp_path: Path,
) -> None:
    cluster = Cluster(tmp_path, size=1, settings=LOW_THRESHOLD)
    node = cluster.nodes[0]
    snapshots = tmp_path / "db" / "1" / "snapshots"
    written: dict[str, str] = {}
    try:
        cluster.start()
        cluster.wait_for_leader()
        for i in range(30):
            put(node, f"a{i}", f"v{i}")
            written[f"a{i}"] = f"v{i}"
        wait_until(lambda: list_snapshots(snapshots) or None, WAIT_S, "a first snapshot")
        _plant(snapshots)  # the node is running
        for i in range(60):  # as in the test above: snapshots, clean-ups, segments dropped
            value = f"{i}-" + "x" * 100_000
            put(node, f"b{i % 5}", value)
            written[f"b{i % 5}"] = value
        try:
            wait_until(lambda: valid_snapshots(snapshots, cluster), 10, "a valid snapshot")
        except AssertionError:
            names = sorted(p.name for p in snapshots.iterdir())
            raise AssertionError((names, cluster.logs())) from None
        restart(cluster, node)
        cluster.wait_for_leader(WAIT_S)
        missing = [k for k, v in written.items() if value_of(node, k) != v]
        assert not missing, (missing, cluster.logs())
    finally:
        cluster.stop()
