"""``Removed``: a member's handshake refusal tells a node the membership committed at some
index leaves it out (issue 14: the leader stops replicating to a member once its removal
commits, so a member paused or cut off then never receives the entry and, a voter in its own
view, campaigns for as long as it runs). The node goes passive as one that appended its own
removal (thesis §4.2.3): no campaign, no vote; a claim no newer than its own membership is
ignored, and passivity never breaks safety (a false claim costs liveness only)."""

from __future__ import annotations

from dengine_trio.raft import Receive, Removed, Role, Send
from dengine_trio.raft.messages import RequestVote, RequestVoteResponse

from .test_raft_membership import cluster, raft, run


def test_a_removed_node_cut_off_at_the_commit_stops_campaigning_when_told() -> None:
    it = cluster(3)
    run(it, "partition 1 2 / 3", "change 1 remove 3", "stabilize 1 2", "run 100")
    leader, removed = raft(it, 1), raft(it, 3)
    assert leader.membership.ids == (1, 2) and removed.membership.is_voter(3)
    run(it, "advance 3000 3")
    assert removed.role in (Role.PRE_CANDIDATE, Role.CANDIDATE)  # it never heard of it
    now = removed.now
    # A claim no newer than its own membership is no news: ignored.
    removed.step(now, Removed(removed.membership_index))
    assert removed.next_deadline() != float("inf")
    removed.step(now, Removed(leader.commit_index))
    assert removed.role is Role.FOLLOWER and removed.next_deadline() == float("inf")
    run(it, "advance 3000 3")
    assert removed.role is Role.FOLLOWER
    # It votes for nobody, whatever the term.
    term = removed.term + 5
    vote = RequestVote(term, 2, 3, 10**6, term, explicit=True)
    out = removed.step(now, Receive(vote))
    grants = [
        e.message
        for e in out
        if isinstance(e, Send) and isinstance(e.message, RequestVoteResponse) and e.message.granted
    ]
    assert grants == []
