"""What a KVStateMachine snapshot costs: the pause on the event loop and the work off it.

    .venv/bin/python bench/snapshot_cost.py [--keys 1000000] [--value-bytes 256] [--dir DIR]

Fills a KVStateMachine with ``--keys`` keys (16-byte keys, ``--value-bytes`` random values),
then measures, each in a fresh step:

- ``dict.copy()`` (what ``snapshot()`` does on the loop), on a dict without deletions and on one
  after 10% of its keys were deleted and re-inserted (CPython's copy has a fast path only for
  the first);
- serializing the copy into a snapshot file and committing it (fsync, rename, directory fsync),
  in a worker thread while a trio task measures how late its 1 ms sleeps wake up (the loop's
  stall while the thread holds the GIL);
- verifying and restoring the file;
- the bytes of the file, the memory ``dict.copy()`` allocates, and the highest RSS sampled (at
  every probe wake-up) during the snapshot against the RSS before it, in MiB.

A measurement script, not a test: no assertion on time.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dengine_trio.statemachine import KVStateMachine
from dengine_trio.storage.snapshots import (
    SnapshotHeader,
    SnapshotReader,
    SnapshotWriter,
    verify_snapshot,
)


def rss_now_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--value-bytes", type=int, default=256)
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()

    sm = KVStateMachine()
    value = os.urandom(args.value_bytes)
    for i in range(args.keys):
        # Distinct value objects, as committed commands produce them.
        sm.data[b"key-%011d" % i] = value[: args.value_bytes - 8] + i.to_bytes(8, "little")
    gc.collect()
    print(f"keys: {args.keys:,}, value bytes: {args.value_bytes}, rss: {rss_now_mib():.0f} MiB")

    timings = []
    for _ in range(5):
        started = time.perf_counter()
        copy = sm.data.copy()
        timings.append(time.perf_counter() - started)
        copy_bytes = sys.getsizeof(copy)
        del copy
    print(
        f"dict.copy(), no deletions: median {statistics.median(timings) * 1000:.1f} ms "
        f"(min {min(timings) * 1000:.1f}, max {max(timings) * 1000:.1f})"
    )

    print(f"dict.copy() allocates {copy_bytes / 2**20:.0f} MiB (keys and values are shared)")
    holed = dict(sm.data)
    for i in range(0, args.keys, 10):
        key = b"key-%011d" % i
        held = holed.pop(key)
        holed[key] = held
    timings = []
    for _ in range(5):
        started = time.perf_counter()
        copy = holed.copy()
        timings.append(time.perf_counter() - started)
        del copy
    del holed
    gc.collect()
    print(
        f"dict.copy(), after 10% deleted and re-inserted: median "
        f"{statistics.median(timings) * 1000:.1f} ms"
    )

    directory = Path(args.dir or tempfile.mkdtemp(prefix="snapshot-cost-"))
    header = SnapshotHeader(
        last_index=args.keys, last_term=1, cluster_id="bench-0", voters={1: "127.0.0.1:1"}
    )

    async def run() -> None:
        lateness: list[float] = []
        rss_samples: list[float] = []
        done = trio.Event()

        async def probe() -> None:
            while not done.is_set():
                before = trio.current_time()
                await trio.sleep(0.001)
                lateness.append(trio.current_time() - before - 0.001)
                rss_samples.append(rss_now_mib())

        def write(image: object) -> object:
            with SnapshotWriter.create(directory, header) as writer:
                image(writer)  # type: ignore[operator]
                return writer.commit()

        rss_before = rss_now_mib()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(probe)
            await trio.sleep(0.05)
            started = time.perf_counter()
            image = sm.snapshot()
            on_loop = time.perf_counter() - started
            written = await trio.to_thread.run_sync(write, image)
            total = time.perf_counter() - started
            done.set()
        del image
        print(
            f"snapshot(): {on_loop * 1000:.1f} ms on the loop; copy + serialize + fsync + rename: "
            f"{total:.2f} s; file {written.size_bytes:,} bytes "
            f"({written.size_bytes / 2**20:.0f} MiB)"
        )
        lateness.sort()
        print(
            f"loop probe (1 ms sleeps during the write, {len(lateness)} samples): lateness p50 "
            f"{lateness[len(lateness) // 2] * 1000:.1f} ms, p99 "
            f"{lateness[int(len(lateness) * 0.99)] * 1000:.1f} ms, max {lateness[-1] * 1000:.1f} ms"
        )
        print(
            f"rss before {rss_before:.0f} MiB, highest sampled during the snapshot "
            f"{max(rss_samples):.0f} MiB (+{max(rss_samples) - rss_before:.0f} MiB)"
        )

        started = time.perf_counter()
        verify_snapshot(written.path, "bench-0")
        print(f"verify (read + CRC32): {time.perf_counter() - started:.2f} s")
        restored = KVStateMachine()
        started = time.perf_counter()
        with SnapshotReader.open(written.path, "bench-0") as reader:
            restored.restore(reader)
        print(f"restore: {time.perf_counter() - started:.2f} s, equal: {restored.data == sm.data}")
        os.unlink(written.path)

    trio.run(run)


if __name__ == "__main__":
    main()
