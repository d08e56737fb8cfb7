"""Newcomer reproducer (issue 17): the gets of a ``/txn`` are not bounded. ``max_txn_ops`` and
``max_txn_bytes`` bound the request (its keys and values), but each ``get`` copies the value it
reads into the answer, so a small request reading one big key ``max_txn_ops`` times builds an
answer of ``max_txn_ops`` x the value on every replica (the result is encoded at apply).
Measured on a fresh ``devcluster`` with the shipped limits: one 1 MB key, four concurrent 7 KB
``/txn`` of 128 gets of it -> answers of 128 MB, apply blocking each node's event loop 0.7-3.9 s,
seven leader elections in 13 s, forwarded answers dropped ("frame of 128003623 bytes exceeds
16777216"), the clients timing out, node RSS 60 MB -> 640 MB. A listing page stops at 1 MiB for
this very reason (``api/listing.py`` ``LIST_MAX_BYTES``). Here, cheaply: the answer of a small
``/txn`` must stay within ``max_txn_bytes`` of keys and values, or be refused with a 4xx.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.cluster import Cluster, running_cluster

MAX_TXN_BYTES = 64 * 1024
SETTINGS = {"limits.max_txn_bytes": MAX_TXN_BYTES}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("newcomer_kv2_txn_size"), settings=SETTINGS) as c:
        c.wait_for_leader()
        yield c


def test_the_answer_of_a_txn_of_gets_is_bounded(cluster: Cluster) -> None:
    leader = cluster.wait_for_leader()
    value = "x" * (MAX_TXN_BYTES - 1024)
    response = leader.kv.post("/kv", json={"key": "big", "value": value})
    assert response.status_code == 200, response.text
    gets = [{"op": "get", "key": "big"} for _ in range(16)]
    response = leader.kv.post("/txn", json={"compare": [], "success": gets})
    if 400 <= response.status_code < 500:
        assert response.headers["content-type"] == "application/json"
        # KF: refused as a whole (413 txn_read_too_large, the bytes it would read), nothing
        # applied; a txn that reads within the bound answers as before.
        assert response.json()["error"] == "txn_read_too_large", response.text
        again = leader.kv.post("/txn", json={"compare": [], "success": gets[:1]})
        assert again.json()["results"][0]["value"] == value
        return
    assert response.status_code == 200, response.text
    read = sum(len(r.get("value") or "") for r in response.json()["results"])
    assert read <= MAX_TXN_BYTES, f"a {len(response.request.content)}-byte txn read {read} bytes"
