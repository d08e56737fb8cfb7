"""The sans-IO Raft core: ``RaftNode.step(now_ms, event) -> list[Effect]``.

No trio, no sockets, no clock, no randomness of its own: the runtime (or the test simulator)
feeds it events and carries out the effects it returns, in order.
"""

from .config import Durability, RaftConfig
from .effects import (
    Apply,
    ConfChangeRejected,
    Effect,
    MembershipChanged,
    PersistEntries,
    PersistHardState,
    ProposalRejected,
    Proposed,
    ReadFailed,
    ReadReady,
    RestoreSnapshot,
    RoleChanged,
    Send,
)
from .events import (
    Event,
    PeerIdentity,
    Persisted,
    Propose,
    ProposeConfChange,
    ReadRequest,
    Receive,
    Removed,
    SnapshotStatus,
    SnapshotTaken,
    Tick,
    TransferLeader,
)
from .log import RaftLog
from .membership import (
    ConfChange,
    ConfChangeError,
    ConfChangeKind,
    Member,
    Membership,
    address_key,
    canonical_address,
    decode_membership,
    encode_membership,
    implicit_membership,
)
from .messages import MESSAGE_TYPES, Entry, EntryKind, InstallSnapshot, Message
from .node import RaftNode, RandomSource
from .state import Role

__all__ = [
    "MESSAGE_TYPES",
    "Apply",
    "ConfChange",
    "ConfChangeError",
    "ConfChangeKind",
    "ConfChangeRejected",
    "Durability",
    "Effect",
    "Entry",
    "EntryKind",
    "Event",
    "InstallSnapshot",
    "Member",
    "Membership",
    "MembershipChanged",
    "Message",
    "PeerIdentity",
    "PersistEntries",
    "PersistHardState",
    "Persisted",
    "ProposalRejected",
    "Propose",
    "ProposeConfChange",
    "Proposed",
    "RaftConfig",
    "RaftLog",
    "RaftNode",
    "RandomSource",
    "ReadFailed",
    "ReadReady",
    "ReadRequest",
    "Receive",
    "Removed",
    "RestoreSnapshot",
    "Role",
    "RoleChanged",
    "Send",
    "SnapshotStatus",
    "SnapshotTaken",
    "Tick",
    "TransferLeader",
    "address_key",
    "canonical_address",
    "decode_membership",
    "encode_membership",
    "implicit_membership",
]
