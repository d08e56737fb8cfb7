"""A newcomer's attack on ``GET /snapshot`` (issue 13), as a real node process.

Each request takes a fresh snapshot of the whole state (when anything was applied since the
last one), opens it and streams it; the node keeps two snapshot files and deletes older ones,
but a download keeps its file open, so the disk space stays taken until the client has read
it all. Clients that ask and then read slowly or not at all (a stuck backup job, a scraper,
anyone who reaches the health port while ``[auth]`` is off, the default) pin one whole
snapshot each, without bound: a 60-byte request holds the size of the state on disk, and
enough of them fill the disk the node's log is on. What would hold: a bound on concurrent
downloads (503 ``overloaded`` beyond it, as the route's docstring already lists) or on how
long one may stall.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from tests.e2e.cluster import Cluster, Node

STALLED = 8
"""Downloads opened and never read (each after a write, so each gets a fresh snapshot)."""
VALUE_BYTES = 100_000
KEYS = 100
"""About 10 MB of state: more than loopback socket buffers hold for a client that reads
nothing, so each download stays in progress."""


def put(node: Node, key: str, value: str) -> None:
    response = node.kv.post("/kv", json={"key": key, "value": value})
    assert response.status_code == 200, response.text


def deleted_open_files(pid: int) -> list[str]:
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        if target.endswith(" (deleted)") and ".snap" in target:
            found.append(target)
    return found


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs Linux /proc")
def test_stalled_snapshot_downloads_do_not_pin_unbounded_disk(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, size=1)
    node = cluster.nodes[0]
    clients: list[socket.socket] = []
    try:
        cluster.start()
        cluster.wait_for_leader()
        for i in range(KEYS):
            put(node, f"k{i}", "x" * VALUE_BYTES)
        answers = []
        for i in range(STALLED):
            put(node, "moving", str(i))  # applied index moves: the next GET takes a new one
            client = socket.create_connection(("127.0.0.1", node.health_port), timeout=30)
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            clients.append(client)
            client.sendall(b"GET /snapshot HTTP/1.1\r\nHost: node\r\n\r\n")
            answers.append(client.recv(12))  # the status line's start, then nothing more
        assert node.proc is not None
        pinned = deleted_open_files(node.proc.pid)
        # Two files on disk are the node's own; each refused or finished download holds none.
        assert len(pinned) <= 2, (answers, pinned)
    finally:
        for client in clients:
            client.close()
        cluster.stop()
