"""TCP links between the nodes of a cluster.

Connections are unidirectional: a node sends only on the streams it opened (one per peer) and
receives only on the streams it accepted. A reply therefore travels on the replier's own
outbound stream, and neither side ever waits for the other to read: a slow or dead peer costs
its own queue, nothing else.

Every connection opens with ``Hello`` -> ``HelloReply``, so a node from another cluster, a
misconfigured address or a stray client is refused before any message reaches Raft. After
that, anything unexpected on one connection (a malformed, oversized or misattributed frame)
closes that connection only; Raft already tolerates the messages lost with it.

Both halves of the handshake name the sender's *incarnation* (a random number drawn when its
process starts). What is queued for a peer is addressed to one process of that peer: when the
peer turns out to be a new process, the queue is discarded, so a restarted peer never reads
answers to its previous process's requests. A caller claiming node N whose incarnation is not
the one this node reaches at N's address is refused (only that connection): either N
restarted and the old link has not noticed yet (the link is re-checked at once, and the next
attempt is accepted), or a second process claims node N.
"""

from __future__ import annotations

import logging
import math
import os
import random
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any

import attrs
import trio

from dengine_trio.wire.codec import decode, encode
from dengine_trio.wire.errors import CodecError
from dengine_trio.wire.frames import MAX_FRAME_BYTES, FrameReader, encode_frame
from dengine_trio.wire.messages import PEER_MESSAGE_TYPES, PROTOCOL_VERSION, Hello, HelloReply

BACKOFF_MIN_S = 0.05
BACKOFF_MAX_S = 1.0
CONNECT_TIMEOUT_S = 2.0
"""Bounds a connect to a host that silently drops SYNs (the kernel would retry for minutes)."""
HANDSHAKE_TIMEOUT_S = 5.0
"""How long either side waits for the other's half of the handshake."""
RECEIVE_BYTES = 256 * 1024
MAX_BATCH_BYTES = 4 * 1024 * 1024
"""Soft cap on one ``send_all`` so a long queue of large AppendEntries is not copied at once."""
_MAX_REASON_CHARS = 200

_PEER_TYPES = frozenset(PEER_MESSAGE_TYPES)
_STREAM_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


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
    drops: int = 0
    """Messages discarded because the queue was full (the oldest one goes)."""
    discarded: int = 0
    """Messages discarded because the peer restarted: they were for its previous process."""
    queued: int = 0


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

    @property
    def frames_out(self) -> int:
        return sum(p.frames_out for p in self.peers.values())

    @property
    def drops(self) -> int:
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


class _ProtocolViolation(Exception):
    pass


class _OutboundLink:
    """The queue and connection state of the stream to one peer."""

    def __init__(self, peer_id: int, address: tuple[str, int], stats: PeerStats) -> None:
        self.peer_id = peer_id
        self.address = address
        self.stats = stats
        self.queue: deque[bytes] = deque()
        self.queued_bytes = 0
        self.wakeup = trio.Event()
        self.last_refusal = ""
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

    def take_batch(self) -> bytes:
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


def _format_address(sockaddr: Any) -> str:
    host, port = sockaddr[0], sockaddr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _remote_address(stream: trio.SocketStream) -> str:
    try:
        return _format_address(stream.socket.getpeername())
    except OSError:
        return "<disconnected>"


class Transport:
    """Persistent TCP links from this node to its peers, and the listener for theirs.

    ``peers`` maps every OTHER node's id to its ``(host, port)``. ``deliver`` is called in the
    trio thread, synchronously, with each decoded message (a Raft message, ``ForwardPropose`` or
    ``ForwardResult``) whose sender is the handshaken peer; it must not block. ``delivered``,
    if given, is called the same way once the messages of one read from a peer have all been
    delivered, so they can be handled as a batch. An exception from either is a bug of the
    caller and propagates out of ``run``.
    """

    def __init__(
        self,
        node_id: int,
        cluster_id: str,
        listen: tuple[str, int],
        peers: dict[int, tuple[str, int]],
        deliver: Callable[[object], None],
        *,
        delivered: Callable[[], None] | None = None,
        max_frame_bytes: int = MAX_FRAME_BYTES,
        queue_limit: int = 4096,
        log: logging.Logger | None = None,
        incarnation: int | None = None,
    ) -> None:
        if node_id in peers:
            raise ValueError(f"peers must be the other nodes, but include node {node_id}")
        if queue_limit < 1:
            raise ValueError("queue_limit must be at least 1")
        self.node_id = node_id
        self.incarnation = new_incarnation() if incarnation is None else incarnation
        """This process's incarnation, sent in both halves of every handshake."""
        self.cluster_id = cluster_id
        self.listen = listen
        self.peers = dict(peers)
        self.deliver = deliver
        self.delivered = delivered
        self.max_frame_bytes = max_frame_bytes
        self.queue_limit = queue_limit
        self.log = log if log is not None else logging.getLogger("dengine_trio.transport")
        self.stats = TransportStats()
        self.bound_addresses: list[tuple[str, int]] = []
        """Where the listener is bound, once ``run`` has started (useful with port 0)."""
        self._links: dict[int, _OutboundLink] = {}
        for peer_id, (host, port) in self.peers.items():
            stats = PeerStats(address=_format_address((host, port)))
            self.stats.peers[peer_id] = stats
            self._links[peer_id] = _OutboundLink(peer_id, (host, port), stats)
        self._hello_frames = {
            peer_id: encode_frame(
                encode(Hello(cluster_id, node_id, peer_id, PROTOCOL_VERSION, self.incarnation))
            )
            for peer_id in self.peers
        }
        self._random = random.Random()

    # -- sending --------------------------------------------------------------------------

    def send(self, msg: object) -> bytes:
        """Queue ``msg`` for ``msg.dst``; never blocks. Returns its frame, which ``withdraw``
        takes back while it is still queued.

        When that peer's queue holds ``queue_limit`` messages the oldest is dropped (and
        counted): the newest messages carry the newest terms and log state. Raises
        ``ValueError`` for a ``dst`` that is this node or not a peer, or a ``src`` that is not
        this node; ``TypeError`` for a type the transport does not carry; ``CodecError``
        (``FrameTooLarge``) for a message that cannot be encoded within ``max_frame_bytes``.
        """
        if type(msg) not in _PEER_TYPES:
            raise TypeError(f"the transport does not carry {type(msg).__name__}")
        routed: Any = msg
        link = self._links.get(routed.dst)
        if link is None:
            raise ValueError(f"node {self.node_id} has no peer {routed.dst!r}")
        if routed.src != self.node_id:
            raise ValueError(f"message from node {routed.src!r} sent by node {self.node_id}")
        frame = encode_frame(encode(msg), self.max_frame_bytes)
        queue = link.queue
        if len(queue) >= self.queue_limit:
            link.queued_bytes -= len(queue.popleft())
            link.stats.drops += 1
        queue.append(frame)
        link.queued_bytes += len(frame)
        link.stats.queued = len(queue)
        if link.fd >= 0 and not link.pumping:
            self._write_now(link)
        else:
            link.wakeup.set()
        return frame

    def withdraw(self, dst: int, frame: bytes) -> bool:
        """Take ``frame`` (as returned by ``send``) out of ``dst``'s queue; True if it was
        still there, so no byte of it was written to any socket: the peer certainly never
        receives it. False once it went to a socket (delivered or not, nobody can tell), or
        was dropped from the queue."""
        link = self._links.get(dst)
        if link is None:
            return False
        queue = link.queue
        for position, queued in enumerate(queue):
            if queued is frame:
                del queue[position]
                link.queued_bytes -= len(frame)
                link.stats.queued = len(queue)
                return True
        return False

    def _write_now(self, link: _OutboundLink) -> None:
        """Write the queue straight to the idle, connected socket.

        Saves a task switch per message in each process, which is most of a message's cost
        in trio: the pump is only woken for what the socket does not take at once (a full
        send buffer) and for errors, which it then meets and handles in ``send_all``.
        """
        frames = len(link.queue)
        batch = link.take_batch()
        frames -= len(link.queue)
        try:
            written = os.write(link.fd, batch)
        except OSError:  # BlockingIOError included: the pump waits for the socket instead
            written = 0
        link.stats.frames_out += frames
        link.stats.bytes_out += written
        if written < len(batch) or link.queue:
            link.unsent = batch[written:]
            link.pumping = True
            link.wakeup.set()

    # -- running --------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen, link to every peer and serve until cancelled; cancellation closes every
        socket. ``task_status.started()`` is called once the listener accepts connections."""
        host, port = self.listen
        listeners = await trio.open_tcp_listeners(port, host=host)
        try:
            self.bound_addresses = [listener.socket.getsockname()[:2] for listener in listeners]
            async with trio.open_nursery() as nursery:
                await nursery.start(
                    partial(
                        trio.serve_listeners,
                        self._serve_inbound,
                        listeners,
                        handler_nursery=nursery,
                    )
                )
                for link in self._links.values():
                    nursery.start_soon(self._run_link, link)
                self.log.info(
                    "node %d: transport listening on %s", self.node_id, _format_address(self.listen)
                )
                task_status.started()
        finally:
            # serve_listeners closes them too; this covers a failure before it took them over.
            for listener in listeners:
                await trio.aclose_forcefully(listener)

    # -- outbound -------------------------------------------------------------------------

    async def _run_link(self, link: _OutboundLink) -> None:
        backoff = BACKOFF_MIN_S
        while True:
            stream = await self._connect(link)
            if stream is not None:
                link.stats.connects += 1
                link.stats.connected = True
                self.log.info(
                    "node %d: linked to peer %d at %s",
                    self.node_id,
                    link.peer_id,
                    link.stats.address,
                )
                connected_at = trio.current_time()
                try:
                    with trio.CancelScope() as link.connection_scope:
                        reason = await self._pump(link, stream)
                    if link.connection_scope.cancelled_caught:
                        reason = "closed to check which process is at the peer's address"
                finally:
                    link.stats.connected = False
                    link.connected_incarnation = 0
                    link.connection_scope = None
                    await trio.aclose_forcefully(stream)
                self.log.info(
                    "node %d: link to peer %d lost: %s", self.node_id, link.peer_id, reason
                )
                # A link that lived long broke by accident: retry at once. One that broke right
                # away (a peer that keeps closing on us) backs off like a failed connect.
                if trio.current_time() - connected_at >= BACKOFF_MAX_S:
                    backoff = BACKOFF_MIN_S
                    continue
            # Jitter keeps the nodes of a restarted cluster from reconnecting in lockstep.
            await trio.sleep(backoff * (0.5 + 0.5 * self._random.random()))
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    async def _connect(self, link: _OutboundLink) -> trio.SocketStream | None:
        """Open and handshake a stream to ``link``'s peer, or return None (already logged)."""
        host, port = link.address
        try:
            with trio.fail_after(CONNECT_TIMEOUT_S):
                stream = await trio.open_tcp_stream(host, port)
        except (OSError, trio.TooSlowError) as exc:
            link.stats.connect_failures += 1
            self.log.debug(
                "node %d: cannot reach peer %d at %s: %r",
                self.node_id,
                link.peer_id,
                link.stats.address,
                exc,
            )
            return None
        handshaken = False
        try:
            # trio enables TCP_NODELAY on its TCP streams already; said again because latency
            # of small Raft messages depends on it.
            stream.setsockopt(trio.socket.IPPROTO_TCP, trio.socket.TCP_NODELAY, True)
            with trio.fail_after(HANDSHAKE_TIMEOUT_S):
                await stream.send_all(self._hello_frames[link.peer_id])
                reader = FrameReader(self.max_frame_bytes)
                frames: list[bytes] = []
                while not frames:
                    data = await stream.receive_some(RECEIVE_BYTES)
                    if not data:
                        raise _ProtocolViolation("closed during the handshake")
                    frames = reader.feed(data)
            reply = decode(frames[0])
            if type(reply) is not HelloReply:
                raise _ProtocolViolation(f"answered Hello with {type(reply).__name__}")
            if not reply.ok:
                link.stats.refusals += 1
                # A misconfigured peer refuses every second: say it once per reason.
                level = logging.WARNING if reply.reason != link.last_refusal else logging.DEBUG
                link.last_refusal = reply.reason
                self.log.log(
                    level,
                    "node %d: peer %d at %s refused the link: %s",
                    self.node_id,
                    link.peer_id,
                    link.stats.address,
                    reply.reason,
                )
                return None
            link.last_refusal = ""
            handshaken = True
            self._meet_incarnation(link, reply.incarnation)
            link.connected_incarnation = reply.incarnation
            self._close_other_processes(link, reply.incarnation)
            return stream
        except (*_STREAM_ERRORS, trio.TooSlowError, CodecError, _ProtocolViolation) as exc:
            link.stats.connect_failures += 1
            self.log.debug(
                "node %d: handshake with peer %d at %s failed: %r",
                self.node_id,
                link.peer_id,
                link.stats.address,
                exc,
            )
            return None
        finally:
            if not handshaken:
                await trio.aclose_forcefully(stream)

    async def _pump(self, link: _OutboundLink, stream: trio.SocketStream) -> str:
        """Send queued frames until the connection breaks; return why it ended."""
        reason = ""
        async with trio.open_nursery() as nursery:

            def close(why: str) -> None:
                nonlocal reason
                reason = reason or why
                nursery.cancel_scope.cancel()

            async def watch_for_close() -> None:
                # The peer never writes after HelloReply, so any read completing means the
                # link is gone: noticed now rather than by losing the next batch.
                try:
                    data = await stream.receive_some(RECEIVE_BYTES)
                except _STREAM_ERRORS as exc:
                    close(f"connection failed: {exc!r}")
                    return
                close("closed by peer" if not data else "peer wrote on our outbound link")

            nursery.start_soon(watch_for_close)
            link.pumping = True
            link.fd = stream.socket.fileno()
            try:
                while True:
                    while not link.queue and not link.unsent:
                        # Idle: ``send`` writes directly until it wakes us again.
                        link.pumping = False
                        link.wakeup = trio.Event()
                        await link.wakeup.wait()
                    link.pumping = True
                    if link.unsent:
                        unsent, link.unsent = link.unsent, b""
                        await stream.send_all(unsent)
                        link.stats.bytes_out += len(unsent)
                        continue
                    frames = len(link.queue)
                    batch = link.take_batch()
                    frames -= len(link.queue)
                    await stream.send_all(batch)
                    link.stats.frames_out += frames
                    link.stats.bytes_out += len(batch)
            except _STREAM_ERRORS as exc:
                close(f"send failed: {exc!r}")
            finally:
                link.fd = -1
                link.pumping = False
                # A half-sent batch dies with its connection: the next one starts at a frame.
                link.unsent = b""
        return reason

    # -- inbound --------------------------------------------------------------------------

    async def _serve_inbound(self, stream: trio.SocketStream) -> None:
        remote = _remote_address(stream)
        reader = FrameReader(self.max_frame_bytes)
        accepted = await self._accept_handshake(stream, reader, remote)
        if accepted is None:
            return
        peer_id, incarnation, pending = accepted
        self.stats.inbound_open += 1
        scope = trio.CancelScope()
        inbound = self._links[peer_id].inbound
        inbound[scope] = incarnation
        try:
            with scope:
                await self._receive_from(stream, reader, peer_id, remote, pending)
        finally:
            del inbound[scope]
            self.stats.inbound_open -= 1
            if self.delivered is not None:
                # What arrived before a bad frame (or the end) is handled all the same.
                self.delivered()

    async def _receive_from(
        self,
        stream: trio.SocketStream,
        reader: FrameReader,
        peer_id: int,
        remote: str,
        pending: list[bytes],
    ) -> None:
        try:
            for payload in pending:
                self._receive(peer_id, payload)
            while True:
                if self.delivered is not None:
                    self.delivered()
                data = await stream.receive_some(RECEIVE_BYTES)
                if not data:
                    self.log.debug("node %d: peer %d closed its link", self.node_id, peer_id)
                    return
                self.stats.bytes_in += len(data)
                for payload in reader.feed(data):
                    self._receive(peer_id, payload)
        except (CodecError, _ProtocolViolation) as exc:
            self.stats.connections_closed_on_error += 1
            self.log.warning(
                "node %d: closing connection from peer %d at %s: %s",
                self.node_id,
                peer_id,
                remote,
                exc,
            )
        except _STREAM_ERRORS as exc:
            self.log.info(
                "node %d: connection from peer %d at %s failed: %r",
                self.node_id,
                peer_id,
                remote,
                exc,
            )

    def _receive(self, peer_id: int, payload: bytes) -> None:
        msg: Any = decode(payload)
        if type(msg) not in _PEER_TYPES:
            raise _ProtocolViolation(f"unexpected {type(msg).__name__} after the handshake")
        if msg.src != peer_id or msg.dst != self.node_id:
            raise _ProtocolViolation(
                f"{type(msg).__name__} from {msg.src} to {msg.dst} "
                f"on the link from peer {peer_id} to node {self.node_id}"
            )
        self.stats.frames_in += 1
        self.deliver(msg)

    async def _accept_handshake(
        self, stream: trio.SocketStream, reader: FrameReader, remote: str
    ) -> tuple[int, int, list[bytes]] | None:
        """Read and check ``Hello``; on success return the peer id, its incarnation and any
        frames that came with it, otherwise refuse (one WARNING) and return None."""
        frames: list[bytes] = []
        reason = ""
        hello: object = None
        try:
            with trio.move_on_after(HANDSHAKE_TIMEOUT_S):
                while not frames:
                    data = await stream.receive_some(RECEIVE_BYTES)
                    if not data:
                        reason = "closed before Hello"
                        break
                    frames = reader.feed(data)
            if frames:
                hello = decode(frames[0])
                reason = self._check_hello(hello)
                if not reason:
                    assert isinstance(hello, Hello)
                    claim = self._check_claim(hello, remote)
                    if claim:
                        # Logged by _check_claim, once: the caller retries every second.
                        self.stats.connections_refused += 1
                        await self._refuse(stream, claim[:_MAX_REASON_CHARS])
                        return None
            elif not reason:
                reason = f"no Hello within {HANDSHAKE_TIMEOUT_S} s"
        except CodecError as exc:
            reason = f"undecodable Hello: {exc}"
        except _STREAM_ERRORS as exc:
            reason = f"connection failed before Hello: {exc!r}"
        reason = reason[:_MAX_REASON_CHARS]
        if reason:
            self.stats.connections_refused += 1
            self.log.warning(
                "node %d: refused connection from %s: %s", self.node_id, remote, reason
            )
            await self._refuse(stream, reason)
            return None
        assert isinstance(hello, Hello)
        try:
            with trio.fail_after(HANDSHAKE_TIMEOUT_S):
                await stream.send_all(encode_frame(encode(HelloReply(True, "", self.incarnation))))
        except (*_STREAM_ERRORS, trio.TooSlowError) as exc:
            self.log.info(
                "node %d: connection from peer %d at %s failed in the handshake: %r",
                self.node_id,
                hello.src,
                remote,
                exc,
            )
            return None
        self.stats.connections_accepted += 1
        self.log.debug("node %d: accepted link from peer %d at %s", self.node_id, hello.src, remote)
        if hello.incarnation:
            self._meet_incarnation(self._links[hello.src], hello.incarnation)
        return hello.src, hello.incarnation, frames[1:]

    def _meet_incarnation(self, link: _OutboundLink, incarnation: int) -> None:
        """A handshake met ``incarnation`` of ``link``'s peer: if that is a new process of the
        peer, what is queued was for the previous one (answers to requests nobody waits for
        any more, Raft messages Raft will send again): drop it."""
        if not incarnation or incarnation == link.peer_incarnation:
            return
        if link.peer_incarnation and link.queue:
            dropped = len(link.queue)
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

    def _close_other_processes(self, link: _OutboundLink, incarnation: int) -> None:
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

    async def _refuse(self, stream: trio.SocketStream, reason: str) -> None:
        with trio.move_on_after(HANDSHAKE_TIMEOUT_S):
            try:
                await stream.send_all(
                    encode_frame(encode(HelloReply(False, reason, self.incarnation)))
                )
            except _STREAM_ERRORS:
                pass

    def _check_hello(self, hello: object) -> str:
        """Why ``hello`` is refused, or "" if it is accepted."""
        if type(hello) is not Hello:
            return f"expected Hello, got {type(hello).__name__}"
        if hello.protocol_version != PROTOCOL_VERSION:
            return f"protocol version {hello.protocol_version}, expected {PROTOCOL_VERSION}"
        if hello.cluster_id != self.cluster_id:
            return f"cluster id {hello.cluster_id!r} is not {self.cluster_id!r}"
        if hello.dst != self.node_id:
            return f"Hello addressed to node {hello.dst}, this is node {self.node_id}"
        if hello.src not in self.peers:
            return f"Hello from node {hello.src}, which is not a peer"
        return ""
