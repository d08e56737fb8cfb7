"""Newcomer reproducer (issue 14; docs/operations.md "What not to do": "if a majority of
voters lost their data, the cluster cannot elect a leader any more: restore it from a
backup"). Two of three voters restarted with wiped data directories (the third down) come
back with the implicit membership of their files, vote for each other (implicit nodes grant
implicit candidates), elect a leader, bootstrap a NEW cluster id and serve an empty key
space: every acknowledged write reads 404 and new writes are acknowledged by a cluster
that the surviving node 3 then refuses as another cluster. A strict xfail until the
bootstrap election (docs/architecture.md, "Membership changes in the core", rule 9): an
empty, implicit candidate now needs every initial voter, and node 3 is down."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from dengine_trio.config import load_config
from tests.e2e.cluster import running_cluster
from tests.e2e.membership import put


def test_a_wiped_majority_does_not_elect_a_leader(tmp_path: Path) -> None:
    with running_cluster(tmp_path) as cluster:
        cluster.wait_for_leader()
        assert put(cluster.alive(), "k", "1")
        for node in cluster.nodes:
            node.terminate()
        for node in cluster.nodes:
            node.wait()
        wiped = cluster.nodes[:2]
        for node in wiped:
            shutil.rmtree(tmp_path / load_config(node.config_path).cluster.db_root_dir)
            node.stop_requested = False
            node.start(tmp_path)
        deadline = time.monotonic() + 10.0  # many election timeouts
        while time.monotonic() < deadline:
            for node in wiped:
                assert node.status_code(node.health, "/primary") != 200, cluster.logs()
            time.sleep(0.2)
