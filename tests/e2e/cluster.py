"""Real node processes for end-to-end tests (ports, files and waits from tests.support).

Every node is ``python -m dengine_trio`` with its own TOML file in a temporary directory and
ports chosen free at test time, so the suite runs beside a developer's own cluster. Every wait
polls with a deadline; nothing sleeps in place of a condition.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import httpx

from dengine_trio.policy import ReadPolicy
from dengine_trio.raft.config import Durability
from tests.support.cluster import Settings, free_ports, wait_until, write_cluster

__all__ = [
    "NODE_SETTINGS",
    "Cluster",
    "Node",
    "free_ports",
    "key_path",
    "node_env",
    "read_until_closed",
    "run_cli",
    "running_cluster",
    "wait_until",
]

START_TIMEOUT_S = 60.0
"""Generous: three interpreters start on a shared two-core machine."""
EXIT_TIMEOUT_S = 30.0


def key_path(key: str) -> str:
    """``/kv/<key>`` with every character escaped, dots too (clients fold ``/..`` away)."""
    return "/kv/" + quote(key, safe="").replace(".", "%2E")


NODE_SETTINGS: Settings = {
    "raft.read_consistency.default_policy": ReadPolicy.LEASE,
    "raft.read_consistency.lease_duration_ms": 500,
    "raft.persistence.strategy": Durability.MEM_FIRST,
}
"""The mission's node file on loopback (the other keys at their defaults)."""


RAW_READ_TIMEOUT_S = 10.0
"""Bound on a raw exchange's wait for the server to close; the answer comes in milliseconds."""


def read_until_closed(
    port: int, request: bytes, timeout_s: float = RAW_READ_TIMEOUT_S
) -> tuple[bytes, bool]:
    """Send ``request`` raw on a fresh connection to 127.0.0.1:``port``; read until the server
    closes it (a reset counts as closing). Returns what was read and whether it closed (False:
    ``timeout_s`` passed with the connection still open). For what an HTTP client would hide.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(request)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except TimeoutError:
            return received, False
        except ConnectionResetError:
            pass
        return received, True


def run_cli(
    args: list[str], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m dengine_trio ARGS`` to completion (for runs expected to exit at once)."""
    return subprocess.run(
        [sys.executable, "-m", "dengine_trio", *args],
        cwd=cwd,
        env={**node_env(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=EXIT_TIMEOUT_S,
        check=False,
    )


def node_env() -> dict[str, str]:
    """The environment of a node process: unbuffered, INFO logs, no CONFIG_PATH override."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "LOG_LEVEL": "info"}
    env.pop("CONFIG_PATH", None)
    return env


class Node:
    """One node process and HTTP clients for its two ports."""

    def __init__(self, node_id: int, config_path: Path, port: int, health_port: int) -> None:
        self.node_id = node_id
        self.config_path = config_path
        self.port = port
        self.health_port = health_port
        self.log_path = config_path.with_suffix(".log")
        self.proc: subprocess.Popen[bytes] | None = None
        self.stop_requested = False
        # trust_env=False: a proxy from the environment must not sit between test and node.
        self.kv = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10, trust_env=False)
        self.health = httpx.Client(
            base_url=f"http://127.0.0.1:{health_port}", timeout=10, trust_env=False
        )

    def start(self, cwd: Path, env: dict[str, str] | None = None) -> None:
        """Start the process in ``cwd``; ``env``: variables over :func:`node_env`'s."""
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable, "-m", "dengine_trio",
                    # Without .toml on purpose: the CLI accepts both spellings.
                    "--config-path", str(self.config_path.with_suffix("")),
                    "--port", str(self.port),
                    "--health-port", str(self.health_port),
                ],
                cwd=cwd,
                env={**node_env(), **(env or {})},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def terminate(self) -> None:
        self.stop_requested = True
        if self.running():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout_s: float = EXIT_TIMEOUT_S) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout_s)

    def kill(self) -> None:
        self.stop_requested = True
        if self.running():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(timeout=EXIT_TIMEOUT_S)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def status_code(self, client: httpx.Client, path: str) -> int | None:
        """The status of ``GET path``, or None if the node does not answer."""
        try:
            return client.get(path).status_code
        except httpx.TransportError:
            return None

    def close(self) -> None:
        self.kv.close()
        self.health.close()


class Cluster:
    """Nodes of one cluster, each with its own config file under ``root``."""

    def __init__(
        self,
        root: Path,
        size: int = 3,
        settings: Settings | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        """``settings``: dotted keys over :data:`NODE_SETTINGS`, for every node; ``env``:
        environment variables over :func:`node_env`'s, for every node's process."""
        self.root = root
        self.env = env
        ports = free_ports(3 * size)
        raft_ports, kv_ports, health_ports = ports[:size], ports[size : 2 * size], ports[2 * size :]
        configs = write_cluster(root, raft_ports, {**NODE_SETTINGS, **(settings or {})})
        self.nodes = [
            Node(c.cluster.node_id, c.path, kv, health)
            for c, kv, health in zip(configs, kv_ports, health_ports, strict=True)
        ]

    def start(self) -> None:
        for node in self.nodes:
            node.start(self.root, self.env)

    def alive(self) -> list[Node]:
        return [n for n in self.nodes if n.running()]

    def logs(self) -> str:
        return "\n".join(f"--- node {n.node_id} ---\n{n.log_text()[-4000:]}" for n in self.nodes)

    def wait_for_leader(self, timeout_s: float = START_TIMEOUT_S) -> Node:
        """The one live node whose ``/primary`` is 200, once all answer and exactly one is."""

        def single_primary() -> Node | None:
            for node in self.nodes:
                if node.proc is None or node.stop_requested:
                    continue
                if node.proc.poll() is not None:
                    raise AssertionError(
                        f"node {node.node_id} exited with {node.proc.returncode}\n{self.logs()}"
                    )
            alive = self.alive()
            # Every node must answer too, or a test could signal one that is still starting.
            if any(n.status_code(n.health, "/status") != 200 for n in alive):
                return None
            primaries = [n for n in alive if n.status_code(n.health, "/primary") == 200]
            return primaries[0] if len(primaries) == 1 else None

        try:
            return wait_until(
                single_primary, timeout_s, "every node to answer and exactly one /primary 200"
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.logs()}") from None

    def followers(self, leader: Node) -> list[Node]:
        return [n for n in self.alive() if n is not leader]

    def stop(self) -> None:
        """SIGTERM every node, then kill whatever is still running after the bound."""
        for node in self.nodes:
            node.terminate()
        for node in self.nodes:
            if node.proc is not None:
                try:
                    node.wait()
                except subprocess.TimeoutExpired:
                    node.kill()
            node.close()


@contextmanager
def running_cluster(
    root: Path,
    size: int = 3,
    settings: Settings | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[Cluster]:
    """A started cluster, stopped (and if need be killed) on the way out."""
    cluster = Cluster(root, size, settings, env)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
