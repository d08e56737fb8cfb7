"""HTTP worker processes for the KV port (``[http] workers = N``, ``--http-workers N``).

One node process embeds the engine; HTTP parsing and writing (Hypercorn, h11, TLS), which
cost more CPU per request than the engine's work, move to N worker processes:

* The node binds the KV port once (a taken port fails at start, as with one process),
  listens, and hands that socket to every worker (an inherited file descriptor: the workers
  accept from one queue), with one end of a ``socketpair`` each (the **link**).
  ``SO_REUSEPORT`` would balance connections better but let any process of the same user
  bind the port beside the node and take part of its connections.
* A worker (``python -m dengine_trio.api.workers``) runs Hypercorn on trio with the node's
  settings (:func:`dengine_trio.api.hypercorn_config`, the node's TLS context) and one raw
  ASGI app that forwards each request over its link and writes back what comes back. It
  holds no engine state, so it cannot answer anything by itself: every read and write is
  served by the node's process, by the same KV app as with one process (fast path, Quart,
  auth, limits, error bodies, metrics), hence the identical API.
* Link messages are msgpack arrays in the project's framing (that of
  :mod:`dengine_trio.wire.frames`: a 4-byte big-endian length, then the payload; written
  out here because ``api`` does not import ``wire``, ``tests/unit/test_layering.py``).
  Worker to node: ``[OPEN, id, method, scheme, http_version, path, raw_path,
  query_string, headers, client, server, body, more_body]``,
  then ``[BODY, id, body, more_body]`` while the body streams in, ``[DISCONNECT, id]``.
  Node to worker: ``[RESPONSE, id, status, headers, body, more_body]`` (the ASGI start and
  first body message in one frame), ``[BODY, id, body, more_body]``, ``[END, id]`` (the app
  returned without finishing a response); and once, ``[READY, 0]`` from the worker when
  Hypercorn serves (the node serves its health port only once every worker is ready, so a
  probe's 200 means the KV port is served too). A request whose body is complete when it starts
  (nearly all) costs one frame each way.
* Streamed answers (``GET /watch``'s Server-Sent Events; any body sent in several messages):
  the worker acknowledges each body frame with ``more_body`` once Hypercorn has written it
  to the client, ``[ACK, id, bytes]``, and the node's ``send`` waits while more than
  :data:`STREAM_WINDOW_BYTES` are unacknowledged, so a slow client slows the node's sender
  (whose own bounds then apply: a watch's ``[watch] queue_events`` and ``queue_bytes``)
  instead of filling the link and the worker's memory. From the first such frame on, the
  worker also forwards the client's disconnect (``[DISCONNECT, id]``), so a stream ends with
  its client.
* Supervision (:class:`WorkerPool`, in the node): a worker that exits is logged with its
  status and restarted (after 0.1 s, doubling to 5 s while it keeps dying young); the
  listening socket stays open in the node, so new connections go to the other workers or
  wait in its queue, never refused.
* ``[http] max_connections`` bounds the port, not each worker: each worker counts its open
  connections in its own slot of a shared memory page (:class:`SharedConnectionCount`) and
  refuses one when the slots add up to the bound (two workers accepting at the same instant
  may both see room: at most N - 1 over). The node zeroes a slot when its worker restarts.
  The node stopping sends each worker SIGTERM (Hypercorn's graceful stop: it answers what
  is in flight, through the still-open link), then SIGKILL after the graceful timeout. A
  worker exits by itself when its link closes, so a node killed with SIGKILL leaves no
  worker behind.

The health port is served by the node's process in both modes: its probes read the engine
directly, and a load balancer's few requests a second do not need another core.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import mmap
import os
import signal
import socket
import struct
import subprocess
import sys
from collections import deque
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import msgpack
import trio

from dengine_trio import gc_tuning
from dengine_trio.api import ConnectionCount
from dengine_trio.config import HttpConfig

__all__ = [
    "SharedConnectionCount",
    "WorkerPool",
    "main",
]

log = logging.getLogger("dengine_trio.http_workers")

OPEN, BODY, DISCONNECT, RESPONSE, END, READY, ACK = range(7)
READ_BYTES = 256 * 1024
RESTART_DELAY_S = 0.1
RESTART_DELAY_MAX_S = 5.0
STABLE_AFTER_S = 10.0
"""A worker that ran this long (s) before exiting is restarted after the shortest delay."""
KILL_MARGIN_S = 2.0
"""After the graceful timeout, how long (s) a stopping worker gets before SIGKILL."""
READY_TIMEOUT_S = 60.0
"""How long (s) the node waits for its workers' first start before serving its health port
anyway (with a warning): a worker that cannot start must not keep probes dark forever."""

BODY_CHUNK_BYTES = 1024 * 1024
"""A response body larger than this (bytes) crosses the link in frames of at most this much
body each, so a frame's size does not grow with a value's JSON (up to 6x the value)."""

STREAM_WINDOW_BYTES = 256 * 1024
"""How much of a streamed answer (bytes) may be on its way to one client, written by the node
but not yet by the worker: past this the node's ``send`` waits for the worker's ``ACK``."""

_pack = msgpack.Packer(use_bin_type=True).pack
_HEADER = struct.Struct(">I")


def _unpack(payload: bytes) -> Any:
    return msgpack.unpackb(payload, raw=False, use_list=True)


def _frame(message: list[Any]) -> bytes:
    payload = _pack(message)
    return _HEADER.pack(len(payload)) + payload


class _FrameReader:
    """Splits the link's byte stream into payloads (``wire.frames.FrameReader``'s framing).

    No size bound: both ends are the node's own processes, and what a frame holds is bounded
    by the HTTP limits (``[http] max_header_bytes`` for a head, Hypercorn's 64 KiB reads for
    a request body, :data:`BODY_CHUNK_BYTES` for a response body)."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        buf = self.buf
        buf += data
        frames: list[bytes] = []
        pos, end_of_data = 0, len(buf)
        while end_of_data - pos >= 4:
            (size,) = _HEADER.unpack_from(buf, pos)
            end = pos + 4 + size
            if end > end_of_data:
                break
            frames.append(bytes(buf[pos + 4 : end]))
            pos = end
        del buf[:pos]
        return frames


class SharedConnectionCount(ConnectionCount):
    """Open connections of the KV port over all workers: slot ``i`` (an 8-byte count in a
    shared ``memfd`` page) is worker ``i``'s, written by it alone; the total is read over all
    slots (``dengine_trio.api.ConnectionCount``'s interface)."""

    def __init__(self, fd: int, slots: int, slot: int) -> None:
        self.view = mmap.mmap(fd, 8 * slots)
        self.slots = slots
        self.offset = 8 * slot

    @classmethod
    def create(cls, slots: int) -> tuple[int, SharedConnectionCount]:
        """A new page of ``slots`` counts at zero: (its file descriptor, the node's view)."""
        fd = os.memfd_create("dengine-http-connections", 0)
        os.ftruncate(fd, 8 * slots)
        return fd, cls(fd, slots, 0)

    def total(self) -> int:
        """Connections open over all workers (a read of every slot, not atomic)."""
        return sum(_COUNT.unpack_from(self.view, 8 * i)[0] for i in range(self.slots))

    def try_open(self, limit: int) -> bool:
        if self.total() >= limit:
            return False
        self._add(1)
        return True

    def close(self) -> None:
        """Count one connection fewer in this worker's slot."""
        self._add(-1)

    def reset(self, slot: int) -> None:
        """Zero ``slot`` (its worker exited: its connections closed with it)."""
        _COUNT.pack_into(self.view, 8 * slot, 0)

    def _add(self, delta: int) -> None:
        (count,) = _COUNT.unpack_from(self.view, self.offset)
        _COUNT.pack_into(self.view, self.offset, count + delta)


_COUNT = struct.Struct("=q")


class _Link:
    """One end of a link: frames out without blocking (a pump finishes what the socket did
    not take), frames in handed to ``on_message``."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.pending = bytearray()
        self.closed = False
        self._wake = trio.Event()

    def write(self, message: list[Any]) -> None:
        if self.closed:
            return
        data = _frame(message)
        if self.pending:
            self.pending += data
            return
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.closed = True
            return
        if sent < len(data):
            self.pending += data[sent:]
            self._wake.set()

    async def pump(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            while self.pending:
                await trio.lowlevel.wait_writable(self.sock)
                try:
                    sent = self.sock.send(self.pending)
                except BlockingIOError:
                    continue
                except OSError:
                    self.closed = True
                    self.pending.clear()
                    return
                del self.pending[:sent]

    async def read(self, on_message: Any) -> None:
        """Hand each message to ``on_message`` until the other end closes the link."""
        reader = _FrameReader()
        sock = self.sock
        while True:
            try:
                data = sock.recv(READ_BYTES)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(sock)
                continue
            except OSError:
                data = b""
            if not data:
                self.closed = True
                return
            for payload in reader.feed(data):
                on_message(_unpack(payload))


# ------------------------------------------------------------------------------ node side


class _Exchange:
    """One request being served by the node's app: its receive and send callables."""

    __slots__ = ("acked", "done", "link", "messages", "rid", "start", "unacked", "waiter")

    def __init__(self, link: _Link, rid: int, first: dict[str, Any]) -> None:
        self.link = link
        self.rid = rid
        self.messages: deque[dict[str, Any]] = deque((first,))
        self.waiter: trio.Event | None = None
        self.start: dict[str, Any] | None = None
        self.done = False
        self.unacked = 0
        """Bytes of ``more_body`` frames the worker has not yet written to its client."""
        self.acked: trio.Event | None = None

    def ack(self, size: int) -> None:
        self.unacked -= size
        if self.acked is not None:
            self.acked.set()

    def put(self, message: dict[str, Any]) -> None:
        self.messages.append(message)
        if self.waiter is not None:
            self.waiter.set()

    def receive_nowait(self) -> dict[str, Any]:
        # The KV app's fast path takes a body already here without a checkpoint.
        if self.messages:
            return self.messages.popleft()
        raise trio.WouldBlock

    async def receive(self) -> dict[str, Any]:
        while not self.messages:
            self.waiter = trio.Event()
            await self.waiter.wait()
        return self.messages.popleft()

    async def send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.start = message
        elif kind == "http.response.body" and not self.done:
            more = message.get("more_body", False)
            body = message.get("body", b"")
            while self.unacked > STREAM_WINDOW_BYTES and not self.link.closed:
                # A stream to a slow client: wait until the worker has written more of it.
                self.acked = trio.Event()
                await self.acked.wait()
            if len(body) > BODY_CHUNK_BYTES:
                size = BODY_CHUNK_BYTES
                chunks = [body[at : at + size] for at in range(0, len(body), size)]
                for chunk in chunks[:-1]:
                    self._write_body(chunk, True)
                body = chunks[-1]
            self._write_body(body, more)
            self.done = not more

    def _write_body(self, body: bytes, more: bool) -> None:
        if more:
            self.unacked += len(body)
        start = self.start
        if start is not None:
            self.start = None
            headers = start.get("headers", ())
            self.link.write([RESPONSE, self.rid, start["status"], headers, body, more])
        else:
            self.link.write([BODY, self.rid, body, more])


class _NodeBridge:
    """Serves one worker's link in the node: each OPEN runs ``app`` in a task of its own."""

    def __init__(self, app: Any, link: _Link, on_ready: Any) -> None:
        self.app = app
        self.link = link
        self.on_ready = on_ready
        self.exchanges: dict[int, _Exchange] = {}
        self.nursery: trio.Nursery | None = None

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            nursery.start_soon(self.link.pump)
            await self.link.read(self.on_message)
            # The worker is gone: requests still running finish (their answers are dropped).
            nursery.cancel_scope.cancel()

    def on_message(self, message: list[Any]) -> None:
        kind, rid = message[0], message[1]
        if kind == READY:
            self.on_ready()
        elif kind == OPEN:
            (method, scheme, http_version, path, raw_path, query, headers, client, server) = (
                message[2:11]
            )
            scope = {
                "type": "http",
                "asgi": {"version": "3.0", "spec_version": "2.3"},
                "http_version": http_version,
                "method": method,
                "scheme": scheme,
                "path": path,
                "raw_path": raw_path,
                "query_string": query,
                "root_path": "",
                # [name, value] lists: ASGI takes any pairs, and copying costs per request.
                "headers": headers,
                "client": tuple(client) if client else None,
                "server": tuple(server) if server else None,
                "extensions": {},
            }
            first = {"type": "http.request", "body": message[11], "more_body": message[12]}
            exchange = _Exchange(self.link, rid, first)
            self.exchanges[rid] = exchange
            assert self.nursery is not None
            self.nursery.start_soon(self.serve, scope, exchange)
        else:
            known = self.exchanges.get(rid)
            if known is None:
                return  # answered already: what the worker still forwards is moot
            if kind == BODY:
                known.put({"type": "http.request", "body": message[2], "more_body": message[3]})
            elif kind == DISCONNECT:
                known.put({"type": "http.disconnect"})
            elif kind == ACK:
                known.ack(message[2])

    async def serve(self, scope: dict[str, Any], exchange: _Exchange) -> None:
        try:
            await self.app(scope, exchange.receive, exchange.send)
        except Exception:
            log.exception("unhandled error serving a request from an HTTP worker")
        finally:
            del self.exchanges[exchange.rid]
            if not exchange.done:
                self.link.write([END, exchange.rid])


class WorkerPool:
    """Runs and supervises the KV port's HTTP workers (see the module docstring).

    ``app``: the node's KV app (an ASGI app); ``listener``: the KV port's bound socket;
    ``workers``: how many; ``http``: the node's ``[http]`` settings, handed to each worker as
    they were when the node started (a worker never reads the TOML file, which an operator
    may be editing for the next restart; the TLS files are read once, here, and handed over
    as ``memfd`` copies); ``worker_args``: logging flags for the worker's command line;
    ``graceful_s``: Hypercorn's graceful timeout (s); ``backlog``: the socket's backlog.
    Raises OSError if a TLS file cannot be read.
    """

    def __init__(
        self,
        app: Any,
        listener: socket.socket,
        workers: int,
        http: HttpConfig,
        worker_args: Sequence[str],
        graceful_s: float,
        backlog: int,
    ) -> None:
        self.app = app
        self.backlog = backlog
        self.file_fds: list[int] = []
        settings = attrs.asdict(http)
        for key in ("tls_certificate_path", "tls_private_key_path", "tls_client_ca_path"):
            if settings[key]:
                fd = os.memfd_create(f"dengine-{key}", 0)
                self.file_fds.append(fd)
                os.write(fd, Path(settings[key]).read_bytes())
                settings[key] = f"/proc/self/fd/{fd}"
        self.http_json = json.dumps(settings)
        self.listener = listener
        self.workers = workers
        self.ready: dict[int, trio.Event] = {slot: trio.Event() for slot in range(workers)}
        self.worker_args = list(worker_args)
        self.graceful_s = graceful_s
        self.stopping = False
        self.processes: dict[int, trio.Process] = {}
        self.restarts = dict.fromkeys(range(workers), 0)
        """Times each slot's worker was restarted after it exited (``dengine_http_worker_
        restarts_total``)."""
        self.stop = trio.Event()

    def pids(self) -> dict[int, int]:
        """The pid of each worker running now, by slot (``dengine_http_worker_*``)."""
        return {slot: process.pid for slot, process in self.processes.items()}

    async def run(self, stop: trio.Event, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Start the workers, keep them running until ``stop`` is set, then stop them.

        The socket listens from now on: a connection made before a worker is up (or while
        one restarts) waits in the kernel's backlog instead of being refused. Started (for
        ``nursery.start``) once every worker serves, or after :data:`READY_TIMEOUT_S`."""
        self.stop = stop
        self.listener.listen(self.backlog)
        counts_fd, self.counts = SharedConnectionCount.create(self.workers)
        self.counts_fd = counts_fd
        try:
            async with trio.open_nursery() as nursery:
                lifespan = await nursery.start(self._lifespan)
                async with trio.open_nursery() as workers:
                    for slot in range(self.workers):
                        workers.start_soon(self._supervise, slot)
                    with trio.move_on_after(READY_TIMEOUT_S) as waited:
                        await self._ready_or_stopped()
                    if waited.cancelled_caught:
                        log.warning(
                            "HTTP workers not all serving after %.0f s: serving the health "
                            "port anyway",
                            READY_TIMEOUT_S,
                        )
                    task_status.started()
                    await stop.wait()
                    self.stopping = True
                    # The workers hold the socket open; each closes its copy as soon as it
                    # stops accepting, so new connects are refused from then on (as with one
                    # process) instead of waiting in a queue no one will read.
                    self.listener.close()
                    for process in list(self.processes.values()):
                        _signal(process, signal.SIGTERM)
                    # Each _supervise returns once its worker has exited (killed if need be).
                await lifespan.send({"type": "lifespan.shutdown"})
        finally:
            self.listener.close()
            for fd in (counts_fd, *self.file_fds):
                os.close(fd)

    async def _ready_or_stopped(self) -> None:
        # A stop during the start must not wait for workers that may never be ready.
        async with trio.open_nursery() as race:

            async def all_ready() -> None:
                for event in self.ready.values():
                    await event.wait()
                race.cancel_scope.cancel()

            async def stopped() -> None:
                await self.stop.wait()
                race.cancel_scope.cancel()

            race.start_soon(all_ready)
            race.start_soon(stopped)

    async def _lifespan(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """The app's ASGI lifespan (Quart's startup and shutdown), as Hypercorn runs it."""
        to_app, app_receive = trio.open_memory_channel[dict[str, Any]](1)
        app_send, from_app = trio.open_memory_channel[dict[str, Any]](1)
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}}
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.app, scope, app_receive.receive, app_send.send)
            await to_app.send({"type": "lifespan.startup"})
            answer = await from_app.receive()
            if answer["type"] != "lifespan.startup.complete":
                raise RuntimeError(f"the KV app did not start: {answer}")
            task_status.started(to_app)
            await from_app.receive()  # lifespan.shutdown.complete (or failed: logged by Quart)

    async def _supervise(self, slot: int) -> None:
        delay = RESTART_DELAY_S
        while not self.stopping:
            started = trio.current_time()
            status = await self._run_worker(slot)
            if self.stopping:
                return
            lived = trio.current_time() - started
            delay = RESTART_DELAY_S if lived >= STABLE_AFTER_S else delay
            self.restarts[slot] += 1
            log.warning(
                "HTTP worker %d exited with status %s after %.1f s; restarting it in %.1f s",
                slot,
                status,
                lived,
                delay,
            )
            await trio.sleep(delay)
            delay = min(delay * 2, RESTART_DELAY_MAX_S)

    async def _run_worker(self, slot: int) -> int | None:
        node_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fds = (self.listener.fileno(), worker_end.fileno(), self.counts_fd, *self.file_fds)
        command = [sys.executable, "-m", "dengine_trio.api.workers"]
        command += ["--listen-fd", str(fds[0]), "--link-fd", str(fds[1])]
        command += ["--counts-fd", str(fds[2]), "--workers", str(self.workers)]
        command += ["--http", self.http_json, "--slot", str(slot), *self.worker_args]
        self.counts.reset(slot)
        try:
            process = await trio.lowlevel.open_process(
                command, pass_fds=fds, stdin=subprocess.DEVNULL
            )
        finally:
            worker_end.close()
        self.processes[slot] = process
        log.info("HTTP worker %d started (pid %d)", slot, process.pid)
        try:
            async with trio.open_nursery() as nursery:
                bridge = _NodeBridge(self.app, _Link(node_end), self.ready[slot].set)
                nursery.start_soon(bridge.run)
                nursery.start_soon(self._kill_if_late, process)
                await process.wait()
                nursery.cancel_scope.cancel()
        finally:
            node_end.close()
            self.processes.pop(slot, None)
            self.counts.reset(slot)
            if process.returncode is None:  # cancelled: never leave it behind
                _signal(process, signal.SIGKILL)
                with trio.CancelScope(shield=True):
                    await process.wait()
        return process.returncode

    async def _kill_if_late(self, process: trio.Process) -> None:
        # Hypercorn's graceful stop, then a margin; a worker past that is killed.
        await self.stop.wait()
        await trio.sleep(self.graceful_s + KILL_MARGIN_S)
        log.warning("HTTP worker pid %d did not stop in time: killing it", process.pid)
        _signal(process, signal.SIGKILL)


def _signal(process: trio.Process, signum: int) -> None:
    try:
        process.send_signal(signum)
    except ProcessLookupError:
        pass


# ---------------------------------------------------------------------------- worker side


class _WorkerExchange:
    __slots__ = ("messages", "waiter")

    def __init__(self) -> None:
        self.messages: deque[list[Any]] = deque()
        self.waiter: trio.Event | None = None

    def put(self, message: list[Any]) -> None:
        self.messages.append(message)
        if self.waiter is not None:
            self.waiter.set()

    async def next(self) -> list[Any]:
        while not self.messages:
            self.waiter = trio.Event()
            await self.waiter.wait()
        return self.messages.popleft()


class _WorkerBridge:
    """The worker's ASGI app: each request forwarded over the link, the answer written back."""

    def __init__(self, link: _Link) -> None:
        self.link = link
        self.exchanges: dict[int, _WorkerExchange] = {}
        self.ids = itertools.count(1)

    def on_message(self, message: list[Any]) -> None:
        exchange = self.exchanges.get(message[1])
        if exchange is not None:
            exchange.put(message)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if kind != "http":
            return
        channel = getattr(receive, "__self__", None)
        receive_nowait = getattr(channel, "receive_nowait", None)
        first = None
        if receive_nowait is not None:
            try:
                first = receive_nowait()
            except trio.WouldBlock:
                pass
        if first is None:
            # No body yet (one may never start): the node gets the head at once, so that its
            # app answers it (a 405) or times the body out, as with one process.
            first = {"type": "http.request", "body": b"", "more_body": True}
        elif first["type"] != "http.request":
            return  # the client left before its request began
        rid = next(self.ids)
        exchange = _WorkerExchange()
        self.exchanges[rid] = exchange
        more = first.get("more_body", False)
        client, server = scope.get("client"), scope.get("server")
        self.link.write(
            [
                OPEN,
                rid,
                scope["method"],
                scope["scheme"],
                scope["http_version"],
                scope["path"],
                scope["raw_path"],
                scope["query_string"],
                scope["headers"],
                list(client) if client else None,
                list(server) if server else None,
                first.get("body", b""),
                more,
            ]
        )
        try:
            if more:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._forward, rid, receive)
                    await self._answer(exchange, send, rid)
                    nursery.cancel_scope.cancel()
            # Complete: the node holds a later disconnect anyway (App), so none is sent, unless
            # the answer turns out to be a stream, which must end with its client.
            elif await self._answer(exchange, send, rid, until_stream=True):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._forward, rid, receive)
                    await self._answer(exchange, send, rid)
                    nursery.cancel_scope.cancel()
        finally:
            del self.exchanges[rid]

    async def _forward(self, rid: int, receive: Any) -> None:
        """Forward the request's body, then its client's disconnect (until the answer is
        complete, when the caller cancels this): a stream must end with its client, and the
        node's app holds a disconnect that follows a complete request of any other kind."""
        while True:
            message = await receive()
            if message["type"] == "http.request":
                more = message.get("more_body", False)
                self.link.write([BODY, rid, message.get("body", b""), more])
            else:
                self.link.write([DISCONNECT, rid])
                return

    async def _answer(
        self, exchange: _WorkerExchange, send: Any, rid: int, *, until_stream: bool = False
    ) -> bool:
        """Write the node's answer; with ``until_stream``, return True after its first body
        frame with ``more_body`` (a stream: the caller goes on, listening for a disconnect),
        else False once the answer is complete."""
        while True:
            message = await exchange.next()
            kind = message[0]
            if kind == RESPONSE:
                status, headers, body, more = message[2:6]
                await send(
                    {
                        "type": "http.response.start",
                        "status": status,
                        "headers": headers,
                    }
                )
                await send({"type": "http.response.body", "body": body, "more_body": more})
            elif kind == BODY:
                body, more = message[2:4]
                await send({"type": "http.response.body", "body": body, "more_body": more})
            else:  # END: the node's app returned without an answer
                return False
            if not more:
                return False
            # Written to the client (or the client is gone): the node may send more.
            self.link.write([ACK, rid, len(body)])
            if until_stream:
                return True


async def _serve_worker(args: argparse.Namespace) -> None:
    from hypercorn.config import Sockets
    from hypercorn.trio.run import worker_serve
    from hypercorn.utils import wrap_app

    from dengine_trio.api import hypercorn_config
    from dengine_trio.config import http_ssl_context

    http = HttpConfig(**json.loads(args.http))
    link = _Link(socket.socket(fileno=args.link_fd))
    connections = SharedConnectionCount(args.counts_fd, args.workers, args.slot)
    bridge = _WorkerBridge(link)
    hypercorn = hypercorn_config(
        socket.socket(fileno=args.listen_fd),
        backlog=http.listen_backlog,
        access_log=args.access_log,
        ssl_context=http_ssl_context(http),
        max_header_bytes=http.max_header_bytes,
        max_connections=http.max_connections,
        tls_handshake_timeout_s=http.tls_handshake_timeout_ms / 1000,
        idle_timeout_s=http.idle_timeout_ms / 1000,
        connections=connections,
    )
    # Served from a socket object of ours (hypercorn_config took the descriptor for its
    # bind). Hypercorn's accept loop (trio.serve_listeners) closes it the moment the stop
    # cancels that loop, so connects are refused from then on. Nothing may run between the
    # stop and that close: a blocking step there (an import that took 0.3-0.7 s on a loaded
    # machine) left the socket listening with no one accepting, and every connect queued in
    # that time was reset at the close (a write neither answered nor refused:
    # tests/e2e/test_newcomer_http_workers.py, 1 run in 2-6 failed).
    listener = socket.socket(fileno=args.listen_fd)
    secure = hypercorn.ssl_enabled
    sockets = Sockets([listener] if secure else [], [] if secure else [listener], [])
    app = wrap_app(bridge, hypercorn.wsgi_max_body_size, "asgi")
    stop = trio.Event()
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:

            async def watch_signals() -> None:
                async for signum in signals:
                    if signum == signal.SIGTERM:
                        stop.set()
                    # SIGINT and SIGHUP reach the node's whole process group (Ctrl+C, a
                    # closed terminal): the node decides, and stops its workers with SIGTERM.

            async def watch_link() -> None:
                await link.read(bridge.on_message)
                # The node is gone (or closed the link): nothing can be answered any more.
                log.info("HTTP worker %s: the node closed the link; exiting", args.slot)
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch_signals)
            nursery.start_soon(watch_link)
            nursery.start_soon(link.pump)
            async with trio.open_nursery() as server:
                serve = partial(
                    worker_serve, app, hypercorn, sockets=sockets, shutdown_trigger=stop.wait
                )
                await server.start(serve)
                link.write([READY, 0])
                log.info("HTTP worker %s (pid %d) serving", args.slot, os.getpid())
                gc_tuning.freeze_startup()
            # Hypercorn has stopped gracefully (every answer in flight written).
            nursery.cancel_scope.cancel()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dengine_trio.api.workers``: one HTTP worker, started by the node."""
    from dengine_trio.log import parse_level, setup_logging

    parser = argparse.ArgumentParser(prog="python -m dengine_trio.api.workers")
    parser.add_argument("--listen-fd", type=int, required=True)
    parser.add_argument("--link-fd", type=int, required=True)
    parser.add_argument("--counts-fd", type=int, required=True)
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--slot", type=int, default=0)
    parser.add_argument("--http", required=True, help="the node's [http] settings, JSON")
    parser.add_argument("--node-id", type=int, default=0)
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--log-format", default="text")
    parser.add_argument("--access-log", action="store_true")
    args = parser.parse_args(argv)
    setup_logging(parse_level(args.log_level), args.node_id, args.log_format)
    gc_tuning.tune_for_serving()
    try:
        trio.run(partial(_serve_worker, args))
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
