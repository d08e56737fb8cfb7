"""The outbound half of the transport's state: one link per peer, its queue and counters,
and which process of the peer the link (and this node) knows.

A peer's *incarnation* names one of its processes (a random number drawn when the process
starts; both halves of the handshake carry it). ``PeerIdentity`` keeps, per peer, the process
the queue is for and the one at the other end of the current connection, and decides about a
caller that claims to be that peer.
"""

from __future__ import annotations

import logging
import math
import random
import ssl
from collections import deque
from collections.abc import Callable
from typing import Any

import attrs
import trio

from dengine_trio.wire.messages import Channel, Hello

BACKOFF_MIN_S = 0.05
BACKOFF_MAX_S = 1.0
CONNECT_TIMEOUT_S = 2.0
"""Bounds a connect to a host that silently drops SYNs (the kernel would retry for minutes)."""
HANDSHAKE_TIMEOUT_S = 5.0
"""How long either side waits for the other's half of the handshake (the TLS handshake and
``Hello`` together, on the listener: a caller that connects and says nothing, or stalls
part-way through TLS, is dropped after this)."""
REFUSAL_LOG_INTERVAL_S = 60.0
"""A refused peer (TLS, another cluster, another version) retries every second: one WARNING
per caller host and reason this often (s), DEBUG in between."""
RECEIVE_BYTES = 256 * 1024
MAX_BATCH_BYTES = 4 * 1024 * 1024
"""Soft cap on one ``send_all`` so a long queue of large AppendEntries is not copied at once."""
MAX_REASON_CHARS = 200

STREAM_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


@attrs.define
class PeerStats:
    """Counters of the outbound link to one peer."""

    address: str
    connected: bool = False
    connects: int = 0
    """Handshakes completed on this link (1 after the first connection, +1 per reconnect)."""
    connect_failures: int = 0
    refusals: int = 0
    """Handshakes the peer answered with ``HelloReply(ok=False)``."""
    frames_out: int = 0
    bytes_out: int = 0
    bytes_in: int = 0
    """Bytes read from this peer's connections to this node (the inbound side)."""
    drops: int = 0
    """Messages discarded because the queue was full (the oldest one goes)."""
    discarded: int = 0
    """Messages discarded because the peer restarted: they were for its previous process."""
    queued: int = 0


@attrs.define
class SnapshotStats:
    """Counters of snapshot transfers (``runtime/snapshot_transfer.py``), both directions."""

    sends_started: int = 0
    """Transfers this node started as a leader (at most one per peer at a time)."""
    sends_completed: int = 0
    """Transfers the follower confirmed (verified and handed to its node)."""
    sends_failed: int = 0
    """Transfers given up (no file, the peer unreachable, refused, no progress)."""
    bytes_sent: int = 0
    receives_completed: int = 0
    """Snapshot files received whole, verified and handed to this node."""
    receives_refused: int = 0
    """Snapshot connections closed for bad input (a chunk that does not fit, an
    undecodable frame, a file that failed verification)."""
    resumed: int = 0
    """Snapshot connections that went on from a partial file (received side)."""
    bytes_received: int = 0
    """Snapshot bytes written to partial files (a resumed transfer counts each byte once)."""


@attrs.define
class TransportStats:
    """What ``/status`` shows about the transport. Plain counters, read at any time."""

    connections_accepted: int = 0
    connections_refused: int = 0
    connections_closed_on_error: int = 0
    inbound_open: int = 0
    frames_in: int = 0
    bytes_in: int = 0
    peers: dict[int, PeerStats] = attrs.field(factory=dict)
    snapshots: SnapshotStats = attrs.field(factory=SnapshotStats)

    @property
    def frames_out(self) -> int:
        """Frames taken off the queues and written to peers' sockets, all peers (the sum of
        ``PeerStats.frames_out``)."""
        return sum(p.frames_out for p in self.peers.values())

    @property
    def drops(self) -> int:
        """Messages discarded for a full queue, all peers (the sum of ``PeerStats.drops``)."""
        return sum(p.drops for p in self.peers.values())

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready snapshot."""
        snapshot = attrs.asdict(self)
        snapshot["peers"] = {str(k): v for k, v in snapshot["peers"].items()}
        snapshot["frames_out"] = self.frames_out
        snapshot["drops"] = self.drops
        return snapshot


def new_incarnation() -> int:
    """A random, nonzero 63-bit number naming one process of a node (see ``Hello``)."""
    return random.SystemRandom().getrandbits(63) or 1


class ProtocolViolation(Exception):
    """A peer broke the link protocol: a frame other than the handshake's answer, a message
    other than a peer message after the handshake, or one whose ``src``/``dst`` do not match
    the link. The transport closes that one connection (logged); the node carries on."""


def tls_failure(exc: BaseException) -> str | None:
    """The TLS error behind ``exc`` (trio wraps it in ``BrokenResourceError``) as a short
    reason, e.g. ``certificate verify failed: unable to get local issuer certificate`` or
    ``WRONG_VERSION_NUMBER`` (a plain-TCP peer); None if the stream broke another way."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, ssl.SSLError):
        cause = cause.__cause__ or cause.__context__
    if cause is None:
        return None
    if isinstance(cause, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {cause.verify_message}"
    return str(cause.reason or cause)


class OutboundLink:
    """The queue and connection state of the stream to one peer.

    ``channel``: what its connections carry (``Hello.channel``). The message link has the
    queue; a snapshot transfer dials through a ``SNAPSHOT`` link of its own, whose counters
    and refusals stay apart from the message link's."""

    def __init__(
        self,
        peer_id: int,
        address: tuple[str, int],
        stats: PeerStats,
        channel: Channel = Channel.MESSAGES,
    ) -> None:
        self.peer_id = peer_id
        self.address = address
        self.stats = stats
        self.channel = channel
        self.queue: deque[bytes] = deque()
        self.queued_bytes = 0
        self.wakeup = trio.Event()
        self.last_refusal = ""
        self.last_error = ""
        """Why the last connect or handshake failed (for the unreachable-peer warning)."""
        self.fd = -1
        """The connected socket's descriptor, or -1 while there is no connection."""
        self.pumping = False
        """The pump task owns the stream's send side (woken to send, or in ``send_all``)."""
        self.unsent = b""
        """The tail of a batch a direct write could not finish; the pump sends it first."""
        self.peer_incarnation = 0
        """The peer's process the queue is for: the latest one met by either handshake."""
        self.connected_incarnation = 0
        """The process at the other end of the current connection; 0 without one."""
        self.connection_scope: trio.CancelScope | None = None
        self.rechecked_at = -math.inf
        self.claims_seen: set[int] = set()
        self.claims_logged: set[int] = set()
        self.inbound: dict[trio.CancelScope, int] = {}
        """Open inbound connections from this peer: their cancel scope -> incarnation."""
        self.redial = trio.Event()
        """Set when the peer was just heard from (it connected to us): a link backing off
        after failed connects dials at once instead of finishing its sleep."""
        self.task_scope: trio.CancelScope | None = None
        """Cancels the link's dialing task (the peer left the membership)."""
        self.removed = False
        """The peer left the membership: the link is closed for good."""

    def take_batch(self) -> bytes:
        """Dequeue frames, oldest first, joined into one ``bytes`` for one ``send_all``: the
        whole queue, or (past ``MAX_BATCH_BYTES``, 4 MiB) as many whole frames as fit, at
        least one. Updates ``queued_bytes`` and ``stats.queued``."""
        queue = self.queue
        if self.queued_bytes <= MAX_BATCH_BYTES:
            batch = b"".join(queue)
            queue.clear()
        else:
            frames = [queue.popleft()]
            size = len(frames[0])
            while queue and size + len(queue[0]) <= MAX_BATCH_BYTES:
                frames.append(queue.popleft())
                size += len(frames[-1])
            batch = b"".join(frames)
        self.queued_bytes -= len(batch)
        self.stats.queued = len(queue)
        return batch


def format_address(sockaddr: Any) -> str:
    """``host:port`` of a socket address (``(host, port, ...)``); ``[host]:port`` for IPv6."""
    host, port = sockaddr[0], sockaddr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def remote_address(stream: trio.SocketStream) -> str:
    """The stream's peer as ``format_address`` writes it; ``<disconnected>`` if the socket
    has none any more (never raises)."""
    try:
        return format_address(stream.socket.getpeername())
    except OSError:
        return "<disconnected>"


class PeerIdentity:
    """Mixin of ``Transport``: which process of each peer this node deals with."""

    node_id: int
    log: logging.Logger
    dropped: Callable[[int, list[bytes]], None] | None
    _links: dict[int, OutboundLink]

    _refusals_logged: dict[tuple[str, str], float]

    def _log_tls_refusal(self, who: str, problem: str, verb: str = "refused") -> None:
        """Log a TLS refusal, rate-limited as ``_log_refusal``."""
        self._log_refusal(who, problem, f"node {self.node_id}: TLS: {verb} {who}: {problem}")

    def _log_refusal(self, who: str, problem: str, message: str) -> None:
        """Log ``message`` at WARNING once per ``REFUSAL_LOG_INTERVAL_S`` (s) for the same host
        (``who`` without its port) and problem, at DEBUG in between: a refused peer (TLS,
        another cluster, another protocol version) retries every second, for hours."""
        key = (who.rpartition(":")[0] or who, problem)
        now = trio.current_time()
        last = self._refusals_logged.get(key)
        fresh = last is None or now - last >= REFUSAL_LOG_INTERVAL_S
        if fresh:
            if len(self._refusals_logged) >= 1024:
                self._refusals_logged.clear()
            self._refusals_logged[key] = now
        self.log.log(logging.WARNING if fresh else logging.DEBUG, "%s", message)

    def _meet_incarnation(self, link: OutboundLink, incarnation: int) -> None:
        """A handshake met ``incarnation`` of ``link``'s peer: if that is a new process of the
        peer, what is queued was for the previous one (answers to requests nobody waits for
        any more, Raft messages Raft will send again): drop it."""
        if not incarnation or incarnation == link.peer_incarnation:
            return
        if link.peer_incarnation and link.queue:
            frames = list(link.queue)
            dropped = len(frames)
            link.queue.clear()
            link.queued_bytes = 0
            link.stats.queued = 0
            link.stats.discarded += dropped
            self.log.info(
                "node %d: peer %d is a new process; discarded %d messages queued for the "
                "previous one",
                self.node_id,
                link.peer_id,
                dropped,
            )
            if self.dropped is not None:
                self.dropped(link.peer_id, frames)
        link.peer_incarnation = incarnation

    def _check_claim(self, hello: Hello, remote: str) -> str:
        """Why a caller claiming ``hello.src`` is not taken for that node, or "".

        The process this node reaches at the peer's configured address is that node. A
        caller with another incarnation is either the peer restarted (the old link has not
        noticed yet: it is re-checked now, so the caller's next attempt gets in) or a second
        process claiming the same node id: said once, as a WARNING, when the same caller is
        refused again after the re-check."""
        link = self._links[hello.src]
        known = link.connected_incarnation
        claim = hello.incarnation
        if not claim or not known or claim == known:
            return ""
        reason = (
            f"node {hello.src}'s address {link.stats.address} is served by another process "
            f"({known:x}) than the caller ({claim:x})"
        )
        if claim not in link.claims_seen:
            link.claims_seen.add(claim)
            self.log.info(
                "node %d: refused connection from %s claiming node %d: %s; checking which "
                "process is at that address",
                self.node_id,
                remote,
                hello.src,
                reason,
            )
        elif claim not in link.claims_logged:
            link.claims_logged.add(claim)
            self.log.warning(
                "node %d: refused connection from %s claiming node %d: %s; is a second "
                "process running as node %d?",
                self.node_id,
                remote,
                hello.src,
                reason,
                hello.src,
            )
        now = trio.current_time()
        if now - link.rechecked_at >= BACKOFF_MAX_S and link.connection_scope is not None:
            link.rechecked_at = now
            link.connection_scope.cancel()
        return reason

    def _close_other_processes(self, link: OutboundLink, incarnation: int) -> None:
        """The process at the peer's address is ``incarnation``: inbound connections from any
        other process claiming that peer (a previous one whose connection lingers, or one
        accepted while the peer's address could not be checked) are closed."""
        for scope, other in list(link.inbound.items()):
            if other and other != incarnation:
                self.log.info(
                    "node %d: closing a connection from another process (%x) claiming node %d",
                    self.node_id,
                    other,
                    link.peer_id,
                )
                scope.cancel()
