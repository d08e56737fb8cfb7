"""Helpers to run several engines in one trio program on loopback, with real TCP and files."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
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
    election_timeout_ms: tuple[int, int] = (300, 500),
    request_timeout_ms: int = 5000,
) -> list[NodeConfig]:
    """Write one TOML file per node under ``root`` and load them."""
    ports = free_ports(size)
    members = ",\n".join(
        f'    {{ id = {i + 1}, address = "127.0.0.1:{port}", role = 1, status = 2 }}'
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


class _ListeningElsewhere(NodeConfig):
    """A node configuration whose Raft listener (and data directory) is not the one its file
    says: a node behind a proxy, or a second process claiming a node's id. (Built this way
    because the file's ``listen_address`` must be the node's own address.)"""

    __slots__ = ("_db", "_listen")

    def listen_host_port(self) -> tuple[str, int]:
        return self._listen

    def db_root_path(self) -> Path:
        return self._db


def listening_elsewhere(
    config: NodeConfig, host: str, port: int, db_root: Path | None = None
) -> NodeConfig:
    elsewhere = _ListeningElsewhere(
        **{f.name: getattr(config, f.name) for f in attrs.fields(NodeConfig)}
    )
    object.__setattr__(elsewhere, "_listen", (host, port))
    object.__setattr__(elsewhere, "_db", db_root or config.db_root_path())
    return elsewhere


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
    # Every node's initial_cluster names the proxy's front ports; each node binds a port of
    # its own behind the proxy.
    configs = write_configs(root, **config)
    fronts = {c.cluster.node_id: c.listen_host_port()[1] for c in configs}
    configs = [
        listening_elsewhere(c, "127.0.0.1", port)
        for c, port in zip(configs, free_ports(3), strict=True)
    ]
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
