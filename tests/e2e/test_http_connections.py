"""HTTP connection handling on both ports of real nodes: closes that are asked for, bursts.

Raw sockets, not an HTTP client: what is tested is what a probe or a load balancer sees on the
wire (does the server close the connection when the request says so; is every connection of a
burst accepted and answered).
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
from collections import Counter
from functools import partial

import pytest
import trio
from hypercorn.trio import serve

from dengine_trio.api import App, bind_listener, hypercorn_config
from tests.e2e.cluster import Cluster, Node, read_until_closed

READ_TIMEOUT_S = 10.0
"""Bound on each wait for data or for the close; a node answers these in milliseconds."""
BURST_CONNECTIONS = 600
BURST_TIMEOUT_S = 120.0


def status_and_body(response: bytes) -> tuple[int, bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def ports(node: Node) -> dict[str, tuple[int, str]]:
    """Each port of ``node`` with a path that answers on it."""
    return {"kv": (node.port, "/kv/some-key"), "health": (node.health_port, "/status")}


CLOSING_REQUESTS = {
    "http/1.0": b"GET {path} HTTP/1.0\r\n\r\n",
    "http/1.0-keep-alive-not-asked": b"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n",
    "http/1.1-connection-close": b"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    "http/1.1-close-mixed-case": b"GET {path} HTTP/1.1\r\nHost: x\r\nconnection: Close\r\n\r\n",
    "http/1.1-bad-method-close": b"PATCH {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
}


@pytest.mark.parametrize("port_name", ["kv", "health"])
@pytest.mark.parametrize("case", sorted(CLOSING_REQUESTS))
def test_the_server_closes_the_connection_when_the_request_asks_for_it(
    cluster: Cluster, port_name: str, case: str
) -> None:
    cluster.wait_for_leader()
    for node in cluster.nodes:
        port, path = ports(node)[port_name]
        request = CLOSING_REQUESTS[case].replace(b"{path}", path.encode())
        received, closed = read_until_closed(port, request)
        assert closed, (node.node_id, port_name, received)
        status, body = status_and_body(received)
        assert status in (200, 404, 405), received
        assert isinstance(json.loads(body), dict)


@pytest.mark.parametrize("port_name", ["kv", "health"])
def test_a_post_over_http_1_0_is_answered_and_closed(cluster: Cluster, port_name: str) -> None:
    leader = cluster.wait_for_leader()
    port = leader.port if port_name == "kv" else leader.health_port
    body = b'{"key": "http10", "value": "v"}'
    request = b"POST /kv HTTP/1.0\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    received, closed = read_until_closed(port, request)
    assert closed, received
    status, answer = status_and_body(received)
    # The health port has no /kv: its 404 must close the connection just the same.
    assert status == (200 if port_name == "kv" else 404), received
    assert isinstance(json.loads(answer), dict)


def test_keep_alive_still_serves_several_requests_on_one_connection(cluster: Cluster) -> None:
    leader = cluster.wait_for_leader()
    for port, path in ports(leader).values():
        with socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT_S) as sock:
            for _ in range(3):
                sock.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode())
                response = b""
                # Read one response: headers, then content-length bytes of body.
                while b"\r\n\r\n" not in response:
                    chunk = sock.recv(65536)
                    assert chunk, "closed a keep-alive connection"
                    response += chunk
                head, _, body = response.partition(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                while len(body) < length:
                    body += sock.recv(65536)
                assert len(body) == length


def burst_of_posts(port: int, count: int) -> Counter[int | str]:
    """``count`` threads connect and POST at the same moment (a barrier), one connection each.

    Returns how many got each status, or each exception name (e.g. ``ConnectionResetError``).
    """
    outcomes: Counter[int | str] = Counter()
    lock = threading.Lock()
    barrier = threading.Barrier(count)

    def post(index: int) -> None:
        outcome: int | str
        try:
            barrier.wait(timeout=BURST_TIMEOUT_S)
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=BURST_TIMEOUT_S)
            try:
                body = json.dumps({"key": f"burst-{index}", "value": "v"})
                conn.request("POST", "/kv", body, {"Content-Type": "application/json"})
                outcome = conn.getresponse().status
            finally:
                conn.close()
        except Exception as exc:
            outcome = type(exc).__name__
        with lock:
            outcomes[outcome] += 1

    threads = [threading.Thread(target=post, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=2 * BURST_TIMEOUT_S)
    outcomes["thread still running"] = sum(thread.is_alive() for thread in threads)
    return +outcomes


def test_a_burst_of_simultaneous_connections_is_queued_not_refused(cluster: Cluster) -> None:
    leader = cluster.wait_for_leader()
    for node in (leader, cluster.followers(leader)[0]):
        outcomes = burst_of_posts(node.port, BURST_CONNECTIONS)
        assert outcomes == Counter({200: BURST_CONNECTIONS}), (node.node_id, outcomes)


async def test_an_idle_keep_alive_connection_is_closed_after_the_keep_alive_timeout() -> None:
    """The same cancellation that kept asked-for closes from happening also skipped the restart
    of Hypercorn's idle timer after a response, so an idle client connection stayed open for
    good. In-process (real Hypercorn, real socket) with a short keep-alive timeout."""
    app = App("idle-test")

    @app.get("/")
    async def index() -> str:
        return "ok"

    listener = bind_listener("127.0.0.1", 0)
    port = listener.getsockname()[1]
    config = hypercorn_config(listener)  # takes the socket over
    config.keep_alive_timeout = 0.5

    idle_client = partial(read_until_closed, port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(serve, app, config))
        received, closed = await trio.to_thread.run_sync(idle_client)
        nursery.cancel_scope.cancel()
    assert received.startswith(b"HTTP/1.1 200"), received
    assert closed, "an idle keep-alive connection was never closed"


MALFORMED_REQUESTS = {
    "raw-utf8-in-path": "GET /kv/\u00e9 HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
    "control-byte-in-path": b"GET /kv/a\x7fb HTTP/1.1\r\nHost: x\r\n\r\n",
    "not-http": b"HELLO\r\n\r\n",
    "bad-header": b"GET / HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",
    "two-content-lengths": b"POST /kv HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
    b"Content-Length: 2\r\n\r\nab",
}


@pytest.mark.parametrize("port_name", ["kv", "health"])
@pytest.mark.parametrize("case", sorted(MALFORMED_REQUESTS))
def test_a_request_hypercorn_cannot_parse_gets_a_json_400_and_a_close(
    cluster: Cluster, port_name: str, case: str
) -> None:
    leader = cluster.wait_for_leader()
    port = ports(leader)[port_name][0]
    received, closed = read_until_closed(port, MALFORMED_REQUESTS[case])
    assert closed, received
    head, _, body = received.partition(b"\r\n\r\n")
    assert status_and_body(received)[0] == 400, received
    assert b"content-type: application/json" in head.lower(), received
    assert json.loads(body) == {"error": "bad_request", "message": "malformed HTTP request"}
    assert leader.status_code(leader.health, "/status") == 200
