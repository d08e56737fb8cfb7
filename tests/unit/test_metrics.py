"""The metrics sink's parts on their own: lock-free histograms against prometheus_client's own,
the rate limiter of the operator warnings, label values, the health app's /metrics route, the
process and garbage-collector series on each sink's registry."""

from __future__ import annotations

import gc
import logging
import platform
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY, CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bench.metrics_delta import quantile
from dengine_trio.api.health import create_health_app
from dengine_trio.engine import EmbeddedEngine
from dengine_trio.errors import NoLeader, Timeout
from dengine_trio.metrics import MetricsSink, OperatorWarnings, Thresholds, reason_of
from dengine_trio.metrics.http import UNMATCHED_ROUTE, instrument_app
from dengine_trio.metrics.prometheus import FSYNC_BUCKETS_S, PrometheusSink
from dengine_trio.metrics.warnings import RateLimiter
from tests.support.cluster import node_config


def samples(body: bytes, family: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    for f in text_string_to_metric_families(body.decode()):
        if f.name == family:
            return {(s.name, tuple(sorted(s.labels.items()))): s.value for s in f.samples}
    raise AssertionError(f"no family {family}")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=20, allow_nan=False), max_size=40))
def test_histogram_exposes_what_prometheus_clients_histogram_would(values: list[float]) -> None:
    # Bucket edges included: a value equal to a bound falls in that bound's bucket (le).
    values = [*values, FSYNC_BUCKETS_S[0], FSYNC_BUCKETS_S[5]]
    sink = PrometheusSink()
    registry = CollectorRegistry()
    reference = Histogram(
        "dengine_wal_fsync_duration_seconds", "x", buckets=FSYNC_BUCKETS_S, registry=registry
    )
    for v in values:
        sink.wal_fsync(v)
        reference.observe(v)
    ours = samples(sink.exposition()[0], "dengine_wal_fsync_duration_seconds")
    theirs = samples(generate_latest(registry), "dengine_wal_fsync_duration_seconds")
    theirs = {k: v for k, v in theirs.items() if not k[0].endswith("_created")}
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        assert ours[key] == pytest.approx(value), key


def test_each_sink_has_its_own_registry() -> None:
    one, two = PrometheusSink(), PrometheusSink()
    one.proposals_committed(3)
    body_one, body_two = one.exposition()[0], two.exposition()[0]
    name = ("dengine_proposals_committed_total", ())
    assert samples(body_one, "dengine_proposals_committed")[name] == 3
    assert samples(body_two, "dengine_proposals_committed")[name] == 0
    assert MetricsSink().exposition() is None


def test_leader_changes_count_a_new_leader_not_a_lost_one() -> None:
    sink = PrometheusSink()
    for leader in (0, 1, 0, 1, 2, 2, 0, 3):
        sink.role_changed("follower", 1, leader)
    assert sink.leader_changes == 3  # 1, then 2, then 3


def test_reason_labels_are_snake_case_class_names() -> None:
    assert reason_of(NoLeader("x")) == "no_leader"
    assert reason_of(Timeout("x")) == "timeout"


def test_rate_limiter_logs_once_per_interval_and_counts_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    sink = PrometheusSink(Thresholds(apply_s=0.1, interval_s=10.0))
    warnings = OperatorWarnings(7, sink, 0.05, clock=lambda: now[0])
    caplog.set_level(logging.WARNING, "dengine_trio")
    for _ in range(5):
        warnings.applied(0.2, 3)
        now[0] += 1.0
    warnings.applied(0.05, 1)  # under the threshold: neither logged nor counted
    now[0] += 10.0
    warnings.applied(0.3, 1)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert "suppressed" not in lines[0]
    assert "(4 more suppressed in the last 10 s)" in lines[1]
    assert sink.slow == {"apply": 6}


def test_peers_are_rate_limited_apart() -> None:
    limiter = RateLimiter(10.0, clock=lambda: 0.0)
    assert limiter.allow(("peer", 1)) == 0
    assert limiter.allow(("peer", 2)) == 0
    assert limiter.allow(("peer", 1)) is None


def test_quantile_interpolates_as_histogram_quantile() -> None:
    cumulative = {0.1: 50.0, 0.2: 100.0, float("inf"): 100.0}
    assert quantile(0.5, cumulative) == pytest.approx(0.1)
    assert quantile(0.75, cumulative) == pytest.approx(0.15)


def engine_of(tmp_path: Path, metrics: MetricsSink) -> EmbeddedEngine:
    """An engine that is built but never started (its status says ``stopped``)."""
    config = node_config(tmp_path / "n1.toml", 1, "127.0.0.1:1", {1: "127.0.0.1:1"}, tmp_path)
    return EmbeddedEngine(config, metrics=metrics)


async def test_health_app_serves_metrics_or_says_they_are_off(tmp_path: Path) -> None:
    sink = PrometheusSink()
    app = create_health_app(engine_of(tmp_path, sink))
    instrument_app(app, sink)
    client = app.test_client()
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain; version=0.0.4")
    await client.get("/no/such/route")
    body = (await client.get("/metrics")).get_data
    requests = samples(await body(), "dengine_http_requests")
    assert (
        requests[
            (
                "dengine_http_requests_total",
                (("method", "GET"), ("route", "/metrics"), ("status", "200")),
            )
        ]
        == 1  # the first scrape: a scrape is counted once its response is made
    )
    assert (
        requests[
            (
                "dengine_http_requests_total",
                (("method", "GET"), ("route", UNMATCHED_ROUTE), ("status", "404")),
            )
        ]
        == 1
    )

    off = create_health_app(engine_of(tmp_path, MetricsSink()))
    response = await off.test_client().get("/metrics")
    assert response.status_code == 404
    assert (await response.get_json())["error"] == "metrics_disabled"


def test_snapshot_and_membership_hooks_feed_their_metrics() -> None:
    sink = PrometheusSink()
    body = sink.exposition()[0]
    assert samples(body, "dengine_snapshots_saved")[("dengine_snapshots_saved_total", ())] == 0
    sink.snapshot_saved(0.5, 1000)
    sink.snapshot_sent(2, 1000)
    sink.snapshot_received(1000)
    sink.membership_changed(3, 1)
    body = sink.exposition()[0]
    assert samples(body, "dengine_snapshots_saved")[("dengine_snapshots_saved_total", ())] == 1
    save = samples(body, "dengine_snapshot_save_duration_seconds")
    assert save[("dengine_snapshot_save_duration_seconds_count", ())] == 1
    assert save[("dengine_snapshot_save_duration_seconds_sum", ())] == 0.5
    saved_bytes = samples(body, "dengine_snapshot_saved_bytes")
    assert saved_bytes[("dengine_snapshot_saved_bytes_total", ())] == 1000
    sent = samples(body, "dengine_snapshots_sent")
    assert sent[("dengine_snapshots_sent_total", (("peer", "2"),))] == 1
    assert samples(body, "dengine_cluster_voters")[("dengine_cluster_voters", ())] == 3


def test_each_sink_exposes_the_process_and_gc_series_on_its_own_registry() -> None:
    """process_*, python_info and python_gc_* on every sink's registry (three in one process,
    as in the integration tests), each family once; the default registry gains nothing."""
    default_before = generate_latest(REGISTRY)
    sinks = [PrometheusSink() for _ in range(3)]
    bodies = [sink.exposition()[0] for sink in sinks]
    for body in bodies:
        names = [f.name for f in text_string_to_metric_families(body.decode())]
        assert len(names) == len(set(names)), names
        for family in ("process_cpu_seconds", "process_resident_memory_bytes", "process_open_fds"):
            assert family in names, names
        info = samples(body, "python_info")
        ((_, labels),) = info.keys()
        assert dict(labels)["implementation"] == platform.python_implementation()
        collections = samples(body, "python_gc_collections")
        assert {dict(labels)["generation"] for _, labels in collections} == {"0", "1", "2"}
        # The node's own families come first, as before these were added.
        assert names.index("dengine_leader_changes_seen") < names.index("process_cpu_seconds")
    assert samples(bodies[0], "process_open_fds")[("process_open_fds", ())] > 0
    # A collection between two scrapes shows on every sink: they read the one process's gc.
    before = [
        samples(sink.exposition()[0], "python_gc_collections")[
            ("python_gc_collections_total", (("generation", "2"),))
        ]
        for sink in sinks
    ]
    gc.collect()
    for sink, n in zip(sinks, before, strict=True):
        after = samples(sink.exposition()[0], "python_gc_collections")
        assert after[("python_gc_collections_total", (("generation", "2"),))] >= n + 1
    assert generate_latest(REGISTRY).count(b"\n# HELP") == default_before.count(b"\n# HELP")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_http_worker_series_read_each_running_workers_process() -> None:
    """``watch_http_workers``: each running worker's CPU, memory, descriptors and start time
    by slot (read from its /proc like ``process_*``), how many run, restarts by slot; a
    worker that is not running has no process sample, its restarts stay."""
    import subprocess
    import sys

    allocate = "import time; x = bytearray(64 * 2**20); print(flush=True); time.sleep(30)"
    worker = subprocess.Popen([sys.executable, "-c", allocate], stdout=subprocess.PIPE)
    try:
        assert worker.stdout is not None and worker.stdout.readline() == b"\n"  # allocated
        running = {0: worker.pid}
        sink = PrometheusSink()
        sink.watch_http_workers(lambda: running, lambda: {0: 0, 1: 3})
        body = sink.exposition()[0]
        slot0 = (("slot", "0"),)
        rss = samples(body, "dengine_http_worker_resident_memory_bytes")
        assert rss[("dengine_http_worker_resident_memory_bytes", slot0)] > 64 * 2**20
        cpu = samples(body, "dengine_http_worker_cpu_seconds")
        assert list(cpu) == [("dengine_http_worker_cpu_seconds_total", slot0)]
        assert (
            samples(body, "dengine_http_worker_open_fds")[("dengine_http_worker_open_fds", slot0)]
            >= 3
        )
        started = samples(body, "dengine_http_worker_start_time_seconds")
        assert started[("dengine_http_worker_start_time_seconds", slot0)] > 1.7e9
        assert samples(body, "dengine_http_workers_running") == {
            ("dengine_http_workers_running", ()): 1.0
        }
        assert samples(body, "dengine_http_worker_restarts") == {
            ("dengine_http_worker_restarts_total", slot0): 0.0,
            ("dengine_http_worker_restarts_total", (("slot", "1"),)): 3.0,
        }
    finally:
        worker.kill()
        worker.wait()
    # Without workers (one HTTP process) the families are not there at all.
    names = {
        f.name for f in text_string_to_metric_families(PrometheusSink().exposition()[0].decode())
    }
    assert not any(name.startswith("dengine_http_worker") for name in names)
