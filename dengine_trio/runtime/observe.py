"""What a node tells its operator about itself: role changes, and a suspicious empty start.

Normal operations (elections, a hand-over the node asked for) are logged at INFO; what may
need a person (a leader losing its quorum or deposed by a higher term, a node that starts
empty while its peers have a history) at WARNING.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..raft import Role, RoleChanged
from ..raft.messages import AppendEntries, Heartbeat, RequestVote

__all__ = ["NodeLog"]

log = logging.getLogger("dengine_trio.node")


class NodeLog:
    """The operator-facing log lines of node ``node_id`` (data in ``db_root``)."""

    def __init__(self, node_id: int, db_root: Path) -> None:
        self.node_id = node_id
        self.db_root = db_root
        self.started_empty = False
        """Set when the node starts with no term, vote or log: armed until a peer shows a
        history (one WARNING) or the node holds entries."""
        self._was_leader = False
        self._last_term = 0

    def role_changed(self, change: RoleChanged, *, planned: bool) -> None:
        """One line per change of role, term or leader. A leader stepping down is a WARNING
        (a higher term seen, Raft paper section 5.1; or no quorum heard, CheckQuorum, Raft
        thesis section 6.2), unless ``planned`` (its own hand-over under way, thesis section
        3.10)."""
        was_leader, self._was_leader = self._was_leader, change.role is Role.LEADER
        last_term, self._last_term = self._last_term, change.term
        if was_leader and change.role is not Role.LEADER:
            if planned and change.term > last_term:
                # The hand-over this node asked for: normal operations, logged at INFO.
                log.info(
                    "node %d term %d: stepped down as leader: handed over (term %d)",
                    self.node_id,
                    last_term,
                    change.term,
                )
            else:
                if change.term == last_term:
                    why = "no quorum heard within an election timeout (CheckQuorum)"
                else:
                    why = f"saw term {change.term}"
                log.warning(
                    "node %d term %d: stepped down as leader: %s", self.node_id, last_term, why
                )
        if change.role is Role.LEADER:
            log.info("node %d term %d: elected leader", self.node_id, change.term)
        elif change.role is Role.FOLLOWER and change.leader_id:
            log.info(
                "node %d term %d: follower of leader %d",
                self.node_id,
                change.term,
                change.leader_id,
            )
        elif change.role is Role.FOLLOWER:
            log.info("node %d term %d: follower, no leader known", self.node_id, change.term)
        else:
            log.info(
                "node %d term %d: %s, campaigning",
                self.node_id,
                change.term,
                change.role.name.lower(),  # as /status spells it: pre_candidate
            )

    def peer_message(self, message: object, last_index: int) -> None:
        """One loud line when this node started with no term, vote or log but a peer's message
        shows a log it never received: a member whose data directory was wiped or replaced
        (issue 11 item 5). Since issue 14 it is safe (the cluster takes it back as a learner
        bound to its new directory and promotes it once caught up; it votes only then), but
        a disk replaced by surprise deserves the operator's eye. Also seen on a voter's very
        first start after its peers made progress without it; the line says so. A joining
        node (not a member yet) never says it."""
        if last_index > 0:
            self.started_empty = False  # it holds entries now: later evidence is its own
            return
        if isinstance(message, RequestVote):
            shown = message.last_log_index
        elif isinstance(message, AppendEntries):
            shown = max(message.prev_log_index, message.leader_commit)
        elif isinstance(message, Heartbeat):
            shown = message.commit
        else:
            return
        if shown > 0:
            self.started_empty = False
            log.warning(
                "node %d started with an empty data directory (%s), but node %d has a log up "
                "to index %d (term %d): if this node held data before (a wiped or replaced "
                "directory), it does not vote until the cluster has taken it back as a learner "
                "bound to its new directory and promoted it once caught up; see "
                "docs/durability.md, section \"A voter's data directory\". (On a node's very "
                "first start, after its peers made progress without it, this is expected.)",
                self.node_id,
                self.db_root,
                getattr(message, "src", 0),
                shown,
                getattr(message, "term", 0),
            )
