"""Helpers to run several engines in one trio program on loopback, with real TCP and files."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from dengine_trio.config import NodeConfig, load_config
from dengine_trio.engine import EmbeddedEngine
from tests.chaos.proxy import LinkFault, LinkMode, ProxyNetwork


def free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def write_configs(
    root: Path,
    size: int = 3,
    *,
    strategy: str = "DiskFirst",
    policy: str = "LinearizableRead",
    extra: str = "",
    fronts: dict[int, int] | None = None,
    election_timeout_ms: tuple[int, int] = (300, 500),
    request_timeout_ms: int = 5000,
) -> list[NodeConfig]:
    """Write one TOML file per node under ``root`` and load them.

    With ``fronts`` (node id -> port, e.g. a ``tests.chaos.proxy.ProxyNetwork``'s), every
    node's ``initial_cluster`` names those ports while each node listens on its own port."""
    ports = free_ports(size)
    members = ",\n".join(
        f'    {{ id = {i + 1}, address = "127.0.0.1:{fronts[i + 1] if fronts else port}", '
        "role = 1, status = 2 }"
        for i, port in enumerate(ports)
    )
    configs = []
    for i, port in enumerate(ports):
        node_id = i + 1
        path = root / f"n{node_id}.toml"
        path.write_text(
            f"""
[cluster]
node_id = {node_id}
listen_address = "127.0.0.1:{port}"
initial_cluster = [
{members}
]
db_root_dir = "{root / f"db{node_id}"}"

[raft.read_consistency]
default_policy = "{policy}"
lease_duration_ms = 250

[raft.persistence]
strategy = "{strategy}"
flush_policy = {{ Batch = {{ threshold = 100, interval_ms = 20 }} }}

[raft.timing]
election_timeout_min_ms = {election_timeout_ms[0]}
election_timeout_max_ms = {election_timeout_ms[1]}
heartbeat_interval_ms = 30
request_timeout_ms = {request_timeout_ms}
{extra}
"""
        )
        configs.append(load_config(path))
    return configs


class EngineHandle:
    """One node that a test can stop and start again (a new process, as far as the cluster
    can tell) while the others run: each run is a task of the test's nursery."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self._engine: EmbeddedEngine | None = None
        self._stop = trio.Event()
        self._stopped = trio.Event()

    @property
    def engine(self) -> EmbeddedEngine:
        assert self._engine is not None, "not started"
        return self._engine

    @property
    def running(self) -> bool:
        return self._engine is not None and not self._stopped.is_set()

    async def start(self, nursery: trio.Nursery) -> EmbeddedEngine:
        self._stop, self._stopped = trio.Event(), trio.Event()
        self._engine = await nursery.start(self._run)
        return self._engine

    async def _run(self, *, task_status: trio.TaskStatus[EmbeddedEngine]) -> None:
        try:
            async with EmbeddedEngine.start(self.config) as engine:
                task_status.started(engine)
                await self._stop.wait()
        finally:
            self._stopped.set()

    async def stop(self) -> None:
        self._stop.set()
        await self._stopped.wait()


CUT = LinkFault(LinkMode.CUT)
HEALTHY = LinkFault()


async def wait_until(condition: Callable[[], bool], timeout_s: float = 15.0) -> None:
    with trio.fail_after(timeout_s):
        while not condition():
            await trio.sleep(0.01)


async def proxied_cluster(
    nursery: trio.Nursery, root: Path, **config: Any
) -> tuple[ProxyNetwork, dict[int, EngineHandle]]:
    fronts = dict(zip((1, 2, 3), free_ports(3), strict=True))
    configs = write_configs(root, fronts=fronts, **config)
    net = ProxyNetwork({c.cluster.node_id: c.listen_host_port() for c in configs}, fronts)
    await nursery.start(net.run)
    nodes = {c.cluster.node_id: EngineHandle(c) for c in configs}
    for node in nodes.values():
        await node.start(nursery)
    return net, nodes


async def agreed_leader(nodes: dict[int, EngineHandle]) -> int:
    def agreed() -> bool:
        ids = {n.engine.leader_id() for n in nodes.values() if n.running}
        return len(ids) == 1 and None not in ids

    await wait_until(agreed)
    leader = next(n.engine.leader_id() for n in nodes.values() if n.running)
    assert leader is not None
    await nodes[leader].engine.wait_ready(10)
    return leader


def record_sends(engine: EmbeddedEngine) -> list[object]:
    """Every message ``engine``'s transport is asked to send, from now on."""
    transport = engine._runtime.transport
    assert transport is not None
    sent: list[object] = []
    send = transport.send

    def recording(message: object) -> None:
        sent.append(message)
        send(message)

    transport.send = recording  # type: ignore[method-assign]
    return sent
