"""``dengine-trio kv``'s retry rule and answers, against scripted HTTP servers on loopback
standing in for nodes (the real cluster is in ``test_ctl.py``): which answers move to the next
endpoint, which are final, and what a wrong port looks like."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from dengine_trio.ctl import kv as ctl_kv

Reply = tuple[int, object]


class FakeNode:
    """An HTTP server answering each request with the next scripted ``(status, JSON body)``
    (the last one repeats), recording the requests' methods and paths."""

    def __init__(self, replies: list[Reply]) -> None:
        self.replies = replies
        self.requests: list[tuple[str, str]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                fake.requests.append((self.command, self.path))
                index = min(len(fake.requests), len(fake.replies)) - 1
                status, body = fake.replies[index]
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = answer

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def nodes() -> Iterator[list[FakeNode]]:
    made: list[FakeNode] = []
    yield made
    for node in made:
        node.close()


def fake(nodes: list[FakeNode], *replies: Reply) -> FakeNode:
    node = FakeNode(list(replies))
    nodes.append(node)
    return node


def run(action: str, key: str, value: str | None, endpoints: list[str], timeout_s: float = 5.0
        ) -> tuple[int, str, str]:  # fmt: skip
    out, err = io.StringIO(), io.StringIO()
    code = ctl_kv.run_kv(action, key, value, endpoints, consistency=None, timeout_s=timeout_s,
                         out=out, err=err)  # fmt: skip
    return code, out.getvalue(), err.getvalue()


NOT_LEADER = (503, {"error": "not_leader", "message": "no leader reachable"})
NO_LEADER = (503, {"error": "no_leader", "message": "retry shortly"})


def test_a_503_not_leader_moves_to_the_next_endpoint(nodes: list[FakeNode]) -> None:
    a = fake(nodes, NOT_LEADER)
    b = fake(nodes, (200, {"value": "v"}))
    assert run("get", "k", None, [a.url, b.url]) == (0, "v\n", "")
    assert a.requests == [("GET", "/kv/k")]
    assert b.requests == [("GET", "/kv/k")]


def test_no_leader_anywhere_is_waited_out_then_served(nodes: list[FakeNode]) -> None:
    a = fake(nodes, NO_LEADER, NO_LEADER, NO_LEADER, (200, {}))
    code, _, err = run("put", "k", "v", [a.url])
    assert (code, err) == (0, "")
    assert len(a.requests) == 4
    assert set(a.requests) == {("POST", "/kv")}


def test_a_504_is_final_not_retried(nodes: list[FakeNode]) -> None:
    a = fake(nodes, (504, {"error": "timeout", "message": "a write may still apply"}))
    b = fake(nodes, (200, {}))
    code, _, err = run("put", "k", "v", [a.url, b.url])
    assert code == ctl_kv.EXIT_FAILED
    assert "504 timeout" in err
    assert len(a.requests) == 1 and b.requests == []


def test_a_refusal_is_exit_2(nodes: list[FakeNode]) -> None:
    a = fake(nodes, (413, {"error": "key_too_large", "message": "the key exceeds 4096 bytes"}))
    code, _, err = run("get", "k" * 5000, None, [a.url])
    assert code == ctl_kv.EXIT_REFUSED
    assert "key_too_large" in err


def test_the_key_is_escaped_whole(nodes: list[FakeNode]) -> None:
    a = fake(nodes, (200, {}))
    assert run("del", "a/../b c", None, [a.url])[0] == 0
    assert a.requests == [("DELETE", "/kv/a%2F%2E%2E%2Fb%20c")]


def test_a_health_port_given_as_kv_endpoint_is_not_key_not_found(nodes: list[FakeNode]) -> None:
    """The health app answers an unknown route 404 not_found too, without the KV API's
    ``"value": null``: that is a wrong port, not an absent key (exit 1 would lie)."""
    route_404 = (404, {"error": "not_found", "message": "The requested URL was not found"})
    a = fake(nodes, route_404)
    code, out, err = run("get", "k", None, [a.url])
    assert code == ctl_kv.EXIT_FAILED, err
    assert out == ""
    assert "not a KV port" in err


def test_an_answer_that_is_not_the_kv_api_is_an_error(nodes: list[FakeNode]) -> None:
    a = fake(nodes, (200, b"<html>hello</html>"))
    code, out, err = run("get", "k", None, [a.url])
    assert code == ctl_kv.EXIT_FAILED, (out, err)
    assert "not a KV port" in err


def test_nothing_served_within_the_timeout_is_exit_3(nodes: list[FakeNode]) -> None:
    a = fake(nodes, NOT_LEADER)
    code, _, err = run("put", "k", "v", [a.url], timeout_s=0.5)
    assert code == ctl_kv.EXIT_FAILED
    assert "no node served the request in 0.5 s" in err
    assert "not_leader" in err
    assert 2 <= len(a.requests) <= 10  # retried with backoff, not hammered
