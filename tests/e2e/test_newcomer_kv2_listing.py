"""Newcomer reproducer (issue 17): ``GET /kv?prefix=%FF`` / ``after=%FF`` (percent-escapes that
are not UTF-8) are not refused: the listing takes the raw text ``%FF`` as the prefix/cursor, so
``prefix=%FF`` lists the key literally spelt ``%FF`` and ``after=%FF`` lists every key from
``%`` on (almost every key, since ``%`` sorts low). The listing's docstring promises
``invalid_key`` for a ``prefix``/``after`` that is not valid Unicode, and ``GET /watch`` answers
``400 invalid_key`` for the same ``prefix=%FF``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.cluster import Cluster, running_cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("newcomer_kv2_listing")) as c:
        c.wait_for_leader()
        yield c


def test_non_utf8_prefix_or_after_is_refused_like_watch(cluster: Cluster) -> None:
    leader = cluster.wait_for_leader()
    for key in ("%FF", "b"):
        response = leader.kv.post("/kv", json={"key": key, "value": "x"})
        assert response.status_code == 200, response.text
    watch = leader.kv.get("/watch?prefix=%FF")
    assert watch.status_code == 400 and watch.json()["error"] == "invalid_key", watch.text
    for query in ("prefix=%FF", "after=%FF", "prefix=%C3", "after=%C3"):
        response = leader.kv.get("/kv?" + query + "&consistency=linearizable")
        assert response.status_code == 400, (query, response.text)
        assert response.json()["error"] == "invalid_key", (query, response.text)
    # KF: valid escapes still list as before (prefix "%FF" spelt %25FF; "+" is a space).
    listed = leader.kv.get("/kv?prefix=%25F&consistency=linearizable").json()
    assert [item["key"] for item in listed["items"]] == ["%FF"]
    assert leader.kv.get("/kv?prefix=a+b").json() == {"items": [], "next": None}
