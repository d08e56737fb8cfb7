"""Hypercorn's per-connection keep-alive timer, as one task per connection whose deadline moves.

Why (issue 18). Hypercorn (0.18, trio worker) times a connection's idle periods with a
``TrioSingleTask``: each request's complete head *stops* the timer (cancels its task) and each
answer *restarts* it (cancels the task again, then spawns a new one with ``nursery.start``,
waiting for it to report started). That is a task spawned, started and cancelled, and two
locks taken, for every request on every connection: measured on the raw ASGI ceiling
(``bench.ceiling --raw``, wrk with ``GET`` at 16 connections, four alternating 4 s runs on
this 2-core machine) 2,086-2,257 requests/s with it and 3,737-3,823 with this timer, and at one
connection a p50 of 447-473 µs against 319-328 µs. The timer's work was most of what an
answer cost Hypercorn beyond writing it.

What. :class:`IdleTimer` takes ``TrioSingleTask``'s place as ``TCPServer.idle_task`` (same
``restart(task_group, action)`` / ``stop()`` calls): one task per connection, spawned at the
first restart (the connect), waiting on the server's stop under a cancel scope whose deadline
``restart`` moves to ``keep_alive_timeout`` from now and ``stop`` moves to infinity. Moving a
deadline wakes nothing, so a request costs the timer a few attribute writes. Its decisions are
Hypercorn's, with the node's changes to them:

* an idle period that reaches its deadline closes the connection (Hypercorn's
  ``_initiate_server_close``, shielded), whether the client sent nothing or a head that is
  still incomplete (a slowloris);
* at the server's stop, an idle connection is closed unless it has served no request yet or
  has request bytes waiting in its socket: those are answered first (by a stopping node, 503
  ``stopped``) and closed after (Hypercorn sends ``Closed`` once stopped), the graceful timeout
  ending one that sends nothing. A client that connected before the listening socket closed
  and sent its request got a close or a reset, neither answered nor refused (with HTTP workers
  a write sent while the node stops, ``tests/e2e/test_newcomer_http_workers.py``;
  ``tests/integration/test_http_stop_answers.py``). A kept-alive connection idle between
  requests is closed at once, as Hypercorn does (RFC 9112 section 9.6: its client retries on
  a new connection, which is refused);
* a stop during a request does nothing until the request is answered.

:meth:`IdleTimer.finish` ends the task once the connection's read loop has ended (Hypercorn's
connection task group waits for it; :func:`dengine_trio.api._install_release_on_eof`).
:func:`install` puts it in place once per process, only if Hypercorn's ``TCPServer`` is still
the shape it replaces; otherwise it logs a warning and patches nothing (Hypercorn's own timer
then runs, slower, without the answer at stop).
"""

from __future__ import annotations

import logging
import math
import socket
from typing import Any

import trio
from hypercorn.trio import tcp_server, worker_context

__all__ = ["IdleTimer", "install"]

log = logging.getLogger(__name__)


class IdleTimer:
    """One connection's keep-alive timer (Hypercorn's ``TCPServer.idle_task``); see the module
    docstring. Not shared between connections; all methods run in the connection's trio
    thread."""

    __slots__ = ("_deadline", "_done", "_idle", "_periods", "_task", "_wait", "_wake")

    def __init__(self) -> None:
        self._task: trio.CancelScope | None = None  # the timer task's scope; None: no task
        self._wait: trio.CancelScope | None = None  # the current wait's, deadline moved
        self._wake: trio.CancelScope | None = None  # set while parked until the next restart
        self._deadline = math.inf  # trio clock (s); inf while a request is in progress
        self._idle = False
        self._periods = 0  # idle periods begun: 1 at the connect, +1 after each answer
        self._done = False  # the connection reads no more (finish)

    async def restart(self, task_group: Any, action: Any) -> None:
        """An idle period begins (``action``: the connection's bound ``_idle_timeout``,
        which names the server; Hypercorn's own action is not called)."""
        if self._done:
            # The read loop has ended (EOF, reset): no request can follow, so no idle period
            # either. An answer still written (a client that reset while its request ran)
            # restarts us through Hypercorn's recycle; a new timer task would hold the
            # connection, its task and its descriptor, a whole keep-alive more.
            return
        server = action.__self__
        self._idle = True
        self._periods += 1
        self._deadline = trio.current_time() + server.config.keep_alive_timeout
        if self._task is None:
            self._task = trio.CancelScope()
            task_group._nursery.start_soon(self._run, server, self._task)
        elif self._wait is not None:
            self._wait.deadline = self._deadline
        if self._wake is not None:
            self._wake.cancel()

    async def stop(self) -> None:
        """A request's head is complete: no deadline until it is answered."""
        self._idle = False
        self._deadline = math.inf
        if self._wait is not None:
            self._wait.deadline = math.inf

    def finish(self) -> None:
        """End the timer's task for good: the connection reads no more (later restarts do
        nothing)."""
        self._done = True
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self, server: Any, task_scope: trio.CancelScope) -> None:
        terminated = server.context.terminated
        with task_scope:
            while True:
                with trio.CancelScope(deadline=self._deadline) as wait:
                    self._wait = wait
                    await terminated.wait()
                self._wait = None
                if self._idle and (
                    not terminated.is_set()  # the deadline passed
                    or (self._periods > 1 and not _bytes_waiting(server.stream))
                ):
                    break
                # A request in progress (its answer restarts us), or a connection with a
                # request to answer at the stop: wait for the next restart.
                with trio.CancelScope() as wake:
                    self._wake = wake
                    await trio.sleep_forever()
                self._wake = None
            with trio.CancelScope(shield=True):
                await server._initiate_server_close()


def _bytes_waiting(stream: Any) -> bool:
    """Whether the client has sent bytes the server has not read yet (a request begun)."""
    sock = getattr(stream, "socket", None) or getattr(
        getattr(stream, "transport_stream", None), "socket", None
    )
    if sock is None:
        return False
    try:
        with socket.fromfd(sock.fileno(), socket.AF_INET, socket.SOCK_STREAM) as peek:
            return bool(peek.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except OSError:  # nothing waiting (EAGAIN), or the connection is gone
        return False


def install() -> bool:
    """Make every Hypercorn ``TCPServer`` created from now on use :class:`IdleTimer`.
    Returns whether it is in place (idempotent)."""
    current = getattr(tcp_server, "TrioSingleTask", None)
    if current is IdleTimer:
        return True
    server = tcp_server.TCPServer
    if (
        current is not worker_context.TrioSingleTask
        or not hasattr(server, "_initiate_server_close")
        or not hasattr(server, "_idle_timeout")
    ):
        log.warning("Hypercorn's TCPServer changed shape: its own keep-alive timer runs")
        return False
    tcp_server.TrioSingleTask = IdleTimer  # type: ignore[assignment,misc]
    return True
