"""A lease read is served locally only while every promise it relies on is in force (thesis
§6.4.1): a majority acknowledged a round sent within the lease, and each of those voters
refuses to help elect anyone for an election timeout after it heard from the leader. Each
test is a schedule that served a stale lease read before the rule it names."""

from __future__ import annotations

from dengine_trio.raft import Role
from dengine_trio.raft.messages import ReadIndex, RequestVote

from .cluster import Cluster


def _lease_ready(c: Cluster, leader: int) -> None:
    """Commit ``k=old`` and run until ``leader`` has had time to build a lease."""
    c.put(leader, "k")
    c.run_for(c.config_for(leader).election_timeout_min_ms + 100)


def test_no_lease_without_check_quorum() -> None:
    """check_quorum off: voters are not sticky, so a lease promises nothing. A leads with B
    acknowledging its rounds; A-C is cut; C times out and campaigns, B (not sticky) grants;
    C commits k=new through B while B's answers to A are lost. A, whose rounds B acknowledged
    within the lease duration, must not serve k=old from a lease: it falls back to ReadIndex."""
    for seed in (111, 112, 113):
        c = Cluster(3, seed=seed, check_quorum=False)
        a = c.wait_for_leader()
        b, cc = (n for n in c.ids if n != a)
        _lease_ready(c, a)
        term = c.raft(a).term
        c.cut_link(a, cc)
        c.cut_link(cc, a)
        while c.raft(cc).role is Role.FOLLOWER:  # C's election timer runs out
            c.run_for(1)
        c.cut_link(b, a)  # A does not learn of the new term
        while not (c.leader() == cc and c.raft(cc)._committed_in_term()):
            c.run_for(1)
        assert c.raft(cc).term > term and c.raft(a).is_leader and c.raft(a).term == term
        put = c.put(cc, "k")
        while c.history[put].complete is None:
            c.run_for(1)
        assert c.history[put].ok
        read = c.read(a, "k", "lease")
        assert c.history[read].complete is None  # not from a lease: a heartbeat round first
        c.run_for(1_000)
        c.heal()
        c.run_for(1_000)
        c.check_history()
        c.check_linearizability()


def test_a_term_raised_by_a_stale_answer_keeps_the_voter_sticky() -> None:
    """check_quorum on, pre_vote off. C led earlier and B forwarded a read to it, held on the
    B-C link; C hands leadership to A; A leads with a lease backed by B; A-C is cut. C
    campaigns in t+1 (its vote request to B held). B's old ReadIndex now reaches C, whose
    stale-term answer carries t+1: B adopts t+1 with no leader known. C's held vote request
    (same term as B now) then arrives: B heard from A within the election timeout, so it must
    refuse, whatever its term, or C wins and commits k=new behind A's live lease."""
    c = Cluster(3, seed=121, pre_vote=False)
    cc = c.wait_for_leader()
    b, a = (n for n in c.ids if n != cc)
    c.hold(b, cc, ReadIndex)
    c.read(b, "k", "linearizable")
    c.run_for(1)
    assert len(c.held) == 1
    c.transfer(cc, a)
    while not (c.leader() == a and c.raft(a)._committed_in_term()):
        c.run_for(1)
    _lease_ready(c, a)
    term = c.raft(a).term
    assert c.raft(a).lease_valid(c.raft(a).now)
    c.cut_link(a, cc)
    c.cut_link(cc, a)
    c.hold(cc, b, RequestVote)
    while c.raft(cc).role is not Role.CANDIDATE:
        c.run_for(1)
    assert c.raft(cc).term == term + 1
    c.cut_link(b, a)  # A does not learn of the new term
    c.release(b, cc, ReadIndex)
    c.run_for(2)
    assert c.raft(b).term == term + 1 and c.raft(b).leader_id == 0
    c.release(cc, b, RequestVote)
    c.run_for(5)
    if c.leader() == cc:  # (only without the rule) C commits k=new
        while not c.raft(cc)._committed_in_term():
            c.run_for(1)
        put = c.put(cc, "k")
        while c.history[put].complete is None:
            c.run_for(1)
    assert c.raft(a).is_leader and c.raft(a).term == term
    c.read(a, "k", "lease")
    c.run_for(1_000)
    c.heal()
    c.run_for(1_000)
    c.check_history()
    c.check_linearizability()
