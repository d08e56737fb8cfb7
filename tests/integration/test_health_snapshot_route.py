"""``GET /snapshot`` of the health app against a running single-node engine (Quart's test
client; the process-level tests are in ``tests/e2e/test_snapshot_backup.py``): the file and its
headers, and every refusal as a JSON error, the node going on afterwards."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from dengine_trio.api.health import create_health_app
from dengine_trio.api.snapshot import CLUSTER_HEADER, INDEX_HEADER, OPEN_ATTEMPTS, TERM_HEADER
from dengine_trio.config import SnapshotConfig
from dengine_trio.engine import EmbeddedEngine
from dengine_trio.statemachine import KVStateMachine
from dengine_trio.storage.cluster_identity import load_cluster_id
from dengine_trio.storage.snapshots import SnapshotFile, restore_snapshot, verify_snapshot
from tests.support.cluster import free_ports, node_config


def config_of(tmp_path: Path) -> Any:
    address = f"127.0.0.1:{free_ports(1)[0]}"
    return node_config(tmp_path / "n1.toml", 1, address, {1: address}, tmp_path / "db")


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[EmbeddedEngine]:
    async with EmbeddedEngine.start(config_of(tmp_path)) as running:
        await running.wait_ready(30)
        yield running


async def get(engine: EmbeddedEngine, path: str) -> Any:
    return await create_health_app(engine).test_client().get(path)


async def assert_json_error(response: Any, status: int, code: str) -> None:
    assert response.status_code == status
    assert response.content_type == "application/json"
    body = await response.get_json()
    assert body["error"] == code and isinstance(body["message"], str), body


async def test_the_file_holds_every_acknowledged_write(
    engine: EmbeddedEngine, tmp_path: Path
) -> None:
    client = engine.client()
    for i in range(20):
        await client.put(f"k{i}".encode(), f"v{i}".encode())
    response = await get(engine, "/snapshot")
    assert response.status_code == 200
    body = await response.get_data()
    assert int(response.headers["Content-Length"]) == len(body)
    file = tmp_path / "got.snap"
    file.write_bytes(body)
    checked = verify_snapshot(file, response.headers[CLUSTER_HEADER])
    # Issue 14: the node's cluster id is the one generated at bootstrap and persisted.
    cluster_id = load_cluster_id(engine.config.db_root_path())
    assert cluster_id and response.headers[CLUSTER_HEADER] == cluster_id
    assert (checked.last_index, checked.last_term) == (
        int(response.headers[INDEX_HEADER]),
        int(response.headers[TERM_HEADER]),
    )
    machine = KVStateMachine()
    restore_snapshot(file, cluster_id, machine)
    assert all(machine.get(f"k{i}".encode()) == f"v{i}".encode() for i in range(20))


async def test_a_bad_consistency_is_400(engine: EmbeddedEngine) -> None:
    await assert_json_error(await get(engine, "/snapshot?consistency=strong"), 400,
                            "invalid_consistency")  # fmt: skip


async def test_a_file_deleted_before_it_is_opened_is_taken_again(
    engine: EmbeddedEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = engine.take_snapshot
    calls = 0

    async def vanishing(times: int) -> SnapshotFile:
        nonlocal calls
        calls += 1
        taken = await real()
        if calls <= times:
            return SnapshotFile(tmp_path / "gone.snap", taken.last_index, taken.last_term)
        return taken

    monkeypatch.setattr(engine, "take_snapshot", lambda: vanishing(OPEN_ATTEMPTS - 1))
    response = await get(engine, "/snapshot")
    assert response.status_code == 200 and calls == OPEN_ATTEMPTS
    calls = 0
    monkeypatch.setattr(engine, "take_snapshot", lambda: vanishing(OPEN_ATTEMPTS))
    await assert_json_error(await get(engine, "/snapshot"), 500, "snapshot_failed")
    assert calls == OPEN_ATTEMPTS


async def test_a_disk_error_is_500_snapshot_failed(
    engine: EmbeddedEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def failing() -> SnapshotFile:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(engine, "take_snapshot", failing)
    response = await get(engine, "/snapshot")
    await assert_json_error(response, 500, "snapshot_failed")
    assert "No space left" in (await response.get_json())["message"]
    monkeypatch.undo()
    assert (await get(engine, "/snapshot")).status_code == 200


class NoSnapshots:
    """A custom state machine of the embedded API that cannot take snapshots."""

    def apply(self, index: int, command: bytes) -> bytes:
        return b""

    def reset(self) -> None:
        pass


async def test_a_state_machine_without_snapshots_is_501(tmp_path: Path) -> None:
    engine = EmbeddedEngine(config_of(tmp_path), state_machine=NoSnapshots())  # type: ignore[arg-type]
    await assert_json_error(await get(engine, "/snapshot"), 501, "snapshots_unsupported")


async def test_a_stopping_node_is_503_stopped(tmp_path: Path) -> None:
    async with EmbeddedEngine.start(config_of(tmp_path)) as engine:
        await engine.wait_ready(30)
        engine.refuse_requests()
        await assert_json_error(await get(engine, "/snapshot"), 503, "stopped")


async def test_backups_work_with_compaction_off(tmp_path: Path) -> None:
    config = config_of(tmp_path)
    config = attrs.evolve(config, raft=attrs.evolve(config.raft, snapshot=SnapshotConfig(False)))
    async with EmbeddedEngine.start(config) as engine:
        await engine.wait_ready(30)
        await engine.client().put(b"k", b"v")
        response = await get(engine, "/snapshot")
        assert response.status_code == 200
        assert int(response.headers[INDEX_HEADER]) >= 2
