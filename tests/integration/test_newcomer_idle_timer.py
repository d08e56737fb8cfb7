"""A newcomer's attempts to break :mod:`dengine_trio.api.idle_timer` (the keep-alive timer as
one task per connection whose deadline moves, with the answer-at-stop rule) and the send path
of ``_install_send_timeout`` (the lock taken with ``acquire_nowait``, one shielded scope per
64 KiB piece, no empty write), on real sockets served by the node's Hypercorn settings in this
process: slowloris heads, pipelined requests, half-closes, ``Connection: close`` and HTTP/1.0,
a server stop with connections in every state, a churn of short connections (no task or file
descriptor left behind), a client that stops reading, concurrent writers on one connection
(three ASGI writers on one HTTP/1.1 answer; HTTP/2 streams at once), and the same over TLS
(an ``SSLStream``, not a ``SocketStream``).

Two faults it found were strict xfails until fixed: a stop no longer ended a streamed answer
at the graceful timeout (a894d59's ``acquire_nowait`` had dropped the write's cancellation
point), and a connection reset while its request ran was held a keep-alive after the answer
(a restart after ``IdleTimer.finish`` spawned a new timer; older than the timer).
"""

from __future__ import annotations

import gc
import os
import socket
import ssl
import struct
from dataclasses import dataclass
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
import trio
import trustme
from hypercorn.trio import serve

from dengine_trio.api import ConnectionCount, bind_listener, hypercorn_config
from tests.support.asgi import answer_lifespan
from tests.support.cluster import free_ports

WAIT_S = 10.0
SLOW_S = 0.6
STREAM_S = 4.0
"""How long ``/forever`` streams at most."""
BIG_BYTES = 4 << 20
"""A single-write body far larger than loopback socket buffers hold."""
REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
SLOW_REQUEST = b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"


# --- the app -------------------------------------------------------------------------------


async def app(scope: Any, receive: Any, send: Any) -> None:
    """Raw ASGI: ``/`` answers ``ok``; ``/slow`` after SLOW_S; ``/big`` BIG_BYTES in one
    write; ``/stream?n`` n numbered chunked pieces written with nothing but ``send``;
    ``/forever`` chunked pieces with nothing but ``send`` for up to STREAM_S; ``/pair`` two
    tasks writing chunked pieces at once."""
    if scope["type"] == "lifespan":
        await answer_lifespan(receive, send)
        return
    path = scope["path"]
    if path == "/slow":
        await trio.sleep(SLOW_S)
    if path == "/big":
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", str(BIG_BYTES).encode())],
            }
        )
        await send({"type": "http.response.body", "body": b"b" * BIG_BYTES})
        return
    if path in ("/stream", "/forever", "/pair"):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        if path == "/stream":
            for i in range(int(scope["query_string"] or b"100")):
                # Sizes that cross the 64 KiB piece boundary now and then.
                piece = f"<{i:06d}>".encode() * (1 + (i * 7919) % 9000)
                await send({"type": "http.response.body", "body": piece, "more_body": True})
        elif path == "/forever":
            ends = trio.current_time() + STREAM_S
            while trio.current_time() < ends:
                await send({"type": "http.response.body", "body": b"f" * 16384, "more_body": True})
        else:

            async def writer(mark: bytes, size: int, count: int) -> None:
                for i in range(count):
                    body = mark + f"{i:04d}".encode() + mark * size
                    await send({"type": "http.response.body", "body": body, "more_body": True})

            async with trio.open_nursery() as nursery:
                nursery.start_soon(writer, b"A", 200_000, 8)
                nursery.start_soon(writer, b"B", 10, 40)
                nursery.start_soon(writer, b"C", 70_000, 8)
        await send({"type": "http.response.body", "body": b""})
        return
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"ok"})


# --- the server ----------------------------------------------------------------------------


@dataclass
class Server:
    port: int
    stop: trio.Event
    done: trio.Event
    connections: ConnectionCount
    stopped_at: float = 0.0
    done_at: float = 0.0

    def begin_stop(self) -> None:
        self.stopped_at = trio.current_time()
        self.stop.set()

    async def wait_done(self, seconds: float) -> float:
        """Seconds from the stop until ``serve`` returned (fails after ``seconds``)."""
        with trio.fail_after(seconds):
            await self.done.wait()
        return self.done_at - self.stopped_at

    async def wait_open(self, count: int, seconds: float) -> float:
        """Seconds until the server counts ``count`` connections open (fails after)."""
        started = trio.current_time()
        with trio.fail_after(seconds):
            while self.connections.open != count:
                await trio.sleep(0.01)
        return trio.current_time() - started


async def start_server(
    nursery: trio.Nursery,
    *,
    keep_alive_s: float,
    graceful_s: float = 1.0,
    ssl_context: ssl.SSLContext | None = None,
) -> Server:
    port = free_ports(1)[0]
    config = hypercorn_config(
        bind_listener("127.0.0.1", port),
        idle_timeout_s=keep_alive_s,
        graceful_timeout_s=graceful_s,
        ssl_context=ssl_context,
    )
    assert config.dengine_connections is not None  # type: ignore[attr-defined]
    server = Server(port, trio.Event(), trio.Event(), config.dengine_connections)  # type: ignore[attr-defined]

    async def run(task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
        await serve(app, config, shutdown_trigger=server.stop.wait, task_status=task_status)
        server.done_at = trio.current_time()
        server.done.set()

    await nursery.start(run)
    return server


# --- the clients ---------------------------------------------------------------------------

Stream = trio.SocketStream | trio.SSLStream[trio.SocketStream]


async def connect(port: int, *, rcvbuf: int | None = None) -> trio.SocketStream:
    sock = trio.socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    await sock.connect(("127.0.0.1", port))
    return trio.SocketStream(sock)


class Ended(Exception):
    """The server closed (or reset) the connection."""


class Reader:
    """HTTP/1.1 responses off one stream (Content-Length or chunked bodies)."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.buf = b""

    async def fill(self) -> None:
        try:
            chunk = await self.stream.receive_some(65536)
        except trio.BrokenResourceError as exc:
            raise Ended(f"reset after {self.buf[:200]!r}") from exc
        if not chunk:
            raise Ended(f"closed after {self.buf[:200]!r}")
        self.buf += chunk

    async def until(self, marker: bytes) -> bytes:
        while marker not in self.buf:
            await self.fill()
        taken, _, self.buf = self.buf.partition(marker)
        return taken

    async def exactly(self, size: int) -> bytes:
        while len(self.buf) < size:
            await self.fill()
        taken, self.buf = self.buf[:size], self.buf[size:]
        return taken

    async def response(self) -> tuple[bytes, list[bytes]]:
        """(head, body pieces): one piece for Content-Length, the chunks for chunked."""
        with trio.fail_after(WAIT_S):
            head = await self.until(b"\r\n\r\n")
            lower = head.lower()
            if b"content-length: " in lower:
                size = int(lower.split(b"content-length: ")[1].split(b"\r")[0])
                return head, [await self.exactly(size)]
            assert b"transfer-encoding: chunked" in lower, head
            chunks: list[bytes] = []
            while True:
                size = int(await self.until(b"\r\n"), 16)
                chunk = await self.exactly(size)
                assert await self.exactly(2) == b"\r\n"
                if size == 0:
                    return head, chunks
                chunks.append(chunk)

    async def closed_within(self, seconds: float) -> float | None:
        """Seconds until the server ended the connection, no byte more arriving (None: still
        open after ``seconds``)."""
        started = trio.current_time()
        with trio.move_on_after(seconds):
            try:
                while True:
                    await self.fill()
                    raise AssertionError(f"unexpected bytes {self.buf[:200]!r}")
            except Ended:
                return trio.current_time() - started
        return None


async def ask(stream: Stream, request: bytes = REQUEST) -> bytes:
    await stream.send_all(request)
    head, body = await Reader(stream).response()
    return head + b"\r\n\r\n" + b"".join(body)


def reset(stream: trio.SocketStream) -> None:
    """Close with a reset (SO_LINGER 0), as a client that gives up does."""
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    stream.socket.close()


def count_tasks() -> int:
    tasks = 0
    root = trio.lowlevel.current_root_task()
    assert root is not None
    stack = [root]
    while stack:
        task = stack.pop()
        tasks += 1
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return tasks


def count_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# --- slowloris heads -----------------------------------------------------------------------


async def trickle(stream: trio.SocketStream, every_s: float) -> None:
    """A head that never completes: a byte of a header every ``every_s``."""
    await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    try:
        while True:
            await trio.sleep(every_s)
            await stream.send_all(b"a")
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return


async def test_a_first_head_trickling_in_is_cut_at_the_keep_alive() -> None:
    keep_alive = 0.5
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, keep_alive_s=keep_alive)
        stream = await connect(server.port)
        nursery.start_soon(trickle, stream, keep_alive / 10)
        waited = await Reader(stream).closed_within(WAIT_S)
        assert waited is not None and keep_alive * 0.8 <= waited < keep_alive * 2, waited
        await stream.aclose()
        server.begin_stop()


async def test_a_second_head_trickling_in_is_cut_a_keep_alive_after_the_answer() -> None:
    keep_alive = 0.5
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, keep_alive_s=keep_alive)
        stream = await connect(server.port)
        await trio.sleep(keep_alive * 0.7)  # the connect's period mostly used up
        assert (await ask(stream)).startswith(b"HTTP/1.1 200 ")
        nursery.start_soon(trickle, stream, keep_alive / 10)
        waited = await Reader(stream).closed_within(WAIT_S)
        assert waited is not None and keep_alive * 0.8 <= waited < keep_alive * 2, waited
        await stream.aclose()
        server.begin_stop()


# --- pipelining ----------------------------------------------------------------------------


async def test_pipelined_requests_in_one_write_are_all_answered_in_order() -> None:
    keep_alive = 0.4  # SLOW_S is 1.5 of it: the slow one must not be cut while the rest wait
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, keep_alive_s=keep_alive)
        stream = await connect(server.port)
        batch = SLOW_REQUEST + REQUEST * 5 + b"GET /stream?3 HTTP/1.1\r\nHost: x\r\n\r\n" + REQUEST
        await stream.send_all(batch)
        reader = Reader(stream)
        bodies = [b"".join((await reader.response())[1]) for _ in range(8)]
        assert bodies[:6] == [b"ok"] * 6
        assert bodies[6] == b"".join(
            f"<{i:06d}>".encode() * (1 + i * 7919 % 9000) for i in range(3)
        )
        assert bodies[7] == b"ok"
        # The timer runs again from the last answer: open for a while, then closed.
        assert await reader.closed_within(keep_alive * 0.5) is None
        waited = await reader.closed_within(WAIT_S)
        assert waited is not None and waited < keep_alive * 1.5, waited
        await stream.aclose()
        server.begin_stop()


async def test_a_pipelined_request_cut_short_is_closed_a_keep_alive_after_the_answer() -> None:
    keep_alive = 0.4
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, keep_alive_s=keep_alive)
        stream = await connect(server.port)
        await stream.send_all(SLOW_REQUEST + b"GET / HTTP/1.1\r\nHo")
        reader = Reader(stream)
        head, body = await reader.response()
        assert head.startswith(b"HTTP/1.1 200 ") and body == [b"ok"]
        waited = await reader.closed_within(WAIT_S)
        assert waited is not None and keep_alive * 0.8 <= waited < keep_alive * 1.5, waited
        await stream.aclose()
        server.begin_stop()


# --- half-close, Connection: close, HTTP/1.0 -----------------------------------------------


async def test_a_client_that_half_closes_gets_its_answers_then_the_connection_ends() -> None:
    keep_alive = 5.0  # far beyond the test: every close below is the server's own
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, keep_alive_s=keep_alive)
        # Nothing sent: released at the EOF, not a keep-alive later.
        idle = await connect(server.port)
        await server.wait_open(1, WAIT_S)
        await idle.send_eof()
        waited = await Reader(idle).closed_within(WAIT_S)
        assert waited is not None and waited < 1.0, waited
        await idle.aclose()
        # A slow request, then a fast one pipelined, then the EOF: both answered, then closed.
        stream = await connect(server.port)
        await stream.send_all(SLOW_REQUEST + REQUEST)
        await stream.send_eof()
        reader = Reader(stream)
        for _ in range(2):
            head, body = await reader.response()
            assert head.startswith(b"HTTP/1.1 200 ") and body == [b"ok"], (head, body)
        waited = await reader.closed_within(WAIT_S)
        assert waited is not None and waited < 1.0, waited
        await stream.aclose()
        assert await server.wait_open(0, 1.0) < 1.0
        server.begin_stop()
        assert await server.wait_done(WAIT_S) < 0.5


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET / HTTP/1.0\r\n\r\n",
        b"GET /slow HTTP/1.0\r\n\r\n",
    ],
    ids=["connection-close", "http-1.0", "http-1.0-slow"],
)
async def test_a_connection_the_answer_closes_is_released_at_once(request_bytes: bytes) -> None:
    keep_alive = 5.0
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, keep_alive_s=keep_alive)
        await trio.sleep(0.05)
        tasks = count_tasks()
        for _ in range(3):
            stream = await connect(server.port)
            await stream.send_all(request_bytes)
            reader = Reader(stream)
            head, body = await reader.response()
            assert body == [b"ok"], (head, body)
            waited = await reader.closed_within(WAIT_S)
            assert waited is not None and waited < 0.5, waited
            await stream.aclose()
        await server.wait_open(0, 1.0)
        await trio.sleep(0.05)
        assert count_tasks() == tasks
        server.begin_stop()
        assert await server.wait_done(WAIT_S) < 0.5


# --- a server stop with connections in every state -----------------------------------------


async def read_to_close(stream: Stream) -> tuple[bytes, float]:
    """Everything until the server ends the connection, and when (trio clock)."""
    data = b""
    with trio.fail_after(WAIT_S):
        try:
            while chunk := await stream.receive_some(65536):
                data += chunk
        except trio.BrokenResourceError:
            data += b"<reset>"
    return data, trio.current_time()


async def slow_read_to_close(stream: Stream) -> tuple[bytes, float]:
    """As read_to_close, reading 64 KiB at most every 2 ms (a slow reader that keeps up)."""
    data = b""
    with trio.fail_after(WAIT_S):
        try:
            while chunk := await stream.receive_some(65536):
                data += chunk
                await trio.sleep(0.002)
        except trio.BrokenResourceError:
            data += b"<reset>"
    return data, trio.current_time()


async def test_a_stop_treats_each_connection_by_its_state() -> None:
    graceful = 1.5
    results: dict[str, tuple[bytes, float]] = {}

    async def collect(name: str, stream: Stream, slow: bool = False) -> None:
        results[name] = await (slow_read_to_close if slow else read_to_close)(stream)

    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, keep_alive_s=5.0, graceful_s=graceful)
        never_used = await connect(server.port)
        late = await connect(server.port)  # sends its first request after the stop
        kept = await connect(server.port)
        assert (await ask(kept)).startswith(b"HTTP/1.1 200 ")
        at_stop = await connect(server.port)  # kept alive; its next request races the stop
        assert (await ask(at_stop)).startswith(b"HTTP/1.1 200 ")
        mid_request = await connect(server.port)
        await mid_request.send_all(SLOW_REQUEST)
        kept_mid = await connect(server.port)  # kept alive, its second request in progress
        assert (await ask(kept_mid)).startswith(b"HTTP/1.1 200 ")
        await kept_mid.send_all(SLOW_REQUEST)
        mid_response = await connect(server.port, rcvbuf=8192)
        await mid_response.send_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        await server.wait_open(7, WAIT_S)
        await trio.sleep(0.1)  # the slow request and the big answer under way
        async with trio.open_nursery() as readers:
            for name, stream in [
                ("never_used", never_used),
                ("late", late),
                ("kept", kept),
                ("at_stop", at_stop),
                ("mid_request", mid_request),
                ("kept_mid", kept_mid),
            ]:
                readers.start_soon(collect, name, stream)
            readers.start_soon(collect, "mid_response", mid_response, True)
            # The request is in the socket before the server hears of the stop.
            assert os.write(at_stop.socket.fileno(), REQUEST) == len(REQUEST)
            server.begin_stop()
            await trio.sleep(0.2)
            await late.send_all(REQUEST)
        took = await server.wait_done(WAIT_S)
    stopped = server.stopped_at
    data, when = results["kept"]
    assert data == b"" and when - stopped < 0.3, (data, when - stopped)
    for name in ("late", "at_stop", "mid_request", "kept_mid"):
        data, when = results[name]
        assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"\r\n\r\nok"), (name, data)
    data, answered = results["mid_response"]  # one write: the stop waits for it (shielded)
    assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"b" * 1000), data[-200:]
    assert len(data.partition(b"\r\n\r\n")[2]) == BIG_BYTES
    assert answered - stopped > 0.3, "not mid-response at the stop"
    data, when = results["never_used"]  # kept for a request until the graceful timeout
    assert data == b"" and graceful * 0.8 < when - stopped < graceful + 1.0, when - stopped
    assert took < max(graceful, answered - stopped) + 1.0, (took, answered - stopped)


async def test_a_stop_ends_a_streamed_answer_at_the_graceful_timeout() -> None:
    graceful = 0.5
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, keep_alive_s=5.0, graceful_s=graceful)
        stream = await connect(server.port)
        await stream.send_all(b"GET /forever HTTP/1.1\r\nHost: x\r\n\r\n")
        async with trio.open_nursery() as readers:
            readers.start_soon(read_to_close, stream)
            await trio.sleep(0.3)  # streaming, the client reading all it gets
            server.begin_stop()
            took = await server.wait_done(WAIT_S)
    assert took < graceful + 1.0, took


async def test_a_connection_reset_while_its_request_runs_is_released_after_the_answer() -> None:
    keep_alive = 3.0
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, keep_alive_s=keep_alive)
        stream = await connect(server.port)
        await stream.send_all(SLOW_REQUEST)
        await server.wait_open(1, WAIT_S)
        reset(stream)
        released = await server.wait_open(0, WAIT_S)
        server.begin_stop()
    assert released < SLOW_S + 0.5, released


# --- many short connections ----------------------------------------------------------------


async def short_connection(port: int, kind: int) -> None:
    stream = await connect(port)
    try:
        if kind == 0:  # connect, close
            pass
        elif kind == 1:  # one request, read, close
            assert (await ask(stream)).startswith(b"HTTP/1.1 200 ")
        elif kind == 2:  # a reset with nothing sent
            reset(stream)
            return
        elif kind == 3:  # half a head, close
            await stream.send_all(b"GET / HTTP/1.1\r\nHo")
        elif kind == 4:  # a request, close without reading the answer
            await stream.send_all(REQUEST)
        else:  # two requests, read, half-close, wait for the server's close
            assert (await ask(stream)).startswith(b"HTTP/1.1 200 ")
            assert (await ask(stream)).startswith(b"HTTP/1.1 200 ")
            await stream.send_eof()
            assert await Reader(stream).closed_within(WAIT_S) is not None
    finally:
        if kind != 2:
            await stream.aclose()


async def test_many_short_connections_leave_no_task_or_fd_behind() -> None:
    keep_alive = 5.0  # far beyond the test: every connection must end by its own close
    graceful = 3.0
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, keep_alive_s=keep_alive, graceful_s=graceful)
        await trio.sleep(0.05)
        gc.collect()  # sockets an earlier test left to the collector close now, not below
        tasks, fds = count_tasks(), count_fds()
        for round_ in range(6):
            async with trio.open_nursery() as clients:
                for i in range(40):
                    clients.start_soon(short_connection, server.port, (i + round_) % 6)
        assert await server.wait_open(0, 2.0) < 2.0
        await trio.sleep(0.1)
        gc.collect()
        assert count_tasks() == tasks
        assert count_fds() <= fds
        server.begin_stop()
        assert await server.wait_done(WAIT_S) < 0.5  # nothing left for the graceful timeout


# --- the send timeout ----------------------------------------------------------------------


async def test_a_client_that_stops_reading_is_cut_off_and_the_server_stays_responsive() -> None:
    timeout = 0.5
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, keep_alive_s=timeout)
        stalled = await connect(server.port, rcvbuf=4096)
        started = trio.current_time()
        await stalled.send_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        await server.wait_open(1, WAIT_S)
        other = await connect(server.port)
        assert (await ask(other)).startswith(b"HTTP/1.1 200 ")  # not held by the stalled write
        await other.aclose()
        await server.wait_open(0, WAIT_S)  # aborted: its write made no progress
        assert trio.current_time() - started < timeout * 4, trio.current_time() - started
        data, _ = await read_to_close(stalled)
        assert len(data) < BIG_BYTES, len(data)  # cut short, not the whole answer
        await stalled.aclose()
        server.begin_stop()
        assert await server.wait_done(WAIT_S) < 0.5


# --- concurrent writers on one connection --------------------------------------------------


async def test_a_streamed_answer_keeps_its_bytes_in_order() -> None:
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, keep_alive_s=2.0)
        stream = await connect(server.port, rcvbuf=8192)
        await stream.send_all(b"GET /stream?60 HTTP/1.1\r\nHost: x\r\n\r\n")
        reader = Reader(stream)
        _, chunks = await reader.response()
        expected = [f"<{i:06d}>".encode() * (1 + i * 7919 % 9000) for i in range(60)]
        assert chunks == expected
        # Three writers at once (two of pieces above 64 KiB): each piece whole, each writer's
        # pieces in its order, then the connection still in step for another request.
        await stream.send_all(b"GET /pair HTTP/1.1\r\nHost: x\r\n\r\n")
        _, chunks = await reader.response()
        seen: dict[bytes, list[int]] = {b"A": [], b"B": [], b"C": []}
        sizes = {b"A": 200_000, b"B": 10, b"C": 70_000}
        for chunk in chunks:
            mark = chunk[:1]
            number = int(chunk[1:5])
            assert chunk == mark + f"{number:04d}".encode() + mark * sizes[mark], chunk[:40]
            seen[mark].append(number)
        assert seen == {b"A": list(range(8)), b"B": list(range(40)), b"C": list(range(8))}
        assert (await ask(stream)).endswith(b"\r\n\r\nok")
        await stream.aclose()
        server.begin_stop()


# --- TLS: the stream is an SSLStream -------------------------------------------------------


@pytest.fixture(scope="module")
def tls() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context, client context) from a throwaway CA."""
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.set_alpn_protocols(["http/1.1"])
    ca.issue_cert("127.0.0.1").configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return server, client


async def connect_tls(
    port: int, context: ssl.SSLContext, *, rcvbuf: int | None = None
) -> trio.SSLStream[trio.SocketStream]:
    stream = trio.SSLStream(
        await connect(port, rcvbuf=rcvbuf), context, server_hostname="127.0.0.1"
    )
    with trio.fail_after(WAIT_S):
        await stream.do_handshake()
    return stream


async def test_over_tls_the_keep_alive_cuts_an_idle_connection_and_a_slowloris(
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server_context, client_context = tls
    keep_alive = 0.5
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, keep_alive_s=keep_alive, ssl_context=server_context)
        stream = await connect_tls(server.port, client_context)
        for _ in range(3):  # requests every 0.7 of the keep-alive: open throughout
            await trio.sleep(keep_alive * 0.7)
            assert (await ask(stream)).startswith(b"HTTP/1.1 200 ")
        reader = Reader(stream)
        waited = await reader.closed_within(WAIT_S)
        assert waited is not None and keep_alive * 0.8 <= waited < keep_alive * 1.5, waited
        await trio.aclose_forcefully(stream)
        # A head trickling in over TLS, a record a byte.
        slow = await connect_tls(server.port, client_context)
        started = trio.current_time()

        async def trickle_tls() -> None:
            try:
                await slow.send_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                while True:
                    await trio.sleep(keep_alive / 10)
                    await slow.send_all(b"a")
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return

        async with trio.open_nursery() as trickling:
            trickling.start_soon(trickle_tls)
            await server.wait_open(0, WAIT_S)
            trickling.cancel_scope.cancel()
        assert trio.current_time() - started < keep_alive * 2, trio.current_time() - started
        await trio.aclose_forcefully(slow)
        server.begin_stop()


async def test_over_tls_a_stop_closes_the_kept_alive_and_answers_the_new(
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server_context, client_context = tls
    graceful = 1.0
    async with trio.open_nursery() as nursery:
        server = await start_server(
            nursery, keep_alive_s=5.0, graceful_s=graceful, ssl_context=server_context
        )
        kept = await connect_tls(server.port, client_context)
        assert (await ask(kept)).startswith(b"HTTP/1.1 200 ")
        fresh = await connect_tls(server.port, client_context)
        idle = await connect_tls(server.port, client_context)
        mid = await connect_tls(server.port, client_context)
        await mid.send_all(SLOW_REQUEST)
        await server.wait_open(4, WAIT_S)
        await trio.sleep(0.1)
        results: dict[str, tuple[bytes, float]] = {}

        async def collect(name: str, stream: Stream) -> None:
            results[name] = await read_to_close(stream)

        async with trio.open_nursery() as readers:
            for name, stream in [("kept", kept), ("idle", idle), ("mid", mid)]:
                readers.start_soon(collect, name, stream)
            server.begin_stop()
            await trio.sleep(0.2)
            await fresh.send_all(REQUEST)
            readers.start_soon(collect, "fresh", fresh)
        took = await server.wait_done(WAIT_S)
    stopped = server.stopped_at
    data, when = results["kept"]
    assert b"HTTP" not in data and when - stopped < 0.3, (data, when - stopped)
    for name in ("fresh", "mid"):
        data, _ = results[name]
        assert data.startswith(b"HTTP/1.1 200 ") and b"\r\n\r\nok" in data, (name, data)
    data, when = results["idle"]
    assert b"HTTP" not in data and graceful * 0.8 < when - stopped < graceful + 1.0, data
    assert took < graceful + 1.0, took


async def test_over_tls_a_client_that_stops_reading_is_cut_off(
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server_context, client_context = tls
    timeout = 0.5
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, keep_alive_s=timeout, ssl_context=server_context)
        stalled = await connect_tls(server.port, client_context, rcvbuf=4096)
        started = trio.current_time()
        await stalled.send_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        await server.wait_open(0, WAIT_S)
        assert trio.current_time() - started < timeout * 4, trio.current_time() - started
        data = b""
        with trio.fail_after(WAIT_S):
            try:
                while chunk := await stalled.receive_some(65536):
                    data += chunk
            except trio.BrokenResourceError:
                pass
        assert len(data) < BIG_BYTES, len(data)
        await trio.aclose_forcefully(stalled)
        server.begin_stop()
        assert await server.wait_done(WAIT_S) < 0.5


# --- HTTP/2 (prior knowledge): writers from several tasks on one connection ----------------


async def test_http2_streams_at_once_keep_the_connection_bytes_in_order() -> None:
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, keep_alive_s=2.0)
        stream = await connect(server.port, rcvbuf=16384)
        client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        client.initiate_connection()
        client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20})
        client.increment_flow_control_window(1 << 24)
        # (Not /pair: Hypercorn's h2 StreamBuffer stalls with two writers on one stream.)
        paths = ["/stream?60", "/big", "/", "/slow", "/stream?30", "/big", "/"]
        bodies: dict[int, bytes] = {}
        for path in paths:
            sid = client.get_next_available_stream_id()
            bodies[sid] = b""
            client.send_headers(
                sid,
                [(":method", "GET"), (":path", path), (":scheme", "http"), (":authority", "x")],
                end_stream=True,
            )
        await stream.send_all(client.data_to_send())
        ended: set[int] = set()
        with trio.fail_after(WAIT_S):
            while len(ended) < len(paths):
                data = await stream.receive_some(65536)
                assert data, "closed"
                for event in client.receive_data(data):
                    if isinstance(event, h2.events.DataReceived):
                        bodies[event.stream_id] += event.data
                        client.acknowledge_received_data(
                            event.flow_controlled_length, event.stream_id
                        )
                    elif isinstance(event, h2.events.StreamEnded):
                        ended.add(event.stream_id)
                    elif isinstance(event, (h2.events.StreamReset, h2.events.ConnectionTerminated)):
                        raise AssertionError(event)
                if pending := client.data_to_send():
                    await stream.send_all(pending)
        by_path = list(zip(paths, [bodies[sid] for sid in sorted(bodies)], strict=True))
        for path, body in by_path:
            if path.startswith("/stream?"):
                count = int(path.partition("?")[2])
                assert body == b"".join(
                    f"<{i:06d}>".encode() * (1 + i * 7919 % 9000) for i in range(count)
                )
            elif path == "/big":
                assert body == b"b" * BIG_BYTES
            else:
                assert body == b"ok", (path, body)
        await stream.aclose()
        server.begin_stop()
