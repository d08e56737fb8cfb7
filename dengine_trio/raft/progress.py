"""What a leader knows about one follower's log (etcd raft's tracker.Progress).

``PROBE``: we do not know where the follower's log matches ours; send one AppendEntries at a
time and back-track on rejection. ``REPLICATE``: the follower is in sync; send optimistically
(pipelining), bounded by ``max_inflight`` unacknowledged messages. ``SNAPSHOT``: the entry the
follower needs next is compacted away; an InstallSnapshot is on its way and nothing else is
sent to it but heartbeats until the follower shows it caught up (Raft paper §7).
"""

from __future__ import annotations

from collections import deque
from enum import Enum


class ProgressState(Enum):
    """How the leader sends to one follower: PROBE (one AppendEntries at a time, back-track
    on rejection, §5.3), REPLICATE (pipelined, up to ``max_inflight_msgs`` in flight) or
    SNAPSHOT (an InstallSnapshot is on its way, §7; no AppendEntries meanwhile)."""

    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


class Progress:
    """The leader's view of one follower in one term (Figure 2's ``nextIndex[]`` and
    ``matchIndex[]``, plus etcd raft's probe/replicate flow control): ``next_index`` to send
    next, ``match_index`` known to match, ``inflight`` last indexes of unacknowledged
    pipelined messages, ``last_contact_ms`` when last heard from (ms, CheckQuorum, thesis
    §6.2), ``acked_seq`` newest heartbeat round acknowledged (ReadIndex and lease, thesis
    §6.4), ``sent_commit`` newest commit index told to it; in SNAPSHOT, ``pending_snapshot``
    and ``pending_snapshot_term`` name the last entry of the snapshot sent,
    ``snapshot_round`` the newest heartbeat round started when it was sent, and
    ``snapshot_delivered_round`` the newest started when the runtime reported the transfer
    complete (0 otherwise)."""

    __slots__ = (
        "acked_seq",
        "inflight",
        "last_contact_ms",
        "match_index",
        "next_index",
        "pending_snapshot",
        "pending_snapshot_term",
        "probe_sent",
        "sent_commit",
        "snapshot_delivered_round",
        "snapshot_round",
        "state",
    )

    def __init__(self, next_index: int) -> None:
        self.next_index = next_index
        self.match_index = 0
        self.state = ProgressState.PROBE
        self.probe_sent = False
        # Last index carried by each unacknowledged pipelined AppendEntries.
        self.inflight: deque[int] = deque()
        self.last_contact_ms = float(
            "-inf"
        )  # when we last heard from it in this term (CheckQuorum)
        self.acked_seq = 0  # newest heartbeat round this follower acknowledged
        self.sent_commit = 0  # newest commit index we told this follower about
        self.pending_snapshot = 0
        self.pending_snapshot_term = 0
        self.snapshot_delivered_round = 0
        self.snapshot_round = 0

    def paused(self, max_inflight: int) -> bool:
        """Must the leader hold further AppendEntries? In PROBE while a probe is
        unanswered; in REPLICATE once ``max_inflight`` messages are unacknowledged; always
        in SNAPSHOT."""
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.SNAPSHOT:
            return True
        return len(self.inflight) >= max_inflight

    def become_probe(self) -> None:
        """Back to probing from just past ``match_index`` (a rejection, or a follower that
        lost its unflushed tail); forgets what was in flight and any snapshot sent."""
        self.state = ProgressState.PROBE
        self.next_index = self.match_index + 1
        self._clear()

    def become_replicate(self) -> None:
        """The follower's log matches ours up to ``match_index``: send optimistically from
        just past it."""
        self.state = ProgressState.REPLICATE
        self.next_index = self.match_index + 1
        self._clear()

    def become_snapshot(self, index: int, term: int, heartbeat_round: int) -> None:
        """An InstallSnapshot of the snapshot ending at (``index``, ``term``) goes out while
        ``heartbeat_round`` is the newest round: hold every AppendEntries until the follower
        has it (or the transfer fails)."""
        self.state = ProgressState.SNAPSHOT
        self._clear()
        self.pending_snapshot = index
        self.pending_snapshot_term = term
        self.snapshot_round = heartbeat_round

    def snapshot_landed(self) -> None:
        """The follower shows it holds the pending snapshot's last entry (a heartbeat answer
        whose ``last_index`` reaches it; the AppendEntries answer may be lost): probe from
        just past the snapshot, as etcd raft does after a snapshot."""
        pending = self.pending_snapshot
        self.become_probe()
        self.next_index = max(self.next_index, pending + 1)

    def snapshot_failed(self) -> None:
        """The runtime gave up sending the snapshot: probe again from the match, but only
        after the follower next answers a heartbeat (``probe_sent``), so that an unreachable
        follower costs one attempt per answer, not one per step (etcd raft's
        ReportSnapshot failure)."""
        self.become_probe()
        self.probe_sent = True

    def _clear(self) -> None:
        self.probe_sent = False
        self.inflight.clear()
        self.pending_snapshot = 0
        self.pending_snapshot_term = 0
        self.snapshot_delivered_round = 0
        self.snapshot_round = 0

    def sent(self, last_index: int) -> None:
        """Record an AppendEntries carrying entries up to ``last_index``."""
        if self.state is ProgressState.REPLICATE:
            self.next_index = last_index + 1
            self.inflight.append(last_index)
        else:
            self.probe_sent = True

    def acknowledge(self, match_index: int) -> bool:
        """Apply a successful reply; False if it told us nothing new (stale or duplicate)."""
        if match_index <= self.match_index:
            return False
        self.match_index = match_index
        self.next_index = max(self.next_index, match_index + 1)
        while self.inflight and self.inflight[0] <= match_index:
            self.inflight.popleft()
        return True

    def reject(self, reject_index: int, hint_next: int) -> bool:
        """Apply a rejection of the AppendEntries whose prev_log_index was ``reject_index``.

        Returns False for a stale rejection (one about a message we have since moved past;
        in SNAPSHOT every rejection is: no AppendEntries went out since the snapshot).
        """
        if self.state is ProgressState.SNAPSHOT:
            return False
        if self.state is ProgressState.REPLICATE:
            if reject_index <= self.match_index:
                return False
            self.become_probe()
            self.next_index = max(self.match_index + 1, min(reject_index, hint_next))
            return True
        if reject_index != self.next_index - 1:
            return False
        self.next_index = max(self.match_index + 1, min(reject_index, hint_next), 1)
        self.probe_sent = False
        return True
