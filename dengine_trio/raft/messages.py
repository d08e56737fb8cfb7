"""The RPCs Raft nodes exchange, and the log entry they carry.

Every message names its sender (``src``), its receiver (``dst``) and the sender's ``term``; the
rules in ``node.py`` compare terms before anything else (Raft paper, Figure 2, "Rules for all
servers"). These are plain attrs classes so the wire layer can encode them with cattrs.
"""

from __future__ import annotations

import typing
from enum import IntEnum

import attrs


class EntryKind(IntEnum):
    """What an entry carries. A no-op is what a new leader appends to commit its term (§8); a
    CONFIG entry's ``data`` is ``encode_membership`` of the whole new membership, in effect on
    a node from the moment the entry is in its log (thesis §4.1; ``membership.py``)."""

    COMMAND = 0
    NOOP = 1
    CONFIG = 2


@attrs.frozen(slots=True)
class Entry:
    """One log entry: ``data`` is an opaque command for the state machine."""

    term: int
    index: int
    data: bytes = b""
    kind: EntryKind = EntryKind.COMMAND


@attrs.frozen(slots=True)
class RequestVote:
    """RequestVote RPC (§5.2), also used for PreVote (Ongaro's thesis §9.6).

    A pre-vote carries the term the sender *would* campaign in, without the sender having moved
    to it. ``transfer`` marks a campaign started by TimeoutNow (leadership transfer, thesis §3.10):
    receivers then ignore their "heard from a leader recently" guard. ``explicit``: the
    candidate's membership is explicit (has a cluster id); ``dst_uuid``: the data-directory
    uuid that membership binds the receiver to ("" if unbound or implicit). A receiver whose
    own membership is implicit grants an explicit candidate only if ``dst_uuid`` is its own
    uuid (``node.py``, "Membership and votes").
    """

    term: int
    src: int
    dst: int
    last_log_index: int
    last_log_term: int
    pre_vote: bool = False
    transfer: bool = False
    explicit: bool = False
    dst_uuid: str = ""


@attrs.frozen(slots=True)
class RequestVoteResponse:
    """Answer to a RequestVote (§5.2) or PreVote (thesis §9.6, ``pre_vote`` True). A granted
    PreVote carries the term the candidate would campaign in; anything else the sender's
    current term."""

    term: int
    src: int
    dst: int
    granted: bool
    pre_vote: bool = False


@attrs.frozen(slots=True)
class AppendEntries:
    """AppendEntries RPC (§5.3): entries following ``prev_log_index``; may be empty."""

    term: int
    src: int
    dst: int
    prev_log_index: int
    prev_log_term: int
    entries: tuple[Entry, ...]
    leader_commit: int


@attrs.frozen(slots=True)
class AppendEntriesResponse:
    """Reply to AppendEntries.

    On success ``match_index`` is the highest index the follower knows to match the leader's log
    (and, under DiskFirst, has made durable). On rejection ``reject_index`` echoes the request's
    ``prev_log_index`` so the leader can ignore stale rejections, and ``conflict_index`` /
    ``conflict_term`` let it skip a whole conflicting term at once (§5.3, "fast back-tracking").
    """

    term: int
    src: int
    dst: int
    success: bool
    match_index: int = 0
    reject_index: int = 0
    conflict_index: int = 0
    conflict_term: int = 0


@attrs.frozen(slots=True)
class Heartbeat:
    """Leader's periodic liveness message (etcd's MsgHeartbeat).

    ``commit`` is already capped by the leader at what it believes this follower holds (to a
    follower being sent a snapshot: the snapshot's last entry; 0 when the leader's entry there
    is compacted away), and ``commit_term`` is the term of the leader's entry there: the
    follower commits up to ``commit`` only if it holds that very entry (by log matching, §5.3,
    then the whole prefix), since a restarted follower may hold less, or older entries, than
    the leader believes.
    ``seq`` numbers the heartbeat round; a quorum of acknowledgements of round ``seq`` confirms
    leadership as of the time that round was sent (ReadIndex and the leader lease use this).
    """

    term: int
    src: int
    dst: int
    commit: int
    seq: int
    commit_term: int = 0


@attrs.frozen(slots=True)
class HeartbeatResponse:
    """Echoes ``seq``. ``last_index`` lets the leader notice a follower that lost its tail: it
    is the follower's last index, or less when the follower could not confirm that it shares
    the leader's entry at the heartbeat's ``commit`` (the leader then probes from there)."""

    term: int
    src: int
    dst: int
    seq: int
    last_index: int


@attrs.frozen(slots=True)
class TimeoutNow:
    """Leadership transfer (thesis §3.10): the receiver campaigns at once, skipping PreVote
    and passing the voters' stickiness (its RequestVote carries ``transfer``)."""

    term: int
    src: int
    dst: int


@attrs.frozen(slots=True)
class ReadIndex:
    """A follower asks the leader for a read index on behalf of one of its clients (thesis
    §6.4: the leader confirms a heartbeat round, then answers with its commit index).

    ``lease`` lets the leader answer from its lease without a heartbeat round.
    """

    term: int
    src: int
    dst: int
    request_id: int
    lease: bool = False


@attrs.frozen(slots=True)
class ReadIndexResponse:
    """``read_index`` is 0 and ``ok`` False when the leader could not serve the request."""

    term: int
    src: int
    dst: int
    request_id: int
    read_index: int
    ok: bool


@attrs.frozen(slots=True)
class InstallSnapshot:
    """InstallSnapshot (Raft paper §7, Figure 13; thesis chapter 5), as metadata only: the leader's
    snapshot ends at entry (``last_index``, ``last_term``); the state machine image itself
    travels beside the message, never through the core (as in etcd raft).

    Sent by the core (``Send``): the runtime streams its newest snapshot file (ending at or
    after ``last_index``) to ``dst``. Received by the core: the runtime steps it only once the
    whole file is verified and staged, naming the staged file's own index and term. Answered
    by an ``AppendEntriesResponse`` (``success``, ``match_index``) as AppendEntries is.
    ``membership``: ``encode_membership`` of the membership in effect at ``last_index`` (b""
    from a sender that has none: the receiver keeps its own).
    """

    term: int
    src: int
    dst: int
    last_index: int
    last_term: int
    membership: bytes = b""


Message = (
    RequestVote
    | RequestVoteResponse
    | AppendEntries
    | AppendEntriesResponse
    | Heartbeat
    | HeartbeatResponse
    | TimeoutNow
    | ReadIndex
    | ReadIndexResponse
    | InstallSnapshot
)

MESSAGE_TYPES: tuple[type, ...] = typing.get_args(Message)
"""Every type of ``Message``, derived from the union: one list to extend, not two."""
