"""Snapshots in the node (issue 13): three engines in one process, real TCP, real files.

With a low ``max_log_entries_before_snapshot`` every node snapshots its state machine and
compacts: the core's log and the WAL stay bounded, at most two snapshot files are kept, a
restarted node starts from its newest snapshot and the log after it (serving eventual reads
of what the snapshot covers before it hears from anyone), and ``take_snapshot`` gives a
complete file as of the applied index.
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
import trio

from dengine_trio import EmbeddedEngine
from dengine_trio.errors import Stopped
from dengine_trio.raft.messages import InstallSnapshot
from dengine_trio.runtime import node as node_module
from dengine_trio.runtime import snapshotting
from dengine_trio.statemachine import KVStateMachine
from dengine_trio.storage import Storage
from dengine_trio.storage.snapshots import list_snapshots, restore_snapshot, verify_snapshot

from .cluster import EngineHandle, wait_until, write_configs

THRESHOLD = 40
RETAINED = 10
SEGMENT_BYTES = 4096
"""Small WAL segments, so that compaction (whole segments) shows with a few hundred puts."""
SETTINGS = {
    "raft.snapshot.max_log_entries_before_snapshot": THRESHOLD,
    "raft.snapshot.retained_log_entries": RETAINED,
}


@pytest.fixture(autouse=True)
def small_segments(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The node opens its storage with ``SEGMENT_BYTES`` segments (default 4 MiB)."""
    open_storage = Storage.open.__func__  # type: ignore[attr-defined]

    def open_small(cls: type[Storage], root: Any, *args: Any, **kwargs: Any) -> Storage:
        kwargs.setdefault("segment_bytes", SEGMENT_BYTES)
        return open_storage(cls, root, *args, **kwargs)  # type: ignore[no-any-return]

    monkeypatch.setattr(node_module.Storage, "open", classmethod(open_small))
    yield


async def start_all(stack: AsyncExitStack, configs: list[Any]) -> dict[int, EmbeddedEngine]:
    engines = {}
    for cfg in configs:
        engines[cfg.cluster.node_id] = await stack.enter_async_context(EmbeddedEngine.start(cfg))
    return engines


async def leader_of(engines: dict[int, EmbeddedEngine]) -> int:
    def agreed() -> int | None:
        ids = {e.leader_id() for e in engines.values()}
        return ids.pop() if len(ids) == 1 and None not in ids else None

    leader = await wait_until(agreed)
    await engines[leader].wait_ready(10)
    return leader


def wal_segments(engine: EmbeddedEngine) -> list[Path]:
    return sorted((engine.config.db_root_path() / "wal").glob("*.wal"))


async def write(engine: EmbeddedEngine, count: int, start: int = 0, keys: int = 25) -> None:
    client = engine.client()
    for i in range(start, start + count):
        await client.put(b"key%d" % (i % keys), b"value %d" % i)


def expected(count: int, keys: int = 25) -> dict[bytes, bytes]:
    return {b"key%d" % (i % keys): b"value %d" % i for i in range(count)}


async def test_snapshots_bound_the_log_memory_and_disk(tmp_path: Path) -> None:
    """Every node snapshots every ~THRESHOLD entries; the core keeps at most THRESHOLD +
    RETAINED entries (plus what arrived since), the WAL drops the segments a snapshot covers
    and at most two snapshot files remain; every file verifies and holds the state as of its
    index."""
    configs = write_configs(tmp_path, extra=SETTINGS)
    async with AsyncExitStack() as stack:
        engines = await start_all(stack, configs)
        leader = await leader_of(engines)
        total = 600
        await write(engines[leader], total)
        want = expected(total)

        def settled() -> bool:
            return all(
                e.node_status().applied_index == engines[leader].node_status().commit_index
                and e.node_status().snapshot_index >= total - THRESHOLD
                and not e._runtime.snapshotter.in_progress  # old files removed
                for e in engines.values()
            )

        await wait_until(settled, what="every node applied and snapshotted")
        for engine in engines.values():
            status = engine.node_status()
            runtime = engine._runtime
            raft = runtime.raft
            assert raft is not None
            # The core's log: compacted through snapshot_index - RETAINED at the newest.
            assert raft.log.first_index > total - THRESHOLD - RETAINED - 5
            assert status.last_log_index - raft.log.first_index < THRESHOLD + RETAINED + 10
            assert engine.status()["snapshot_index"] == status.snapshot_index
            # The WAL: the segments of covered entries are gone (a segment is named by its
            # first index; SEGMENT_BYTES hold ~100 entries here).
            segments = wal_segments(engine)
            assert len(segments) <= 3
            assert int(segments[0].stem) > total - THRESHOLD - RETAINED - 200
            assert sum(p.stat().st_size for p in segments) <= 3 * SEGMENT_BYTES + 1024
            snapshots = list_snapshots(engine.config.snapshots_path())
            assert 1 <= len(snapshots) <= 2
            newest = snapshots[0]
            assert newest.last_index == status.snapshot_index
            verify_snapshot(newest.path, engine._runtime.cluster_id)
            image = KVStateMachine()
            await trio.to_thread.run_sync(
                restore_snapshot, newest.path, engine._runtime.cluster_id, image
            )
            # As of its index: put i is entry i + 2 (after the leader's no-op) or a little
            # later (a no-op per further term), so the newest value in the image is there.
            newest_put = max(int(v.split()[1]) for v in image.data.values())
            assert newest.last_index - 2 - 5 <= newest_put <= newest.last_index - 2
            assert all(k == b"key%d" % (int(v.split()[1]) % 25) for k, v in image.data.items())
            state_machine = engine.state_machine
            assert isinstance(state_machine, KVStateMachine)
            assert dict(state_machine.data) == want


async def test_a_restarted_node_starts_from_its_snapshot_and_the_log_after_it(
    tmp_path: Path,
) -> None:
    """A node restarted alone (no peer up, so it hears from nobody) holds everything its
    snapshot covers at once, as eventual reads; with the others back it catches up on the
    rest, and all data is there."""
    configs = write_configs(tmp_path, extra=SETTINGS)
    by_id = {c.cluster.node_id: c for c in configs}
    total = 230
    async with AsyncExitStack() as stack:
        engines = await start_all(stack, configs)
        leader = await leader_of(engines)
        await write(engines[leader], total)

        def caught_up() -> bool:
            commit = engines[leader].node_status().commit_index
            return all(e.node_status().applied_index == commit for e in engines.values())

        await wait_until(caught_up)
        snapshot_index = {n: e.node_status().snapshot_index for n, e in engines.items()}
    follower = next(n for n in by_id if n != leader)
    assert snapshot_index[follower] >= THRESHOLD
    async with EmbeddedEngine.start(by_id[follower]) as alone:
        status = alone.node_status()
        # Before any leader contact: the snapshot is applied, the log after it is not yet.
        assert status.leader_id is None
        assert status.snapshot_index == snapshot_index[follower]
        assert status.applied_index == snapshot_index[follower]
        raft = alone._runtime.raft
        assert raft is not None
        assert raft.log.first_index == snapshot_index[follower] + 1
        state_machine = alone.state_machine
        assert isinstance(state_machine, KVStateMachine)
        assert len(state_machine.data) == 25
    async with AsyncExitStack() as stack:
        engines = await start_all(stack, configs)
        leader = await leader_of(engines)
        await write(engines[leader], 20, start=total)
        want = expected(total + 20)
        for engine in engines.values():
            for key, value in want.items():
                assert await engine.client().get_linearizable(key) == value


async def test_a_restart_with_no_log_after_the_snapshot_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The startup line names the log range after the snapshot; with no entry after it, it
    says so (not an empty range such as "log entries 41..40")."""
    [config] = write_configs(tmp_path, 1, extra=SETTINGS)
    async with EmbeddedEngine.start(config) as engine:
        await engine.wait_ready(10)
        await write(engine, 5)
        taken = await engine.take_snapshot()  # as of the last entry: nothing after it
    caplog.clear()
    with caplog.at_level("INFO", logger="dengine_trio.node"):
        async with EmbeddedEngine.start(config):
            pass
    lines = [r.getMessage() for r in caplog.records if "recovered term" in r.getMessage()]
    assert len(lines) == 1, lines
    assert f"snapshot through {taken.last_index}, no log entries after it" in lines[0]


async def test_take_snapshot_is_fresh_and_complete(tmp_path: Path) -> None:
    """``take_snapshot`` returns a verified file as of the applied index: the same file
    again while nothing was applied, a new one after a write; also with ``enable`` off,
    where the node takes none by itself."""
    configs = write_configs(
        tmp_path,
        extra={**SETTINGS, "raft.snapshot.enable": False},
    )
    async with AsyncExitStack() as stack:
        engines = await start_all(stack, configs)
        leader = await leader_of(engines)
        await write(engines[leader], 3 * THRESHOLD)
        for engine in engines.values():
            assert engine.node_status().snapshot_index == 0
        engine = engines[leader]
        first = await engine.take_snapshot()
        assert first.last_index == engine.node_status().applied_index
        verified = verify_snapshot(first.path, engine._runtime.cluster_id)
        assert (verified.last_index, verified.last_term) == (first.last_index, first.last_term)
        assert (await engine.take_snapshot()).path == first.path
        await write(engine, 1, start=3 * THRESHOLD)
        second = await engine.take_snapshot()
        assert second.last_index == first.last_index + 1
        image = KVStateMachine()
        restore_snapshot(second.path, engine._runtime.cluster_id, image)
        assert image.data == expected(3 * THRESHOLD + 1)
        # Callers during a write: each gets a complete file as of the index applied when
        # it asked or later; one that asked after the write was applied sees the write.
        # With enable off a snapshot asked for is a backup: nothing is compacted.
        raft = engine._runtime.raft
        assert raft is not None and raft.log.first_index == 1
        assert engine.node_status().snapshot_index == 0
        results: list[Any] = []

        async def take() -> None:
            results.append(await engine.take_snapshot())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(take)
            nursery.start_soon(write, engine, 1, 3 * THRESHOLD + 1)
            nursery.start_soon(take)
        await take()
        assert len(results) == 3
        assert all(r.last_index >= second.last_index for r in results)
        assert results[-1].last_index == engine.node_status().applied_index == second.last_index + 1
        verify_snapshot(results[-1].path, engine._runtime.cluster_id)
        assert len(list_snapshots(engine.config.snapshots_path())) <= 2


async def test_a_staged_snapshot_is_installed_or_discarded(tmp_path: Path) -> None:
    """The follower's half of InstallSnapshot, without the network: a node that missed
    entries the others compacted is handed the leader's snapshot file (as the transport
    hands a received one over). The core emits ``RestoreSnapshot``: the file goes into
    ``snapshots_dir``, the WAL restarts after it, the state machine holds its data and the
    node has applied its index; a restart starts from it. A file the core does not need (its
    index is already committed here) is deleted and changes nothing."""
    configs = write_configs(tmp_path, extra=SETTINGS)
    by_id = {c.cluster.node_id: c for c in configs}
    async with AsyncExitStack() as stack:
        engines = await start_all(stack, configs)
        leader = await leader_of(engines)
        await write(engines[leader], 20)
        lagging = next(n for n in engines if n != leader)
        await engines[lagging].stop()
        await write(engines[leader], 200, start=20)
        snapshot = await engines[leader].take_snapshot()
        term = engines[leader].node_status().term
        older = list_snapshots(engines[leader].config.snapshots_path())[1]
        copy_older = tmp_path / "older.snap"
        copy_older.write_bytes(older.path.read_bytes())
        copy = tmp_path / "newest.snap"
        copy.write_bytes(snapshot.path.read_bytes())
    incoming = by_id[lagging].snapshots_path() / "incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    (incoming / "left-by-a-crash.snap").write_bytes(b"x")
    async with EmbeddedEngine.start(by_id[lagging]) as alone:
        assert list(incoming.iterdir()) == []  # what a previous process staged is gone
        runtime = alone._runtime
        assert alone.node_status().applied_index == 0  # no snapshot yet, log not replayed
        staged = incoming / snapshot.path.name
        staged.write_bytes(copy.read_bytes())
        runtime.snapshot_received(
            InstallSnapshot(term, leader, lagging, snapshot.last_index, snapshot.last_term),
            staged,
        )
        # A snapshot asked for meanwhile (GET /snapshot) is of the installed state, not of
        # the state being replaced under its capture.
        taken = await alone.take_snapshot()
        assert taken.last_index == snapshot.last_index
        image = KVStateMachine()
        restore_snapshot(taken.path, alone._runtime.cluster_id, image)
        assert image.data == expected(220)
        await wait_until(lambda: alone.node_status().applied_index == snapshot.last_index)
        status = alone.node_status()
        assert (status.snapshot_index, status.snapshot_term) == (
            snapshot.last_index,
            snapshot.last_term,
        )
        assert status.leader_id == leader
        installed = by_id[lagging].snapshots_path() / snapshot.path.name
        assert installed.is_file() and not staged.exists()
        assert runtime.storage is not None and runtime.storage.last_index == snapshot.last_index
        state_machine = alone.state_machine
        assert isinstance(state_machine, KVStateMachine)
        assert dict(state_machine.data) == expected(220)
        # An older snapshot than the commit index: answered, not installed, deleted.
        assert older.last_index < snapshot.last_index
        staged = incoming / older.path.name
        staged.write_bytes(copy_older.read_bytes())
        runtime.snapshot_received(
            InstallSnapshot(term, leader, lagging, older.last_index, older.last_term), staged
        )
        await wait_until(lambda: not staged.exists())
        assert alone.node_status().applied_index == snapshot.last_index
        assert dict(state_machine.data) == expected(220)
        assert list_snapshots(by_id[lagging].snapshots_path())[0].path == installed
    # A restart starts from the installed snapshot at once.
    async with EmbeddedEngine.start(by_id[lagging]) as again:
        assert again.node_status().applied_index == snapshot.last_index
        state_machine = again.state_machine
        assert isinstance(state_machine, KVStateMachine)
        assert dict(state_machine.data) == expected(220)


async def test_a_node_down_while_the_log_was_compacted_catches_up_by_snapshot(
    tmp_path: Path,
) -> None:
    """A follower stopped while the others wrote and compacted far past its log comes back:
    the leader sends its snapshot (the transport streams the file, runtime/snapshot_transfer.py),
    the follower installs it and then takes the log after it; all data is there, on the
    follower's own state machine, and its log and WAL start after the installed snapshot."""
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
        await wait_until(
            lambda: (
                engines[leader]._runtime.raft is not None
                and engines[leader]._runtime.raft.log.first_index > 30
            )
        )
        back = await nodes[lagging].start(nursery)
        await write(engines[leader], 5, start=320)
        commit = engines[leader].node_status().commit_index
        await wait_until(lambda: back.node_status().applied_index >= commit, 30)
        status = back.node_status()
        assert status.snapshot_index > 30  # installed: its log never held those entries
        assert back._runtime.snapshotter.installed >= 1
        state_machine = back.state_machine
        assert isinstance(state_machine, KVStateMachine)
        assert dict(state_machine.data) == expected(325)
        raft = back._runtime.raft
        assert raft is not None and raft.log.first_index > 30
        assert int(wal_segments(back)[0].stem) > 30
        nursery.cancel_scope.cancel()


async def test_a_snapshot_that_cannot_be_written_is_retried_and_writes_go_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A full disk while a snapshot is written: one ERROR line naming the directory, the
    node goes on taking writes (the log is simply not compacted), ``take_snapshot`` raises
    the ``OSError``, and once the disk has room the next attempt succeeds."""
    disk_full = True
    write_snapshot = snapshotting.write_snapshot

    def flaky(*args: Any, **kwargs: Any) -> Any:
        if disk_full:
            raise OSError(errno.ENOSPC, "No space left on device")
        return write_snapshot(*args, **kwargs)

    monkeypatch.setattr(snapshotting, "write_snapshot", flaky)
    monkeypatch.setattr(snapshotting, "RETRY_AFTER_FAILURE_S", 0.2)
    configs = write_configs(tmp_path, extra=SETTINGS)
    async with AsyncExitStack() as stack:
        engines = await start_all(stack, configs)
        leader = await leader_of(engines)
        await write(engines[leader], 3 * THRESHOLD)
        with pytest.raises(OSError, match="No space left"):
            await engines[leader].take_snapshot()
        assert all(e.node_status().snapshot_index == 0 for e in engines.values())
        assert all(not e.node_status().stopped for e in engines.values())

        def failed_everywhere() -> bool:  # each node names its own directory
            errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
            return all(
                any("could not write a snapshot as of index" in m and where in m for m in errors)
                for where in (str(e.config.snapshots_path()) for e in engines.values())
            )

        await wait_until(failed_everywhere)
        disk_full = False
        await trio.sleep(0.3)
        await write(engines[leader], 2, start=3 * THRESHOLD)
        await wait_until(
            lambda: all(e.node_status().snapshot_index > 0 for e in engines.values()),
            what="a snapshot on every node once the disk has room",
        )
        for engine in engines.values():
            assert verify_snapshot(
                list_snapshots(engine.config.snapshots_path())[0].path, engine._runtime.cluster_id
            )


class BrokenSnapshotKV(KVStateMachine):
    """A state machine whose ``snapshot()`` fails until ``broken`` is cleared."""

    broken = True

    def snapshot(self) -> Any:
        if BrokenSnapshotKV.broken:
            raise ValueError("cannot capture now")
        return super().snapshot()


async def test_a_state_machine_whose_snapshot_raises_does_not_stop_the_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """``snapshot()`` raising (a custom state machine's bug): an ERROR line, writes go on,
    the next attempt after the back-off captures once it works."""
    monkeypatch.setattr(snapshotting, "RETRY_AFTER_FAILURE_S", 0.2)
    monkeypatch.setattr(BrokenSnapshotKV, "broken", True)
    configs = write_configs(tmp_path, size=1, extra=SETTINGS)
    async with EmbeddedEngine.start(configs[0], state_machine=BrokenSnapshotKV()) as engine:
        await engine.wait_ready(10)
        await write(engine, 2 * THRESHOLD)
        assert engine.node_status().snapshot_index == 0
        assert any("snapshot() raised" in r.getMessage() for r in caplog.records)
        BrokenSnapshotKV.broken = False
        await trio.sleep(0.3)
        await write(engine, 1, start=2 * THRESHOLD)
        await wait_until(lambda: engine.node_status().snapshot_index > 0)
        state_machine = engine.state_machine
        assert isinstance(state_machine, KVStateMachine)
        assert dict(state_machine.data) == expected(2 * THRESHOLD + 1)


class GatedKV(KVStateMachine):
    """A state machine whose image writes one chunk, then waits for ``gate`` (in the writer
    thread) before the rest: a snapshot that is still being written when the node stops."""

    def __init__(self) -> None:
        super().__init__()
        self.started = threading.Event()
        self.gate = threading.Event()

    def snapshot(self) -> Any:
        def image(sink: Any) -> None:
            sink.write(b"first chunk")
            self.started.set()
            assert self.gate.wait(30)
            sink.write(b"the rest")

        return image


async def test_a_node_that_stops_abandons_the_snapshot_being_written(tmp_path: Path) -> None:
    """Stopping does not wait for a snapshot to be written out: its writer gives up at its next
    chunk, nothing is installed and no temporary file is left."""
    configs = write_configs(tmp_path, size=1, extra=SETTINGS)
    state_machine = GatedKV()
    async with EmbeddedEngine.start(configs[0], state_machine=state_machine) as engine:
        await engine.wait_ready(10)
        await write(engine, 3)
        outcome: list[BaseException] = []

        async def take() -> None:
            try:
                await engine.take_snapshot()
            except Stopped as exc:
                outcome.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(take)
            await trio.to_thread.run_sync(state_machine.started.wait, 30)
            engine._runtime.stop()  # what EmbeddedEngine.stop does first
            state_machine.gate.set()
        await engine.stop()
    assert len(outcome) == 1
    directory = configs[0].snapshots_path()
    assert list(directory.iterdir()) == []  # no snapshot, no temporary file
