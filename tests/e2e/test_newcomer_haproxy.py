"""Newcomer break pass: HAProxy (the shipped ``deploy/haproxy.cfg``) in front of real nodes.

1. HAProxy 2.6 answers every request it cannot parse (bad request line, control character, a
   request line or header over its 16 KiB buffer, conflicting Content-Length) with its
   built-in HTML 400: neither the ``http-error status 400`` line nor an ``errorfile 400`` (in
   ``defaults`` or the frontend) is used for these. docs/ha-deployment.md promised JSON; it now
   says so, and this strict xfail stays to notice an HAProxy that does use them.
2. ``[limits] max_key_bytes`` accepted any size, but through the shipped HAProxy a key whose
   percent-encoded path passed HAProxy's buffer (about 5.4 KB of two-byte UTF-8) could be
   written and never read or deleted. It is now at most ``MAX_KEY_BYTES_CEILING`` (failed
   before the fix with 8192).
"""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest

from dengine_trio.config import MAX_KEY_BYTES_CEILING
from tests.e2e.cluster import (
    START_TIMEOUT_S,
    key_path,
    read_until_closed,
    running_cluster,
    wait_until,
)
from tests.e2e.test_haproxy import HAPROXY, HAProxy, lb_client

pytestmark = pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed")

UNPARSABLE = {
    "garbage-request-line": b"GARBAGE\r\n\r\n",
    "control-character-in-path": b"GET /kv/\x01 HTTP/1.1\r\nHost: x\r\n\r\n",
    "conflicting-content-length": (
        b"POST /kv HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello"
    ),
    "path-over-haproxys-buffer": b"GET /kv/" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
}
BIG_KEY_BYTES = MAX_KEY_BYTES_CEILING
"""The largest key limit the loader accepts."""


@pytest.mark.xfail(
    strict=True,
    reason="HAProxy 2.6 answers requests it cannot parse with its built-in HTML 400 (its "
    "http-error and errorfile settings do not apply to them), as docs/ha-deployment.md says",
)
def test_haproxys_400_for_a_request_it_cannot_parse_is_json(tmp_path: Path) -> None:
    with running_cluster(tmp_path) as cluster:
        lb = HAProxy(tmp_path, cluster.nodes)
        try:
            lb.start()
            wait_until(lambda: _connects(lb.port), START_TIMEOUT_S, "HAProxy to listen for clients")
            answers = {name: read_until_closed(lb.port, raw)[0] for name, raw in UNPARSABLE.items()}
        finally:
            lb.stop()
    wrong = {}
    for name, answer in answers.items():
        head, _, body = answer.partition(b"\r\n\r\n")
        lines = head.lower().split(b"\r\n")
        if not lines[0].startswith(b"http/1.1 400") or not any(
            line.startswith(b"content-type: application/json") for line in lines
        ):
            wrong[name] = answer[:160]
        elif b'"error":"bad_request"' not in body.replace(b" ", b""):
            wrong[name] = answer[:160]
    assert not wrong, wrong


def _connects(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def test_every_key_a_node_accepts_is_reachable_through_haproxy(tmp_path: Path) -> None:
    key = "é" * (BIG_KEY_BYTES // 2)  # BIG_KEY_BYTES of UTF-8, 6 path characters per é
    with running_cluster(tmp_path, settings={"limits.max_key_bytes": BIG_KEY_BYTES}) as cluster:
        leader = cluster.wait_for_leader()
        lb = HAProxy(tmp_path, cluster.nodes)
        try:
            lb.start()
            lb.wait_for_routes(leader, cluster.followers(leader), START_TIMEOUT_S)
            with lb_client(lb) as client:
                written = client.post("/kv", json={"key": key, "value": "v"})
                assert written.status_code == 200, written.text
                # The node itself serves it: only the load balancer is in the way.
                direct = leader.kv.get(key_path(key), params={"consistency": "linearizable"})
                assert direct.json() == {"value": "v"}, direct.text
                read = client.get(key_path(key), params={"consistency": "linearizable"})
                deleted = client.delete(key_path(key))
        finally:
            lb.stop()
    assert (read.status_code, deleted.status_code) == (200, 200), (
        read.text[:120],
        deleted.text[:120],
    )
    assert isinstance(read, httpx.Response) and read.json() == {"value": "v"}
