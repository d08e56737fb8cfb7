"""Newcomer break pass: closing the terminal of ``make start-nodeN``.

A terminal that closes sends SIGHUP to its foreground job. The ``make start-cluster`` launcher
treats it as Ctrl+C (every node stops gracefully), but a node run on its own (``make
start-node1`` in a terminal, as the README's "Running individual nodes" and failover sections
do) dies of SIGHUP's default action: no leadership hand-over, no final flush of a MemFirst
log, not one line saying why it stopped. Failed before the fix (SIGHUP is now one of the
node's stop signals, ``dengine_trio.cli.STOP_SIGNALS``).
"""

from __future__ import annotations

import signal
from pathlib import Path

from tests.e2e.cluster import EXIT_TIMEOUT_S, running_cluster


def test_a_node_whose_terminal_closes_stops_gracefully(tmp_path: Path) -> None:
    with running_cluster(tmp_path, size=1) as cluster:
        node = cluster.wait_for_leader()
        assert node.proc is not None
        node.stop_requested = True
        node.proc.send_signal(signal.SIGHUP)
        code = node.wait(EXIT_TIMEOUT_S)
        log = node.log_text()
    assert code == 0, (code, log[-1500:])
    assert "shutting down" in log, log[-1500:]
