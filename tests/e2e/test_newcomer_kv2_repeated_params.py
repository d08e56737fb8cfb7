"""Newcomer reproducer (issue 17): a query parameter given twice is silently taken at its first
value on the new KV parameters, so ``DELETE /kv/k?prev_index=1&prev_index=<mod>`` is a failed
compare while the same two values the other way round delete the key: one request, two
meanings (a proxy or a client library that appends a parameter changes a conditional delete).
``GET /watch`` refuses the same thing (``400 invalid_request``: "parameter 'from_index' given
twice"); ``min_index`` on a read and ``limit`` on a listing behave like ``prev_index``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.cluster import Cluster, key_path, running_cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("newcomer_kv2_params")) as c:
        c.wait_for_leader()
        yield c


def test_a_new_parameter_given_twice_is_refused_as_watch_does(cluster: Cluster) -> None:
    leader = cluster.wait_for_leader()
    watch = leader.kv.get("/watch?key=k&from_index=1&from_index=2")
    assert watch.status_code == 400, watch.text
    written = leader.kv.post("/kv", json={"key": "k", "value": "v"})
    assert written.status_code == 200, written.text
    mod = written.json()["index"]
    for method, url in (
        ("DELETE", f"{key_path('k')}?prev_index={mod}&prev_index=1"),
        ("GET", f"{key_path('k')}?min_index=1&min_index=2"),
        ("GET", "/kv?limit=1&limit=2"),
    ):
        response = leader.kv.request(method, url)
        assert response.status_code == 400, (method, url, response.status_code, response.text)
        assert response.json()["error"] in ("invalid_request", "invalid_index", "invalid_limit")
    # KF, the class: any parameter of the KV routes, the older ones (consistency) included;
    # nothing was deleted by the refused conditional delete.
    for method, url in (
        ("GET", f"{key_path('k')}?consistency=eventual&consistency=linearizable"),
        ("GET", f"{key_path('k')}?meta=true&meta=false"),
        ("GET", "/kv?prefix=a&prefix=k"),
        ("GET", "/kv?after=a&after=b"),
        ("DELETE", f"{key_path('k')}?prev_index={mod}&prev_index={mod}"),
    ):
        response = leader.kv.request(method, url)
        assert response.status_code == 400, (method, url, response.status_code, response.text)
        assert response.json()["error"] == "invalid_request", response.text
    assert leader.kv.get(key_path("k"), params={"consistency": "linearizable"}).json() == {
        "value": "v"
    }
