"""``GET /watch`` (api/watch.py) on a real node and a real Hypercorn, in one process.

What a stream carries (every kind of change, a transaction's changes sharing one id), resuming
with ``from_index`` and ``Last-Event-ID`` with no gap and no duplicate, 410 ``compacted``, the
4xx of bad input, 503 beyond ``max_watchers`` and the place freed when a client leaves, a slow
consumer's final ``slow_consumer`` event and disconnect, auth, and a stopping node's final
``stopped`` event. Clusters with leader changes, restarts and HTTP workers:
``tests/e2e/test_watch.py``.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import trio
from hypercorn.trio import serve

from dengine_trio.api import bind_listener, hypercorn_config
from dengine_trio.api.kv import create_kv_app
from dengine_trio.engine import EmbeddedEngine
from dengine_trio.kv_commands import Delete, Put, encode_expire, encode_kv_put, encode_txn
from tests.support.cluster import free_ports, node_config, wait_until_async

READ_TOKEN = "r" * 24
WRITE_TOKEN = "w" * 24


@asynccontextmanager
async def serving(tmp_path: Path, settings: dict[str, Any] | None = None) -> AsyncIterator[Any]:
    """A one-node cluster with its KV app on a free port: yields (engine, port)."""
    raft_port, port = free_ports(2)
    address = f"127.0.0.1:{raft_port}"
    config = node_config(tmp_path / "n1.toml", 1, address, {1: address}, tmp_path, settings or {})
    async with EmbeddedEngine.start(config) as engine:
        await engine.wait_ready(30)
        app = create_kv_app(engine)
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            cfg = hypercorn_config(bind_listener("127.0.0.1", port))
            await nursery.start(partial(serve, app, cfg, shutdown_trigger=stop.wait))
            try:
                yield engine, port
            finally:
                stop.set()
                nursery.cancel_scope.deadline = trio.current_time() + 5


class Stream:
    """A raw HTTP/1.0 GET (no chunked framing: the body is the bytes until the close)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""
        self.status = 0
        self.headers: dict[str, str] = {}
        self.closed = False

    @classmethod
    async def open(cls, port: int, target: str, headers: str = "") -> Stream:
        sock = await trio.open_tcp_stream("127.0.0.1", port)
        self = cls(sock)
        await sock.send_all(f"GET {target} HTTP/1.0\r\nHost: x\r\n{headers}\r\n".encode())
        with trio.fail_after(10):
            while b"\r\n\r\n" not in self.buffer:
                await self._more()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {
            name.lower(): value.strip()
            for name, _, value in (line.partition(":") for line in lines[1:])
        }
        return self

    async def _more(self) -> None:
        chunk = await self.stream.receive_some(65536)
        if not chunk:
            self.closed = True
            raise EOFError
        self.buffer += chunk

    async def body(self) -> bytes:
        with trio.fail_after(10):
            try:
                while True:
                    await self._more()
            except EOFError:
                return self.buffer

    async def events(self, count: int, timeout_s: float = 10) -> list[dict[str, Any]]:
        """The next ``count`` SSE events (comments skipped), or fewer if the stream ends."""
        found: list[dict[str, Any]] = []
        with trio.fail_after(timeout_s):
            while len(found) < count:
                block, sep, rest = self.buffer.partition(b"\n\n")
                if not sep:
                    try:
                        await self._more()
                    except EOFError:
                        return found
                    continue
                self.buffer = rest
                event = parse_event(block.decode())
                if event is not None:
                    found.append(event)
        return found

    async def aclose(self) -> None:
        await self.stream.aclose()


def parse_event(block: str) -> dict[str, Any] | None:
    """One SSE event block as {"event", "id" (absent if none), "data" (decoded JSON)}."""
    fields: dict[str, Any] = {}
    for line in block.split("\n"):
        if not line or line.startswith(":"):
            continue
        name, _, value = line.partition(": ")
        fields[name] = json.loads(value) if name == "data" else value
    return fields or None


def parse_events(text: str) -> list[dict[str, Any]]:
    return [e for e in (parse_event(b) for b in text.split("\n\n")) if e is not None]


def now_ms() -> int:
    return int(time.time() * 1000)


async def test_a_stream_carries_every_change_in_index_order(tmp_path: Path) -> None:
    async with serving(tmp_path) as (engine, port):
        client = engine.client()
        watch = await Stream.open(port, "/watch?prefix=u/")
        everything = await Stream.open(port, "/watch?prefix=&allow_all=true")
        one_key = await Stream.open(port, "/watch?key=u/1")
        assert watch.status == 200
        assert watch.headers["content-type"] == "text/event-stream"
        start = int(watch.headers["x-dengine-watch-from"])
        await client.put(b"u/1", b"one")
        await client.put(b"other", b"x")
        # A transaction: three changes at one index; only the last carries the id.
        await engine.propose(
            encode_txn(
                [],
                [Put(b"u/2", b"two"), Put(b"u/3", b"three"), Delete(b"u/1")],
                now_ms=now_ms(),
            )
        )
        # An expiry: a key with a deadline in the past, removed by the leader's command.
        await engine.propose(encode_kv_put(b"u/4", b"ttl", now_ms=now_ms(), expires_at_ms=1))
        item = engine.state_machine.get_item(b"u/4", 0)  # type: ignore[attr-defined]
        await engine.propose(encode_expire(b"u/4", item.mod_index, now_ms=now_ms()))
        events = await watch.events(6)
        kinds = [(e["event"], e["data"]["key"], e["data"]["value"]) for e in events]
        assert kinds == [
            ("put", "u/1", "one"),
            ("put", "u/2", "two"),
            ("put", "u/3", "three"),
            ("delete", "u/1", None),
            ("put", "u/4", "ttl"),
            ("expire", "u/4", None),
        ]
        indexes = [e["data"]["index"] for e in events]
        assert indexes[0] >= start
        assert indexes[1] == indexes[2] == indexes[3] > indexes[0]
        assert indexes[3] < indexes[4] < indexes[5]
        assert ["id" in e for e in events] == [True, False, False, True, True, True]
        assert all(e["id"] == str(e["data"]["index"]) for e in events if "id" in e)
        assert [e["data"]["key"] for e in await everything.events(7)] == [
            "u/1",
            "other",
            "u/2",
            "u/3",
            "u/1",
            "u/4",
            "u/4",
        ]
        assert [(e["event"], "id" in e) for e in await one_key.events(2)] == [
            ("put", True),
            ("delete", True),  # the last change of u/1 at the txn's index: its id
        ]
        for stream in (watch, everything, one_key):
            await stream.aclose()


async def test_from_index_and_last_event_id_resume_with_no_gap_and_no_duplicate(
    tmp_path: Path,
) -> None:
    async with serving(tmp_path) as (engine, port):
        client = engine.client()
        for i in range(10):
            await client.put(b"k", b"%d" % i)
        first = await Stream.open(port, "/watch?key=k&from_index=1")
        seen = await first.events(4)
        await first.aclose()
        assert [e["data"]["value"] for e in seen] == ["0", "1", "2", "3"]
        last_id = seen[-1]["id"]
        # A browser reconnects with the original URL and Last-Event-ID: the header wins.
        again = await Stream.open(
            port, "/watch?key=k&from_index=1", f"Last-Event-ID: {last_id}\r\n"
        )
        assert again.headers["x-dengine-watch-from"] == str(int(last_id) + 1)
        await client.put(b"k", b"10")
        rest = await again.events(7)
        await again.aclose()
        assert [e["data"]["value"] for e in seen + rest] == [str(i) for i in range(11)]
        indexes = [e["data"]["index"] for e in seen + rest]
        assert indexes == sorted(set(indexes))


async def test_history_older_than_retained_is_410_compacted_with_the_oldest_index(
    tmp_path: Path,
) -> None:
    async with serving(tmp_path, {"watch.history_events": 5}) as (engine, port):
        client = engine.client()
        for i in range(10):
            await client.put(b"k%d" % i, b"v")
        refused = await Stream.open(port, "/watch?prefix=k&from_index=1")
        assert refused.status == 410
        doc = json.loads(await refused.body())
        assert doc["error"] == "compacted"
        oldest = doc["oldest_index"]
        assert oldest > 1
        served = await Stream.open(port, f"/watch?prefix=k&from_index={oldest}")
        assert served.status == 200
        events = await served.events(5)
        assert [e["data"]["key"] for e in events] == [f"k{i}" for i in range(5, 10)]
        assert events[0]["data"]["index"] == oldest
        await served.aclose()
        refused_by_header = await Stream.open(port, "/watch?prefix=k", "Last-Event-ID: 1\r\n")
        assert refused_by_header.status == 410


BAD = [
    ("/watch", "", 400, "invalid_watch"),
    ("/watch?key=a&prefix=b", "", 400, "invalid_watch"),
    ("/watch?key=", "", 400, "empty_key"),
    ("/watch?prefix=", "", 400, "empty_prefix"),
    ("/watch?prefix=&allow_all=yes", "", 400, "invalid_allow_all"),
    ("/watch?key=a&from_index=0", "", 400, "invalid_from_index"),
    ("/watch?key=a&from_index=-1", "", 400, "invalid_from_index"),
    ("/watch?key=a&from_index=abc", "", 400, "invalid_from_index"),
    ("/watch?key=a&from_index=99999999999999999999", "", 400, "invalid_from_index"),
    ("/watch?key=a", "Last-Event-ID: x\r\n", 400, "invalid_last_event_id"),
    ("/watch?key=a&key=b", "", 400, "invalid_request"),
    ("/watch?key=a&consistency=lease", "", 400, "unknown_parameter"),
    ("/watch?key=%FF", "", 400, "invalid_key"),
    ("/watch?key=" + "x" * 300, "", 413, "key_too_large"),
    ("/watch?prefix=" + "x" * 300, "", 413, "key_too_large"),
]


async def test_bad_watch_requests_are_4xx_json(tmp_path: Path) -> None:
    async with serving(tmp_path, {"limits.max_key_bytes": 256}) as (engine, port):
        for target, headers, status, code in BAD:
            answer = await Stream.open(port, target, headers)
            body = await answer.body()
            assert (target, answer.status) == (target, status), body
            assert answer.headers["content-type"] == "application/json"
            assert json.loads(body)["error"] == code, (target, body)
        # Other methods and a body go to Quart: 405 with Allow, 400.
        post = await trio.open_tcp_stream("127.0.0.1", port)
        await post.send_all(b"POST /watch?key=a HTTP/1.0\r\nContent-Length: 0\r\n\r\n")
        answer = Stream(post)
        answer.buffer = b""
        raw = await answer.body()
        assert raw.startswith(b"HTTP/1.1 405"), raw
        assert b"allow: " in raw.lower()
        with_body = await trio.open_tcp_stream("127.0.0.1", port)
        await with_body.send_all(b"GET /watch?key=a HTTP/1.0\r\nContent-Length: 2\r\n\r\n{}")
        raw = await Stream(with_body).body()
        assert raw.startswith(b"HTTP/1.1 400"), raw
        assert engine.watch_hub is not None and engine.watch_hub.watchers == 0


async def test_watchers_are_bounded_and_a_client_that_leaves_frees_its_place(
    tmp_path: Path,
) -> None:
    async with serving(tmp_path, {"watch.max_watchers": 2}) as (engine, port):
        hub = engine.watch_hub
        assert hub is not None
        first = await Stream.open(port, "/watch?key=a")
        second = await Stream.open(port, "/watch?prefix=b")
        refused = await Stream.open(port, "/watch?key=c")
        assert refused.status == 503
        assert refused.headers["retry-after"] == "1"
        assert json.loads(await refused.body())["error"] == "too_many_watchers"
        await first.aclose()
        # The node notices the disconnect (the stream does not wait for its next write).
        await wait_until_async(lambda: hub.watchers == 1, 10, "the watcher to be released")
        third = await Stream.open(port, "/watch?key=c")
        assert third.status == 200
        await second.aclose()
        await third.aclose()
        await wait_until_async(lambda: hub.watchers == 0, 10, "every watcher released")


async def test_a_slow_consumer_gets_a_final_error_event_and_is_disconnected(
    tmp_path: Path,
) -> None:
    settings = {"watch.queue_events": 8, "limits.max_value_bytes": 1 << 16}
    async with serving(tmp_path, settings) as (engine, port):
        client = engine.client()
        sock = socket.socket()
        # A small window: the node's writes block after a few events, so its queue fills.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await trio.to_thread.run_sync(sock.connect, ("127.0.0.1", port))
        stream = Stream(trio.SocketStream(trio.socket.from_stdlib_socket(sock)))
        await stream.stream.send_all(b"GET /watch?prefix=s/ HTTP/1.0\r\n\r\n")
        # Watching from now: the writes start once the stream is open.
        with trio.fail_after(10):
            while b"\r\n\r\n" not in stream.buffer:
                await stream._more()
        value = b"x" * 32768
        writes = 300  # ~10 MiB: more than every buffer between the node and this socket
        for i in range(writes):
            await client.put(b"s/%03d" % i, value)
        body = await stream.body()
        head, _, events_text = body.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        events = parse_events(events_text.decode())
        end = events[-1]
        assert end["event"] == "error"
        assert end["data"]["error"] == "slow_consumer"
        delivered = events[:-1]
        assert 0 < len(delivered) < writes
        keys = [e["data"]["key"] for e in delivered]
        assert keys == [f"s/{i:03d}" for i in range(len(delivered))]  # no gap, in order
        assert end["data"]["from_index"] == delivered[-1]["data"]["index"] + 1
        assert stream.closed
        hub = engine.watch_hub
        assert hub is not None and hub.watchers == 0


async def test_watch_needs_a_read_token_under_auth(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{READ_TOKEN} read\n{WRITE_TOKEN} write\n")
    settings = {"auth.enable": True, "auth.tokens_path": str(tokens)}
    async with serving(tmp_path, settings) as (engine, port):
        refused = await Stream.open(port, "/watch?key=a")
        assert refused.status == 401
        assert json.loads(await refused.body())["error"] == "unauthorized"
        wrong = await Stream.open(port, "/watch?key=a", "Authorization: Bearer nope\r\n")
        assert wrong.status == 401
        ok = await Stream.open(port, "/watch?key=a", f"Authorization: Bearer {READ_TOKEN}\r\n")
        assert ok.status == 200
        await engine.client().put(b"a", b"1")
        assert [e["data"]["value"] for e in await ok.events(1)] == ["1"]
        await ok.aclose()


async def test_a_stopping_node_ends_its_streams_with_a_stopped_event(tmp_path: Path) -> None:
    async with serving(tmp_path) as (engine, port):
        stream = await Stream.open(port, "/watch?key=a")
        await engine.client().put(b"a", b"1")
        engine.refuse_requests()
        events = await stream.events(3)
        assert [e["event"] for e in events] == ["put", "error"]
        assert events[1]["data"]["error"] == "stopped"
        assert events[1]["data"]["from_index"] == events[0]["data"]["index"] + 1
        assert stream.closed or await stream.body() == b""
