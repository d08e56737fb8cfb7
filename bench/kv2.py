"""The KV API's second edition under load (issue 17), ours and etcd side by side.

* **CAS**: ``connections`` keep-alive connections, each owning one key and replacing its value
  on the condition that it is still the one it wrote last: ours ``POST /kv`` with
  ``prev_index`` (the index the previous write answered), etcd ``/v3/kv/txn`` comparing the
  key's ``mod_revision`` with the revision its previous write answered. Every request must
  succeed (a failed compare counts as an error).
* **txn of 16 puts**: ``POST /txn`` with no compare and 16 puts (distinct keys per request)
  against etcd's ``/v3/kv/txn`` of 16 ``request_put`` (base64 keys and values, as its JSON
  gateway wants). Throughput is counted in writes (16 per request); latency per request.
* **watch fan-out**: ``watchers`` streams on one prefix on the leader (ours ``GET /watch``,
  Server-Sent Events; etcd ``POST /v3/watch``, a chunked JSON stream), then ``writes``
  distinct keys under that prefix written by 4 writers. Measured: events delivered per second
  (all watchers together, from the first write sent to the last event received) and the delay
  of each event after its write was acknowledged to the writer (p50, p99; the write's ack is
  the client's view of its commit). Every watcher must see every write.

The client is a small HTTP/1.1 keep-alive client on raw trio sockets, in the benchmark's
process: the same for both systems, and cheaper than a general-purpose client (which would be
the bottleneck on a small machine). Every run is bounded in count and in time.
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path

import trio

from bench.measure import Run, percentile, run_from_latencies

WATCH_PREFIX = "wf/"
VALUE = "x" * 64


class LoadError(Exception):
    """A request failed in a way the load cannot go on from."""


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def unb64(text: str) -> str:
    return base64.b64decode(text).decode()


def prefix_end(prefix: str) -> str:
    """etcd's range_end for a prefix: the prefix with its last byte incremented."""
    raw = prefix.encode()
    return base64.b64encode(raw[:-1] + bytes([raw[-1] + 1])).decode()


# ---------------------------------------------------------------------------- raw HTTP/1.1


class Connection:
    """One keep-alive HTTP/1.1 connection to 127.0.0.1:``port`` (no TLS, no redirects)."""

    def __init__(self, stream: trio.SocketStream, host: str) -> None:
        self.stream = stream
        self.host = host
        self.buffer = bytearray()

    @classmethod
    async def open(cls, url: str) -> Connection:
        host = url.removeprefix("http://").rstrip("/")
        name, port = host.rsplit(":", 1)
        stream = await trio.open_tcp_stream(name, int(port))
        return cls(stream, host)

    async def aclose(self) -> None:
        await self.stream.aclose()

    async def _fill(self) -> None:
        chunk = await self.stream.receive_some(65536)
        if not chunk:
            raise LoadError("connection closed by the server")
        self.buffer += chunk

    async def _line(self) -> bytes:
        while True:
            end = self.buffer.find(b"\r\n")
            if end >= 0:
                line = bytes(self.buffer[:end])
                del self.buffer[: end + 2]
                return line
            await self._fill()

    async def _exactly(self, n: int) -> bytes:
        while len(self.buffer) < n:
            await self._fill()
        data = bytes(self.buffer[:n])
        del self.buffer[:n]
        return data

    async def send(self, method: str, path: str, body: bytes = b"") -> None:
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        await self.stream.send_all(head.encode() + body)

    async def head(self) -> tuple[int, dict[str, str]]:
        status_line = await self._line()
        status = int(status_line.split()[1])
        headers: dict[str, str] = {}
        while line := await self._line():
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        return status, headers

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        """One request, its whole answer (Content-Length or chunked)."""
        await self.send(method, path, body)
        status, headers = await self.head()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while chunk := await self.chunk():
                parts.append(chunk)
            return status, b"".join(parts)
        return status, await self._exactly(int(headers.get("content-length", "0")))

    async def chunk(self) -> bytes:
        """The next chunk of a chunked body (b"" at its end)."""
        size = int((await self._line()).split(b";")[0], 16)
        if size == 0:
            await self._line()
            return b""
        data = await self._exactly(size)
        await self._line()
        return data


# ---------------------------------------------------------------------------- CAS and txn


@dataclass
class Side:
    """How one system spells the operations (``ours`` or ``etcd``)."""

    name: str
    url: str

    @property
    def etcd(self) -> bool:
        return self.name == "etcd"

    def put(self, key: str, value: str) -> tuple[str, bytes]:
        if self.etcd:
            return "/v3/kv/put", json.dumps({"key": b64(key), "value": b64(value)}).encode()
        return "/kv", json.dumps({"key": key, "value": value}).encode()

    def cas(self, key: str, value: str, prev: int) -> tuple[str, bytes]:
        if self.etcd:
            body = {
                "compare": [
                    {"key": b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": prev}
                ],
                "success": [{"request_put": {"key": b64(key), "value": b64(value)}}],
            }
            return "/v3/kv/txn", json.dumps(body).encode()
        return "/kv", json.dumps({"key": key, "value": value, "prev_index": prev}).encode()

    def txn(self, keys: list[str], value: str) -> tuple[str, bytes]:
        if self.etcd:
            ops = [{"request_put": {"key": b64(k), "value": b64(value)}} for k in keys]
            return "/v3/kv/txn", json.dumps({"success": ops}).encode()
        ops2 = [{"op": "put", "key": k, "value": value} for k in keys]
        return "/txn", json.dumps({"compare": [], "success": ops2}).encode()

    def index_of(self, body: bytes, txn: bool) -> int:
        """The index (revision) a write answered; LoadError if a compare failed."""
        doc = json.loads(body)
        if self.etcd:
            if txn and not doc.get("succeeded"):
                raise LoadError(f"etcd txn did not succeed: {body[:200]!r}")
            return int(doc["header"]["revision"])
        return int(doc["index"])


async def closed_loop(
    side: Side,
    connections: int,
    max_requests: int,
    duration_s: float,
    make: Callable[[int, int], tuple[str, bytes]],
    after: Callable[[int, int, int], None],
    ops_per_request: int = 1,
) -> Run:
    """``connections`` loops of sequential POSTs: ``make(conn, seq)`` gives the path and body,
    ``after(conn, seq, index)`` takes the answer's index. Bounded by ``max_requests`` in all
    and by ``duration_s``. Throughput in operations (``ops_per_request`` per request)."""
    latencies: list[float] = []
    errors = 0
    sent = 0
    deadline = time.monotonic() + duration_s

    async def loop(conn_no: int) -> None:
        nonlocal errors, sent
        conn = await Connection.open(side.url)
        try:
            seq = 0
            while sent < max_requests and time.monotonic() < deadline:
                sent += 1
                path, body = make(conn_no, seq)
                t = time.monotonic()
                status, answer = await conn.request("POST", path, body)
                latencies.append(time.monotonic() - t)
                if status != 200:
                    errors += 1
                    if errors > 100:
                        raise LoadError(f"{side.name} {path}: {status} {answer[:200]!r}")
                    continue
                after(conn_no, seq, side.index_of(answer, path.endswith("txn")))
                seq += 1
        finally:
            await conn.aclose()

    started = time.monotonic()
    with trio.fail_after(duration_s + 30):
        async with trio.open_nursery() as nursery:
            for conn_no in range(connections):
                nursery.start_soon(loop, conn_no)
    elapsed = time.monotonic() - started
    run = run_from_latencies(len(latencies) * ops_per_request, elapsed, latencies)
    return Run(run.ops, run.elapsed_s, run.p50_s, run.p99_s, errors)


async def cas_run(
    side: Side, *, connections: int, max_requests: int, duration_s: float, tag: str
) -> Run:
    """Compare-and-swap loops, one key per connection (see the module docstring)."""
    keys = [f"cas-{tag}-{i}" for i in range(connections)]
    prev: list[int] = []
    for key in keys:  # the first write of each key, not measured
        conn = await Connection.open(side.url)
        try:
            path, body = side.put(key, VALUE)
            status, answer = await conn.request("POST", path, body)
            if status != 200:
                raise LoadError(f"{side.name} put: {status} {answer[:200]!r}")
            prev.append(side.index_of(answer, False))
        finally:
            await conn.aclose()

    def make(conn: int, seq: int) -> tuple[str, bytes]:
        return side.cas(keys[conn], f"{VALUE}{seq}", prev[conn])

    def after(conn: int, seq: int, index: int) -> None:
        prev[conn] = index

    return await closed_loop(side, connections, max_requests, duration_s, make, after)


async def txn_run(
    side: Side, *, connections: int, max_requests: int, duration_s: float, tag: str, ops: int
) -> Run:
    """Transactions of ``ops`` puts of distinct keys; throughput in writes."""

    def make(conn: int, seq: int) -> tuple[str, bytes]:
        return side.txn([f"txn-{tag}-{conn}-{seq}-{i}" for i in range(ops)], VALUE)

    def after(conn: int, seq: int, index: int) -> None:
        pass

    return await closed_loop(side, connections, max_requests, duration_s, make, after, ops)


# ---------------------------------------------------------------------------- watch fan-out


@dataclass
class Fanout:
    received: list[dict[int, float]] = field(default_factory=list)
    """Per watcher: index -> first time an event of that index arrived."""
    acked: dict[int, float] = field(default_factory=dict)
    """index -> when its write was acknowledged to the writer."""
    events: int = 0


async def watch_stream(
    side: Side, seen: dict[int, float], ready: trio.Event, fanout: Fanout
) -> None:
    """One watcher on WATCH_PREFIX until cancelled, recording when each index arrives."""
    conn = await Connection.open(side.url)
    try:
        if side.etcd:
            body = json.dumps(
                {
                    "create_request": {
                        "key": b64(WATCH_PREFIX),
                        "range_end": prefix_end(WATCH_PREFIX),
                    }
                }
            ).encode()
            await conn.send("POST", "/v3/watch", body)
        else:
            await conn.send("GET", f"/watch?prefix={WATCH_PREFIX}")
        status, headers = await conn.head()
        if status != 200:
            raise LoadError(f"{side.name} watch answered {status}")
        chunked = headers.get("transfer-encoding", "").lower() == "chunked"
        pending = b""
        first = True
        while True:
            if chunked:
                data = await conn.chunk()
                if not data:
                    raise LoadError(f"{side.name} watch stream ended")
            else:
                if not conn.buffer:
                    await conn._fill()
                data = bytes(conn.buffer)
                conn.buffer.clear()
            now = time.monotonic()
            pending += data
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if side.etcd:
                    line = line.strip()
                    if not line:
                        continue
                    result = json.loads(line).get("result", {})
                    if first and result.get("created"):
                        first = False
                        ready.set()
                    for event in result.get("events", []):
                        index = int(event["kv"]["mod_revision"])
                        seen.setdefault(index, now)
                        fanout.events += 1
                elif line.startswith(b"data:"):
                    index = int(json.loads(line[5:])["index"])
                    seen.setdefault(index, now)
                    fanout.events += 1
            if not side.etcd and first:
                # Our stream answers its headers once the watch is registered.
                first = False
                ready.set()
    finally:
        await conn.aclose()


async def watch_run(
    side: Side, *, watchers: int, writes: int, writers: int, tag: str, timeout_s: float
) -> Run:
    """``watchers`` streams, then ``writes`` writes by ``writers``: events/s delivered and the
    delay from each write's acknowledgement to its event (p50, p99 over every watcher's)."""
    fanout = Fanout()
    ready_events = [trio.Event() for _ in range(watchers)]
    with trio.fail_after(timeout_s):
        async with trio.open_nursery() as nursery:
            for ready in ready_events:
                seen: dict[int, float] = {}
                fanout.received.append(seen)
                nursery.start_soon(watch_stream, side, seen, ready, fanout)
            for ready in ready_events:
                await ready.wait()
            if not side.etcd:
                await trio.sleep(0.2)  # headers go out as the watch registers: a margin
            started = time.monotonic()
            counter = iter(range(writes))

            async def writer() -> None:
                conn = await Connection.open(side.url)
                try:
                    for n in counter:
                        path, body = side.put(f"{WATCH_PREFIX}{tag}-{n}", VALUE)
                        status, answer = await conn.request("POST", path, body)
                        if status != 200:
                            raise LoadError(f"{side.name} put: {status} {answer[:200]!r}")
                        fanout.acked[side.index_of(answer, False)] = time.monotonic()
                finally:
                    await conn.aclose()

            async with trio.open_nursery() as inner:
                for _ in range(writers):
                    inner.start_soon(writer)
            while not all(len(seen) >= writes for seen in fanout.received):
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    last = max(max(seen.values()) for seen in fanout.received)
    delays = sorted(
        seen[index] - acked
        for seen in fanout.received
        for index, acked in fanout.acked.items()
        if index in seen
    )
    return Run(
        ops=fanout.events,
        elapsed_s=last - started,
        p50_s=percentile(delays, 50),
        p99_s=percentile(delays, 99),
    )


# ---------------------------------------------------------------------------- standalone


async def standalone(args: argparse.Namespace) -> None:
    """Our three nodes (``bench.http_side``'s, 1 HTTP worker) and etcd if installed; each
    load once a round on each side, alternating."""
    from bench import http_side

    root = Path(tempfile.mkdtemp(prefix="dengine-bench-kv2-"))
    try:
        async with AsyncExitStack() as stack:
            ours = await stack.enter_async_context(http_side.our_cluster(root, 1))
            sides = [Side("ours", next(t.url for t in ours if t.system == "ours (leader)"))]
            etcd = shutil.which("etcd")
            if etcd and not args.no_etcd:
                targets = await stack.enter_async_context(http_side.etcd_cluster(root, etcd))
                sides.append(Side("etcd", targets[0].url))
            for round_no in range(1, args.rounds + 1):
                for side in sides:
                    for name, run in await one_round(side, args, f"r{round_no}"):
                        print(f"round {round_no} {side.name} {name}: {describe(run)}", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def one_round(side: Side, args: argparse.Namespace, tag: str) -> list[tuple[str, Run]]:
    """CAS, txn of ``args.txn_ops`` puts and watch fan-out, once each on ``side``."""
    out = []
    common = {"connections": args.connections, "max_requests": args.max_requests}
    out.append(("CAS", await cas_run(side, duration_s=args.seconds, tag=tag, **common)))
    out.append(
        (
            f"txn of {args.txn_ops} puts",
            await txn_run(side, duration_s=args.seconds, tag=tag, ops=args.txn_ops, **common),
        )
    )
    out.append(
        (
            f"watch fan-out ({args.watchers} watchers)",
            await watch_run(
                side,
                watchers=args.watchers,
                writes=args.watch_writes,
                writers=4,
                tag=tag,
                timeout_s=120.0,
            ),
        )
    )
    return out


def describe(run: Run) -> str:
    return (
        f"{run.throughput:,.0f}/s, p50 {run.p50_s * 1000:.2f} ms, p99 {run.p99_s * 1000:.2f} ms"
        + (f", {run.errors} errors" if run.errors else "")
    )


def add_arguments(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    add = parser.add_argument
    add(f"--{prefix}connections", type=int, default=16, help="CAS and txn connections")
    add(f"--{prefix}seconds", type=float, default=3.0, help="duration bound of a CAS/txn run")
    add(f"--{prefix}max-requests", type=int, default=20_000, help="count bound of a CAS/txn run")
    add(f"--{prefix}txn-ops", type=int, default=16, help="puts per transaction")
    add(f"--{prefix}watchers", type=int, default=100)
    add(f"--{prefix}watch-writes", type=int, default=300, help="writes a watch run makes")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.kv2")
    add_arguments(parser)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--no-etcd", action="store_true")
    args = parser.parse_args(argv)
    trio.run(standalone, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
