"""What a KVStateMachine snapshot costs: the pause on the event loop and the work off it.

    .venv/bin/python bench/snapshot_cost.py [--keys 1000000] [--value-bytes 256] [--dir DIR]

Fills a KVStateMachine with ``--keys`` keys (15-byte keys, ``--value-bytes`` random values),
then measures, each in a fresh step:

- ``dict.copy()``, the alternative to the copy-on-write capture: on a dict without deletions
  and on one after 10% of its keys were deleted and re-inserted (CPython's copy has a fast path
  only for the first);
- ``snapshot()`` on the loop, then serializing the image into a snapshot file and committing it
  (fsync, rename, directory fsync) in a worker thread, while one trio task applies overwrites
  (100 per loop turn) and another measures how late its 1 ms sleeps wake up (the loop's stall
  while the thread holds the GIL); the cost of an apply with and without a capture, and of
  merging the overlay afterwards;
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

from dengine_trio.statemachine import KVStateMachine, encode_put
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
        # Distinct value objects, as committed commands produce them; through apply, so the
        # per-key indexes and the key index (issue 17) are in the state as on a node.
        key, filler = b"key-%011d" % i, value[: args.value_bytes - 8] + i.to_bytes(8, "little")
        sm.apply(i + 1, encode_put(key, filler))
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

        image_written: list[bool] = []
        applies: list[float] = []  # seconds per apply of a put, during the snapshot
        writing = trio.Event()

        async def writer_load() -> None:
            """Overwrites of existing keys, 100 per loop turn, while the image is written."""
            await writing.wait()
            i = 0
            while not image_written:
                commands = [
                    encode_put(b"key-%011d" % ((i + j) * 7919 % args.keys), b"new")
                    for j in range(100)
                ]
                started = time.perf_counter()
                for command in commands:
                    sm.apply(0, command)
                applies.append((time.perf_counter() - started) / 100)
                i += 100
                await trio.sleep(0)

        def write(image: object) -> object:
            with SnapshotWriter.create(directory, header) as writer:
                image(writer)  # type: ignore[operator]
                image_written.append(True)  # the overlay stops growing (merge measured below)
                return writer.commit()

        rss_before = rss_now_mib()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(probe)
            nursery.start_soon(writer_load)
            await trio.sleep(0.05)
            started = time.perf_counter()
            image = sm.snapshot()
            on_loop = time.perf_counter() - started
            writing.set()
            written = await trio.to_thread.run_sync(write, image)
            total = time.perf_counter() - started
            done.set()
        del image
        changes = len(sm.data.changes)  # type: ignore[attr-defined]
        drain: list[float] = []  # each apply moves MERGE_PER_APPLY overlay entries back
        while type(sm.data) is not dict:
            command = encode_put(b"key-%011d" % (len(drain) * 7919 % args.keys), b"drain")
            t0 = time.perf_counter()
            sm.apply(0, command)
            drain.append(time.perf_counter() - t0)
        baseline = []
        for i in range(20):
            commands = [
                encode_put(b"key-%011d" % ((i * 100 + j) * 7919 % args.keys), b"new")
                for j in range(100)
            ]
            t0 = time.perf_counter()
            for command in commands:
                sm.apply(0, command)
            baseline.append((time.perf_counter() - t0) / 100)
        print(
            f"apply of a put: {statistics.median(baseline) * 1e6:.2f} us without a snapshot, "
            f"{statistics.median(applies) * 1e6:.2f} us during one ({len(applies) * 100:,} puts); "
            f"merging the {changes:,} keys changed meanwhile back took {len(drain):,} applies "
            f"of at most {max(drain) * 1e6:.0f} us (median {statistics.median(drain) * 1e6:.0f} "
            f"us, {sum(drain) * 1000:.0f} ms in all)"
        )
        print(
            f"snapshot(): {on_loop * 1000:.3f} ms on the loop; serialize + fsync + rename: "
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
        print(f"restore: {time.perf_counter() - started:.2f} s, {len(restored.data):,} keys")
        os.unlink(written.path)

    trio.run(run)


if __name__ == "__main__":
    main()
