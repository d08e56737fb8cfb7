"""``GET /snapshot`` bounds (``dengine_trio/api/snapshot.py``), on a real socket served by
Hypercorn in this process: at most MAX_CONCURRENT_DOWNLOADS downloads at once (503
``overloaded`` with Retry-After beyond), and a client that goes away gives its place and its
open file back. N's process-level test of the pinned files is
``tests/e2e/test_newcomer_snapshot_downloads.py``."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from dengine_trio.api import snapshot as route
from dengine_trio.api.health import create_health_app
from dengine_trio.engine import EmbeddedEngine
from tests.support.cluster import free_ports, node_config

VALUE_BYTES = 100_000
KEYS = 60
"""About 6 MB of state: more than loopback buffers hold for a client that reads nothing."""
WAIT_S = 15.0


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[EmbeddedEngine]:
    address = f"127.0.0.1:{free_ports(1)[0]}"
    config = node_config(tmp_path / "n1.toml", 1, address, {1: address}, tmp_path / "db")
    async with EmbeddedEngine.start(config) as running:
        await running.wait_ready(30)
        client = running.client()
        for i in range(KEYS):
            await client.put(f"k{i}".encode(), b"x" * VALUE_BYTES)
        yield running


async def request(port: int) -> trio.SocketStream:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(b"GET /snapshot HTTP/1.1\r\nHost: node\r\n\r\n")
    return stream


async def head_and_body(stream: trio.SocketStream) -> tuple[bytes, bytes]:
    """Everything until the server closes (bounded by WAIT_S), split at the head's end."""
    data = b""
    with trio.fail_after(WAIT_S):
        while piece := await stream.receive_some(1 << 16):
            data += piece
            if data.startswith(b"HTTP/1.1 503") and b"\r\n\r\n" in data:
                head, _, body = data.partition(b"\r\n\r\n")
                if len(body) >= int(head.lower().split(b"content-length: ")[1].split(b"\r")[0]):
                    break
    head, _, body = data.partition(b"\r\n\r\n")
    return head, body


async def test_downloads_beyond_the_bound_get_503_until_one_ends(engine: EmbeddedEngine) -> None:
    port = free_ports(1)[0]
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    async with trio.open_nursery() as nursery:
        await nursery.start(serve, create_health_app(engine), config)
        stalled = []
        for _ in range(route.MAX_CONCURRENT_DOWNLOADS):
            stream = await request(port)
            with trio.fail_after(WAIT_S):
                assert (await stream.receive_some(12)).startswith(b"HTTP/1.1 200")
            stalled.append(stream)  # and never read again
        refused = await request(port)
        head, body = await head_and_body(refused)
        assert head.startswith(b"HTTP/1.1 503"), head
        assert b"retry-after: " in head.lower()
        assert json.loads(body)["error"] == "overloaded"
        await refused.aclose()
        # A client that goes away gives its place (and its open file) back.
        for stream in stalled:
            await stream.aclose()

        async def fetched() -> tuple[bytes, bytes]:
            fresh = await request(port)
            try:
                return await head_and_body(fresh)
            finally:
                await fresh.aclose()

        with trio.fail_after(WAIT_S):
            head, body = await fetched()
            while head.startswith(b"HTTP/1.1 503"):  # the server has not seen the close yet
                await trio.sleep(0.1)
                head, body = await fetched()
        assert head.startswith(b"HTTP/1.1 200"), head
        assert len(body) == int(head.lower().split(b"content-length: ")[1].split(b"\r")[0])
        nursery.cancel_scope.cancel()
