"""The KV API's second edition (issue 17) over real node processes: write indexes, compare-and-
swap, read-your-writes with ``min_index``, ``?meta=true``, listing, ``/txn``, idempotent
writes, TTL (across a leader change too), ``/replica?max_lag``, and every new bad input as a
4xx JSON error. ``make test`` runs this module again with ``DENGINE_HTTP_WORKERS=2``: the same
answers in both HTTP modes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.cluster import Cluster, Node, key_path, running_cluster
from tests.support.cluster import wait_until

SETTINGS = {
    "limits.max_txn_ops": 8,
    "raft.timing.request_timeout_ms": 1500,
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("kv2"), settings=SETTINGS) as c:
        c.wait_for_leader()
        yield c


def error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    assert body["error"] == code, body
    assert isinstance(body["message"], str), body
    return body


def write_index(response: httpx.Response) -> int:
    assert response.status_code == 200, response.text
    body = response.json()
    index = body["index"]
    assert type(index) is int and index > 0, body
    assert response.headers["X-Dengine-Index"] == str(index)
    return index


def put(node: Node, key: str, value: str, **extra: Any) -> httpx.Response:
    return node.kv.post("/kv", json={"key": key, "value": value, **extra})


def meta(node: Node, key: str, **params: Any) -> httpx.Response:
    return node.kv.get(key_path(key), params={"meta": "true", **params})


def test_writes_answer_increasing_indexes_and_meta_shows_them(cluster: Cluster) -> None:
    leader = cluster.wait_for_leader()
    follower = cluster.followers(leader)[0]
    first = write_index(put(follower, "m/a", "1"))
    second = write_index(put(leader, "m/a", "2"))
    assert second > first
    response = meta(leader, "m/a", consistency="linearizable")
    assert response.status_code == 200, response.text
    assert response.json() == {
        "value": "2",
        "create_index": first,
        "mod_index": second,
        "ttl_ms": None,
    }
    deleted = write_index(follower.kv.delete(key_path("m/a")))
    assert deleted > second
    # Plain reads keep today's body.
    assert put(leader, "m/b", "x").status_code == 200
    assert leader.kv.get(key_path("m/b")).json() == {"value": "x"}


def test_read_your_write_on_every_node_with_min_index(cluster: Cluster) -> None:
    leader = cluster.wait_for_leader()
    for n in range(5):
        index = write_index(put(leader, "ryw", f"v{n}"))
        for node in cluster.alive():
            response = node.kv.get(
                key_path("ryw"), params={"consistency": "eventual", "min_index": index}
            )
            assert response.json() == {"value": f"v{n}"}, (node.node_id, response.text)


def test_min_index_not_applied_in_time_is_504(cluster: Cluster) -> None:
    node = cluster.alive()[0]
    error(node.kv.get(key_path("ryw"), params={"min_index": 10**12}), 504, "timeout")
    error(node.kv.get("/kv", params={"min_index": 10**12}), 504, "timeout")


def test_compare_and_swap_on_post_and_delete(cluster: Cluster) -> None:
    leader = cluster.wait_for_leader()
    follower = cluster.followers(leader)[0]
    created = write_index(put(follower, "cas", "a", prev_value=None))
    body = error(put(leader, "cas", "b", prev_value=None), 409, "compare_failed")
    assert (body["value"], body["index"]) == ("a", created)
    body = error(put(follower, "cas", "b", prev_value="zzz"), 409, "compare_failed")
    assert (body["value"], body["index"]) == ("a", created)
    swapped = write_index(put(follower, "cas", "b", prev_value="a", prev_index=created))
    error(put(leader, "cas", "c", prev_index=created), 409, "compare_failed")
    body = error(
        leader.kv.delete(key_path("cas"), params={"prev_index": created}), 409, "compare_failed"
    )
    assert (body["value"], body["index"]) == ("b", swapped)
    write_index(leader.kv.delete(key_path("cas"), params={"prev_index": swapped}))
    body = error(put(leader, "cas", "d", prev_value="b"), 409, "compare_failed")
    assert (body["value"], body["index"]) == (None, 0)
    write_index(put(leader, "cas", "d", prev_index=0))


def test_listing_pages_through_a_prefix_in_byte_order(cluster: Cluster) -> None:
    leader = cluster.wait_for_leader()
    keys = [f"list/{c}" for c in "edcba"] + ["list0", "lisz"]
    last = 0
    for key in keys:
        last = write_index(put(leader, key, key.upper()))
    follower = cluster.followers(leader)[0]
    seen: list[str] = []
    after: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"prefix": "list/", "limit": 2, "min_index": last}
        if after is not None:
            params["after"] = after
        response = follower.kv.get("/kv", params=params)
        assert response.status_code == 200, response.text
        body = response.json()
        for item in body["items"]:
            assert item["value"] == item["key"].upper()
            assert item["create_index"] == item["mod_index"] > 0
            assert item["ttl_ms"] is None
        seen += [item["key"] for item in body["items"]]
        pages += 1
        after = body["next"]
        if after is None:
            break
        assert pages < 10
    assert seen == [f"list/{c}" for c in "abcde"]
    everything = follower.kv.get("/kv", params={"consistency": "linearizable", "limit": 1000})
    assert {"list0", "lisz"} <= {i["key"] for i in everything.json()["items"]}


def test_txn_runs_one_branch_atomically(cluster: Cluster) -> None:
    leader = cluster.wait_for_leader()
    follower = cluster.followers(leader)[0]
    base = write_index(put(leader, "t/a", "1"))
    txn = {
        "compare": [
            {"key": "t/a", "target": "value", "value": "1"},
            {"key": "t/a", "target": "mod_index", "op": "==", "index": base},
            {"key": "t/b", "target": "exists", "exists": False},
            {"key": "t/b", "target": "create_index", "op": "<", "index": 1},
        ],
        "success": [
            {"op": "put", "key": "t/a", "value": "2"},
            {"op": "put", "key": "t/b", "value": "new"},
            {"op": "get", "key": "t/b"},
        ],
        "failure": [{"op": "get", "key": "t/a"}],
    }
    response = follower.kv.post("/txn", json=txn)
    index = write_index(response)
    assert response.json() == {
        "index": index,
        "succeeded": True,
        "results": [
            {"op": "put", "key": "t/a"},
            {"op": "put", "key": "t/b"},
            {
                "op": "get",
                "key": "t/b",
                "value": "new",
                "create_index": index,
                "mod_index": index,
                "ttl_ms": None,
            },
        ],
    }
    # Again: the compares no longer hold, so the failure branch reads the current value.
    response = leader.kv.post("/txn", json=txn)
    again = write_index(response)
    assert response.json()["succeeded"] is False
    assert response.json()["results"] == [
        {
            "op": "get",
            "key": "t/a",
            "value": "2",
            "create_index": base,
            "mod_index": index,
            "ttl_ms": None,
        }
    ]
    assert again > index
    assert follower.kv.get(key_path("t/b"), params={"min_index": index}).json() == {"value": "new"}


def test_an_idempotent_write_applies_once_on_any_node(cluster: Cluster) -> None:
    leader = cluster.wait_for_leader()
    follower = cluster.followers(leader)[0]
    headers = {"Idempotency-Key": "e2e-once-1"}
    first = leader.kv.post("/kv", json={"key": "idem", "value": "1"}, headers=headers)
    index = write_index(first)
    assert "Idempotent-Replayed" not in first.headers
    write_index(put(leader, "idem", "other"))  # changed meanwhile by someone else
    for node in (follower, leader):
        retry = node.kv.post("/kv", json={"key": "idem", "value": "1"}, headers=headers)
        assert write_index(retry) == index
        assert retry.headers["Idempotent-Replayed"] == "true"
    assert leader.kv.get(key_path("idem"), params={"consistency": "linearizable"}).json() == {
        "value": "other"
    }
    # A compare that failed is replayed as the same 409; a txn and a delete likewise.
    headers = {"Idempotency-Key": "e2e-once-2"}
    body = error(
        follower.kv.post(
            "/kv", json={"key": "idem", "value": "x", "prev_value": "1"}, headers=headers
        ),
        409,
        "compare_failed",
    )
    again = error(
        leader.kv.post(
            "/kv", json={"key": "idem", "value": "x", "prev_value": "1"}, headers=headers
        ),
        409,
        "compare_failed",
    )
    assert again["index"] == body["index"]
    replayed = leader.kv.post(
        "/kv", json={"key": "idem", "value": "x", "prev_value": "1"}, headers=headers
    )
    assert replayed.headers["Idempotent-Replayed"] == "true"
    headers = {"Idempotency-Key": "e2e-once-3"}
    txn = {"success": [{"op": "put", "key": "idem/t", "value": "t"}]}
    index = write_index(follower.kv.post("/txn", json=txn, headers=headers))
    assert write_index(leader.kv.post("/txn", json=txn, headers=headers)) == index
    headers = {"Idempotency-Key": "e2e-once-4"}
    index = write_index(leader.kv.delete(key_path("idem/t"), headers=headers))
    write_index(put(leader, "idem/t", "back"))
    assert write_index(follower.kv.delete(key_path("idem/t"), headers=headers)) == index
    assert leader.kv.get(key_path("idem/t"), params={"consistency": "linearizable"}).json() == {
        "value": "back"
    }


def test_ttl_hides_then_expires_a_key_on_every_node(cluster: Cluster) -> None:
    leader = cluster.wait_for_leader()
    index = write_index(put(leader, "ttl/a", "x", ttl_ms=1500))
    response = meta(leader, "ttl/a")
    assert response.status_code == 200, response.text
    assert 0 < response.json()["ttl_ms"] <= 1500
    write_index(put(leader, "ttl/kept", "x", ttl_ms=1500))
    write_index(put(leader, "ttl/kept", "y"))  # rewritten without a TTL: it stays

    def gone_everywhere() -> bool:
        return all(
            n.kv.get(
                key_path("ttl/a"), params={"consistency": "eventual", "min_index": index}
            ).status_code
            == 404
            for n in cluster.alive()
        )

    wait_until(gone_everywhere, 10, "the TTL key to be gone on every node")
    listing = leader.kv.get("/kv", params={"prefix": "ttl/"}).json()
    assert [i["key"] for i in listing["items"]] == ["ttl/kept"]
    assert meta(leader, "ttl/kept").json()["ttl_ms"] is None


BAD: list[tuple[str, str, Any, dict[str, str], int, str]] = [
    ("POST", "/kv", {"key": "k", "value": "v", "ttl_ms": -5}, {}, 400, "invalid_ttl"),
    ("POST", "/kv", {"key": "k", "value": "v", "ttl_ms": 0}, {}, 400, "invalid_ttl"),
    ("POST", "/kv", {"key": "k", "value": "v", "ttl_ms": "9"}, {}, 400, "invalid_ttl"),
    ("POST", "/kv", {"key": "k", "value": "v", "ttl_ms": 1.5}, {}, 400, "invalid_ttl"),
    ("POST", "/kv", {"key": "k", "value": "v", "prev_index": -1}, {}, 400, "invalid_index"),
    ("POST", "/kv", {"key": "k", "value": "v", "prev_index": True}, {}, 400, "invalid_index"),
    ("POST", "/kv", {"key": "k", "value": "v", "prev_value": 3}, {}, 400, "invalid_value"),
    ("POST", "/kv", {"key": "k", "value": "v", "prev_vaule": "a"}, {}, 400, "invalid_request"),
    ("POST", "/kv", {"key": "k", "value": "v"}, {"Idempotency-Key": "x" * 257}, 400,
     "invalid_idempotency_key"),
    ("POST", "/kv", {"key": "k", "value": "v"}, {"Idempotency-Key": ""}, 400,
     "invalid_idempotency_key"),
    ("DELETE", "/kv/k?prev_index=abc", None, {}, 400, "invalid_index"),
    ("DELETE", "/kv/k?prev_index=-1", None, {}, 400, "invalid_index"),
    ("DELETE", "/kv/k?prev_indx=3", None, {}, 400, "invalid_request"),
    ("GET", "/kv/k?min_index=x", None, {}, 400, "invalid_index"),
    ("GET", "/kv/k?min_index=99999999999999999999", None, {}, 400, "invalid_index"),
    ("GET", "/kv/k?meta=maybe", None, {}, 400, "invalid_request"),
    # A misspelt freshness bound was a plain (staler) read; a misspelt policy a default one.
    ("GET", "/kv/k?min_indx=5", None, {}, 400, "invalid_request"),
    ("GET", "/kv/k?consistancy=linearizable", None, {}, 400, "invalid_request"),
    ("GET", "/kv/k?consistency=lease&min_indx=5", None, {}, 400, "invalid_request"),
    ("GET", "/kv?prefix=a&min_indx=5", None, {}, 400, "invalid_request"),
    ("GET", "/kv?limt=5", None, {}, 400, "invalid_request"),
    ("GET", "/kv?limit=0", None, {}, 400, "invalid_limit"),
    ("GET", "/kv?limit=1001", None, {}, 400, "invalid_limit"),
    ("GET", "/kv?limit=ten", None, {}, 400, "invalid_limit"),
    ("GET", "/kv?consistency=strong", None, {}, 400, "invalid_consistency"),
    ("POST", "/txn", "[]", {}, 400, "invalid_request"),
    ("POST", "/txn", "{", {}, 400, "invalid_json"),
    ("POST", "/txn", {"compare": {}}, {}, 400, "invalid_request"),
    ("POST", "/txn", {"compares": []}, {}, 400, "invalid_request"),
    ("POST", "/txn", {"compare": [{"key": "k", "target": "size"}]}, {}, 400, "invalid_compare"),
    ("POST", "/txn", {"compare": [{"key": "k", "target": "value", "op": "~", "value": "v"}]},
     {}, 400, "invalid_compare"),
    ("POST", "/txn", {"compare": [{"key": "k", "target": "exists", "op": "<", "exists": True}]},
     {}, 400, "invalid_compare"),
    ("POST", "/txn", {"compare": [{"key": "k", "target": "mod_index"}]}, {}, 400,
     "invalid_compare"),
    ("POST", "/txn", {"compare": [{"key": "k", "target": "mod_index", "index": -2}]}, {}, 400,
     "invalid_index"),
    ("POST", "/txn", {"compare": [{"key": "", "target": "exists", "exists": True}]}, {}, 400,
     "empty_key"),
    ("POST", "/txn", {"success": [{"op": "incr", "key": "k"}]}, {}, 400, "invalid_op"),
    ("POST", "/txn", {"success": [{"op": "put", "key": "k"}]}, {}, 400, "invalid_request"),
    ("POST", "/txn", {"success": [{"op": "put", "key": "k", "value": "v", "ttl_ms": -1}]}, {},
     400, "invalid_ttl"),
    ("POST", "/txn", {"success": [{"op": "get", "key": "k", "value": "v"}]}, {}, 400,
     "invalid_request"),
    ("POST", "/txn", {"success": [{"op": "put", "key": "k", "value": "1"},
                                  {"op": "delete", "key": "k"}]}, {}, 400, "invalid_txn"),
    ("POST", "/txn", {"success": [{"op": "get", "key": "k"}] * 9}, {}, 413, "too_many_txn_ops"),
    ("POST", "/txn", {"success": [{"op": "get", "key": "k" * 1025}]}, {}, 413, "key_too_large"),
]  # fmt: skip


@pytest.mark.parametrize(("method", "path", "body", "headers", "status", "code"), BAD)
def test_bad_input_is_a_json_4xx(
    cluster: Cluster,
    method: str,
    path: str,
    body: Any,
    headers: dict[str, str],
    status: int,
    code: str,
) -> None:
    node = cluster.alive()[0]
    if isinstance(body, str):
        response = node.kv.request(method, path, content=body.encode(), headers=headers)
    elif body is None:
        response = node.kv.request(method, path, headers=headers)
    else:
        response = node.kv.request(method, path, json=body, headers=headers)
    error(response, status, code)


def test_bad_txn_messages_name_the_txn(cluster: Cluster) -> None:
    """A /txn refusal describes a transaction, in the client's own text (newcomer N2: an array
    body was told the POST /kv shape; a key written twice was shown as Python bytes b'x')."""
    node = cluster.alive()[0]
    body = error(node.kv.post("/txn", content=b"[]"), 400, "invalid_request")
    assert '"compare"' in body["message"] and '"key"' not in body["message"], body
    twice = {"success": [{"op": "put", "key": "x", "value": "1"}] * 2}
    body = error(node.kv.post("/txn", json=twice), 400, "invalid_txn")
    assert "key 'x' is written twice" in body["message"], body


def test_replica_max_lag(cluster: Cluster) -> None:
    leader = cluster.wait_for_leader()
    follower = cluster.followers(leader)[0]
    assert follower.health.get("/replica", params={"max_lag": 1000}).status_code == 200
    error(follower.health.get("/replica", params={"max_lag": "-1"}), 400, "invalid_max_lag")
    error(follower.health.get("/replica", params={"max_lag": "x"}), 400, "invalid_max_lag")
    error(leader.health.get("/replica", params={"max_lag": 5}), 503, "not_replica")


def test_ttl_survives_a_leader_change(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The deadline is in the log: the key still expires when the leader that wrote it is gone
    (its expirer with it) and a new leader's expirer takes over."""
    with running_cluster(tmp_path_factory.mktemp("kv2-ttl"), settings=SETTINGS) as c:
        leader = c.wait_for_leader()
        index = write_index(put(leader, "lease", "held", ttl_ms=2000))
        write_index(put(leader, "plain", "kept"))
        started = time.monotonic()
        leader.kill()
        new_leader = c.wait_for_leader()
        assert new_leader is not leader
        # Before the deadline the key is still there on the survivors.
        response = new_leader.kv.get(key_path("lease"), params={"min_index": index})
        if time.monotonic() - started < 1.5:
            assert response.json() == {"value": "held"}, response.text

        def expired() -> bool:
            return all(
                n.kv.get(key_path("lease"), params={"consistency": "eventual"}).status_code == 404
                for n in c.alive()
            )

        wait_until(expired, 15, "the TTL key to expire after the leader change")
        # Absent for compares too: a create-if-absent starts a new key.
        created = write_index(put(new_leader, "lease", "again", prev_value=None))
        assert meta(new_leader, "lease").json()["create_index"] == created
        assert new_leader.kv.get(key_path("plain")).json() == {"value": "kept"}
