"""``deploy/haproxy.cfg`` and exactly-once writes (issue 17): writes with an
``Idempotency-Key`` go to a backend that may resend them (the node answers a resend with the
first outcome), writes without one keep the connect-failure-only retry."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx

from tests.chaos.test_idempotent_retries import applied_twice
from tests.e2e.cluster import EXIT_TIMEOUT_S, START_TIMEOUT_S
from tests.e2e.test_haproxy import (
    SHIPPED_CONFIG,
    HAProxy,
    backend_lines,
    lb_client,
    lb_cluster,
    pytestmark,  # noqa: F401 (skipped where haproxy is not installed)
)

FAILOVER_TIMEOUT_S = 30.0


def test_only_writes_with_an_idempotency_key_are_resent() -> None:
    shipped = SHIPPED_CONFIG.read_text()
    write = backend_lines(shipped, "kv_write")
    assert [line for line in write if line.startswith("retry-on")] == ["retry-on conn-failure"]
    idempotent = backend_lines(shipped, "kv_write_idempotent")
    (retry,) = [line for line in idempotent if line.startswith("retry-on")]
    assert {"conn-failure", "empty-response", "response-timeout", "503", "504"} <= set(
        retry.split()[1:]
    )
    assert "option http-buffer-request" in idempotent
    # The same servers, judged by kv_write's /primary probes.
    assert [line for line in idempotent if line.startswith("server")] == [
        f"server n{n} 127.0.0.1:808{n} track kv_write/n{n}" for n in (1, 2, 3)
    ]
    frontend = shipped.split("frontend kv\n", 1)[1].split("\n\n", 1)[0]
    lines = [line.strip() for line in frontend.splitlines()]
    assert lines.index("use_backend kv_write_idempotent if is_write idempotent") < lines.index(
        "use_backend kv_write if is_write"
    )


class IdempotentWriter(threading.Thread):
    """Writes distinct keys through the load balancer, each with its own Idempotency-Key,
    resending a write (same key) until it is answered 200."""

    def __init__(self, lb: HAProxy, writer_id: int) -> None:
        super().__init__(daemon=True)
        self.client = lb_client(lb)
        self.writer_id = writer_id
        self.acked: dict[str, int] = {}
        self.resent = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.stopping.is_set():
            n += 1
            key = f"lb{self.writer_id}/{n}"
            headers = {"Idempotency-Key": f"lb-{self.writer_id}-{n}"}
            deadline = time.monotonic() + FAILOVER_TIMEOUT_S
            while time.monotonic() < deadline:
                try:
                    response = self.client.post(
                        "/kv", json={"key": key, "value": "v"}, headers=headers
                    )
                except httpx.TransportError:
                    response = None
                if response is not None and response.status_code == 200:
                    self.acked[key] = response.json()["index"]
                    break
                self.resent += 1
                time.sleep(0.02)
            else:
                return

    def stop(self) -> None:
        self.stopping.set()
        self.join(FAILOVER_TIMEOUT_S + EXIT_TIMEOUT_S)
        self.client.close()


def test_idempotent_writes_through_the_load_balancer_apply_once_across_a_leader_kill(
    tmp_path: Path,
) -> None:
    with lb_cluster(tmp_path) as (cluster, lb):
        leader = cluster.wait_for_leader()
        lb.wait_for_routes(leader, cluster.followers(leader), START_TIMEOUT_S)
        with lb_client(lb) as client:
            headers = {"Idempotency-Key": "through-the-lb"}
            first = client.post("/kv", json={"key": "lb", "value": "1"}, headers=headers)
            again = client.post("/kv", json={"key": "lb", "value": "1"}, headers=headers)
            assert first.status_code == again.status_code == 200, (first.text, again.text)
            assert again.json() == first.json()
            assert again.headers["Idempotent-Replayed"] == "true"
        writers = [IdempotentWriter(lb, i) for i in range(3)]
        for writer in writers:
            writer.start()
        try:
            time.sleep(1.0)
            leader.kill()
            new_leader = cluster.wait_for_leader(FAILOVER_TIMEOUT_S)
            lb.wait_for_routes(new_leader, cluster.followers(new_leader), FAILOVER_TIMEOUT_S)
            time.sleep(1.0)
        finally:
            for writer in writers:
                writer.stop()
        acked = {k: v for w in writers for k, v in w.acked.items()}
        print(f"\n{len(acked)} acknowledged, {sum(w.resent for w in writers)} resent by clients")
        assert len(acked) > 3
        assert applied_twice(new_leader, acked) == []
