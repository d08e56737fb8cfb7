"""Newcomer reproducer (issue 14): ``DELETE /members/{id}`` asked of the follower being
removed (``member remove 1`` with the documented ``DENGINE_STATUS_ENDPOINTS``, whose first
endpoint is node 1's) is forwarded to the leader, which commits the removal and closes its
link to the removed node at once, so the forwarded answer never comes back: the caller gets
``504 timeout`` ("not committed in time; a write may still apply", CLI exit 3) for a change
that was committed in a few milliseconds."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.cluster import running_cluster
from tests.e2e.membership import put, voters_of


def test_removing_a_follower_through_its_own_endpoint_answers_200(tmp_path: Path) -> None:
    with running_cluster(tmp_path) as cluster:
        leader = cluster.wait_for_leader()
        assert put(cluster.alive(), "k", "1")
        follower = next(n for n in cluster.nodes if n is not leader)
        response = follower.health.delete(f"/members/{follower.node_id}", timeout=30)
        # Committed either way: the leader's voters no longer include it.
        assert voters_of(leader) == {n.node_id for n in cluster.nodes} - {follower.node_id}
        assert response.status_code == 200, response.text
