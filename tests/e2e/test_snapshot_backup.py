"""Snapshots with real node processes: backup and restore (``dengine-trio snapshot save`` /
``restore``, ``GET /snapshot``) and a follower that catches up by InstallSnapshot.

- A snapshot saved from a running cluster, restored into every node of a NEW three-node
  cluster (other ports, so another cluster id), makes that cluster serve every key as it was,
  deletions included, and accept writes; restoring over a running node's directory is refused.
- A follower down while the leader writes and compacts well past the follower's log (a low
  ``max_log_entries_before_snapshot`` in its TOML) comes back and catches up: the leader no
  longer holds the entries it misses, so only a snapshot can bring it there.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import httpx

from dengine_trio.statemachine import KVStateMachine
from dengine_trio.storage.snapshots import restore_snapshot, verify_snapshot
from tests.e2e.cluster import Cluster, Node, free_ports, key_path, run_cli, wait_until
from tests.e2e.test_snapshot_files import KEYS, make_snapshot

WAIT_S = 60.0
"""Generous: three interpreters on a shared two-core machine."""


def put(node: Node, key: str, value: str) -> None:
    response = node.kv.post("/kv", json={"key": key, "value": value})
    assert response.status_code == 200, response.text


def delete(node: Node, key: str) -> None:
    assert node.kv.delete(key_path(key)).status_code == 200


def value_of(node: Node, key: str, consistency: str) -> str | None:
    response = node.kv.get(key_path(key), params={"consistency": consistency})
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.text
    value: str = response.json()["value"]
    return value


def status(node: Node) -> dict[str, Any]:
    response = node.health.get("/status")
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def expected_state(keys: int) -> dict[str, str | None]:
    """What ``write_workload(keys)`` leaves: every key written twice, every 10th deleted."""
    return {f"key-{i}": None if i % 10 == 0 else f"second-{i}" for i in range(keys)}


def write_workload(node: Node, keys: int) -> None:
    for round_ in ("first", "second"):
        for i in range(keys):
            put(node, f"key-{i}", f"{round_}-{i}")
    for i in range(0, keys, 10):
        delete(node, f"key-{i}")


def serves(node: Node, state: dict[str, str | None], consistency: str) -> bool:
    return all(value_of(node, key, consistency) == value for key, value in state.items())


def test_save_then_restore_into_a_new_cluster_serves_every_key(tmp_path: Path) -> None:
    keys = 150
    state = expected_state(keys)
    backup = tmp_path / "backup.snap"
    old = Cluster(tmp_path / "old")
    try:
        old.start()
        leader = old.wait_for_leader()
        write_workload(leader, keys)
        follower = old.followers(leader)[0]
        dead = f"http://127.0.0.1:{free_ports(1)[0]}"
        # From a follower, with a dead endpoint first: the first that answers wins, and the
        # linearizable barrier makes the follower's snapshot hold every acknowledged write.
        saved = run_cli(
            [
                "snapshot", "save", str(backup),
                "--endpoint", dead,
                "--endpoint", f"http://127.0.0.1:{follower.health_port}",
            ],
            tmp_path,
        )  # fmt: skip
        assert saved.returncode == 0, saved.stderr + old.logs()
        assert saved.stdout.startswith(f"saved {backup}: index "), saved.stdout
        assert saved.stdout.count("\n") == 1
        old_cluster_id = status(leader).get("cluster_id")
    finally:
        old.stop()
    snapshot = verify_snapshot(backup, None)
    assert snapshot.last_index >= 2 * keys + keys // 10
    assert snapshot.header is not None
    if old_cluster_id is not None:
        assert snapshot.header.cluster_id == old_cluster_id

    # Disaster: every data directory is gone. A new cluster, on other ports.
    new = Cluster(tmp_path / "new")
    for node in new.nodes:
        restored = run_cli(
            ["snapshot", "restore", str(backup), "--config-path", str(node.config_path)],
            tmp_path,
        )
        assert restored.returncode == 0, restored.stderr
        assert f"index {snapshot.last_index}, term {snapshot.last_term}" in restored.stdout
    try:
        new.start()
        leader = new.wait_for_leader()
        for node in new.nodes:
            assert serves(node, state, "linearizable"), f"node {node.node_id}\n{new.logs()}"
        # Every node holds the data itself (not only through the leader's read index).
        for node in new.nodes:
            wait_until(partial(serves, node, state, "eventual"), WAIT_S, "eventual reads")
        put(leader, "after-restore", "yes")
        for node in new.nodes:
            assert value_of(node, "after-restore", "linearizable") == "yes"
        # A running node's directory is locked: restoring over it is refused, nothing changed.
        refused = run_cli(
            ["snapshot", "restore", str(backup), "--config-path", str(leader.config_path)],
            tmp_path,
        )
        assert refused.returncode == 2, refused.stdout
        assert refused.stderr.count("\n") == 1 and "in use" in refused.stderr, refused.stderr
        assert value_of(leader, "after-restore", "linearizable") == "yes"
    finally:
        new.stop()


def test_snapshot_endpoint_answers_a_file_with_its_index_and_term(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path)
    try:
        cluster.start()
        leader = cluster.wait_for_leader()
        put(leader, "a", "1")
        response = leader.health.get("/snapshot")
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/octet-stream"
        assert int(response.headers["content-length"]) == len(response.content)
        index = int(response.headers["x-dengine-snapshot-index"])
        term = int(response.headers["x-dengine-snapshot-term"])
        file = tmp_path / "got.snap"
        file.write_bytes(response.content)
        checked = verify_snapshot(file, response.headers["x-dengine-cluster-id"])
        assert (checked.last_index, checked.last_term) == (index, term)
        assert index >= status(leader)["commit_index"] - 1 >= 1
        bad = leader.health.get("/snapshot", params={"consistency": "strong"})
        assert bad.status_code == 400 and bad.json()["error"] == "invalid_consistency"
    finally:
        cluster.stop()


LOW_THRESHOLD = {
    "raft.snapshot.max_log_entries_before_snapshot": 50,
    "raft.snapshot.retained_log_entries": 10,
}


def test_a_follower_down_while_the_log_is_compacted_catches_up_by_snapshot(
    tmp_path: Path,
) -> None:
    keys = 120
    state = expected_state(keys)
    cluster = Cluster(tmp_path, settings=LOW_THRESHOLD)
    try:
        cluster.start()
        leader = cluster.wait_for_leader()
        put(leader, "before", "down")
        follower = cluster.followers(leader)[0]
        wait_until(lambda: value_of(follower, "before", "eventual") == "down", WAIT_S, "apply")
        behind = status(follower)["applied_index"]
        follower.kill()
        write_workload(leader, keys)
        # The leader compacted past what the follower holds: AppendEntries cannot help it.
        compacted = (
            status(leader)["snapshot_index"] - LOW_THRESHOLD["raft.snapshot.retained_log_entries"]
        )
        assert compacted > behind + 1, (compacted, behind)
        follower.stop_requested = False
        follower.start(cluster.root)
        commit = status(leader)["commit_index"]
        try:
            wait_until(lambda: _applied(follower) >= commit, WAIT_S, "the follower to catch up")
        except AssertionError as exc:
            raise AssertionError(f"{exc} (applied {_applied(follower)} of {commit})\n"
                                 f"{cluster.logs()}") from None  # fmt: skip
        assert serves(follower, state, "eventual"), cluster.logs()
        assert status(follower)["snapshot_index"] > behind
        # And it keeps following: a new write reaches it through the log.
        put(leader, "after", "up")
        wait_until(lambda: value_of(follower, "after", "eventual") == "up", WAIT_S, "apply")
    finally:
        cluster.stop()


def _applied(node: Node) -> int:
    try:
        response = node.health.get("/status")
    except httpx.TransportError:  # still starting
        return -1
    if response.status_code != 200:
        return -1
    applied: int = response.json().get("applied_index", -1)
    return applied


def test_a_node_without_a_majority_saves_only_when_asked_for_eventual(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, settings={"raft.timing.request_timeout_ms": 1500})
    try:
        cluster.start()
        leader = cluster.wait_for_leader()
        put(leader, "kept", "yes")
        survivor = cluster.followers(leader)[0]
        wait_until(lambda: value_of(survivor, "kept", "eventual") == "yes", WAIT_S, "apply")
        for node in cluster.nodes:
            if node is not survivor:
                node.kill()
        # Linearizable (the default): no leader can confirm it, a JSON error, no file.
        response = survivor.health.get("/snapshot")
        assert response.status_code in (503, 504), response.text
        assert response.json()["error"] in ("no_leader", "timeout"), response.text
        backup = tmp_path / "minority.snap"
        endpoint = f"http://127.0.0.1:{survivor.health_port}"
        refused = run_cli(["snapshot", "save", str(backup), "--endpoint", endpoint], tmp_path)
        assert refused.returncode == 1, refused.stdout
        assert refused.stderr.count("\n") == 1 and endpoint in refused.stderr, refused.stderr
        assert not backup.exists()
        # Eventual: what this node has applied, which holds the write it saw.
        saved = run_cli(
            ["snapshot", "save", str(backup), "--endpoint", endpoint, "--consistency", "eventual"],
            tmp_path,
        )
        assert saved.returncode == 0, saved.stderr
        machine = KVStateMachine()
        checked = verify_snapshot(backup, None)
        assert checked.header is not None
        header = restore_snapshot(backup, checked.header.cluster_id, machine)
        assert machine.get(b"kept") == b"yes" and header.last_index >= 2
    finally:
        cluster.stop()


def test_a_backup_seeds_a_cluster_of_other_members(tmp_path: Path) -> None:
    """The header is rewritten for the target: a file of a two-member cluster on other
    addresses seeds a single node, which serves its keys and takes writes."""
    backup = make_snapshot(tmp_path / "backup")  # cluster "old-...", members 10.0.0.1-2
    single = Cluster(tmp_path / "single", size=1)
    node = single.nodes[0]
    restored = run_cli(
        ["snapshot", "restore", str(backup), "--config-path", str(node.config_path)], tmp_path
    )
    assert restored.returncode == 0, restored.stderr
    try:
        single.start()
        single.wait_for_leader()
        assert all(value_of(node, f"k{i}", "linearizable") == f"v{i}" for i in range(KEYS))
        assert status(node)["commit_index"] > 500  # the log goes on after the snapshot's index
        put(node, "new", "member")
        assert value_of(node, "new", "eventual") == "member"
    finally:
        single.stop()
