"""Warnings an operator can act on, logged as etcd logs them, and rate-limited.

etcd warns when a leader sends heartbeats late ("leader failed to send out heartbeat on time;
took too long, leader is overloaded likely from slow disk"), when an fsync is slow ("slow
fdatasync", over 1 s), when applying a request took too long (over 100 ms), and when a peer
cannot be reached. A node in trouble hits these many times a second; each kind (and, for
peers, each peer) logs at most once per ``Thresholds.interval_s`` and the next line says how
many were suppressed meanwhile.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from . import MetricsSink

__all__ = ["OperatorWarnings", "RateLimiter", "Thresholds"]

log = logging.getLogger("dengine_trio.node")


@attrs.frozen
class Thresholds:
    """When an event is worth a WARNING (seconds).

    ``wal_fsync_s``: one fsync of the log (etcd: 1 s). ``apply_s``: one batch of committed
    entries through the state machine (etcd: 100 ms; the state machine runs in the trio
    thread, so a slow apply also delays heartbeats). ``loop_late_s``: a leader's Raft loop woke
    this long after its deadline, so its heartbeats went out late (None: two heartbeat
    intervals, etcd's rule). ``peer_unreachable_s``: a peer's link has been down this long.
    ``interval_s``: at most one line per kind (and peer) per this many seconds.
    """

    wal_fsync_s: float = 1.0
    apply_s: float = 0.1
    loop_late_s: float | None = None
    peer_unreachable_s: float = 2.0
    interval_s: float = 10.0


class RateLimiter:
    """At most one log line per key per ``interval_s`` (``clock`` in seconds)."""

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._last: dict[object, float] = {}
        self.suppressed: dict[object, int] = {}

    def allow(self, key: object) -> int | None:
        """None if a line for ``key`` was logged within ``interval_s`` (counted as
        suppressed); else how many were suppressed since the last line (and it is logged)."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self.suppressed[key] = self.suppressed.get(key, 0) + 1
            return None
        self._last[key] = now
        return self.suppressed.pop(key, 0)


def _suffix(suppressed: int, interval_s: float) -> str:
    if not suppressed:
        return ""
    return f" ({suppressed} more suppressed in the last {interval_s:g} s)"


class OperatorWarnings:
    """The rate-limited WARNING lines of node ``node_id``; each event over its threshold is
    also counted in ``sink.slow_event`` (suppressed ones too). Twice ``heartbeat_interval_s``
    is the default for ``Thresholds.loop_late_s``."""

    def __init__(
        self,
        node_id: int,
        sink: MetricsSink,
        heartbeat_interval_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        logger: logging.Logger = log,
    ) -> None:
        t = sink.thresholds
        self.node_id = node_id
        self._sink = sink
        self._log = logger
        self.interval_s = t.interval_s
        self.wal_fsync_s = t.wal_fsync_s
        self.apply_s = t.apply_s
        self.loop_late_s = 2 * heartbeat_interval_s if t.loop_late_s is None else t.loop_late_s
        self.heartbeat_interval_s = heartbeat_interval_s
        self.peer_unreachable_s = t.peer_unreachable_s
        self.limiter = RateLimiter(t.interval_s, clock)

    def _warn(self, key: object, kind: str, message: str, *args: object) -> None:
        self._sink.slow_event(kind)
        suppressed = self.limiter.allow(key)
        if suppressed is not None:
            self._log.warning(message + _suffix(suppressed, self.interval_s), *args)

    def loop_late(self, late_s: float, is_leader: bool) -> None:
        """The Raft loop woke ``late_s`` after its deadline. Only a leader's is reported (as
        etcd does): its followers may start an election if it goes on."""
        if late_s < self.loop_late_s or not is_leader:
            return
        self._warn(
            "raft_loop_late",
            "raft_loop_late",
            "node %d: the Raft loop woke %.0f ms after its deadline (heartbeat interval "
            "%.0f ms): heartbeats to followers went out late, and they may start an "
            "election; the process is overloaded or blocked (a slow state machine apply, "
            "CPU starvation, swapping)",
            self.node_id,
            late_s * 1000,
            self.heartbeat_interval_s * 1000,
        )

    def wal_fsync(self, duration_s: float) -> None:
        """One fsync took ``duration_s``."""
        if duration_s < self.wal_fsync_s:
            return
        self._warn(
            "wal_fsync",
            "wal_fsync",
            "node %d: slow fsync of the log: took %.3f s (threshold %.3f s); the disk is "
            "slow or shared, and every write waits for it (see dengine_wal_fsync_duration_"
            "seconds)",
            self.node_id,
            duration_s,
            self.wal_fsync_s,
        )

    def applied(self, duration_s: float, entries: int) -> None:
        """A batch of ``entries`` took ``duration_s`` in the state machine."""
        if duration_s < self.apply_s:
            return
        self._warn(
            "apply",
            "apply",
            "node %d: applying %d committed entries took %.3f s (threshold %.3f s); the "
            "state machine blocks the node's event loop meanwhile (heartbeats, reads)",
            self.node_id,
            entries,
            duration_s,
            self.apply_s,
        )

    def peer_unreachable(self, peer: int, address: str, down_s: float, reason: str) -> None:
        """``peer``'s link at ``address`` has been down ``down_s`` (last error ``reason``)."""
        if down_s < self.peer_unreachable_s:
            return
        self._warn(
            ("peer_unreachable", peer),
            "peer_unreachable",
            "node %d: peer %d at %s unreachable for %.1f s: %s",
            self.node_id,
            peer,
            address,
            down_s,
            reason,
        )
