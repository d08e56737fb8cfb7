"""A newcomer's attacks on a follower's disk during InstallSnapshot (issue 13), real processes.

A follower that cannot store a snapshot (disk full, ``<snapshots_dir>/incoming`` not
creatable) refuses each transfer and the leader tries again at the next heartbeat answer, for
as long as the fault lasts. That much is right (and the follower catches up once the disk is
fixed), but every refused connection is a WARNING line on the follower: about twenty a second
with the shipped 50 ms heartbeat, for hours if nobody is there, on a machine whose disk is
likely the one that is full. The leader's side of the same fault is rate-limited (one line a
minute per peer and kind); the follower's must be too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from tests.e2e.cluster import Cluster, Node, wait_until

WAIT_S = 60.0
"""Generous: three interpreters on a shared two-core machine."""

LOW_THRESHOLD = {
    "raft.snapshot.max_log_entries_before_snapshot": 20,
    "raft.snapshot.retained_log_entries": 0,
}
REFUSALS = 40
"""Refused transfers to wait for: about two seconds of retries at the 50 ms heartbeat."""
REFUSAL_LINE = "closing snapshot connection"


def put(node: Node, key: str, value: str) -> None:
    response = node.kv.post("/kv", json={"key": key, "value": value})
    assert response.status_code == 200, response.text


def status(node: Node) -> dict[str, Any] | None:
    try:
        response = node.health.get("/status")
    except httpx.TransportError:  # still starting
        return None
    if response.status_code != 200:
        return None
    result: dict[str, Any] = response.json()
    return result


def refused(node: Node) -> int:
    current = status(node)
    return -1 if current is None else int(current["transport"]["snapshots"]["receives_refused"])


def test_a_follower_that_cannot_store_a_snapshot_does_not_flood_its_log(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, settings=LOW_THRESHOLD)
    try:
        cluster.start()
        leader = cluster.wait_for_leader()
        follower = cluster.followers(leader)[0]
        follower.terminate()
        assert follower.wait() == 0, cluster.logs()
        for i in range(60):  # the leader compacts past the follower's log
            put(leader, f"k{i}", f"v{i}")
        incoming = tmp_path / "db" / str(follower.node_id) / "snapshots" / "incoming"
        if incoming.is_dir():
            incoming.rmdir()  # empty: the node removes what is left there at start
        incoming.parent.mkdir(parents=True, exist_ok=True)
        incoming.write_bytes(b"")  # a regular file where the directory should be
        follower.stop_requested = False
        follower.start(cluster.root)
        wait_until(lambda: refused(follower) >= REFUSALS, WAIT_S, f"{REFUSALS} refusals")
        lines = follower.log_text().count(REFUSAL_LINE)
        assert lines <= 10, f"{lines} WARNING lines for {refused(follower)} refusals"
    finally:
        cluster.stop()


def test_a_follower_that_could_not_store_a_snapshot_catches_up_once_it_can(
    tmp_path: Path,
) -> None:
    """What held up: the refusals cost nothing durable; the next attempt after the fix works."""
    cluster = Cluster(tmp_path, settings=LOW_THRESHOLD)
    try:
        cluster.start()
        leader = cluster.wait_for_leader()
        follower = cluster.followers(leader)[0]
        follower.terminate()
        assert follower.wait() == 0, cluster.logs()
        for i in range(60):
            put(leader, f"k{i}", f"v{i}")
        incoming = tmp_path / "db" / str(follower.node_id) / "snapshots" / "incoming"
        if incoming.is_dir():
            incoming.rmdir()
        incoming.parent.mkdir(parents=True, exist_ok=True)
        incoming.write_bytes(b"")
        follower.stop_requested = False
        follower.start(cluster.root)
        wait_until(lambda: refused(follower) >= 3, WAIT_S, "refused transfers")
        incoming.unlink()
        leader_status = status(leader)
        assert leader_status is not None
        commit = leader_status["commit_index"]

        def caught_up() -> bool:
            current = status(follower)
            return current is not None and current["applied_index"] >= commit

        wait_until(caught_up, WAIT_S, "the follower to catch up")
        response = follower.kv.get("/kv/k59", params={"consistency": "eventual"})
        assert response.json() == {"value": "v59"}, response.text
    finally:
        cluster.stop()


def test_a_leader_whose_snapshot_files_vanished_still_brings_a_follower_up(
    tmp_path: Path,
) -> None:
    cluster = Cluster(tmp_path, settings=LOW_THRESHOLD)
    try:
        cluster.start()
        leader = cluster.wait_for_leader()
        follower = cluster.followers(leader)[0]
        follower.terminate()
        assert follower.wait() == 0, cluster.logs()
        for i in range(60):  # the leader compacts past the follower's log
            put(leader, f"k{i}", f"v{i}")
        snapshots = tmp_path / "db" / str(leader.node_id) / "snapshots"
        leader_status = status(leader)
        assert leader_status is not None
        commit = leader_status["commit_index"]

        def settled() -> bool:
            """The leader's last automatic snapshot is on disk and none is under way."""
            current = status(leader)
            if current is None or any(snapshots.glob(".snapshot-*")):
                return False
            due = (
                current["snapshot_index"]
                + LOW_THRESHOLD["raft.snapshot.max_log_entries_before_snapshot"]
            )
            newest = max((f.name for f in snapshots.glob("*.snap")), default="")
            on_disk = newest.startswith(f"snapshot-{current['snapshot_index']:020d}-")
            return due > current["applied_index"] and on_disk

        wait_until(settled, WAIT_S, "the leader's last snapshot")
        # Gone from under the running leader (a clean-up job, an operator's mistake).
        for file in snapshots.glob("*.snap"):
            file.unlink()
        follower.stop_requested = False
        follower.start(cluster.root)

        def caught_up() -> bool:
            current = status(follower)
            return current is not None and current["applied_index"] >= commit

        try:
            wait_until(caught_up, 30, "the follower to catch up (no new writes)")
        finally:
            lines = leader.log_text().count("kept disappearing")
        assert lines <= 10, f"{lines} WARNING lines on the leader"
    finally:
        cluster.stop()
