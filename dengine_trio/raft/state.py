"""A node's role and the state that lives exactly as long as one role in one term.

``RaftNode`` holds one of ``FollowerState``, ``CandidateState`` or ``LeaderState``: it creates
a fresh one whenever its role or its term changes (Raft paper Figure 2, "Rules for all
servers") and drops the old one whole, so nothing of one leadership, one campaign or one
leader's facts can leak into the next (issue 11 item 6). What outlives a role (term, vote,
log, commit index, election timer, the time a leader was last heard) stays on ``RaftNode``.
"""

from __future__ import annotations

from enum import Enum

import attrs

from .reads import ReadOnly
from .tracker import Tracker

NEVER = float("inf")
"""A deadline (ms) that never comes."""


class Role(str, Enum):
    """A node's role (§5.1), with the pre-candidate of PreVote (thesis §9.6). The value is
    the name the HTTP status and metrics show."""

    FOLLOWER = "Follower"
    PRE_CANDIDATE = "PreCandidate"
    CANDIDATE = "Candidate"
    LEADER = "Leader"


@attrs.define(slots=True)
class FollowerState:
    """A follower's facts about one leader in one term.

    ``leader_match``: the highest index known to match that leader's log (only this may
    advance the commit index, issue 11 item 7); ``reported_match``: the match last reported
    to it (DiskFirst re-reports once durability catches up); ``forwarded_reads``: reads sent
    to it for a read index, request id -> time asked (ms)."""

    leader_match: int = 0
    reported_match: int = 0
    forwarded_reads: dict[int, float] = attrs.field(factory=dict)


@attrs.define(slots=True)
class CandidateState:
    """One campaign (§5.2; a PreVote round, thesis §9.6, when the role is PRE_CANDIDATE):
    the votes counted so far, in ``tracker.votes``."""

    tracker: Tracker


@attrs.define(slots=True)
class LeaderState:
    """One leadership (one term), created when the node wins and dropped when it stops
    leading.

    ``tracker``: progress of every other member and the quorum arithmetic over the voters
    (§5.3);
    ``since_ms``: when it won; ``next_heartbeat_ms``: when the next heartbeat round is due;
    ``reads``: heartbeat rounds, waiting reads and the lease (thesis §6.4);
    ``transfer_target``/``transfer_deadline_ms``: a leadership transfer in progress (0 and
    ``NEVER`` when none, thesis §3.10); ``timeout_now_sent``: a TimeoutNow went out in this
    term, so the lease is gone for good; ``handover_started``: removed from the membership,
    the leader began handing over (thesis §4.2.2); ``commit_advanced``/
    ``commit_notify_at_ms``: a new commit index not yet carried to the followers, and when a
    message of its own carries it.
    """

    tracker: Tracker
    since_ms: float
    next_heartbeat_ms: float = NEVER
    reads: ReadOnly = attrs.field(factory=ReadOnly)
    transfer_target: int = 0
    transfer_deadline_ms: float = NEVER
    timeout_now_sent: bool = False
    handover_started: bool = False
    commit_advanced: bool = False
    commit_notify_at_ms: float = NEVER


RoleState = FollowerState | CandidateState | LeaderState
"""The state of the current role: exactly one at a time."""
