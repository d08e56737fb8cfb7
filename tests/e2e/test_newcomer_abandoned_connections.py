"""Newcomer break pass: connections the client closes are kept open by the node.

Hypercorn 0.18's trio server, on EOF from the client, ends its read loop but leaves the socket
open until the connection's idle task ends, i.e. until ``keep_alive_timeout`` (75 s here): every
connection a client opens and closes without a request (a connect timeout, a TCP-only probe, a
port scan) sits in CLOSE-WAIT holding a file descriptor for 75 s. Under ``ulimit -n 1024`` (a
common default) about a thousand of them leave the node unable to accept on any port: both
HTTP ports stop answering (``/primary`` included) while the node stays Raft leader, and
``trio.serve_listeners`` logs an EMFILE traceback ten times a second. Both tests failed before
the fix (``dengine_trio.api``: the keep-alive timer is stopped at the client's EOF).
"""

from __future__ import annotations

import http.client
import os
import resource
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.e2e.cluster import Cluster, Node, wait_until

ABANDONED = 200
"""Connections opened and closed without a request, per port."""
RELEASE_TIMEOUT_S = 15.0
"""Generous for closing sockets whose peer has gone; well under the 75 s keep-alive timeout."""
LOW_FD_LIMIT = 128
"""Soft RLIMIT_NOFILE of the node in the exhaustion test: below ABANDONED, above what it uses."""


def open_fds(node: Node) -> int:
    assert node.proc is not None
    return len(os.listdir(f"/proc/{node.proc.pid}/fd"))


def primary_on_a_new_connection(node: Node) -> int | None:
    """``GET /primary`` as a load balancer's probe sends it: on a connection of its own."""
    probe = http.client.HTTPConnection("127.0.0.1", node.health_port, timeout=2)
    try:
        probe.request("GET", "/primary")
        return probe.getresponse().status
    except OSError:
        return None
    finally:
        probe.close()


def abandon_connections(port: int, count: int) -> None:
    """Open ``count`` connections to ``port`` and close them without sending a byte."""
    socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(count)]
    for sock in socks:
        sock.close()


@contextmanager
def one_node(root: Path, fd_limit: int | None = None) -> Iterator[Node]:
    """A one-node cluster (it elects itself), started with ``fd_limit`` open files if given."""
    cluster = Cluster(root, size=1)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        # The node inherits the limit at start; this process gets its own back at once.
        if fd_limit is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (fd_limit, hard))
        try:
            cluster.start()
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        yield cluster.wait_for_leader()
    finally:
        cluster.stop()


def test_connections_the_client_closed_are_released(tmp_path: Path) -> None:
    with one_node(tmp_path) as node:
        baseline = open_fds(node)
        abandon_connections(node.port, ABANDONED)
        abandon_connections(node.health_port, ABANDONED)
        try:
            wait_until(
                lambda: open_fds(node) <= baseline + 5,
                RELEASE_TIMEOUT_S,
                "the node to close connections its clients closed",
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {open_fds(node)} fds, {baseline} before") from None


def test_the_node_answers_again_after_a_burst_of_abandoned_connections(tmp_path: Path) -> None:
    with one_node(tmp_path, fd_limit=LOW_FD_LIMIT) as node:
        # More than the node has descriptors for, on both ports, so a probe made now waits in
        # the health port's accept queue behind abandoned connections.
        abandon_connections(node.port, ABANDONED)
        abandon_connections(node.health_port, ABANDONED)
        wait_until(
            lambda: primary_on_a_new_connection(node) == 200,
            RELEASE_TIMEOUT_S,
            "the health port to answer again once the clients have gone",
        )
