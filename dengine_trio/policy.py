"""Read consistency policies, named as in the configuration file."""

from __future__ import annotations

from enum import Enum


class ReadPolicy(str, Enum):
    """How a read is served; the value is the name in ``default_policy`` of the config file.

    ``LINEARIZABLE``: the leader records its commit index and confirms its leadership with a
    heartbeat round to a majority; the reading node (leader, or a follower that asked it) then
    answers once it has applied that index (ReadIndex, Raft thesis section 6.4). ``LEASE``: the
    same index without the round while the leader's lease holds (thesis section 6.4.1), correct
    while clocks drift less than the election timeout exceeds the lease. ``EVENTUAL``: the
    node answers at once from what it has applied; may be stale.
    """

    LINEARIZABLE = "LinearizableRead"
    LEASE = "LeaseRead"
    EVENTUAL = "EventualConsistency"
