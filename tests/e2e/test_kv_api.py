"""The mission's flows against three real nodes: health probes, writes, reads, deletes, errors."""

from __future__ import annotations

import json
from functools import partial

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.e2e.cluster import Cluster, Node, key_path, wait_until
from tests.e2e.conftest import MAX_VALUE_BYTES

POLICIES = ("linearizable", "lease", "eventual")
REPLICA_TIMEOUT_S = 10.0
EVENTUAL_TIMEOUT_S = 10.0


def assert_json_error(response: httpx.Response, status: int, code: str | None = None) -> None:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert isinstance(body.get("error"), str), body
    assert isinstance(body.get("message"), str), body
    if code is not None:
        assert body["error"] == code, body


def put(node: Node, key: str, value: str) -> None:
    response = node.kv.post("/kv", json={"key": key, "value": value})
    assert response.status_code == 200, response.text
    assert_index_answer(response)


def assert_index_answer(response: httpx.Response) -> None:
    """A write's answer (issue 17): ``{"index": N}`` and the same N in ``X-Dengine-Index``."""
    body = response.json()
    assert list(body) == ["index"] and type(body["index"]) is int and body["index"] > 0, body
    assert response.headers["X-Dengine-Index"] == str(body["index"])


def read(node: Node, key: str, consistency: str | None = None) -> httpx.Response:
    params = {"consistency": consistency} if consistency else None
    return node.kv.get(key_path(key), params=params)


def is_replica(node: Node) -> bool:
    return node.health.get("/replica").status_code == 200


def reads_back(node: Node, key: str, value: str, consistency: str | None = None) -> bool:
    response = read(node, key, consistency)
    return response.status_code == 200 and response.json() == {"value": value}


def test_exactly_one_primary_and_replica_is_its_complement(cluster: Cluster) -> None:
    leader = cluster.wait_for_leader()
    primary = leader.health.get("/primary")
    assert primary.status_code == 200
    assert primary.json()["node_id"] == leader.node_id
    assert_json_error(leader.health.get("/replica"), 503)

    for follower in cluster.followers(leader):
        assert_json_error(follower.health.get("/primary"), 503)
        # A follower joins the read pool once it has heard from the leader.
        wait_until(
            partial(is_replica, follower), REPLICA_TIMEOUT_S, f"/replica of node {follower.node_id}"
        )
        assert follower.health.get("/replica").json()["leader_id"] == leader.node_id
    assert len(cluster.followers(leader)) == 2


def test_status_reports_the_node_and_on_the_leader_its_peers(cluster: Cluster) -> None:
    leader = cluster.wait_for_leader()
    status = leader.health.get("/status").json()
    assert status["node_id"] == leader.node_id
    assert status["leader_id"] == leader.node_id
    assert status["term"] >= 1
    assert status["commit_index"] >= status["applied_index"] >= 0
    peer_ids = {int(peer_id) for peer_id in status["peers"]}
    assert peer_ids >= {f.node_id for f in cluster.followers(leader)}
    for peer in status["peers"].values():
        assert {"match_index", "last_contact_ms"} <= set(peer)

    # One spelling of a role everywhere: /status says what /primary and /replica say.
    assert status["role"] == leader.health.get("/primary").json()["role"] == "leader"
    for follower in cluster.followers(leader):
        status = follower.health.get("/status").json()
        assert status["node_id"] == follower.node_id
        wait_until(partial(is_replica, follower), REPLICA_TIMEOUT_S, "a follower's /replica")
        assert status_role_of(follower) == follower.health.get("/replica").json()["role"]
        assert status_role_of(follower) == "follower"


def status_role_of(node: Node) -> object:
    return node.health.get("/status").json()["role"]


@pytest.mark.parametrize(
    "key",
    ["username", "a/b", "/leading//and trailing/", "..", "ключ ä?#%&=+", "k" * 1024],
    ids=["plain", "slash", "slashes", "dots", "unicode-and-reserved", "max-key"],
)
def test_write_via_a_follower_reads_back_on_every_node_with_every_policy(
    cluster: Cluster, key: str
) -> None:
    leader = cluster.wait_for_leader()
    follower = cluster.followers(leader)[0]
    value = f"value of {key!r}: ünïcode"
    put(follower, key, value)

    for node in cluster.nodes:
        for policy in (None, "linearizable", "lease"):
            # The write was acknowledged, so these must see it at once, on followers too.
            response = read(node, key, policy)
            assert response.status_code == 200, (node.node_id, policy, response.text)
            assert response.json() == {"value": value}
        wait_until(
            partial(reads_back, node, key, value, "eventual"),
            EVENTUAL_TIMEOUT_S,
            f"an eventual read of {key!r} on node {node.node_id}",
        )


# Every key the write path accepts: any Unicode scalar value (JSON cannot carry a lone
# surrogate as UTF-8, and the write path refuses one), of at most max_key_bytes bytes of UTF-8.
ANY_KEY = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=24)


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(key=ANY_KEY)
@example(key="a\nb")
@example(key="\r\n")
@example(key="\n")
@example(key="\x00")
@example(key=".")
@example(key="..")
@example(key="a/../b")
@example(key="/./")
@example(key="%2E")
@example(key="%")
@example(key="?x=1#y")
@example(key="\u2028\u0085")
@example(key="\U0010ffff")
def test_every_key_the_write_path_accepts_can_be_read_and_deleted(
    cluster: Cluster, key: str
) -> None:
    leader = cluster.wait_for_leader()
    follower = cluster.followers(leader)[0]
    put(follower, key, "v")
    response = read(leader, key, "linearizable")
    assert response.status_code == 200, (key, response.text)
    assert response.json() == {"value": "v"}
    response = follower.kv.delete(key_path(key))
    assert response.status_code == 200, (key, response.text)
    assert_index_answer(response)
    response = read(follower, key, "linearizable")
    assert response.status_code == 404, (key, response.text)
    assert response.json()["value"] is None


def test_overwrite_then_delete_from_different_nodes(cluster: Cluster) -> None:
    leader = cluster.wait_for_leader()
    first, second = cluster.followers(leader)
    put(first, "color", "red")
    put(leader, "color", "blue")
    assert read(second, "color", "linearizable").json() == {"value": "blue"}

    response = second.kv.delete(key_path("color"))
    assert response.status_code == 200, response.text
    assert_index_answer(response)
    for node in cluster.nodes:
        for policy in ("linearizable", "lease"):
            response = read(node, "color", policy)
            assert response.status_code == 404, (node.node_id, policy, response.text)
            assert response.json()["value"] is None


def test_a_missing_key_is_404_with_a_null_value(cluster: Cluster) -> None:
    for node in cluster.nodes:
        for policy in (None, *POLICIES):
            response = read(node, "never-written", policy)
            assert response.status_code == 404
            assert response.json()["value"] is None


def test_empty_value_is_a_value(cluster: Cluster) -> None:
    leader = cluster.wait_for_leader()
    put(leader, "empty", "")
    assert read(leader, "empty", "linearizable").json() == {"value": ""}


TOO_LONG_KEY_BODY = json.dumps({"key": "k" * 1025, "value": "v"}).encode()
# 513 two-byte characters: 1026 bytes of UTF-8, though only 513 characters.
TWO_BYTE_KEY_BODY = json.dumps({"key": "é" * 513, "value": "v"}, ensure_ascii=False).encode()
TOO_LONG_VALUE_BODY = json.dumps({"key": "k", "value": "v" * (MAX_VALUE_BYTES + 1)}).encode()
TOO_LARGE_BODY = json.dumps({"key": "k", "value": "v" * (1024 * 1024)}).encode()

# (method, path, body bytes or None, expected status, expected error code)
BAD_KV_REQUESTS = [
    ("POST", "/kv", b"not json", 400, "invalid_json"),
    ("POST", "/kv", b"", 400, "invalid_json"),
    ("POST", "/kv", b"\xff\xfe{", 400, "invalid_json"),
    ("POST", "/kv", b"[" * 100_000, 400, "invalid_json"),
    ("POST", "/kv", b'["key", "value"]', 400, "invalid_request"),
    ("POST", "/kv", b'{"value": "v"}', 400, "invalid_request"),
    ("POST", "/kv", b'{"key": "k"}', 400, "invalid_request"),
    ("POST", "/kv", b'{"key": "k", "value": 5}', 400, "invalid_value"),
    ("POST", "/kv", b'{"key": "k", "value": null}', 400, "invalid_value"),
    ("POST", "/kv", b'{"key": "k", "value": {"v": 1}}', 400, "invalid_value"),
    ("POST", "/kv", b'{"key": "k", "value": true}', 400, "invalid_value"),
    ("POST", "/kv", b'{"key": null, "value": "v"}', 400, "invalid_key"),
    ("POST", "/kv", b'{"key": 5, "value": "v"}', 400, "invalid_key"),
    ("POST", "/kv", b'{"key": ["k"], "value": "v"}', 400, "invalid_key"),
    ("POST", "/kv", b'{"key": "", "value": "v"}', 400, "empty_key"),
    ("POST", "/kv", b'{"key": "\\ud800", "value": "v"}', 400, "invalid_key"),
    ("POST", "/kv", b'{"key": "k", "value": "\\udfff"}', 400, "invalid_value"),
    ("POST", "/kv", TOO_LONG_KEY_BODY, 413, "key_too_large"),
    ("POST", "/kv", TWO_BYTE_KEY_BODY, 413, "key_too_large"),
    ("POST", "/kv", TOO_LONG_VALUE_BODY, 413, "value_too_large"),
    ("POST", "/kv", TOO_LARGE_BODY, 413, "body_too_large"),
    ("GET", "/kv/k?consistency=strong", None, 400, "invalid_consistency"),
    ("GET", "/kv/k?consistency=", None, 400, "invalid_consistency"),
    ("GET", "/kv/k?consistency=LeaseRead", None, 400, "invalid_consistency"),
    ("GET", "/kv/", None, 400, "empty_key"),
    ("DELETE", "/kv/", None, 400, "empty_key"),
    # Percent-escapes that are not UTF-8 name no key (they used to read and delete U+FFFD).
    ("GET", "/kv/%FF", None, 400, "invalid_key"),
    ("GET", "/kv/a%C3", None, 400, "invalid_key"),
    ("DELETE", "/kv/%ED%A0%80", None, 400, "invalid_key"),
    ("GET", "/kv/" + "k" * 1025, None, 413, "key_too_large"),
    ("DELETE", "/kv/" + "k" * 1025, None, 413, "key_too_large"),
    ("PUT", "/kv", b"{}", 405, None),
    ("DELETE", "/kv", None, 405, None),
    ("PUT", "/kv/k", b"v", 405, None),
    ("POST", "/kv/k", b'{"key": "k", "value": "v"}', 405, None),
    ("GET", "/nowhere", None, 404, None),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    BAD_KV_REQUESTS,
    ids=[f"{m} {p[:24]} {(b or b'')[:24]!r}" for m, p, b, _, _ in BAD_KV_REQUESTS],
)
def test_bad_requests_get_their_status_and_a_json_error_and_the_nodes_keep_serving(
    cluster: Cluster, method: str, path: str, body: bytes | None, status: int, code: str | None
) -> None:
    leader = cluster.wait_for_leader()
    for node in (leader, *cluster.followers(leader)):
        response = node.kv.request(
            method, path, content=body, headers={"content-type": "application/json"}
        )
        assert_json_error(response, status, code)
        if status == 405:
            assert response.headers.get("allow"), response.headers

    for node in cluster.nodes:
        put(node, f"after-bad-request-{node.node_id}", "still serving")
        assert read(node, f"after-bad-request-{node.node_id}").json() == {"value": "still serving"}
    assert cluster.wait_for_leader() is leader


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("POST", "/primary", 405), ("DELETE", "/replica", 405), ("GET", "/nowhere", 404)],
)
def test_bad_health_requests_get_a_json_error(
    cluster: Cluster, method: str, path: str, status: int
) -> None:
    for node in cluster.nodes:
        assert_json_error(node.health.request(method, path), status)
