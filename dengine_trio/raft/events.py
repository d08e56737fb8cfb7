"""What comes into the Raft core. Every ``RaftNode.step`` call also receives ``now_ms``."""

from __future__ import annotations

import attrs

from .membership import ConfChange
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


@attrs.frozen(slots=True)
class SnapshotTaken:
    """The runtime durably wrote a snapshot of the state machine as of applied entry
    (``index``, ``term``) (Raft paper §7). The core records it as its newest snapshot (if
    newer) and drops its in-memory log through ``min(compact_through, index)`` (the runtime
    keeps some entries, ``retained_log_entries``, so that a follower a little behind catches
    up from the log rather than a snapshot). ``step`` raises ``ValueError`` if ``index`` was
    not yet handed out in an ``Apply``, or the log holds another term there."""

    index: int
    term: int
    compact_through: int


@attrs.frozen(slots=True)
class SnapshotStatus:
    """Leader side: the runtime finished streaming the snapshot to ``peer`` (``ok``), or gave
    up (not ``ok``: the peer unreachable, the connection lost, no snapshot file). etcd raft's
    ReportSnapshot. After ``ok`` the leader still waits for the follower's answer."""

    peer: int
    ok: bool


@attrs.frozen(slots=True)
class ProposeConfChange:
    """A membership change (thesis §4.1, one server at a time). Answered as ``Propose`` is by
    ``Proposed`` (the change is committed when that CONFIG entry applies), or by
    ``ConfChangeRejected``."""

    request_id: int
    change: ConfChange


@attrs.frozen(slots=True)
class PeerIdentity:
    """``peer`` runs on the data directory ``uuid`` (from its handshake; the runtime steps
    this before any message of that connection). A leader rebinds a member whose uuid
    changed (a wiped data directory) and probes it from scratch."""

    peer: int
    uuid: str


@attrs.frozen(slots=True)
class Removed:
    """A member of this node's cluster refused it at the handshake, saying the membership it
    committed at log ``index`` does not include this node (the runtime steps this only for
    such a refusal: ``HelloReply.removed_index``). Unless the node's own log holds a
    membership at ``index`` or later, it goes passive as a node that appended its own removal
    (thesis §4.2.3): no campaign, no vote; a candidate or leader steps down. Passivity never
    breaks safety, so a false claim costs only this node's liveness."""

    index: int


Event = (
    Tick
    | Receive
    | Propose
    | ReadRequest
    | Persisted
    | TransferLeader
    | SnapshotTaken
    | SnapshotStatus
    | ProposeConfChange
    | PeerIdentity
    | Removed
)
