"""The dengine_trio side of the embedded comparison: a worker process of ``make bench``.

It runs a three-process cluster exactly as ``bench.write`` does (node 1 in this process with
``EmbeddedEngine``, made the leader by its shorter election timeout; nodes 2 and 3 as
``python -m dengine_trio`` processes) and then, one command a line on stdin, runs a measured
phase with the client in node 1's process and answers ``RESULT {...}`` on stdout. It stops,
with its followers, when its stdin ends. Every phase is bounded in count and in time, and
node 1 must lead in the same term before and after each, or the phase fails.

    python -m bench.embedded_side --strategy MemFirst [--snapshots off]

``--snapshots off`` sets ``[raft.snapshot] enable = false`` (the log is never compacted: the
code before issue 13 behaved so); the default keeps the shipped ``enable = true``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from bench.measure import Run, run_from_latencies
from bench.procs import send_result
from bench.write import (
    STRATEGIES,
    VALUE,
    BenchError,
    check_still_leading,
    concurrent_writers,
    follower_processes,
    single_client,
    wait_until_leader,
    write_configs,
)
from dengine_trio import Client, EmbeddedEngine, load_config

READ_KEYS = [f"r-{i:08d}".encode() for i in range(100)]
"""Keys the read phases read, written once at start (10 bytes each)."""
READ_CHUNK = 10_000
"""Reads between two yields to trio: a tight loop, but node 1's Raft loop still runs."""


def run_of(phase: Any) -> Run:
    return run_from_latencies(phase.puts, phase.elapsed_s, phase.latencies_s)


async def tight_reads(read: Callable[[bytes], Awaitable[object]], count: int) -> Run:
    """``count`` reads back to back: throughput from an untimed pass, then percentiles
    from a second pass of ``count // 4`` reads timed one by one (timer cost included)."""
    keys = READ_KEYS * (READ_CHUNK // len(READ_KEYS))
    elapsed = 0.0
    done = 0
    while done < count:
        chunk = keys[: min(READ_CHUNK, count - done)]
        started = time.perf_counter()
        for key in chunk:
            await read(key)
        elapsed += time.perf_counter() - started
        done += len(chunk)
        await trio.sleep(0)
    latencies: list[float] = []
    clock = time.perf_counter
    timed = max(1, count // 4)
    while len(latencies) < timed:
        for key in keys[: min(READ_CHUNK, timed - len(latencies))]:
            started = clock()
            await read(key)
            latencies.append(clock() - started)
        await trio.sleep(0)
    return run_from_latencies(done, elapsed, latencies)


async def concurrent_reads(
    read: Callable[[bytes], Awaitable[object]], total: int, readers: int
) -> Run:
    """``readers`` tasks share ``total`` reads; throughput and each read's latency."""
    latencies: list[float] = []
    tickets = iter(range(total))

    async def reader(offset: int) -> None:
        for ticket in tickets:
            key = READ_KEYS[(ticket + offset) % len(READ_KEYS)]
            started = time.perf_counter()
            await read(key)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for offset in range(readers):
            nursery.start_soon(reader, offset)
    return run_from_latencies(total, time.perf_counter() - started, latencies)


async def run_phase(client: Client, command: dict[str, Any]) -> Run:
    phase = command["phase"]
    tag = f"{command.get('round', 0)}"
    if phase == "single":
        return run_of(await single_client(client, f"s{tag}", command["count"], report=False))
    if phase == "writers":
        return run_of(
            await concurrent_writers(client, f"c{tag}", command["count"], command["writers"])
        )
    if phase == "read_eventual":
        return await tight_reads(client.get_eventual, command["count"])
    if phase == "read_lease":
        return await tight_reads(client.get_lease, command["count"])
    if phase == "read_linearizable":
        return await concurrent_reads(client.get_linearizable, command["count"], command["readers"])
    raise ValueError(f"unknown phase {phase!r}")


START_ATTEMPTS = 3


async def serve(strategy: str, root: Path, phase_timeout_s: float, snapshots: bool) -> None:
    """Start the cluster (again, on fresh ports, if node 1 did not win: bounded), then run
    phases until stdin ends."""
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    for attempt in range(1, START_ATTEMPTS + 1):
        cluster_root = root / f"cluster{attempt}"
        cluster_root.mkdir()
        configs = write_configs(cluster_root, strategy, extra={"raft.snapshot.enable": snapshots})
        async with EmbeddedEngine.start(load_config(configs[0])) as engine:
            async with follower_processes(cluster_root, configs[1:]):
                logs = [cluster_root / "n2.log", cluster_root / "n3.log"]
                try:
                    term = await wait_until_leader(engine, logs)
                except BenchError:
                    if attempt == START_ATTEMPTS:
                        raise
                    continue
                client = engine.client()
                for key in READ_KEYS:
                    await client.put(key, VALUE)
                send_result(ready=True, term=term)
                await serve_phases(strategy, engine, term, stdin, phase_timeout_s)
                return


async def serve_phases(
    strategy: str,
    engine: EmbeddedEngine,
    term: int,
    stdin: trio.lowlevel.FdStream,
    phase_timeout_s: float,
) -> None:
    client = engine.client()
    buffer = bytearray()
    while True:
        while b"\n" not in buffer:
            chunk = await stdin.receive_some(65536)
            if not chunk:
                return  # the suite is done with us
            buffer += chunk
        line, _, rest = bytes(buffer).partition(b"\n")
        buffer[:] = rest
        command = json.loads(line)
        cpu0 = time.process_time()
        try:
            check_still_leading(engine, term, "the pause between phases")
            with trio.fail_after(phase_timeout_s):
                run = await run_phase(client, command)
            check_still_leading(engine, term, command["phase"])
        except (BenchError, trio.TooSlowError, ValueError) as exc:
            send_result(error=f"{strategy} {command.get('phase')}: {exc!r}")
            continue
        send_result(**run.as_dict(), cpu_s=time.process_time() - cpu0)


async def main_async(strategy: str, phase_timeout_s: float, snapshots: bool) -> None:
    root = Path(tempfile.mkdtemp(prefix=f"dengine-bench-{strategy}-"))
    try:
        # SIGTERM from the suite: stop cleanly (followers SIGTERMed, data dir removed).
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:

                async def watch() -> None:
                    async for _ in signals:
                        nursery.cancel_scope.cancel()

                nursery.start_soon(watch)
                try:
                    await serve(strategy, root, phase_timeout_s, snapshots)
                finally:
                    nursery.cancel_scope.cancel()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.embedded_side")
    parser.add_argument("--strategy", choices=STRATEGIES, required=True)
    parser.add_argument("--phase-timeout", type=float, default=120.0)
    parser.add_argument(
        "--snapshots",
        choices=("on", "off"),
        default="on",
        help="[raft.snapshot] enable (on: the shipped default, log compaction by snapshots)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        trio.run(main_async, args.strategy, args.phase_timeout, args.snapshots == "on")
    except Exception as exc:
        send_result(error=f"{args.strategy} cluster: {exc!r}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
