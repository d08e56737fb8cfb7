"""Messages runtimes exchange besides the Raft RPCs: the connection handshake and the
forwarding of client writes from a follower to the leader.

Like the Raft messages, the peer-to-peer ones name their sender (``src``) and receiver (``dst``)
so the transport can route and check them the same way.
"""

from __future__ import annotations

from enum import IntEnum

import attrs

from dengine_trio.raft.messages import MESSAGE_TYPES

PROTOCOL_VERSION = 3
"""Bumped whenever the encoding of any message changes incompatibly (2: ``Heartbeat`` carries
``commit_term``; 3: incarnations in the handshake and in forwarded requests,
``ForwardAccepted``)."""


@attrs.frozen(slots=True)
class Hello:
    """First frame on every connection: who is calling whom, in which cluster.

    ``incarnation`` names the caller's process: a random 63-bit number drawn at each start, so
    the listener can tell a restarted peer (whose earlier requests nobody waits for any more)
    from the process it knew, and two processes claiming one node id from each other.
    The listener refuses (``HelloReply(ok=False, reason)``) a ``protocol_version`` other than
    ``PROTOCOL_VERSION``, another ``cluster_id``, a ``dst`` that is not itself and a ``src``
    that is not one of its peers.
    """

    cluster_id: str
    src: int
    dst: int
    protocol_version: int
    incarnation: int = 0


@attrs.frozen(slots=True)
class HelloReply:
    """The listener's answer to ``Hello``; on ``ok=False`` it closes the connection."""

    ok: bool
    reason: str = ""
    incarnation: int = 0
    """The listener's own incarnation (see ``Hello``)."""


class ForwardStatus(IntEnum):
    """Outcome of a forwarded write, mirroring the client errors in ``dengine_trio.errors``."""

    OK = 0
    NOT_LEADER = 1
    NO_LEADER = 2
    TIMEOUT = 3
    TOO_LARGE = 4
    OVERLOADED = 5
    STOPPED = 6


@attrs.frozen(slots=True)
class ForwardPropose:
    """A follower hands a client's command to the leader.

    ``request_id`` and ``incarnation`` are the follower's: the leader echoes both, and the
    follower takes a ``ForwardResult`` only if both name a request of its current process.
    """

    src: int
    dst: int
    request_id: int
    data: bytes
    incarnation: int = 0


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


HANDSHAKE_TYPES: tuple[type, ...] = (Hello, HelloReply)

PEER_MESSAGE_TYPES: tuple[type, ...] = (
    *MESSAGE_TYPES,
    ForwardPropose,
    ForwardResult,
    ForwardAccepted,
)
"""What a transport carries and delivers once a connection is established."""
