"""The KV app's fast path (issue 18) answers exactly as Quart does.

Two Hypercorn servers in one process serve the same engine: one with the KV app's fast path,
one with it switched off (every request through Quart). Each raw request goes to both and the
bytes that come back must be equal but for the ``Date`` header; so must the HTTP request
counters. The fast path must also have answered the well-formed hot requests itself, or the
comparison would prove nothing.
"""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path
from typing import Any

import trio
from hypercorn.trio import serve

from dengine_trio.api import bind_listener, hypercorn_config
from dengine_trio.api.health import create_health_app
from dengine_trio.api.kv import create_kv_app
from dengine_trio.engine import EmbeddedEngine
from dengine_trio.metrics.http import instrument_app
from dengine_trio.metrics.prometheus import PrometheusSink
from tests.support.cluster import free_ports, node_config

BIG = "v" * 300


def post(body: bytes, path: bytes = b"/kv", method: bytes = b"POST") -> bytes:
    head = method + b" " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    return head + b"Content-Length: %d\r\n\r\n" % len(body) + body


REQUESTS: list[bytes] = [
    post(b'{"key":"a","value":"one"}'),
    post(b'{"key":"b/c","value":"two\\u00e9"}'),
    post(b"{nope"),
    post(b'{"value":"x"}'),
    post(b'{"key":"k","value":5}'),
    post(b'{"key":"","value":"x"}'),
    post(b'{"key":"\\ud800","value":"x"}'),
    post(b"[]"),
    post(b""),
    b"POST /kv HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b'19\r\n{"key":"a","value":"one"}\r\n0\r\n\r\n',
    b"POST /kv HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n",
    # The key limit is the engine's (TooLarge from the client): the fast path maps it.
    post(b'{"key":"' + BIG.encode() + b'","value":"x"}'),
    post(b"{}", path=b"/kv/a"),
    post(b"{}", method=b"PUT"),
    b"GET /kv/a HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /kv/b%2Fc HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /kv/b/c HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /kv/a?consistency=lease HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /kv/a?consistency=eventual HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /kv/a?consistency=linearizable HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /kv/a?consistency=strong HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /kv/a?x=1&consistency=lease HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /kv/missing HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /kv/%FF HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /kv/ HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /kv HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /kv/" + BIG.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /kv/a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
    b"HEAD /kv/a HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /kv/a HTTP/1.0\r\n\r\n",
    b"DELETE /kv/b%2Fc HTTP/1.1\r\nHost: x\r\n\r\n",
    b"DELETE /kv/never HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /kv/b%2Fc HTTP/1.1\r\nHost: x\r\n\r\n",
    # A body that stalls: 408 after the body timeout, the connection closed.
    b'POST /kv HTTP/1.1\r\nHost: x\r\nContent-Length: 30\r\n\r\n{"key"',
]
# Well-formed hot requests: the fast path must answer these itself.
FAST = {0, 1, 11, 14, 15, 16, 17, 18, 19, 22, 26, 29, 30, 31, 32, 33}

DATE = re.compile(rb"\r\ndate: [^\r]*", re.IGNORECASE)
# Each server applies its own copy of a write, so the two answers carry different log indexes
# (issue 17): compared as "N", and the content-length of such an answer as "L".
INDEX = re.compile(rb'(x-dengine-index: |"index":)\d+', re.IGNORECASE)
LENGTH = re.compile(rb"content-length: \d+(?=\r\n\r\n\{\"index\":)", re.IGNORECASE)


async def exchange(port: int, request: bytes) -> bytes:
    """One request on a fresh connection, then a half-close; everything until the close."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(request)
        received = b""
        with trio.fail_after(10):
            while chunk := await stream.receive_some(65536):
                received += chunk
                if _complete(received, request.startswith(b"HEAD ")):
                    break
    return LENGTH.sub(
        b"content-length: L", INDEX.sub(lambda m: m.group(1) + b"N", DATE.sub(b"", received))
    )


def _complete(data: bytes, head_only: bool) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    if head_only:
        return True
    match = re.search(rb"content-length: (\d+)", head, re.IGNORECASE)
    return match is not None and len(body) >= int(match.group(1))


def counters(sink: PrometheusSink) -> list[str]:
    exposition = sink.exposition()
    assert exposition is not None
    text = exposition[0].decode() if isinstance(exposition[0], bytes) else exposition[0]
    return sorted(
        line for line in text.splitlines() if line.startswith("dengine_http_requests_total")
    )


async def test_fast_path_answers_byte_for_byte_as_quart(tmp_path: Path) -> None:
    raft_port, fast_port, slow_port = free_ports(3)
    address = f"127.0.0.1:{raft_port}"
    settings: dict[str, Any] = {"limits.max_key_bytes": 256, "http.body_timeout_ms": 300}
    config = node_config(tmp_path / "n1.toml", 1, address, {1: address}, tmp_path, settings)
    answered: list[int] = []
    async with EmbeddedEngine.start(config) as engine:
        await engine.wait_ready(30)
        fast_app, slow_app = create_kv_app(engine), create_kv_app(engine)
        fast_sink, slow_sink = PrometheusSink(), PrometheusSink()
        instrument_app(fast_app, fast_sink)
        instrument_app(slow_app, slow_sink)
        slow_app.fast_path = None
        inner = fast_app.fast_path
        assert inner is not None
        current = [-1]

        async def spying(scope: Any, receive: Any, send: Any) -> list[Any] | None:
            async def recording_send(message: Any) -> None:
                if message["type"] == "http.response.start":
                    answered.append(current[0])
                await send(message)

            return await inner(scope, receive, recording_send)

        fast_app.fast_path = spying
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            for app, port in ((fast_app, fast_port), (slow_app, slow_port)):
                cfg = hypercorn_config(bind_listener("127.0.0.1", port))
                await nursery.start(partial(serve, app, cfg, shutdown_trigger=stop.wait))
            for i, request in enumerate(REQUESTS):
                current[0] = i
                fast = await exchange(fast_port, request)
                slow = await exchange(slow_port, request)
                assert fast == slow, (i, request[:80], fast, slow)
                assert fast.startswith(b"HTTP/1."), (i, fast)
            stop.set()
    assert set(answered) == FAST
    assert counters(fast_sink) == counters(slow_sink)


PROBES = [
    b"GET /primary HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /replica HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /primary?x=1 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"HEAD /primary HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /primary HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
    b"GET /primary/ HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /replica HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
]
FAST_PROBES = {0, 1, 2}


async def test_probe_fast_path_answers_byte_for_byte_as_quart(tmp_path: Path) -> None:
    raft_port, fast_port, slow_port = free_ports(3)
    address = f"127.0.0.1:{raft_port}"
    config = node_config(tmp_path / "n1.toml", 1, address, {1: address}, tmp_path)
    answered: list[int] = []
    async with EmbeddedEngine.start(config) as engine:
        await engine.wait_ready(30)
        fast_app, slow_app = create_health_app(engine), create_health_app(engine)
        fast_sink, slow_sink = PrometheusSink(), PrometheusSink()
        instrument_app(fast_app, fast_sink)
        instrument_app(slow_app, slow_sink)
        slow_app.fast_path = None
        inner = fast_app.fast_path
        assert inner is not None
        current = [-1]

        async def spying(scope: Any, receive: Any, send: Any) -> list[Any] | None:
            async def recording_send(message: Any) -> None:
                if message["type"] == "http.response.start":
                    answered.append(current[0])
                await send(message)

            return await inner(scope, receive, recording_send)

        fast_app.fast_path = spying
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            for app, port in ((fast_app, fast_port), (slow_app, slow_port)):
                cfg = hypercorn_config(bind_listener("127.0.0.1", port))
                await nursery.start(partial(serve, app, cfg, shutdown_trigger=stop.wait))
            for i, request in enumerate(PROBES):
                current[0] = i
                fast = await exchange(fast_port, request)
                slow = await exchange(slow_port, request)
                assert fast == slow, (i, request[:80], fast, slow)
                assert fast.startswith(b"HTTP/1."), (i, fast)
            stop.set()
    assert set(answered) == FAST_PROBES
    assert counters(fast_sink) == counters(slow_sink)
