"""InstallSnapshot over real TCP (and TLS): a leader's transport streams its newest snapshot
file to a follower on a connection of its own (``runtime/snapshot_transfer.py``).

Two bare transports stand for two nodes; their ``SnapshotHooks`` record what a node would
step (``received``: the follower's ``InstallSnapshot`` with the staged file; ``status``: the
leader's ``SnapshotStatus``). Node 1 reaches node 2 through ``Proxy``, which can hold or cut
the one connection that carries snapshot bytes (more than ``threshold`` bytes towards node 2)
while every other connection, the message link among them, flows.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import msgpack
import pytest
import trio
import trustme
from hypothesis import given, settings
from hypothesis import strategies as st

from dengine_trio.raft.messages import InstallSnapshot
from dengine_trio.runtime import snapshot_transfer
from dengine_trio.runtime.snapshot_transfer import INCOMING_SUBDIR, SnapshotHooks
from dengine_trio.runtime.tls import PeerTls
from dengine_trio.storage.snapshots import SnapshotFile, SnapshotHeader, write_snapshot
from dengine_trio.wire import (
    PROTOCOL_VERSION,
    Channel,
    FrameReader,
    Hello,
    HelloReply,
    SnapshotChunk,
    SnapshotOffer,
    SnapshotReceived,
    SnapshotResume,
    decode,
    encode,
    encode_frame,
)

from .cluster import free_ports, wait_until
from .test_tls import peer_tls, tls_config
from .test_transport import CLUSTER, WAIT_S, Node, hb, heartbeat
from .wire_helpers import raw_handshake, read_until_closed

CHUNK = 64 * 1024


def make_snapshot(
    directory: Path, index: int, term: int, payload_bytes: int, cluster_id: str = CLUSTER
) -> SnapshotFile:
    """A real snapshot file of ``payload_bytes`` random bytes covering (index, term)."""
    payload = os.urandom(payload_bytes)
    header = SnapshotHeader(index, term, cluster_id, {1: "127.0.0.1:1", 2: "127.0.0.1:2"})

    def image(sink: Any) -> None:
        sink.write(payload)

    return write_snapshot(directory, header, image)


class SnapNode(Node):
    """A transport with snapshot hooks that record what the node would be told."""

    def __init__(
        self, node_id: int, ports: dict[int, int], root: Path, *, chunk_bytes: int = CHUNK,
        **options: Any,
    ) -> None:  # fmt: skip
        self.directory = root / f"n{node_id}" / "snapshots"
        self.latest: SnapshotFile | None = None
        self.received: list[tuple[InstallSnapshot, bytes]] = []
        self.statuses: list[tuple[int, bool]] = []
        self.keep_bytes = True
        hooks = SnapshotHooks(
            directory=self.directory,
            chunk_bytes=chunk_bytes,
            latest=lambda: self.latest,
            received=self._received,
            status=lambda peer, ok: self.statuses.append((peer, ok)),
        )
        super().__init__(node_id, ports, snapshots=hooks, **options)

    def _received(self, message: InstallSnapshot, staged: Path) -> None:
        # The node owns the staged file from here on: read it and remove it, as it would.
        self.received.append((message, staged.read_bytes() if self.keep_bytes else b""))
        staged.unlink()

    def incoming_files(self) -> list[str]:
        try:
            return sorted(os.listdir(self.directory / INCOMING_SUBDIR))
        except FileNotFoundError:
            return []


class Proxy:
    """Forwards every connection to ``127.0.0.1:target``. The first connection that carries
    more than ``threshold`` bytes towards the target (the snapshot one: nothing else is that
    large here) is held (``hold``: it stops forwarding until ``release``) or cut (``cut``:
    both sides closed), once; the other connections are never touched."""

    def __init__(self, target: int, threshold: int, mode: str) -> None:
        self.target = target
        self.threshold = threshold
        self.mode = mode
        self.port = 0
        self.tripped = trio.Event()
        self.release = trio.Event()
        self.connections = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._handle, listeners)
            task_status.started()

    async def _handle(self, client: trio.SocketStream) -> None:
        self.connections += 1
        try:
            upstream = await trio.open_tcp_stream("127.0.0.1", self.target)
        except OSError:
            await client.aclose()
            return
        async with client, upstream, trio.open_nursery() as nursery:

            async def pump(source: trio.SocketStream, sink: trio.SocketStream, up: bool) -> None:
                carried = 0
                try:
                    while data := await source.receive_some(64 * 1024):
                        carried += len(data)
                        if up and carried > self.threshold and not self.tripped.is_set():
                            self.tripped.set()
                            if self.mode == "cut":
                                nursery.cancel_scope.cancel()
                                return
                            await self.release.wait()
                        await sink.send_all(data)
                    await sink.send_eof()
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    nursery.cancel_scope.cancel()

            nursery.start_soon(pump, client, upstream, True)
            nursery.start_soon(pump, upstream, client, False)


async def start_pair(
    nursery: trio.Nursery, tmp_path: Path, proxy: Proxy | None = None,
    tls: tuple[PeerTls, PeerTls] | None = None, **options: Any,
) -> tuple[SnapNode, SnapNode]:  # fmt: skip
    """Nodes 1 (the leader, reaching node 2 through ``proxy`` if given) and 2, running."""
    p1, p2 = free_ports(2)
    if proxy is not None:
        proxy.target = p2
        await nursery.start(proxy.run)
    to_2 = proxy.port if proxy is not None else p2
    a = SnapNode(1, {1: p1, 2: to_2}, tmp_path, tls=tls[0] if tls else None, **options)
    b = SnapNode(2, {1: p1, 2: p2}, tmp_path, tls=tls[1] if tls else None, **options)
    await a.start(nursery)
    await b.start(nursery)
    return a, b


def install(leader: SnapNode, index: int, term: int, size: int) -> SnapshotFile:
    leader.latest = make_snapshot(leader.directory, index, term, size)
    return leader.latest


async def transferred(leader: SnapNode, follower: SnapNode) -> tuple[InstallSnapshot, bytes]:
    await wait_until(lambda: bool(follower.received and leader.statuses), WAIT_S)
    assert leader.statuses == [(follower.node_id, True)]
    assert len(follower.received) == 1
    return follower.received[0]


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.mark.parametrize("secure", [False, True], ids=["tcp", "tls"])
async def test_a_multi_chunk_snapshot_arrives_intact(
    tmp_path: Path, ca: trustme.CA, secure: bool
) -> None:
    """The newest file (not older than the message asks) arrives byte for byte; the follower
    is told its own index and term with the leader's term; the leader hears ok."""
    tls = (peer_tls(ca, tmp_path, 1), peer_tls(ca, tmp_path, 2)) if secure else None
    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            a, b = await start_pair(nursery, tmp_path, tls=tls)
            make_snapshot(a.directory, 40, 2, 3 * CHUNK)  # an older one, not sent
            snap = install(a, 90, 3, 10 * CHUNK + 123)
            assert a.transport.send(InstallSnapshot(5, 1, 2, 80, 3)) == b""
            message, data = await transferred(a, b)
            nursery.cancel_scope.cancel()
    assert message == InstallSnapshot(5, 1, 2, 90, 3)
    assert data == snap.path.read_bytes()
    assert b.incoming_files() == []
    stats = a.transport.stats.snapshots
    assert stats.sends_completed == 1 and stats.bytes_sent == snap.size_bytes
    assert b.transport.stats.snapshots.bytes_received == snap.size_bytes


async def test_no_snapshot_to_send_reports_failure(tmp_path: Path) -> None:
    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            a, b = await start_pair(nursery, tmp_path)
            a.transport.send(InstallSnapshot(5, 1, 2, 80, 3))  # no file at all
            await wait_until(lambda: bool(a.statuses), WAIT_S)
            install(a, 50, 3, 100)  # older than the message asks
            a.transport.send(InstallSnapshot(5, 1, 2, 80, 3))
            await wait_until(lambda: len(a.statuses) == 2, WAIT_S)
            nursery.cancel_scope.cancel()
    assert a.statuses == [(2, False), (2, False)]
    assert b.received == []


@pytest.mark.parametrize("secure", [False, True], ids=["tcp", "tls"])
async def test_messages_to_the_same_peer_flow_while_a_transfer_is_held(
    tmp_path: Path, ca: trustme.CA, secure: bool
) -> None:
    """The snapshot connection stalls (the proxy stops reading: TCP backpressure reaches the
    leader); heartbeats to the same peer, and its answers, keep being delivered meanwhile,
    on a message link that was never reconnected. One transfer per peer: requests repeated
    while it runs do not restart it."""
    tls = (peer_tls(ca, tmp_path, 1), peer_tls(ca, tmp_path, 2)) if secure else None
    proxy = Proxy(0, threshold=2 * CHUNK, mode="hold")
    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            a, b = await start_pair(nursery, tmp_path, proxy, tls=tls)
            snap = install(a, 90, 3, 40 * CHUNK)
            a.transport.send(InstallSnapshot(5, 1, 2, 90, 3))
            await proxy.tripped.wait()
            for seq in range(20):
                a.transport.send(hb(1, 2, seq))
                await b.wait_for(heartbeat(1, seq))
                b.transport.send(hb(2, 1, seq))
                await a.wait_for(heartbeat(2, seq))
                a.transport.send(InstallSnapshot(5, 1, 2, 90, 3))  # the same snapshot again
            # Every heartbeat arrived while the snapshot had not.
            assert b.received == [] and a.statuses == []
            proxy.release.set()
            _, data = await transferred(a, b)
            nursery.cancel_scope.cancel()
    assert data == snap.path.read_bytes()
    assert a.transport.stats.peers[2].connects == 1
    assert a.transport.stats.snapshots.sends_started == 1


@pytest.mark.parametrize("secure", [False, True], ids=["tcp", "tls"])
async def test_a_connection_dropped_mid_transfer_resumes_where_the_follower_is(
    tmp_path: Path, ca: trustme.CA, secure: bool
) -> None:
    tls = (peer_tls(ca, tmp_path, 1), peer_tls(ca, tmp_path, 2)) if secure else None
    proxy = Proxy(0, threshold=5 * CHUNK, mode="cut")
    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            a, b = await start_pair(nursery, tmp_path, proxy, tls=tls)
            snap = install(a, 90, 3, 30 * CHUNK)
            a.transport.send(InstallSnapshot(5, 1, 2, 90, 3))
            message, data = await transferred(a, b)
            nursery.cancel_scope.cancel()
    assert proxy.tripped.is_set()
    assert message == InstallSnapshot(5, 1, 2, 90, 3)
    assert data == snap.path.read_bytes()
    received = b.transport.stats.snapshots
    # The second connection went on from what the follower held: no byte written twice.
    assert received.resumed == 1
    assert received.bytes_received == snap.size_bytes
    assert a.transport.stats.snapshots.sends_completed == 1
    assert b.incoming_files() == []


async def test_a_newer_snapshot_needed_restarts_the_transfer_with_it(tmp_path: Path) -> None:
    """While a transfer is held, the leader takes a newer snapshot and the core asks for it:
    the old transfer stops, the newer file is sent from 0, and one status is reported."""
    proxy = Proxy(0, threshold=2 * CHUNK, mode="hold")
    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            a, b = await start_pair(nursery, tmp_path, proxy)
            install(a, 90, 3, 20 * CHUNK)
            a.transport.send(InstallSnapshot(5, 1, 2, 90, 3))
            await proxy.tripped.wait()
            newer = install(a, 150, 5, 12 * CHUNK)
            a.transport.send(InstallSnapshot(5, 1, 2, 150, 5))
            proxy.release.set()
            message, data = await transferred(a, b)
            await trio.sleep(0.2)  # room for a stray second report, which must not come
            nursery.cancel_scope.cancel()
    assert message == InstallSnapshot(5, 1, 2, 150, 5)
    assert data == newer.path.read_bytes()
    assert a.statuses == [(2, True)]
    assert b.incoming_files() == []


def chunk_frame(offset: int, data: bytes, src: int = 1, dst: int = 2) -> bytes:
    return encode_frame(encode(SnapshotChunk(src, dst, offset, data)))


def offer_for(snap: SnapshotFile, term: int = 5) -> SnapshotOffer:
    raw = snap.path.read_bytes()
    checksum = int.from_bytes(raw[-4:], "little")
    return SnapshotOffer(term, 1, 2, snap.last_index, snap.last_term, len(raw), checksum)


BAD_INPUTS: dict[str, Callable[[bytes], bytes]] = {
    "gap": lambda raw: chunk_frame(0, raw[:100]) + chunk_frame(200, raw[200:300]),
    "overlap": lambda raw: chunk_frame(0, raw[:100]) + chunk_frame(50, raw[50:300]),
    "past the offered size": lambda raw: chunk_frame(0, raw + b"x"),
    "empty chunk": lambda raw: chunk_frame(0, raw[:100]) + chunk_frame(100, b""),
    "oversized frame": lambda raw: chunk_frame(0, raw[:100]) + (1 << 30).to_bytes(4, "big"),
    "garbage": lambda raw: chunk_frame(0, raw[:100]) + encode_frame(b"\xc1garbage"),
    "another sender": lambda raw: chunk_frame(0, raw[:100], src=3),
    "a link message": lambda raw: chunk_frame(0, raw[:100]) + encode_frame(encode(hb(1, 2, 7))),
    "a second offer": lambda raw: (
        chunk_frame(0, raw[:100]) + encode_frame(encode(SnapshotOffer(5, 1, 2, 1, 1, 9, 0)))
    ),
    "damaged file": lambda raw: chunk_frame(0, raw[:-5] + bytes([raw[-5] ^ 1]) + raw[-4:]),
    "unknown format version": lambda raw: chunk_frame(
        0, raw[:4] + (99).to_bytes(4, "little") + raw[8:]
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
async def test_a_chunk_that_does_not_fit_closes_that_connection_only(
    tmp_path: Path, case: str
) -> None:
    """A snapshot connection that breaks the protocol or delivers a bad file is closed; the
    partial file is removed, nothing reaches the node, the message link carries on, and a
    good transfer still works afterwards."""
    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            a, b = await start_pair(nursery, tmp_path)
            snap = make_snapshot(tmp_path / "elsewhere", 90, 3, 4000)
            raw = snap.path.read_bytes()
            async with await trio.open_tcp_stream("127.0.0.1", b.transport.listen[1]) as stream:
                reader = FrameReader()
                hello = Hello(CLUSTER, 1, 2, PROTOCOL_VERSION, 0, Channel.SNAPSHOT)
                assert (await raw_handshake(stream, hello, reader)).ok
                await stream.send_all(encode_frame(encode(offer_for(snap))))
                answer = await read_frame(stream, reader)
                assert answer == SnapshotResume(2, 1, 0)
                await stream.send_all(BAD_INPUTS[case](raw))
                rest = reader.feed(await read_until_closed(stream))
            # At most a refusal (a damaged file) before the follower hangs up.
            assert all(
                isinstance(m := decode(f), SnapshotReceived) and not m.ok and m.reason for f in rest
            )
            await wait_until(lambda: b.incoming_files() == [], WAIT_S)
            assert b.received == []
            a.transport.send(hb(1, 2, 1))
            await b.wait_for(heartbeat(1, 1))
            install(a, 90, 3, 3 * CHUNK)
            a.transport.send(InstallSnapshot(5, 1, 2, 90, 3))
            await transferred(a, b)
            nursery.cancel_scope.cancel()
    assert a.transport.stats.peers[2].connects == 1
    assert b.transport.stats.snapshots.receives_refused == 1


async def read_frame(stream: trio.SocketStream, reader: FrameReader) -> object:
    frames: list[bytes] = []
    while not frames:
        data = await stream.receive_some()
        assert data, "closed before answering"
        frames = reader.feed(data)
    assert len(frames) == 1
    return decode(frames[0])


async def test_a_snapshot_of_another_cluster_is_refused(tmp_path: Path) -> None:
    """A peer of this cluster streaming a file whose header names another cluster: the
    follower verifies the complete file, refuses it, tells the leader, keeps nothing."""
    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            a, b = await start_pair(nursery, tmp_path)
            a.latest = make_snapshot(a.directory, 90, 3, 2 * CHUNK, cluster_id="other-cluster")
            a.transport.send(InstallSnapshot(5, 1, 2, 90, 3))
            await wait_until(lambda: bool(a.statuses), WAIT_S)
            a.transport.send(hb(1, 2, 1))
            await b.wait_for(heartbeat(1, 1))
            nursery.cancel_scope.cancel()
    assert a.statuses == [(2, False)]
    assert b.received == []
    assert b.incoming_files() == []
    assert a.transport.stats.peers[2].connects == 1


async def test_a_snapshot_connection_of_another_cluster_is_refused_at_the_handshake(
    tmp_path: Path,
) -> None:
    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            a, b = await start_pair(nursery, tmp_path)
            async with await trio.open_tcp_stream("127.0.0.1", b.transport.listen[1]) as stream:
                hello = Hello("other", 1, 2, PROTOCOL_VERSION, 0, Channel.SNAPSHOT)
                reply = await raw_handshake(stream, hello)
            assert not reply.ok and "cluster id" in reply.reason
            a.transport.send(hb(1, 2, 1))
            await b.wait_for(heartbeat(1, 1))
            nursery.cancel_scope.cancel()


@settings(max_examples=15, deadline=None)
@given(blob=st.binary(min_size=1, max_size=200))
async def test_garbage_on_a_snapshot_connection_never_stops_the_node(blob: bytes) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp, trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            a, b = await start_pair(nursery, Path(tmp))
            async with await trio.open_tcp_stream("127.0.0.1", b.transport.listen[1]) as stream:
                hello = Hello(CLUSTER, 1, 2, PROTOCOL_VERSION, 0, Channel.SNAPSHOT)
                assert (await raw_handshake(stream, hello)).ok
                await stream.send_all(blob)
                await stream.send_eof()
                await read_until_closed(stream)
            a.transport.send(hb(1, 2, 1))
            await b.wait_for(heartbeat(1, 1))
            await wait_until(lambda: b.incoming_files() == [], WAIT_S)
            nursery.cancel_scope.cancel()
    assert b.received == []


async def test_memory_stays_bounded_by_a_chunk_not_the_file(tmp_path: Path) -> None:
    """Leader and follower in this one process move a 32 MiB file in 256 KiB chunks; the
    Python heap never grows by more than a few chunks (tracemalloc's peak)."""
    chunk = 256 * 1024
    size = 32 * 1024 * 1024
    with trio.fail_after(4 * WAIT_S):
        async with trio.open_nursery() as nursery:
            a, b = await start_pair(nursery, tmp_path, chunk_bytes=chunk)
            b.keep_bytes = False
            install(a, 90, 3, size)
            tracemalloc.start()
            try:
                tracemalloc.reset_peak()
                baseline, _ = tracemalloc.get_traced_memory()
                a.transport.send(InstallSnapshot(5, 1, 2, 90, 3))
                await wait_until(lambda: bool(a.statuses), 4 * WAIT_S)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            nursery.cancel_scope.cancel()
    assert a.statuses == [(2, True)]
    assert peak - baseline < 12 * chunk, f"peak {peak - baseline} bytes above the baseline"


async def test_a_newer_leader_takes_over_the_partial_file_and_an_older_one_is_refused(
    tmp_path: Path,
) -> None:
    """Node 1's transfer (term 5) is under way when offers claiming other terms arrive: one
    of an older term is refused at once, one of a newer term takes the partial file over (the
    term-5 connection is closed, and its retries are refused while the newer one runs), and
    the newer file is the one handed to the node."""
    proxy = Proxy(0, threshold=2 * CHUNK, mode="hold")
    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            a, b = await start_pair(nursery, tmp_path, proxy)
            install(a, 90, 3, 20 * CHUNK)
            a.transport.send(InstallSnapshot(5, 1, 2, 90, 3))
            await proxy.tripped.wait()
            await wait_until(lambda: b.transport.stats.snapshots.bytes_received > 0, WAIT_S)
            newer = make_snapshot(tmp_path / "elsewhere", 120, 6, 3000)
            raw = newer.path.read_bytes()
            hello = Hello(CLUSTER, 1, 2, PROTOCOL_VERSION, 0, Channel.SNAPSHOT)
            async with await trio.open_tcp_stream("127.0.0.1", b.transport.listen[1]) as old:
                reader = FrameReader()
                assert (await raw_handshake(old, hello, reader)).ok
                await old.send_all(encode_frame(encode(offer_for(newer, term=4))))
                answer = await read_frame(old, reader)
                assert isinstance(answer, SnapshotReceived) and not answer.ok
                assert "term 5" in answer.reason
            async with await trio.open_tcp_stream("127.0.0.1", b.transport.listen[1]) as new:
                reader = FrameReader()
                assert (await raw_handshake(new, hello, reader)).ok
                await new.send_all(encode_frame(encode(offer_for(newer, term=6))))
                assert await read_frame(new, reader) == SnapshotResume(2, 1, 0)
                proxy.release.set()  # node 1's connection is gone: it retries, refused
                await wait_until(lambda: bool(a.statuses), WAIT_S)
                await new.send_all(chunk_frame(0, raw))
                assert await read_frame(new, reader) == SnapshotReceived(2, 1, True)
            nursery.cancel_scope.cancel()
    assert a.statuses == [(2, False)]
    assert [(m, data == raw) for m, data in b.received] == [
        (InstallSnapshot(6, 1, 2, 120, 6), True)
    ]
    assert b.incoming_files() == []


async def test_install_snapshot_on_the_message_link_closes_it(tmp_path: Path) -> None:
    """The core may see InstallSnapshot only for a file its runtime received and verified:
    a peer sending one on the message link is cut off, and nothing reaches the node."""
    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            a, b = await start_pair(nursery, tmp_path)
            async with await trio.open_tcp_stream("127.0.0.1", b.transport.listen[1]) as stream:
                assert (await raw_handshake(stream, Hello(CLUSTER, 1, 2, PROTOCOL_VERSION))).ok
                await stream.send_all(
                    encode_frame(encode(hb(1, 2, 100)))
                    + encode_frame(encode(InstallSnapshot(5, 1, 2, 90, 3)))
                )
                assert await read_until_closed(stream) == b""
            a.transport.send(hb(1, 2, 1))
            await b.wait_for(heartbeat(1, 1))
            nursery.cancel_scope.cancel()
    assert not [m for m in b.inbox if isinstance(m, InstallSnapshot)]
    assert b.transport.stats.connections_closed_on_error == 1


async def test_without_snapshots_a_transport_refuses_them(tmp_path: Path) -> None:
    p1, p2 = free_ports(2)
    plain = Node(2, {1: p1, 2: p2})
    with pytest.raises(TypeError):
        plain.transport.send(InstallSnapshot(5, 2, 1, 90, 3))
    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            await plain.start(nursery)
            async with await trio.open_tcp_stream("127.0.0.1", p2) as stream:
                hello = Hello(CLUSTER, 1, 2, PROTOCOL_VERSION, 0, Channel.SNAPSHOT)
                reply = await raw_handshake(stream, hello)
            nursery.cancel_scope.cancel()
    assert not reply.ok and reply.reason == "this node takes no snapshots"


async def test_a_hello_of_protocol_version_3_is_refused_naming_its_version(
    tmp_path: Path,
) -> None:
    p1, p2 = free_ports(2)
    node = Node(2, {1: p1, 2: p2})
    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            await node.start(nursery)
            async with await trio.open_tcp_stream("127.0.0.1", p2) as stream:
                # Version 3's Hello had five fields (no channel).
                await stream.send_all(encode_frame(msgpack.packb([32, [CLUSTER, 1, 2, 3, 77]])))
                reply = decode(FrameReader().feed(await read_until_closed(stream))[0])
            nursery.cancel_scope.cancel()
    assert isinstance(reply, HelloReply) and not reply.ok
    assert reply.reason == f"protocol version 3, expected {PROTOCOL_VERSION}"


@pytest.mark.parametrize("secure", [False, True], ids=["tcp", "tls"])
async def test_engines_keep_their_links_while_a_snapshot_transfer_is_stalled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ca: trustme.CA, secure: bool
) -> None:
    """Three engines; a follower down while the others compacted past its log comes back and
    needs the leader's snapshot, whose transfer stalls (the follower's disk takes the second
    chunk only when the test lets it). Meanwhile the leader's messages keep reaching that
    follower on the message link and the cluster keeps committing; then the transfer
    completes and the follower catches up."""
    from dengine_trio.storage import snapshots as snapshots_module

    from .cluster import EngineHandle, write_configs

    gate = threading.Event()
    writes = [0]
    original = snapshots_module.SnapshotReceiver.write_chunk

    def stalling(self: Any, offset: int, data: bytes) -> None:
        writes[0] += 1
        if writes[0] > 1:
            gate.wait(4 * WAIT_S)
        original(self, offset, data)

    monkeypatch.setattr(snapshots_module.SnapshotReceiver, "write_chunk", stalling)
    settings = {
        "raft.snapshot.max_log_entries_before_snapshot": 40,
        "raft.snapshot.retained_log_entries": 10,
        "raft.snapshot.chunk_size": 512,
    }
    configs = write_configs(tmp_path, extra=settings)
    if secure:  # peer TLS with mTLS: the snapshot connection is handshaken like the link
        configs = [
            attrs.evolve(c, tls=tls_config(ca, tmp_path / "certs", c.cluster.node_id))
            for c in configs
        ]
    nodes = {c.cluster.node_id: EngineHandle(c) for c in configs}
    try:
        with trio.fail_after(6 * WAIT_S):
            async with trio.open_nursery() as nursery:
                for handle in nodes.values():
                    await handle.start(nursery)
                leader = await wait_until(lambda: nodes[1].engine.leader_id(), WAIT_S)
                await nodes[leader].engine.wait_ready(WAIT_S)
                client = nodes[leader].engine.client()
                lagging = next(n for n in nodes if n != leader)
                await nodes[lagging].stop()
                for i in range(200):
                    await client.put(b"key%d" % (i % 20), b"value %d" % i)
                raft = nodes[leader].engine._runtime.raft
                await wait_until(lambda: raft is not None and raft.log.first_index > 30, WAIT_S)
                term = nodes[leader].engine.node_status().term
                back = await nodes[lagging].start(nursery)
                await wait_until(lambda: writes[0] >= 2, WAIT_S)  # the transfer is stalled
                transport = back._runtime.transport
                assert transport is not None
                assert (transport.tls is not None) == secure
                before = transport.stats.frames_in
                # Messages keep arriving while the snapshot cannot (heartbeats every 30 ms:
                # 60 of them span several election timeouts), and writes keep committing.
                for i in range(200, 220):
                    await client.put(b"key%d" % (i % 20), b"value %d" % i)
                await wait_until(lambda: transport.stats.frames_in >= before + 60, 4 * WAIT_S)
                assert back._runtime.snapshotter.installed == 0
                assert back.leader_id() == leader
                statuses = [h.engine.node_status() for h in nodes.values()]
                assert {s.term for s in statuses} == {term}
                gate.set()
                commit = nodes[leader].engine.node_status().commit_index
                await wait_until(lambda: back.node_status().applied_index >= commit, 4 * WAIT_S)
                assert back._runtime.snapshotter.installed == 1
                assert back.state_machine.data == nodes[leader].engine.state_machine.data  # type: ignore[attr-defined]
                nursery.cancel_scope.cancel()
    finally:
        gate.set()


async def test_a_confirmation_lost_is_given_again_without_a_second_hand_over_once(
    tmp_path: Path,
) -> None:
    """The leader lost the connection after the last chunk, before the follower's answer:
    offering the same file again gets the whole size as the offset and the confirmation,
    and the node is not handed the file twice; a third offer (the node did not use the file,
    say it crashed first) is served again from 0 rather than confirmed in a loop."""
    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            _, b = await start_pair(nursery, tmp_path)
            snap = make_snapshot(tmp_path / "elsewhere", 90, 3, 5000)
            raw = snap.path.read_bytes()
            hello = Hello(CLUSTER, 1, 2, PROTOCOL_VERSION, 0, Channel.SNAPSHOT)
            async with await trio.open_tcp_stream("127.0.0.1", b.transport.listen[1]) as stream:
                reader = FrameReader()
                assert (await raw_handshake(stream, hello, reader)).ok
                await stream.send_all(encode_frame(encode(offer_for(snap))) + chunk_frame(0, raw))
                await wait_until(lambda: bool(b.received), WAIT_S)
            async with await trio.open_tcp_stream("127.0.0.1", b.transport.listen[1]) as stream:
                reader = FrameReader()
                assert (await raw_handshake(stream, hello, reader)).ok
                await stream.send_all(encode_frame(encode(offer_for(snap))))
                answers = reader.feed(await read_until_closed(stream))
            assert len(b.received) == 1
            # Asked once more, the leader must think the node did not use it: sent again.
            async with await trio.open_tcp_stream("127.0.0.1", b.transport.listen[1]) as stream:
                reader = FrameReader()
                assert (await raw_handshake(stream, hello, reader)).ok
                await stream.send_all(encode_frame(encode(offer_for(snap))))
                assert await read_frame(stream, reader) == SnapshotResume(2, 1, 0)
                await stream.send_all(chunk_frame(0, raw))
                assert await read_frame(stream, reader) == SnapshotReceived(2, 1, True)
            nursery.cancel_scope.cancel()
    assert [decode(f) for f in answers] == [
        SnapshotResume(2, 1, len(raw)),
        SnapshotReceived(2, 1, True),
    ]
    assert [(m, data == raw) for m, data in b.received] == [
        (InstallSnapshot(5, 1, 2, 90, 3), True),
        (InstallSnapshot(5, 1, 2, 90, 3), True),
    ]


async def test_a_follower_restarted_mid_transfer_gets_the_file_from_the_start(
    tmp_path: Path,
) -> None:
    """The follower's process stops while the transfer is held (its partial file goes with
    it); the new process holds nothing, so the leader's next connection starts over at 0
    and completes."""
    proxy = Proxy(0, threshold=4 * CHUNK, mode="hold")
    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            a, b = await start_pair(nursery, tmp_path, proxy)
            snap = install(a, 90, 3, 20 * CHUNK)
            a.transport.send(InstallSnapshot(5, 1, 2, 90, 3))
            await proxy.tripped.wait()
            await wait_until(lambda: b.transport.stats.snapshots.bytes_received > 0, WAIT_S)
            await b.stop()
            assert b.incoming_files() == []  # a stopped transport leaves no partial file
            b2 = SnapNode(2, {1: a.transport.listen[1], 2: b.transport.listen[1]}, tmp_path)
            await b2.start(nursery)
            proxy.release.set()
            message, data = await transferred(a, b2)
            nursery.cancel_scope.cancel()
    assert message == InstallSnapshot(5, 1, 2, 90, 3)
    assert data == snap.path.read_bytes()
    assert b2.transport.stats.snapshots.resumed == 0
    assert b2.transport.stats.snapshots.bytes_received == snap.size_bytes


async def test_a_request_in_a_newer_term_restarts_the_offer_and_the_follower_resumes(
    tmp_path: Path,
) -> None:
    """The leader moved to a newer term while its transfer was held: the follower's core
    judges InstallSnapshot by its term, so the transfer starts over with an offer of the new
    term, and the follower goes on from the bytes it holds of that same file."""
    proxy = Proxy(0, threshold=4 * CHUNK, mode="hold")
    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            a, b = await start_pair(nursery, tmp_path, proxy)
            snap = install(a, 90, 3, 20 * CHUNK)
            a.transport.send(InstallSnapshot(5, 1, 2, 90, 3))
            await proxy.tripped.wait()
            await wait_until(lambda: b.transport.stats.snapshots.bytes_received > 0, WAIT_S)
            a.transport.send(InstallSnapshot(6, 1, 2, 90, 3))
            message, data = await transferred(a, b)
            proxy.release.set()
            nursery.cancel_scope.cancel()
    assert message == InstallSnapshot(6, 1, 2, 90, 3)
    assert data == snap.path.read_bytes()
    assert b.transport.stats.snapshots.resumed == 1
    assert b.transport.stats.snapshots.bytes_received == snap.size_bytes
    assert a.statuses == [(2, True)]


async def test_a_follower_that_keeps_losing_its_partial_file_makes_the_leader_give_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The follower's disk fails past the first chunk (it refuses and drops the partial
    file): each connection moves bytes, but the follower never holds more than before, so
    the leader reports failure after a few connections instead of retrying for ever."""
    from dengine_trio.storage import snapshots as snapshots_module

    original = snapshots_module.SnapshotReceiver.write_chunk

    def full_disk(self: Any, offset: int, data: bytes) -> None:
        if offset:
            raise OSError(28, "No space left on device")
        original(self, offset, data)

    monkeypatch.setattr(snapshots_module.SnapshotReceiver, "write_chunk", full_disk)
    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            a, b = await start_pair(nursery, tmp_path)
            install(a, 90, 3, 20 * CHUNK)
            a.transport.send(InstallSnapshot(5, 1, 2, 90, 3))
            await wait_until(lambda: bool(a.statuses), WAIT_S)
            nursery.cancel_scope.cancel()
    assert a.statuses == [(2, False)]
    assert b.received == []
    assert b.incoming_files() == []


def follower_model(chunks: list[tuple[int, bytes]], size: int) -> str:
    """What the follower must make of ``chunks`` for a file of ``size`` bytes: "received",
    "refused" (a chunk that does not fit, before the file was complete) or "partial" (the
    stream ended early: the partial file is kept for a resume)."""
    held = 0
    for offset, data in chunks:
        if held == size:
            break
        if offset != held or not data or held + len(data) > size:
            return "refused"
        held += len(data)
    return "received" if held == size else "partial"


@settings(max_examples=15, deadline=None)
@given(
    cuts=st.lists(st.integers(1, 4999), max_size=6, unique=True),
    tamper=st.none() | st.tuples(st.integers(0, 6), st.sampled_from(["skip", "repeat", "shift"])),
)
async def test_any_chunking_of_the_file_arrives_and_any_misfit_closes(
    cuts: list[int], tamper: tuple[int, str] | None
) -> None:
    """The file cut into chunks anywhere arrives intact; the same stream with a chunk
    skipped, repeated or shifted by a byte is refused at that chunk (no partial file, nothing
    handed to the node); a stream that just ends early leaves the partial file for a resume."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp, trio.fail_after(WAIT_S):
        root = Path(tmp)
        snap = make_snapshot(root / "elsewhere", 90, 3, 4000)
        raw = snap.path.read_bytes()
        bounds = [0, *sorted(c for c in cuts if c < len(raw)), len(raw)]
        chunks = [(lo, raw[lo:hi]) for lo, hi in itertools.pairwise(bounds)]
        if tamper is not None and tamper[0] < len(chunks):
            k, how = tamper
            offset, data = chunks[k]
            if how == "skip":
                del chunks[k]
            elif how == "repeat":
                chunks.insert(k, (offset, data))
            else:
                chunks[k] = (offset + 1, data)
        expected = follower_model(chunks, len(raw))
        p1, p2 = free_ports(2)
        b = SnapNode(2, {1: p1, 2: p2}, root)
        async with trio.open_nursery() as nursery:
            await b.start(nursery)
            async with await trio.open_tcp_stream("127.0.0.1", p2) as stream:
                reader = FrameReader()
                hello = Hello(CLUSTER, 1, 2, PROTOCOL_VERSION, 0, Channel.SNAPSHOT)
                assert (await raw_handshake(stream, hello, reader)).ok
                await stream.send_all(encode_frame(encode(offer_for(snap))))
                assert await read_frame(stream, reader) == SnapshotResume(2, 1, 0)
                with contextlib.suppress(trio.BrokenResourceError):
                    await stream.send_all(b"".join(chunk_frame(o, d) for o, d in chunks))
                    await stream.send_eof()
                # The follower has acted on everything by the time it hangs up.
                answers = [decode(f) for f in reader.feed(await read_until_closed(stream))]
            outcome = (b.received, b.incoming_files(), answers)
            nursery.cancel_scope.cancel()
        received, incoming, answers = outcome
        if expected == "received":
            assert answers == [SnapshotReceived(2, 1, True)]
            assert [(m, data == raw) for m, data in received] == [
                (InstallSnapshot(5, 1, 2, 90, 3), True)
            ]
        else:
            assert received == [] and answers == []
            assert len(incoming) == (1 if expected == "partial" else 0)


async def test_a_follower_that_cannot_create_its_partial_file_refuses_and_carries_on(
    tmp_path: Path,
) -> None:
    """The follower's incoming/ cannot be created (a file is in the way): the transfer is
    refused, the leader told, and both nodes keep running and linked."""
    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            a, b = await start_pair(nursery, tmp_path)
            b.directory.mkdir(parents=True)
            (b.directory / INCOMING_SUBDIR).write_bytes(b"in the way")
            install(a, 90, 3, 3 * CHUNK)
            a.transport.send(InstallSnapshot(5, 1, 2, 90, 3))
            await wait_until(lambda: bool(a.statuses), WAIT_S)
            a.transport.send(hb(1, 2, 1))
            await b.wait_for(heartbeat(1, 1))
            nursery.cancel_scope.cancel()
    assert a.statuses == [(2, False)]
    assert b.received == []
    assert b.transport.stats.snapshots.receives_refused == 1


async def test_a_refused_file_is_checked_on_the_leader_at_most_once_a_minute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a follower refuses a whole file the leader verifies its own copy (a damaged one
    is renamed aside and the node takes a fresh one: tests/integration/test_snapshot_seams.py).
    A file that verifies (the follower's reason is its own: here another cluster's header) is
    not read again at each attempt: the core asks again at every heartbeat answer, and a
    second full read per attempt of a large file would double the leader's disk load."""
    checked: list[Path] = []
    real_verify = snapshot_transfer.verify_snapshot

    def counting(path: Path, *args: Any) -> Any:
        checked.append(Path(path))
        return real_verify(path, *args)

    monkeypatch.setattr(snapshot_transfer, "verify_snapshot", counting)
    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            a, _ = await start_pair(nursery, tmp_path)
            a.latest = make_snapshot(a.directory, 90, 3, 2 * CHUNK, cluster_id="other-cluster")
            for attempt in range(1, 4):
                a.transport.send(InstallSnapshot(5, 1, 2, 90, 3))
                await wait_until(lambda n=attempt: len(a.statuses) == n, WAIT_S)
            nursery.cancel_scope.cancel()
    assert a.statuses == [(2, False)] * 3
    assert checked == [a.latest.path]
    assert a.latest.path.exists()  # valid here: left in place
