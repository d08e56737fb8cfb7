"""docs/operations.md, "Membership changes": every command of its procedures, run as written.

The shipped files (config/n1..n5.toml) and the commands are copied with each fixed port
(KV 8081-8085, Raft 9081-9085, health 10001-10005) replaced by a free one, so the test runs
beside a developer's cluster; nothing else is changed. Nodes 1-3 start as ``make start-nodeN``
starts them. In the blocks, a line ``.venv/bin/python -m dengine_trio ...`` starts a node (each
in its own terminal in the procedure: here in the background), ``export`` sets the variable
for the lines after it, and every other line runs in bash and must exit 0 (``until`` loops
bounded by ``timeout``). The prose steps between blocks ("stop node 5", "node 3's machine is
gone", "restart node 2") are done by the test, each where the procedure says.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

from tests.e2e.cluster import EXIT_TIMEOUT_S, Node, free_ports, node_env, wait_until
from tests.e2e.membership import Writer, put, read

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "operations.md"
FIXED_PORTS = re.compile(r"\b(808[1-5]|908[1-5]|1000[1-5])\b")
LINE_TIMEOUT_S = 120
WRITE_TIMEOUT_S = 60.0
"""Bound on a write's wait for a leader after the test kills or removes a node (an election
on a loaded two-core machine can take seconds)."""


def section_blocks(text: str, title: str) -> list[list[str]]:
    """The fenced blocks (their command lines, comments and blank lines left out) of the
    ``### title`` subsection of "## Membership changes" (``title`` "" for its head)."""
    part = text.split("## Membership changes", 1)[1].split("\n## ", 1)[0]
    if title:
        part = part.split(f"### {title}\n", 1)[1].split("\n### ", 1)[0]
    else:
        part = part.split("\n### ", 1)[0]
    blocks: list[list[str]] = []
    current: list[str] | None = None
    for raw in part.splitlines():
        line = raw.strip()
        if line.startswith("```"):
            if current is None:
                current = []
            else:
                blocks.append(current)
                current = None
        elif current is not None and line and not line.startswith("#"):
            current.append(line)
    return blocks


class Runner:
    """Runs documented lines in ``cwd`` with the ports mapped; keeps the nodes it started."""

    def __init__(self, cwd: Path, ports: dict[str, str]) -> None:
        self.cwd = cwd
        self.ports = ports
        self.env = node_env()
        self.nodes: dict[int, Node] = {}
        self.ran: list[str] = []

    def mapped(self, line: str) -> str:
        return FIXED_PORTS.sub(lambda m: self.ports[m.group(1)], line)

    def run(self, line: str) -> None:
        self.ran.append(line)
        line = self.mapped(line)
        if line.startswith("export "):
            name, _, value = line.removeprefix("export ").partition("=")
            self.env[name] = value
            return
        if line.startswith(".venv/bin/python -m dengine_trio --config-path"):
            self.start(line)
            return
        result = subprocess.run(
            ["timeout", str(LINE_TIMEOUT_S), "bash", "-c", line],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=LINE_TIMEOUT_S + EXIT_TIMEOUT_S,
            check=False,
        )
        assert result.returncode == 0, (
            f"{line!r}: {result.returncode}\n{result.stderr}\n{self.logs()}"
        )

    def start(self, line: str) -> Node:
        args = shlex.split(line)
        config = args[args.index("--config-path") + 1]
        node_id = int(config.rsplit("n", 1)[1])
        port = int(args[args.index("--port") + 1])
        health = int(args[args.index("--health-port") + 1])
        node = Node(node_id, self.cwd / f"{config}.toml", port, health)
        node.log_path = self.cwd / f"node{node_id}-{len(self.ran)}.log"
        node.start(self.cwd)  # the same command line: --config-path, --port, --health-port
        self.nodes[node_id] = node
        return node

    def stop(self, node_id: int) -> None:
        node = self.nodes[node_id]
        node.terminate()
        assert node.wait() == 0, self.logs()

    def logs(self) -> str:
        """Each node's exit status (a signal shows as negative: -9 is SIGKILL, which leaves no
        line in the log) and the end of its log."""

        def state(node: Node) -> str:
            if node.proc is None or node.proc.poll() is None:
                return "running"
            return f"exited {node.proc.returncode}" + (
                " (stopped by the test)" if node.stop_requested else ""
            )

        return "\n".join(
            f"--- node {i}: {state(n)} ---\n{n.log_text()[-3000:]}"
            for i, n in sorted(self.nodes.items())
        )

    def close(self) -> None:
        for node in self.nodes.values():
            node.kill()
            node.close()


def write_acknowledged(runner: Runner, key: str) -> None:
    """Until a write of ``key`` through a live node is acknowledged: right after a node is
    killed or removed, the survivors may still be electing a leader."""
    try:
        wait_until(
            lambda: put([n for n in runner.nodes.values() if n.running()], key, "1"),
            WRITE_TIMEOUT_S,
            f"a write of {key} to be acknowledged",
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{runner.logs()}") from None


class Nodes:
    """What :class:`~tests.e2e.membership.Writer` needs of a cluster: the live nodes."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    def alive(self) -> list[Node]:
        # A copy: the Writer's thread calls this while the test's thread starts nodes (a CI
        # run's writer died of "dictionary changed size during iteration", a warning only).
        return [n for n in list(self.runner.nodes.values()) if n.running()]


def test_the_membership_procedures_work_as_written(tmp_path: Path) -> None:
    text = DOC.read_text()
    fixed = sorted(
        set(FIXED_PORTS.findall(text))
        | {f"{b}{i}" for b in (808, 908) for i in range(1, 6)}
        | {f"1000{i}" for i in range(1, 6)}
    )
    ports = dict(zip(fixed, map(str, free_ports(len(fixed))), strict=True))
    (tmp_path / "config").mkdir()
    for n in range(1, 6):
        shipped = (ROOT / "config" / f"n{n}.toml").read_text()
        (tmp_path / "config" / f"n{n}.toml").write_text(
            FIXED_PORTS.sub(lambda m: ports[m.group(1)], shipped)
        )
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    runner = Runner(tmp_path, ports)
    try:
        for n in (1, 2, 3):  # make start-nodeN
            kv, health = ports[f"808{n}"], ports[f"1000{n}"]
            command = f"--config-path config/n{n} --port {kv} --health-port {health}"
            runner.start(f".venv/bin/python -m dengine_trio {command}")
        for line in section_blocks(text, "")[0]:  # export DENGINE_STATUS_ENDPOINTS=...
            runner.run(line)
        cluster = Nodes(runner)
        with Writer(cluster, limit=5000) as writer:  # type: ignore[arg-type]
            (listing,) = section_blocks(text, "See the members")
            for line in listing:
                runner.run(line)

            grow = section_blocks(text, "Grow from 3 to 5 nodes")
            assert [len(b) for b in grow] == [1, 1, 1, 2], grow
            for block in grow:
                for line in block:
                    runner.run(line)
        assert writer.acknowledged, "no write was acknowledged while the cluster grew"
        survivors = cluster.alive()
        for key in writer.acknowledged[-20:]:
            assert read(survivors, key) == f"v{key[1:]}"

        shrink = section_blocks(text, "Shrink from 5 to 3")
        assert [len(b) for b in shrink] == [1, 3], shrink
        runner.run(shrink[0][0])  # member remove 5
        runner.stop(5)  # "Then stop node 5 (Ctrl+C in its terminal)"
        runner.run(shrink[1][0])  # mv db/5 ...
        runner.run(shrink[1][1])  # member remove 4
        runner.stop(4)  # "(stop node 4 before moving its directory)"
        runner.run(shrink[1][2])  # mv db/4 ...
        write_acknowledged(runner, "after-shrink")

        replace = section_blocks(text, "Replace a dead node")
        assert [len(b) for b in replace] == [1, 1, 1], replace
        runner.nodes[3].kill()  # "Node 3's machine or disk is gone for good"
        for block in replace:
            for line in block:
                runner.run(line)
        # Fault tolerance is back: another original node may fail.
        runner.nodes[1].kill()
        write_acknowledged(runner, "after-replace")
        assert read(cluster.alive(), "after-shrink") == "1"

        rolling = section_blocks(text, "Rolling restart")
        assert [len(b) for b in rolling] == [1, 1], rolling
        runner.stop(2)  # "stop it (Ctrl+C in its terminal, or SIGTERM), start it again"
        again = runner.nodes[2]
        runner.start(
            shlex.join(
                [
                    ".venv/bin/python",
                    "-m",
                    "dengine_trio",
                    "--config-path",
                    "config/n2",
                    "--port",
                    str(again.port),
                    "--health-port",
                    str(again.health_port),
                ]
            )
        )
        runner.run(rolling[0][0])  # until ... status | grep node 2 ok
        runner.run(rolling[1][0])  # leader transfer --to 2
        assert read(cluster.alive(), "after-replace") == "1"
    finally:
        runner.close()
