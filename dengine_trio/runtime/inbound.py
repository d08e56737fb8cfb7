"""The inbound half of the transport: the listener's side of each connection.

Each accepted connection must open with a ``Hello`` this node accepts (protocol version,
cluster id, addressed to this node, from a configured peer, and from the process this node
reaches at that peer's address); then every frame is decoded, checked to come from the
handshaken peer and delivered. Anything unexpected closes that connection only.

With peer TLS the connection is first TLS-handshaken (and, with mTLS, the caller's certificate
must name the node its ``Hello`` claims); the TLS handshake and ``Hello`` share one bound,
``HANDSHAKE_TIMEOUT_S``, so a caller that connects and says nothing, or stalls part-way
through TLS, holds a connection no longer than that.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import attrs
import trio

from dengine_trio.wire.codec import decode, encode
from dengine_trio.wire.errors import CodecError
from dengine_trio.wire.frames import FrameReader, encode_frame
from dengine_trio.wire.messages import (
    PEER_MESSAGE_TYPES,
    PROTOCOL_VERSION,
    Channel,
    Hello,
    HelloReply,
    JoinRequest,
)

from .links import (
    HANDSHAKE_TIMEOUT_S,
    MAX_REASON_CHARS,
    RECEIVE_BYTES,
    STREAM_ERRORS,
    OutboundLink,
    PeerIdentity,
    ProtocolViolation,
    TransportStats,
    remote_address,
    tls_failure,
)
from .snapshot_transfer import SnapshotTransfers
from .tls import PeerTls

_PEER_TYPES = frozenset(PEER_MESSAGE_TYPES)


def same_cluster(theirs: str, ours: str) -> bool:
    """Whether a caller naming cluster ``theirs`` may be of this node's cluster ``ours``.

    A node that knows its cluster's id (persisted at bootstrap: ``<configuration id>-<12
    hex>``, ``runtime/membership.py``) names it; one that knows none yet names the id its
    configuration derives (``NodeConfig.cluster_id()``: name and initial voters), or "" (a
    joining node, whose configuration need not list the voters the cluster started with).
    Equal ids match, "" matches anything (the membership rules decide), and a configuration
    id matches the cluster ids derived from it (a wiped node of this cluster, a new cluster's
    nodes before their first leader): two clusters bootstrapped apart never match, even from
    the same configuration."""
    if not theirs or not ours or theirs == ours:
        return True
    return ours.startswith(theirs + "-") or theirs.startswith(ours + "-")


class InboundSide(PeerIdentity):
    """Mixin of ``Transport``: serves the connections peers open to this node."""

    incarnation: int
    cluster_id: str
    peers: dict[int, tuple[str, int]]
    deliver: Callable[[object], None]
    admit: Callable[[Hello], str] | None
    identified: Callable[[int, str], None] | None
    removal: Callable[[Hello], tuple[int, bytes] | None] | None
    delivered: Callable[[], None] | None
    max_frame_bytes: int
    stats: TransportStats
    tls: PeerTls | None
    snapshots: SnapshotTransfers | None
    _links: dict[int, OutboundLink]
    _stranger_inbound: dict[trio.CancelScope, int]

    def reply_link(self, peer_id: int, address: str) -> None:
        """See ``Transport.reply_link``."""
        raise NotImplementedError

    async def _serve_inbound(self, tcp: trio.SocketStream) -> None:
        remote = remote_address(tcp)
        deadline = trio.current_time() + HANDSHAKE_TIMEOUT_S
        stream: trio.abc.Stream = tcp
        cert: Any = None
        if self.tls is not None:
            secured = await self._tls_accept(tcp, remote, deadline)
            if secured is None:
                return
            stream, cert = secured, secured.getpeercert()
        reader = FrameReader(self.max_frame_bytes)
        accepted = await self._accept_handshake(stream, reader, remote, deadline, cert)
        if accepted is None:
            return
        peer_id, incarnation, pending, channel, hello = accepted
        # A caller admitted only because it says it is joining may ask to join and nothing
        # else until it is a member (checked per message: its link outlives its admission).
        joiner = hello if hello.joining and not self._admitted_as_member(hello) else None
        self.stats.inbound_open += 1
        scope = trio.CancelScope()
        # A caller that is no peer (yet): a node joining the cluster, admitted by ``admit``.
        link = self._links.get(peer_id)
        inbound = link.inbound if link is not None else self._stranger_inbound
        inbound[scope] = incarnation
        try:
            with scope:
                if channel is Channel.SNAPSHOT and self.snapshots is not None:
                    await self.snapshots.receive(stream, reader, peer_id, remote, pending)
                else:
                    await self._receive_from(stream, reader, peer_id, remote, pending, joiner)
        finally:
            del inbound[scope]
            self.stats.inbound_open -= 1
            if self.delivered is not None:
                # What arrived before a bad frame (or the end) is handled all the same.
                self.delivered()

    async def _tls_accept(
        self, tcp: trio.SocketStream, remote: str, deadline: float
    ) -> trio.SSLStream[trio.SocketStream] | None:
        """TLS-handshake an accepted connection by ``deadline`` (trio time, s); None if it
        failed (a plain-TCP caller, a certificate the CA did not sign, a stall): counted as
        refused and logged once per caller host and problem."""
        assert self.tls is not None
        stream = trio.SSLStream(tcp, self.tls.server, server_side=True)
        problem = ""
        with trio.move_on_at(deadline) as scope:
            try:
                await stream.do_handshake()
            except STREAM_ERRORS as exc:
                problem = tls_failure(exc) or f"connection failed in the TLS handshake: {exc!r}"
        if scope.cancelled_caught:
            problem = f"no TLS handshake within {HANDSHAKE_TIMEOUT_S} s"
        if not problem:
            return stream
        self.stats.connections_refused += 1
        self._log_tls_refusal(f"connection from {remote}", problem[:MAX_REASON_CHARS])
        return None

    async def _receive_from(
        self,
        stream: trio.abc.Stream,
        reader: FrameReader,
        peer_id: int,
        remote: str,
        pending: list[bytes],
        joiner: Hello | None = None,
    ) -> None:
        """Deliver the frames of an accepted connection until it ends; a bad frame closes it.
        ``joiner``: the ``Hello`` of a caller admitted only as joining (see ``_receive``)."""
        link = self._links.get(peer_id)
        peer_stats = link.stats if link is not None else None
        try:
            for payload in pending:
                joiner = self._receive(peer_id, payload, joiner)
            while True:
                if self.delivered is not None:
                    self.delivered()
                data = await stream.receive_some(RECEIVE_BYTES)
                if not data:
                    self.log.debug("node %d: peer %d closed its link", self.node_id, peer_id)
                    return
                self.stats.bytes_in += len(data)
                if peer_stats is not None:
                    peer_stats.bytes_in += len(data)
                # A buffer either way (bytes from TCP, maybe bytearray from TLS).
                for payload in reader.feed(cast(bytes, data)):
                    joiner = self._receive(peer_id, payload, joiner)
        except (CodecError, ProtocolViolation) as exc:
            self.stats.connections_closed_on_error += 1
            self.log.warning(
                "node %d: closing connection from peer %d at %s: %s",
                self.node_id,
                peer_id,
                remote,
                exc,
            )
        except STREAM_ERRORS as exc:
            self.log.info(
                "node %d: connection from peer %d at %s failed: %r",
                self.node_id,
                peer_id,
                remote,
                exc,
            )

    def _receive(self, peer_id: int, payload: bytes, joiner: Hello | None = None) -> Hello | None:
        """Decode and deliver one frame of ``peer_id``'s connection; raise
        ``ProtocolViolation`` (closing that connection only) for anything it may not send.

        ``joiner`` is the ``Hello`` of a caller admitted only because it said it is joining
        (not a member when it connected): until the membership admits it as a member, it
        may send ``JoinRequest`` only, else a stranger could depose the leader with a higher
        term, vote, or forward proposals (issue 14). Returns ``joiner``, or None once the
        caller is a member (no more checks on this connection)."""
        msg: Any = decode(payload)
        if type(msg) not in _PEER_TYPES:
            raise ProtocolViolation(f"unexpected {type(msg).__name__} after the handshake")
        if msg.src != peer_id or msg.dst != self.node_id:
            raise ProtocolViolation(
                f"{type(msg).__name__} from {msg.src} to {msg.dst} "
                f"on the link from peer {peer_id} to node {self.node_id}"
            )
        if joiner is not None and type(msg) is not JoinRequest:
            if not self._admitted_as_member(joiner):
                raise ProtocolViolation(
                    f"{type(msg).__name__} from node {peer_id}, which is no member "
                    "(a joining node may send JoinRequest only)"
                )
            joiner = None
        self.stats.frames_in += 1
        self.deliver(msg)
        return joiner

    def _admitted_as_member(self, hello: Hello) -> bool:
        """Whether the membership admits ``hello``'s caller without its joining claim."""
        if self.admit is None:
            return hello.src in self.peers
        return not self.admit(attrs.evolve(hello, joining=False))

    async def _accept_handshake(
        self,
        stream: trio.abc.Stream,
        reader: FrameReader,
        remote: str,
        deadline: float,
        cert: Any = None,
    ) -> tuple[int, int, list[bytes], Channel, Hello] | None:
        """Read ``Hello`` by ``deadline`` (trio time, s) and check it (and, with mTLS, that
        ``cert``, the caller's decoded certificate, names the node it claims); on success
        return the peer id, its incarnation, any frames that came with it, the channel and
        the ``Hello``, otherwise refuse (one WARNING) and return None."""
        frames: list[bytes] = []
        reason = ""
        hello: object = None
        try:
            with trio.move_on_at(deadline):
                while not frames:
                    data = await stream.receive_some(RECEIVE_BYTES)
                    if not data:
                        reason = "closed before Hello"
                        break
                    frames = reader.feed(cast(bytes, data))
            if frames:
                hello = decode(frames[0])
                reason = self._check_hello(hello)
                if not reason and self.tls is not None and self.tls.mutual:
                    assert isinstance(hello, Hello)
                    problem = self.tls.name_problem(cert, hello.src)
                    if problem:
                        problem = f"claims node {hello.src}, but its {problem}"
                        self.stats.connections_refused += 1
                        self._log_tls_refusal(f"connection from {remote}", problem)
                        await self._refuse(stream, problem[:MAX_REASON_CHARS])
                        return None
                if not reason:
                    assert isinstance(hello, Hello)
                    claim = self._check_claim(hello, remote) if hello.src in self._links else ""
                    if claim:
                        # Logged by _check_claim, once: the caller retries every second.
                        self.stats.connections_refused += 1
                        await self._refuse(stream, claim[:MAX_REASON_CHARS])
                        return None
            elif not reason:
                reason = f"no Hello within {HANDSHAKE_TIMEOUT_S} s"
        except CodecError as exc:
            reason = f"undecodable Hello: {exc}"
        except STREAM_ERRORS as exc:
            reason = f"connection failed before Hello: {exc!r}"
        reason = reason[:MAX_REASON_CHARS]
        if reason:
            self.stats.connections_refused += 1
            self._log_refusal(
                remote, reason, f"node {self.node_id}: refused connection from {remote}: {reason}"
            )
            proof = None
            if type(hello) is Hello and self.removal is not None:
                proof = self.removal(hello)  # a removed member learns it (raft ``Removed``)
            await self._refuse(stream, reason, proof)
            return None
        assert isinstance(hello, Hello)
        try:
            with trio.fail_after(HANDSHAKE_TIMEOUT_S):
                await stream.send_all(encode_frame(encode(HelloReply(True, "", self.incarnation))))
        except (*STREAM_ERRORS, trio.TooSlowError) as exc:
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
        link = self._links.get(hello.src)
        if link is not None:
            if hello.incarnation:
                self._meet_incarnation(link, hello.incarnation)
            link.redial.set()
        elif hello.channel is Channel.MESSAGES:
            self.reply_link(hello.src, hello.address)
        if self.identified is not None and hello.channel is Channel.MESSAGES:
            # Before any message of this connection reaches the core: which data directory
            # the caller runs on (a member that lost its disk must not count as itself).
            self.identified(hello.src, hello.uuid)
        return hello.src, hello.incarnation, frames[1:], hello.channel, hello

    async def _refuse(
        self, stream: trio.abc.Stream, reason: str, removed: tuple[int, bytes] | None = None
    ) -> None:
        index, membership = removed if removed is not None else (0, b"")
        reply = HelloReply(False, reason, self.incarnation, index, membership)
        with trio.move_on_after(HANDSHAKE_TIMEOUT_S):
            try:
                await stream.send_all(encode_frame(encode(reply)))
            except STREAM_ERRORS:
                pass

    def _check_hello(self, hello: object) -> str:
        """Why ``hello`` is refused, or "" if it is accepted."""
        if type(hello) is not Hello:
            return f"expected Hello, got {type(hello).__name__}"
        if hello.protocol_version != PROTOCOL_VERSION:
            return f"protocol version {hello.protocol_version}, expected {PROTOCOL_VERSION}"
        if not same_cluster(hello.cluster_id, self.cluster_id):
            return f"cluster id {hello.cluster_id!r} is not {self.cluster_id!r}"
        if hello.dst != self.node_id:
            return f"Hello addressed to node {hello.dst}, this is node {self.node_id}"
        if hello.src == self.node_id:
            return f"Hello from node {hello.src}, which is this node"
        if self.admit is not None:
            reason = self.admit(hello)
            if reason:
                return reason
        elif hello.src not in self.peers:
            return f"Hello from node {hello.src}, which is not a peer"
        if hello.channel is Channel.SNAPSHOT and self.snapshots is None:
            return "this node takes no snapshots"
        if (
            hello.channel is not Channel.MESSAGES
            and hello.joining
            and not self._admitted_as_member(hello)
        ):
            # A joiner only asks to join (on its message link); it sends no snapshots.
            return f"node {hello.src} is joining: it may open a message link only"
        return ""
        return ""
