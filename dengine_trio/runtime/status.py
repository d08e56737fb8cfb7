"""A node's state as one frozen value, read from the core and the runtime at one instant.

The engine and the HTTP layer read a node only through this (``NodeRuntime.status``): they do
not reach into the Raft core.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import attrs

__all__ = ["NodeStatus", "PeerStatus"]


@attrs.frozen(slots=True)
class PeerStatus:
    """The leader's view of one follower's replication."""

    match_index: int
    next_index: int
    state: str
    """``probe`` or ``replicate``."""
    last_contact_ago_ms: float | None
    """Milliseconds since the follower was last heard from; None if never."""


def _frozen_mapping(value: Mapping[Any, Any]) -> Mapping[Any, Any]:
    return MappingProxyType(dict(value))


@attrs.frozen(slots=True)
class NodeStatus:
    """One node as of one instant.

    ``role`` is lower case, as ``/primary`` and ``/replica`` spell it (``leader``,
    ``follower``, ``pre_candidate``, ``candidate``), or ``stopped``. ``ready``: a leader is
    known and, on the leader, it has committed an entry of its term (it can serve).
    ``has_quorum``: a leader heard from a quorum within the election timeout;
    ``leader_contact_recent``: a follower heard from its leader within
    ``election_timeout_max_ms``. ``snapshot_*``: the newest snapshot. ``peers`` (leader
    only) and ``transport`` are filled only when asked for (``detail``).
    """

    node_id: int
    role: str
    term: int
    leader_id: int | None
    commit_index: int
    applied_index: int
    last_log_index: int
    ready: bool
    has_quorum: bool
    leader_contact_recent: bool
    stopped: bool
    snapshot_index: int = 0
    """Last entry the newest snapshot of this node covers (taken or installed; 0: none)."""
    snapshot_term: int = 0
    """Term of that entry."""
    snapshot_bytes: int = 0
    """Size of the newest snapshot file this process wrote, installed or started from."""
    peers: Mapping[int, PeerStatus] = attrs.field(factory=dict, converter=_frozen_mapping, eq=False)
    transport: Mapping[str, Any] = attrs.field(factory=dict, converter=_frozen_mapping, eq=False)

    @property
    def is_leader(self) -> bool:
        """``role == "leader"`` as of this status (it may have changed since)."""
        return self.role == "leader"
