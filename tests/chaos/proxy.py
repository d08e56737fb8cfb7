"""A fault-injecting TCP proxy for the Raft links between node processes.

Every node lists the same ``initial_cluster`` addresses (the cluster id hashes them, so all
nodes must agree), and those addresses are this proxy's front ports: one per node, forwarding to
that node's real ``listen_address``. Links are unidirectional (a node dials each peer for its
own outbound messages), and the dialer's first frame is its ``Hello``, which names it. So each
connection is attributed to one ordered pair ``(src, dst)`` and the nemesis controls every
direction of every link on its own:

- ``PASS``: bytes flow (after ``delay_s`` in each direction, order kept);
- ``CUT``: open connections are closed, new ones are closed right after their ``Hello``;
- ``BLACKHOLE``: bytes are accepted and swallowed; the dialer sees a silent peer. A connection
  that swallowed anything is closed when the link leaves ``BLACKHOLE``: it lost part of a frame,
  so forwarding on it again would hand the receiver a corrupt stream.

The proxy runs as a task in the test's own trio loop; ``set_link`` and friends are plain
synchronous calls from any task of that loop.
"""

from __future__ import annotations

import math
import struct
from collections import Counter
from enum import Enum
from functools import partial

import attrs
import trio

from dengine_trio.wire import CodecError, Hello, decode
from dengine_trio.wire.frames import HEADER_BYTES

__all__ = ["HELLO_TIMEOUT_S", "LinkFault", "LinkMode", "ProxyNetwork"]

HELLO_TIMEOUT_S = 10.0
MAX_HELLO_BYTES = 4096
CONNECT_TIMEOUT_S = 5.0
RECEIVE_BYTES = 64 * 1024
_STREAM_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


class LinkMode(str, Enum):
    PASS = "pass"
    CUT = "cut"
    BLACKHOLE = "blackhole"


@attrs.frozen
class LinkFault:
    """What one direction of one link does; the default is a healthy link."""

    mode: LinkMode = LinkMode.PASS
    delay_s: float = 0.0


HEALTHY = LinkFault()


@attrs.define(eq=False)
class _Connection:
    src: int
    dst: int
    scope: trio.CancelScope
    swallowed: bool = False


class ProxyNetwork:
    """Front ports for every node, forwarding to the nodes' real Raft ports.

    ``backends`` maps node id to its real ``(host, port)``; ``fronts`` maps node id to the
    port this proxy listens on for it (on ``host``). Start it with ``nursery.start(net.run)``.
    """

    def __init__(
        self, backends: dict[int, tuple[str, int]], fronts: dict[int, int], host: str = "127.0.0.1"
    ) -> None:
        if set(backends) != set(fronts):
            raise ValueError("backends and fronts must name the same nodes")
        self.host = host
        self.backends = dict(backends)
        self.fronts = dict(fronts)
        self.nodes = sorted(backends)
        self._faults: dict[tuple[int, int], LinkFault] = {}
        self._connections: dict[tuple[int, int], set[_Connection]] = {}
        self.stats: Counter[str] = Counter()
        """``connections``, ``refused`` (cut at connect), ``closed_by_fault``, ``bytes_forwarded``,
        ``bytes_swallowed``, ``unattributed`` (no valid Hello)."""

    # -- control ---------------------------------------------------------------------------

    def address(self, node_id: int) -> str:
        """The address every node dials to reach ``node_id`` (for ``initial_cluster``)."""
        return f"{self.host}:{self.fronts[node_id]}"

    def fault(self, src: int, dst: int) -> LinkFault:
        return self._faults.get((src, dst), HEALTHY)

    def set_link(self, src: int, dst: int, fault: LinkFault) -> None:
        """Make the direction ``src -> dst`` behave as ``fault`` from now on."""
        if src == dst or src not in self.backends or dst not in self.backends:
            raise ValueError(f"no link {src} -> {dst}")
        link = (src, dst)
        if fault == HEALTHY:
            self._faults.pop(link, None)
        else:
            self._faults[link] = fault
        for conn in list(self._connections.get(link, ())):
            if fault.mode is LinkMode.CUT or (
                fault.mode is not LinkMode.BLACKHOLE and conn.swallowed
            ):
                self.stats["closed_by_fault"] += 1
                conn.scope.cancel()

    def set_links(self, links: list[tuple[int, int]], fault: LinkFault) -> None:
        for src, dst in links:
            self.set_link(src, dst, fault)

    def links_of(
        self, node_id: int, *, outbound: bool = True, inbound: bool = True
    ) -> list[tuple[int, int]]:
        """The directions touching ``node_id``: from it, to it, or both."""
        others = [n for n in self.nodes if n != node_id]
        links = [(node_id, n) for n in others] if outbound else []
        return links + ([(n, node_id) for n in others] if inbound else [])

    def all_links(self) -> list[tuple[int, int]]:
        return [(a, b) for a in self.nodes for b in self.nodes if a != b]

    def heal(self) -> None:
        """Every link healthy again."""
        for src, dst in self.all_links():
            self.set_link(src, dst, HEALTHY)

    def open_connections(self, src: int, dst: int) -> int:
        return len(self._connections.get((src, dst), ()))

    # -- running ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on every front port and serve until cancelled."""
        async with trio.open_nursery() as nursery:
            for dst in self.nodes:
                listeners = await trio.open_tcp_listeners(self.fronts[dst], host=self.host)
                await nursery.start(
                    partial(
                        trio.serve_listeners,
                        partial(self._serve, dst),
                        listeners,
                        handler_nursery=nursery,
                    )
                )
            task_status.started()

    async def _serve(self, dst: int, client: trio.SocketStream) -> None:
        async with client:
            hello = await self._read_hello(client)
            if hello is None:
                self.stats["unattributed"] += 1
                return
            src, first_bytes = hello
            link = (src, dst)
            if self.fault(src, dst).mode is LinkMode.CUT:
                self.stats["refused"] += 1
                return
            self.stats["connections"] += 1
            with trio.CancelScope() as scope:
                conn = _Connection(src, dst, scope)
                self._connections.setdefault(link, set()).add(conn)
                try:
                    await self._carry(conn, client, first_bytes)
                finally:
                    self._connections[link].discard(conn)

    async def _read_hello(self, client: trio.SocketStream) -> tuple[int, bytes] | None:
        """The dialer's node id and every byte read so far (Hello included), or None.

        Only the first frame is parsed: whatever follows it is the link's business."""
        received = bytearray()
        hello_end = 0
        try:
            with trio.move_on_after(HELLO_TIMEOUT_S):
                while not hello_end or len(received) < hello_end:
                    data = await client.receive_some(RECEIVE_BYTES)
                    if not data:
                        return None
                    received += data
                    if not hello_end and len(received) >= HEADER_BYTES:
                        (size,) = struct.unpack_from(">I", received)
                        if size > MAX_HELLO_BYTES:
                            return None
                        hello_end = HEADER_BYTES + size
            if not hello_end or len(received) < hello_end:
                return None
            hello = decode(bytes(received[HEADER_BYTES:hello_end]))
        except (*_STREAM_ERRORS, CodecError):
            return None
        if type(hello) is not Hello:
            return None
        return hello.src, bytes(received)

    async def _carry(self, conn: _Connection, client: trio.SocketStream, first: bytes) -> None:
        if self.fault(conn.src, conn.dst).mode is LinkMode.BLACKHOLE:
            # A silent peer from the start: no backend connection at all.
            conn.swallowed = True
            self.stats["bytes_swallowed"] += len(first)
            await self._swallow(client)
            return
        host, port = self.backends[conn.dst]
        try:
            with trio.fail_after(CONNECT_TIMEOUT_S):
                backend = await trio.open_tcp_stream(host, port)
        except (OSError, trio.TooSlowError):
            return  # the node is down: the dialer sees its connection closed, as it would
        async with backend, trio.open_nursery() as nursery:
            nursery.start_soon(self._pump, conn, client, backend, first, nursery.cancel_scope)
            nursery.start_soon(self._pump, conn, backend, client, b"", nursery.cancel_scope)

    async def _swallow(self, stream: trio.SocketStream) -> None:
        try:
            while data := await stream.receive_some(RECEIVE_BYTES):
                self.stats["bytes_swallowed"] += len(data)
        except _STREAM_ERRORS:
            pass

    async def _pump(
        self,
        conn: _Connection,
        source: trio.SocketStream,
        sink: trio.SocketStream,
        first: bytes,
        done: trio.CancelScope,
    ) -> None:
        """One direction of one connection. At EOF the bytes still delayed are delivered, then
        the connection ends; an error on either socket ends it at once."""
        send, receive = trio.open_memory_channel[tuple[float, bytes]](math.inf)

        async def deliver() -> None:
            try:
                async with receive:
                    async for at, data in receive:
                        await trio.sleep_until(at)
                        await sink.send_all(data)
                        self.stats["bytes_forwarded"] += len(data)
            except _STREAM_ERRORS:
                done.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(deliver)
            async with send:
                try:
                    data = first
                    while True:
                        if data:
                            fault = self.fault(conn.src, conn.dst)
                            if fault.mode is LinkMode.PASS and not conn.swallowed:
                                send.send_nowait((trio.current_time() + fault.delay_s, data))
                            else:
                                conn.swallowed = True
                                self.stats["bytes_swallowed"] += len(data)
                        data = await source.receive_some(RECEIVE_BYTES)
                        if not data:
                            break
                except _STREAM_ERRORS:
                    done.cancel()
        done.cancel()
