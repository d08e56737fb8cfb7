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


_ABSENT = Progress(1)
"""What an uncounted voter contributes to a quorum: nothing matched, acknowledged or heard."""


class Tracker:
    """The voter set (``self_id`` included while it votes), the learners, the leader's
    ``progress`` map (one ``Progress`` per other member, voter or learner) and a campaign's
    ``votes`` (voter -> granted). Every quorum is over the voters alone: a learner is
    replicated to but never counted (thesis §4.2.1), and a leader that is no longer a voter
    (removed by an appended change) counts without itself (thesis §4.2.2). A node makes a new
    one for each leadership or campaign (``state.py``), and changes its members only when the
    membership in effect changes (``set_members``)."""

    __slots__ = (
        "_uncounted",
        "_voter_progress",
        "departing",
        "learners",
        "peers",
        "progress",
        "quorum",
        "self_id",
        "self_votes",
        "unanimous",
        "voter_set",
        "voters",
        "votes",
    )

    def __init__(
        self,
        self_id: int,
        voters: tuple[int, ...],
        learners: tuple[int, ...] = (),
        departing: tuple[int, ...] = (),
    ) -> None:
        self.self_id = self_id
        self.progress: dict[int, Progress] = {}
        self.votes: dict[int, bool] = {}
        self.unanimous = False
        self.voters: tuple[int, ...] = ()
        self.learners: tuple[int, ...] = ()
        self.departing: tuple[int, ...] = ()
        self.voter_set: frozenset[int] = frozenset()
        self.peers: tuple[int, ...] = ()
        self.quorum = 1
        self.self_votes = False
        # Voters that count as absent in every quorum (a data directory not the one bound).
        self._uncounted: frozenset[int] = frozenset()
        self._voter_progress: list[Progress] = []
        self._set(voters, learners, departing)

    def _set(
        self, voters: tuple[int, ...], learners: tuple[int, ...], departing: tuple[int, ...]
    ) -> None:
        self.voters = voters
        self.learners = learners
        self.departing = departing
        self.voter_set = frozenset(voters)
        self.self_votes = self.self_id in self.voter_set
        members = set(voters) | set(learners) | set(departing)
        self.peers = tuple(sorted(members - {self.self_id}))
        self.quorum = majority(len(voters)) if voters else 1

    @property
    def uncounted(self) -> frozenset[int]:
        """Voters that count as absent in every quorum (match 0, never heard from)."""
        return self._uncounted

    @uncounted.setter
    def uncounted(self, voters: frozenset[int]) -> None:
        self._uncounted = voters
        self._cache()

    def _cache(self) -> None:
        # Quorums are asked at every step (commit, CheckQuorum): build the list once.
        self._voter_progress = [
            _ABSENT if peer in self._uncounted else p
            for peer, p in self.progress.items()
            if peer in self.voter_set
        ]

    def start_progress(self, next_index: int) -> None:
        """A new leader's view: every other member in probe, next at ``next_index``."""
        self.progress = {p: Progress(next_index) for p in self.peers}
        self._cache()

    def set_members(
        self,
        voters: tuple[int, ...],
        learners: tuple[int, ...],
        next_index: int | None,
        departing: tuple[int, ...] = (),
    ) -> None:
        """The membership in effect changed (thesis §4.1, on append or truncation): every
        quorum is over the new voters from now on; with ``next_index`` (a leader's tracker)
        new members get a fresh ``Progress`` probing from there and removed ones lose theirs,
        except the ``departing``: removed by an entry not committed yet, they are still
        replicated to (so they learn of their removal), never counted."""
        self._set(voters, learners, departing)
        self.votes = {v: g for v, g in self.votes.items() if v in self.voter_set}
        if next_index is None:
            return
        for peer in [p for p in self.progress if p not in self.peers]:
            del self.progress[peer]
        for peer in self.peers:
            if peer not in self.progress:
                self.progress[peer] = Progress(next_index)
        self._cache()

    def voter_progress(self) -> list[Progress]:
        """The progress of every other voter (learners left out); an ``uncounted`` voter
        stands for an absent one (match 0, never heard from). Do not modify the list."""
        return self._voter_progress

    # --- votes (§5.2, thesis §9.6 for PreVote)

    def start_votes(self, *, unanimous: bool = False) -> VoteResult:
        """A campaign begins with our own vote, which counts only if we are a voter (a node
        campaigning while its own removal is not committed, thesis §4.2.2, does not count
        it). ``unanimous``: a bootstrap election (docs/architecture.md, "Membership changes
        in the core", rule 9), won only with every voter's grant and lost at the first
        refusal."""
        self.votes = {self.self_id: True} if self.self_votes else {}
        self.unanimous = unanimous
        return self.vote_result()

    def record_vote(self, voter: int, granted: bool) -> VoteResult:
        """Count ``voter``'s answer (a repeated answer replaces the earlier one; an answer
        from a node that is not a voter counts for nothing) and say where the campaign
        stands."""
        if voter in self.voter_set:
            self.votes[voter] = granted
        return self.vote_result()

    def vote_result(self) -> VoteResult:
        """WON once a majority of the voters granted, LOST once a majority refused (in a
        unanimous campaign: once every voter granted, at the first refusal)."""
        granted = sum(1 for g in self.votes.values() if g)
        if self.unanimous:
            if granted >= len(self.voter_set):
                return VoteResult.WON
            return VoteResult.LOST if granted < len(self.votes) else VoteResult.PENDING
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
        """The highest index a majority of the voters holds (§5.3): the commit candidate."""
        values = [p.match_index for p in self.voter_progress()]
        return quorum_value([self_match, *values] if self.self_votes else values)

    def confirmed_round(self, self_seq: int) -> int:
        """The newest heartbeat round a majority of the voters has acknowledged (ReadIndex,
        lease)."""
        values = [p.acked_seq for p in self.voter_progress()]
        return quorum_value([self_seq, *values] if self.self_votes else values)

    def quorum_contact_ms(self, now_ms: float) -> float:
        """The latest moment (ms) by which a majority of the voters had been heard from
        (CheckQuorum)."""
        values = [p.last_contact_ms for p in self.voter_progress()]
        return quorum_value([now_ms, *values] if self.self_votes else values)
