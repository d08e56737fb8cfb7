"""The keep-alive timer of :mod:`dengine_trio.api.idle_timer` on a real Hypercorn server.

Its deadline moves instead of a task being spawned and cancelled per request (issue 18), so
these pin what that must not change: the timer runs from each answer (not from the connect),
never while a request is in progress however long, closes an idle connection once its time is
up, and costs a request no task of its own.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import trio
from hypercorn.trio import serve

from dengine_trio.api import bind_listener, hypercorn_config, idle_timer
from tests.support.asgi import answer_lifespan
from tests.support.cluster import free_ports

KEEP_ALIVE_S = 0.4
WAIT_S = 10.0
REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
SLOW_REQUEST = b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"


async def app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await answer_lifespan(receive, send)
        return
    if scope["path"] == "/slow":  # a request in progress for longer than the keep-alive
        await trio.sleep(KEEP_ALIVE_S * 2.5)
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"ok"})


class TaskCount(trio.abc.Instrument):
    def __init__(self) -> None:
        self.spawned = 0

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        self.spawned += 1


async def ask(stream: trio.SocketStream, request: bytes = REQUEST) -> bytes:
    await stream.send_all(request)
    answer = b""
    with trio.fail_after(WAIT_S):
        while not answer.endswith(b"\r\n\r\nok"):
            chunk = await stream.receive_some(65536)
            assert chunk, f"closed after {answer!r}"
            answer += chunk
    return answer


async def closed_within(stream: trio.SocketStream, seconds: float) -> float | None:
    """Seconds until the server closed ``stream`` (None: still open after ``seconds``)."""
    started = trio.current_time()
    with trio.move_on_after(seconds):
        try:
            data = await stream.receive_some(65536)
        except trio.BrokenResourceError:
            data = b""
        assert data == b"", data
        return trio.current_time() - started
    return None


async def serving(nursery: trio.Nursery, stop: trio.Event) -> int:
    port = free_ports(1)[0]
    config = hypercorn_config(bind_listener("127.0.0.1", port), idle_timeout_s=KEEP_ALIVE_S)
    await nursery.start(partial(serve, app, config, shutdown_trigger=stop.wait))
    return port


async def test_the_keep_alive_runs_from_each_answer_and_closes_an_idle_connection() -> None:
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        port = await serving(nursery, stop)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        # Requests every 0.6 of the keep-alive for three keep-alives: open throughout.
        for _ in range(5):
            await trio.sleep(KEEP_ALIVE_S * 0.6)
            assert (await ask(stream)).startswith(b"HTTP/1.1 200 ")
        # A request in progress for 2.5 keep-alives is answered on the same connection.
        assert (await ask(stream, SLOW_REQUEST)).startswith(b"HTTP/1.1 200 ")
        # Then idle: closed one keep-alive after that answer, not before.
        assert await closed_within(stream, KEEP_ALIVE_S * 0.5) is None
        waited = await closed_within(stream, WAIT_S)
        assert waited is not None and waited < KEEP_ALIVE_S * 1.5, waited
        await stream.aclose()
        stop.set()


async def test_a_connection_that_never_sends_is_closed_after_the_keep_alive() -> None:
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        port = await serving(nursery, stop)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        waited = await closed_within(stream, WAIT_S)
        assert waited is not None and waited >= KEEP_ALIVE_S * 0.8, waited
        await stream.aclose()
        stop.set()


async def test_a_request_costs_no_task_but_the_apps() -> None:
    assert idle_timer.install()
    count = TaskCount()
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        port = await serving(nursery, stop)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await ask(stream)  # the connection's own tasks are spawned by now
        trio.lowlevel.add_instrument(count)
        try:
            for _ in range(50):
                await ask(stream)
        finally:
            trio.lowlevel.remove_instrument(count)
        await stream.aclose()
        stop.set()
    # One task per request (Hypercorn's for the app); Hypercorn's own timer spawned a second.
    assert count.spawned == 50, count.spawned
