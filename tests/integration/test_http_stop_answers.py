"""A request that reaches a stopping HTTP server is answered, not dropped with its connection.

Hypercorn (0.18, trio) closes every connection it counts as idle the moment its server is told
to stop, a connection it has just accepted included: one whose client has connected and is
sending its first request (or whose request bytes are already in the socket, not yet read) got
a close or a reset instead of an answer. With HTTP workers that was
``tests/e2e/test_newcomer_http_workers.py::test_a_write_sent_while_the_node_stops_is_answered_or_refused``
failing now and then (a ``reset`` between a 503 and the refusals); one process has the same
window. :class:`dengine_trio.api.idle_timer.IdleTimer` keeps such a connection until its
request is answered (then it closes, the server stopping) or the graceful timeout ends it.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import trio
import trio.testing
from hypercorn.trio import serve

from dengine_trio.api import bind_listener, hypercorn_config
from tests.support.asgi import answer_lifespan
from tests.support.cluster import free_ports

WAIT_S = 10.0


async def fixed(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await answer_lifespan(receive, send)
        return
    await receive()
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"ok"})


async def read_until_closed(stream: trio.SocketStream) -> bytes:
    data = b""
    with trio.move_on_after(WAIT_S):
        try:
            while chunk := await stream.receive_some(65536):
                data += chunk
        except trio.BrokenResourceError as exc:  # a reset
            return data + f"<{exc!r}>".encode()
    return data


async def test_a_request_on_a_connection_accepted_before_the_stop_is_answered() -> None:
    port = free_ports(1)[0]
    config = hypercorn_config(bind_listener("127.0.0.1", port), graceful_timeout_s=WAIT_S)
    connections = config.dengine_connections
    assert connections is not None
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(serve, fixed, config, shutdown_trigger=stop.wait))
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        with trio.fail_after(WAIT_S):
            while connections.open == 0:  # type: ignore[attr-defined]
                await trio.sleep(0.01)  # accepted by the server, no request yet
        stop.set()
        await trio.testing.wait_all_tasks_blocked()  # the server has taken in the stop
        try:
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        except trio.BrokenResourceError as exc:
            answer = f"<{exc!r}>".encode()
        else:
            answer = await read_until_closed(stream)
        await stream.aclose()
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    assert answer.endswith(b"\r\n\r\nok"), answer
