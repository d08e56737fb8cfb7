"""A cluster written by the state machine of before issue 17 (its legacy commands in the WAL,
its version-1 images in the snapshot files) restarts under today's: every key is there, with
index 1 for what the old snapshot held and the real index for what the log replays, and the
new commands (compare-and-swap, txn, TTL) work on the old keys. Three engines in one process,
real TCP, real files."""

from __future__ import annotations

import importlib.util
import subprocess
import tempfile
from contextlib import AsyncExitStack
from pathlib import Path
from types import ModuleType

from dengine_trio import EmbeddedEngine
from dengine_trio.statemachine import KVStateMachine
from dengine_trio.storage.snapshots import list_snapshots

from .cluster import wait_until, write_configs

ROOT = Path(__file__).resolve().parents[2]
BEFORE = "ef19dc9"
"""The last commit before issue 17's state machine (DTKV version 1)."""
THRESHOLD = 40


def old_statemachine() -> ModuleType:
    source = subprocess.run(
        ["git", "show", f"{BEFORE}:dengine_trio/statemachine.py"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "KV_IMAGE_VERSION = 1" in source
    path = Path(tempfile.mkdtemp()) / "statemachine_before_issue_17.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("statemachine_before_issue_17", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def leader_of(engines: dict[int, EmbeddedEngine]) -> int:
    def agreed() -> int | None:
        ids = {e.leader_id() for e in engines.values()}
        return ids.pop() if len(ids) == 1 and None not in ids else None

    leader = await wait_until(agreed)
    await engines[leader].wait_ready(10)
    return leader


async def test_a_cluster_of_the_old_state_machine_restarts_under_the_new(tmp_path: Path) -> None:
    old = old_statemachine()
    configs = write_configs(
        tmp_path, extra={"raft.snapshot.max_log_entries_before_snapshot": THRESHOLD}
    )
    total = 130  # three snapshots' worth, and some log after the newest
    async with AsyncExitStack() as stack:
        engines = {
            cfg.cluster.node_id: await stack.enter_async_context(
                EmbeddedEngine.start(cfg, state_machine=old.KVStateMachine())
            )
            for cfg in configs
        }
        leader = await leader_of(engines)
        for i in range(total):
            await engines[leader].propose(old.encode_put(b"key%d" % (i % 20), b"value %d" % i))
        await engines[leader].propose(old.encode_delete(b"key0"))

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
