"""Newcomer break pass: ``[limits] max_pending_requests`` while no leader is known.

docs/configuration.md: the limit bounds the client requests occupying a node, whatever they
wait for. A request that waited for a leader to be known (an election, a minority node) was
not counted: with the limit at 4, every one of 24 concurrent requests to a node cut off from
its peers waited out the request timeout and ended ``503 no_leader``; none was ``503
overloaded``. That is when clients flood (they retry). Cause: ``_wait_for_leader``
(runtime/operations.py) waited before any capacity check, and the count was of waiter-table
entries, not of requests. Now each request takes a slot when it arrives and holds it until
its answer (``RequestTable.admit``). Strict xfail before the fix.
"""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter
from pathlib import Path

import httpx

from tests.e2e.cluster import START_TIMEOUT_S, key_path, running_cluster, wait_until

MAX_PENDING = 4
CONCURRENT = 24


def test_requests_waiting_for_a_leader_count_against_the_pending_limit(tmp_path: Path) -> None:
    settings = {"limits.max_pending_requests": MAX_PENDING}
    with running_cluster(tmp_path, settings=settings) as cluster:
        survivor = cluster.wait_for_leader()
        for node in cluster.followers(survivor):
            node.stop_requested = True
            assert node.proc is not None
            os.kill(node.proc.pid, signal.SIGKILL)
        # Cut off, it steps down (CheckQuorum) and knows no leader from then on.
        wait_until(
            lambda: survivor.health.get("/status").json()["role"] != "leader",
            START_TIMEOUT_S,
            "the cut-off leader to step down",
        )

        outcomes: Counter[tuple[int, str | None] | str] = Counter()
        lock = threading.Lock()

        def request(i: int) -> None:
            base = f"http://127.0.0.1:{survivor.port}"
            try:
                with httpx.Client(base_url=base, timeout=30, trust_env=False) as client:
                    if i % 2:
                        response = client.post("/kv", json={"key": f"k{i}", "value": "v"})
                    else:
                        response = client.get(
                            key_path(f"k{i}"), params={"consistency": "linearizable"}
                        )
                outcome: tuple[int, str | None] | str = (
                    response.status_code,
                    response.json().get("error"),
                )
                if response.status_code == 503 and response.headers.get("Retry-After") != "1":
                    outcome = f"503 without Retry-After: {response.headers}"
            except httpx.HTTPError as exc:
                outcome = type(exc).__name__
            with lock:
                outcomes[outcome] += 1

        threads = [threading.Thread(target=request, args=(i,)) for i in range(CONCURRENT)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    assert outcomes[(503, "overloaded")] >= CONCURRENT - MAX_PENDING, outcomes
