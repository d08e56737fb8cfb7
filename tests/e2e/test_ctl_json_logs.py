"""``--log-format json`` on real node processes: every line a node writes, from start to a
graceful stop (an election, a write, a peer killed, the hand-over), parses as one JSON object
with the documented members."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from tests.e2e.cluster import Cluster, node_env, run_cli

TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
MEMBERS = {"time", "level", "node", "logger", "event", "message"}


def start_json(cluster: Cluster) -> None:
    for node in cluster.nodes:
        with open(node.log_path, "ab") as log:
            node.proc = subprocess.Popen(
                [
                    sys.executable, "-m", "dengine_trio",
                    "--config-path", str(node.config_path),
                    "--port", str(node.port),
                    "--health-port", str(node.health_port),
                    "--log-format", "json",
                ],
                cwd=cluster.root,
                env=node_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip


def test_a_real_nodes_output_is_json_line_by_line(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path)
    try:
        start_json(cluster)
        leader = cluster.wait_for_leader()
        endpoints = ",".join(f"http://127.0.0.1:{n.port}" for n in cluster.nodes)
        put = run_cli(["kv", "--endpoints", endpoints, "put", "k", "v"], cwd=tmp_path)
        assert put.returncode == 0, put.stderr
        victim = cluster.followers(leader)[0]
        victim.kill()
    finally:
        cluster.stop()

    levels: set[str] = set()
    messages: list[str] = []
    for node in cluster.nodes:
        lines = node.log_text().splitlines()
        assert lines, f"node {node.node_id} wrote nothing"
        for line in lines:
            doc = json.loads(line)  # every line, not just most
            assert isinstance(doc, dict)
            assert doc.keys() >= MEMBERS, doc
            assert TIME.fullmatch(doc["time"]), doc
            assert doc["node"] == node.node_id, doc
            levels.add(doc["level"])
            messages.append(doc["message"])
    assert "info" in levels
    assert any(m.startswith("cluster ready: node ") for m in messages), messages
    assert any(m == "stopped" for m in messages), messages
