"""``GET /metrics`` on real node processes: the exposition parses with prometheus_client's own
parser, moves with writes, counts HTTP requests by route template, and names every metric the
shipped Grafana dashboard queries; ``bench.metrics_delta`` reads it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.cluster import Cluster, Node, free_ports, key_path, running_cluster, wait_until

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


PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
DEPLOY = REPO / "deploy"
needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None or PROMTOOL is None,
    reason="prometheus/promtool not installed (Debian: apt-get install prometheus; "
    ".ci/run installs it on a best-effort basis)",
)


@needs_prometheus
def test_shipped_prometheus_config_and_alert_rules_are_valid() -> None:
    assert PROMTOOL is not None
    for args in (
        ["check", "config", str(DEPLOY / "prometheus.yml")],
        ["check", "rules", str(DEPLOY / "prometheus-alerts.yml")],
    ):
        result = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
    # docs/monitoring.md shows the same alerts: each rule's expression appears there verbatim.
    docs = (REPO / "docs" / "monitoring.md").read_text()
    exprs = re.findall(r"^\s+expr: (.+)$", (DEPLOY / "prometheus-alerts.yml").read_text(), re.M)
    assert len(exprs) >= 4
    assert [e for e in exprs if e not in docs] == []


@needs_prometheus
def test_prometheus_scrapes_the_cluster_and_evaluates_every_query(
    cluster: Cluster, tmp_path: Path
) -> None:
    """The shipped scrape config (targets and interval changed), a real Prometheus: every node
    is scraped, and every dashboard and alert expression evaluates without error."""
    assert PROMETHEUS is not None
    leader = cluster.wait_for_leader()
    leader.kv.post("/kv", json={"key": "prom", "value": "v"})
    config = (DEPLOY / "prometheus.yml").read_text().replace("5s", "1s")
    for default, node in zip((10001, 10002, 10003), cluster.nodes, strict=True):
        config = config.replace(f"127.0.0.1:{default}", f"127.0.0.1:{node.health_port}")
    (tmp_path / "prometheus.yml").write_text(config)
    shutil.copy(DEPLOY / "prometheus-alerts.yml", tmp_path / "prometheus-alerts.yml")
    port = free_ports(1)[0]
    log_path = tmp_path / "prometheus.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    api = httpx.Client(base_url=f"http://127.0.0.1:{port}/api/v1", timeout=10, trust_env=False)
    try:

        def query(expr: str) -> list[dict[str, object]] | None:
            try:
                body = api.get("/query", params={"query": expr}).json()
            except (httpx.TransportError, ValueError):
                return None
            assert body["status"] == "success", (expr, body)
            result: list[dict[str, object]] = body["data"]["result"]
            return result

        def all_scraped() -> bool:
            result = query('up{job="dengine"} == 1')
            return result is not None and len(result) == len(cluster.nodes)

        try:
            wait_until(all_scraped, 60, "Prometheus to scrape every node")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{log_path.read_text(errors='replace')[-3000:]}") from None
        leaders = wait_until(lambda: query("sum(dengine_is_leader)"), 30)
        assert float(leaders[0]["value"][1]) == 1.0  # type: ignore[index]
        dashboard = json.loads(DASHBOARD.read_text())
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                query(target["expr"])  # asserts Prometheus accepted and evaluated it

        def rules_evaluated() -> list[dict[str, object]] | None:
            groups = api.get("/rules").json()["data"]["groups"]
            rules = [r for g in groups for r in g["rules"]]
            done = rules and all(r.get("lastEvaluation", "").startswith("20") for r in rules)
            return rules if done else None

        rules = wait_until(rules_evaluated, 30, "every alert rule evaluated")
        assert [r["name"] for r in rules if r["health"] != "ok"] == []
        # A healthy cluster: nothing about leaders or lag fires.
        firing = {r["name"] for r in rules if r["state"] == "firing"}
        assert not firing & {"DengineNoLeader", "DengineNodeWithoutLeader", "DengineApplyLag"}
    finally:
        api.close()
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_a_killed_leader_is_a_leader_change_on_the_survivors(cluster: Cluster) -> None:
    """Last in this module: it kills the shared cluster's leader (SIGKILL, no hand-over)."""
    leader = cluster.wait_for_leader()
    survivors = cluster.followers(leader)
    seen = {
        n.node_id: sample(n, "dengine_leader_changes_seen", "dengine_leader_changes_seen_total")
        for n in survivors
    }
    leader.kill()
    new_leader = cluster.wait_for_leader()
    assert new_leader is not leader
    for node in survivors:

        def moved(node: Node = node) -> bool:
            changes = sample(
                node, "dengine_leader_changes_seen", "dengine_leader_changes_seen_total"
            )
            return changes > seen[node.node_id] and sample(node, "dengine_has_leader") == 1

        wait_until(moved, 30, f"node {node.node_id} to count the new leader")
    assert sample(new_leader, "dengine_is_leader") == 1
    assert sample(new_leader, "dengine_peer_connected", peer=str(leader.node_id)) == 0


@needs_prometheus
def test_the_no_leader_alerts_fire_when_they_should(tmp_path: Path) -> None:
    """promtool's rule unit tests over synthetic series: no leader anywhere fires
    DengineNoLeader; one node without a leader fires only DengineNodeWithoutLeader."""
    assert PROMTOOL is not None

    def series(instance: str, values: str) -> dict[str, str]:
        return {
            "series": f'dengine_has_leader{{instance="{instance}",job="dengine"}}',
            "values": values,
        }

    cut_off = "{} knows no leader: it is cut off from the cluster."
    no_leader = "No node of the cluster knows a leader: writes and linearizable reads fail."
    spec = {
        "rule_files": [str(DEPLOY / "prometheus-alerts.yml")],
        "evaluation_interval": "15s",
        "tests": [
            {
                "interval": "15s",
                "input_series": [series("a", "0x20"), series("b", "0x20"), series("c", "0x20")],
                "alert_rule_test": [
                    {
                        "eval_time": "2m",
                        "alertname": "DengineNoLeader",
                        "exp_alerts": [
                            {
                                "exp_labels": {"severity": "critical"},
                                "exp_annotations": {"summary": no_leader},
                            }
                        ],
                    }
                ],
            },
            {
                "interval": "15s",
                "input_series": [series("a", "1x20"), series("b", "1x20"), series("c", "0x20")],
                "alert_rule_test": [
                    {"eval_time": "2m", "alertname": "DengineNoLeader", "exp_alerts": []},
                    {
                        "eval_time": "2m",
                        "alertname": "DengineNodeWithoutLeader",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": "warning",
                                    "instance": "c",
                                    "job": "dengine",
                                },
                                "exp_annotations": {"summary": cut_off.format("c")},
                            }
                        ],
                    },
                ],
            },
        ],
    }
    tests = tmp_path / "alerts_test.yml"
    tests.write_text(json.dumps(spec))  # YAML reads JSON
    result = subprocess.run(
        [PROMTOOL, "test", "rules", str(tests)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
