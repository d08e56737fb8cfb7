"""Newcomer break pass: a request whose body stops arriving holds its connection forever.

A connection that stalls before its request is complete is cut by Hypercorn's keep-alive
timer (75 s here), but once the headers are in and the handler waits for the body, no timer
ran (Hypercorn's ``read_timeout`` is unset): a client that sends ``Content-Length: 100`` and
ten bytes kept a socket, a file descriptor and a request task on the node for as long as it
liked (seen on the KV port; the health port, which refuses the POST with 405, reads the body
before answering so the connection can be reused, and is checked too). A few hundred such
clients exhaust ``ulimit -n`` for good (compare test_newcomer_abandoned_connections). Failed
before the fix: a stalled body now gets 408 after ``[http] body_timeout_ms`` and its
connection is closed.

The node runs with ``body_timeout_ms`` at 1 s (the default, 60 s, made this test take a
minute). The bound (30 s) is far below both the default and the keep-alive timer, so passing
says "the configured body timeout cut it", not how fast.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

from tests.e2e.cluster import running_cluster

BODY_TIMEOUT_MS = 1000
STALL_BOUND_S = 30.0
STALLED_REQUESTS = {
    "kv": b"POST /kv HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b'Content-Length: 100\r\n\r\n{"key": "k"',
    "health": b"POST /primary HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789",
}


def test_a_request_whose_body_stalls_does_not_hold_the_connection_forever(
    tmp_path: Path,
) -> None:
    settings = {"http.body_timeout_ms": BODY_TIMEOUT_MS}
    with running_cluster(tmp_path, size=1, settings=settings) as cluster:
        node = cluster.wait_for_leader()
        ports = {"kv": node.port, "health": node.health_port}
        socks = {}
        for name, request in STALLED_REQUESTS.items():
            sock = socket.create_connection(("127.0.0.1", ports[name]), timeout=5)
            sock.sendall(request)
            sock.setblocking(False)
            socks[name] = sock
        ended: dict[str, bytes] = {}
        deadline = time.monotonic() + STALL_BOUND_S
        try:
            while len(ended) < len(socks) and time.monotonic() < deadline:
                for name, sock in socks.items():
                    if name in ended:
                        continue
                    try:
                        data = sock.recv(4096)
                    except BlockingIOError:
                        continue
                    except OSError as exc:  # a reset is an end too
                        data = repr(exc).encode()
                    ended[name] = data or b"<closed>"
                time.sleep(0.5)
        finally:
            for sock in socks.values():
                sock.close()
        assert set(ended) == set(socks), (
            f"still open after {STALL_BOUND_S} s: {set(socks) - set(ended)}"
        )
    status_line, _, rest = ended["kv"].partition(b"\r\n")
    assert status_line == b"HTTP/1.1 408 ", ended["kv"]
    assert b'"error":"request_timeout"' in rest, ended["kv"]
