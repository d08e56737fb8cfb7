"""Newcomer reproducer (issue 14): a joining node whose file lists members of the cluster but
not the current leader is never added. Followers drop its JoinRequest ("only the leader acts"),
and the joiner only talks to the members its file lists. With the shipped files this is the
"Replace a dead node" procedure after "Grow from 3 to 5" if node 4 or 5 leads: a new node's
file lists nodes 1-3 only, so it waits forever ("no leader yet").

Failed as a strict xfail; passes since a follower forwards a JoinRequest to the leader (C)."""

from __future__ import annotations

from pathlib import Path

import attrs

from dengine_trio.config import ROLE_LEARNER, STATUS_JOINING, PeerConfig, load_config, render_toml
from tests.e2e.cluster import Node, free_ports, running_cluster
from tests.e2e.membership import wait_voter


def test_a_joiner_that_lists_only_followers_is_added(tmp_path: Path) -> None:
    with running_cluster(tmp_path) as cluster:
        leader = cluster.wait_for_leader()
        base = load_config(cluster.nodes[0].config_path)
        raft, kv, health = free_ports(3)
        address = f"127.0.0.1:{raft}"
        members = [p for p in base.cluster.initial_cluster if p.id != leader.node_id]
        members.append(PeerConfig(4, address, role=ROLE_LEARNER, status=STATUS_JOINING))
        path = tmp_path / "n4.toml"
        cfg = attrs.evolve(
            base,
            path=path,
            cluster=attrs.evolve(
                base.cluster,
                node_id=4,
                listen_address=address,
                initial_cluster=members,
                db_root_dir=(tmp_path / "db" / "4").as_posix(),
            ),
        )
        path.write_text(render_toml(cfg), encoding="utf-8")
        node = Node(4, path, kv, health)
        cluster.nodes.append(node)
        node.start(tmp_path)
        wait_voter(cluster, 4, timeout_s=45)
