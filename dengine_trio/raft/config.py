"""Tuning of the Raft core. Times are in milliseconds of the caller's clock."""

from __future__ import annotations

from enum import Enum

import attrs


class Durability(str, Enum):
    """When an entry counts toward commit.

    DISK_FIRST: only once durable (fsynced) on the node that counts it.
    MEM_FIRST: once appended in memory; the runtime flushes in batches, so a crash of a
    majority can lose acknowledged writes within the flush window.
    """

    DISK_FIRST = "DiskFirst"
    MEM_FIRST = "MemFirst"


@attrs.frozen(slots=True)
class RaftConfig:
    """Tuning of one node's Raft core; all times in milliseconds.

    ``voters``: every voter's id, this node's ``node_id`` included. Election timeouts are
    drawn uniformly from [``election_timeout_min_ms``, ``election_timeout_max_ms``) (§5.2);
    ``heartbeat_interval_ms`` paces heartbeat rounds; ``lease_duration_ms`` is how long after
    sending a round that a majority acknowledged the leader may serve lease reads (thesis
    §6.4.1: shorter than the minimum election timeout, leaving room for clock drift).
    ``max_entries_per_msg``/``max_bytes_per_msg`` bound one AppendEntries (bytes of command
    data); ``max_inflight_msgs`` bounds pipelining. ``pre_vote`` (thesis §9.6) and
    ``check_quorum`` (thesis §6.2; lease reads are served locally only with it on).
    ``voters`` make the implicit membership (``membership.py``) of a node started without
    one; ``node_id`` need not be among them (a joining node is no member at all).
    ``max_promote_lag_entries``: a learner is promoted (by hand or automatically) only once
    its log is at most this many entries behind the leader's last index.

    Raises ``ValueError`` if the timeout range is empty or not positive, the heartbeat is not
    shorter than the minimum election timeout, or the lease is not shorter than it.
    """

    node_id: int
    voters: tuple[int, ...]
    election_timeout_min_ms: float = 600.0
    election_timeout_max_ms: float = 900.0
    heartbeat_interval_ms: float = 50.0
    lease_duration_ms: float = 500.0
    # How long a new commit index may wait to ride on the next AppendEntries before a message
    # of its own carries it to the followers. Longer than the gap between a lone client's
    # writes (~2 ms over HTTP), or that client pays an extra round of messages per write;
    # short next to the heartbeat, so an idle follower still applies within ~10 ms.
    commit_notify_delay_ms: float = 10.0
    max_entries_per_msg: int = 512
    max_bytes_per_msg: int = 1 << 20
    max_inflight_msgs: int = 64
    durability: Durability = Durability.DISK_FIRST
    pre_vote: bool = True
    check_quorum: bool = True
    max_promote_lag_entries: int = 1000

    def __attrs_post_init__(self) -> None:
        if self.max_promote_lag_entries < 0:
            raise ValueError("max_promote_lag_entries must not be negative")
        if not 0 < self.election_timeout_min_ms < self.election_timeout_max_ms:
            raise ValueError("election timeout range must be 0 < min < max")
        if not 0 < self.heartbeat_interval_ms < self.election_timeout_min_ms:
            raise ValueError("heartbeat interval must be shorter than the election timeout")
        if self.lease_duration_ms >= self.election_timeout_min_ms:
            raise ValueError("lease must be shorter than the minimum election timeout")
