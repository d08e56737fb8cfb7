"""Helpers to run several engines in one trio program on loopback, with real TCP and files."""

from __future__ import annotations

import socket
from pathlib import Path

from dengine_trio.config import NodeConfig, load_config


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
election_timeout_min_ms = 300
election_timeout_max_ms = 500
heartbeat_interval_ms = 30
request_timeout_ms = 5000
{extra}
"""
        )
        configs.append(load_config(path))
    return configs
