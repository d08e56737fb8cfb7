"""Newcomer reproducer (issue 14): a voter restarted with a wiped data directory under its old
id is taken back (BIND: learner, then promoted) only if the leader is a node its own
``initial_cluster`` lists. A wiped node's membership is the implicit one of its file, and its
handshake refuses every other node ("node 4 is not a member of cluster (implicit)
(removed?)"): after the cluster grew (docs/operations.md, nodes 4 and 5) and node 4 or 5
leads, the wiped node is never re-bound and the cluster stays one voter short for good.

Failed as a strict xfail; passes since a node with an implicit membership admits any caller
of its cluster and links back to a caller's Hello.address (C)."""

from __future__ import annotations

import shutil
from pathlib import Path

from dengine_trio.config import load_config
from tests.e2e.cluster import running_cluster, wait_until
from tests.e2e.membership import add_joiner, members_of, put, wait_voter


def test_a_wiped_voter_is_rebound_when_a_joined_node_leads(tmp_path: Path) -> None:
    with running_cluster(tmp_path) as cluster:
        leader = cluster.wait_for_leader()
        assert put(cluster.alive(), "before", "1")
        joiner = add_joiner(cluster, 4)
        wait_voter(cluster, 4)
        response = leader.health.post("/leader/transfer", json={"to": 4})
        assert response.status_code == 200, response.text
        wait_until(lambda: joiner.status_code(joiner.health, "/primary") == 200, 30, "4 leads")

        wiped = next(n for n in cluster.nodes if n.node_id in (1, 2, 3))
        wiped.kill()
        shutil.rmtree(tmp_path / load_config(wiped.config_path).cluster.db_root_dir)
        wiped.stop_requested = False
        wiped.start(tmp_path)

        def rebound() -> bool:
            view = members_of(wiped)
            if view is None or not view.get("cluster_id"):
                return False
            me = [m for m in view["members"] if m["id"] == wiped.node_id]
            return bool(me) and me[0]["voter"] and me[0]["bound"]

        try:
            wait_until(rebound, 45, f"node {wiped.node_id} to be a bound voter again")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{cluster.logs()}") from None
