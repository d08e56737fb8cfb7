"""``make start-cluster`` (``python -m dengine_trio.devcluster``) with real node processes.

A node that dies is reported with its id and how it died, the others keep running (the quick
start is where a user tries a failover), and stopping the launcher stops each survivor
gracefully exactly once, also when the stop signal arrives twice (make forwards its own).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dengine_trio.devcluster import STARTUP_WINDOW_S, describe_exit, report_exit, restart_hint
from tests.e2e.cluster import (
    EXIT_TIMEOUT_S,
    START_TIMEOUT_S,
    Cluster,
    Node,
    node_env,
    wait_until,
)
from tests.e2e.test_kv_api import put, read

PID_LINE = re.compile(r"^\[devcluster\] node (\d+): pid (\d+)", re.M)


class Launcher:
    """The devcluster process running the nodes of ``cluster``, its output in a file."""

    def __init__(self, cluster: Cluster, log_name: str = "devcluster.log") -> None:
        self.cluster = cluster
        self.log_path = cluster.root / log_name
        specs = [
            f"{n.node_id}:{n.config_path.with_suffix('')}:{n.port}:{n.health_port}"
            for n in cluster.nodes
        ]
        env = node_env()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "dengine_trio.devcluster"]
                + [arg for spec in specs for arg in ("--node", spec)],
                cwd=cluster.root,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def pids(self) -> dict[int, int] | None:
        """Node id -> pid, once the launcher has printed every node's."""
        found = {int(m.group(1)): int(m.group(2)) for m in PID_LINE.finditer(self.output())}
        return found if len(found) == len(self.cluster.nodes) else None

    def node_lines(self, node: Node) -> list[str]:
        prefix = f"[Node{node.node_id}] "
        return [line for line in self.output().splitlines() if line.startswith(prefix)]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(EXIT_TIMEOUT_S)
        for pid in (self.pids() or {}).values():  # nodes run in their own sessions
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@contextmanager
def launched(root: Path) -> Iterator[tuple[Cluster, Launcher]]:
    cluster = Cluster(root)
    launcher = Launcher(cluster)
    try:
        yield cluster, launcher
    finally:
        launcher.stop()
        for node in cluster.nodes:
            node.close()


def single_leader(nodes: list[Node]) -> Node | None:
    if any(n.status_code(n.health, "/status") != 200 for n in nodes):
        return None
    leaders = [n for n in nodes if n.status_code(n.health, "/primary") == 200]
    return leaders[0] if len(leaders) == 1 else None


def test_a_killed_node_is_reported_the_others_keep_running_and_stop_once(
    tmp_path: Path,
) -> None:
    with launched(tmp_path) as (cluster, launcher):
        pids = wait_until(launcher.pids, START_TIMEOUT_S, "the launcher to print node pids")
        leader = wait_until(lambda: single_leader(cluster.nodes), START_TIMEOUT_S, "a leader")
        put(leader, "before", "the kill")

        os.kill(pids[leader.node_id], signal.SIGKILL)
        report = re.compile(
            rf"^\[devcluster\] node {leader.node_id} died: killed by SIGKILL .*$", re.M
        )
        line = wait_until(
            lambda: report.search(launcher.output()), EXIT_TIMEOUT_S, "the death report"
        ).group(0)
        assert "start-node" in line or "--config-path" in line, line  # how to restart it
        assert "nodes 1" in line or "nodes 2" in line, line  # two are left: plural

        survivors = [n for n in cluster.nodes if n is not leader]
        new_leader = wait_until(lambda: single_leader(survivors), START_TIMEOUT_S, "a new leader")
        assert launcher.proc.poll() is None, launcher.output()
        put(new_leader, "after", "the kill")
        for node in survivors:
            assert read(node, "before", "linearizable").json() == {"value": "the kill"}

        # Stopping `make start-cluster` with `kill`: the launcher gets make's SIGTERM too.
        launcher.proc.send_signal(signal.SIGTERM)
        launcher.proc.send_signal(signal.SIGINT)
        assert launcher.proc.wait(EXIT_TIMEOUT_S) == 0, launcher.output()
        output = launcher.output()
        assert "SIGKILL" not in output.split(line, 1)[1], output
        for node in survivors:
            lines = launcher.node_lines(node)
            assert sum("shutting down" in x for x in lines) == 1, output
            assert lines[-1].endswith("stopped"), output
            assert not any("skipping" in x for x in lines), output


def test_how_a_node_ended_is_named_with_its_signal_and_shell_exit_code() -> None:
    assert describe_exit(-signal.SIGKILL) == "killed by SIGKILL (exit 137)"
    assert describe_exit(-signal.SIGSEGV) == "killed by SIGSEGV (exit 139)"
    assert describe_exit(2) == "exit status 2"
    assert describe_exit(0) == "exit status 0"


def test_the_restart_hint_is_the_make_target_for_the_shipped_nodes_else_the_command() -> None:
    assert restart_hint((2, "config/n2", 8082, 10002)) == "make start-node2"
    custom = (2, "my dir/n2", 18082, 20002)
    hint = restart_hint(custom)
    assert hint.endswith(
        "-m dengine_trio --config-path 'my dir/n2' --port 18082 --health-port 20002"
    )
    # Extra arguments would be lost with the make target, so the command is given instead.
    assert "--access-log" in restart_hint((2, "config/n2", 8082, 10002), ["--access-log"])


def _report(launcher: Launcher, node_id: int, what: str) -> str:
    report = re.compile(rf"^\[devcluster\] node {node_id} {what}.*$", re.M)
    found = wait_until(lambda: report.search(launcher.output()), EXIT_TIMEOUT_S, what)
    return found.group(0)


def test_a_node_stopped_cleanly_is_not_called_dead_and_one_node_is_singular(
    tmp_path: Path,
) -> None:
    with launched(tmp_path) as (cluster, launcher):
        pids = wait_until(launcher.pids, START_TIMEOUT_S, "the launcher to print node pids")
        wait_until(lambda: single_leader(cluster.nodes), START_TIMEOUT_S, "a leader")
        first, second, last = cluster.nodes

        # `kill <pid>` of one node: it stops gracefully and exits 0, which is no death.
        os.kill(pids[first.node_id], signal.SIGTERM)
        line = _report(launcher, first.node_id, "stopped")
        assert "exit status 0" in line, line
        assert "died" not in line, line
        assert f"nodes {second.node_id}, {last.node_id} keep running" in line, line

        os.kill(pids[second.node_id], signal.SIGKILL)
        line = _report(launcher, second.node_id, "died: killed by SIGKILL")
        assert f"; node {last.node_id} keeps running" in line, line

        launcher.proc.send_signal(signal.SIGINT)
        assert launcher.proc.wait(EXIT_TIMEOUT_S) == 0, launcher.output()
        assert f"SIGINT: stopping node {last.node_id} gracefully" in launcher.output()


def test_a_second_cluster_on_taken_ports_says_its_nodes_could_not_start(tmp_path: Path) -> None:
    with launched(tmp_path) as (cluster, launcher):
        wait_until(launcher.pids, START_TIMEOUT_S, "the launcher to print node pids")
        wait_until(lambda: single_leader(cluster.nodes), START_TIMEOUT_S, "a leader")

        # The second `make start-cluster` of a newcomer who forgot the first one.
        second = Launcher(cluster, "second.log")
        try:
            assert second.proc.wait(START_TIMEOUT_S) == 1, second.output()
            output = second.output()
        finally:
            second.stop()
        for node in cluster.nodes:
            # The node's own error, naming the port, reaches the terminal ...
            assert any(
                "cannot listen" in x and str(node.port) in x for x in second.node_lines(node)
            ), output
            # ... and the launcher points at it instead of suggesting a restart.
            line = _report(second, node.node_id, "failed to start")
            assert "exit status 1" in line and "see its error above" in line, line
        assert "died" not in output, output
        assert "Start it again" not in output, output
        assert launcher.proc.poll() is None, launcher.output()  # the first one is untouched


def test_a_non_zero_exit_is_a_failed_start_early_and_a_death_later() -> None:
    spec = (2, "config/n2", 8082, 10002)
    early = report_exit(spec, 2, STARTUP_WINDOW_S / 2, [1, 3])
    assert (
        early
        == "node 2 failed to start (exit status 2): see its error above; nodes 1, 3 keep running"
    )
    late = report_exit(spec, 1, STARTUP_WINDOW_S * 2, [3])
    assert late == (
        "node 2 died: exit status 1; node 3 keeps running. "
        "Start it again in another terminal: make start-node2"
    )
    # A signal is a death however early: nothing the node said explains it.
    assert report_exit(spec, -signal.SIGKILL, 0.1, []).startswith("node 2 died: killed by SIGKILL")
    assert report_exit(spec, 0, 0.1, []) == "node 2 stopped (exit status 0); no node is left"
