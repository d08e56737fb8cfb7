"""Newcomer reproducers (issue 14): the original members' Raft addresses must be in the
membership the first leader makes explicit. They were missing (the bootstrap CONFIG entry
copied an implicit membership built without the ``initial_cluster`` addresses): the
duplicate-address refusal could not see them (200 instead of 409), and a joiner that did not
list them could not reach them ("node 4 has no peer 2": 3 of 4 voters up, no write
committed). Both failed as strict xfails on 54d3d8e; C's 31e3e97 fixed the class."""

from __future__ import annotations

from pathlib import Path

import attrs

from dengine_trio.config import ROLE_LEARNER, STATUS_JOINING, PeerConfig, load_config, render_toml
from tests.e2e.cluster import Cluster, Node, free_ports, running_cluster, wait_until
from tests.e2e.membership import put, raft_address, wait_voter


def _joiner_listing(cluster: Cluster, node_id: int, listed: list[int]) -> Node:
    """Node ``node_id`` joining with a file that lists only the members ``listed`` (and
    itself): the operator names the one member it knows, as the docs allow ("it contacts
    the members listed")."""
    base = load_config(cluster.nodes[0].config_path)
    raft, kv, health = free_ports(3)
    address = f"127.0.0.1:{raft}"
    members = [p for p in base.cluster.initial_cluster if p.id in listed]
    members.append(PeerConfig(node_id, address, role=ROLE_LEARNER, status=STATUS_JOINING))
    path = cluster.root / f"n{node_id}.toml"
    cfg = attrs.evolve(
        base,
        path=path,
        cluster=attrs.evolve(
            base.cluster,
            node_id=node_id,
            listen_address=address,
            initial_cluster=members,
            db_root_dir=(cluster.root / "db" / str(node_id)).as_posix(),
        ),
    )
    path.write_text(render_toml(cfg), encoding="utf-8")
    node = Node(node_id, path, kv, health)
    cluster.nodes.append(node)
    node.start(cluster.root)
    return node


def test_adding_a_learner_at_an_original_members_address_is_refused(tmp_path: Path) -> None:
    with running_cluster(tmp_path) as cluster:
        leader = cluster.wait_for_leader()
        taken = raft_address(cluster.nodes[0])
        response = leader.health.post("/members", json={"id": 6, "address": taken})
        assert response.status_code == 409, response.text
        assert response.json()["error"] == "duplicate_address"


def test_a_joiner_listing_only_the_leader_keeps_the_cluster_writable_when_the_leader_dies(
    tmp_path: Path,
) -> None:
    with running_cluster(tmp_path) as cluster:
        leader = cluster.wait_for_leader()
        assert put(cluster.alive(), "before", "1")
        _joiner_listing(cluster, 4, listed=[leader.node_id])
        wait_voter(cluster, 4)
        # 4 voters, 3 alive after this kill: a majority, so writes must go on. Node 4 must
        # reach the two others by the addresses in the membership it was given.
        leader.kill()
        try:
            wait_until(lambda: put(cluster.alive(), "after", "2", timeout_s=3.0), 45, "a write")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{cluster.logs()}") from None
