"""Newcomer break pass on the KV fast path of issue 18: ``[http] body_timeout_ms`` on a body
that trickles in.

``body_timeout_ms`` is how long a request body may take to arrive once the headers are in
(``api.App``, docs/configuration.md): then 408 ``request_timeout`` and the connection is
closed. Quart applies it to the whole body (quart-trio's ``get_data`` waits under one
``move_on_after``). The fast path in front of Quart (``api.kv._fast_path``, the default since
21e2e32) applies it to each ``http.request`` message instead: a client that sends a
``POST /kv`` body one byte at a time, each byte sooner than the timeout, holds the
connection and a request task for as long as it likes (bytes x interval, up to
``max_body_bytes`` bytes), and its write is then applied, where the same request served by
Quart (chunked, so the fast path declines it) gets its 408 once the timeout has passed. The
slow-body class test_newcomer_stalled_body.py closed, reopened one byte at a time.

Both requests below trickle a body over several times the timeout; both must end in 408
before the body is complete. Runs with the KV port in the node's process (the default);
with ``DENGINE_HTTP_WORKERS=2`` the node's fast path serves the forwarded messages the same
way.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

from tests.e2e.cluster import running_cluster

BODY_TIMEOUT_MS = 3000
GAP_S = 0.25
"""Between two body bytes: far below the timeout, so only the body's total time exceeds it."""
BODY = b'{"key":"trickled","value":"' + b"x" * 60 + b'"}'
HEAD = b"POST /kv HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"


def trickle(port: int, head: bytes, body: bytes) -> tuple[bytes, int]:
    """Send ``head`` then ``body`` one byte every GAP_S until the server answers or closes;
    return what it answered (up to its close, 10 s at most) and how many body bytes went."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        sock.setblocking(False)
        answer = b""
        sent = 0
        for byte in body:
            try:
                sock.send(bytes([byte]))
            except OSError:
                break
            sent += 1
            time.sleep(GAP_S)
            try:
                answer = sock.recv(65536)
            except BlockingIOError:
                continue
            break  # an answer, or the server closed
        sock.settimeout(10)
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except OSError:
            pass
        return answer, sent


def test_a_body_trickled_past_the_body_timeout_gets_408_on_every_path(tmp_path: Path) -> None:
    settings = {"http.body_timeout_ms": BODY_TIMEOUT_MS}
    assert len(BODY) * GAP_S > 4 * BODY_TIMEOUT_MS / 1000
    chunked_body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(BODY), BODY)
    requests = {
        # Chunked: the fast path declines it and Quart serves it (the reference).
        "quart": (HEAD + b"Transfer-Encoding: chunked\r\n\r\n", chunked_body),
        "fast path": (HEAD + b"Content-Length: %d\r\n\r\n" % len(BODY), BODY),
    }
    answers: dict[str, tuple[bytes, int]] = {}
    with running_cluster(tmp_path, size=1, settings=settings) as cluster:
        node = cluster.wait_for_leader()
        for name, (head, body) in requests.items():
            answers[name] = trickle(node.port, head, body)
        read = node.kv.get("/kv/trickled")
    for name, (answer, sent) in answers.items():
        total = len(requests[name][1])
        assert answer.startswith(b"HTTP/1.1 408 "), (name, answer[:200], sent, total)
        assert sent < total, (name, sent, total)
    assert read.status_code == 404, read.text
