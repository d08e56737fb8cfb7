"""What comes into the Raft core. Every ``RaftNode.step`` call also receives ``now_ms``."""

from __future__ import annotations

import attrs

from .messages import Message


@attrs.frozen(slots=True)
class Tick:
    """Time has advanced; timers (election, heartbeat, CheckQuorum) are checked."""


@attrs.frozen(slots=True)
class Receive:
    """A message from a peer arrived."""

    message: Message


@attrs.frozen(slots=True)
class Propose:
    """A client command. Answered by ``Proposed`` or ``ProposalRejected``."""

    request_id: int
    data: bytes


@attrs.frozen(slots=True)
class ReadRequest:
    """A client read needing a read index: linearizable (ReadIndex) or, with ``lease``, LeaseRead.

    Answered by ``ReadReady(request_id, read_index)`` (serve once applied >= read_index) or
    ``ReadFailed``. Eventual reads never reach the core.
    """

    request_id: int
    lease: bool = False


@attrs.frozen(slots=True)
class Persisted:
    """The runtime made the log durable up to the entry (``index``, ``term``).

    The term guards against a report that arrives after that entry was truncated away.
    """

    index: int
    term: int


@attrs.frozen(slots=True)
class TransferLeader:
    """Ask the leader to hand leadership to ``target`` (0: the most up-to-date follower)."""

    target: int = 0


Event = Tick | Receive | Propose | ReadRequest | Persisted | TransferLeader
