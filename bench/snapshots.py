"""Snapshots and log compaction on three node processes (issue 13): memory, disk, restart,
catch-up, the cost of one snapshot, and 64 writers against PySyncObj with both compacting.

    .venv/bin/python -m bench.snapshots [--puts 1000000] [--keys 1000] [--down-for 200000]
        [--today-puts 50000,200000] [--snapshot-keys 1000000] [--rounds 9] [--json FILE]

Every cluster is three processes on 127.0.0.1 (real TCP): a worker process of this module
runs node 1 with ``EmbeddedEngine`` and the client (node 1 leads, made so by its shorter
election timeout as in ``bench.write``), nodes 2 and 3 are ``python -m dengine_trio``
processes it starts, stops and restarts one by one. Values are 256 bytes, MemFirst (the
mission's batch flush). Parts, each on a fresh cluster in a fresh worker process (so no part
inherits another's memory):

1. **Overwrites**, ``[raft.snapshot]`` as shipped (``enable = true``, a snapshot every
   10,000 entries): 64 writers put ``--puts`` overwrites of ``--keys`` keys; node 3 is stopped
   (SIGTERM) before the last ``--down-for`` of them. Then: RSS of nodes 1 and 2 (node 1's
   includes the client), WAL and snapshot bytes on each node's disk; node 3 restarted: its
   catch-up time (process start to ``/status`` showing a leader and the leader's commit index
   applied); node 2 stopped and restarted: its restart-to-ready time (the same condition, with
   nothing to catch up).
2. **Today's code**: the same with ``enable = false`` (the log is never compacted: how the
   code before issue 13 behaved) at the ``--today-puts`` counts, each with a fifth of them
   written while node 3 is down; each figure is extrapolated to ``--puts`` and ``--down-for``
   by a straight line through the two measured points (the issue's table did the same).
3. **One snapshot of ``--snapshot-keys`` keys**: the cluster is filled with that many distinct
   keys (automatic snapshots at 45% and 90% of the fill, then none during the measurement);
   64 writers overwrite them while node 1 takes a snapshot (``EmbeddedEngine.take_snapshot``):
   its time and bytes, the put latencies while it is taken against those before, node 1's
   event-loop lateness (1 ms sleeps) and whether any node's term moved (an election).
4. **64 writers against PySyncObj, both compacting** (``bench.embedded_side``,
   ``bench.pysyncobj_side`` workers): ours with snapshots on and off, PySyncObj with its log
   compaction on (its default: a forked dump every 5,000 entries) and off; ``--rounds``
   rounds, the sides alternating and the first side rotating, ``--compare-puts`` puts a run.
   Medians per side and ratios of medians.

Every load loop is bounded in count (tickets) and in time (``--phase-timeout``), the whole
run by ``--max-minutes``; temporary directories are removed and every process group ended.
``make bench`` runs parts 1-3 at a bounded size through ``bench.suite``
(``--snapshot-puts``). A measurement script, not a test: no assertion on time.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import trio

from bench.measure import percentile, ratio
from bench.procs import Worker, WorkerError, send_result, worker
from bench.report import Target, cpu_model
from bench.write import (
    FOLLOWER_ELECTION_SETTINGS,
    VALUE,
    BenchError,
    tail,
    wait_until_leader,
)
from dengine_trio import Client, EmbeddedEngine, load_config
from dengine_trio.raft.config import Durability

STOP_TIMEOUT_S = 10.0
POLL_S = 0.005
"""How often a restarted node's ``/status`` is asked while its time is measured."""
STATUS_TIMEOUT_S = 1.0
START_ATTEMPTS = 3
RESTARTS = 3
"""Restarts of node 2 whose median is its restart-to-ready time."""
WORKER_READY_S = 120.0
RSS_GOAL_MIB = 100
RESTART_GOAL_S = 1.0
CATCH_UP_GOAL_S = 3.0
SNAPSHOT_P99_GOAL_MS = 50.0
COMPARE_GOAL = 1.5
WARMUP_S = 0.2


def progress(message: str) -> None:
    print(f"  .. {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- node processes


def as_int(value: object) -> int:
    """A status field that is an int (``EmbeddedEngine.status`` types its values as object)."""
    if not isinstance(value, int):
        raise BenchError(f"expected an int in the status, got {value!r}")
    return value


def memory_mib(pid: int) -> dict[str, float]:
    """``VmRSS`` (now) and ``VmHWM`` (the peak) of a process, in MiB."""
    found: dict[str, float] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                found[name] = int(value.split()[0]) / 1024
    return {"rss_mib": found.get("VmRSS", math.nan), "peak_mib": found.get("VmHWM", math.nan)}


def disk_bytes(db: Path, snapshots: Path) -> dict[str, int]:
    """Apparent bytes of the files under ``db`` (WAL, hard state) and ``snapshots``."""
    wal = snap = 0
    seen: set[Path] = set()
    for top in (snapshots, db):
        if not top.exists():
            continue
        for path in top.rglob("*"):
            if path in seen:
                continue
            seen.add(path)
            try:
                if not path.is_file():
                    continue
                size = path.stat().st_size
            except FileNotFoundError:  # removed while we walked (compaction, old snapshots)
                continue
            if top == snapshots or snapshots in path.parents:
                snap += size
            else:
                wal += size
    return {"wal_bytes": wal, "snapshot_bytes": snap}


async def http_status(port: int) -> dict[str, Any] | None:
    """``GET /status`` of a node's health port; None if it does not answer 200 in time."""
    data = bytearray()
    try:
        with trio.fail_after(STATUS_TIMEOUT_S):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                await stream.send_all(
                    b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
                )
                while len(data) < 1 << 20:
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        break
                    data += chunk
    except (OSError, trio.TooSlowError, trio.BrokenResourceError):
        return None
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        return None
    try:
        answer: dict[str, Any] = json.loads(body)
    except ValueError:
        return None
    return answer


@dataclass
class NodeProcess:
    """Node 2 or 3: a ``python -m dengine_trio`` process this worker starts and stops."""

    node_id: int
    config: Path
    kv_port: int
    health_port: int
    db: Path
    snapshots: Path
    log_path: Path
    process: trio.Process | None = None
    _log: IO[bytes] | None = None

    async def start(self) -> None:
        self._log = self.log_path.open("ab")
        command = [sys.executable, "-m", "dengine_trio", "--config-path", str(self.config)]
        command += ["--port", str(self.kv_port), "--health-port", str(self.health_port)]
        command += ["--host", "127.0.0.1", "--log-level", "warning"]
        self.process = await trio.lowlevel.open_process(
            command, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT
        )

    async def stop(self) -> None:
        """SIGTERM (a graceful stop: the node flushes), SIGKILL after ``STOP_TIMEOUT_S``."""
        with trio.CancelScope(shield=True):
            process, self.process = self.process, None
            if process is not None:
                if process.returncode is None:
                    process.send_signal(signal.SIGTERM)
                with trio.move_on_after(STOP_TIMEOUT_S):
                    await process.wait()
                if process.returncode is None:
                    process.kill()
                    await process.wait()
            if self._log is not None:
                self._log.close()
                self._log = None

    def check_running(self) -> None:
        if self.process is None or self.process.returncode is not None:
            code = None if self.process is None else self.process.returncode
            raise BenchError(f"node {self.node_id} is not running ({code}): {tail(self.log_path)}")

    async def status(self) -> dict[str, Any] | None:
        self.check_running()
        return await http_status(self.health_port)

    def figures(self) -> dict[str, Any]:
        found: dict[str, Any] = dict(disk_bytes(self.db, self.snapshots))
        if self.process is not None and self.process.returncode is None:
            found.update(memory_mib(self.process.pid))
        return found


@dataclass
class Cluster:
    engine: EmbeddedEngine
    client: Client
    term: int
    followers: list[NodeProcess]
    node1_db: Path
    node1_snapshots: Path
    threshold: int
    elections: list[str] = field(default_factory=list)

    def note_leader(self, phase: str) -> None:
        """Record (not abort on) an election seen from node 1: on a loaded machine a stalled
        heartbeat can cost one, and the part's figures still stand, with the note."""
        status = self.engine.status()
        term, role = as_int(status["term"]), status["role"]
        if term != self.term or role != "leader":
            self.elections.append(
                f"after {phase}: node 1 {role} in term {term} (was leader in {self.term})"
            )
            self.term = term

    def node1_figures(self) -> dict[str, Any]:
        return {
            **disk_bytes(self.node1_db, self.node1_snapshots),
            **memory_mib(os.getpid()),
        }

    async def terms(self) -> dict[int, int | None]:
        """Each node's current term (None: its ``/status`` did not answer)."""
        terms: dict[int, int | None] = {1: as_int(self.engine.status()["term"])}
        for node in self.followers:
            answer = await node.status()
            terms[node.node_id] = None if answer is None else int(answer["term"])
        return terms

    async def wait_applied(self, node: NodeProcess, index: int, timeout_s: float) -> None:
        with trio.fail_after(timeout_s):
            while True:
                answer = await node.status()
                if answer is not None and int(answer["applied_index"]) >= index:
                    return
                await trio.sleep(0.02)

    async def timed_start(self, node: NodeProcess, index: int, timeout_s: float) -> dict[str, Any]:
        """Start ``node`` and time it: its first ``/status`` answer, then ready (a leader
        known, ``index`` applied). Seconds from just before the process is spawned."""
        started = time.perf_counter()
        await node.start()
        first: float | None = None
        with trio.fail_after(timeout_s):
            while True:
                answer = await node.status()
                now = time.perf_counter() - started
                if answer is not None:
                    if first is None:
                        first = now
                    if answer.get("leader_id") is not None and answer["applied_index"] >= index:
                        return {
                            "first_status_s": first,
                            "ready_s": now,
                            "snapshot_index": answer.get("snapshot_index"),
                            "applied_index": answer["applied_index"],
                        }
                await trio.sleep(POLL_S)


async def measured_start(
    cluster: Cluster, node: NodeProcess, index: int, timeout_s: float
) -> dict[str, Any]:
    """``timed_start``, or what went wrong (the rest of the part is still measured)."""
    try:
        return await cluster.timed_start(node, index, timeout_s)
    except (trio.TooSlowError, BenchError) as exc:
        answer = await http_status(node.health_port)
        return {"error": f"{exc!r}; its /status then: {answer}", "timeout_s": timeout_s}


def write_node_configs(root: Path, snapshots: bool, threshold: int) -> list[Path]:
    from tests.support.cluster import free_ports, write_cluster

    settings = {
        "raft.persistence.strategy": Durability("MemFirst"),
        "raft.timing.request_timeout_ms": 10000,
        "raft.snapshot.enable": snapshots,
        "raft.snapshot.max_log_entries_before_snapshot": threshold,
    }
    configs = write_cluster(
        root,
        free_ports(3),
        settings,
        node_settings=lambda i: {} if i == 1 else FOLLOWER_ELECTION_SETTINGS,
        db_dir=lambda i: root / f"db{i}",
    )
    return [c.path for c in configs]


async def start_followers(root: Path, configs: list[Path]) -> list[NodeProcess]:
    from tests.support.cluster import free_ports

    ports = free_ports(2 * len(configs))
    nodes = []
    for i, config in enumerate(configs):
        loaded = load_config(config)
        node = NodeProcess(
            node_id=loaded.cluster.node_id,
            config=config,
            kv_port=ports[2 * i],
            health_port=ports[2 * i + 1],
            db=loaded.db_root_path(),
            snapshots=loaded.snapshots_path(),
            log_path=root / f"{config.stem}.log",
        )
        nodes.append(node)
        await node.start()
    return nodes


# ---------------------------------------------------------------------------- loads


async def put_load(
    client: Client,
    tickets: range,
    key_of: Callable[[int], bytes],
    writers: int,
    label: str,
    *,
    record: list[tuple[float, float]] | None = None,
    stop: trio.Event | None = None,
) -> float:
    """``writers`` tasks share ``tickets`` (one put each, key ``key_of(ticket)``); returns the
    wall time. ``record`` gets each put's (start, end) perf_counter; ``stop`` ends early."""
    it = iter(tickets)
    done = 0

    async def writer() -> None:
        nonlocal done
        for ticket in it:
            if stop is not None and stop.is_set():
                return
            key = key_of(ticket)
            begun = time.perf_counter()
            await client.put(key, VALUE)
            if record is not None:
                record.append((begun, time.perf_counter()))
            done += 1

    async def report() -> None:
        while True:
            await trio.sleep(5)
            progress(f"{label}: {done:,}/{len(tickets):,} puts")

    started = time.perf_counter()
    async with trio.open_nursery() as outer:
        outer.start_soon(report)
        async with trio.open_nursery() as nursery:
            for _ in range(writers):
                nursery.start_soon(writer)
        outer.cancel_scope.cancel()
    return time.perf_counter() - started


def overwrite_key(keys: int) -> Callable[[int], bytes]:
    return lambda ticket: b"k-%06d" % (ticket % keys)


# ---------------------------------------------------------------------------- parts (worker)


async def part_overwrites(cluster: Cluster, cmd: dict[str, Any]) -> dict[str, Any]:
    puts, keys, down_for, writers = cmd["puts"], cmd["keys"], cmd["down_for"], cmd["writers"]
    timeout_s = cmd["phase_timeout"]
    node2, node3 = cluster.followers
    key_of = overwrite_key(keys)
    base = {1: cluster.node1_figures(), 2: node2.figures(), 3: node3.figures()}
    with trio.fail_after(timeout_s):
        first = await put_load(
            cluster.client, range(puts - down_for), key_of, writers, "overwrites"
        )
    await node3.stop()
    with trio.fail_after(timeout_s):
        second = await put_load(
            cluster.client, range(puts - down_for, puts), key_of, writers, "overwrites, node 3 down"
        )
    cluster.note_leader("the overwrites")
    target = as_int(cluster.engine.status()["commit_index"])
    await cluster.wait_applied(node2, target, timeout_s)
    at_end = {1: cluster.node1_figures(), 2: node2.figures(), 3: node3.figures()}
    status1 = cluster.engine.status()
    node2_status = await node2.status() or {}
    progress(f"overwrites done: commit {target}; node 3 restarts (catch-up)")
    catch_up = await measured_start(cluster, node3, target, cmd["restart_timeout"])
    progress(f"node 3 catch-up: {catch_up}; node 2 restarts")
    restarts = []
    for _ in range(RESTARTS):  # the median of a few: one start on a loaded machine is noisy
        await node2.stop()
        restarts.append(await measured_start(cluster, node2, target, cmd["restart_timeout"]))
        progress(f"node 2 restart: {restarts[-1]}")
        if "error" in restarts[-1]:
            break
    ok = [r for r in restarts if "error" not in r]
    restart = dict(restarts[-1])
    if len(ok) == len(restarts):
        restart = {
            "ready_s": statistics.median(r["ready_s"] for r in ok),
            "first_status_s": statistics.median(r["first_status_s"] for r in ok),
            "all_ready_s": [r["ready_s"] for r in ok],
            "snapshot_index": ok[-1]["snapshot_index"],
        }
    after = {2: node2.figures(), 3: node3.figures(), 1: cluster.node1_figures()}
    cluster.note_leader("the restarts")
    terms = await cluster.terms()
    return {
        "puts": puts,
        "keys": keys,
        "down_for": down_for,
        "writers": writers,
        "put_rate": puts / (first + second),
        "commit_index": target,
        "term": cluster.term,
        "terms_at_end": terms,
        "snapshot_index": {1: status1.get("snapshot_index"), 2: node2_status.get("snapshot_index")},
        "last_log_index": {1: status1.get("last_log_index")},
        "at_start": base,
        "at_end": at_end,
        "after_restarts": after,
        "catch_up": catch_up,
        "restart": restart,
        "elections": cluster.elections,
    }


async def paced_load(
    client: Client,
    count: int,
    rate: float,
    key_of: Callable[[int], bytes],
    writers: int,
    record: list[tuple[float, float]],
    stop: trio.Event,
) -> None:
    """An open-loop load: put ``i`` is due at ``i / rate`` s, taken by the first of
    ``writers`` tasks free; ``record`` gets (due, end), so a stall's queueing counts in the
    latency. Ends after ``count`` puts or once ``stop`` is set."""
    send, receive = trio.open_memory_channel[tuple[int, float]](math.inf)

    async def pacer() -> None:
        async with send:
            t0 = time.perf_counter()
            for i in range(count):
                due = t0 + i / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    await trio.sleep(delay)
                if stop.is_set():
                    return
                send.send_nowait((i, due))

    async def writer() -> None:
        async for i, due in receive:
            await client.put(key_of(i), VALUE)
            record.append((due, time.perf_counter()))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pacer)
        for _ in range(writers):
            nursery.start_soon(writer)


async def part_snapshot(cluster: Cluster, cmd: dict[str, Any]) -> dict[str, Any]:
    keys, writers, timeout_s = cmd["keys"], cmd["writers"], cmd["phase_timeout"]
    rate = cmd["rate"]
    engine = cluster.engine
    with trio.fail_after(timeout_s):
        await put_load(cluster.client, range(keys), lambda t: b"b-%08d" % t, writers, "fill")
    cluster.note_leader("the fill")
    fill_elections = list(cluster.elections)
    cluster.elections.clear()  # from here on, only elections during the measurement count
    # A first snapshot (untimed) brings node 1's snapshot index to its applied index, so the
    # window's puts (fewer than the threshold) start no automatic one on node 1.
    with trio.fail_after(timeout_s):
        await engine.take_snapshot()
    budget = max(1, cluster.threshold - 200)
    follower_snaps_before = {
        n.node_id: (await n.status() or {}).get("snapshot_index") for n in cluster.followers
    }
    rss_before = memory_mib(os.getpid())["rss_mib"]
    records: list[tuple[float, float]] = []
    lateness: list[tuple[float, float]] = []  # (seconds late, when the sleep began)
    rss_samples: list[float] = []
    stop = trio.Event()
    terms_before = await cluster.terms()

    async def probe() -> None:
        while not stop.is_set():
            before = time.perf_counter()
            await trio.sleep(0.001)
            lateness.append((time.perf_counter() - before - 0.001, before))
            rss_samples.append(memory_mib(os.getpid())["rss_mib"])

    window: dict[str, Any] = {}

    async def snapshot_then_stop() -> None:
        await trio.sleep(cmd["before_s"])
        window["start"] = time.perf_counter()
        taken = await engine.take_snapshot()
        window["end"] = time.perf_counter()
        window["bytes"] = taken.size_bytes
        window["index"] = taken.last_index
        await trio.sleep(cmd["after_s"])
        stop.set()

    key_count = keys
    load_started = time.perf_counter()
    with trio.fail_after(timeout_s):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(probe)
            nursery.start_soon(snapshot_then_stop)
            await paced_load(
                cluster.client,
                budget,
                rate,
                lambda t: b"b-%08d" % (t * 7919 % key_count),
                writers,
                records,
                stop,
            )
            if "end" not in window:
                window["note"] = (
                    f"the window's {budget:,} puts (the threshold's budget) ran out before the "
                    "snapshot ended"
                )
                await stop.wait()
            stop.set()
    cluster.note_leader("the snapshot")
    terms_after = await cluster.terms()
    follower_snaps_after = {
        n.node_id: (await n.status() or {}).get("snapshot_index") for n in cluster.followers
    }
    moved = {
        node: (term, terms_after.get(node))
        for node, term in terms_before.items()
        if term is not None and terms_after.get(node) not in (None, term)
    }
    start, end = window["start"], window["end"]
    during = sorted(b - a for a, b in records if b >= start and a <= end)
    # The baseline leaves out the load's first WARMUP_S.
    before = sorted(b - a for a, b in records if b < start and a >= load_started + WARMUP_S)
    after = sorted(b - a for a, b in records if a > end)
    late_during = sorted(x for x, at in lateness if start <= at <= end)

    def stats(lat: list[float]) -> dict[str, Any]:
        return {
            "puts": len(lat),
            "p50_ms": percentile(lat, 50) * 1000,
            "p99_ms": percentile(lat, 99) * 1000,
            "max_ms": (lat[-1] if lat else math.nan) * 1000,
        }

    return {
        "keys": keys,
        "writers": writers,
        "rate": rate,
        "threshold": cluster.threshold,
        "take_s": end - start,
        "bytes": window["bytes"],
        "index": window["index"],
        "note": window.get("note"),
        "before": stats(before),
        "during": stats(during),
        "after": stats(after),
        "loop_lateness_ms": {
            "p99": percentile(late_during, 99) * 1000,
            "max": (late_during[-1] if late_during else math.nan) * 1000,
        },
        "node1_rss_mib": {"before": rss_before, "peak_during": max(rss_samples, default=math.nan)},
        "follower_snapshot_index": {"before": follower_snaps_before, "after": follower_snaps_after},
        "terms_before": terms_before,
        "terms_after": terms_after,
        "elections": bool(moved) or bool(cluster.elections),
        "terms_moved": moved,
        "election_notes": cluster.elections,
        "fill_elections": fill_elections,
    }


PARTS: dict[str, Callable[[Cluster, dict[str, Any]], Awaitable[dict[str, Any]]]] = {
    "overwrites": part_overwrites,
    "snapshot": part_snapshot,
}


async def serve(args: argparse.Namespace, root: Path) -> None:
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    for attempt in range(1, START_ATTEMPTS + 1):
        cluster_root = root / f"cluster{attempt}"
        cluster_root.mkdir()
        configs = write_node_configs(cluster_root, args.snapshots == "on", args.threshold)
        config1 = load_config(configs[0])
        async with EmbeddedEngine.start(config1) as engine:
            followers = await start_followers(cluster_root, configs[1:])
            try:
                try:
                    term = await wait_until_leader(engine, [f.log_path for f in followers])
                except BenchError:
                    if attempt == START_ATTEMPTS:
                        raise
                    continue
                cluster = Cluster(
                    engine,
                    engine.client(),
                    term,
                    followers,
                    config1.db_root_path(),
                    config1.snapshots_path(),
                    args.threshold,
                )
                send_result(ready=True, term=term)
                await serve_commands(cluster, stdin)
                return
            finally:
                for node in followers:
                    await node.stop()


async def serve_commands(cluster: Cluster, stdin: trio.lowlevel.FdStream) -> None:
    buffer = bytearray()
    while True:
        while b"\n" not in buffer:
            chunk = await stdin.receive_some(65536)
            if not chunk:
                return
            buffer += chunk
        line, _, rest = bytes(buffer).partition(b"\n")
        buffer[:] = rest
        command = json.loads(line)
        try:
            result = await PARTS[command["part"]](cluster, command)
        except (BenchError, trio.TooSlowError, KeyError, OSError) as exc:
            send_result(error=f"{command.get('part')}: {exc!r}")
            continue
        send_result(**result)


async def worker_async(args: argparse.Namespace) -> None:
    root = Path(tempfile.mkdtemp(prefix="dengine-bench-snapshots-"))
    try:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:

                async def watch() -> None:
                    async for _ in signals:
                        nursery.cancel_scope.cancel()

                nursery.start_soon(watch)
                try:
                    await serve(args, root)
                finally:
                    nursery.cancel_scope.cancel()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def worker_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.snapshots worker")
    parser.add_argument("--snapshots", choices=("on", "off"), default="on")
    parser.add_argument("--threshold", type=int, default=10_000)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        trio.run(worker_async, args)
    except Exception as exc:
        send_result(error=f"snapshots worker: {exc!r}")
        return 1
    return 0


# ---------------------------------------------------------------------------- orchestrator


@dataclass
class Options:
    """What to run; ``bench.suite`` builds one with bounded sizes."""

    puts: int = 1_000_000
    keys: int = 1_000
    down_for: int = 200_000
    writers: int = 64
    today_puts: tuple[int, int] = (50_000, 200_000)
    snapshot_keys: int = 1_000_000
    snapshot_writers: int = 64
    snapshot_rate: float = 1000.0
    rounds: int = 9
    compare_puts: int = 10_000
    phase_timeout_s: float = 900.0
    restart_timeout_s: float = 120.0
    parts: tuple[str, ...] = ("overwrites", "today", "snapshot", "compare")


@dataclass
class Results:
    options: Options
    overwrites: dict[str, Any] | None = None
    today: list[dict[str, Any]] = field(default_factory=list)
    snapshot: dict[str, Any] | None = None
    compare: dict[str, list[float]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    load: list[str] = field(default_factory=list)
    import_s: float = math.nan


def load_average() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


async def import_time(runs: int = 3) -> float:
    """Median wall time of ``python -c "import dengine_trio.cli"``: the floor of any node
    process's start on this machine, whatever its data."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        with trio.fail_after(60):
            await trio.run_process([sys.executable, "-c", "import dengine_trio.cli"])
        times.append(time.perf_counter() - started)
    return statistics.median(times)


async def run_part(
    results: Results,
    name: str,
    worker_args: list[str],
    command: dict[str, Any],
    timeout_s: float,
) -> dict[str, Any] | None:
    argv = [sys.executable, "-m", "bench.snapshots", "worker", *worker_args]
    try:
        async with worker(name, argv, ready_timeout_s=WORKER_READY_S) as side:
            return await side.call(timeout_s, **command)
    except (WorkerError, trio.TooSlowError, OSError, trio.BrokenResourceError) as exc:
        results.failures.append(f"{name}: {exc!r}")
        progress(f"{name} FAILED: {exc!r}")
        return None


async def run_compare(results: Results, o: Options) -> None:
    python = sys.executable
    sides: list[tuple[str, list[str], dict[str, Any]]] = [
        (
            "ours, snapshots on",
            [python, "-m", "bench.embedded_side", "--strategy", "MemFirst"],
            {"phase": "writers", "count": o.compare_puts, "writers": o.writers},
        ),
        (
            "PySyncObj, compaction on",
            [python, "-m", "bench.pysyncobj_side", "leader"],
            {"phase": "pipelined", "count": o.compare_puts},
        ),
        (
            "ours, snapshots off",
            [python, "-m", "bench.embedded_side", "--strategy", "MemFirst", "--snapshots", "off"],
            {"phase": "writers", "count": o.compare_puts, "writers": o.writers},
        ),
        (
            "PySyncObj, compaction off",
            [python, "-m", "bench.pysyncobj_side", "leader", "--no-compaction"],
            {"phase": "pipelined", "count": o.compare_puts},
        ),
    ]
    progress("compare: starting four clusters")
    async with AsyncExitStack() as stack:
        handles: list[Worker | None] = []
        failed: set[str] = set()
        for name, argv, _ in sides:
            try:
                handles.append(
                    await stack.enter_async_context(
                        worker(name, argv, ready_timeout_s=WORKER_READY_S)
                    )
                )
            except (WorkerError, trio.TooSlowError, OSError) as exc:
                handles.append(None)  # that side is left out; the others still run
                failed.add(name)
                results.failures.append(f"compare {name}: {exc!r}")
                progress(f"compare {name} did not start: {exc!r}")
        for round_no in range(o.rounds):
            for k in range(len(sides)):
                i = (round_no + k) % len(sides)  # the first side rotates
                name, _, command = sides[i]
                handle = handles[i]
                if name in failed or handle is None:
                    continue
                try:
                    result = await handle.call(o.phase_timeout_s, **command, round=round_no + 1)
                except (WorkerError, trio.TooSlowError, OSError, trio.BrokenResourceError) as e:
                    failed.add(name)
                    results.failures.append(f"compare {name}: {e!r}")
                    progress(f"compare {name} FAILED: {e!r}")
                    continue
                rate = result["ops"] / result["elapsed_s"]
                results.compare.setdefault(name, []).append(rate)
                progress(f"compare {round_no + 1}/{o.rounds} {name}: {rate:,.0f} puts/s")


async def run_all(o: Options, timeout_s: float) -> Results:
    """Run the chosen parts; failures are recorded in the results, not raised."""
    results = Results(o)
    results.load.append(load_average())
    if {"overwrites", "today"} & set(o.parts):
        results.import_s = await import_time()
    command = {"writers": o.writers, "keys": o.keys, "phase_timeout": o.phase_timeout_s}
    command["restart_timeout"] = o.restart_timeout_s
    if "overwrites" in o.parts:
        progress(f"overwrites, snapshots on: {o.puts:,} puts, node 3 down for the last "
                 f"{o.down_for:,}")  # fmt: skip
        results.overwrites = await run_part(
            results,
            "overwrites (snapshots on)",
            ["--snapshots", "on"],
            {"part": "overwrites", **command, "puts": o.puts, "down_for": o.down_for},
            timeout_s,
        )
    if "today" in o.parts:
        for puts in o.today_puts:
            progress(f"overwrites, snapshots off (today's code): {puts:,} puts")
            found = await run_part(
                results,
                f"overwrites (snapshots off, {puts})",
                ["--snapshots", "off"],
                {"part": "overwrites", **command, "puts": puts, "down_for": puts // 5},
                timeout_s,
            )
            if found is not None:
                results.today.append(found)
    if "snapshot" in o.parts:
        k = o.snapshot_keys
        progress(f"one snapshot of {k:,} keys")
        results.snapshot = await run_part(
            results,
            "snapshot",
            ["--snapshots", "on"],  # the shipped threshold: the log stays short
            {
                "part": "snapshot",
                "keys": k,
                "writers": o.snapshot_writers,
                "phase_timeout": o.phase_timeout_s,
                "rate": o.snapshot_rate,
                "before_s": 1.0,
                "after_s": 0.5,
            },
            timeout_s,
        )
    if "compare" in o.parts:
        try:
            await run_compare(results, o)
        except (WorkerError, trio.TooSlowError, OSError) as exc:
            results.failures.append(f"compare: {exc!r}")
    results.load.append(load_average())
    return results


# ---------------------------------------------------------------------------- report


def mib(n: float) -> str:
    return "-" if math.isnan(n) else f"{n / 2**20:,.1f} MiB"


def extrapolate(points: Sequence[tuple[float, float]], x: float) -> float:
    """The straight line through the two points at ``x`` (nan without two distinct ones)."""
    if len(points) < 2 or points[0][0] == points[-1][0]:
        return math.nan
    (x0, y0), (x1, y1) = points[0], points[-1]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


def figures_of(run: dict[str, Any]) -> dict[str, float]:
    """The per-run figures compared between the shipped code and today's."""
    end, after = run["at_end"], run["after_restarts"]
    found = {}
    for node in ("1", "2"):
        found[f"rss{node}"] = end[node]["rss_mib"]
    found["rss3"] = after["3"]["rss_mib"]
    for node in ("1", "2", "3"):
        disk = end[node] if node != "3" else after["3"]
        found[f"disk{node}"] = disk["wal_bytes"] + disk["snapshot_bytes"]
        found[f"snap{node}"] = disk["snapshot_bytes"]
    found["restart"] = run["restart"].get("ready_s", math.nan)
    found["catch_up"] = run["catch_up"].get("ready_s", math.nan)
    found["rate"] = run["put_rate"]
    return found


def markdown(results: Results) -> tuple[str, list[Target]]:
    """The "Snapshots and compaction" tables, and the issue 13 targets with their verdicts."""
    o = results.options
    parts: list[str] = []
    targets: list[Target] = []
    on = json.loads(json.dumps(results.overwrites)) if results.overwrites else None
    today = [json.loads(json.dumps(t)) for t in results.today]
    if on or today:
        parts += [
            f"**{o.puts:,} overwrites of {o.keys:,} keys** (256-byte values, {o.writers} writers, "
            "three processes, MemFirst); node 3 down for the last "
            f"{o.down_for:,}."
            + (
                " Today's code (`enable = false`) measured at "
                + " and ".join(f"{t['puts']:,}" for t in today)
                + f" puts (a fifth of them with node 3 down), extrapolated to {o.puts:,} by a "
                "straight line through the two."
                if today
                else ""
            ),
            "",
            "| figure | snapshots on (shipped) | today's code, measured (at puts) | "
            f"today's code, extrapolated to {o.puts:,} | goal |",
            "|---|---:|---:|---:|---|",
        ]
        mine = figures_of(on) if on else {}
        theirs = [(t["puts"], figures_of(t)) for t in today]
        rows = [
            ("RSS node 1 (leader, with the client), MiB", "rss1", "{:,.0f}", f"< {RSS_GOAL_MIB}"),
            ("RSS node 2 (follower), MiB", "rss2", "{:,.0f}", f"< {RSS_GOAL_MIB}"),
            ("RSS node 3 (restarted, caught up), MiB", "rss3", "{:,.0f}", ""),
            ("disk, node 1: WAL + snapshots, MiB", "disk1", "{:,.1f}", "bounded"),
            ("disk, node 2: WAL + snapshots, MiB", "disk2", "{:,.1f}", "bounded"),
            ("disk, node 3: WAL + snapshots, MiB", "disk3", "{:,.1f}", "bounded"),
            (
                f"follower restart to ready (median of {RESTARTS}), s",
                "restart",
                "{:.2f}",
                f"< {RESTART_GOAL_S:g}",
            ),
            (
                f"catch-up of a follower down for the last {o.down_for:,} writes, s",
                "catch_up",
                "{:.2f}",
                f"< {CATCH_UP_GOAL_S:g}",
            ),
            ("put rate of the overwrites, puts/s", "rate", "{:,.0f}", ""),
        ]
        for label, key, fmt, goal in rows:
            scale = 2**20 if key.startswith("disk") else 1
            shown = mine.get(key, math.nan) / scale
            text = "-" if math.isnan(shown) else fmt.format(shown)
            if key.startswith("disk") and mine:
                snap_mib = mine["snap" + key[-1]] / scale
                text += f" ({fmt.format(shown - snap_mib)} + {fmt.format(snap_mib)})"
            measured = ", ".join(f"{fmt.format(f[key] / scale)} ({puts:,})" for puts, f in theirs)
            # catch-up grows with the writes missed, the rest with the writes
            at = o.down_for if key == "catch_up" else o.puts
            xs = [(p // 5 if key == "catch_up" else p, f[key] / scale) for p, f in theirs]
            extra = extrapolate(xs, at) if key != "rate" else math.nan
            if len(xs) == 2 and xs[1][1] < xs[0][1]:
                extra = math.nan  # smaller at the larger count: noise, no line to draw
            parts.append(
                f"| {label} | {text} "
                f"| {measured or '-'} | {'-' if math.isnan(extra) else fmt.format(extra)} "
                f"| {goal} |"
            )
        parts += [
            "",
            "A `-` in the extrapolated column where two figures are shown: the larger count "
            "measured less than the smaller one (noise), so no line is drawn.",
        ]
        if on:
            mine_rss = max(mine["rss1"], mine["rss2"])
            targets.append(
                Target(
                    f"RSS per node after {o.puts:,} overwrites of {o.keys:,} keys < "
                    f"{RSS_GOAL_MIB} MB",
                    f"node 1 {mine['rss1']:.0f}, node 2 {mine['rss2']:.0f}, "
                    f"node 3 {mine['rss3']:.0f} MiB",
                    mine_rss < RSS_GOAL_MIB,
                )
            )
            targets.append(
                Target(
                    f"Follower restart to ready < {RESTART_GOAL_S:g} s",
                    f"{mine['restart']:.2f} s, median of "
                    + ", ".join(f"{x:.2f}" for x in on["restart"]["all_ready_s"])
                    + f" (first /status answer at {on['restart']['first_status_s']:.2f} s)"
                    if "error" not in on["restart"]
                    else f"failed: {on['restart']['error']}",
                    mine["restart"] < RESTART_GOAL_S,
                )
            )
            targets.append(
                Target(
                    f"Catch-up of a follower down for {o.down_for:,} writes < "
                    f"{CATCH_UP_GOAL_S:g} s",
                    f"{mine['catch_up']:.2f} s"
                    if "error" not in on["catch_up"]
                    else f"failed: {on['catch_up']['error']}",
                    mine["catch_up"] < CATCH_UP_GOAL_S,
                )
            )
            snaps = on.get("snapshot_index", {})
            elections = {k: v for k, v in on["terms_at_end"].items() if v != on["term"]}
            parts += [
                "",
                f"Snapshots on: commit index {on['commit_index']:,}, newest snapshot index "
                f"node 1 {snaps.get('1')}, node 2 {snaps.get('2')}; node 3 after its catch-up "
                f"{on['catch_up'].get('snapshot_index')}; first `/status` answer of the "
                f"restarted node 2 at {on['restart'].get('first_status_s', math.nan):.2f} s, "
                f"of node 3 at {on['catch_up'].get('first_status_s', math.nan):.2f} s; "
                "peak RSS node 1 "
                f"{on['at_end']['1']['peak_mib']:.0f} MiB, node 2 "
                f"{on['at_end']['2']['peak_mib']:.0f} MiB; "
                + (f"terms moved: {elections}" if elections else "no election (terms unchanged)")
                + "".join(f"; {note}" for note in on.get("elections", []))
                + ".",
            ]
        if not math.isnan(results.import_s):
            parts.append("")
            parts.append(
                "A bare `.venv/bin/python -c 'import dengine_trio.cli'` took "
                f"{results.import_s:.2f} s (median of 3) in the same run: the floor of any "
                "node's restart here."
            )
    snap = results.snapshot
    if snap:
        d, b = snap["during"], snap["before"]
        parts += [
            "",
            f"**One snapshot of {snap['keys']:,} keys** (256-byte values) on node 1 (the "
            f"leader), shipped threshold ({snap['threshold']:,} entries), while an open-loop "
            f"load of {snap['rate']:,.0f} puts/s ({snap['writers']} writer tasks) overwrites "
            "them; a put's latency runs from when it was due, so a stall's queueing counts:",
            "",
            "| figure | value |",
            "|---|---:|",
            f"| time to take (capture, write, fsync, rename, compact) | {snap['take_s']:.2f} s |",
            f"| snapshot file | {mib(snap['bytes'])} |",
            f"| puts in flight during it | {d['puts']:,} |",
            f"| put p50 / p99 / max during it | {d['p50_ms']:.1f} / {d['p99_ms']:.1f} / "
            f"{d['max_ms']:.1f} ms |",
            f"| put p50 / p99 / max in the {b['puts']:,} puts before it (from "
            f"{WARMUP_S:g} s into the load) | {b['p50_ms']:.1f} / "
            f"{b['p99_ms']:.1f} / {b['max_ms']:.1f} ms |",
            f"| node 1 event loop lateness during it (1 ms sleeps): p99 / max | "
            f"{snap['loop_lateness_ms']['p99']:.1f} / {snap['loop_lateness_ms']['max']:.1f} ms |",
            f"| node 1 RSS before / peak during | {snap['node1_rss_mib']['before']:,.0f} / "
            f"{snap['node1_rss_mib']['peak_during']:,.0f} MiB |",
            "| followers' snapshot index before / after (an automatic snapshot of theirs "
            f"in the window?) | {snap['follower_snapshot_index']['before']} / "
            f"{snap['follower_snapshot_index']['after']} |",
            f"| election (any node's term moved) | "
            f"{'yes: ' + str(snap['terms_moved']) if snap['elections'] else 'no'} "
            f"(terms before {snap['terms_before']}, after {snap['terms_after']}) |",
        ]
        if snap.get("note"):
            parts.append(f"\n{snap['note']}")
        for note in snap.get("election_notes", []) + snap.get("fill_elections", []):
            parts.append(f"\nElection: {note}.")
        targets.append(
            Target(
                f"Snapshot of {snap['keys']:,} keys: put p99 during it < "
                f"{SNAPSHOT_P99_GOAL_MS:g} ms, no election",
                f"p99 {d['p99_ms']:.1f} ms ({d['puts']:,} puts), taken in {snap['take_s']:.2f} s, "
                f"{mib(snap['bytes'])}, " + ("an election" if snap["elections"] else "no election"),
                d["p99_ms"] < SNAPSHOT_P99_GOAL_MS and not snap["elections"],
            )
        )
    if results.compare:
        medians = {name: statistics.median(rates) for name, rates in results.compare.items()}
        parts += [
            "",
            f"**{o.writers} writers against PySyncObj** ({o.compare_puts:,} puts a run, "
            f"{o.rounds} rounds, the sides alternating; PySyncObj pipelined with callbacks):",
            "",
            "| side | runs | puts/s (median) | min | max |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, rates in results.compare.items():
            parts.append(
                f"| {name} | {len(rates)} | {medians[name]:,.0f} | {min(rates):,.0f} "
                f"| {max(rates):,.0f} |"
            )
        pairs = [
            ("ours, snapshots on", "PySyncObj, compaction on", "both compacting (like for like)"),
            ("ours, snapshots off", "PySyncObj, compaction off", "neither compacting"),
            ("ours, snapshots on", "ours, snapshots off", "our cost of compaction"),
            ("PySyncObj, compaction on", "PySyncObj, compaction off", "PySyncObj's cost"),
        ]
        parts += ["", "| ratio of medians | |", "|---|---:|"]
        for a, b_, what in pairs:
            if a in medians and b_ in medians:
                parts.append(f"| {a} / {b_} ({what}) | {ratio(medians[a], medians[b_]):.2f}x |")
        a, b_ = "ours, snapshots on", "PySyncObj, compaction on"
        if a in medians and b_ in medians:
            r = ratio(medians[a], medians[b_])
            targets.append(
                Target(
                    f"{o.writers} writers, both compacting: >= {COMPARE_GOAL}x PySyncObj",
                    f"{medians[a]:,.0f} vs {medians[b_]:,.0f} puts/s = {r:.2f}x",
                    r >= COMPARE_GOAL,
                )
            )
    if results.failures:
        parts += ["", *[f"* failed: {f}" for f in results.failures]]
    return "\n".join(parts) + "\n", targets


def header(results: Results, argv: Sequence[str], elapsed_s: float) -> str:
    cpu = cpu_model()
    return "\n".join(
        [
            f"### python -m bench.snapshots, "
            f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
            "",
            f"* **Command**: `.venv/bin/python -m bench.snapshots {' '.join(argv)}`".rstrip()
            + f" (took {elapsed_s / 60:.1f} min)",
            f"* **Machine**: `nproc` = {len(os.sched_getaffinity(0))}, {cpu}; "
            f"load average (1/5/15 min) at the start {results.load[0]}, at the end "
            f"{results.load[-1]}",
            f"* **Python**: {platform.python_implementation()} {platform.python_version()}",
            "",
        ]
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.snapshots", description=(__doc__ or "").split("\n")[0]
    )
    add = parser.add_argument
    add("--puts", type=int, default=1_000_000, help="overwrites in part 1")
    add("--keys", type=int, default=1_000, help="keys the overwrites cycle over")
    add("--down-for", type=int, default=200_000, help="last puts written while node 3 is down")
    add("--writers", type=int, default=64)
    add(
        "--today-puts",
        default="50000,200000",
        help="two counts for today's code (snapshots off), comma-separated",
    )
    add("--snapshot-keys", type=int, default=1_000_000, help="keys of the snapshot in part 3")
    add(
        "--snapshot-rate",
        type=float,
        default=1000.0,
        help="puts/s of the open-loop load around the one snapshot (part 3); at most the "
        "threshold's 10,000 less 200 in all, so that no automatic snapshot starts meanwhile",
    )
    add("--rounds", type=int, default=9, help="rounds of the PySyncObj comparison")
    add("--compare-puts", type=int, default=10_000, help="puts per comparison run")
    add("--parts", default="overwrites,today,snapshot,compare", help="which parts to run")
    add("--phase-timeout", type=float, default=900.0, help="bound of one part's load (s)")
    add(
        "--restart-timeout",
        type=float,
        default=120.0,
        help="how long a restarted node may take to be ready before that figure fails (s)",
    )
    add("--max-minutes", type=float, default=45.0, help="bound of the whole run")
    add("--json", type=Path, help="also write the raw results here")
    return parser


def options_from(args: argparse.Namespace) -> Options:
    today = tuple(int(x) for x in args.today_puts.split(","))
    if len(today) != 2 or min(today) < 5:
        raise ValueError("--today-puts takes two counts of at least 5, e.g. 20000,100000")
    parts = tuple(p for p in args.parts.split(",") if p)
    unknown = set(parts) - set(Options().parts)
    if unknown:
        raise ValueError(f"--parts: unknown {sorted(unknown)}")
    counts = {"puts": args.puts, "keys": args.keys, "writers": args.writers}
    counts |= {"snapshot-keys": args.snapshot_keys, "rounds": args.rounds}
    counts |= {"compare-puts": args.compare_puts}
    for name, value in counts.items():
        if value < 1:
            raise ValueError(f"--{name} must be positive")
    if not 0 < args.down_for < args.puts:
        raise ValueError("--down-for must be between 1 and --puts - 1")
    return Options(
        puts=args.puts,
        keys=args.keys,
        down_for=args.down_for,
        writers=args.writers,
        today_puts=(today[0], today[1]),
        snapshot_keys=args.snapshot_keys,
        snapshot_writers=args.writers,
        snapshot_rate=args.snapshot_rate,
        rounds=args.rounds,
        compare_puts=args.compare_puts,
        phase_timeout_s=args.phase_timeout,
        restart_timeout_s=args.restart_timeout,
        parts=parts,
    )


def main(argv: list[str] | None = None) -> int:
    raw = sys.argv[1:] if argv is None else argv
    if raw[:1] == ["worker"]:
        return worker_main(raw[1:])
    args = build_parser().parse_args(raw)
    try:
        options = options_from(args)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    started = time.monotonic()
    progress(f"bench.snapshots: parts {', '.join(options.parts)}; bounded at "
             f"{args.max_minutes:g} min; load average {load_average()}")  # fmt: skip

    async def bounded() -> Results:
        with trio.fail_after(args.max_minutes * 60):
            return await run_all(options, args.max_minutes * 60)

    try:
        results = trio.run(bounded)
    except trio.TooSlowError:
        print(f"bench.snapshots hit its {args.max_minutes:g}-minute bound", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    text, targets = markdown(results)
    print()
    print(header(results, raw, time.monotonic() - started))
    if targets:
        print("| target (issue 13) | measured | |\n|---|---|---|")
        for t in targets:
            print(f"| {t.goal} | {t.measured} | {'**met**' if t.met else '**missed**'} |")
        print()
    print(text)
    if args.json:
        raw_results = {
            "overwrites": results.overwrites,
            "today": results.today,
            "snapshot": results.snapshot,
            "compare": results.compare,
            "failures": results.failures,
            "load": results.load,
            "import_s": results.import_s,
        }
        args.json.write_text(json.dumps(raw_results, indent=1, default=str))
    return 1 if results.failures else 0


if __name__ == "__main__":
    sys.exit(main())
