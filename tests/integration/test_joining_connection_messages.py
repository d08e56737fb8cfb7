"""A connection admitted only because its caller says it is joining (``Hello.joining``: a
node that is no member asks to be added) may carry ``JoinRequest`` and nothing else until its
caller is a member (issue 14). Before, such a connection delivered every peer message type:
a stranger (any process that can reach the Raft port, no member at all) could send
AppendEntries of a far higher term and depose the leader, or vote and forward proposals, as
if it were a member."""

from __future__ import annotations

from pathlib import Path

import trio

from dengine_trio.raft.messages import AppendEntries, RequestVote, TimeoutNow
from dengine_trio.wire import (
    PROTOCOL_VERSION,
    Channel,
    FrameReader,
    Hello,
    JoinRequest,
    encode,
    encode_frame,
)
from tests.support.cluster import free_ports

from .cluster import EngineHandle, agreed_leader, wait_until, write_configs
from .test_membership_transport import admit_members
from .test_transport import Node
from .wire_helpers import raw_handshake, read_until_closed

STRANGER = 9


def joining_hello(dst: int, channel: Channel = Channel.MESSAGES) -> Hello:
    return Hello("", STRANGER, dst, PROTOCOL_VERSION, 77, channel, uuid="ab" * 16, joining=True)


async def test_a_joining_stranger_cannot_depose_the_leader(tmp_path: Path) -> None:
    configs = write_configs(tmp_path)
    nodes = {c.cluster.node_id: EngineHandle(c) for c in configs}
    async with trio.open_nursery() as nursery:
        with trio.fail_after(60):
            for node in nodes.values():
                await node.start(nursery)
            leader = await agreed_leader(nodes)
            engine = nodes[leader].engine
            # The bootstrap entry committed: the leader's membership is explicit, so only its
            # members, and callers that say they are joining, are admitted.
            await wait_until(lambda: bool(engine._runtime.cluster_id))
            term = int(engine.status()["term"])  # type: ignore[call-overload]
            port = nodes[leader].config.listen_host_port()[1]
            high = term + 100
            bad = [
                AppendEntries(high, STRANGER, leader, 0, 0, (), 0),
                RequestVote(high, STRANGER, leader, 10**9, high, explicit=True),
                TimeoutNow(high, STRANGER, leader),
            ]
            for message in bad:
                async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
                    assert (await raw_handshake(stream, joining_hello(leader))).ok
                    await stream.send_all(encode_frame(encode(message)))
                    with trio.move_on_after(2):  # closed at once once refused
                        await read_until_closed(stream)
            assert engine.status()["term"] == term
            assert engine.is_leader()
        nursery.cancel_scope.cancel()


async def test_a_joining_connection_delivers_join_requests_only() -> None:
    ports = dict(zip((1, 2), free_ports(2), strict=True))
    a = Node(1, ports, admit=admit_members({1, 2}))
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await a.start(nursery)
            port = a.transport.listen[1]
            join = JoinRequest(STRANGER, 1, STRANGER, "127.0.0.1:1", "ab" * 16, True)
            async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
                assert (await raw_handshake(stream, joining_hello(1), FrameReader())).ok
                await stream.send_all(encode_frame(encode(join)))
                await a.wait_for(lambda m: m == join)
                vote = RequestVote(5, STRANGER, 1, 10, 5)
                await stream.send_all(encode_frame(encode(vote)))
                with trio.move_on_after(5):  # a protocol violation: that connection goes
                    await read_until_closed(stream)
            assert a.inbox == [join]
            # A joiner sends no snapshots: the snapshot channel is refused to it outright.
            async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
                reply = await raw_handshake(stream, joining_hello(1, Channel.SNAPSHOT))
            assert not reply.ok
            nursery.cancel_scope.cancel()
