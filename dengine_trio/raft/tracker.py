"""Who the voters are and what the leader or candidate knows about each: progress, votes,
and every piece of quorum arithmetic over them (etcd raft's ``tracker`` package).

Commit, vote counting, ReadIndex confirmation, the lease and CheckQuorum all ask "what does a
majority of the voters agree on?"; this module is the one place that answers, so that learners
and joint configurations (membership changes) will change it here and nowhere else.
"""

from __future__ import annotations

from enum import Enum

from .progress import Progress
from .quorum import majority, quorum_value


class VoteResult(Enum):
    """Where a campaign stands (§5.2): a majority granted (WON), a majority refused (LOST),
    or neither yet (PENDING)."""

    PENDING = "pending"
    WON = "won"
    LOST = "lost"


class Tracker:
    """The voter set (``self_id`` included), the leader's ``progress`` map (one ``Progress``
    per other voter) and a campaign's ``votes`` (voter -> granted). A node makes a new one
    for each leadership or campaign (``state.py``), so none is ever reset."""

    __slots__ = ("peers", "progress", "quorum", "self_id", "voters", "votes")

    def __init__(self, self_id: int, voters: tuple[int, ...]) -> None:
        self.self_id = self_id
        self.voters = voters
        self.peers: tuple[int, ...] = tuple(v for v in voters if v != self_id)
        self.quorum = majority(len(voters))
        self.progress: dict[int, Progress] = {}
        self.votes: dict[int, bool] = {}

    def start_progress(self, next_index: int) -> None:
        """A new leader's view: every other voter in probe, next at ``next_index``."""
        self.progress = {p: Progress(next_index) for p in self.peers}

    # --- votes (§5.2, thesis §9.6 for PreVote)

    def start_votes(self) -> VoteResult:
        """A campaign begins with our own vote."""
        self.votes = {self.self_id: True}
        return self.vote_result()

    def record_vote(self, voter: int, granted: bool) -> VoteResult:
        """Count ``voter``'s answer (a repeated answer replaces the earlier one) and say
        where the campaign stands."""
        self.votes[voter] = granted
        return self.vote_result()

    def vote_result(self) -> VoteResult:
        """WON once a majority of the voters granted, LOST once a majority refused."""
        granted = sum(1 for g in self.votes.values() if g)
        if granted >= self.quorum:
            return VoteResult.WON
        if len(self.votes) - granted >= self.quorum:
            return VoteResult.LOST
        return VoteResult.PENDING

    def granted_voters(self) -> list[int]:
        """The other voters that granted their vote: a new leader counts them as heard from
        at the win (CheckQuorum, thesis §6.2)."""
        return [v for v, g in self.votes.items() if g and v != self.self_id]

    # --- quorum values over the progress map (the leader counts itself with its own value)

    def committed_index(self, self_match: int) -> int:
        """The highest index a majority holds (§5.3): the commit candidate."""
        return quorum_value([self_match, *(p.match_index for p in self.progress.values())])

    def confirmed_round(self, self_seq: int) -> int:
        """The newest heartbeat round a majority has acknowledged (ReadIndex, lease)."""
        return quorum_value([self_seq, *(p.acked_seq for p in self.progress.values())])

    def quorum_contact_ms(self, now_ms: float) -> float:
        """The latest moment (ms) by which a majority had been heard from (CheckQuorum)."""
        return quorum_value([now_ms, *(p.last_contact_ms for p in self.progress.values())])
