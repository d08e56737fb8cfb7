"""Stopping the whole cluster at once is a normal operation (issue 11 item 16): every node
exits 0 and none logs a failed hand-over or an unplanned step-down."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.cluster import running_cluster


def test_sigterm_to_every_node_at_once_logs_no_warning(tmp_path: Path) -> None:
    with running_cluster(tmp_path) as cluster:
        cluster.wait_for_leader()
        for node in cluster.nodes:
            node.terminate()
        for node in cluster.nodes:
            assert node.wait() == 0, cluster.logs()
        for node in cluster.nodes:
            log = node.log_text()
            assert "did not finish" not in log, log
            assert "stepped down as leader: saw term" not in log, log
            assert log.rstrip().endswith("stopped"), log
