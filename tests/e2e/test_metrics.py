"""``GET /metrics`` on real node processes: the exposition parses with prometheus_client's own
parser, moves with writes, counts HTTP requests by route template, and names every metric the
shipped Grafana dashboard queries; ``bench.metrics_delta`` reads it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.cluster import Cluster, Node, key_path, running_cluster, wait_until

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana-dashboard.json"

# Suffixes a query may add to a family's name, by the family's type (the parser strips
# ``_total`` from counter families).
SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum"),
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("metrics")) as c:
        c.wait_for_leader()
        yield c


def families(
    node: Node,
) -> dict[str, tuple[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]]:
    """Family name -> (type, {(sample name, sorted labels): value}), from ``node``'s /metrics."""
    response = node.health.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    out = {}
    for family in text_string_to_metric_families(response.text):
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples}
        out[family.name] = (family.type, samples)
    return out


def sample(node: Node, family: str, name: str | None = None, **labels: str) -> float:
    _, samples = families(node)[family]
    return samples.get((name or family, tuple(sorted(labels.items()))), 0.0)


def test_metrics_move_with_writes_and_count_http_by_route(cluster: Cluster) -> None:
    leader = cluster.wait_for_leader()
    before = sample(leader, "dengine_proposals_committed", "dengine_proposals_committed_total")
    for key in ("alpha", "beta", "gamma"):
        response = leader.kv.post("/kv", json={"key": key, "value": "v"})
        assert response.status_code == 200, response.text
    for key in ("alpha", "beta", "nothing-here"):
        leader.kv.get(key_path(key))
    after = sample(leader, "dengine_proposals_committed", "dengine_proposals_committed_total")
    assert after == before + 3
    commit = sample(leader, "dengine_commit_index")
    assert sample(leader, "dengine_is_leader") == 1
    for node in cluster.nodes:
        wait_until(lambda node=node: sample(node, "dengine_applied_index") >= commit)
        assert sample(node, "dengine_has_leader") == 1

    _, http = families(leader)["dengine_http_requests"]
    routes = {dict(labels)["route"] for (_, labels) in http}
    # The route template, never a key: the label set stays bounded whatever clients send.
    assert "/kv/<key:key>" in routes and "/kv" in routes, routes
    assert not any("alpha" in route or "beta" in route for route in routes), routes
    gets = sum(
        v
        for (_, labels), v in http.items()
        if dict(labels)["route"] == "/kv/<key:key>" and dict(labels)["method"] == "GET"
    )
    assert gets == 3  # two found (200) and one absent (404)
    assert (
        sample(
            leader,
            "dengine_http_requests",
            "dengine_http_requests_total",
            route="/kv/<key:key>",
            method="GET",
            status="404",
        )
        == 1
    )
    assert (
        sample(
            leader,
            "dengine_http_request_duration_seconds",
            "dengine_http_request_duration_seconds_count",
            route="/kv",
            method="POST",
            status="200",
        )
        == 3
    )
    # The health port's own requests are counted on the same node, /metrics included.
    assert (
        sample(
            leader,
            "dengine_http_requests",
            "dengine_http_requests_total",
            route="/metrics",
            method="GET",
            status="200",
        )
        >= 1
    )


def test_every_dashboard_query_names_a_metric_the_node_exposes(cluster: Cluster) -> None:
    leader = cluster.wait_for_leader()
    leader.kv.post("/kv", json={"key": "dash", "value": "v"})
    exposed: set[str] = set()
    for name, (kind, _) in families(leader).items():
        exposed.update(name + suffix for suffix in SUFFIXES.get(kind, ("",)))
    dashboard = json.loads(DASHBOARD.read_text())
    queried = []
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = re.findall(r"\bdengine_\w+", target["expr"])
            assert names, (panel["title"], target["expr"])
            queried.extend((panel["title"], n) for n in names)
    missing = [(title, name) for title, name in queried if name not in exposed]
    assert not missing, missing


def test_metrics_delta_reports_what_moved(cluster: Cluster) -> None:
    leader = cluster.wait_for_leader()
    ports = ",".join(str(n.health_port) for n in cluster.nodes)
    # Three writes to the leader, between the two scrapes.
    writes = (
        "import httpx\n"
        f"c = httpx.Client(base_url='http://127.0.0.1:{leader.port}', trust_env=False)\n"
        "for i in range(3):\n"
        "    assert c.post('/kv', json={'key': f'delta{i}', 'value': 'v'}).status_code == 200\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "bench.metrics_delta", "--health", ports, "--", sys.executable,
         "-c", writes],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = result.stdout
    posts = 'dengine_http_request_duration_seconds{method="POST",route="/kv",status="200"}'
    assert f"{posts}: 3 observed" in out, out
    assert "dengine_proposals_committed_total: +3" in out, out
