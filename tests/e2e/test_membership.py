"""Membership changes on real node processes (issue 14): grow 3 to 5 while writes flow and lose
two of the original three; replace a dead node; remove the leader. Every wait is bounded; the
writer is bounded too."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.cluster import running_cluster, wait_until
from tests.e2e.membership import (
    Writer,
    add_joiner,
    members_of,
    put,
    read,
    voters_of,
    wait_voter,
)


def test_grow_3_to_5_under_writes_then_kill_two_of_the_original_three(tmp_path: Path) -> None:
    with running_cluster(tmp_path) as cluster:
        cluster.wait_for_leader()
        with Writer(cluster) as writer:
            wait_until(lambda: len(writer.acknowledged) >= 50, 60, "writes before the growth")
            add_joiner(cluster, 4)
            wait_voter(cluster, 4)
            add_joiner(cluster, 5)
            wait_voter(cluster, 5)
            done = len(writer.acknowledged)
            wait_until(lambda: len(writer.acknowledged) >= done + 50, 60, "writes after it")
        assert voters_of(cluster.nodes[0]) == {1, 2, 3, 4, 5}
        acknowledged = list(writer.acknowledged)

        # Two of the original three die at once, the leader among them if it is one of them.
        leader = cluster.wait_for_leader()
        originals = [n for n in cluster.nodes if n.node_id <= 3]
        victims = sorted(originals, key=lambda n: n is not leader)[:2]
        for node in victims:
            node.kill()

        survivors = cluster.alive()
        assert {n.node_id for n in survivors} >= {4, 5}
        wait_until(lambda: put(survivors, "after", "kill"), 60, "a write after the kills")
        assert read(survivors, "after") == "kill"
        # No acknowledged write is lost: each one reads back, linearizably, from the survivors.
        for key in acknowledged:
            assert read(survivors, key) == f"v{key[1:]}", key


def test_replace_a_dead_node(tmp_path: Path) -> None:
    with running_cluster(tmp_path) as cluster:
        leader = cluster.wait_for_leader()
        assert put(cluster.alive(), "before", "1")
        dead = next(n for n in cluster.nodes if n is not leader)
        dead.kill()
        response = leader.health.delete(f"/members/{dead.node_id}")
        assert response.status_code == 200, response.text
        assert voters_of(leader) == {1, 2, 3} - {dead.node_id}

        new = add_joiner(cluster, 4)
        wait_voter(cluster, 4)
        assert read([new], "before", "eventual") == "1"
        # The replacement restores the tolerance of one failure: lose another original node.
        other = next(n for n in cluster.alive() if n.node_id not in (4,))
        other.kill()
        wait_until(lambda: put(cluster.alive(), "after", "2"), 60, "a write without two originals")
        assert read(cluster.alive(), "before") == "1"
        assert read(cluster.alive(), "after") == "2"


def test_removing_the_leader_hands_over_and_the_removed_node_stays_out(tmp_path: Path) -> None:
    with running_cluster(tmp_path) as cluster:
        leader = cluster.wait_for_leader()
        assert put(cluster.alive(), "k", "1")
        response = leader.health.delete(f"/members/{leader.node_id}")
        assert response.status_code == 200, response.text
        others = [n for n in cluster.nodes if n is not leader]

        def new_leader() -> int | None:
            views = [members_of(n) for n in others]
            ids = {v["leader_id"] for v in views if v is not None}
            return ids.pop() if len(ids) == 1 and None not in ids else None

        new_id = wait_until(new_leader, 30, "one of the remaining nodes to lead")
        assert new_id != leader.node_id
        for node in others:
            assert voters_of(node) == {n.node_id for n in others}
        wait_until(lambda: put(others, "k", "2"), 30, "a write after the removal")
        assert read(others, "k") == "2"
        # The removed node, still running, never leads the others again.
        term = max(n.health.get("/status").json()["term"] for n in others)
        assert put(others, "k", "3")
        assert read(others, "k") == "3"
        assert all(members_of(n)["leader_id"] == new_id for n in others)  # type: ignore[index]
        assert max(n.health.get("/status").json()["term"] for n in others) == term
