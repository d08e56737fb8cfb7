"""WAL segment size against disk footprint and restart cost, under snapshots and compaction.

Run: ``.venv/bin/python -m bench.wal_segments [--entries N] [SEGMENT_MIB ...]`` (default:
305,000 entries, segments of 64, 16, 8, 4 and 1 MiB). Not part of ``make bench``: it measures
the storage layer alone, to choose ``DEFAULT_SEGMENT_BYTES`` (see "Segment size" in
``dengine_trio/storage/__init__.py`` and docs/durability.md).

What it does, per segment size, in a scratch directory: appends N entries of ~305 bytes (a put
of a 256-byte value over 1,000 keys) in batches of 50 through ``Storage``, fsyncs every 1,000
entries, and every 10,000 entries writes a snapshot file, compacts through the snapshot's index
minus 1,000 retained entries and keeps the newest 2 snapshots (the node's defaults). It prints
the largest WAL footprint seen (sampled every 5,000 entries), the WAL at the end, and the time
``Storage.open`` then takes (recovery reads and checks every entry on disk).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from dengine_trio.raft.messages import Entry
from dengine_trio.statemachine import encode_put
from dengine_trio.storage import Storage
from dengine_trio.storage.snapshots import SnapshotHeader, SnapshotWriter, remove_old_snapshots

SNAPSHOT_EVERY = 10_000
RETAINED = 1_000
SYNC_EVERY = 1_000
BATCH = 50
MIB = 1 << 20


def wal_bytes(db: Path) -> int:
    return sum(p.stat().st_size for p in (db / "wal").glob("*.wal"))


def run(entries: int, segment_bytes: int) -> str:
    root = Path(tempfile.mkdtemp(prefix="wal-segments-"))
    try:
        db = root / "db"
        snapshots = db / "snapshots"
        value = b"v" * 256
        peak = 0
        with Storage.open(db, segment_bytes, snapshots_dir=snapshots, cluster_id="c") as storage:
            storage.save_hard_state(1, 1)
            for first in range(1, entries + 1, BATCH):
                last = first + BATCH - 1
                storage.append(
                    [
                        Entry(term=1, index=i, data=encode_put(b"key-%06d" % (i % 1000), value))
                        for i in range(first, last + 1)
                    ]
                )
                if last % SYNC_EVERY == 0:
                    storage.sync()
                if last % SNAPSHOT_EVERY == 0:
                    header = SnapshotHeader(last, 1, "c", {1: "127.0.0.1:1"})
                    with SnapshotWriter.create(snapshots, header) as writer:
                        writer.write(b"x" * 300_000)  # the 1,000 keys' image, about its size
                        writer.commit()
                    storage.compact(max(0, last - RETAINED))
                    remove_old_snapshots(snapshots, keep=2)
                if last % 5_000 == 0:
                    peak = max(peak, wal_bytes(db))
        end = wal_bytes(db)
        segments = len(list((db / "wal").glob("*.wal")))
        start = time.perf_counter()
        with Storage.open(db, segment_bytes, snapshots_dir=snapshots, cluster_id="c") as storage:
            after = len(storage.entries)
        open_s = time.perf_counter() - start
    finally:
        shutil.rmtree(root)
    return (
        f"segments of {segment_bytes / MIB:5.2f} MiB: WAL peak {peak / MIB:5.1f} MiB, "
        f"end {end / MIB:5.1f} MiB in {segments} segment(s); Storage.open {open_s * 1000:4.0f} ms "
        f"({after} entries after the snapshot)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=305_000)
    parser.add_argument("segment_mib", type=float, nargs="*", default=[64, 16, 8, 4, 1])
    args = parser.parse_args()
    for size in args.segment_mib:
        print(run(args.entries, int(size * MIB)), flush=True)


if __name__ == "__main__":
    main()
