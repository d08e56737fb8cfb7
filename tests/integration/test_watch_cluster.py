"""``Client.watch`` on a three-node cluster in one process (real TCP, real files).

Watches on every node, checked against the writes' own answers (each write returns the index
it applied at) and against each other: every acknowledged write once, at its index, in index
order, no gap, across a leader change (the leader stopped) and that node's restart (its watch
resumed from the last index seen + 1). Then a follower that comes back behind the leader's
compacted log installs a snapshot: a watch it can no longer continue ends with
``WatchCompacted`` naming the oldest index it can serve, and a watch from there goes on.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from dengine_trio.engine import Client
from dengine_trio.errors import DengineError, Stopped, TooLarge
from dengine_trio.runtime.watch import WatchCompacted, WatchEvent

from .cluster import EngineHandle, agreed_leader, wait_until, write_configs

Seen = list[tuple[int, bytes, bytes | None, str]]


async def write(nodes: dict[int, EngineHandle], key: bytes, value: bytes) -> int:
    """Put through any running node, retrying (with an idempotency key) until it applies."""
    with trio.fail_after(60):
        while True:
            for node in nodes.values():
                if not node.running:
                    continue
                try:
                    return await node.engine.client().put(key, value, idempotency_key=key)
                except DengineError:
                    await trio.sleep(0.05)


async def collect(client: Client, seen: Seen, from_index: int, done: trio.Event) -> None:
    """Append every change of ``e/`` from ``from_index`` until the node stops."""
    try:
        async with client.watch(prefix=b"e/", from_index=from_index) as changes:
            async for change in changes:
                seen.append((change.index, change.key, change.value, change.kind))
    except Stopped:
        pass
    finally:
        done.set()


async def test_client_watch_on_every_node_across_a_leader_change_and_a_restart(
    tmp_path: Path,
) -> None:
    configs = write_configs(tmp_path)
    nodes = {c.cluster.node_id: EngineHandle(c) for c in configs}
    async with trio.open_nursery() as nursery:
        for node in nodes.values():
            await node.start(nursery)
        leader_id = await agreed_leader(nodes)
        seen: dict[int, list[Seen]] = {node_id: [[]] for node_id in nodes}
        for node_id, node in nodes.items():
            nursery.start_soon(collect, node.engine.client(), seen[node_id][0], 1, trio.Event())
        acked: dict[bytes, int] = {}
        for i in range(15):
            acked[b"e/%02d" % i] = await write(nodes, b"e/%02d" % i, b"v%d" % i)
        await nodes[leader_id].stop()  # its watch ends with Stopped
        for i in range(15, 30):
            acked[b"e/%02d" % i] = await write(nodes, b"e/%02d" % i, b"v%d" % i)
        restarted = await nodes[leader_id].start(nursery)
        before = seen[leader_id][0]
        resumed: Seen = []
        seen[leader_id].append(resumed)
        nursery.start_soon(
            collect, restarted.client(), resumed, before[-1][0] + 1 if before else 1, trio.Event()
        )
        for i in range(30, 45):
            acked[b"e/%02d" % i] = await write(nodes, b"e/%02d" % i, b"v%d" % i)

        def joined(node_id: int) -> Seen:
            return [change for part in seen[node_id] for change in part]

        await wait_until(
            lambda: all({c[1] for c in joined(n)} >= set(acked) for n in nodes), 30, "every write"
        )
        reference = joined(1)
        for node_id in nodes:
            changes = joined(node_id)
            indexes = [c[0] for c in changes]
            assert indexes == sorted(set(indexes)), node_id
            by_key = {c[1]: c for c in changes}
            for key, index in acked.items():
                assert by_key[key] == (index, key, b"v%d" % int(key[2:]), "put")
            assert changes == reference, node_id
        for node in nodes.values():
            if node.running:
                await node.stop()


async def test_a_follower_that_installs_a_snapshot_ends_the_watches_it_cannot_continue(
    tmp_path: Path,
) -> None:
    configs = write_configs(
        tmp_path,
        extra={
            "raft.snapshot.max_log_entries_before_snapshot": 10,
            "raft.snapshot.retained_log_entries": 2,
        },
    )
    nodes = {c.cluster.node_id: EngineHandle(c) for c in configs}
    async with trio.open_nursery() as nursery:
        for node in nodes.values():
            await node.start(nursery)
        leader_id = await agreed_leader(nodes)
        follower_id = next(n for n in nodes if n != leader_id)
        await nodes[follower_id].stop()
        for i in range(60):
            await write(nodes, b"s/%02d" % i, b"v")
        leader = nodes[leader_id].engine
        # The leader's log no longer holds what the follower lacks: it must send a snapshot.
        await wait_until(lambda: leader.node_status().snapshot_index > 20, 30, "a snapshot")
        follower = await nodes[follower_id].start(nursery)
        hub = follower.watch_hub
        assert hub is not None
        # Started from its own (older) state: the history it can serve begins after it.
        started_at = hub.oldest_index
        watcher = follower.client().watch(prefix=b"s/", from_index=started_at)
        with pytest.raises(WatchCompacted) as caught:
            with trio.fail_after(30):
                async for _ in watcher:
                    pass
        assert caught.value.oldest_index > started_at
        assert hub.oldest_index == caught.value.oldest_index
        installed = caught.value.oldest_index - 1
        assert follower.node_status().snapshot_index >= installed
        # From the snapshot on (the log after it replayed), the follower's watch goes on.
        async with follower.client().watch(prefix=b"s/", from_index=installed + 1) as watch:
            index = await write(nodes, b"s/after", b"x")
            events: list[WatchEvent] = []
            with trio.fail_after(30):
                while not events or events[-1].key != b"s/after":
                    events.append(await watch.next())
            assert events[-1] == WatchEvent(index, b"s/after", b"x", "put")
            indexes = [e.index for e in events]
            assert indexes == sorted(set(indexes)) and indexes[0] > installed
        for node in nodes.values():
            await node.stop()


async def test_client_watch_refuses_bad_arguments(tmp_path: Path) -> None:
    configs = write_configs(tmp_path, size=1, extra={"limits.max_key_bytes": 8})
    node = EngineHandle(configs[0])
    async with trio.open_nursery() as nursery:
        engine = await node.start(nursery)
        client = engine.client()
        with pytest.raises(TooLarge):
            client.watch(b"k" * 9)
        with pytest.raises(TooLarge):
            client.watch(prefix=b"p" * 9)
        with pytest.raises(ValueError):
            client.watch()
        with pytest.raises(ValueError):
            client.watch(b"k", prefix=b"p")
        with pytest.raises(ValueError):
            client.watch(b"k", from_index=0)
        await node.stop()
