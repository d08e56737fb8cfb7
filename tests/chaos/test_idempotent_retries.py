"""Exactly-once writes across failovers (issue 17): three node processes, writers that retry
every write whose outcome they did not learn (a timeout, a 503/504, a dropped connection) on
another node with the same ``Idempotency-Key``, and a nemesis that SIGKILLs the leader and
restarts it. A write applied twice would show as a key modified after its creation
(``mod_index > create_index``: each key is written by one request only) or as an answer whose
index is not the key's; no write may be applied twice, and every acknowledged one is there.

``test_idempotent_retries_across_leader_kills`` (in ``make test``) plays 2 kills;
``test_long_idempotent_campaign`` (``make chaos``) plays ``DENGINE_IDEMPOTENT_CHAOS_KILLS``
(default 10).
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.cluster import Cluster, Node, key_path, running_cluster

CHAOS = os.environ.get("DENGINE_CHAOS") == "1"
SETTINGS = {"raft.timing.request_timeout_ms": 1500}
WRITERS = 4
ATTEMPT_TIMEOUT_S = 4.0
"""One attempt's HTTP timeout: above request_timeout_ms, so a node's own 504 comes first."""
ABANDON_S = 0.002
"""The first attempt of every third write: the client leaves before the answer."""
GIVE_UP_S = 60.0
"""A write retried for this long without an answer fails the test (the cluster is down)."""


class Writer(threading.Thread):
    """Writes ``count`` keys ``w<id>/<n>``, each with its own idempotency key, retrying each on
    the next node until one answers 200 (or a 409 that is the write's own replay)."""

    def __init__(self, cluster: Cluster, writer_id: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.cluster = cluster
        self.writer_id = writer_id
        self.stop_event = stop
        self.acked: dict[str, int] = {}
        self.outcomes: Counter[str] = Counter()
        self.failure: str | None = None
        self.clients = {
            n.node_id: httpx.Client(
                base_url=f"http://127.0.0.1:{n.port}", timeout=ATTEMPT_TIMEOUT_S, trust_env=False
            )
            for n in cluster.nodes
        }

    def write_once(self, n: int, nodes: Any) -> None:
        key = f"w{self.writer_id}/{n}"
        headers = {"Idempotency-Key": f"chaos-{self.writer_id}-{n}"}
        as_txn = n % 2 == 1
        # Every third write gives up on its first attempt at once, once the request is sent:
        # a dropped connection whose write goes on, so its retry meets the stored outcome.
        timeout = ABANDON_S if n % 3 == 0 else ATTEMPT_TIMEOUT_S
        deadline = time.monotonic() + GIVE_UP_S
        while time.monotonic() < deadline:
            node: Node = next(nodes)
            client = self.clients[node.node_id]
            try:
                if as_txn:
                    body = {"success": [{"op": "put", "key": key, "value": str(n)}]}
                    response = client.post("/txn", json=body, headers=headers, timeout=timeout)
                else:
                    response = client.post(
                        "/kv", json={"key": key, "value": str(n)}, headers=headers, timeout=timeout
                    )
                timeout = ATTEMPT_TIMEOUT_S
            except httpx.TransportError as exc:
                timeout = ATTEMPT_TIMEOUT_S
                self.outcomes[type(exc).__name__] += 1
                time.sleep(0.05)
                continue
            if response.status_code == 200:
                self.acked[key] = response.json()["index"]
                replayed = response.headers.get("Idempotent-Replayed") == "true"
                self.outcomes["replayed" if replayed else "ok"] += 1
                return
            self.outcomes[str(response.status_code)] += 1
            if response.status_code not in (503, 504):
                self.failure = f"{key}: unexpected {response.status_code} {response.text}"
                return
            time.sleep(0.05)
        self.failure = f"{key}: no answer within {GIVE_UP_S} s"

    def run(self) -> None:
        nodes = itertools.cycle(self.cluster.nodes[self.writer_id % 3 :] + self.cluster.nodes)
        try:
            for n in itertools.count():
                if self.stop_event.is_set() or self.failure is not None:
                    return
                self.write_once(n, nodes)
        finally:
            for client in self.clients.values():
                client.close()


def kill_leaders(cluster: Cluster, kills: int) -> list[int]:
    """SIGKILL the leader ``kills`` times, restarting it each time; the ids killed."""
    killed = []
    for _ in range(kills):
        leader = cluster.wait_for_leader()
        time.sleep(0.4)  # let writes be in flight on it
        leader.kill()
        killed.append(leader.node_id)
        cluster.wait_for_leader()
        time.sleep(0.3)
        leader.stop_requested = False
        leader.start(cluster.root)
    cluster.wait_for_leader()
    return killed


def applied_twice(node: Node, acked: dict[str, int]) -> list[str]:
    """Keys whose item shows a second application, or whose acknowledged index is not the
    one they were written at (the answer of a replay must be the original's)."""
    bad = []
    for key, index in sorted(acked.items()):
        response = node.kv.get(
            key_path(key), params={"meta": "true", "consistency": "linearizable"}
        )
        if response.status_code != 200:
            bad.append(f"{key}: lost ({response.status_code})")
            continue
        item = response.json()
        if item["mod_index"] != item["create_index"] or item["mod_index"] != index:
            bad.append(f"{key}: acked at {index}, item {item}")
    return bad


def run_campaign(root: Path, kills: int) -> None:
    with running_cluster(root, settings=SETTINGS) as cluster:
        cluster.wait_for_leader()
        stop = threading.Event()
        writers = [Writer(cluster, i, stop) for i in range(WRITERS)]
        for writer in writers:
            writer.start()
        try:
            killed = kill_leaders(cluster, kills)
            time.sleep(0.5)
        finally:
            stop.set()
            for writer in writers:
                writer.join(GIVE_UP_S + 10)
        failures = [w.failure for w in writers if w.failure]
        assert not failures, failures
        acked = {k: v for w in writers for k, v in w.acked.items()}
        outcomes = sum((w.outcomes for w in writers), Counter())
        print(f"\nkilled {killed}; {len(acked)} writes acknowledged; attempts {dict(outcomes)}")
        leader = cluster.wait_for_leader()
        assert len(acked) > WRITERS
        # Retries met stored outcomes (the abandoned first attempts at least).
        assert outcomes["replayed"] > 0, outcomes
        assert applied_twice(leader, acked) == []
        # The check can fail: a write applied a second time (no idempotency key) is caught.
        some_key = next(iter(acked))
        leader.kv.post("/kv", json={"key": some_key, "value": "again"})
        assert applied_twice(leader, {some_key: acked[some_key]}) != []


def test_idempotent_retries_across_leader_kills(tmp_path: Path) -> None:
    run_campaign(tmp_path, kills=2)


@pytest.mark.chaos
@pytest.mark.skipif(not CHAOS, reason="make chaos (DENGINE_CHAOS=1)")
def test_long_idempotent_campaign(tmp_path: Path) -> None:
    run_campaign(tmp_path, kills=int(os.environ.get("DENGINE_IDEMPOTENT_CHAOS_KILLS", "10")))
