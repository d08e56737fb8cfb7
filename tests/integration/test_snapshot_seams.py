"""Seams of the snapshot work (issue 13) between the core, the storage, the node runtime and the
snapshot transfer, with real engines: three in one process, real TCP, real files.

Each test is a fault that no single owner's tests could see: it needs the leader's disk, its
transport and its snapshotter together.
"""

from __future__ import annotations

from pathlib import Path

import trio

from dengine_trio.statemachine import KVStateMachine
from dengine_trio.storage.snapshots import verify_snapshot

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
        verify_snapshot(fresh.path, configs[0].cluster_id())
        assert latest.path.with_name(latest.path.name + ".rejected").exists()
        nursery.cancel_scope.cancel()
