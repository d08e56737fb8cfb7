"""A node removed from its cluster serves nothing (issue 14, docs/operations.md): its state
machine no longer follows the cluster, so even an eventual read would answer stale data
forever. Once it knows it was removed, ``/replica`` answers 503 ``removed`` (a load balancer
drops it) and every KV read (any consistency) and write answers 503 JSON ``removed``.
Before, it went on answering eventual reads with what it held when it was removed."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.cluster import running_cluster, wait_until
from tests.e2e.membership import members_of, put


def test_a_removed_node_answers_503_removed_to_reads_writes_and_replica_probes(
    tmp_path: Path,
) -> None:
    with running_cluster(tmp_path) as cluster:
        leader = cluster.wait_for_leader()
        assert put(cluster.alive(), "k", "1")
        removed = next(n for n in cluster.nodes if n is not leader)
        wait_until(
            lambda: removed.kv.get("/kv/k", params={"consistency": "eventual"}).status_code == 200,
            10,
            "the follower to hold k",
        )
        response = leader.health.delete(f"/members/{removed.node_id}", timeout=30)
        assert response.status_code == 200, response.text
        assert put([leader], "k", "2")

        def knows_it() -> bool:
            view = members_of(removed)
            return view is not None and all(m["id"] != removed.node_id for m in view["members"])

        wait_until(knows_it, 20, f"node {removed.node_id} to see it was removed")
        replica = removed.health.get("/replica")
        assert replica.status_code == 503 and replica.json()["error"] == "removed", replica.text
        for consistency in ("eventual", "lease", "linearizable"):
            read = removed.kv.get("/kv/k", params={"consistency": consistency})
            assert read.status_code == 503, (consistency, read.text)
            assert read.json()["error"] == "removed", read.text
        write = removed.kv.post("/kv", json={"key": "k", "value": "3"})
        assert write.status_code == 503 and write.json()["error"] == "removed", write.text
        # The others serve on.
        assert put([leader], "k", "4")
