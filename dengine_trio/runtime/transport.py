"""TCP links between the nodes of a cluster.

Connections are unidirectional: a node sends only on the streams it opened (one per peer) and
receives only on the streams it accepted. A reply therefore travels on the replier's own
outbound stream, and neither side ever waits for the other to read: a slow or dead peer costs
its own queue, nothing else. (A snapshot transfer has a connection of its own, a dialog
between leader and follower: ``runtime/snapshot_transfer.py``.)

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
import os
import random
from collections.abc import Callable
from functools import partial
from typing import Any, cast

import trio

from dengine_trio.raft.messages import InstallSnapshot
from dengine_trio.wire.codec import decode, encode
from dengine_trio.wire.errors import CodecError
from dengine_trio.wire.frames import MAX_FRAME_BYTES, FrameReader, encode_frame
from dengine_trio.wire.messages import (
    PEER_MESSAGE_TYPES,
    PROTOCOL_VERSION,
    Channel,
    Hello,
    HelloReply,
)

from .inbound import InboundSide
from .links import (
    BACKOFF_MAX_S,
    BACKOFF_MIN_S,
    CONNECT_TIMEOUT_S,
    HANDSHAKE_TIMEOUT_S,
    MAX_BATCH_BYTES,
    RECEIVE_BYTES,
    STREAM_ERRORS,
    OutboundLink,
    PeerStats,
    ProtocolViolation,
    TransportStats,
    format_address,
    new_incarnation,
    tls_failure,
)
from .snapshot_transfer import SnapshotHooks, SnapshotTransfers
from .tls import PeerTls

__all__ = [
    "MAX_BATCH_BYTES",
    "PeerStats",
    "Transport",
    "TransportStats",
    "new_incarnation",
]

_PEER_TYPES = frozenset(PEER_MESSAGE_TYPES)


class Transport(InboundSide):
    """Persistent TCP links from this node to its peers, and the listener for theirs.

    ``peers`` maps every OTHER node's id to its ``(host, port)``. ``deliver`` is called in the
    trio thread, synchronously, with each decoded message (a Raft message, ``ForwardPropose`` or
    ``ForwardResult``) whose sender is the handshaken peer; it must not block. ``delivered``,
    if given, is called the same way once the messages of one read from a peer have all been
    delivered, so they can be handled as a batch. An exception from either is a bug of the
    caller and propagates out of ``run``.

    ``tls``: peer TLS (see ``runtime.tls``); None keeps plain TCP, where an idle link's
    frames are written straight to the socket. With TLS every connection is an ``SSLStream``
    over the TCP stream, handshaken within the same bound as ``Hello``, and each end checks
    that the other's certificate names the node it is (or claims to be).

    ``snapshots``: where snapshot files are and what to tell the node about transfers
    (``runtime/snapshot_transfer.py``); None: this node neither sends nor takes snapshots
    (``send`` refuses ``InstallSnapshot``, the listener refuses snapshot connections).
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
        dropped: Callable[[int, list[bytes]], None] | None = None,
        unreachable: Callable[[int, str, float, str], None] | None = None,
        tls: PeerTls | None = None,
        snapshots: SnapshotHooks | None = None,
        uuid: str = "",
        joining: bool = False,
        admit: Callable[[Hello], str] | None = None,
        identified: Callable[[int, str], None] | None = None,
        known_cluster_id: str | None = None,
        address: str = "",
        removal: Callable[[Hello], tuple[int, bytes] | None] | None = None,
        removed: Callable[[int, int, bytes], None] | None = None,
    ) -> None:
        if node_id in peers:
            raise ValueError(f"peers must be the other nodes, but include node {node_id}")
        if queue_limit < 1:
            raise ValueError("queue_limit must be at least 1")
        self.node_id = node_id
        self.incarnation = new_incarnation() if incarnation is None else incarnation
        """This process's incarnation, sent in both halves of every handshake."""
        self.cluster_id = cluster_id
        """The id ``Hello`` names: the cluster's once known, else what this node's
        configuration says (``NodeConfig.cluster_id()``), else "" (see ``same_cluster``)."""
        self.known_cluster_id = cluster_id if known_cluster_id is None else known_cluster_id
        """The cluster's id once this node knows it ("" before; default ``cluster_id``):
        snapshot files received must name it."""
        self.listen = listen
        self.peers = dict(peers)
        self.deliver = deliver
        self.delivered = delivered
        self.dropped = dropped
        """Called with a peer id and frames (as ``send`` returned them) dropped from its queue
        unsent: the peer certainly never gets them (queue full; or the peer turned out to be
        a new process)."""
        self.unreachable = unreachable
        """Called after each failed connect with a peer id, its address, how long (s) its link
        has been down (since the transport started, or since the link was lost) and the last
        error: the operator's unreachable-peer warning decides whether to log."""
        self.max_frame_bytes = max_frame_bytes
        self.queue_limit = queue_limit
        self.log = log if log is not None else logging.getLogger("dengine_trio.transport")
        self.stats = TransportStats()
        self.bound_addresses: list[tuple[str, int]] = []
        """Where the listener is bound, once ``run`` has started (useful with port 0)."""
        self.uuid = uuid
        """This node's data-directory uuid, sent in every ``Hello``."""
        self.joining = joining
        self.address = address
        """This node's own Raft address ("host:port"), sent in every ``Hello`` so that a
        listener with no link to it can dial it to answer (``reply_link``)."""
        """Sent in every ``Hello``: this node is not a member yet and asks to join."""
        self.admit = admit
        """``admit(hello)``: why a caller is refused by membership ("" to accept), checked
        after the cluster id and the address; None: only ``peers`` are admitted."""
        self.identified = identified
        self.removal = removal
        """``removal(hello)``: for a caller ``admit`` refused, (index, membership bytes) of
        this node's committed membership if the caller is no member of it (sent in the
        refusal, ``HelloReply.removed_index``), else None."""
        self.removed = removed
        """``removed(peer, index, membership)``: ``peer`` refused our link saying its
        membership committed at ``index`` (bytes ``membership``) leaves us out."""
        """``identified(peer, uuid)``: called once a message connection from ``peer`` is
        accepted, before any of its messages is delivered."""
        self._links: dict[int, OutboundLink] = {}
        self._stranger_inbound: dict[trio.CancelScope, int] = {}
        """Open inbound connections from callers that are not peers (joining nodes)."""
        self._nursery: trio.Nursery | None = None
        for peer_id, (host, port) in self.peers.items():
            self._add_link(peer_id, (host, port))
        self._random = random.Random()
        self.tls = tls
        self._refusals_logged: dict[tuple[str, str], float] = {}
        self.snapshots = SnapshotTransfers(self, snapshots) if snapshots is not None else None
        """Both sides of snapshot transfers; None without ``snapshots``."""

    # -- membership ------------------------------------------------------------------------

    def _add_link(self, peer_id: int, address: tuple[str, int]) -> OutboundLink:
        stats = PeerStats(address=format_address(address))
        self.stats.peers[peer_id] = stats
        link = self._links[peer_id] = OutboundLink(peer_id, address, stats)
        return link

    def set_cluster_id(self, cluster_id: str) -> None:
        """The cluster's id is ``cluster_id``: ``Hello`` names it from now on, callers of
        another cluster are refused (connections already open stay; see ``same_cluster``)."""
        self.cluster_id = self.known_cluster_id = cluster_id

    def set_peers(self, peers: dict[int, tuple[str, int]]) -> None:
        """Make ``peers`` (every OTHER node's id -> ``(host, port)``) the nodes this node
        links to: a new peer is dialed at once; a peer no longer listed has its link, its
        queue and its connections to this node closed; a peer whose address changed is
        dialed at the new one. Call in the trio thread. ``ValueError`` if ``peers`` holds
        this node."""
        if self.node_id in peers:
            raise ValueError(f"peers must be the other nodes, but include node {self.node_id}")
        for peer_id in list(self._links):
            if peers.get(peer_id) != self._links[peer_id].address:
                self._remove_link(peer_id)
        for peer_id, address in peers.items():
            if peer_id not in self._links:
                link = self._add_link(peer_id, address)
                if self.snapshots is not None:
                    self.snapshots.add_link(link)
                if self._nursery is not None:
                    self._nursery.start_soon(self._run_link, link)
        self.peers = dict(peers)

    def reply_link(self, peer_id: int, address: str) -> None:
        """An admitted caller that is no peer (a leader this node's membership does not
        list yet, a joining node) said it listens at ``address``: link to it there, so that
        answers to its messages reach it. The link lasts until the next ``set_peers``
        (which keeps it if the membership lists the caller by then). Ignores a malformed
        address, this node's id and a caller already linked."""
        if peer_id == self.node_id or peer_id in self._links or not address:
            return
        host, sep, port_text = address.rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            return
        target = (host, int(port_text))
        link = self._add_link(peer_id, target)
        self.peers[peer_id] = target
        if self.snapshots is not None:
            self.snapshots.add_link(link)
        if self._nursery is not None:
            self._nursery.start_soon(self._run_link, link)
        self.log.info(
            "node %d: linked back to node %d at %s (not in its membership yet)",
            self.node_id,
            peer_id,
            link.stats.address,
        )

    def _remove_link(self, peer_id: int) -> None:
        link = self._links.pop(peer_id)
        self.stats.peers.pop(peer_id, None)
        link.removed = True
        if link.task_scope is not None:
            link.task_scope.cancel()
        for scope in list(link.inbound):
            scope.cancel()
        if link.queue:
            frames = list(link.queue)
            link.queue.clear()
            link.queued_bytes = 0
            if self.dropped is not None:
                self.dropped(peer_id, frames)
        if self.snapshots is not None:
            self.snapshots.remove_link(peer_id)
        self.log.info("node %d: peer %d removed; its link is closed", self.node_id, peer_id)

    def _hello_frame(self, peer_id: int, channel: Channel) -> bytes:
        return encode_frame(
            encode(
                Hello(
                    self.cluster_id,
                    self.node_id,
                    peer_id,
                    PROTOCOL_VERSION,
                    self.incarnation,
                    channel,
                    uuid=self.uuid,
                    joining=self.joining,
                    address=self.address,
                )
            )
        )

    # -- sending --------------------------------------------------------------------------

    def send(self, msg: object) -> bytes:
        """Queue ``msg`` for ``msg.dst``; never blocks. Returns its frame, which ``withdraw``
        takes back while it is still queued.

        ``InstallSnapshot`` is not queued: it starts streaming the newest snapshot file to
        ``dst`` on a connection of its own (``SnapshotTransfers.request``), unless one runs
        already; returns ``b""``. ``TypeError`` without ``snapshots``.

        When that peer's queue holds ``queue_limit`` messages the oldest is dropped (and
        counted): the newest messages carry the newest terms and log state. Raises
        ``ValueError`` for a ``dst`` that is this node or not a peer, or a ``src`` that is not
        this node; ``TypeError`` for a type the transport does not carry; ``CodecError``
        (``FrameTooLarge``) for a message that cannot be encoded within ``max_frame_bytes``.
        """
        if type(msg) not in _PEER_TYPES:
            if type(msg) is InstallSnapshot and self.snapshots is not None:
                if msg.dst not in self._links or msg.src != self.node_id:
                    raise ValueError(f"node {self.node_id} cannot send {msg!r}")
                self.snapshots.request(msg)
                return b""
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
            oldest = queue.popleft()
            link.queued_bytes -= len(oldest)
            link.stats.drops += 1
            if self.dropped is not None:
                self.dropped(link.peer_id, [oldest])
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

    def _write_now(self, link: OutboundLink) -> None:
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
                self._nursery = nursery
                for link in self._links.values():
                    nursery.start_soon(self._run_link, link)
                if self.snapshots is not None:
                    self.snapshots.nursery = nursery
                self.log.info(
                    "node %d: transport listening on %s", self.node_id, format_address(self.listen)
                )
                task_status.started()
        finally:
            self._nursery = None
            if self.snapshots is not None:
                self.snapshots.nursery = None
                self.snapshots.close()
            # serve_listeners closes them too; this covers a failure before it took them over.
            for listener in listeners:
                await trio.aclose_forcefully(listener)

    # -- outbound -------------------------------------------------------------------------

    async def _run_link(self, link: OutboundLink) -> None:
        if link.removed:
            return
        with trio.CancelScope() as link.task_scope:
            await self._dial_forever(link)

    async def _dial_forever(self, link: OutboundLink) -> None:
        backoff = BACKOFF_MIN_S
        down_since = trio.current_time()
        while True:
            stream = await self._connect(link)
            if stream is None and self.unreachable is not None:
                down_s = trio.current_time() - down_since
                self.unreachable(link.peer_id, link.stats.address, down_s, link.last_error)
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
                down_since = trio.current_time()
                # A link that lived long broke by accident: retry at once. One that broke right
                # away (a peer that keeps closing on us) backs off like a failed connect.
                if trio.current_time() - connected_at >= BACKOFF_MAX_S:
                    backoff = BACKOFF_MIN_S
                    continue
            # Jitter keeps the nodes of a restarted cluster from reconnecting in lockstep. A
            # peer that connects to us meanwhile is up (a restarted follower): dial it now
            # rather than after up to BACKOFF_MAX_S, or it waits that long for a leader.
            link.redial = trio.Event()
            with trio.move_on_after(backoff * (0.5 + 0.5 * self._random.random())):
                await link.redial.wait()
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    async def _connect(self, link: OutboundLink) -> trio.abc.Stream | None:
        """Open and handshake a stream to ``link``'s peer, or return None (already logged)."""
        host, port = link.address
        try:
            with trio.fail_after(CONNECT_TIMEOUT_S):
                tcp = await trio.open_tcp_stream(host, port)
        except (OSError, trio.TooSlowError) as exc:
            link.stats.connect_failures += 1
            link.last_error = f"connect failed: {exc!r}"
            self.log.debug(
                "node %d: cannot reach peer %d at %s: %r",
                self.node_id,
                link.peer_id,
                link.stats.address,
                exc,
            )
            return None
        handshaken = False
        stream: trio.abc.Stream = tcp
        try:
            # trio enables TCP_NODELAY on its TCP streams already; said again because latency
            # of small Raft messages depends on it. Set on the TCP stream, under any TLS.
            tcp.setsockopt(trio.socket.IPPROTO_TCP, trio.socket.TCP_NODELAY, True)
            with trio.fail_after(HANDSHAKE_TIMEOUT_S):
                if self.tls is not None:
                    secured = await self._tls_connect(link, tcp)
                    if secured is None:
                        return None
                    stream = secured
                await stream.send_all(self._hello_frame(link.peer_id, link.channel))
                reader = FrameReader(self.max_frame_bytes)
                frames: list[bytes] = []
                while not frames:
                    data = await stream.receive_some(RECEIVE_BYTES)
                    if not data:
                        raise ProtocolViolation("closed during the handshake")
                    frames = reader.feed(cast(bytes, data))
            reply = decode(frames[0])
            if type(reply) is not HelloReply:
                raise ProtocolViolation(f"answered Hello with {type(reply).__name__}")
            if not reply.ok:
                link.stats.refusals += 1
                if reply.removed_index and self.removed is not None:
                    self.removed(link.peer_id, reply.removed_index, reply.membership)
                link.last_error = f"refused the link: {reply.reason}"
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
        except (*STREAM_ERRORS, trio.TooSlowError, CodecError, ProtocolViolation) as exc:
            link.stats.connect_failures += 1
            link.last_error = f"handshake failed: {exc!r}"
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

    async def _tls_connect(
        self, link: OutboundLink, tcp: trio.SocketStream
    ) -> trio.SSLStream[trio.SocketStream] | None:
        """TLS-handshake over ``tcp``; return the stream, or None if the peer's certificate
        is not acceptable (logged once per reason). The address dialed is verified as usual
        (a host name or IP in the certificate), then the node name."""
        assert self.tls is not None
        stream = trio.SSLStream(tcp, self.tls.client, server_hostname=link.address[0])
        try:
            await stream.do_handshake()
        except trio.BrokenResourceError as exc:
            failure = tls_failure(exc)
            if failure is None:
                raise
            problem = f"TLS handshake failed: {failure}"
        else:
            problem = self.tls.name_problem(stream.getpeercert(), link.peer_id)
            if problem:
                problem = f"is not node {link.peer_id}: {problem}"
            else:
                return stream
        link.stats.connect_failures += 1
        link.last_error = problem
        self._log_tls_refusal(
            f"peer {link.peer_id} at {link.stats.address}", problem, "refused the link to"
        )
        await trio.aclose_forcefully(stream)
        return None

    async def _pump(self, link: OutboundLink, stream: trio.abc.Stream) -> str:
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
                except STREAM_ERRORS as exc:
                    close(f"connection failed: {exc!r}")
                    return
                close("closed by peer" if not data else "peer wrote on our outbound link")

            nursery.start_soon(watch_for_close)
            link.pumping = True
            if isinstance(stream, trio.SocketStream):
                # Plain TCP only: ``send`` may then write to the socket directly.
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
            except STREAM_ERRORS as exc:
                close(f"send failed: {exc!r}")
            finally:
                link.fd = -1
                link.pumping = False
                # A half-sent batch dies with its connection: the next one starts at a frame.
                link.unsent = b""
        return reason
