"""The Raft rules one at a time, driving a single ``RaftNode`` by hand."""

from __future__ import annotations

import random

from dengine_trio.raft import (
    Apply,
    Durability,
    Entry,
    EntryKind,
    Persisted,
    PersistEntries,
    PersistHardState,
    RaftConfig,
    RaftNode,
    ReadReady,
    ReadRequest,
    Receive,
    Role,
    Send,
    Tick,
)
from dengine_trio.raft.messages import (
    AppendEntries,
    AppendEntriesResponse,
    Heartbeat,
    HeartbeatResponse,
    ReadIndexResponse,
    RequestVote,
    RequestVoteResponse,
    TimeoutNow,
)


def node(
    node_id: int = 1,
    voters: int = 3,
    *,
    entries: list[Entry] | None = None,
    term: int = 0,
    durability: Durability = Durability.DISK_FIRST,
) -> RaftNode:
    cfg = RaftConfig(node_id=node_id, voters=tuple(range(1, voters + 1)), durability=durability)
    return RaftNode(cfg, random.Random(0), term=term, entries=entries or [])


def log_of(*terms: int) -> list[Entry]:
    return [Entry(t, i + 1, f"c{i + 1}".encode()) for i, t in enumerate(terms)]


def sent(effects: list, kind: type) -> list:
    return [e.message for e in effects if isinstance(e, Send) and isinstance(e.message, kind)]


def elect(n: RaftNode, now: float = 10_000.0) -> float:
    """Make ``n`` leader of a 3- or 5-node cluster by feeding it the votes it asks for."""
    pending = sent(n.step(now, Tick()), RequestVote)
    while pending and n.role is not Role.LEADER:
        m = pending.pop(0)
        reply = RequestVoteResponse(m.term, m.dst, n.id, True, m.pre_vote)
        pending += sent(n.step(now, Receive(reply)), RequestVote)
    assert n.role is Role.LEADER
    return now


def test_vote_refused_for_a_stale_log_and_persisted_before_granting() -> None:
    voter = node(1, entries=log_of(1, 1, 2), term=2)
    # Candidate's last term is older: refused.
    effects = voter.step(5_000, Receive(RequestVote(3, 2, 1, last_log_index=5, last_log_term=1)))
    (reply,) = sent(effects, RequestVoteResponse)
    assert not reply.granted and voter.voted_for == 0
    # Same last term but a shorter log: refused.
    effects = voter.step(5_000, Receive(RequestVote(4, 2, 1, last_log_index=2, last_log_term=2)))
    assert not sent(effects, RequestVoteResponse)[0].granted
    # Up to date: granted, and the vote is made durable before the reply goes out.
    effects = voter.step(5_000, Receive(RequestVote(5, 3, 1, last_log_index=3, last_log_term=2)))
    kinds = [type(e) for e in effects if isinstance(e, (PersistHardState, Send))]
    assert kinds.index(PersistHardState) < kinds.index(Send)
    assert sent(effects, RequestVoteResponse)[0].granted and voter.voted_for == 3
    # One vote per term.
    effects = voter.step(5_000, Receive(RequestVote(5, 2, 1, last_log_index=9, last_log_term=5)))
    assert not sent(effects, RequestVoteResponse)[0].granted


def test_conflicting_suffix_is_truncated_and_replaced() -> None:
    follower = node(2, entries=log_of(1, 1, 2, 2), term=2)
    entries = (Entry(3, 3, b"new3"), Entry(3, 4, b"new4"), Entry(3, 5, b"new5"))
    effects = follower.step(0, Receive(AppendEntries(3, 1, 2, 2, 1, entries, 0)))
    assert [e.term for e in follower.log.slice(1, 5)] == [1, 1, 3, 3, 3]
    persisted = [e for e in effects if isinstance(e, PersistEntries)]
    assert persisted and persisted[0].entries[0].index == 3  # the durable log is cut there too
    (reply,) = sent(effects, AppendEntriesResponse)
    assert reply.success


def test_rejection_carries_a_back_tracking_hint() -> None:
    follower = node(2, entries=log_of(1, 2, 2, 2), term=2)
    effects = follower.step(0, Receive(AppendEntries(3, 1, 2, 4, 3, (), 0)))
    (reply,) = sent(effects, AppendEntriesResponse)
    assert not reply.success and reply.conflict_term == 2 and reply.conflict_index == 2
    effects = follower.step(0, Receive(AppendEntries(3, 1, 2, 9, 3, (), 0)))
    (reply,) = sent(effects, AppendEntriesResponse)
    assert reply.conflict_index == 5 and reply.conflict_term == 0  # our log is too short


def test_figure_8_old_term_entries_commit_only_through_the_current_term() -> None:
    """Raft paper, Figure 8: a leader must not commit an entry of an earlier term just because
    a majority holds it; only replicas of a current-term entry count."""
    leader = node(1, voters=5, entries=log_of(1, 2), term=3)
    now = elect(leader)
    term = leader.term
    assert leader.log.entry(3).kind is EntryKind.NOOP and leader.log.entry(3).term == term
    leader.step(now, Persisted(3, term))
    # Followers 2 and 3 now hold index 2 (term 2): with the leader, a majority of 5.
    for peer in (2, 3):
        leader.step(now, Receive(AppendEntriesResponse(term, peer, 1, True, match_index=2)))
    assert leader.commit_index == 0
    # Once the term-4 no-op is on a majority, everything up to it commits.
    effects = []
    for peer in (2, 3):
        effects += leader.step(
            now, Receive(AppendEntriesResponse(term, peer, 1, True, match_index=3))
        )
    assert leader.commit_index == 3
    applied = [e for eff in effects if isinstance(eff, Apply) for e in eff.entries]
    assert [e.index for e in applied] == [1, 2, 3]


def test_disk_first_counts_only_durable_entries_mem_first_counts_appended() -> None:
    for durability in Durability:
        leader = node(1, durability=durability)
        now = elect(leader)
        noop_index = leader.log.last_index
        leader.step(
            now, Receive(AppendEntriesResponse(leader.term, 2, 1, True, match_index=noop_index))
        )
        # With one follower's ack, MemFirst commits on the leader's in-memory copy; DiskFirst
        # waits for the leader's own fsync.
        assert (leader.commit_index == noop_index) is (durability is Durability.MEM_FIRST)
        leader.step(now, Persisted(noop_index, leader.term))
        assert leader.commit_index == noop_index


def test_disk_first_follower_acknowledges_after_persisting() -> None:
    follower = node(2, term=1)
    entries = (Entry(1, 1, b"a"), Entry(1, 2, b"b"))
    effects = follower.step(0, Receive(AppendEntries(1, 1, 2, 0, 0, entries, 0)))
    # Nothing to tell before the fsync: new entries count only once durable.
    assert not sent(effects, AppendEntriesResponse)
    # A duplicate (nothing new to write) is answered at once, with what is durable.
    effects = follower.step(0, Receive(AppendEntries(1, 1, 2, 0, 0, entries, 0)))
    assert sent(effects, AppendEntriesResponse)[0].match_index == 0
    effects = follower.step(1, Persisted(2, 1))
    assert sent(effects, AppendEntriesResponse)[0].match_index == 2
    # A report about entries since replaced is ignored.
    follower.step(2, Receive(AppendEntries(2, 3, 2, 1, 1, (Entry(2, 2, b"c"),), 0)))
    effects = follower.step(3, Persisted(2, 1))
    assert follower.durable_index == 1 and not sent(effects, AppendEntriesResponse)


def test_higher_term_vote_request_ignored_while_leader_is_fresh() -> None:
    follower = node(2, term=1)
    follower.step(100, Receive(AppendEntries(1, 1, 2, 0, 0, (), 0)))
    effects = follower.step(200, Receive(RequestVote(5, 3, 2, 10, 4)))
    assert follower.term == 1 and not effects  # leader stickiness: no term bump, no reply
    # After an election timeout without the leader, the campaign is heard.
    effects = follower.step(200 + 1_000, Receive(RequestVote(5, 3, 2, 10, 4)))
    assert follower.term == 5 and sent(effects, RequestVoteResponse)[0].granted


def test_malformed_append_entries_is_ignored() -> None:
    follower = node(2, entries=log_of(1, 1), term=1)
    gap = (Entry(1, 4, b"x"),)  # should start at prev + 1 = 3
    effects = follower.step(0, Receive(AppendEntries(1, 1, 2, 2, 1, gap, 0)))
    assert follower.log.last_index == 2 and not sent(effects, AppendEntriesResponse)
    future_term = (Entry(9, 3, b"x"),)  # newer than the sender's own term
    effects = follower.step(0, Receive(AppendEntries(1, 1, 2, 2, 1, future_term, 0)))
    assert follower.log.last_index == 2 and not effects
    assert follower.leader_id == 0  # not even taken as a sign of life from a leader


def test_follower_commits_only_what_it_shares_with_the_leader() -> None:
    """Issue 11 item 7: whatever message carries the leader's commit index, a follower commits
    only entries it holds and knows to match the leader's log in this term."""
    # Restarted holding an entry of term 1 at index 3 where the leader (term 2) has its own.
    follower = node(2, entries=log_of(1, 1, 1), term=2)
    effects = follower.step(0, Receive(Heartbeat(2, 1, 2, commit=3, seq=1, commit_term=2)))
    assert follower.commit_index == 0
    (reply,) = sent(effects, HeartbeatResponse)
    assert reply.last_index == 2  # "probe me from 2": the leader rewrites index 3
    # Holding the leader's very entry at the commit index shows the whole prefix matches.
    effects = follower.step(1, Receive(Heartbeat(2, 1, 2, commit=2, seq=2, commit_term=1)))
    assert follower.commit_index == 2 and sent(effects, HeartbeatResponse)[0].last_index == 3
    # A read index past what is known to match commits no further than that match.
    follower.step(2, ReadRequest(7))
    effects = follower.step(3, Receive(ReadIndexResponse(2, 1, 2, 7, read_index=9, ok=True)))
    assert follower.commit_index == 2
    assert [e.read_index for e in effects if isinstance(e, ReadReady)] == [9]


def test_own_campaign_forgets_the_match_reported_to_the_old_leader() -> None:
    """Issue 11 item 6: raising our own term (a campaign) drops the per-leader match, so the
    next leader hears only what matches its own log."""
    follower = node(2, term=1, durability=Durability.MEM_FIRST)
    entries = (Entry(1, 1, b"a"), Entry(1, 2, b"b"))
    follower.step(0, Receive(AppendEntries(1, 1, 2, 0, 0, entries, 0)))
    follower.step(1, Receive(TimeoutNow(1, 1, 2)))
    assert follower.role is Role.CANDIDATE and follower.term == 2
    # The winner (3) has only entry 1 in common with us; its no-op replaces entry 2.
    noop = (Entry(2, 2, b"", EntryKind.NOOP),)
    effects = follower.step(2, Receive(AppendEntries(2, 3, 2, 1, 1, noop, 0)))
    assert [r.match_index for r in sent(effects, AppendEntriesResponse)] == [2]
    effects = follower.step(3, Receive(AppendEntries(2, 3, 2, 1, 1, (), 0)))
    assert [r.match_index for r in sent(effects, AppendEntriesResponse)] == [2]
    follower2 = node(2, term=1, durability=Durability.MEM_FIRST)
    follower2.step(0, Receive(AppendEntries(1, 1, 2, 0, 0, entries, 0)))
    follower2.step(1, Receive(TimeoutNow(1, 1, 2)))
    # An empty AppendEntries of the new term matching only entry 1 reports 1, not 2.
    effects = follower2.step(2, Receive(AppendEntries(2, 3, 2, 1, 1, (), 0)))
    assert [r.match_index for r in sent(effects, AppendEntriesResponse)] == [1]


def test_restarted_node_grants_no_votes_for_an_election_timeout() -> None:
    """Issue 11 item 2 (thesis §6.4): a node that boots with durable state may have backed a
    lease before it went down; it grants no vote or PreVote for the minimum election timeout.
    A transfer campaign is exempt (the leader that asked for it gave up its lease)."""
    cfg = RaftConfig(node_id=2, voters=(1, 2, 3))
    restarted = RaftNode(cfg, random.Random(0), term=1, entries=log_of(1), now_ms=1_000.0)
    for pre_vote in (True, False):
        vote = RequestVote(2, 3, 2, last_log_index=1, last_log_term=1, pre_vote=pre_vote)
        effects = restarted.step(1_500, Receive(vote))
        assert not [r for r in sent(effects, RequestVoteResponse) if r.granted]
        assert restarted.term == 1
    transfer = RequestVote(2, 3, 2, last_log_index=1, last_log_term=1, transfer=True)
    assert sent(restarted.step(1_550, Receive(transfer)), RequestVoteResponse)[0].granted
    later = RaftNode(cfg, random.Random(0), term=1, entries=log_of(1), now_ms=1_000.0)
    effects = later.step(1_600, Receive(RequestVote(2, 3, 2, 1, 1, pre_vote=True)))
    assert sent(effects, RequestVoteResponse)[0].granted
    # A brand-new node has promised nothing.
    fresh = RaftNode(cfg, random.Random(0), now_ms=1_000.0)
    effects = fresh.step(1_001, Receive(RequestVote(1, 3, 2, 0, 0)))
    assert sent(effects, RequestVoteResponse)[0].granted
