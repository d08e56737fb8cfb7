"""Newcomer break pass: ``make start-cluster`` whose launcher itself goes away.

The nodes run in sessions of their own (so a Ctrl+C reaches only the launcher), which also means
nothing stops them when the launcher dies without passing a signal on: closing the terminal
(SIGHUP to the launcher) or killing the launcher leaves three nodes running in the background,
holding ports 8081-8083, 9081-9083 and 10001-10003, and the next ``make start-cluster`` fails
on taken ports. Failed before the fix (the launcher now passes SIGHUP on, and each node stops
when the pipe on its standard input closes).
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.e2e.cluster import EXIT_TIMEOUT_S, START_TIMEOUT_S, wait_until
from tests.e2e.test_devcluster import launched, single_leader

NODES_GONE_TIMEOUT_S = 10.0
"""A graceful stop takes about 1.3 s (Hypercorn's graceful timeout); 10 s is generous."""


def _gone(pid: int) -> bool:
    """The process has exited (a zombie waiting for a reaper counts as exited)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            return any(line.startswith("State:\tZ") for line in status)
    except FileNotFoundError:
        return True


@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGKILL], ids=["SIGHUP", "SIGKILL"])
def test_no_node_outlives_its_launcher(tmp_path: Path, signum: signal.Signals) -> None:
    with launched(tmp_path) as (cluster, launcher):
        pids = wait_until(launcher.pids, START_TIMEOUT_S, "the launcher to print node pids")
        wait_until(lambda: single_leader(cluster.nodes), START_TIMEOUT_S, "a leader")

        launcher.proc.send_signal(signum)  # SIGHUP: the terminal running make was closed
        launcher.proc.wait(EXIT_TIMEOUT_S)

        # Bounded: the Launcher's cleanup SIGKILLs whatever is left after the check.
        try:
            wait_until(
                lambda: all(_gone(pid) for pid in pids.values()),
                NODES_GONE_TIMEOUT_S,
                "every node to exit after its launcher",
            )
        except AssertionError:
            alive = {i: pid for i, pid in pids.items() if not _gone(pid)}
            raise AssertionError(f"nodes still running: {alive}\n{launcher.output()}") from None
