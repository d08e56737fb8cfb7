"""Messages runtimes exchange besides the Raft RPCs: the connection handshake, the
forwarding of client writes and membership changes from a follower to the leader, and a
joining node's request to be added (issue 14).

Like the Raft messages, the peer-to-peer ones name their sender (``src``) and receiver (``dst``)
so the transport can route and check them the same way.
"""

from __future__ import annotations

from enum import IntEnum

import attrs

from dengine_trio.raft.messages import MESSAGE_TYPES, InstallSnapshot

PROTOCOL_VERSION = 5
"""Bumped whenever the encoding of any message changes incompatibly (2: ``Heartbeat`` carries
``commit_term``; 3: incarnations in the handshake and in forwarded requests,
``ForwardAccepted``; 4: ``Hello.channel`` and the snapshot connection, issue 13; 5:
membership changes, issue 14: ``EntryKind.CONFIG`` entries, ``RequestVote.explicit``,
``InstallSnapshot.membership``, ``Hello.uuid``, ``Hello.joining`` and ``Hello.address``,
``ForwardPropose.conf`` and ``ForwardStatus.CONF_REJECTED``, ``JoinRequest``)."""


class Channel(IntEnum):
    """What a connection carries, named by its ``Hello``.

    ``MESSAGES``: the peer message link (Raft messages and forwarded requests, one way).
    ``SNAPSHOT``: one snapshot file streamed from a leader to a follower (InstallSnapshot,
    Raft paper section 7), on a connection of its own so that heartbeats and appends are never
    queued behind snapshot bytes (``runtime/snapshot_transfer.py``).
    """

    MESSAGES = 0
    SNAPSHOT = 1


@attrs.frozen(slots=True)
class Hello:
    """First frame on every connection: who is calling whom, in which cluster.

    ``cluster_id`` is the caller's cluster id; one that knows none yet (a new node, a wiped
    directory: ``storage/cluster_identity.py``) names its configuration's, a joining node
    ``""``.
    ``incarnation`` names the caller's process: a random 63-bit number drawn at each start, so
    the listener can tell a restarted peer (whose earlier requests nobody waits for any more)
    from the process it knew, and two processes claiming one node id from each other.
    ``uuid`` is the caller's data-directory uuid (``storage/node_identity.py``, 32 hex digits;
    the listener hands it to its Raft core as ``PeerIdentity`` before any message of the
    connection, so a member that came back with another directory is taken back before it
    votes). ``joining`` says the caller is not a member yet and asks to be added
    (``JoinRequest``), so a listener accepts it although it is none of its peers.
    The listener refuses (``HelloReply(ok=False, reason)``) a ``protocol_version`` other than
    ``PROTOCOL_VERSION``, a ``cluster_id`` of another cluster (``runtime.inbound.same_cluster``:
    equal, ``""``, or the configuration id the listener's own id was generated from are the
    same), a ``dst`` that is not itself and a ``src`` its membership does not admit
    (``runtime/membership.py``). A ``Hello`` of an older version may lack the trailing fields
    (``channel`` since version 4, ``uuid``, ``joining`` and ``address`` since 5): it still
    decodes, so the refusal names the version.
    """

    cluster_id: str
    src: int
    dst: int
    protocol_version: int
    incarnation: int = 0
    channel: Channel = Channel.MESSAGES
    """What the connection carries after the handshake (see ``Channel``)."""
    uuid: str = ""
    """The caller's data-directory uuid ("" only from a caller that has none: tests, tools)."""
    joining: bool = False
    """The caller is a node asking to join (not a member of the listener's membership)."""
    address: str = ""
    """The caller's own Raft address ("host:port", its ``initial_cluster`` entry): a
    listener that has no link to the caller (the caller is not in its membership yet: a
    wiped node whose file does not list the leader) dials it there to answer."""


@attrs.frozen(slots=True)
class HelloReply:
    """The listener's answer to ``Hello``; on ``ok=False`` it closes the connection.

    A refusal because the caller is no member of the listener's committed membership (a
    removed node: etcd tells such a member at the handshake too) names that membership:
    ``removed_index`` is its log index (0: not such a refusal) and ``membership`` its bytes
    (``raft.membership.encode_membership``). The caller goes passive (``raft.Removed``) if
    the listener is a member of its cluster. ``removed_index`` and ``membership`` are
    trailing and optional (since protocol version 5): a reply without them still decodes."""

    ok: bool
    reason: str = ""
    incarnation: int = 0
    """The listener's own incarnation (see ``Hello``)."""
    removed_index: int = 0
    membership: bytes = b""


class ForwardStatus(IntEnum):
    """Outcome of a forwarded write, mirroring the client errors in ``dengine_trio.errors``."""

    OK = 0
    NOT_LEADER = 1
    NO_LEADER = 2
    TIMEOUT = 3
    TOO_LARGE = 4
    OVERLOADED = 5
    STOPPED = 6
    CONF_REJECTED = 7
    """A forwarded membership change the leader refused: ``ForwardResult.result`` holds the
    rejection (code, message, detail), encoded by the runtime."""


@attrs.frozen(slots=True)
class ForwardPropose:
    """A follower hands a client's command, or a membership change, to the leader.

    ``request_id`` and ``incarnation`` are the follower's: the leader echoes both, and the
    follower takes a ``ForwardResult`` only if both name a request of its current process.
    ``conf`` False: ``data`` is a state machine command; True: ``data`` is a membership change
    (a ``ConfChange`` as the runtime encodes it), which the leader proposes as such (an
    admin request made on a follower, issue 14).
    """

    src: int
    dst: int
    request_id: int
    data: bytes
    incarnation: int = 0
    conf: bool = False


@attrs.frozen(slots=True)
class ForwardResult:
    """The leader's answer to ``ForwardPropose``.

    ``leader_id`` is the leader as known by the replier (0 when unknown), so a follower told
    NOT_LEADER can retry at the right node. ``result`` is the state machine's answer on OK.
    ``request_id`` and ``incarnation`` echo the ``ForwardPropose``.
    """

    src: int
    dst: int
    request_id: int
    status: ForwardStatus
    leader_id: int = 0
    result: bytes = b""
    incarnation: int = 0


@attrs.frozen(slots=True)
class ForwardAccepted:
    """The leader took a ``ForwardPropose`` into its log as entry (``index``, ``term``).

    Sent before the entry commits, so the follower can settle the request itself, whatever
    becomes of this leader: the write is committed once the follower applies an entry
    (``index``, ``term``), and certainly not committed (it may be sent again) once it applies
    another term at ``index``. ``request_id`` and ``incarnation`` echo the ``ForwardPropose``.
    """

    src: int
    dst: int
    request_id: int
    index: int
    term: int
    incarnation: int = 0


@attrs.frozen(slots=True)
class SnapshotOffer:
    """Leader -> follower, the first frame after the handshake on a ``SNAPSHOT`` connection:
    the leader (``src``, in ``term``) offers its snapshot file covering the log through
    ``last_index`` (whose entry has ``last_term``): ``size`` bytes (the whole file, header
    and trailer included), ``checksum`` its CRC32 (the file's last 4 bytes).

    The follower answers ``SnapshotResume`` with the offset it already holds of exactly this
    file (same leader, term, index, last term, size and checksum), else 0.
    """

    term: int
    src: int
    dst: int
    last_index: int
    last_term: int
    size: int
    checksum: int


@attrs.frozen(slots=True)
class SnapshotResume:
    """Follower -> leader, the answer to ``SnapshotOffer``: send the file from byte
    ``offset`` (0: from the start; what a dropped connection left is kept for a resume)."""

    src: int
    dst: int
    offset: int


@attrs.frozen(slots=True)
class SnapshotChunk:
    """Leader -> follower: bytes ``[offset, offset + len(data))`` of the offered file, sent in
    order from the offset ``SnapshotResume`` named (Raft paper section 7, Figure 13: "offset",
    "data"). A chunk at another offset, an empty one or one reaching past the offered size
    closes the connection."""

    src: int
    dst: int
    offset: int
    data: bytes


@attrs.frozen(slots=True)
class SnapshotReceived:
    """Follower -> leader, after the last chunk: ``ok`` once the whole file verified (CRC,
    format version, cluster id, the offered index and term) and was handed to the node;
    otherwise ``reason`` says why it was refused (the partial file is gone, a new transfer
    starts from 0)."""

    src: int
    dst: int
    ok: bool
    reason: str = ""


@attrs.frozen(slots=True)
class JoinRequest:
    """A joining node (``src``, not yet a member; its ``Hello`` said ``joining``) asks member
    ``dst`` to add it as a learner (issue 14). ``id`` is the node id it asks for (its own:
    equal to ``src``), ``address`` its Raft ``host:port``, ``uuid`` its data-directory uuid
    (bound in the membership), ``promote`` whether it is to become a voter once caught up
    (False: a read replica). Sent to every listed member, again until the node sees itself in
    its membership; only the leader acts on it (by proposing the change); nothing answers it:
    the membership the joiner then receives is the answer."""

    src: int
    dst: int
    id: int
    address: str
    uuid: str
    promote: bool


HANDSHAKE_TYPES: tuple[type, ...] = (Hello, HelloReply)

PEER_MESSAGE_TYPES: tuple[type, ...] = (
    *(t for t in MESSAGE_TYPES if t is not InstallSnapshot),
    ForwardPropose,
    ForwardResult,
    ForwardAccepted,
    JoinRequest,
)
"""What a message link carries and delivers once it is established. ``InstallSnapshot`` is
not among them: the core may see it only for a snapshot file the runtime received whole and
verified (``SNAPSHOT_TYPES``), so a peer sending it on the message link is cut off."""

SNAPSHOT_TYPES: tuple[type, ...] = (SnapshotOffer, SnapshotResume, SnapshotChunk, SnapshotReceived)
"""What a ``SNAPSHOT`` connection carries after the handshake (and nothing else does)."""
