"""Newcomer reproducer (issue 14: "a removed node stops campaigning and cannot disrupt the
cluster"). A leader replicates to a member it removes only until the removal commits (raft
``_departing``), and the transport closes that member's link when it commits, dropping the
frames still queued for it; from then on the others refuse its links ("node N is not a
member of cluster ... (removed?)"), and nothing tells the removed node. A follower that is
slow or paused while it is removed (the usual reason to remove a node), so that the
leader's replication to it is paused (in-flight window full), never learns it:
it stays a voter in its own membership, campaigns (``pre_candidate``) for as long as it runs,
answers ``GET /members`` with itself a voter of a cluster with no leader. (Seen without any
pause too, 3 removals out of 3 on the shipped five-node walk-through.) etcd tells such a
member at the handshake that it was removed, and it stops."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from tests.e2e.cluster import running_cluster, wait_until
from tests.e2e.membership import members_of, put

PAUSED_WRITES = 200


def test_a_follower_removed_while_paused_learns_it_and_stops_campaigning(
    tmp_path: Path,
) -> None:
    with running_cluster(tmp_path) as cluster:
        leader = cluster.wait_for_leader()
        assert put(cluster.alive(), "k", "1")
        removed = next(n for n in cluster.nodes if n is not leader)
        assert removed.proc is not None
        removed.proc.send_signal(signal.SIGSTOP)
        try:
            # More writes than the leader keeps in flight to one follower (64): its
            # replication to the paused node waits for acknowledgements that do not come.
            for i in range(PAUSED_WRITES):
                assert put([leader], f"p{i}", "v")
            response = leader.health.delete(f"/members/{removed.node_id}")
            assert response.status_code == 200, response.text
        finally:
            removed.proc.send_signal(signal.SIGCONT)
        assert put([leader], "k", "2")

        def knows_it() -> bool:
            view = members_of(removed)
            return view is not None and all(
                m["id"] != removed.node_id or not m["voter"] for m in view["members"]
            )

        try:
            wait_until(knows_it, 20, f"node {removed.node_id} to see it is no voter")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{cluster.logs()}") from None
        time.sleep(1.0)  # several election timeouts
        role = removed.health.get("/status").json()["role"]
        assert role not in ("pre_candidate", "candidate"), role
