"""Helpers to run several engines in one trio program on loopback, with real TCP and files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import trio

from dengine_trio.config import NodeConfig
from dengine_trio.engine import EmbeddedEngine
from dengine_trio.errors import DengineError
from dengine_trio.policy import ReadPolicy
from dengine_trio.raft.config import Durability
from tests.chaos.proxy import LinkFault, LinkMode, ProxyNetwork
from tests.support.cluster import Settings, free_ports, write_cluster
from tests.support.cluster import wait_until_async as wait_until


def write_configs(
    root: Path,
    size: int = 3,
    *,
    strategy: str = "DiskFirst",
    policy: str = "LinearizableRead",
    extra: Settings | None = None,
    election_timeout_ms: tuple[int, int] = (300, 500),
    request_timeout_ms: int = 5000,
) -> list[NodeConfig]:
    """Write one TOML file per node under ``root`` and load them (data in ``root/db<id>``).

    ``extra``: dotted keys set on every node, e.g. ``{"limits.max_pending_requests": 8}``.
    """
    settings: Settings = {
        "raft.read_consistency.default_policy": ReadPolicy(policy),
        "raft.read_consistency.lease_duration_ms": 250,
        "raft.persistence.strategy": Durability(strategy),
        "raft.timing.election_timeout_min_ms": election_timeout_ms[0],
        "raft.timing.election_timeout_max_ms": election_timeout_ms[1],
        "raft.timing.heartbeat_interval_ms": 30,
        "raft.timing.request_timeout_ms": request_timeout_ms,
        **(extra or {}),
    }
    return write_cluster(root, free_ports(size), settings, db_dir=lambda i: root / f"db{i}")


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


async def put_recording(
    engine: EmbeddedEngine, key: bytes, value: bytes, outcome: list[BaseException | None]
) -> None:
    """Put ``key`` = ``value`` through ``engine``'s client; append ``None`` to ``outcome`` on
    success, the ``DengineError`` on failure (a task whose result the test checks later)."""
    try:
        await engine.client().put(key, value)
        outcome.append(None)
    except DengineError as exc:
        outcome.append(exc)


async def bootstrap_then_stop(config: NodeConfig, others: dict[int, EmbeddedEngine]) -> None:
    """Run ``config``'s node until the cluster of it and ``others`` has bootstrapped (a leader,
    and every member bound in the explicit membership on every running node), then stop it,
    leadership handed to one of ``others`` first.

    A brand-new cluster elects its first leader only with every initial member (membership
    rule 9 in docs/architecture.md), so a test that wants a cluster running with one member
    down bootstraps with it first. Raises ``trio.TooSlowError`` after 30 s."""

    def bootstrapped(engines: list[EmbeddedEngine]) -> bool:
        views = [e._runtime.membership.members() for e in engines]
        return any(e.is_leader() for e in engines) and all(
            view["index"] and all(m["bound"] for m in view["members"])  # type: ignore[attr-defined]
            for view in views
        )

    with trio.fail_after(30):
        async with EmbeddedEngine.start(config) as node:
            everyone = [*others.values(), node]
            while not bootstrapped(everyone):
                await trio.sleep(0.02)
            if node.is_leader():
                await node.transfer_leadership_to(next(iter(others)))
