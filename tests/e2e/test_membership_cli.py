"""``dengine-trio member ...`` and ``leader transfer`` against a real cluster: add a learner by
hand, which then starts as a read replica, promote it, hand it leadership, remove it while it
leads, and the refusals (unknown id, duplicate id and address, promote of a voter)."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.cluster import running_cluster, wait_until
from tests.e2e.membership import (
    add_joiner,
    as_json,
    cli,
    health_urls,
    members_of,
    put,
    raft_address,
    read,
    voters_of,
)


def test_the_cli_adds_promotes_transfers_to_and_removes_a_node(tmp_path: Path) -> None:
    with running_cluster(tmp_path) as cluster:
        leader = cluster.wait_for_leader()
        root = cluster.root
        assert put(cluster.alive(), "seed", "1")
        # A follower first: it answers the list itself and forwards changes to the leader.
        endpoints = health_urls([n for n in cluster.nodes if n is not leader] + [leader])

        listed = cli(["member", "list"], root, endpoints)
        assert listed.returncode == 0, listed.stderr
        rows = [line.split() for line in listed.stdout.splitlines()]
        assert rows[0][:4] == ["ID", "ADDRESS", "ROLE", "MATCH"]
        roles = {int(r[0]): r[2] for r in rows[1:4]}
        assert roles == {n.node_id: "leader" if n is leader else "voter" for n in cluster.nodes}

        # Node 4 is added by hand as a learner, then started as a read replica.
        replica = add_joiner(cluster, 4, read_replica=True, start=False)
        address = raft_address(replica)
        added = cli(["member", "add", "4", address], root, endpoints)
        assert added.returncode == 0, added.stderr
        assert added.stdout.startswith(f"member 4 ({address}) added as a learner")
        replica.start(root)
        wait_until(lambda: replica.status_code(replica.health, "/replica") == 200, 60, "replica up")
        assert read([replica], "seed", "eventual") == "1"
        assert read([replica], "seed", "linearizable") == "1"
        assert voters_of(leader) == {1, 2, 3}  # a read replica is never promoted by itself

        # Refusals: one line, exit 2.
        for args, code in [
            (["member", "promote", "9"], "404 unknown_member"),
            (["member", "remove", "9"], "404 unknown_member"),
            (["member", "add", "2", "127.0.0.1:1"], "409 duplicate_id"),
            (["member", "add", "9", address], "409 duplicate_address"),
            (["member", "promote", "1"], "409 not_learner"),
        ]:
            refused = cli(args, root, endpoints)
            assert refused.returncode == 2, (args, refused.stdout, refused.stderr)
            assert f"HTTP {code}" in refused.stderr, refused.stderr
            assert refused.stderr.count("\n") == 1

        promoted = cli(["member", "promote", "4"], root, endpoints)
        assert promoted.returncode == 0, promoted.stderr
        assert voters_of(leader) == {1, 2, 3, 4}

        moved = cli(["leader", "transfer", "--to", "4"], root, endpoints)
        assert moved.returncode == 0, moved.stderr
        assert moved.stdout == "node 4 leads now\n"
        assert members_of(replica)["leader_id"] == 4  # type: ignore[index]

        # Remove node 4 while it leads: it hands over, and the others go on without it.
        removed = as_json(cli(["member", "remove", "4", "--json"], root, endpoints))
        assert removed["change"] == {"kind": "remove", "id": 4}
        originals = cluster.nodes[:3]
        wait_until(lambda: all(voters_of(n) == {1, 2, 3} for n in originals), 30, "node 4 gone")
        assert put(originals, "seed", "2")
        assert read(originals, "seed") == "2"

        again = cli(["leader", "transfer"], root, health_urls(originals))
        assert again.returncode == 0, again.stderr
        assert again.stdout.startswith("node ") and again.stdout.endswith(" leads now\n")
        listing = as_json(cli(["member", "list", "--json"], root, health_urls(originals)))
        assert sorted(m["id"] for m in listing["members"]) == [1, 2, 3]
