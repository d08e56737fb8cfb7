"""Helpers of the membership end-to-end tests: joining nodes, members as the nodes see them,
a bounded writer that records what was acknowledged, and the CLI as a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import attrs
import httpx

from dengine_trio.config import (
    ROLE_LEARNER,
    STATUS_ACTIVE,
    STATUS_JOINING,
    PeerConfig,
    load_config,
    render_toml,
)
from tests.e2e.cluster import EXIT_TIMEOUT_S, Cluster, Node, free_ports, node_env, wait_until

__all__ = [
    "Writer",
    "add_joiner",
    "cli",
    "health_urls",
    "members_of",
    "put",
    "raft_address",
    "read",
    "voters_of",
    "wait_voter",
]


def add_joiner(
    cluster: Cluster, node_id: int, *, read_replica: bool = False, start: bool = True
) -> Node:
    """A node ``node_id`` with its own file: node 1's file with the other members listed as
    voters and itself ``role = 3`` (``status = 0``, or ``2`` for a read replica), its own ports
    and an empty data directory; appended to ``cluster.nodes`` and started."""
    base = load_config(cluster.nodes[0].config_path)
    raft, kv, health = free_ports(3)
    address = f"127.0.0.1:{raft}"
    status = STATUS_ACTIVE if read_replica else STATUS_JOINING
    members = [p for p in base.cluster.initial_cluster if p.role != ROLE_LEARNER]
    members.append(PeerConfig(node_id, address, role=ROLE_LEARNER, status=status))
    path = cluster.root / f"n{node_id}.toml"
    cfg = attrs.evolve(
        base,
        path=path,
        cluster=attrs.evolve(
            base.cluster,
            node_id=node_id,
            listen_address=address,
            initial_cluster=members,
            db_root_dir=(cluster.root / "db" / str(node_id)).as_posix(),
        ),
    )
    path.write_text(render_toml(cfg), encoding="utf-8")
    node = Node(node_id, path, kv, health)
    cluster.nodes.append(node)
    if start:
        node.start(cluster.root)
    return node


def raft_address(node: Node) -> str:
    """The Raft address ``node``'s own ``initial_cluster`` entry gives."""
    return load_config(node.config_path).own_member().address


def members_of(node: Node) -> dict[str, Any] | None:
    """``GET /members`` of ``node``, or None if it does not answer 200."""
    try:
        response = node.health.get("/members")
    except httpx.TransportError:
        return None
    return response.json() if response.status_code == 200 else None


def voters_of(node: Node) -> set[int] | None:
    view = members_of(node)
    if view is None:
        return None
    return {m["id"] for m in view["members"] if m["voter"]}


def wait_voter(cluster: Cluster, node_id: int, timeout_s: float = 60.0) -> None:
    """Until every live node but ``node_id`` itself counts ``node_id`` among the voters."""

    def everywhere() -> bool:
        views = [voters_of(n) for n in cluster.alive()]
        return all(v is not None and node_id in v for v in views)

    try:
        wait_until(everywhere, timeout_s, f"node {node_id} to be a voter on every live node")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{cluster.logs()}") from None


def health_urls(nodes: list[Node]) -> list[str]:
    return [f"http://127.0.0.1:{n.health_port}" for n in nodes]


def cli(args: list[str], cwd: Path, endpoints: list[str]) -> subprocess.CompletedProcess[str]:
    """``dengine-trio ARGS --endpoint ...`` (the client tool) to completion."""
    argv = [sys.executable, "-m", "dengine_trio", *args]
    for url in endpoints:
        argv += ["--endpoint", url]
    return subprocess.run(
        argv,
        cwd=cwd,
        env=node_env(),
        capture_output=True,
        text=True,
        timeout=EXIT_TIMEOUT_S,
        check=False,
    )


def put(nodes: list[Node], key: str, value: str, timeout_s: float = 10.0) -> bool:
    """One write through the first live node that takes it; True once acknowledged."""
    for node in nodes:
        if not node.running():
            continue
        try:
            response = node.kv.post("/kv", json={"key": key, "value": value}, timeout=timeout_s)
        except httpx.TransportError:
            continue
        if response.status_code == 200:
            return True
    return False


def read(nodes: list[Node], key: str, consistency: str = "linearizable") -> str | None:
    """``key`` read with ``consistency`` from the first live node that answers 200 or 404;
    raises AssertionError if none does."""
    for node in nodes:
        if not node.running():
            continue
        try:
            response = node.kv.get(f"/kv/{key}", params={"consistency": consistency})
        except httpx.TransportError:
            continue
        if response.status_code == 200:
            return str(response.json()["value"])
        if response.status_code == 404:
            return None
    raise AssertionError(f"no node answered a {consistency} read of {key!r}")


class Writer:
    """A thread writing ``w<n>`` = ``v<n>`` for n = 0, 1, ... through ``cluster``'s live nodes
    (bounded: ``limit`` writes at most), recording each acknowledged key."""

    def __init__(self, cluster: Cluster, limit: int = 20_000) -> None:
        self.cluster = cluster
        self.limit = limit
        self.acknowledged: list[str] = []
        self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _run(self) -> None:
        for n in range(self.limit):
            if self._stop.is_set():
                return
            key = f"w{n}"
            if put(self.cluster.alive(), key, f"v{n}", timeout_s=5.0):
                self.acknowledged.append(key)
            else:
                self.failed += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=EXIT_TIMEOUT_S)


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)
