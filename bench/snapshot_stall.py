"""Does taking a snapshot stall a node's writes? One node, one process, no network noise.

    .venv/bin/python -m bench.snapshot_stall [--keys 1000000] [--writers 16] [--value-bytes 256]
        [--switch-interval-ms 5] [--rounds 3]

A one-node cluster (it elects itself) in a temporary directory, MemFirst. Its
``KVStateMachine`` is filled directly with ``--keys`` keys of ``--value-bytes`` bytes (not
through the log: the fill is not what is measured), then ``--writers`` tasks put overwrites
through the client while, in each round, the node takes a snapshot of the whole state
(``EmbeddedEngine.take_snapshot``: capture on the loop, serialize + write + fsync in a worker
thread of the same process). Reported per round: the snapshot's time and bytes, put latency
p50/p99/max before and during it, and the event loop's lateness (1 ms sleeps) during it.

What it isolates: the serializer thread competes with the trio loop for the GIL (a thread that
wants the GIL waits up to ``sys.getswitchinterval()``, 5 ms by default, each time). The node's
peers are not in the picture (``bench.snapshots`` part 3 measures three processes).
``--switch-interval-ms`` sets ``sys.setswitchinterval`` for the run, to see that effect.
A measurement script, not a test: no assertion on time.
"""

from __future__ import annotations

import argparse
import math
import socket
import sys
import tempfile
import time
from pathlib import Path

import trio

from dengine_trio import EmbeddedEngine, load_config
from dengine_trio.statemachine import KVStateMachine


def percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q / 100))]


def config_file(root: Path) -> Path:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = root / "n1.toml"
    path.write_text(f"""
[cluster]
node_id = 1
listen_address = "127.0.0.1:{port}"
initial_cluster = [ {{ id = 1, address = "127.0.0.1:{port}", role = 1, status = 2 }} ]
db_root_dir = "{root / "db"}"

[raft.persistence]
strategy = "MemFirst"

[raft.snapshot]
max_log_entries_before_snapshot = 100000000
""")
    return path


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        config = load_config(config_file(Path(tmp)))
        state_machine = KVStateMachine()
        async with EmbeddedEngine.start(config, state_machine=state_machine) as engine:
            await engine.wait_ready(timeout_s=10)
            value = b"v" * args.value_bytes
            started = time.perf_counter()
            data = state_machine.data
            assert isinstance(data, dict)
            for i in range(args.keys):
                data[b"key-%010d" % i] = value
            print(f"filled {args.keys:,} keys in {time.perf_counter() - started:.1f} s")
            client = engine.client()
            records: list[tuple[float, float]] = []
            lateness: list[tuple[float, float]] = []
            stop = trio.Event()

            async def writer(seed: int) -> None:
                n = seed
                while not stop.is_set():
                    key = b"key-%010d" % (n * 7919 % args.keys)
                    n += args.writers
                    before = time.perf_counter()
                    await client.put(key, value)
                    records.append((before, time.perf_counter()))

            async def probe() -> None:
                while not stop.is_set():
                    before = time.perf_counter()
                    await trio.sleep(0.001)
                    lateness.append((before, time.perf_counter() - before - 0.001))

            async with trio.open_nursery() as nursery:
                for seed in range(args.writers):
                    nursery.start_soon(writer, seed)
                nursery.start_soon(probe)
                for round_ in range(1, args.rounds + 1):
                    await trio.sleep(args.gap_s)
                    t0 = time.perf_counter()
                    snapshot = await engine.take_snapshot()
                    t1 = time.perf_counter()
                    before = [b - a for a, b in records if t0 - args.gap_s <= a and b < t0]
                    during = [b - a for a, b in records if b >= t0 and a <= t1]
                    late = [x for at, x in lateness if t0 <= at <= t1]
                    late_before = [x for at, x in lateness if t0 - args.gap_s <= at < t0]
                    ms = 1000
                    print(
                        f"round {round_}: snapshot {snapshot.size_bytes / 2**20:.0f} MiB in "
                        f"{t1 - t0:.2f} s | puts before: {len(before)} p50 "
                        f"{percentile(before, 50) * ms:.1f} p99 {percentile(before, 99) * ms:.1f} "
                        f"max {max(before, default=math.nan) * ms:.1f} ms | during: {len(during)}"
                        f" p50 {percentile(during, 50) * ms:.1f} p99 "
                        f"{percentile(during, 99) * ms:.1f} max "
                        f"{max(during, default=math.nan) * ms:.1f} ms | loop late p99 before "
                        f"{percentile(late_before, 99) * ms:.1f}, during "
                        f"{percentile(late, 99) * ms:.1f} max "
                        f"{max(late, default=math.nan) * ms:.1f} ms",
                        flush=True,
                    )
                stop.set()


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--writers", type=int, default=16)
    parser.add_argument("--value-bytes", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--gap-s", type=float, default=2.0, help="writes between snapshots (s)")
    parser.add_argument("--switch-interval-ms", type=float, default=None)
    args = parser.parse_args()
    if args.switch_interval_ms is not None:
        sys.setswitchinterval(args.switch_interval_ms / 1000)
    print(f"GIL switch interval {sys.getswitchinterval() * 1000:g} ms", flush=True)
    trio.run(run, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
