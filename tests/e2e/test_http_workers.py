"""HTTP worker processes (``[http] workers``, issue 18): supervised, never orphaned.

A cluster whose nodes run two HTTP workers each: the API answers through them; a worker
killed is logged and restarted while the node keeps serving; a node stopped (SIGTERM) or
killed (SIGKILL) leaves no worker process behind. The API's behaviour in this mode is the
rest of the e2e suite's business: run it with ``DENGINE_HTTP_WORKERS=2`` (docs/testing.md).
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.cluster import Cluster, Node, running_cluster, wait_until

WORKERS = 2
STARTED = re.compile(r"HTTP worker (\d+) started \(pid (\d+)\)")


def worker_pids(node: Node) -> dict[int, int]:
    """The newest pid of each worker slot, from the node's log."""
    pids: dict[int, int] = {}
    for slot, pid in STARTED.findall(node.log_text()):
        pids[int(slot)] = int(pid)
    return pids


def alive(pid: int) -> bool:
    """Whether ``pid`` is a process that has not exited (a zombie counts as exited)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    settings = {"http.workers": WORKERS}
    with running_cluster(tmp_path_factory.mktemp("workers"), settings=settings) as c:
        c.wait_for_leader()
        yield c


def worker_metrics(node: Node) -> dict[tuple[str, str], float]:
    """The node's ``dengine_http_worker*`` samples: {(sample name, slot or ""): value}."""
    response = node.health.get("/metrics")
    assert response.status_code == 200, response.text
    return {
        (s.name, s.labels.get("slot", "")): s.value
        for family in text_string_to_metric_families(response.text)
        if family.name.startswith("dengine_http_worker")
        for s in family.samples
    }


def serving(node: Node) -> bool:
    return len(worker_pids(node)) == WORKERS and node.log_text().count(" serving") >= WORKERS


def test_requests_go_through_the_workers_and_a_killed_worker_is_restarted(
    cluster: Cluster,
) -> None:
    leader = cluster.wait_for_leader()
    wait_until(lambda: serving(leader), 60, "both workers serving")
    assert leader.kv.post("/kv", json={"key": "w", "value": "1"}).status_code == 200
    assert leader.kv.get("/kv/w").json() == {"value": "1"}
    pids = worker_pids(leader)
    assert set(pids) == set(range(WORKERS)) and all(alive(p) for p in pids.values())
    # The workers are processes of their own: the node's /metrics shows each one.
    before = worker_metrics(leader)
    assert before[("dengine_http_workers_running", "")] == WORKERS
    for slot in ("0", "1"):
        assert before[("dengine_http_worker_restarts_total", slot)] == 0
        assert before[("dengine_http_worker_resident_memory_bytes", slot)] > 10 * 2**20
        assert before[("dengine_http_worker_cpu_seconds_total", slot)] > 0

    os.kill(pids[0], signal.SIGKILL)
    wait_until(
        lambda: worker_pids(leader)[0] != pids[0],
        30,
        "worker 0 restarted under a new pid",
    )
    assert re.search(r"HTTP worker 0 exited with status -9", leader.log_text())
    after = worker_metrics(leader)
    assert after[("dengine_http_worker_restarts_total", "0")] == 1
    assert after[("dengine_http_worker_restarts_total", "1")] == 0
    started = "dengine_http_worker_start_time_seconds"
    assert after[(started, "0")] > before[(started, "0")]
    assert after[(started, "1")] == before[(started, "1")]
    # Served all along (worker 1, and the kernel's queue of worker 0's socket), and after.
    for i in range(20):
        reply = leader.kv.post("/kv", json={"key": f"w{i}", "value": str(i)})
        assert reply.status_code == 200, reply.text
    assert leader.kv.get("/kv/w19").json() == {"value": "19"}
    assert alive(worker_pids(leader)[0])


def test_a_stopped_node_leaves_no_worker_behind(tmp_path: Path) -> None:
    with running_cluster(tmp_path, settings={"http.workers": WORKERS}) as c:
        c.wait_for_leader()
        stopped, killed = c.nodes[0], c.nodes[1]
        for node in (stopped, killed):
            wait_until(lambda n=node: serving(n), 60, f"node {node.node_id}'s workers serving")
        stopped_pids = list(worker_pids(stopped).values())
        killed_pids = list(worker_pids(killed).values())
        assert all(alive(p) for p in stopped_pids + killed_pids)

        stopped.terminate()
        assert stopped.wait() == 0
        wait_until(
            lambda: not any(alive(p) for p in stopped_pids), 15, "workers gone after SIGTERM"
        )

        # SIGKILL: the node cannot stop them; each worker sees its link close and exits.
        killed.kill()
        wait_until(lambda: not any(alive(p) for p in killed_pids), 15, "workers gone after SIGKILL")
