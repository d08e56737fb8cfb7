"""What one operation costs node 1: CPU, trio scheduling and messages, per operation.

Three nodes as ``bench.write`` runs them (node 1 in this process, the client in it; MemFirst
unless ``--strategy DiskFirst``), then, one phase after another:

* ``put``: sequential puts, one at a time;
* ``read``: sequential linearizable reads (a ReadIndex round each);
* ``64 writers``: 64 tasks (``--writers``) sharing ``--concurrent`` puts (16, as many as
  ``make bench``'s HTTP connections, shows the batches a leader gets under that load).

For each phase it prints the latency p50, node 1's CPU time per operation (all its threads),
trio's run-loop passes (I/O waits) and task steps per operation, Raft frames out and in per
operation, and the CPU share of the two follower processes. These are the figures the
engine's hot-path work is judged by (docs/benchmarks.md, "Engine hot paths"); a trio
instrument counts passes and steps, which slows node 1 by a few percent.

    python -m bench.costs [--strategy MemFirst|DiskFirst] [--ops 1000] [--concurrent 20000]
                          [--rounds 2] [--writers 64]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from bench.write import BenchError, follower_processes, wait_until_leader, write_configs
from dengine_trio import EmbeddedEngine, gc_tuning, load_config
from dengine_trio.policy import ReadPolicy

VALUE = b"v" * 256
PHASE_TIMEOUT_S = 120.0


class Counting(trio.abc.Instrument):
    """Counts trio's run-loop passes (one I/O wait each) and task steps."""

    def __init__(self) -> None:
        self.passes = 0
        self.steps = 0

    def after_io_wait(self, timeout: float) -> None:
        self.passes += 1

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps += 1


def cpu_seconds(pid: int) -> float:
    """utime + stime of process ``pid``, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0


def follower_pids(root: Path) -> list[int]:
    found = subprocess.run(
        ["pgrep", "-f", f"{root}/n[23].toml"], capture_output=True, text=True, check=False
    )
    return [int(pid) for pid in found.stdout.split()]


async def measure(
    name: str,
    engine: EmbeddedEngine,
    followers: list[int],
    count: int,
    run: Callable[[list[float]], Awaitable[None]],
) -> None:
    runtime = engine._runtime
    transport = runtime.transport
    assert transport is not None
    counting = Counting()
    latencies: list[float] = []
    frames = transport.stats.frames_out, transport.stats.frames_in
    follower_cpu = [cpu_seconds(pid) for pid in followers]
    trio.lowlevel.add_instrument(counting)
    cpu, wall = time.process_time(), time.perf_counter()
    try:
        with trio.fail_after(PHASE_TIMEOUT_S):
            await run(latencies)
    finally:
        trio.lowlevel.remove_instrument(counting)
    wall = time.perf_counter() - wall
    cpu = time.process_time() - cpu
    shares = [
        f"{(cpu_seconds(pid) - before) / wall:.0%}"
        for pid, before in zip(followers, follower_cpu, strict=True)
    ]
    p50 = f"p50 {statistics.median(latencies) * 1e3:.3f} ms, " if latencies else ""
    print(
        f"{name:>10}: {count / wall:>9,.0f} ops/s, {p50}node 1 CPU {cpu / count * 1e6:.0f} us/op"
        f" ({cpu / wall:.0%}), passes {counting.passes / count:.2f}/op,"
        f" task steps {counting.steps / count:.2f}/op,"
        f" frames out {(transport.stats.frames_out - frames[0]) / count:.3f}/op"
        f" in {(transport.stats.frames_in - frames[1]) / count:.3f}/op,"
        f" followers' CPU {' '.join(shares)}",
        flush=True,
    )


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="dengine-costs-") as tmp:
        root = Path(tmp)
        configs = write_configs(root, args.strategy)
        async with follower_processes(root, configs[1:]):
            async with EmbeddedEngine.start(load_config(configs[0])) as engine:
                await wait_until_leader(engine, [root / "n2.log", root / "n3.log"])
                transport = engine._runtime.transport
                assert transport is not None
                with trio.fail_after(PHASE_TIMEOUT_S):
                    # Both followers linked both ways, or one may sit out the first phase
                    # (replies queued while its link to node 1 is in reconnect backoff).
                    while transport.stats.inbound_open < 2 or not all(
                        peer.connected for peer in transport.stats.peers.values()
                    ):
                        await trio.sleep(0.05)
                client = engine.client()
                for i in range(200):  # warm up
                    await client.put(b"w-%08d" % i, VALUE)
                followers = follower_pids(root)
                for round_ in range(args.rounds):

                    async def puts(latencies: list[float], r: int = round_) -> None:
                        for i in range(args.ops):
                            started = time.perf_counter()
                            await client.put(b"p%d-%08d" % (r, i), VALUE)
                            latencies.append(time.perf_counter() - started)

                    async def reads(latencies: list[float]) -> None:
                        for _ in range(args.ops):
                            started = time.perf_counter()
                            await engine.read_barrier(ReadPolicy.LINEARIZABLE)
                            latencies.append(time.perf_counter() - started)

                    async def writers(latencies: list[float], r: int = round_) -> None:
                        keys = iter(range(args.concurrent))

                        async def writer() -> None:
                            for i in keys:
                                await client.put(b"c%d-%08d" % (r, i), VALUE)

                        async with trio.open_nursery() as nursery:
                            for _ in range(args.writers):
                                nursery.start_soon(writer)

                    await measure("put", engine, followers, args.ops, puts)
                    await measure("read", engine, followers, args.ops, reads)
                    await measure(
                        f"{args.writers} writers", engine, followers, args.concurrent, writers
                    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--strategy", choices=("MemFirst", "DiskFirst"), default="MemFirst")
    parser.add_argument("--ops", type=int, default=1000, help="sequential puts and reads")
    parser.add_argument("--concurrent", type=int, default=20000, help="puts by the writers")
    parser.add_argument("--writers", type=int, default=64, help="concurrent writer tasks")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    gc_tuning.tune_for_serving()  # node 1 runs here: with a node process's collector settings
    try:
        trio.run(main_async, args)
    except BenchError as exc:
        print(f"bench.costs: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
