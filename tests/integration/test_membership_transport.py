"""The transport's side of membership changes (issue 14), on real TCP between transports:
peers added and removed while running, callers admitted by membership, the caller's data
directory reported before its messages, and cluster ids (``runtime.inbound.same_cluster``)."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from dengine_trio.runtime.inbound import same_cluster
from dengine_trio.wire import PROTOCOL_VERSION, Hello

from .cluster import free_ports, wait_until
from .test_transport import Node, hb, heartbeat
from .wire_helpers import raw_handshake

WAIT_S = 10


def admit_members(members: set[int]) -> Any:
    """An ``admit`` hook: members, or callers that say they are joining."""

    def admit(hello: Hello) -> str:
        if hello.src in members or hello.joining:
            return ""
        return f"node {hello.src} is not a member of cluster test-cluster (removed?)"

    return admit


async def test_a_peer_added_while_running_is_dialed_and_a_removed_one_is_cut_off() -> None:
    ports = dict(zip((1, 2, 3), free_ports(3), strict=True))
    members = {1, 2}
    only_two = {i: p for i, p in ports.items() if i != 3}
    a = Node(1, only_two, admit=admit_members(members))
    b = Node(2, only_two, admit=admit_members(members))
    c = Node(3, ports, admit=admit_members(members | {3}))
    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            for node in (a, b, c):
                await node.start(nursery)
            # Node 3 is nobody's member yet: refused, whatever it sends.
            c.transport.send(hb(3, 1, 1))
            await wait_until(lambda: c.transport.stats.peers[1].refusals >= 1, WAIT_S)
            assert a.inbox == []
            # Added: 1 dials it, and admits it.
            members.add(3)
            a.transport.set_peers({2: ("127.0.0.1", ports[2]), 3: ("127.0.0.1", ports[3])})
            a.transport.send(hb(1, 3, 2))
            await c.wait_for(heartbeat(1, 2))
            c.transport.send(hb(3, 1, 3))
            await a.wait_for(heartbeat(3, 3))
            # Removed: its link, queue and connections go; sending to it is refused.
            members.discard(3)
            a.transport.set_peers({2: ("127.0.0.1", ports[2])})
            await wait_until(lambda: a.transport.stats.inbound_open == 1, WAIT_S)
            with pytest.raises(ValueError):
                a.transport.send(hb(1, 3, 4))
            assert 3 not in a.transport.stats.peers
            c.transport.send(hb(3, 1, 5))
            await trio.sleep(0.3)
            assert not [m for m in a.inbox if heartbeat(3, 5)(m)]
            # The others are untouched.
            a.transport.send(hb(1, 2, 6))
            await b.wait_for(heartbeat(1, 6))
            nursery.cancel_scope.cancel()


async def test_a_joining_stranger_is_admitted_and_its_directory_reported_first() -> None:
    ports = dict(zip((1, 2), free_ports(2), strict=True))
    identified: list[tuple[int, str]] = []
    a = Node(
        1, ports, admit=admit_members({1, 2}), identified=lambda p, u: identified.append((p, u))
    )
    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            await a.start(nursery)
            port = a.transport.listen[1]
            stranger = Hello("test-cluster", 9, 1, PROTOCOL_VERSION, 5, uuid="ab" * 16)
            async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
                reply = await raw_handshake(stream, stranger)
            assert not reply.ok and "node 9 is not a member" in reply.reason
            joining = Hello("", 9, 1, PROTOCOL_VERSION, 6, uuid="cd" * 16, joining=True)
            async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
                reply = await raw_handshake(stream, joining)
                assert reply.ok
                await wait_until(lambda: identified == [(9, "cd" * 16)], WAIT_S)
            member = Hello("test-cluster", 2, 1, PROTOCOL_VERSION, 7, uuid="ef" * 16)
            async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
                assert (await raw_handshake(stream, member)).ok
                await wait_until(lambda: identified[-1] == (2, "ef" * 16), WAIT_S)
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("theirs", "ours", "same"),
    [
        ("dengine-abc-123", "dengine-abc-123", True),
        ("", "dengine-abc-123", True),  # knows no id yet (a joining node)
        ("dengine-abc", "dengine-abc-123", True),  # its configuration's id: a wiped member
        ("dengine-abc-123", "dengine-abc", True),  # we know only our configuration's
        ("dengine-abc", "dengine-abd", False),  # another configuration
        ("dengine-abc-123", "dengine-abc-456", False),  # bootstrapped apart
        ("dengine-ab", "dengine-abc-123", False),  # a prefix, not a derived id
    ],
)
def test_same_cluster(theirs: str, ours: str, same: bool) -> None:
    assert same_cluster(theirs, ours) is same
