"""The Prometheus sink: the numbers behind ``GET /metrics``, exposed with ``prometheus_client``.

Names follow etcd's (``etcd_server_leader_changes_seen_total`` ->
``dengine_leader_changes_seen_total``), with units in the names and a help text each.

Why not ``prometheus_client.Counter`` and ``Histogram`` on the write path: each ``inc`` and
``observe`` takes a lock (measured on the dev machine with ``timeit``, prometheus_client
0.26, CPython 3.11: 0.48 us per ``Counter.inc`` and 1.5 us per ``Histogram.observe`` with
etcd's 14 fsync buckets, against 0.04 us for an attribute increment and 0.31 us for
``_Histogram.observe`` here). Every call of this sink happens in the
node's trio thread, so plain integers need no lock; a custom collector turns them into metric
families when Prometheus scrapes, and ``prometheus_client`` writes the exposition. Gauges that
mirror the node's state (role, term, indexes, pending proposals, the transport's byte counts)
are not kept here at all: they are read from the node's frozen status at scrape time.

Each sink's registry also carries ``prometheus_client``'s standard ``process_*``,
``python_info`` and ``python_gc_*`` series (read from ``/proc`` and ``gc.get_stats()`` at
scrape time), under the names every Python exporter uses (docs/monitoring.md).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from typing import TypeVar

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from . import MetricsSink, NodeSource
from .warnings import Thresholds

__all__ = [
    "APPLY_BUCKETS_S",
    "FSYNC_BUCKETS_S",
    "HTTP_BUCKETS_S",
    "RTT_BUCKETS_S",
    "PrometheusSink",
]


def _exponential(start: float, factor: float, count: int) -> tuple[float, ...]:
    return tuple(start * factor**i for i in range(count))


FSYNC_BUCKETS_S = _exponential(0.001, 2, 14)
"""etcd's ``wal_fsync_duration_seconds`` buckets: 1 ms to 8.192 s."""
APPLY_BUCKETS_S = _exponential(0.0001, 2, 20)
"""etcd's ``apply_duration_seconds`` buckets: 100 us to about 52 s."""
RTT_BUCKETS_S = _exponential(0.0001, 2, 16)
"""etcd's ``peer_round_trip_time_seconds`` buckets: 100 us to about 3.3 s."""
SNAPSHOT_BUCKETS_S = _exponential(0.01, 2, 14)
"""Snapshot save durations: 10 ms to about 82 s."""
HTTP_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
"""Prometheus's default buckets, extended down to 0.5 ms (a local GET takes well under 5 ms)."""


class _Histogram:
    """Bucket counts without a lock (the trio thread only). ``counts[i]`` counts observations
    in ``(buckets[i-1], buckets[i]]``; the last slot is ``+Inf``."""

    __slots__ = ("buckets", "count", "counts", "sum")

    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        total = 0
        for bound, n in zip((*self.buckets, float("inf")), self.counts, strict=True):
            total += n
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), total))
        return out


class PrometheusSink(MetricsSink):
    """Keeps one node's metrics and exposes them through its own ``CollectorRegistry``
    (``registry``), never the process-wide default one. That registry also holds
    ``prometheus_client``'s process, platform and garbage-collector collectors
    (``process_*``, ``python_info``, ``python_gc_*``: the process's, not the node's)."""

    def __init__(self, thresholds: Thresholds | None = None) -> None:
        super().__init__(thresholds)
        self.node_id = 0
        self._status: NodeSource | None = None
        self._pending_proposals: Callable[[], int] | None = None
        self._lease_reads_local: Callable[[], int] = lambda: 0
        self.committed = 0
        self.failed: dict[str, int] = {}
        self.forwarded = 0
        self.reads: dict[tuple[str, str], int] = {}
        self.leader_changes = 0
        self._last_leader = 0
        self.slow: dict[str, int] = {}
        self.fsync = _Histogram(FSYNC_BUCKETS_S)
        self.apply = _Histogram(APPLY_BUCKETS_S)
        self.rtt: dict[int, _Histogram] = {}
        self.http_count: dict[tuple[str, str, str], int] = {}
        self.http_duration: dict[tuple[str, str, str], _Histogram] = {}
        self.snapshots_saved = 0
        self.snapshot_save = _Histogram(SNAPSHOT_BUCKETS_S)
        self.snapshot_bytes_saved = 0
        self.snapshots_sent: dict[int, int] = {}
        self.snapshots_received = 0
        self.membership: tuple[int, int] | None = None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))
        # The process and interpreter series every Python exporter has (process_cpu_seconds_total,
        # process_resident_memory_bytes, process_open_fds, python_info,
        # python_gc_collections_total{generation}), on this registry: the default registry has
        # them too, but the node serves only its own. They describe the whole process, so
        # several sinks in one process (one per engine) all show the same values. After the
        # node's own families, so those come first in the exposition as before.
        ProcessCollector(registry=self.registry)  # reads /proc: nothing where there is none
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)  # CPython only: registers nothing elsewhere

    # -- recording (see MetricsSink for what each means) -----------------------------------

    def attach(
        self,
        node_id: int,
        status: NodeSource,
        pending_proposals: Callable[[], int],
        lease_reads_local: Callable[[], int] = lambda: 0,
    ) -> None:
        """See ``MetricsSink.attach``."""
        self.node_id = node_id
        self._status = status
        self._pending_proposals = pending_proposals
        self._lease_reads_local = lease_reads_local

    def proposals_committed(self, count: int) -> None:
        """See ``MetricsSink.proposals_committed``."""
        self.committed += count

    def proposal_failed(self, reason: str) -> None:
        """See ``MetricsSink.proposal_failed``."""
        self.failed[reason] = self.failed.get(reason, 0) + 1

    def forwarded_write(self) -> None:
        """See ``MetricsSink.forwarded_write``."""
        self.forwarded += 1

    def read(self, policy: str, outcome: str) -> None:
        """See ``MetricsSink.read``."""
        key = (policy, outcome)
        self.reads[key] = self.reads.get(key, 0) + 1

    def applied(self, duration_s: float, entries: int) -> None:
        """See ``MetricsSink.applied``."""
        self.apply.observe(duration_s)

    def wal_fsync(self, duration_s: float) -> None:
        """See ``MetricsSink.wal_fsync``."""
        self.fsync.observe(duration_s)

    def peer_round_trip(self, peer: int, duration_s: float) -> None:
        """See ``MetricsSink.peer_round_trip``."""
        histogram = self.rtt.get(peer)
        if histogram is None:
            histogram = self.rtt[peer] = _Histogram(RTT_BUCKETS_S)
        histogram.observe(duration_s)

    def role_changed(self, role: str, term: int, leader_id: int) -> None:
        """See ``MetricsSink.role_changed``."""
        # As etcd counts it: each time a leader becomes known that differs from the last one
        # this node knew (a lost leader that comes back in the same term is no change).
        if leader_id and leader_id != self._last_leader:
            self._last_leader = leader_id
            self.leader_changes += 1

    def slow_event(self, kind: str) -> None:
        """See ``MetricsSink.slow_event``."""
        self.slow[kind] = self.slow.get(kind, 0) + 1

    def http_request(self, route: str, method: str, status: int, duration_s: float) -> None:
        """See ``MetricsSink.http_request``."""
        key = (route, method, str(status))
        self.http_count[key] = self.http_count.get(key, 0) + 1
        histogram = self.http_duration.get(key)
        if histogram is None:
            histogram = self.http_duration[key] = _Histogram(HTTP_BUCKETS_S)
        histogram.observe(duration_s)

    def snapshot_saved(self, duration_s: float, size_bytes: int) -> None:
        """See ``MetricsSink.snapshot_saved``."""
        self.snapshots_saved += 1
        self.snapshot_save.observe(duration_s)
        self.snapshot_bytes_saved += size_bytes

    def snapshot_sent(self, peer: int, size_bytes: int) -> None:
        """See ``MetricsSink.snapshot_sent``."""
        self.snapshots_sent[peer] = self.snapshots_sent.get(peer, 0) + 1

    def snapshot_received(self, size_bytes: int) -> None:
        """See ``MetricsSink.snapshot_received``."""
        self.snapshots_received += 1

    def membership_changed(self, voters: int, learners: int) -> None:
        """See ``MetricsSink.membership_changed``."""
        self.membership = (voters, learners)

    def watch_http_workers(
        self, pids: Callable[[], Mapping[int, int]], restarts: Callable[[], Mapping[int, int]]
    ) -> None:
        """See ``MetricsSink.watch_http_workers``: adds the ``dengine_http_worker_*`` families
        (read from each worker's ``/proc/<pid>`` by ``prometheus_client``'s own reader)."""
        self.registry.register(_WorkerCollector(pids, restarts))

    # -- exposition ------------------------------------------------------------------------

    def exposition(self) -> tuple[bytes, str]:
        """The text exposition of ``registry`` (``prometheus_client.generate_latest``), in the
        text format 0.0.4 that every Prometheus server reads (names are plain ASCII here, so
        the newer 1.0.0 would add nothing)."""
        return generate_latest(self.registry), CONTENT_TYPE_PLAIN_0_0_4


_Key = TypeVar("_Key", bound="tuple[str | int, ...]")


def _histogram(
    name: str, doc: str, labels: Sequence[str], series: Mapping[tuple[str, ...], _Histogram]
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=list(labels))
    for values, h in sorted(series.items()):
        family.add_metric(list(values), h.cumulative(), h.sum)
    return family


def _counter(
    name: str, doc: str, labels: Sequence[str], series: Mapping[_Key, int]
) -> CounterMetricFamily:
    """A counter family with one sample per key of ``series``, in key order (a peer id
    sorts as a number); the label values are the key's items as strings."""
    family = CounterMetricFamily(name, doc, labels=list(labels))
    for values, n in sorted(series.items()):
        family.add_metric([str(v) for v in values], n)
    return family


_WORKER_SERIES = (
    # (prometheus_client's process family, ours, help, a counter?)
    (
        "process_cpu_seconds",
        "dengine_http_worker_cpu_seconds_total",
        "User plus system CPU time of the HTTP worker process in seconds (from 0 again after "
        "a restart).",
        True,
    ),
    (
        "process_resident_memory_bytes",
        "dengine_http_worker_resident_memory_bytes",
        "Resident memory size of the HTTP worker process in bytes.",
        False,
    ),
    (
        "process_open_fds",
        "dengine_http_worker_open_fds",
        "File descriptors open in the HTTP worker process (its client connections among them).",
        False,
    ),
    (
        "process_start_time_seconds",
        "dengine_http_worker_start_time_seconds",
        "When the HTTP worker process started, in seconds since the Unix epoch.",
        False,
    ),
)


class _WorkerCollector:
    """The node's HTTP worker processes (``[http] workers`` > 1), one sample per slot: the
    standard process series of each (``ProcessCollector`` reading ``/proc/<pid>``, so the
    same numbers ``process_*`` gives for the node), how many run, and their restarts."""

    def __init__(
        self, pids: Callable[[], Mapping[int, int]], restarts: Callable[[], Mapping[int, int]]
    ) -> None:
        self.pids = pids
        self.restarts = restarts

    def collect(self) -> Iterator[Metric]:
        pids = dict(self.pids())
        values: dict[str, list[tuple[int, float]]] = {}
        for slot, pid in sorted(pids.items()):
            # A worker that exits while read gives what was read (ProcessCollector ignores
            # OSError): at worst a missing sample until the next scrape.
            for read in ProcessCollector(pid=partial(int, pid), registry=None).collect():
                for sample in read.samples:
                    values.setdefault(read.name, []).append((slot, sample.value))
        for source, name, doc, counter in _WORKER_SERIES:
            kind = CounterMetricFamily if counter else GaugeMetricFamily
            family = kind(name, doc, labels=["slot"])
            for slot, value in values.get(source, ()):
                family.add_metric([str(slot)], value)
            yield family
        yield GaugeMetricFamily(
            "dengine_http_workers_running",
            "HTTP worker processes running now ([http] workers when every one is up).",
            value=len(pids),
        )
        yield _counter(
            "dengine_http_worker_restarts_total",
            "Times the node restarted an HTTP worker after it exited, by slot.",
            ["slot"],
            {(slot,): n for slot, n in self.restarts().items()},
        )


class _Collector:
    """Builds the metric families when the registry is collected (at each scrape)."""

    def __init__(self, sink: PrometheusSink) -> None:
        self.sink = sink

    def collect(self) -> Iterator[Metric]:
        s = self.sink
        yield from self._state()
        yield CounterMetricFamily(
            "dengine_leader_changes_seen_total",
            "Number of leader changes seen by this node (a known leader that differs from the "
            "last one it knew).",
            value=s.leader_changes,
        )
        yield CounterMetricFamily(
            "dengine_proposals_committed_total",
            "Client commands this node committed and applied while it was the leader.",
            value=s.committed,
        )
        yield _counter(
            "dengine_proposals_failed_total",
            "Client writes to this node that failed, by reason (timeout: may or may not "
            "have applied; no_leader, overloaded, stopped, too_large: did not apply).",
            ("reason",),
            {(reason,): n for reason, n in s.failed.items()},
        )
        counts = dict(s.reads)
        local = s._lease_reads_local()
        if local:
            counts[("lease", "ok")] = counts.get(("lease", "ok"), 0) + local
        yield _counter(
            "dengine_reads_total",
            "Linearizable and lease reads on this node, by read policy and outcome (ok or an "
            "error's reason); eventual reads are not counted.",
            ("policy", "outcome"),
            counts,
        )
        yield CounterMetricFamily(
            "dengine_forwarded_writes_total",
            "Client writes this follower forwarded to the leader (one per attempt).",
            value=s.forwarded,
        )
        yield _counter(
            "dengine_slow_events_total",
            "Events over their warning threshold, by kind (raft_loop_late, wal_fsync, apply, "
            "peer_unreachable); counted even when the warning line was rate-limited.",
            ("kind",),
            {(kind,): n for kind, n in s.slow.items()},
        )
        yield _histogram(
            "dengine_wal_fsync_duration_seconds",
            "Latency of the fsyncs of the log and the hard state.",
            (),
            {(): s.fsync},
        )
        yield _histogram(
            "dengine_apply_duration_seconds",
            "Time to apply one batch of committed entries to the state machine.",
            (),
            {(): s.apply},
        )
        yield _histogram(
            "dengine_peer_round_trip_time_seconds",
            "Round trip of a heartbeat to a peer: from queueing it to reading the peer's "
            "answer to that heartbeat (leader only).",
            ("peer",),
            {(str(peer),): h for peer, h in s.rtt.items()},
        )
        yield _counter(
            "dengine_http_requests_total",
            "HTTP requests answered, by route template, method and status.",
            ("route", "method", "status"),
            s.http_count,
        )
        yield _histogram(
            "dengine_http_request_duration_seconds",
            "Time from a request's arrival in the app to its response, by route template, "
            "method and status.",
            ("route", "method", "status"),
            {key: h for key, h in s.http_duration.items()},
        )
        yield from self._hooks()

    def _state(self) -> Iterator[Metric]:
        s = self.sink
        if s._status is None:
            return
        st = s._status()

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, value=value)

        yield gauge("dengine_is_leader", "1 if this node is the leader, else 0.", st.is_leader)
        yield gauge(
            "dengine_has_leader",
            "1 if this node knows a leader in its current term, else 0.",
            st.leader_id is not None,
        )
        yield gauge("dengine_term", "The node's current Raft term.", st.term)
        yield gauge(
            "dengine_commit_index", "The highest log index known committed.", st.commit_index
        )
        yield gauge(
            "dengine_applied_index",
            "The highest log index applied to the state machine.",
            st.applied_index,
        )
        yield gauge("dengine_last_log_index", "The index of the last log entry.", st.last_log_index)
        yield gauge(
            "dengine_snapshot_index",
            "The last log index the newest snapshot of this node covers (0: none).",
            st.snapshot_index,
        )
        yield gauge(
            "dengine_snapshot_size_bytes",
            "Size of the newest snapshot file this node wrote, installed or started from.",
            st.snapshot_bytes,
        )
        yield gauge(
            "dengine_proposals_pending",
            "Client writes waiting on this node (its own, and those it forwarded).",
            s._pending_proposals() if s._pending_proposals else 0,
        )
        lag = GaugeMetricFamily(
            "dengine_peer_lag_entries",
            "On the leader: entries of its log a follower does not hold yet (last log index "
            "minus the follower's match index).",
            labels=["peer"],
        )
        for peer, p in sorted(st.peers.items()):
            lag.add_metric([str(peer)], max(0, st.last_log_index - p.match_index))
        yield lag
        transport = st.transport
        peers = transport.get("peers", {}) if transport else {}
        sent = CounterMetricFamily(
            "dengine_peer_sent_bytes_total",
            "Bytes written to the link to each peer.",
            labels=["peer"],
        )
        received = CounterMetricFamily(
            "dengine_peer_received_bytes_total",
            "Bytes read from each peer's link to this node.",
            labels=["peer"],
        )
        connected = GaugeMetricFamily(
            "dengine_peer_connected",
            "1 if this node's link to the peer is connected, else 0.",
            labels=["peer"],
        )
        for peer, p in sorted(peers.items(), key=lambda item: int(item[0])):
            sent.add_metric([str(peer)], p["bytes_out"])
            received.add_metric([str(peer)], p["bytes_in"])
            connected.add_metric([str(peer)], 1 if p["connected"] else 0)
        yield sent
        yield received
        yield connected

    def _hooks(self) -> Iterator[Metric]:
        s = self.sink
        yield CounterMetricFamily(
            "dengine_snapshots_saved_total",
            "Snapshots this node wrote.",
            value=s.snapshots_saved,
        )
        yield _histogram(
            "dengine_snapshot_save_duration_seconds",
            "Time to take one snapshot: capture, write and fsync the file.",
            (),
            {(): s.snapshot_save},
        )
        yield CounterMetricFamily(
            "dengine_snapshot_saved_bytes_total",
            "Bytes of the snapshot files this node wrote.",
            value=s.snapshot_bytes_saved,
        )
        yield _counter(
            "dengine_snapshots_sent_total",
            "Snapshots this leader streamed to each peer in full.",
            ("peer",),
            {(peer,): n for peer, n in s.snapshots_sent.items()},
        )
        yield CounterMetricFamily(
            "dengine_snapshots_received_total",
            "Snapshots this node installed from its leader.",
            value=s.snapshots_received,
        )
        if s.membership is not None:
            voters, learners = s.membership
            yield GaugeMetricFamily("dengine_cluster_voters", "Voting members.", value=voters)
            yield GaugeMetricFamily(
                "dengine_cluster_learners", "Non-voting members.", value=learners
            )
