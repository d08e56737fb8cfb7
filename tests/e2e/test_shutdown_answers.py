"""A request pending when a node is told to stop gets an HTTP answer (issue 11 item 11).

Two of three nodes are killed, so a write to the survivor cannot commit and waits; then the
survivor gets SIGTERM. The client must get ``503 stopped`` (the write may still apply, as the
README says) or ``504``, as JSON, never a closed connection.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.cluster import running_cluster

# Long enough that the write is still pending when the signal comes.
SLOW_TIMEOUT = {"raft.timing.request_timeout_ms": 20000}


@pytest.mark.parametrize("survivor_role", ["leader", "follower"])
def test_a_request_pending_at_sigterm_is_answered(tmp_path: Path, survivor_role: str) -> None:
    with running_cluster(tmp_path, settings=SLOW_TIMEOUT) as cluster:
        leader = cluster.wait_for_leader()
        followers = cluster.followers(leader)
        survivor = leader if survivor_role == "leader" else followers[0]
        for node in cluster.nodes:
            if node is not survivor:
                node.kill()

        answers: list[httpx.Response | Exception] = []
        requests = [
            ("POST", "/kv", {"key": "pending", "value": "at shutdown"}),
            ("GET", "/kv/pending?consistency=linearizable", None),
        ]

        def call(method: str, path: str, body: object) -> None:
            try:
                answers.append(survivor.kv.request(method, path, json=body, timeout=30))
            except httpx.TransportError as exc:
                answers.append(exc)

        threads = [threading.Thread(target=call, args=request) for request in requests]
        for thread in threads:
            thread.start()
        # No event announces that a request is waiting inside the node; a second is ample
        # for it to arrive (and if it arrived after the signal it gets 503 all the same).
        time.sleep(1.0)
        survivor.terminate()
        for thread in threads:
            thread.join(timeout=60)
        assert survivor.wait() == 0, cluster.logs()

        assert len(answers) == len(requests)
        for answer in answers:
            assert isinstance(answer, httpx.Response), f"no HTTP answer: {answer!r}"
            assert answer.status_code in (503, 504), answer.text
            if answer.status_code == 503:
                assert answer.json()["error"] == "stopped", answer.text
