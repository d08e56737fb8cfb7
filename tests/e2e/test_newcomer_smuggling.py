"""Newcomer break pass: a request with both Content-Length and Transfer-Encoding.

RFC 9112 §6.1: a server MAY reject such a request or process it by Transfer-Encoding alone,
but "regardless, the server MUST close the connection after responding to such a request to
avoid the potential attacks" (request smuggling through a front proxy that framed it by
Content-Length). The node answers (400 invalid_json: the chunked body is empty) and keeps the
connection open for the next request, on both ports. Failed before the fix (both apps now
answer such a request with ``Connection: close``).
"""

from __future__ import annotations

from pathlib import Path

from tests.e2e.cluster import read_until_closed, running_cluster

BODY = b'{"key": "k", "value": "v"}'
BOTH_FRAMINGS = (
    b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
)


def test_a_request_with_both_framings_is_answered_and_the_connection_closed(
    tmp_path: Path,
) -> None:
    with running_cluster(tmp_path, size=1) as cluster:
        node = cluster.wait_for_leader()
        outcomes = {}
        for name, port, path in (("kv", node.port, b"/kv"), ("health", node.health_port, b"/x")):
            received, closed = read_until_closed(port, BOTH_FRAMINGS % (path, len(BODY)))
            outcomes[name] = (received.split(b"\r\n", 1)[0], closed)
    assert all(line.startswith(b"HTTP/1.1 ") for line, _ in outcomes.values()), outcomes
    assert all(closed for _, closed in outcomes.values()), outcomes
