"""A separate process for the storage tests (run as a script, not collected by pytest).

storage_process.py try DB      open DB; print "opened", or "locked: <message>"
storage_process.py hold DB     open DB, print "held <pid>", keep it until stdin closes
storage_process.py write DB    append and sync entries (trio, sync in a worker thread, as
                               the runtime does) and print "synced <index> <term>" after
                               each sync, until killed
storage_process.py snapshots DIR   write KV snapshots of ~1 MiB into DIR in small chunks,
                               one after another (keeping the newest 2), and print
                               "committed <index>" after each commit, until killed
storage_process.py install DB  what a node's storage goes through with snapshots: append and
                               sync entries (printing "synced <index> <term>"), take a
                               snapshot and compact every SNAPSHOT_EVERY entries ("snapshot
                               <index> <term>"), and every INSTALL_EVERY entries install a
                               leader's snapshot ahead of the log with a new term, staged in
                               DB/snapshots/incoming ("installed <index> <term>"); continues
                               from what it recovers, until killed
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import trio

from dengine_trio.raft.messages import Entry
from dengine_trio.statemachine import KVStateMachine, encode_put
from dengine_trio.storage import Storage, StorageLockedError
from dengine_trio.storage.snapshots import SnapshotHeader, SnapshotWriter, remove_old_snapshots

SEGMENT_BYTES = 8192
WRITE_TERM = 3
MAX_INDEX = 200_000  # an upper bound on the disk a forgotten writer can fill
SNAPSHOT_CLUSTER = "crash-000000000000"
SNAPSHOT_KEYS = 4000
MAX_SNAPSHOTS = 2000  # the writer stops by itself after this many (~2 GB written, 2 kept)


def payload(index: int) -> bytes:
    """The data of entry ``index``, so a reader can check every entry it recovers."""
    return b"entry-%d;" % index * (1 + index % 5)


def try_open(db: str) -> None:
    try:
        storage = Storage.open(db)
    except StorageLockedError as exc:
        print(f"locked: {exc}", flush=True)
        return
    storage.close()
    print("opened", flush=True)


def hold(db: str) -> None:
    with Storage.open(db):
        print(f"held {os.getpid()}", flush=True)
        sys.stdin.read()


async def write(db: str) -> None:
    storage = Storage.open(db, segment_bytes=SEGMENT_BYTES)
    storage.save_hard_state(term=WRITE_TERM, voted_for=1)
    next_index = storage.last_index + 1
    limit = trio.Event()

    async def append_forever() -> None:
        nonlocal next_index
        batch_size = 1
        while next_index <= MAX_INDEX:
            last = next_index + batch_size - 1
            storage.append(
                [
                    Entry(term=WRITE_TERM, index=i, data=payload(i))
                    for i in range(next_index, last + 1)
                ]
            )
            next_index = last + 1
            batch_size = batch_size % 7 + 1
            await trio.sleep(0)
        limit.set()

    async def sync_forever() -> None:
        while True:
            index, term = await trio.to_thread.run_sync(storage.sync)
            print(f"synced {index} {term}", flush=True)
            if limit.is_set():
                await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(append_forever)
        nursery.start_soon(sync_forever)


def snapshot_state(index: int) -> KVStateMachine:
    """The state a snapshot at ``index`` holds, so a reader can check what it restores."""
    sm = KVStateMachine()
    for key in range(SNAPSHOT_KEYS):
        sm.apply(index, encode_put(b"key-%d" % key, b"%d;" % index * 40))
    return sm


def snapshots(directory: str) -> None:
    for index in range(1, MAX_SNAPSHOTS + 1):
        header = SnapshotHeader(index, 1, SNAPSHOT_CLUSTER, {1: "127.0.0.1:1"})
        with SnapshotWriter.create(directory, header, chunk_bytes=4096) as writer:
            snapshot_state(index).snapshot()(writer)
            writer.commit()
        print(f"committed {index}", flush=True)
        remove_old_snapshots(directory, keep=2)


SNAPSHOT_EVERY = 60
INSTALL_EVERY = 250
INSTALL_AHEAD = 37
RETAINED = 20


def term_payload(index: int, term: int) -> bytes:
    """The data of entry ``index`` written in ``term`` by ``install``."""
    return b"entry-%d-term-%d;" % (index, term) * (1 + index % 3)


def install(db: str) -> None:
    root = Path(db)
    snapshots = root / "snapshots"
    # As the node does at startup: a staged snapshot that was never installed is dropped.
    for leftover in (snapshots / "incoming").glob("*"):
        leftover.unlink()
    storage = Storage.open(
        root, segment_bytes=SEGMENT_BYTES, snapshots_dir=snapshots, cluster_id=SNAPSHOT_CLUSTER
    )
    term = max(storage.hard_state.term, storage.snapshot_term, 1)
    if storage.hard_state.term < term:
        storage.save_hard_state(term, 1)
    next_index = storage.last_index + 1
    batch_size = 1
    while next_index <= MAX_INDEX:
        last = next_index + batch_size - 1
        storage.append(
            [
                Entry(term=term, index=i, data=term_payload(i, term))
                for i in range(next_index, last + 1)
            ]
        )
        index, synced_term = storage.sync()
        print(f"synced {index} {synced_term}", flush=True)
        for crossed in range(next_index, last + 1):
            if crossed % SNAPSHOT_EVERY == 0:
                header = SnapshotHeader(last, term, SNAPSHOT_CLUSTER, {1: "127.0.0.1:1"})
                with SnapshotWriter.create(snapshots, header, chunk_bytes=512) as writer:
                    writer.write(term_payload(last, term) * 50)
                    writer.commit()
                storage.compact(max(0, last - RETAINED))
                remove_old_snapshots(snapshots, keep=2)
                print(f"snapshot {last} {term}", flush=True)
            if crossed % INSTALL_EVERY == 0:
                term += 1
                storage.save_hard_state(term, 1)
                leader = last + INSTALL_AHEAD
                header = SnapshotHeader(leader, term, SNAPSHOT_CLUSTER, {1: "127.0.0.1:1"})
                with SnapshotWriter.create(
                    snapshots / "incoming", header, chunk_bytes=512
                ) as writer:
                    writer.write(term_payload(leader, term) * 50)
                    staged = writer.commit()
                storage.install_snapshot(leader, term, staged=staged.path)
                print(f"installed {leader} {term}", flush=True)
                last = leader
                break
        next_index = last + 1
        batch_size = batch_size % 7 + 1


def main() -> None:
    command, db = sys.argv[1], sys.argv[2]
    if command == "try":
        try_open(db)
    elif command == "hold":
        hold(db)
    elif command == "write":
        trio.run(write, db)
    elif command == "snapshots":
        snapshots(db)
    elif command == "install":
        install(db)
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main()
