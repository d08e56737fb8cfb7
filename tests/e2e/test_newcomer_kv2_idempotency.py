"""Newcomer reproducer (issue 17): an ``Idempotency-Key`` first used on ``POST /txn`` and then
reused on ``POST /kv`` or ``DELETE /kv/<key>`` makes the node answer 500 ``internal`` (and
close the connection). The README says reusing a key for a different write returns the first
write's outcome; the opposite direction (a key of ``POST /kv`` reused on ``/txn``) answers a
400 ``invalid_txn``. Bad input must get a 4xx JSON error, never a 500.

Fixed (KF) as a class: a key reused for any other request answers 422
``idempotency_key_reused`` (the state machine keeps a fingerprint of each key's request).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.e2e.cluster import Cluster, key_path, running_cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("newcomer_kv2_idem")) as c:
        c.wait_for_leader()
        yield c


def test_a_txn_idempotency_key_reused_on_a_plain_write_is_a_4xx(cluster: Cluster) -> None:
    leader = cluster.wait_for_leader()
    key = "newcomer-" + uuid.uuid4().hex
    first = leader.kv.post(
        "/txn",
        json={"compare": [], "success": [{"op": "put", "key": "idem/a", "value": "1"}]},
        headers={"Idempotency-Key": key},
    )
    assert first.status_code == 200, first.text
    for response in (
        leader.kv.post(
            "/kv", json={"key": "idem/b", "value": "2"}, headers={"Idempotency-Key": key}
        ),
        leader.kv.delete(key_path("idem/a"), headers={"Idempotency-Key": key}),
    ):
        assert 400 <= response.status_code < 500, (response.status_code, response.text)
        assert response.headers["content-type"] == "application/json"
        assert response.json()["error"] != "internal"


def test_a_key_reused_for_another_request_is_422_and_applies_nothing(cluster: Cluster) -> None:
    """The class (KF): any request other than the first with that key, through any node,
    answers 422 ``idempotency_key_reused`` with the first request's index and applies
    nothing; the same request keeps replaying."""
    leader = cluster.wait_for_leader()
    follower = cluster.followers(leader)[0]
    keys = {kind: f"newcomer-{kind}-" + uuid.uuid4().hex for kind in ("txn", "put", "delete")}
    txn = {"success": [{"op": "put", "key": "idem/t", "value": "1", "ttl_ms": 60_000}]}
    put = {"key": "idem/p", "value": "1", "ttl_ms": 60_000}
    first = {
        "txn": leader.kv.post("/txn", json=txn, headers={"Idempotency-Key": keys["txn"]}),
        "put": leader.kv.post("/kv", json=put, headers={"Idempotency-Key": keys["put"]}),
        "delete": leader.kv.delete(
            key_path("idem/d"),
            params={"prev_index": 0},
            headers={"Idempotency-Key": keys["delete"]},
        ),
    }
    index = {kind: response.json()["index"] for kind, response in first.items()}
    others = {
        "txn": [
            ("POST", "/kv", {"json": {"key": "idem/t", "value": "1"}}),
            ("DELETE", key_path("idem/t"), {}),
            ("POST", "/txn", {"json": {"success": [{"op": "put", "key": "idem/t", "value": "1"}]}}),
        ],
        "put": [
            ("POST", "/kv", {"json": {"key": "idem/p", "value": "2", "ttl_ms": 60_000}}),
            ("POST", "/kv", {"json": {"key": "idem/p", "value": "1", "ttl_ms": 1_000}}),
            (
                "POST",
                "/kv",
                {"json": {"key": "idem/p", "value": "1", "ttl_ms": 60_000, "prev_index": 0}},
            ),
            ("DELETE", key_path("idem/p"), {}),
            ("POST", "/txn", {"json": txn}),
        ],
        "delete": [
            ("DELETE", key_path("idem/d"), {}),
            ("DELETE", key_path("idem/e"), {"params": {"prev_index": 0}}),
            ("POST", "/kv", {"json": {"key": "idem/d", "value": ""}}),
        ],
    }
    for kind, attempts in others.items():
        for node in (leader, follower):
            for method, path, extra in attempts:
                response = node.kv.request(
                    method, path, headers={"Idempotency-Key": keys[kind]}, **extra
                )
                assert response.status_code == 422, (kind, method, path, response.text)
                assert response.headers["content-type"] == "application/json"
                body = response.json()
                assert (body["error"], body["index"]) == ("idempotency_key_reused", index[kind])
    linearizable = {"consistency": "linearizable"}
    assert leader.kv.get(key_path("idem/d"), params=linearizable).status_code == 404
    assert leader.kv.get(key_path("idem/e"), params=linearizable).status_code == 404
    assert leader.kv.get(key_path("idem/p"), params=linearizable).json() == {"value": "1"}
    # The first requests, retried through the follower, replay their outcome.
    replays = [
        follower.kv.post("/txn", json=txn, headers={"Idempotency-Key": keys["txn"]}),
        follower.kv.post("/kv", json=put, headers={"Idempotency-Key": keys["put"]}),
        follower.kv.delete(
            key_path("idem/d"),
            params={"prev_index": 0},
            headers={"Idempotency-Key": keys["delete"]},
        ),
    ]
    for kind, response in zip(("txn", "put", "delete"), replays, strict=True):
        assert response.status_code == 200, response.text
        assert response.json()["index"] == index[kind]
        assert response.headers["Idempotent-Replayed"] == "true"
