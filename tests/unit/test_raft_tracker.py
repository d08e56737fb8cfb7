"""``Tracker``: the voter set, progress, votes, and the one place of quorum arithmetic."""

from __future__ import annotations

from dengine_trio.raft.tracker import Tracker, VoteResult


def test_votes_win_lose_or_wait() -> None:
    t = Tracker(1, (1, 2, 3, 4, 5))
    assert t.quorum == 3 and t.peers == (2, 3, 4, 5)
    assert t.start_votes() is VoteResult.PENDING
    assert t.record_vote(2, False) is VoteResult.PENDING
    assert t.record_vote(3, True) is VoteResult.PENDING
    assert t.record_vote(2, False) is VoteResult.PENDING  # a duplicate counts once
    assert t.record_vote(4, True) is VoteResult.WON
    assert sorted(t.granted_voters()) == [3, 4]
    t.start_votes()
    for voter in (2, 3, 4):
        result = t.record_vote(voter, False)
    assert result is VoteResult.LOST


def test_single_voter_wins_alone() -> None:
    assert Tracker(1, (1,)).start_votes() is VoteResult.WON


def test_quorum_values_over_progress() -> None:
    t = Tracker(1, (1, 2, 3))
    t.start_progress(next_index=5)
    assert set(t.progress) == {2, 3} and t.progress[2].next_index == 5
    t.progress[2].match_index, t.progress[3].match_index = 4, 2
    assert t.committed_index(self_match=6) == 4
    t.progress[2].acked_seq, t.progress[3].acked_seq = 0, 7
    assert t.confirmed_round(self_seq=9) == 7
    assert t.quorum_contact_ms(100.0) == float("-inf")  # nobody heard from yet
    t.progress[3].last_contact_ms = 40.0
    assert t.quorum_contact_ms(100.0) == 40.0


def test_a_candidate_outside_its_own_membership_does_not_count_its_own_vote() -> None:
    """Thesis §4.2.2: a node removed by an entry not committed yet may campaign (it may be
    needed to elect a leader), but does not count its own vote: voters {2} need 2's grant."""
    tracker = Tracker(1, (2,), ())
    assert tracker.start_votes() is VoteResult.PENDING
    assert tracker.record_vote(2, True) is VoteResult.WON
    tracker.start_votes()
    assert tracker.record_vote(2, False) is VoteResult.LOST
    voter = Tracker(1, (1, 2, 3), ())
    assert voter.start_votes() is VoteResult.PENDING
    assert voter.record_vote(2, True) is VoteResult.WON
