"""What the Raft core asks its runtime to do.

``RaftNode.step`` returns effects in the order they must be carried out. The rule is a property
of the effect types, ``barrier`` (a class attribute of each):

* an effect whose type has ``barrier = True`` (``PersistHardState``, ``RestoreSnapshot``) must
  have completed, durably, before any later effect of the same list is carried out: term and
  vote are on disk before a message that depends on them leaves (Raft paper, Figure 2), and an
  installed snapshot is in place before the answer that reports it (§7);
* every other effect is carried out synchronously, in order, with no await in between.

So a runtime carries out a list synchronously up to its first barrier, awaits that one, and
goes on. ``PersistEntries`` is not a barrier: the append is handed to storage at once and may
become durable later; the runtime reports that with the ``Persisted`` event, and the core holds
back whatever must wait for durability (DiskFirst).
"""

from __future__ import annotations

from typing import ClassVar

import attrs

from .membership import Membership
from .messages import Entry, Message
from .state import Role  # re-exported: ``RoleChanged`` carries one

__all__ = [
    "Apply",
    "ConfChangeRejected",
    "Effect",
    "MembershipChanged",
    "PersistEntries",
    "PersistHardState",
    "ProposalRejected",
    "Proposed",
    "ReadFailed",
    "ReadReady",
    "RestoreSnapshot",
    "Role",
    "RoleChanged",
    "Send",
]


@attrs.frozen(slots=True)
class Send:
    """Deliver ``message`` to ``message.dst``. Best effort: the core tolerates loss,
    duplication, delay and reordering (§5.1); the runtime may drop it when the link is down."""

    barrier: ClassVar[bool] = False

    message: Message


@attrs.frozen(slots=True)
class PersistHardState:
    """Make (term, voted_for) durable before sending anything that follows. 0 means no vote."""

    barrier: ClassVar[bool] = True

    term: int
    voted_for: int


@attrs.frozen(slots=True)
class PersistEntries:
    """Append ``entries`` to the durable log, first truncating it from ``entries[0].index``."""

    barrier: ClassVar[bool] = False

    entries: tuple[Entry, ...]


@attrs.frozen(slots=True)
class RestoreSnapshot:
    """Follower: replace the log and the state machine with the staged snapshot that ends at
    entry (``index``, ``term``), the one just stepped in as ``InstallSnapshot`` (Raft paper §7,
    Figure 13, steps 6-8). Durably, before any later effect: move the staged file in among the
    snapshots, reset the log so that ``index + 1`` is the next entry, restore the state machine
    from the file (applied index ``index``). A step that received an ``InstallSnapshot`` and
    returned no ``RestoreSnapshot`` for it means: discard the staged file. ``membership``:
    ``encode_membership`` of the membership the node adopted with it (the message's; b"" if
    the leader sent none and the node kept its own)."""

    barrier: ClassVar[bool] = True

    index: int
    term: int
    membership: bytes = b""


@attrs.frozen(slots=True)
class Apply:
    """Committed entries, in log order, for the state machine (no-ops included; skip them)."""

    barrier: ClassVar[bool] = False

    entries: tuple[Entry, ...]


@attrs.frozen(slots=True)
class ReadReady:
    """Serve read ``request_id`` once the state machine has applied ``read_index``."""

    barrier: ClassVar[bool] = False

    request_id: int
    read_index: int


@attrs.frozen(slots=True)
class ReadFailed:
    """The read could not get a read index here; ``leader_id`` (0 if unknown) may serve it."""

    barrier: ClassVar[bool] = False

    request_id: int
    leader_id: int


@attrs.frozen(slots=True)
class Proposed:
    """The command became entry (``index``, ``term``); it is committed when that entry applies."""

    barrier: ClassVar[bool] = False

    request_id: int
    index: int
    term: int


@attrs.frozen(slots=True)
class ProposalRejected:
    """This node cannot take proposals; ``leader_id`` (0 if unknown) is where to forward them."""

    barrier: ClassVar[bool] = False

    request_id: int
    leader_id: int


@attrs.frozen(slots=True)
class ConfChangeRejected:
    """The membership change ``request_id`` was refused; nothing was appended. ``code``:
    ``not_leader`` (``leader_id`` is where to forward, 0 if unknown), ``pending`` (a change is
    uncommitted, or no entry of the leader's term is committed yet), ``unknown_member``,
    ``duplicate_id``, ``duplicate_address``, ``last_voter``, ``not_learner``, ``behind``
    (``detail`` ``{"lag": entries}``), ``quorum_at_risk`` (``detail`` ``{"active": [ids],
    "needed": n, "inactive": [ids]}``) or ``bad_request``."""

    barrier: ClassVar[bool] = False

    request_id: int
    code: str
    message: str
    leader_id: int = 0
    detail: dict[str, object] = attrs.field(factory=dict, hash=False)


@attrs.frozen(slots=True)
class MembershipChanged:
    """The membership in effect is now ``membership``, from the CONFIG entry (or snapshot) at
    ``index`` (thesis §4.1: in effect once appended; a truncation can take it back). Emitted
    at the point of the change, before any message that relies on it (a new member's first
    AppendEntries), so the runtime can dial new members and drop removed ones."""

    barrier: ClassVar[bool] = False

    membership: Membership
    index: int


@attrs.frozen(slots=True)
class RoleChanged:
    """The node's (role, term, known leader) changed; ``leader_id`` 0 means none known.
    Emitted once per step at most, after everything else, for status and metrics."""

    barrier: ClassVar[bool] = False

    role: Role
    term: int
    leader_id: int


Effect = (
    Send
    | PersistHardState
    | PersistEntries
    | RestoreSnapshot
    | Apply
    | ReadReady
    | ReadFailed
    | Proposed
    | ProposalRejected
    | RoleChanged
    | ConfChangeRejected
    | MembershipChanged
)
