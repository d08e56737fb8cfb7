"""A newcomer's disaster recovery gone slightly wrong (issue 13), as real processes.

docs/operations.md: "Every node must be restored from the SAME file". An hourly cron job
writes a new backup each hour; an operator who picks "the latest" for each node in turn, across
the hour, restores one node from a newer file than the others. Nothing refuses that today:
restore rewrites every header to the same target cluster id, the nodes link up, and the node
restored from the newer file holds applied entries the others never had. The leader's
AppendEntries at indexes that node's snapshot covers are answered with success (Figure 13:
entries at or below its commit index are committed, so they must be the leader's), so the
leader counts it in the majority for entries it does not hold, and it serves, even to a
linearizable read, keys that the cluster's committed state does not have.

What would hold: restore binds the new cluster to the file (e.g. the cluster id also names the
snapshot's index, term and checksum), so nodes restored from different files refuse each other
at the handshake, with one line naming the mismatch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from dengine_trio.storage.snapshots import list_snapshots
from tests.e2e.cluster import Cluster, Node, free_ports, key_path, run_cli, wait_until
from tests.e2e.test_snapshot_files import make_snapshot
from tests.support.cluster import write_cluster

WAIT_S = 60.0


def put(node: Node, key: str, value: str) -> None:
    response = node.kv.post("/kv", json={"key": key, "value": value})
    assert response.status_code == 200, response.text


def linearizable(node: Node, key: str) -> tuple[int, str | None]:
    response = node.kv.get(key_path(key), params={"consistency": "linearizable"})
    value = response.json().get("value") if response.status_code == 200 else None
    return response.status_code, value


def status(node: Node) -> Any:
    try:
        response = node.health.get("/status")
    except httpx.TransportError:  # still starting
        return None
    return response.json() if response.status_code == 200 else None


def save(cluster: Cluster, file: Path) -> None:
    endpoints = []
    for node in cluster.nodes:
        endpoints += ["--endpoint", f"http://127.0.0.1:{node.health_port}"]
    done = run_cli(["snapshot", "save", *endpoints, str(file)], cluster.root)
    assert done.returncode == 0, done.stderr


def test_nodes_restored_from_different_backups_do_not_form_a_silently_divergent_cluster(
    tmp_path: Path,
) -> None:
    cluster = Cluster(tmp_path)
    older, newer = tmp_path / "older.snap", tmp_path / "newer.snap"
    try:
        cluster.start()
        leader = cluster.wait_for_leader()
        put(leader, "in-both", "1")
        save(cluster, older)
        put(leader, "only-in-newer", "2")
        save(cluster, newer)
    finally:
        cluster.stop()
    (tmp_path / "db").rename(tmp_path / "db.lost")
    files = {1: older, 2: older, 3: newer}  # node 3 restored "an hour later"
    for node in cluster.nodes:
        config = str(node.config_path)
        done = run_cli(["snapshot", "restore", str(files[node.node_id]), "--config-path", config],
                       tmp_path)  # fmt: skip
        assert done.returncode == 0, done.stderr
    restarted = Cluster.__new__(Cluster)
    restarted.root, restarted.nodes = (
        tmp_path,
        [Node(n.node_id, n.config_path, n.port, n.health_port) for n in cluster.nodes],
    )
    try:
        first_two, third = restarted.nodes[:2], restarted.nodes[2]
        for node in first_two:  # they elect a leader of the older state first
            node.start(tmp_path)
        third.stop_requested = True  # not started yet: wait_for_leader skips it
        leader = restarted.wait_for_leader(WAIT_S)
        third.stop_requested = False
        third.start(tmp_path)
        put(leader, "after", "3")
        after = status(leader)["commit_index"]

        def settled() -> bool:
            """Node 3 linked and replicating, or a handshake between them refused."""
            mine, theirs = status(leader), status(third)
            if mine is None or theirs is None:
                return False
            peer, me = str(third.node_id), str(leader.node_id)
            refused = mine["transport"]["peers"][peer]["refusals"] > 0 or (
                theirs["transport"]["peers"][me]["refusals"] > 0
            )
            return refused or mine["peers"][peer]["match_index"] >= after

        wait_until(settled, WAIT_S, "node 3 to replicate or be refused")
        # Refused at the handshake (what would hold): node 3 never links, so it has no leader
        # and cannot answer linearizably. Today it answers with its own state.
        assert linearizable(leader, "only-in-newer") == (404, None)
        code, value = linearizable(third, "only-in-newer")
        assert (code, value) != (200, "2"), restarted.logs()
    finally:
        restarted.stop()


def test_a_restore_interrupted_mid_copy_can_be_run_again(tmp_path: Path) -> None:
    backup = make_snapshot(tmp_path / "backup")
    (config,) = write_cluster(tmp_path / "new", free_ports(1))
    snapshots = config.snapshots_path()
    snapshots.mkdir(parents=True)
    # What SnapshotWriter leaves when the process dies before its rename (TEMPORARY_PREFIX).
    (snapshots / ".snapshot-interrupted.tmp").write_bytes(backup.read_bytes()[:100])
    args = ["snapshot", "restore", str(backup), "--config-path", str(config.path)]
    done = run_cli(args, tmp_path / "new")
    assert done.returncode == 0, done.stderr
    assert [s.last_index for s in list_snapshots(snapshots)] == [500]
