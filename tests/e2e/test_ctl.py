"""``dengine-trio status`` and ``dengine-trio kv`` against a real three-node cluster: all up,
the leader killed (the tools follow the new leader), then no quorum."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.cluster import Cluster, free_ports, run_cli, running_cluster, wait_until

LEADER_WAIT_S = 60.0


@pytest.fixture(scope="module")
def ctl_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Its own cluster: the module kills nodes."""
    with running_cluster(tmp_path_factory.mktemp("ctl")) as c:
        c.wait_for_leader()
        yield c


def health_urls(c: Cluster) -> str:
    return ",".join(f"http://127.0.0.1:{n.health_port}" for n in c.nodes)


def kv_urls(c: Cluster) -> str:
    return ",".join(f"http://127.0.0.1:{n.port}" for n in c.nodes)


def status(c: Cluster, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_cli(["status", "--endpoints", health_urls(c), *extra], cwd=c.root)


def status_rows(c: Cluster) -> tuple[int, list[dict[str, object]]]:
    result = status(c, "--json")
    return result.returncode, json.loads(result.stdout)


def kv(c: Cluster, *args: str, endpoints: str | None = None) -> subprocess.CompletedProcess[str]:
    return run_cli(["kv", "--endpoints", endpoints or kv_urls(c), *args], cwd=c.root)


def test_status_with_every_node_up(ctl_cluster: Cluster) -> None:
    c = ctl_cluster
    leader = c.wait_for_leader()
    assert kv(c, "put", "warm", "up").returncode == 0
    code, rows = status_rows(c)
    assert code == 0, rows
    assert [r["node_id"] for r in rows] == [n.node_id for n in c.nodes]
    leaders = [r for r in rows if r["role"] == "leader"]
    assert [r["node_id"] for r in leaders] == [leader.node_id]
    for row in rows:
        assert row["health"] == "ok", row
        assert row["leader_id"] == leader.node_id, row
        assert row["endpoint"] == f"http://127.0.0.1:{c.nodes[rows.index(row)].health_port}"
        assert isinstance(row["address"], str) and row["address"].startswith("127.0.0.1:")
        assert isinstance(row["lag"], int) and row["lag"] >= 0, row
        assert isinstance(row["commit_index"], int) and row["commit_index"] >= 1, row
        assert isinstance(row["snapshot_index"], int) and row["snapshot_index"] >= 0, row
        assert row["error"] is None
        if row["role"] == "leader":
            assert row["last_contact_ms"] is None
        else:
            assert isinstance(row["last_contact_ms"], (int, float)), row

    table = status(c)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == [
        "ID", "ENDPOINT", "ADDRESS", "ROLE", "TERM", "LEADER", "COMMIT", "APPLIED", "LAG",
        "CONTACT_MS", "HEALTH",
    ]  # fmt: skip
    assert len(lines) == 1 + len(c.nodes), table.stdout
    assert sum(1 for line in lines[1:] if line.split()[3] == "leader") == 1


def test_kv_put_get_del_and_not_found(ctl_cluster: Cluster) -> None:
    c = ctl_cluster
    c.wait_for_leader()
    key = "dir/../odd key ü"
    put = kv(c, "put", key, "line one\tvalue")
    assert put.returncode == 0, put.stderr
    assert put.stdout == ""
    got = kv(c, "get", key, "--consistency", "linearizable")
    assert got.returncode == 0, got.stderr
    assert got.stdout == "line one\tvalue\n"
    deleted = kv(c, "del", key)
    assert deleted.returncode == 0, deleted.stderr
    missing = kv(c, "get", key)
    assert missing.returncode == 1
    assert missing.stdout == ""
    assert "not found" in missing.stderr


def test_kv_options_go_before_or_after_the_action(ctl_cluster: Cluster) -> None:
    c = ctl_cluster
    c.wait_for_leader()
    (dead,) = free_ports(1)
    put = run_cli(["kv", "--endpoints", f"http://127.0.0.1:{dead}", "put", "where", "after",
                   "--endpoints", kv_urls(c), "--timeout", "20"], cwd=c.root)  # fmt: skip
    assert put.returncode == 0, put.stderr
    got = run_cli(["kv", "get", "where", "--endpoints", kv_urls(c)], cwd=c.root)
    assert (got.returncode, got.stdout) == (0, "after\n"), got.stderr


def test_kv_refusals_and_usage_errors_exit_2(ctl_cluster: Cluster) -> None:
    c = ctl_cluster
    c.wait_for_leader()
    empty = kv(c, "put", "", "v")
    assert empty.returncode == 2
    assert "empty_key" in empty.stderr
    for args in (["kv"], ["kv", "get"], ["kv", "frob", "k"], ["status", "--endpoints", "ftp://x"],
                 ["status", "--timeout", "0"]):  # fmt: skip
        result = run_cli(args, cwd=c.root)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert "usage:" in result.stderr
        assert "Traceback" not in result.stderr


def test_status_pointed_at_kv_ports_says_so(ctl_cluster: Cluster) -> None:
    c = ctl_cluster
    c.wait_for_leader()
    result = run_cli(["status", "--endpoints", kv_urls(c)], cwd=c.root)
    assert result.returncode == 1
    assert result.stdout.count("not a health port") == len(c.nodes), result.stdout


def test_kv_skips_an_endpoint_that_does_not_answer(ctl_cluster: Cluster) -> None:
    c = ctl_cluster
    c.wait_for_leader()
    (dead,) = free_ports(1)
    endpoints = f"http://127.0.0.1:{dead}," + kv_urls(c)
    assert kv(c, "put", "skip", "ok", endpoints=endpoints).returncode == 0
    got = kv(c, "get", "skip", endpoints=endpoints)
    assert (got.returncode, got.stdout) == (0, "ok\n"), got.stderr


def test_leader_killed_then_no_quorum(ctl_cluster: Cluster) -> None:
    c = ctl_cluster
    leader = c.wait_for_leader()
    leader.kill()
    # Straight after the kill: the write waits out the election, then lands.
    put = run_cli(
        ["kv", "--endpoints", kv_urls(c), "--timeout", str(LEADER_WAIT_S), "put", "after", "kill"],
        cwd=c.root,
    )
    assert put.returncode == 0, put.stderr
    new_leader = c.wait_for_leader()
    assert new_leader is not leader
    got = kv(c, "get", "after")
    assert (got.returncode, got.stdout) == (0, "kill\n"), got.stderr

    code, rows = status_rows(c)
    assert code == 0, rows
    by_endpoint = {r["endpoint"]: r for r in rows}
    down = by_endpoint[f"http://127.0.0.1:{leader.health_port}"]
    assert down["health"] == "unreachable"
    assert down["role"] is None and down["node_id"] is None
    assert "unreachable" in str(down["error"])
    assert [r["node_id"] for r in rows if r["role"] == "leader"] == [new_leader.node_id]
    table = status(c)
    assert table.returncode == 0
    assert f"http://127.0.0.1:{leader.health_port}: unreachable" in table.stdout

    # One node of three left: no quorum, no leader (once the old leader's lease of contact
    # has run out it steps down: CheckQuorum).
    new_leader.kill()

    def no_leader() -> list[dict[str, object]] | None:
        code, rows = status_rows(c)
        return rows if code == 1 else None

    rows = wait_until(no_leader, LEADER_WAIT_S, "status to exit 1 (no leader)")
    assert sum(1 for r in rows if r["health"] == "unreachable") == 2
    (alive,) = [r for r in rows if r["health"] != "unreachable"]
    assert alive["role"] in ("follower", "pre_candidate", "candidate")
    assert alive["lag"] is None
    table = status(c)
    assert table.returncode == 1
    assert "no leader among the nodes that answered" in table.stderr

    failed = run_cli(["kv", "--endpoints", kv_urls(c), "--timeout", "2", "put", "k", "v"],
                     cwd=c.root)  # fmt: skip
    assert failed.returncode == 3, (failed.stdout, failed.stderr)
    assert "no node served the request in 2 s" in failed.stderr


def test_the_node_command_line_is_unchanged(tmp_path: Path) -> None:
    """A first argument that is not a tool's name still runs a node (here: its usage error)."""
    result = run_cli(["--config-path"], cwd=tmp_path)
    assert result.returncode == 2
    assert "--config-path" in result.stderr
    missing = run_cli(["--config-path", str(tmp_path / "absent")], cwd=tmp_path)
    assert missing.returncode == 2
    assert "absent" in missing.stderr
