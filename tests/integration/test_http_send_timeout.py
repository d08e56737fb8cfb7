"""A client that keeps its connection open but stops reading is cut off (the send timeout of
``dengine_trio/api/__init__.py``, ``[http] idle_timeout_ms``): on a real socket served by the
node's Hypercorn settings in this process, a large ``GET /kv`` value and ``GET /snapshot``
requested and never read end in a closed connection, the node keeps answering others, and the
snapshot download places are given back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import pytest
import trio
from hypercorn.trio import serve
from hypercorn.trio.tcp_server import TCPServer

from dengine_trio.api import _send_shape_known, bind_listener, hypercorn_config
from dengine_trio.api import snapshot as route
from dengine_trio.api.health import create_health_app
from dengine_trio.api.kv import create_kv_app
from dengine_trio.engine import EmbeddedEngine
from tests.support.cluster import free_ports, node_config

VALUE_BYTES = 100_000
KEYS = 60
"""About 6 MB of state: more than loopback buffers hold for a client that reads nothing."""
BIG_VALUE_BYTES = 1 << 20
"""The largest value a write may have (limits.max_value_bytes by default)."""
SEND_TIMEOUT_S = 0.5
WAIT_S = 20.0


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[EmbeddedEngine]:
    address = f"127.0.0.1:{free_ports(1)[0]}"
    config = node_config(tmp_path / "n1.toml", 1, address, {1: address}, tmp_path / "db")
    async with EmbeddedEngine.start(config) as running:
        await running.wait_ready(30)
        client = running.client()
        for i in range(KEYS):
            await client.put(f"k{i}".encode(), b"x" * VALUE_BYTES)
        await client.put(b"big", b"y" * BIG_VALUE_BYTES)
        yield running


async def send_request(port: int, target: str, small_buffer: bool = True) -> trio.SocketStream:
    sock = trio.socket.socket()
    if small_buffer:
        # A small receive buffer, so what the server cannot send stays with the server.
        sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, 4096)
    await sock.connect(("127.0.0.1", port))
    stream = trio.SocketStream(sock)
    await stream.send_all(f"GET {target} HTTP/1.1\r\nHost: node\r\n\r\n".encode())
    return stream


def content_length(head: bytes) -> int:
    return int(head.lower().split(b"content-length: ")[1].split(b"\r")[0])


async def read_all(stream: trio.SocketStream) -> tuple[bytes, bytes, bool]:
    """The head, the body read until the server closes or the body is complete (bounded by
    WAIT_S), and whether the server closed the connection first."""
    data = b""
    with trio.fail_after(WAIT_S):
        while True:
            try:
                piece = await stream.receive_some(1 << 16)
            except trio.BrokenResourceError:  # a reset
                piece = b""
            if not piece:
                head, _, body = data.partition(b"\r\n\r\n")
                return head, body, True
            data += piece
            head, sep, body = data.partition(b"\r\n\r\n")
            if sep and len(body) >= content_length(head):
                return head, body, False


async def stall(port: int, target: str) -> trio.SocketStream:
    """Request ``target``, read the status line, then read nothing more."""
    stream = await send_request(port, target)
    with trio.fail_after(WAIT_S):
        assert (await stream.receive_some(12)).startswith(b"HTTP/1.1 200")
    return stream


def test_hypercorn_send_is_the_shape_the_patch_replaces() -> None:
    # The patch refuses a protocol_send of another shape (then a stalled reader is never cut
    # off again): a Hypercorn upgrade that changes it fails here first.
    hypercorn_config(bind_listener("127.0.0.1", 0))  # installs the patches
    assert getattr(TCPServer.protocol_send, "_dengine_send_timeout", False)
    assert _send_shape_known(TCPServer.protocol_send._dengine_original)

    async def other(self: object, event: object) -> None:
        return None

    assert not _send_shape_known(other)


async def test_a_client_that_reads_nothing_of_a_large_value_is_cut_off(
    engine: EmbeddedEngine,
) -> None:
    port = free_ports(1)[0]
    config = hypercorn_config(bind_listener("127.0.0.1", port), idle_timeout_s=SEND_TIMEOUT_S)
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(serve, create_kv_app(engine), config))
        stalled = await stall(port, "/kv/big")
        try:
            # The node keeps answering others meanwhile.
            other = await send_request(port, "/kv/k1")
            head, body, _ = await read_all(other)
            assert head.startswith(b"HTTP/1.1 200"), head
            await other.aclose()
            await trio.sleep(SEND_TIMEOUT_S * 6)  # the stalled client still reads nothing
            head, body, closed = await read_all(stalled)
            assert closed, "the server kept the stalled connection"
            assert len(body) < BIG_VALUE_BYTES
        finally:
            await stalled.aclose()  # else a server without the timeout never stops
        nursery.cancel_scope.cancel()


async def test_stalled_snapshot_downloads_give_their_places_back(engine: EmbeddedEngine) -> None:
    port = free_ports(1)[0]
    config = hypercorn_config(bind_listener("127.0.0.1", port), idle_timeout_s=SEND_TIMEOUT_S)
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(serve, create_health_app(engine), config))
        stalled = [await stall(port, "/snapshot") for _ in range(route.MAX_CONCURRENT_DOWNLOADS)]
        try:
            # Every place is taken by a client that reads nothing and never closes; once their
            # writes time out, a download succeeds again.
            with trio.fail_after(WAIT_S):
                while True:
                    # A reading client with the kernel's own buffer: with 4 KiB, a pause of
                    # this process (the server's too) on a loaded machine left the server's
                    # write no room for the send timeout and cut this download as well.
                    fresh = await send_request(port, "/snapshot", small_buffer=False)
                    head, body, _ = await read_all(fresh)
                    await fresh.aclose()
                    if not head.startswith(b"HTTP/1.1 503"):
                        break
                    await trio.sleep(0.2)
            assert head.startswith(b"HTTP/1.1 200"), head
            assert len(body) == content_length(head)
            for stream in stalled:
                head, body, closed = await read_all(stream)
                assert closed and len(body) < content_length(head)
        finally:
            for stream in stalled:
                await stream.aclose()
        nursery.cancel_scope.cancel()
