"""The TCP transport between real trio nodes on 127.0.0.1."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from dengine_trio.raft.messages import (
    AppendEntries,
    AppendEntriesResponse,
    Entry,
    EntryKind,
    Heartbeat,
    RequestVote,
)
from dengine_trio.runtime.transport import Transport
from dengine_trio.wire import (
    PROTOCOL_VERSION,
    CodecError,
    ForwardPropose,
    ForwardResult,
    ForwardStatus,
    FrameReader,
    FrameTooLarge,
    Hello,
    HelloReply,
    decode,
    encode,
    encode_frame,
)

from .cluster import free_ports, wait_until
from .wire_helpers import raw_handshake, read_until_closed

CLUSTER = "test-cluster"
WAIT_S = 10  # bound on every wait; generous because the machine is shared


def hb(src: int, dst: int, seq: int) -> Heartbeat:
    return Heartbeat(term=1, src=src, dst=dst, commit=0, seq=seq)


def heartbeat(src: int, seq: int) -> Callable[[Any], bool]:
    """Matches the heartbeat numbered ``seq`` from ``src``."""
    return lambda m: isinstance(m, Heartbeat) and m.src == src and m.seq == seq


class Node:
    """A Transport plus an inbox, run in its own cancel scope so it can stop and restart."""

    def __init__(
        self,
        node_id: int,
        ports: dict[int, int],
        *,
        peer_host: str = "127.0.0.1",
        cluster_id: str = CLUSTER,
        **options: Any,
    ) -> None:
        self.node_id = node_id
        self.inbox: list[object] = []
        self._arrived = trio.Event()
        self.transport = Transport(
            node_id,
            cluster_id,
            ("127.0.0.1", ports[node_id]),
            {peer: (peer_host, port) for peer, port in ports.items() if peer != node_id},
            self._deliver,
            **options,
        )
        self._scope: trio.CancelScope | None = None
        self._stopped = trio.Event()

    def _deliver(self, msg: object) -> None:
        self.inbox.append(msg)
        self._arrived.set()

    async def wait_for(self, predicate: Callable[[Any], bool]) -> Any:
        while True:
            for msg in self.inbox:
                if predicate(msg):
                    return msg
            self._arrived = trio.Event()
            await self._arrived.wait()

    async def start(self, nursery: trio.Nursery) -> None:
        self._stopped = trio.Event()
        await nursery.start(self._run)

    async def _run(self, *, task_status: trio.TaskStatus[None]) -> None:
        try:
            with trio.CancelScope() as self._scope:
                await self.transport.run(task_status=task_status)
        finally:
            self._stopped.set()

    async def stop(self) -> None:
        assert self._scope is not None
        self._scope.cancel()
        await self._stopped.wait()


async def test_two_nodes_exchange_every_kind_of_message_both_ways() -> None:
    ports = dict(zip((1, 2), free_ports(2), strict=True))
    a, b = Node(1, ports), Node(2, ports)
    to_b = [
        AppendEntries(
            term=3,
            src=1,
            dst=2,
            prev_log_index=4,
            prev_log_term=2,
            entries=tuple(Entry(3, 5 + i, b"v%d" % i, EntryKind.COMMAND) for i in range(50)),
            leader_commit=4,
        ),
        AppendEntries(3, 1, 2, 54, 3, (Entry(3, 55, b"", EntryKind.NOOP),), 54),
        ForwardResult(src=1, dst=2, request_id=7, status=ForwardStatus.NOT_LEADER, leader_id=3),
        hb(1, 2, 1),
    ]
    to_a = [
        AppendEntriesResponse(term=3, src=2, dst=1, success=True, match_index=55),
        RequestVote(term=4, src=2, dst=1, last_log_index=55, last_log_term=3, pre_vote=True),
        ForwardPropose(src=2, dst=1, request_id=7, data=b"\x00put k v"),
    ]
    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            await a.start(nursery)
            await b.start(nursery)
            for msg in to_b:
                a.transport.send(msg)
            for msg in to_a:
                b.transport.send(msg)
            await b.wait_for(lambda m: m == to_b[-1])
            await a.wait_for(lambda m: m == to_a[-1])
            nursery.cancel_scope.cancel()
    assert b.inbox == to_b
    assert a.inbox == to_a
    assert a.transport.stats.peers[2].frames_out == len(to_b)
    assert b.transport.stats.frames_in == len(to_b)
    assert a.transport.stats.frames_in == len(to_a)
    assert a.transport.stats.connections_accepted == 1


async def test_three_nodes_reach_each_other_in_order() -> None:
    ports = dict(zip((1, 2, 3), free_ports(3), strict=True))
    nodes = {i: Node(i, ports) for i in ports}
    count = 300  # enough to be sent in batches, as the sender drains its whole queue at once
    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            for node in nodes.values():
                await node.start(nursery)
            for seq in range(count):
                for src in nodes:
                    for dst in nodes:
                        if src != dst:
                            nodes[src].transport.send(hb(src, dst, seq))
            for dst, node in nodes.items():
                for src in nodes:
                    if src != dst:
                        await node.wait_for(heartbeat(src, count - 1))
            nursery.cancel_scope.cancel()
    for dst, node in nodes.items():
        for src in nodes:
            if src != dst:
                assert [m.seq for m in node.inbox if m.src == src] == list(range(count))  # type: ignore[attr-defined]


async def test_bursts_larger_than_the_socket_buffer_arrive_whole_and_in_order() -> None:
    """``send`` writes straight to an idle socket; what the socket does not take at once (a
    partial write, cutting a frame) is finished by the pump before anything queued later."""
    ports = dict(zip((1, 2), free_ports(2), strict=True))
    a, b = Node(1, ports), Node(2, ports)
    payload = os.urandom(64 * 1024)
    count = 200  # 12.8 MB sent without yielding: far more than a loopback socket buffers

    def append(seq: int) -> AppendEntries:
        entry = Entry(term=1, index=seq, data=payload, kind=EntryKind.COMMAND)
        return AppendEntries(
            term=1,
            src=1,
            dst=2,
            prev_log_index=seq - 1,
            prev_log_term=1,
            entries=(entry,),
            leader_commit=0,
        )

    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            await a.start(nursery)
            await b.start(nursery)
            a.transport.send(hb(1, 2, 0))
            await b.wait_for(heartbeat(1, 0))  # linked: later sends go straight to the socket
            for seq in range(1, count + 1):
                a.transport.send(append(seq))
            a.transport.send(hb(1, 2, 1))
            await b.wait_for(heartbeat(1, 1))
            nursery.cancel_scope.cancel()
    appends = [m for m in b.inbox if isinstance(m, AppendEntries)]
    assert [m.prev_log_index + 1 for m in appends] == list(range(1, count + 1))
    assert all(m.entries[0].data == payload for m in appends)
    assert a.transport.stats.peers[2].connects == 1  # the link never broke


async def test_peer_addresses_may_be_the_wildcard_address() -> None:
    """The mission's config names peers as 0.0.0.0:port, which on Linux reaches loopback."""
    ports = dict(zip((1, 2), free_ports(2), strict=True))
    a, b = Node(1, ports, peer_host="0.0.0.0"), Node(2, ports, peer_host="0.0.0.0")
    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            await a.start(nursery)
            await b.start(nursery)
            a.transport.send(hb(1, 2, 1))
            b.transport.send(hb(2, 1, 2))
            await b.wait_for(lambda m: m == hb(1, 2, 1))
            await a.wait_for(lambda m: m == hb(2, 1, 2))
            nursery.cancel_scope.cancel()


async def test_messages_sent_before_the_peer_starts_arrive_once_it_does() -> None:
    ports = dict(zip((1, 2), free_ports(2), strict=True))
    a, b = Node(1, ports), Node(2, ports)
    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            await a.start(nursery)
            a.transport.send(hb(1, 2, 1))
            await wait_until(lambda: a.transport.stats.peers[2].connect_failures >= 2)
            assert not a.transport.stats.peers[2].connected
            await b.start(nursery)
            await b.wait_for(lambda m: m == hb(1, 2, 1))
            nursery.cancel_scope.cancel()
    assert a.transport.stats.peers[2].connects == 1


async def test_restarted_peer_is_reconnected() -> None:
    ports = dict(zip((1, 2), free_ports(2), strict=True))
    a, b = Node(1, ports), Node(2, ports)
    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            await a.start(nursery)
            await b.start(nursery)
            a.transport.send(hb(1, 2, 1))
            await b.wait_for(lambda m: m == hb(1, 2, 1))
            await b.stop()

            restarted = Node(2, ports)
            await restarted.start(nursery)
            # Messages sent while the old link was dying may be lost (Raft tolerates that):
            # resend until one gets through the new link.
            seq = 1
            while not restarted.inbox:
                seq += 1
                a.transport.send(hb(1, 2, seq))
                with trio.move_on_after(0.05):
                    await restarted.wait_for(lambda m: m.src == 1)
            restarted.transport.send(hb(2, 1, 100))
            await a.wait_for(lambda m: m == hb(2, 1, 100))
            nursery.cancel_scope.cancel()
    assert a.transport.stats.peers[2].connects == 2
    assert a.transport.stats.connections_accepted == 2  # node 2, then its restarted self


async def test_full_queue_drops_the_oldest_messages_and_counts_them() -> None:
    ports = dict(zip((1, 2), free_ports(2), strict=True))
    a, b = Node(1, ports, queue_limit=3), Node(2, ports)
    for seq in range(1, 6):
        a.transport.send(hb(1, 2, seq))  # not running yet: everything waits in the queue
    assert a.transport.stats.peers[2].drops == 2
    assert a.transport.stats.peers[2].queued == 3
    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            await b.start(nursery)
            await a.start(nursery)
            await b.wait_for(lambda m: m.seq == 5)
            a.transport.send(hb(1, 2, 6))
            await b.wait_for(lambda m: m.seq == 6)
            nursery.cancel_scope.cancel()
    assert [m.seq for m in b.inbox] == [3, 4, 5, 6]  # type: ignore[attr-defined]
    assert a.transport.stats.as_dict()["drops"] == 2


def test_send_refuses_programming_errors() -> None:
    ports = dict(zip((1, 2), free_ports(2), strict=True))
    transport = Node(1, ports, max_frame_bytes=1024).transport
    with pytest.raises(ValueError):
        transport.send(hb(1, 1, 1))  # to self
    with pytest.raises(ValueError):
        transport.send(hb(1, 9, 1))  # to an unknown node
    with pytest.raises(ValueError):
        transport.send(hb(2, 2, 1))  # claiming another sender
    with pytest.raises(TypeError):
        transport.send(Hello(CLUSTER, 1, 2, PROTOCOL_VERSION))
    with pytest.raises(FrameTooLarge):
        transport.send(ForwardPropose(src=1, dst=2, request_id=1, data=b"x" * 2000))
    assert transport.stats.peers[2].queued == 0
    with pytest.raises(ValueError):
        Transport(1, CLUSTER, ("127.0.0.1", 0), {1: ("127.0.0.1", 1)}, lambda m: None)


@pytest.mark.parametrize(
    ("hello", "reason"),
    [
        (Hello("other-cluster", 2, 1, PROTOCOL_VERSION), "cluster id 'other-cluster'"),
        (Hello(CLUSTER, 2, 3, PROTOCOL_VERSION), "addressed to node 3"),
        (Hello(CLUSTER, 7, 1, PROTOCOL_VERSION), "from node 7, which is not a peer"),
        (Hello(CLUSTER, 2, 1, PROTOCOL_VERSION + 1), "protocol version"),
        (hb(2, 1, 1), "expected Hello, got Heartbeat"),
    ],
)
async def test_bad_hello_is_refused_and_logged(
    hello: Any, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    ports = dict(zip((1, 2), free_ports(2), strict=True))
    a = Node(1, ports)
    caplog.set_level(logging.WARNING, logger="dengine_trio.transport")
    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            await a.start(nursery)
            stream = await trio.open_tcp_stream("127.0.0.1", ports[1])
            local = f"127.0.0.1:{stream.socket.getsockname()[1]}"
            async with stream:
                await stream.send_all(encode_frame(encode(hello)))
                reply = decode((await read_until_closed(stream))[4:])
            nursery.cancel_scope.cancel()
    assert isinstance(reply, HelloReply)
    assert not reply.ok
    assert reason in reply.reason
    refusals = [r for r in caplog.records if "refused connection" in r.getMessage()]
    assert len(refusals) == 1
    assert refusals[0].levelno == logging.WARNING
    assert local in refusals[0].getMessage()
    assert reason in refusals[0].getMessage()
    assert a.transport.stats.connections_refused == 1
    assert a.inbox == []


async def test_peer_refusing_the_link_is_retried_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ports = dict(zip((1, 2), free_ports(2), strict=True))
    a, b = Node(1, ports), Node(2, ports, cluster_id="another")
    caplog.set_level(logging.WARNING, logger="dengine_trio.transport")
    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            await b.start(nursery)
            await a.start(nursery)
            await wait_until(lambda: a.transport.stats.peers[2].refusals >= 3)
            nursery.cancel_scope.cancel()
    refused_link = [r for r in caplog.records if "node 1: peer 2" in r.getMessage()]
    assert len(refused_link) == 1
    assert b.inbox == []


garbage = st.one_of(
    st.binary(min_size=1, max_size=64),
    # A length prefix, then arbitrary bytes: reaches the decoder instead of the framing.
    st.binary(max_size=64).map(encode_frame),
    # A valid frame cut short.
    st.tuples(st.integers(1, 1000), st.integers(0, 30)).map(
        lambda t: encode_frame(encode(hb(3, 1, t[0])))[: t[1]]
    ),
)


@settings(max_examples=25, deadline=None)
@given(blobs=st.lists(st.tuples(st.booleans(), garbage), min_size=1, max_size=6))
async def test_garbage_on_other_connections_never_stops_the_node(
    blobs: list[tuple[bool, bytes]],
) -> None:
    """Garbage before or after a handshake closes that connection only; the link between the
    two well-formed nodes keeps carrying messages meanwhile."""
    ports = dict(zip((1, 2, 3), free_ports(3), strict=True))
    a, b = Node(1, ports), Node(2, ports)
    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            await a.start(nursery)
            await b.start(nursery)
            for seq, (handshake_first, blob) in enumerate(blobs):
                async with await trio.open_tcp_stream("127.0.0.1", ports[1]) as stream:
                    if handshake_first:
                        reply = await raw_handshake(stream, Hello(CLUSTER, 3, 1, PROTOCOL_VERSION))
                        assert reply.ok
                    await stream.send_all(blob)
                    a.transport.send(hb(1, 2, seq))
                    b.transport.send(hb(2, 1, seq))
                    await stream.send_eof()
                    await read_until_closed(stream)  # node 1 hangs up on us
                await b.wait_for(heartbeat(1, seq))
                await a.wait_for(heartbeat(2, seq))
            nursery.cancel_scope.cancel()
    assert a.transport.stats.peers[2].connects == 1
    assert b.transport.stats.peers[1].connects == 1
    assert all(m.src == 2 or m.src == 3 for m in a.inbox)  # type: ignore[attr-defined]


async def test_oversized_frame_closes_that_connection_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ports = dict(zip((1, 2, 3), free_ports(3), strict=True))
    a, b = Node(1, ports, max_frame_bytes=1024), Node(2, ports, max_frame_bytes=1024)
    caplog.set_level(logging.WARNING, logger="dengine_trio.transport")
    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            await a.start(nursery)
            await b.start(nursery)
            async with await trio.open_tcp_stream("127.0.0.1", ports[1]) as stream:
                assert (await raw_handshake(stream, Hello(CLUSTER, 3, 1, PROTOCOL_VERSION))).ok
                # Only the header: the node must not wait for (or buffer) the announced body.
                await stream.send_all((1025).to_bytes(4, "big"))
                assert await read_until_closed(stream) == b""
            b.transport.send(hb(2, 1, 1))
            await a.wait_for(lambda m: m == hb(2, 1, 1))
            nursery.cancel_scope.cancel()
    assert a.transport.stats.connections_closed_on_error == 1
    closing = [r for r in caplog.records if "closing connection from peer 3" in r.getMessage()]
    assert len(closing) == 1
    assert "exceeds 1024" in closing[0].getMessage()


async def test_message_not_from_the_handshaken_peer_closes_the_connection() -> None:
    ports = dict(zip((1, 2, 3), free_ports(3), strict=True))
    a = Node(1, ports)
    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            await a.start(nursery)
            async with await trio.open_tcp_stream("127.0.0.1", ports[1]) as stream:
                assert (await raw_handshake(stream, Hello(CLUSTER, 3, 1, PROTOCOL_VERSION))).ok
                await stream.send_all(
                    encode_frame(encode(hb(3, 1, 1)))
                    + encode_frame(encode(hb(2, 1, 2)))  # node 3 posing as node 2
                    + encode_frame(encode(hb(3, 1, 3)))
                )
                assert await read_until_closed(stream) == b""
            nursery.cancel_scope.cancel()
    assert a.inbox == [hb(3, 1, 1)]
    assert a.transport.stats.connections_closed_on_error == 1


async def test_delivered_follows_each_read_even_one_cut_short_by_a_bad_frame() -> None:
    """``delivered`` tells the receiver a batch is complete (the node steps its core then):
    it comes after every read's messages, also those before a frame that closed the link."""
    ports = dict(zip((1, 2), free_ports(2), strict=True))
    batches: list[list[object]] = []
    a = Node(1, ports, delivered=lambda: batches.append(list(a.inbox)))
    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            await a.start(nursery)
            async with await trio.open_tcp_stream("127.0.0.1", ports[1]) as stream:
                assert (await raw_handshake(stream, Hello(CLUSTER, 2, 1, PROTOCOL_VERSION))).ok
                await stream.send_all(encode_frame(encode(hb(2, 1, 1))))
                await a.wait_for(heartbeat(2, 1))
                await wait_until(lambda: bool(batches) and batches[-1] == [hb(2, 1, 1)])
                await stream.send_all(
                    encode_frame(encode(hb(2, 1, 2))) + encode_frame(b"\xc1 not msgpack")
                )
                assert await read_until_closed(stream) == b""
            await wait_until(lambda: batches[-1] == [hb(2, 1, 1), hb(2, 1, 2)])
            nursery.cancel_scope.cancel()
    assert a.transport.stats.connections_closed_on_error == 1


def _count_tasks() -> int:
    def count(task: trio.lowlevel.Task) -> int:
        return 1 + sum(count(t) for n in task.child_nurseries for t in n.child_tasks)

    root = trio.lowlevel.current_root_task()
    assert root is not None
    return count(root)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
async def test_cancelling_run_leaves_no_task_and_no_socket() -> None:
    ports = dict(zip((1, 2, 3), free_ports(3), strict=True))
    a = Node(1, ports)
    peer_links: list[trio.SocketStream] = []
    peer_linked = trio.Event()

    async def fake_peer_2(stream: trio.SocketStream) -> None:
        """Accepts node 1's outbound link like a real node 2 would."""
        reader = FrameReader()
        frames: list[bytes] = []
        while not frames:
            frames = reader.feed(await stream.receive_some())
        await stream.send_all(encode_frame(encode(HelloReply(True, ""))))
        peer_links.append(stream)
        peer_linked.set()
        await trio.sleep_forever()

    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as outer:
            listeners = await trio.open_tcp_listeners(ports[2], host="127.0.0.1")
            await outer.start(trio.serve_listeners, fake_peer_2, listeners)
            await trio.testing.wait_all_tasks_blocked()
            tasks_before, fds_before = _count_tasks(), _open_fds()

            await a.start(outer)
            inbound = await trio.open_tcp_stream("127.0.0.1", ports[1])
            assert (await raw_handshake(inbound, Hello(CLUSTER, 3, 1, PROTOCOL_VERSION))).ok
            await peer_linked.wait()
            assert _count_tasks() > tasks_before
            await a.stop()

            # Both directions were closed by node 1, not left half-open.
            assert await read_until_closed(inbound) == b""
            assert await read_until_closed(peer_links[0]) == b""
            with pytest.raises(OSError):
                await trio.open_tcp_stream("127.0.0.1", ports[1])
            await inbound.aclose()
            await peer_links[0].aclose()
            assert _open_fds() == fds_before
            assert _count_tasks() == tasks_before + 1  # the fake peer's handler, still asleep
            outer.cancel_scope.cancel()


def test_decode_errors_are_codec_errors() -> None:
    """What the transport relies on to keep a bad connection from escaping ``run``."""
    assert issubclass(FrameTooLarge, CodecError)


async def test_what_was_queued_for_a_peers_previous_process_is_discarded() -> None:
    """Frames queued while a peer was away were for the process that went away: a new
    process of the peer (another incarnation) must not read answers to requests it never
    made. A reconnect to the same process keeps them."""
    ports = dict(zip((1, 2), free_ports(2), strict=True))
    dropped: list[tuple[int, bytes]] = []
    a = Node(1, ports, dropped=lambda dst, frames: dropped.extend((dst, f) for f in frames))
    b = Node(2, ports)
    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            await a.start(nursery)
            await b.start(nursery)
            a.transport.send(hb(1, 2, 1))
            await b.wait_for(heartbeat(1, 1))

            # The same process comes back: what was queued meanwhile arrives.
            await b.stop()
            await wait_until(lambda: not a.transport.stats.peers[2].connected)
            a.transport.send(hb(1, 2, 2))
            await b.start(nursery)
            await b.wait_for(heartbeat(1, 2))

            # A new process of node 2: what was queued for the old one is dropped.
            await b.stop()
            await wait_until(lambda: not a.transport.stats.peers[2].connected)
            third = a.transport.send(hb(1, 2, 3))
            fourth = a.transport.send(hb(1, 2, 4))
            b2 = Node(2, ports)
            await b2.start(nursery)
            await wait_until(lambda: a.transport.stats.peers[2].connected)
            a.transport.send(hb(1, 2, 5))
            await b2.wait_for(heartbeat(1, 5))
            nursery.cancel_scope.cancel()
    assert [m.seq for m in b2.inbox] == [5]  # type: ignore[attr-defined]
    assert a.transport.stats.peers[2].discarded == 2
    # Reported to the sender, frame by frame (the forwarding protocol sends such writes again).
    assert dropped == [(2, third), (2, fourth)]


async def test_a_second_process_claiming_a_nodes_id_is_refused_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ports = dict(zip((1, 2), free_ports(2), strict=True))
    a, b = Node(1, ports), Node(2, ports)
    caplog.set_level(logging.INFO, logger="dengine_trio.transport")
    impostor = Hello(CLUSTER, 2, 1, PROTOCOL_VERSION, b.transport.incarnation + 1)
    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            await a.start(nursery)
            await b.start(nursery)
            await wait_until(lambda: a.transport.stats.peers[2].connected)
            peer = a.transport.stats.peers[2]
            for attempt in range(3):
                async with await trio.open_tcp_stream("127.0.0.1", ports[1]) as stream:
                    reply = await raw_handshake(stream, impostor)
                assert not reply.ok
                assert "is served by another process" in reply.reason
                # The first refusal re-checks node 1's own link to node 2: the real node 2
                # is still there.
                await wait_until(lambda: peer.connects == 2 and peer.connected)
                b.transport.send(hb(2, 1, attempt))
                await a.wait_for(heartbeat(2, attempt))
            nursery.cancel_scope.cancel()
    warnings = [
        r for r in caplog.records if r.levelno == logging.WARNING and "second process" in r.message
    ]
    assert len(warnings) == 1
    assert a.transport.stats.peers[2].connects == 2  # the link was re-checked once
    assert a.inbox == [hb(2, 1, 0), hb(2, 1, 1), hb(2, 1, 2)]


async def test_withdraw_takes_back_only_what_no_socket_has_seen() -> None:
    ports = dict(zip((1, 2), free_ports(2), strict=True))
    dropped: list[bytes] = []
    a = Node(1, ports, queue_limit=2, dropped=lambda dst, frames: dropped.extend(frames))
    b = Node(2, ports)
    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            await a.start(nursery)
            # Node 2 is not up: both wait in the queue; one is taken back.
            overflowed = a.transport.send(hb(1, 2, 0))
            kept = a.transport.send(hb(1, 2, 1))
            taken_back = a.transport.send(hb(1, 2, 2))  # the queue holds 2: the oldest goes
            assert dropped == [overflowed]
            assert not a.transport.withdraw(2, overflowed)
            assert a.transport.withdraw(2, taken_back)
            assert not a.transport.withdraw(2, taken_back)
            await b.start(nursery)
            await b.wait_for(heartbeat(1, 1))
            # Written to the socket: too late to take back.
            assert not a.transport.withdraw(2, kept)
            a.transport.send(hb(1, 2, 3))
            await b.wait_for(heartbeat(1, 3))
            nursery.cancel_scope.cancel()
    assert [m.seq for m in b.inbox] == [1, 3]  # type: ignore[attr-defined]
    assert a.transport.stats.peers[2].queued == 0


async def test_a_connection_from_another_process_of_a_peer_closes_once_the_peer_is_reached() -> (
    None
):
    """Accepted while node 2's address could not be checked (node 2 down), a connection
    claiming node 2 from another process is closed once node 1 reaches the real node 2."""
    ports = dict(zip((1, 2), free_ports(2), strict=True))
    a, b = Node(1, ports), Node(2, ports)
    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            await a.start(nursery)
            async with await trio.open_tcp_stream("127.0.0.1", ports[1]) as stream:
                other = Hello(CLUSTER, 2, 1, PROTOCOL_VERSION, b.transport.incarnation + 1)
                assert (await raw_handshake(stream, other)).ok
                await b.start(nursery)
                assert await read_until_closed(stream) == b""
            b.transport.send(hb(2, 1, 1))
            await a.wait_for(heartbeat(2, 1))
            nursery.cancel_scope.cancel()


async def test_a_link_backing_off_dials_at_once_when_the_peer_connects_to_us(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A restarted follower must not wait out the leader's reconnect backoff (up to
    BACKOFF_MAX_S) before it hears from the leader: its own connection to us proves it is up.
    The backoff is made longer than the test's bound, so only that wake-up can connect."""
    import dengine_trio.runtime.transport as transport_module

    monkeypatch.setattr(transport_module, "BACKOFF_MIN_S", 3 * WAIT_S)
    monkeypatch.setattr(transport_module, "BACKOFF_MAX_S", 3 * WAIT_S)
    ports = dict(zip((1, 2), free_ports(2), strict=True))
    a, b = Node(1, ports), Node(2, ports)
    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            await a.start(nursery)
            a.transport.send(hb(1, 2, 1))
            await wait_until(lambda: a.transport.stats.peers[2].connect_failures >= 1)
            await b.start(nursery)
            b.transport.send(hb(2, 1, 1))  # b connects to a: a's sleeping link wakes
            await a.wait_for(lambda m: m == hb(2, 1, 1))
            await b.wait_for(lambda m: m == hb(1, 2, 1))
            nursery.cancel_scope.cancel()
    assert a.transport.stats.peers[2].connects == 1


async def test_a_node_of_another_cluster_retrying_is_warned_about_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Nodes restored from different backups (or pointed at the wrong cluster) retry every
    second for as long as they run: the refusing side says so once per host and reason
    (REFUSAL_LOG_INTERVAL_S), not once per attempt, and still refuses every attempt."""
    ports = dict(zip((1, 2), free_ports(2), strict=True))
    a = Node(1, ports)
    caplog.set_level(logging.DEBUG, logger="dengine_trio.transport")
    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            await a.start(nursery)
            for _ in range(3):
                stream = await trio.open_tcp_stream("127.0.0.1", ports[1])
                async with stream:
                    hello = Hello("another-cluster", 2, 1, PROTOCOL_VERSION, 7)
                    await stream.send_all(encode_frame(encode(hello)))
                    reply = decode((await read_until_closed(stream))[4:])
                assert isinstance(reply, HelloReply) and not reply.ok
            nursery.cancel_scope.cancel()
    refusals = [r for r in caplog.records if "refused connection" in r.getMessage()]
    assert len(refusals) == 3
    assert [r.levelno for r in refusals] == [logging.WARNING, logging.DEBUG, logging.DEBUG]
    assert "another-cluster" in refusals[0].getMessage()
    assert a.transport.stats.connections_refused == 3
