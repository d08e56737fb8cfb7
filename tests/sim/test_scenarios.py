"""Classic Raft scenarios, driven through the simulator (real message flow, no faults unless
the test injects them)."""

from __future__ import annotations

from dengine_trio.raft import Durability, ProposalRejected, Propose, Role

from .cluster import Cluster


def test_elects_one_leader_and_replicates() -> None:
    c = Cluster(3, seed=1)
    leader = c.wait_for_leader()
    ops = [c.put(leader, f"k{i}") for i in range(20)]
    c.run_for(200)
    assert all(c.history[o].ok for o in ops)
    for node in c.nodes.values():
        assert node.state == {f"k{i}": c.history[ops[i]].value for i in range(20)}
    c.check_durability()


def test_proposal_on_follower_names_the_leader() -> None:
    c = Cluster(3, seed=2)
    leader = c.wait_for_leader()
    follower = next(n for n in c.ids if n != leader)
    effects = c.raft(follower).step(c.now, Propose(99, b"x"))
    rejected = [e for e in effects if isinstance(e, ProposalRejected)]
    assert rejected and rejected[0].leader_id == leader


def test_partitioned_leader_steps_down_by_check_quorum() -> None:
    c = Cluster(3, seed=3)
    old = c.wait_for_leader()
    old_term = c.raft(old).term
    rest = [n for n in c.ids if n != old]
    c.partition([old], rest)
    c.run_for(c.config_for(old).election_timeout_min_ms * 2 + 50)
    assert c.raft(old).role is not Role.LEADER
    # The majority side elects a leader (maybe after a split vote: timeouts are random).
    new = c.wait_for_leader(timeout_ms=5_000)
    assert new in rest and c.raft(new).term > old_term
    # The old leader's term did not move while it was alone (PreVote), and it rejoins quietly.
    assert c.raft(old).term == old_term
    c.heal()
    c.run_for(500)
    assert c.leader() == new


def test_rejoining_node_does_not_bump_the_term() -> None:
    c = Cluster(5, seed=4)
    leader = c.wait_for_leader()
    term = c.raft(leader).term
    loner = next(n for n in c.ids if n != leader)
    c.partition([loner], [n for n in c.ids if n != loner])
    c.run_for(5_000)  # many election timeouts: without PreVote its term would climb
    assert c.raft(loner).term == term
    c.heal()
    c.run_for(1_000)
    assert c.leader() == leader and c.raft(leader).term == term


def test_stale_log_cannot_win_votes() -> None:
    c = Cluster(3, seed=5)
    leader = c.wait_for_leader()
    lagging = next(n for n in c.ids if n != leader)
    c.partition([lagging], [n for n in c.ids if n != lagging])
    ops = [c.put(leader, f"k{i}") for i in range(5)]
    c.run_for(100)
    assert all(c.history[o].ok for o in ops)
    # Kill the others' leadership: the lagging node alone with one up-to-date peer.
    c.crash(leader)
    c.heal()
    c.run_for(5_000)
    new = c.leader()
    assert new is not None and new != lagging  # the node with the stale log lost every vote
    assert c.raft(new).log.last_index >= 6


def test_lease_read_not_served_without_lease() -> None:
    c = Cluster(3, seed=6)
    leader = c.wait_for_leader()
    raft = c.raft(leader)
    # A fresh leader waits out one election timeout before trusting its lease.
    assert c.now < raft._leader.since_ms + c.config_for(leader).election_timeout_min_ms
    assert not raft.lease_valid(c.now)
    op = c.read(leader, "k", "lease")
    assert c.history[op].complete is None  # not served locally: it needs a heartbeat round
    c.run_for(20)
    assert c.history[op].ok  # ... which then confirms it
    c.run_for(1_000)
    assert raft.lease_valid(raft.now)
    op = c.read(leader, "k", "lease")
    assert (
        c.history[op].ok and c.history[op].complete == c.history[op].invoke
    )  # served from the lease
    # Isolated, the leader's lease runs out and it serves no more lease reads.
    c.partition([leader], [n for n in c.ids if n != leader])
    c.run_for(c.config_for(leader).lease_duration_ms + 10)
    assert not raft.lease_valid(raft.now)
    op = c.read(leader, "k", "lease")
    c.run_for(100)
    assert not c.history[op].ok


def test_leadership_transfer() -> None:
    c = Cluster(3, seed=7)
    leader = c.wait_for_leader()
    target = next(n for n in c.ids if n != leader)
    term = c.raft(leader).term
    c.transfer(leader, target)
    c.run_for(50)  # far less than an election timeout
    assert c.leader() == target and c.raft(target).term == term + 1


def test_reads_from_a_follower_see_the_latest_write() -> None:
    c = Cluster(3, seed=8)
    leader = c.wait_for_leader()
    follower = next(n for n in c.ids if n != leader)
    put = c.put(leader, "k")
    c.run_for(50)
    for policy in ("linearizable", "lease"):
        op = c.read(follower, "k", policy)
        c.run_for(100)
        assert c.history[op].ok and c.history[op].value == c.history[put].value
    c.check_history()


def test_mem_first_commits_before_disk_disk_first_after() -> None:
    for durability, expect_commit in ((Durability.MEM_FIRST, True), (Durability.DISK_FIRST, False)):
        c = Cluster(3, seed=9, durability=durability, disk_latency_ms=(1_000.0, 1_000.0))
        c.run_for(5_000)
        leader = c.wait_for_leader(20_000)
        op = c.put(leader, "k")
        c.run_for(50)  # replication done, disks still busy
        assert bool(c.history[op].ok) is expect_commit


def test_single_node_mem_first_commits_without_waiting_for_the_disk() -> None:
    c = Cluster(1, seed=10, durability=Durability.MEM_FIRST, disk_latency_ms=(1_000.0, 1_000.0))
    leader = c.wait_for_leader(5_000)
    op = c.put(leader, "k")
    assert c.history[op].ok  # committed and applied in the very step that proposed it
