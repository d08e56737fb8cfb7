"""Three engines in one process: real TCP on loopback, real files, real fsync."""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path

import pytest
import trio

from dengine_trio import EmbeddedEngine, ReadPolicy
from dengine_trio.errors import Stopped, TooLarge

from .cluster import write_configs

POLICIES = [ReadPolicy.LINEARIZABLE, ReadPolicy.LEASE, ReadPolicy.EVENTUAL]


async def start_all(stack: AsyncExitStack, configs: list) -> dict[int, EmbeddedEngine]:
    engines = {}
    for cfg in configs:
        engines[cfg.cluster.node_id] = await stack.enter_async_context(EmbeddedEngine.start(cfg))
    return engines


async def wait_leader(engines: dict[int, EmbeddedEngine]) -> int:
    with trio.fail_after(15):
        while True:
            leaders = {e.node_id for e in engines.values() if e.is_leader()}
            if len(leaders) == 1:
                leader = leaders.pop()
                await engines[leader].wait_ready(10)
                if all(e.leader_id() == leader for e in engines.values()):
                    return leader
            await trio.sleep(0.02)


@pytest.mark.parametrize("strategy", ["DiskFirst", "MemFirst"])
async def test_replicates_forwards_and_reads_every_policy(tmp_path: Path, strategy: str) -> None:
    configs = write_configs(tmp_path, strategy=strategy)
    async with AsyncExitStack() as stack:
        engines = await start_all(stack, configs)
        leader = await wait_leader(engines)
        # A write from every node, followers forwarding to the leader.
        for node_id, engine in engines.items():
            await engine.client().put(f"k{node_id}".encode(), f"from {node_id}".encode())
        # Every policy on every node sees every write (eventual after replication settles).
        for engine in engines.values():
            for policy in (ReadPolicy.LINEARIZABLE, ReadPolicy.LEASE):
                for node_id in engines:
                    value = await engine.client().get(f"k{node_id}".encode(), policy)
                    assert value == f"from {node_id}".encode()
        with trio.fail_after(5):
            while [await e.client().get_eventual(b"k3") for e in engines.values()] != [
                b"from 3"
            ] * 3:
                await trio.sleep(0.01)
        follower = next(n for n in engines if n != leader)
        await engines[follower].client().delete(b"k1")
        assert await engines[leader].client().get_linearizable(b"k1") is None
        assert await engines[follower].client().get_lease(b"k1") is None
        with pytest.raises(TooLarge):
            await engines[leader].client().put(b"x" * 2000, b"v")


async def test_restart_follower_and_leader_from_disk(tmp_path: Path) -> None:
    configs = write_configs(tmp_path, strategy="DiskFirst")
    by_id = {c.cluster.node_id: c for c in configs}
    async with AsyncExitStack() as outer:
        engines = await start_all(outer, configs)
        leader = await wait_leader(engines)
        client = engines[leader].client()
        for i in range(50):
            await client.put(f"key{i}".encode(), f"value{i}".encode())
        # Restart a follower: it rebuilds from its log and catches up on what it missed.
        follower = next(n for n in engines if n != leader)
        await engines[follower].stop()
        await client.put(b"while-down", b"yes")
        async with EmbeddedEngine.start(by_id[follower]) as again:
            engines[follower] = again
            assert await again.client().get_linearizable(b"key49") == b"value49"
            assert await again.client().get_linearizable(b"while-down") == b"yes"
            # Now stop the leader: the others elect a new one, with nothing lost.
            await engines[leader].stop()
            rest = {n: e for n, e in engines.items() if n != leader}
            new_leader = await wait_leader(rest)
            assert new_leader != leader
            for i in range(50):
                assert await rest[new_leader].client().get_linearizable(f"key{i}".encode()) == (
                    f"value{i}".encode()
                )
            async with EmbeddedEngine.start(by_id[leader]) as old:
                assert await old.client().get_lease(b"while-down") == b"yes"


async def test_stop_leaves_no_task_running(tmp_path: Path) -> None:
    configs = write_configs(tmp_path)
    async with AsyncExitStack() as stack:
        engines = await start_all(stack, configs)
        await wait_leader(engines)
    # Every engine's nursery has exited: only this test's own task remains.
    task = trio.lowlevel.current_task()
    assert all(not n.child_tasks for n in task.child_nurseries)
    for engine in engines.values():
        assert engine._runtime.stopped
        with pytest.raises(Stopped):
            await engine.client().put(b"k", b"v")


async def test_a_command_too_large_for_one_frame_is_refused_and_replication_goes_on(
    tmp_path: Path,
) -> None:
    from dengine_trio.runtime.node import MAX_COMMAND_BYTES

    configs = write_configs(tmp_path)
    async with AsyncExitStack() as stack:
        engines = await start_all(stack, configs)
        leader = await wait_leader(engines)
        with pytest.raises(TooLarge):
            await engines[leader].propose(b"x" * (MAX_COMMAND_BYTES + 1))
        await engines[leader].client().put(b"after", b"ok")
        follower = next(n for n in engines if n != leader)
        assert await engines[follower].client().get_linearizable(b"after") == b"ok"


async def test_node_status_is_one_frozen_value(tmp_path: Path) -> None:
    import attrs

    configs = write_configs(tmp_path)
    async with AsyncExitStack() as stack:
        engines = await start_all(stack, configs)
        leader = await wait_leader(engines)
        await engines[leader].client().put(b"k", b"v")
        status = engines[leader].node_status(detail=True)
        assert status.is_leader and status.ready and status.has_quorum
        assert status.leader_id == leader and status.commit_index >= 2
        assert set(status.peers) == set(engines) - {leader}
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            status.term = 99  # type: ignore[misc]
        with pytest.raises(TypeError):
            status.peers[99] = status.peers[next(iter(status.peers))]  # type: ignore[index]
        follower = engines[next(n for n in engines if n != leader)].node_status()
        assert follower.role == "follower" and follower.leader_id == leader
        assert follower.leader_contact_recent and not follower.peers and not follower.transport
