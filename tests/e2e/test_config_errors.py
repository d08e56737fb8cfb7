"""A node refuses a bad configuration at once: exit status 2, one line on stderr, no traceback."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from dengine_trio.config import render_toml
from tests.e2e.cluster import NODE_SETTINGS, free_ports, run_cli
from tests.support.cluster import node_config

EXIT_CONFIG = 2


def good_toml(root: Path) -> str:
    members = {i: f"127.0.0.1:{port}" for i, port in enumerate(free_ports(3), start=1)}
    config = node_config(root / "n1.toml", 1, members[1], members, root / "db" / "1", NODE_SETTINGS)
    return render_toml(config)


def assert_refused(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    stderr = result.stderr
    assert result.returncode == EXIT_CONFIG, (result.returncode, stderr)
    assert result.stdout == ""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


BAD_FILES = {
    "unknown-key": (
        lambda good: good.replace("[cluster]\n", "[cluster]\nnode_name = 'x'\n"),
        "cluster.node_name",
    ),
    "wrong-type": (
        lambda good: good.replace("lease_duration_ms = 500", 'lease_duration_ms = "500"'),
        "lease_duration_ms",
    ),
    "node-not-a-member": (lambda good: good.replace("node_id = 1", "node_id = 7"), "node_id"),
    "duplicate-ids": (lambda good: good.replace("{ id = 2,", "{ id = 1,"), "duplicate"),
    "lease-not-shorter-than-election-timeout": (
        lambda good: good.replace("lease_duration_ms = 500", "lease_duration_ms = 5000"),
        "lease_duration_ms",
    ),
    "unknown-policy": (
        lambda good: good.replace('"LeaseRead"', '"Strong"'),
        "default_policy",
    ),
    "not-toml": (lambda good: good + "\n[[[ nope\n", "n1.toml"),
    "value-limit-over-frame-limit": (
        lambda good: good.replace("max_value_bytes = 1048576", "max_value_bytes = 16777216"),
        "limits.max_value_bytes",
    ),
    "listen-address-not-own-address": (
        lambda good: good.replace('listen_address = "127.0.0.1:', 'listen_address = "127.0.0.2:'),
        "cluster.listen_address",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_a_bad_config_file_exits_2_with_one_line(tmp_path: Path, case: str) -> None:
    assert_mutation_refused(tmp_path, *BAD_FILES[case])


def assert_mutation_refused(root: Path, mutate: Callable[[str], str], fragment: str) -> None:
    """A node started on ``mutate`` of a good file exits 2 with one line naming ``fragment``."""
    good = good_toml(root)
    bad = mutate(good)
    assert bad != good
    (root / "n1.toml").write_text(bad)
    port, health_port = free_ports(2)
    result = run_cli(
        ["--config-path", "n1", "--port", str(port), "--health-port", str(health_port)],
        cwd=root,
    )
    assert_refused(result, "n1.toml", fragment)


def test_a_missing_config_file_exits_2_with_one_line(tmp_path: Path) -> None:
    result = run_cli(["--config-path", "config/n9"], cwd=tmp_path)
    assert_refused(result, "config/n9")


def test_config_path_from_the_environment_overrides_the_flag(tmp_path: Path) -> None:
    (tmp_path / "good.toml").write_text(good_toml(tmp_path))
    (tmp_path / "bad.toml").write_text(good_toml(tmp_path).replace("node_id = 1", "node_id = 9"))
    result = run_cli(["--config-path", "good"], cwd=tmp_path, env={"CONFIG_PATH": "bad"})
    assert_refused(result, "bad.toml", "node_id")


def test_an_unknown_log_level_exits_2_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "n1.toml").write_text(good_toml(tmp_path))
    result = run_cli(["--config-path", "n1", "--log-level", "loud"], cwd=tmp_path)
    assert_refused(result, "loud")


def test_a_taken_port_exits_1_naming_it(tmp_path: Path) -> None:
    (tmp_path / "n1.toml").write_text(good_toml(tmp_path))
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        (health_port,) = free_ports(1)
        result = run_cli(
            ["--config-path", "n1", "--port", str(port), "--health-port", str(health_port)],
            cwd=tmp_path,
        )
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f":{port}" in lines[0]
    assert "Traceback" not in result.stderr


def test_a_taken_raft_port_exits_1_naming_it(tmp_path: Path) -> None:
    """The Raft listener binds inside the engine, after both HTTP ports: its failure names the
    address and the key too, not just the errno."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        raft_port = taken.getsockname()[1]
        members = {1: f"127.0.0.1:{raft_port}", 2: "127.0.0.1:1", 3: "127.0.0.1:2"}
        config = node_config(tmp_path / "n1.toml", 1, members[1], members, tmp_path / "db", {})
        config.path.write_text(render_toml(config))
        port, health_port = free_ports(2)
        result = run_cli(
            ["--config-path", "n1", "--port", str(port), "--health-port", str(health_port)],
            cwd=tmp_path,
        )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if " INFO " not in line]
    assert len(errors) == 1, result.stderr
    assert f"127.0.0.1:{raft_port}" in errors[0], errors[0]
    assert "cluster.listen_address" in errors[0], errors[0]


def test_a_second_process_on_the_same_db_root_dir_is_refused(tmp_path: Path) -> None:
    """The directory lock: the second node exits 1 with one clear line; the first runs on."""
    from tests.e2e.cluster import Node, wait_until

    config = tmp_path / "n1.toml"
    config.write_text(good_toml(tmp_path))
    port, health_port, port2, health_port2 = free_ports(4)
    first = Node(1, config, port, health_port)
    first.start(tmp_path)
    try:
        wait_until(lambda: first.status_code(first.health, "/status") == 200, 20, "first node up")
        second = run_cli(
            [
                "--config-path",
                str(config),
                "--port",
                str(port2),
                "--health-port",
                str(health_port2),
            ],
            cwd=tmp_path,
        )
        assert second.returncode == 1, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and "in use by another process" in lines[0], second.stderr
        assert "Traceback" not in second.stderr
        assert first.running() and first.status_code(first.health, "/status") == 200
    finally:
        first.kill()
        first.close()
