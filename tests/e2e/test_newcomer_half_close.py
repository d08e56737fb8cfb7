"""Newcomer break pass: a client that half-closes its side after sending the request.

``printf 'GET /primary HTTP/1.0\\r\\n\\r\\n' | nc -N 127.0.0.1 10001`` (and ncat, which
half-closes at the end of its input by default) sends the request, then a FIN, and reads the
answer. The node takes the FIN for a client that went away: a ``POST /kv`` gets no answer at
all although the write applies (an empty reply, which issue 11 rules out for shutdown). At
4384e5e ``/primary`` also got its status line and headers (``content-length: 43``) and none of
the body, a truncated response; at 2dadc39 the health port answers in full and the KV port
still answers nothing. Marked strict xfail until the owner fixes it.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.e2e.cluster import running_cluster

READ_TIMEOUT_S = 10.0
BODY = b'{"key": "half", "value": "closed"}'
REQUESTS = {
    "health": b"GET /primary HTTP/1.0\r\n\r\n",
    "kv": b"POST /kv HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY),
}


def half_closed_exchange(port: int, request: bytes) -> bytes:
    """Send ``request``, shut the sending side (FIN), read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT_S) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except (TimeoutError, ConnectionResetError):
            pass
        return received


def complete(response: bytes) -> bool:
    """A status line, headers and as many body bytes as ``content-length`` says."""
    head, sep, body = response.partition(b"\r\n\r\n")
    if not sep or not head.startswith(b"HTTP/1.1 "):
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) == int(value)
    return False


@pytest.mark.xfail(
    strict=True,
    reason="a POST /kv followed by the client's FIN gets no answer at all, although the "
    "write applies",
)
def test_a_client_that_half_closes_after_its_request_gets_the_whole_answer(
    tmp_path: Path,
) -> None:
    with running_cluster(tmp_path, size=1) as cluster:
        node = cluster.wait_for_leader()
        answers = {
            "health": half_closed_exchange(node.health_port, REQUESTS["health"]),
            "kv": half_closed_exchange(node.port, REQUESTS["kv"]),
        }
    incomplete = {name: answer[:200] for name, answer in answers.items() if not complete(answer)}
    assert not incomplete, incomplete
