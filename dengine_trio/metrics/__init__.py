"""Metrics: what a node measures about itself, and where it goes.

The runtime, the transport and the driver emit to a ``MetricsSink`` given at construction
(``EmbeddedEngine(config, metrics=...)``). ``MetricsSink`` itself records nothing: it is the
default for embedded users who do not want Prometheus. ``PrometheusSink``
(:mod:`dengine_trio.metrics.prometheus`) keeps the numbers for ``GET /metrics`` on the health
port, in a registry of its own per node (several engines may share one process).

Every method is called from the node's trio thread (never from the fsync worker: durations
measured there are handed back first), so a sink needs no lock. Hot-path methods must cost
no more than a few attribute updates; state that the node already holds (role, term,
indexes, the transport's byte counters) is not pushed here at all but read when scraped
(``attach``).

Warnings for an operator (a late Raft loop, a slow fsync or apply, an unreachable peer) are
logged by :class:`~dengine_trio.metrics.warnings.OperatorWarnings` with or without a sink;
``thresholds`` says when.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .warnings import OperatorWarnings, Thresholds

__all__ = ["MetricsSink", "NodeSource", "OperatorWarnings", "Thresholds"]

NodeSource = Callable[[], Any]
"""Returns the node's frozen ``NodeStatus`` (``dengine_trio.runtime.status``) with detail
(peers' progress, transport counters). Typed loosely: metrics sit below the runtime."""


class MetricsSink:
    """The no-op sink, and the interface every sink implements (override what you record).

    ``thresholds`` (see :class:`Thresholds`) decides which fsyncs, applies, late wake-ups and
    unreachable peers are logged as warnings; it applies whatever the sink records.
    Durations are in seconds, sizes in bytes; ``peer`` is a node id.
    """

    def __init__(self, thresholds: Thresholds | None = None) -> None:
        self.thresholds = thresholds or Thresholds()

    # -- wiring ----------------------------------------------------------------------------

    def attach(
        self,
        node_id: int,
        status: NodeSource,
        pending_proposals: Callable[[], int],
        lease_reads_local: Callable[[], int] = lambda: 0,
    ) -> None:
        """Called once by the runtime: where scrape-time gauges read the node's state.
        ``lease_reads_local()`` counts lease reads a leader served without a message (too
        cheap a path to call the sink on, so counted by the runtime and read when scraped)."""

    # -- the write and read paths ----------------------------------------------------------

    def proposals_committed(self, count: int) -> None:
        """``count`` client commands applied by this node while it led (it committed them)."""

    def proposal_failed(self, reason: str) -> None:
        """A client's write failed with ``reason`` (``timeout``, ``no_leader``,
        ``overloaded``, ``stopped``, ``too_large``, ...)."""

    def forwarded_write(self) -> None:
        """This follower sent a client's write to the leader (one per attempt)."""

    def read(self, policy: str, outcome: str) -> None:
        """A read barrier under ``policy`` (``linearizable``, ``lease``) that waited ended
        with ``outcome`` (``ok`` or an error's reason as for ``proposal_failed``). Eventual
        reads (a dictionary lookup, ~0.2 us) and lease reads on the leader's fast path are
        not reported here: a call would cost more than the read."""

    def applied(self, duration_s: float, entries: int) -> None:
        """One batch of ``entries`` committed entries went through the state machine."""

    # -- disk, peers, role -----------------------------------------------------------------

    def wal_fsync(self, duration_s: float) -> None:
        """One fsync of the log (or of the hard state) took ``duration_s``."""

    def peer_round_trip(self, peer: int, duration_s: float) -> None:
        """A heartbeat to ``peer`` was answered ``duration_s`` after it was queued."""

    def role_changed(self, role: str, term: int, leader_id: int) -> None:
        """The core reported a new role, term or leader (``leader_id`` 0: none known)."""

    def slow_event(self, kind: str) -> None:
        """An event over its warning threshold (``raft_loop_late``, ``wal_fsync``, ``apply``,
        ``peer_unreachable``), counted whether or not its warning was rate-limited."""

    # -- HTTP ------------------------------------------------------------------------------

    def http_request(self, route: str, method: str, status: int, duration_s: float) -> None:
        """One HTTP request answered; ``route`` is the route template (``/kv/<key:key>``),
        never the raw path, so the number of label values stays bounded."""

    # -- snapshots, and a hook for what is still to come (membership) ---------------------

    def snapshot_saved(self, duration_s: float, size_bytes: int) -> None:
        """One snapshot taken: captured, written and fsynced in ``duration_s``; the file
        has ``size_bytes`` (``dengine_snapshot_save_duration_seconds``,
        ``dengine_snapshots_saved_total``, ``dengine_snapshot_saved_bytes_total``)."""

    def snapshot_sent(self, peer: int, size_bytes: int) -> None:
        """One snapshot of about ``size_bytes`` (the newest file when the transfer ended)
        streamed to ``peer`` in full (``dengine_snapshots_sent_total``)."""

    def snapshot_received(self, size_bytes: int) -> None:
        """One snapshot of ``size_bytes`` installed from the leader
        (``dengine_snapshots_received_total``)."""

    def membership_changed(self, voters: int, learners: int) -> None:
        """The membership in effect now has ``voters`` and ``learners``
        (``dengine_cluster_voters``, ``dengine_cluster_learners``): called at startup and at
        every configuration entry appended or truncated (in effect on append, thesis §4.1)."""

    def watch_http_workers(
        self, pids: Callable[[], Mapping[int, int]], restarts: Callable[[], Mapping[int, int]]
    ) -> None:
        """Called once by the node when it runs HTTP worker processes (``[http] workers`` >
        1): ``pids()`` is the pid of each running worker by slot, ``restarts()`` how many
        times each slot's worker was restarted; read when scraped
        (``dengine_http_worker_*``: the workers are processes nobody else scrapes)."""

    # -- exposition ------------------------------------------------------------------------

    def exposition(self) -> tuple[bytes, str] | None:
        """The Prometheus text exposition and its content type, or None (this sink keeps
        nothing to expose)."""
        return None


def reason_of(exc: BaseException) -> str:
    """A bounded label value for an error: its class name in snake case (``NoLeader`` ->
    ``no_leader``)."""
    name = type(exc).__name__
    out = [name[0].lower()]
    for ch in name[1:]:
        if ch.isupper():
            out.append("_")
        out.append(ch.lower())
    return "".join(out)
