"""The bounds on both HTTP ports of a real node (``[http] max_header_bytes``,
``idle_timeout_ms``, ``max_connections``, ``tls_handshake_timeout_ms``): a huge request head
is refused, a head that trickles in or a TLS handshake that never comes is dropped, and
connections beyond the bound are closed at once while the ones inside it are served.

The bounds are set low here so the tests run in seconds; what is asserted is what happens at
each bound, never how fast.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack
from functools import partial

import pytest

from tests.e2e.cluster import Node, read_until_closed, running_cluster, wait_until
from tests.e2e.test_https import Pki

START_TIMEOUT_S = 60.0
MAX_HEADER_BYTES = 4096
IDLE_TIMEOUT_MS = 1000
MAX_CONNECTIONS = 6
CLOSE_BOUND_S = 30.0
"""How long a test waits for a connection the node should close (far above the bounds)."""


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    settings = {
        "http.max_header_bytes": MAX_HEADER_BYTES,
        "http.idle_timeout_ms": IDLE_TIMEOUT_MS,
        "http.max_connections": MAX_CONNECTIONS,
    }
    with running_cluster(tmp_path_factory.mktemp("limits"), size=1, settings=settings) as c:
        c.wait_for_leader()
        yield c.nodes[0]


def request_with_header(size: int) -> bytes:
    return (
        b"GET /primary HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * size + b"\r\n"
        b"Connection: close\r\n\r\n"
    )


@pytest.mark.parametrize("port", ["port", "health_port"])
def test_a_request_head_over_max_header_bytes_is_refused_and_closed(node: Node, port: str) -> None:
    number = getattr(node, port)
    # Whole in one read (the app's check) and over many reads (h11's bound): both 431.
    for size in (2 * MAX_HEADER_BYTES, 40 * MAX_HEADER_BYTES):
        answer, closed = read_until_closed(number, request_with_header(size))
        assert closed
        assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
        assert b'"error":"request_header_fields_too_large"' in answer, answer[:300]
        assert b"max_header_bytes" in answer, answer[:300]
    answer, closed = read_until_closed(number, request_with_header(MAX_HEADER_BYTES // 2))
    assert closed and answer.startswith(b"HTTP/1.1 "), answer[:200]
    assert b" 400 " not in answer[:20] and b" 431 " not in answer[:20], answer[:200]


@pytest.mark.parametrize("port", ["port", "health_port"])
def test_a_head_that_trickles_in_is_dropped(node: Node, port: str) -> None:
    """A slowloris: one byte of the head at a time, never finishing it. The node closes the
    connection once ``idle_timeout_ms`` passed without a complete head."""
    head = request_with_header(100)
    with socket.create_connection(("127.0.0.1", getattr(node, port)), timeout=5) as sock:
        started = time.monotonic()
        sent = 0
        closed = False
        while time.monotonic() - started < CLOSE_BOUND_S and sent < len(head) - 4:
            try:
                sock.sendall(head[sent : sent + 1])
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            sent += 1
            sock.settimeout(0.1)
            try:
                if sock.recv(65536) == b"":
                    closed = True
                    break
            except TimeoutError:
                pass
            except ConnectionResetError:
                closed = True
                break
        assert closed, f"still open after {sent} of {len(head)} bytes"
        assert sent < len(head) - 4  # it never completed its head


def open_idle(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def closed_at_once(sock: socket.socket) -> bool:
    """The node closed ``sock`` without a word (EOF or reset before any request)."""
    sock.settimeout(CLOSE_BOUND_S)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def answers(port: int) -> bool | None:
    answer, _ = read_until_closed(port, b"GET /primary HTTP/1.0\r\n\r\n")
    return answer.startswith(b"HTTP/1.1 ") or None


def test_connections_beyond_max_connections_are_closed(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    # Its own node: the idle timer stays long, so only the bound can close the extra one.
    settings = {"http.max_connections": MAX_CONNECTIONS}
    with running_cluster(tmp_path_factory.mktemp("conns"), size=1, settings=settings) as cluster:
        node = cluster.wait_for_leader()
        node.kv.close()
        node.health.close()  # the test's own clients would take slots
        for port in (node.port, node.health_port):
            with ExitStack() as stack:
                held = [stack.enter_context(open_idle(port)) for _ in range(MAX_CONNECTIONS)]
                # Make sure the node has accepted all of them before the extra one.
                held[-1].sendall(b"GET /primary HTTP/1.1\r\nHost: x\r\n\r\n")
                held[-1].settimeout(10)
                assert held[-1].recv(65536).startswith(b"HTTP/1.1 ")
                extra = stack.enter_context(open_idle(port))
                assert closed_at_once(extra)
                held.pop(0).close()

                served = partial(answers, port)
                wait_until(served, CLOSE_BOUND_S, "a freed slot to serve a new connection")
        assert "HTTP connection refused" in node.log_text()


def test_a_silent_tls_client_is_dropped(tmp_path_factory: pytest.TempPathFactory) -> None:
    pki = Pki(tmp_path_factory.mktemp("pki-limits"))
    settings = {**pki.settings(), "http.tls_handshake_timeout_ms": 500}
    with running_cluster(tmp_path_factory.mktemp("tls-limits"), size=1, settings=settings) as c:
        node = c.wait_for_leader()
        with open_idle(node.port) as sock:
            assert closed_at_once(sock)  # it connected and never said ClientHello
