"""SIGTERM of the leader: it hands leadership over, then stops, and exits 0."""

from __future__ import annotations

import re
import signal
from functools import partial
from pathlib import Path

from tests.e2e.cluster import running_cluster, wait_until
from tests.e2e.test_kv_api import is_replica, put, read

TRANSFERRED = re.compile(r"leadership transferred to node (\d+)")
NEW_LEADER_TIMEOUT_S = 10.0


def test_sigterm_of_the_leader_hands_over_before_exiting_0(tmp_path: Path) -> None:
    with running_cluster(tmp_path) as cluster:
        old = cluster.wait_for_leader()
        old_term = old.health.get("/status").json()["term"]
        put(old, "before", "the hand-over")

        old.terminate()
        assert old.wait() == 0, cluster.logs()

        log = old.log_text()
        handed_over = TRANSFERRED.search(log)
        assert handed_over, log
        # The hand-over finished while the old leader was still up: its servers and engine
        # stopped only afterwards.
        assert log.index(handed_over.group(0)) < log.index("stopping HTTP servers"), log
        assert log.rstrip().endswith("stopped"), log
        successor = next(n for n in cluster.nodes if n.node_id == int(handed_over.group(1)))
        assert successor is not old

        assert cluster.wait_for_leader(NEW_LEADER_TIMEOUT_S) is successor
        assert successor.health.get("/status").json()["term"] > old_term
        (other,) = (n for n in cluster.alive() if n is not successor)
        put(other, "after", "the hand-over")
        for node in (successor, other):
            assert read(node, "before", "linearizable").json() == {"value": "the hand-over"}
            assert read(node, "after", "linearizable").json() == {"value": "the hand-over"}
        wait_until(partial(is_replica, other), NEW_LEADER_TIMEOUT_S, "the follower's /replica")


def test_sigterm_of_a_follower_exits_0_and_the_cluster_keeps_serving(tmp_path: Path) -> None:
    with running_cluster(tmp_path) as cluster:
        leader = cluster.wait_for_leader()
        follower = cluster.followers(leader)[0]
        follower.terminate()
        assert follower.wait() == 0, cluster.logs()
        assert "leadership transferred" not in follower.log_text()

        put(leader, "two", "of three")
        for node in cluster.alive():
            assert read(node, "two", "linearizable").json() == {"value": "of three"}


def test_two_stop_signals_at_once_are_one_graceful_stop(tmp_path: Path) -> None:
    with running_cluster(tmp_path) as cluster:
        leader = cluster.wait_for_leader()
        assert leader.proc is not None
        # `kill %1` on a `make start-nodeN` job: the job's SIGTERM and the one make forwards
        # arrive together (SIGINT here: two pending SIGTERMs could merge into one).
        leader.proc.send_signal(signal.SIGTERM)
        leader.proc.send_signal(signal.SIGINT)
        assert leader.wait() == 0, cluster.logs()
        log = leader.log_text()
        assert "skipping" not in log, log
        assert TRANSFERRED.search(log), log
        assert log.count("shutting down") == 1, log
        assert log.rstrip().endswith("stopped"), log
