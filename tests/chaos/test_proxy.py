"""The fault-injecting proxy does what the nemesis relies on, one direction of one link at a
time: pass, cut, black-hole and delay. Real TCP on 127.0.0.1; the backends stand in for nodes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial

import trio

from dengine_trio.wire import PROTOCOL_VERSION, Hello, encode, encode_frame
from tests.support.cluster import free_ports

from .proxy import LinkFault, LinkMode, ProxyNetwork

BOUND_S = 10.0
REPLY = b"hello-reply"


class Backend:
    """A stand-in node: records what arrives, answers the first bytes of each connection."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.connections = 0

    async def handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        replied = False
        try:
            async for data in stream:
                self.received += data
                if not replied:
                    await stream.send_all(REPLY)
                    replied = True
        except trio.BrokenResourceError:
            pass


async def until(check: Callable[[], bool]) -> None:
    with trio.fail_after(BOUND_S):
        while not check():
            await trio.sleep(0.01)


def hello(src: int, dst: int) -> bytes:
    return encode_frame(encode(Hello("test-cluster", src, dst, PROTOCOL_VERSION)))


@asynccontextmanager
async def network() -> AsyncIterator[tuple[ProxyNetwork, dict[int, Backend]]]:
    backends = {i: Backend() for i in (1, 2, 3)}
    async with trio.open_nursery() as nursery:
        addresses = {}
        for i, backend in backends.items():
            listeners = await nursery.start(
                partial(trio.serve_tcp, backend.handle, 0, host="127.0.0.1")
            )
            addresses[i] = ("127.0.0.1", listeners[0].socket.getsockname()[1])
        fronts = dict(zip((1, 2, 3), free_ports(3), strict=True))
        net = ProxyNetwork(addresses, fronts)
        await nursery.start(net.run)
        yield net, backends
        nursery.cancel_scope.cancel()


async def dial(net: ProxyNetwork, src: int, dst: int) -> trio.SocketStream:
    """Connect as node ``src`` to node ``dst`` through the proxy and say Hello."""
    stream = await trio.open_tcp_stream("127.0.0.1", net.fronts[dst])
    await stream.send_all(hello(src, dst))
    return stream


async def receive_reply(stream: trio.SocketStream) -> bytes:
    with trio.fail_after(BOUND_S):
        return await stream.receive_some(1024)


async def test_pass_forwards_both_ways_and_attributes_the_link() -> None:
    async with network() as (net, backends):
        stream = await dial(net, 1, 2)
        await stream.send_all(b"payload")
        assert await receive_reply(stream) == REPLY
        await until(lambda: bytes(backends[2].received) == hello(1, 2) + b"payload")
        assert net.open_connections(1, 2) == 1
        assert net.open_connections(2, 1) == 0
        assert backends[1].connections == backends[3].connections == 0


async def test_a_cut_closes_one_direction_only() -> None:
    async with network() as (net, backends):
        from_1 = await dial(net, 1, 2)
        from_3 = await dial(net, 3, 2)
        to_1 = await dial(net, 2, 1)
        for stream in (from_1, from_3, to_1):
            assert await receive_reply(stream) == REPLY
        net.set_link(1, 2, LinkFault(LinkMode.CUT))
        assert await receive_reply(from_1) == b""  # closed
        # A new connection on the cut link is closed after its Hello, never reaching node 2.
        connections = backends[2].connections
        again = await dial(net, 1, 2)
        assert await receive_reply(again) == b""
        assert backends[2].connections == connections
        assert net.stats["refused"] == 1
        # The other direction and the other sender are untouched.
        await from_3.send_all(b"from 3")
        await to_1.send_all(b"from 2")
        await until(lambda: bytes(backends[2].received).endswith(b"from 3"))
        await until(lambda: bytes(backends[1].received).endswith(b"from 2"))
        net.heal()
        healed = await dial(net, 1, 2)
        assert await receive_reply(healed) == REPLY


async def test_a_black_hole_swallows_and_its_connections_close_when_healed() -> None:
    async with network() as (net, backends):
        stream = await dial(net, 1, 2)
        assert await receive_reply(stream) == REPLY
        net.set_link(1, 2, LinkFault(LinkMode.BLACKHOLE))
        await stream.send_all(b"swallowed")
        await until(lambda: net.stats["bytes_swallowed"] >= len(b"swallowed"))
        # A connection made while the hole is open never reaches node 2 at all.
        connections = backends[2].connections
        silent = await dial(net, 1, 2)
        await until(lambda: net.stats["bytes_swallowed"] >= len(b"swallowed") + len(hello(1, 2)))
        assert backends[2].connections == connections
        assert b"swallowed" not in backends[2].received
        # Healing closes the connections that lost bytes (a frame may be cut in half).
        net.heal()
        assert await receive_reply(stream) == b""
        assert await receive_reply(silent) == b""
        fresh = await dial(net, 1, 2)
        assert await receive_reply(fresh) == REPLY
        assert b"swallowed" not in backends[2].received


async def test_a_delay_holds_bytes_back_for_at_least_the_delay() -> None:
    async with network() as (net, backends):
        net.set_link(1, 2, LinkFault(delay_s=0.3))
        sent_at = trio.current_time()
        stream = await dial(net, 1, 2)
        await stream.send_all(b"late")
        await until(lambda: bytes(backends[2].received).endswith(b"late"))
        assert trio.current_time() - sent_at >= 0.3
        # Order is kept while the delay shrinks: later bytes wait behind earlier ones.
        net.set_link(1, 2, LinkFault(delay_s=0.2))
        await stream.send_all(b"first")
        net.set_link(1, 2, LinkFault())
        await stream.send_all(b"second")
        await until(lambda: bytes(backends[2].received).endswith(b"second"))
        assert bytes(backends[2].received).endswith(b"latefirstsecond")
