"""Seams of the snapshot work (issue 13) between the core, the storage, the node runtime and the
snapshot transfer, with real engines: three in one process, real TCP, real files.

Each test is a fault that no single owner's tests could see: it needs the leader's disk, its
transport and its snapshotter together.
"""

from __future__ import annotations

from pathlib import Path

import trio

from dengine_trio import EmbeddedEngine
from dengine_trio.statemachine import KVStateMachine
from dengine_trio.storage.snapshots import list_snapshots, verify_snapshot

from .cluster import EngineHandle, wait_until, write_configs
from .test_snapshot_node import (  # noqa: F401 (small_segments: an autouse fixture)
    SETTINGS,
    expected,
    leader_of,
    small_segments,
    write,
)


def damage(path: Path) -> None:
    """Flip one byte in the middle of the file, in place (bit rot: same size, same name)."""
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0x40]))


async def test_a_leader_whose_newest_snapshot_is_damaged_still_catches_a_follower_up(
    tmp_path: Path,
) -> None:
    """The leader's newest snapshot file rots on its disk after it was written (verified at
    write, never read since). A follower that needs a snapshot refuses the file (checksum);
    before, the leader streamed the same damaged file again at every heartbeat answer and the
    follower never caught up (until enough new writes made the leader take another snapshot:
    with no more writes, never). Now the leader verifies its own file when a follower refuses
    one, moves a damaged one aside and takes a fresh snapshot, which the follower installs."""
    configs = write_configs(tmp_path, extra=SETTINGS)
    nodes = {c.cluster.node_id: EngineHandle(c) for c in configs}
    async with trio.open_nursery() as nursery:
        for handle in nodes.values():
            await handle.start(nursery)
        engines = {n: h.engine for n, h in nodes.items()}
        leader = await leader_of(engines)
        await write(engines[leader], 20)
        lagging = next(n for n in nodes if n != leader)
        await nodes[lagging].stop()
        await write(engines[leader], 300, start=20)
        runtime = engines[leader]._runtime

        def compacted_and_idle() -> bool:
            raft = runtime.raft
            return (
                raft is not None
                and raft.log.first_index > 30
                and not runtime.snapshotter.in_progress
                and runtime.snapshotter.latest is not None
            )

        await wait_until(compacted_and_idle)
        latest = runtime.snapshotter.latest
        assert latest is not None
        damage(latest.path)
        back = await nodes[lagging].start(nursery)
        commit = engines[leader].node_status().commit_index
        await wait_until(lambda: back.node_status().applied_index >= commit, 30)
        assert back._runtime.snapshotter.installed >= 1
        state_machine = back.state_machine
        assert isinstance(state_machine, KVStateMachine)
        assert dict(state_machine.data) == expected(320)
        # The leader's newest file is a valid one again; the damaged one is out of the way.
        fresh = runtime.snapshotter.latest
        assert fresh is not None
        verify_snapshot(fresh.path, runtime.cluster_id)
        assert latest.path.with_name(latest.path.name + ".rejected").exists()
        nursery.cancel_scope.cancel()


async def test_a_node_whose_newest_snapshot_is_damaged_restarts_from_the_older_one(
    tmp_path: Path,
) -> None:
    """Two snapshot files are kept so that a damaged newest one is not fatal: storage falls
    back to the older one if the log still holds every entry after it. The runtime compacts
    the WAL through (newest - retained_log_entries), past the older snapshot whenever
    max_log_entries_before_snapshot > retained_log_entries (the defaults: 10,000 and 1,000),
    so the fallback can never apply: one flipped byte in the newest file and the node refuses
    to start (UnrecoverableStorageError), although every entry was on its disk until that
    compaction. Compacting the WAL only through the older kept snapshot's index would keep it."""
    (config,) = write_configs(tmp_path, size=1, extra=SETTINGS)
    value = b"v" * 600  # a few entries per 4 KiB segment: compaction shows at once
    async with EmbeddedEngine.start(config) as engine:
        await engine.wait_ready(10)
        client = engine.client()
        for i in range(200):
            await client.put(b"key%d" % (i % 25), value + b"%d" % i)
        await wait_until(lambda: not engine._runtime.snapshotter.in_progress)
        latest = engine._runtime.snapshotter.latest
        assert latest is not None and latest.last_index > 2 * 40
    kept = list_snapshots(config.snapshots_path())
    assert len(kept) == 2 and kept[0].path == latest.path
    damage(latest.path)
    async with EmbeddedEngine.start(config) as engine:
        await engine.wait_ready(10)
        state_machine = engine.state_machine
        assert isinstance(state_machine, KVStateMachine)
        assert dict(state_machine.data) == {
            b"key%d" % (i % 25): value + b"%d" % i for i in range(200)
        }
