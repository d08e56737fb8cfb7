"""The bootstrap election (docs/architecture.md, "Membership changes in the core", rule 9):
with a cluster id, a candidate whose membership is implicit and whose log holds nothing but
no-ops (no command, no CONFIG entry, no snapshot) needs the vote of EVERY voter of the
implicit membership. Empty implicit nodes cannot tell a brand-new cluster from a running one
whose disks were wiped; a majority of them must not start a second cluster."""

from __future__ import annotations

import random

from dengine_trio.raft import Entry, RaftConfig, RaftNode, Receive, Role, Tick
from dengine_trio.raft.messages import EntryKind, RequestVoteResponse
from dengine_trio.raft.tracker import Tracker, VoteResult
from tests.sim.transcript import Interaction


def run(it: Interaction, *lines: str) -> list[str]:
    out: list[str] = []
    for line in lines:
        out += it.run(line)
    return out


def roles(it: Interaction) -> dict[int, Role]:
    return {i: n.raft.role for i, n in it.nodes.items() if n.raft is not None}


def test_two_empty_nodes_of_three_do_not_elect_without_the_third() -> None:
    it = Interaction()
    run(it, "start 3 cluster=c1", "crash 3", "campaign 1", "stabilize 1 2")
    assert Role.LEADER not in roles(it).values()
    for _ in range(5):  # many election timeouts, each node campaigning in turn
        run(it, "advance 1000 1 2", "stabilize 1 2")
        assert Role.LEADER not in roles(it).values()
        assert all(n.raft.log.last_index == 0 for n in it.nodes.values() if n.raft is not None)
    run(it, "restart 3", "run 5000")
    assert Role.LEADER in roles(it).values()


def test_without_a_cluster_id_a_majority_still_elects() -> None:
    """The simulator's and transcripts' implicit clusters (no cluster id, never made
    explicit, never wiped) keep the majority rule."""
    it = Interaction()
    run(it, "start 3", "crash 3", "campaign 1", "stabilize 1 2")
    assert roles(it)[1] is Role.LEADER


def _candidate(entries: list[Entry]) -> RaftNode:
    r = RaftNode(
        RaftConfig(node_id=1, voters=(1, 2, 3)),
        random.Random(0),
        term=1 if entries else 0,
        entries=entries,
        uuid="u1",
        bootstrap_cluster_id="c1",
    )
    r.step(r.next_deadline(), Tick())
    assert r.role is Role.PRE_CANDIDATE
    return r


def _pre_grant(r: RaftNode, src: int, granted: bool = True) -> None:
    # A refusal carries the voter's own term (ours here), a grant the campaign's.
    term = r.term + 1 if granted else r.term
    r.step(r.now, Receive(RequestVoteResponse(term, src, 1, granted, True)))


def test_an_implicit_candidate_with_only_noops_needs_every_voter() -> None:
    """A node holding a first leader's no-op but not its bootstrap entry (the next message)
    knows no more than an empty one: the cluster may have committed the bootstrap entry and
    more on a majority since, and two empty (wiped, late) nodes must not elect it."""
    for entries in ([], [Entry(1, 1, b"", EntryKind.NOOP)]):
        r = _candidate(entries)
        _pre_grant(r, 2)
        assert r.role is Role.PRE_CANDIDATE, entries
        _pre_grant(r, 3)
        assert r.role is Role.CANDIDATE, entries


def test_a_refusal_ends_a_bootstrap_campaign() -> None:
    r = _candidate([])
    _pre_grant(r, 2, granted=False)
    assert r.role is Role.FOLLOWER


def test_an_implicit_candidate_holding_a_command_keeps_the_majority_rule() -> None:
    """An implicit cluster from before issue 14 (commands, no CONFIG entry) elects as
    before."""
    r = _candidate([Entry(1, 1, b"", EntryKind.NOOP), Entry(1, 2, b"x", EntryKind.COMMAND)])
    _pre_grant(r, 2)
    assert r.role is Role.CANDIDATE


def test_tracker_unanimous_votes() -> None:
    t = Tracker(1, (1, 2, 3, 4, 5), ())
    assert t.start_votes(unanimous=True) is VoteResult.PENDING
    for v in (2, 3, 4):
        assert t.record_vote(v, True) is VoteResult.PENDING
    assert t.record_vote(5, True) is VoteResult.WON
    t.start_votes(unanimous=True)
    assert t.record_vote(2, False) is VoteResult.LOST
    t.start_votes()
    assert [t.record_vote(v, True) for v in (2, 3)][-1] is VoteResult.WON
    assert Tracker(1, (1,), ()).start_votes(unanimous=True) is VoteResult.WON
