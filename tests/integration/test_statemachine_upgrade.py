"""A cluster written by the state machine of before issue 17 (its legacy commands in the WAL,
its version-1 images in the snapshot files) restarts under today's: every key is there, with
index 1 for what the old snapshot held and the real index for what the log replays, and the
new compare-and-swap works on the old keys. Three engines in one process,
real TCP, real files."""

from __future__ import annotations

import struct
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import msgpack

from dengine_trio import EmbeddedEngine
from dengine_trio.statemachine import (
    KVStateMachine,
    SnapshotImage,
    SnapshotSink,
    SnapshotSource,
    encode_delete,
    encode_put,
)
from dengine_trio.storage.snapshots import list_snapshots

from .cluster import wait_until, write_configs

THRESHOLD = 40


class StateMachineBeforeIssue17:
    """The state machine as it was before issue 17 (``dengine_trio/statemachine.py`` at
    ef19dc9), reduced to what a node calls: legacy put/delete, and version-1 images
    (``b"DTKV" | u32 1 | [key, value, ...] batches | key count``). Kept here rather than
    loaded from git, so the test runs in a shallow clone too."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}

    def apply(self, index: int, command: bytes) -> bytes:
        op = msgpack.unpackb(command)
        if op[0] == 0:
            self.data[op[1]] = op[2]
        elif op[0] == 1:
            self.data.pop(op[1], None)
        return b""

    def reset(self) -> None:
        self.data = {}

    def snapshot(self) -> SnapshotImage:
        frozen = dict(self.data)

        def image(sink: SnapshotSink) -> None:
            sink.write(struct.pack("<4sI", b"DTKV", 1))
            items = list(frozen.items())
            for at in range(0, len(items), 7):
                sink.write(msgpack.packb([part for pair in items[at : at + 7] for part in pair]))
            sink.write(msgpack.packb(len(frozen)))

        return image

    def restore(self, source: SnapshotSource) -> None:
        payload = b""
        while chunk := source.read(65536):
            payload += chunk
        assert payload[:8] == struct.pack("<4sI", b"DTKV", 1)
        data: dict[bytes, bytes] = {}
        for item in msgpack.Unpacker(_Bytes(payload[8:])):
            if isinstance(item, list):
                data.update(zip(item[::2], item[1::2], strict=True))
        self.data = data


class _Bytes:
    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def read(self, size: int = -1) -> Any:
        end = len(self.data) if size < 0 else self.at + size
        chunk, self.at = self.data[self.at : end], min(end, len(self.data))
        return chunk


async def leader_of(engines: dict[int, EmbeddedEngine]) -> int:
    def agreed() -> int | None:
        ids = {e.leader_id() for e in engines.values()}
        return ids.pop() if len(ids) == 1 and None not in ids else None

    leader = await wait_until(agreed)
    await engines[leader].wait_ready(10)
    return leader


async def test_a_cluster_of_the_old_state_machine_restarts_under_the_new(tmp_path: Path) -> None:
    configs = write_configs(
        tmp_path, extra={"raft.snapshot.max_log_entries_before_snapshot": THRESHOLD}
    )
    total = 130  # three snapshots' worth, and some log after the newest
    async with AsyncExitStack() as stack:
        engines = {
            cfg.cluster.node_id: await stack.enter_async_context(
                EmbeddedEngine.start(cfg, state_machine=StateMachineBeforeIssue17())
            )
            for cfg in configs
        }
        leader = await leader_of(engines)
        for i in range(total):
            # Legacy commands, encoded as before issue 17 (encode_put kept them byte for byte).
            await engines[leader].propose(encode_put(b"key%d" % (i % 20), b"value %d" % i))
        await engines[leader].propose(encode_delete(b"key0"))

        def applied() -> bool:
            commit = engines[leader].node_status().commit_index
            return all(e.node_status().applied_index == commit for e in engines.values())

        await wait_until(applied, what="every node applied")
        snapshots = {n: e.node_status().snapshot_index for n, e in engines.items()}
    for cfg in configs:
        files = list_snapshots(cfg.snapshots_path())
        assert files, "the old nodes wrote snapshots"
        payload = files[0].path.read_bytes()
        assert b"DTKV\x01\x00\x00\x00" in payload  # version 1, as written before issue 17
    want = {b"key%d" % (i % 20): b"value %d" % i for i in range(total)}
    del want[b"key0"]

    async with AsyncExitStack() as stack:
        engines = {
            cfg.cluster.node_id: await stack.enter_async_context(EmbeddedEngine.start(cfg))
            for cfg in configs
        }
        leader = await leader_of(engines)
        for node_id, engine in engines.items():
            assert engine.node_status().snapshot_index >= snapshots[node_id] > 0
            machine = engine.state_machine
            assert isinstance(machine, KVStateMachine)
            await wait_until(lambda m=machine: dict(m.data) == want, what="the old state")
            # Keys from the version-1 image carry index 1; keys written by the log replayed
            # after it carry their real index.
            indexes = {key: meta[1] for key, meta in machine.meta.items()}
            assert set(indexes) == set(want)
            assert 1 in indexes.values(), "restored from a version-1 image"
            assert max(indexes.values()) > snapshots[node_id] - THRESHOLD
        client = engines[leader].client()
        item = await client.get_item(b"key5")
        assert item is not None and item.value == want[b"key5"]
        # The new commands on old keys: a CAS on the index the read showed, then one on
        # absence (key0 was deleted by the old state machine).
        await client.put(b"key5", b"swapped", prev_index=item.mod_index)
        assert await client.get(b"key5") == b"swapped"
        await client.put(b"key0", b"back", prev_value=None)
        assert await client.get(b"key0") == b"back"
