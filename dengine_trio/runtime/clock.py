"""The node's clock for Raft decisions: trio's clock plus the time the machine spent suspended.

Why: trio's clock is ``time.perf_counter``, which on Linux is ``CLOCK_MONOTONIC``, and that
clock stops while the machine is suspended (a paused VM, a closed laptop lid). A leader
resumed after a suspend would see its lease as still running although its followers, whose
clocks ran on, elected a new leader meanwhile; its lease reads would then be stale. The core's
lease, election and CheckQuorum decisions therefore use a clock that counts suspended time.

What: ``NodeClock.now_ms()`` = trio's current time + the time suspended since the clock was
created, in ms. The suspended time is ``CLOCK_BOOTTIME - CLOCK_MONOTONIC`` (Linux; both tick
at the same, NTP-slewed rate, and differ exactly by the time spent suspended). With trio's
real clock this is ``CLOCK_BOOTTIME`` up to a constant; under a virtual clock
(``trio.testing.MockClock``) it is the virtual time, so time-travelling tests still drive the
core. Where ``CLOCK_BOOTTIME`` does not exist (macOS, Windows, the BSDs) suspended time counts
as zero and the clock is trio's monotonic clock: there a suspend longer than the lease's margin
can yield stale lease reads (``docs/durability.md``, "The lease and the clock").

Deadlines: the core's deadlines are in this clock's ms; trio sleeps on its own clock.
``trio_deadline(deadline_ms)`` converts: the trio time at which this clock reaches
``deadline_ms`` if the machine is not suspended meanwhile. If it is, the sleep ends late by the
suspended time, and the wake-up finds the deadline (in this clock) already passed, which is
safe: the lease is judged on ``now_ms``, never on how long a sleep lasted.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import trio

__all__ = ["SUSPEND_AWARE", "NodeClock", "node_clock"]

SUSPEND_AWARE = hasattr(time, "CLOCK_BOOTTIME")
"""True where suspended time is measured (Linux); False where it is taken as zero."""


def _suspended_reading_s() -> float:
    """Seconds spent suspended since boot, up to a constant (0.0 where unknown)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME) - time.clock_gettime(time.CLOCK_MONOTONIC)


def _no_suspend_reading_s() -> float:
    return 0.0


class NodeClock:
    """A node's clock for the Raft core, in ms, counting suspended time (see module docstring).

    ``trio_now`` (seconds) and ``suspended_reading`` (seconds, any origin) are injectable for
    tests; by default trio's clock and ``CLOCK_BOOTTIME - CLOCK_MONOTONIC``.
    """

    def __init__(
        self,
        trio_now: Callable[[], float] = trio.current_time,
        suspended_reading: Callable[[], float] | None = None,
    ) -> None:
        if suspended_reading is None:
            suspended_reading = _suspended_reading_s if SUSPEND_AWARE else _no_suspend_reading_s
        self._trio_now = trio_now
        self._reading = suspended_reading
        self._origin = suspended_reading()
        # Suspended time only grows; keeping the maximum also absorbs the jitter of reading
        # two clocks one after the other, so now_ms never goes back while trio's clock does not.
        self._suspended_s = 0.0

    def suspended_s(self) -> float:
        """Seconds the machine has spent suspended since this clock was created (>= 0)."""
        measured = self._reading() - self._origin
        if measured > self._suspended_s:
            self._suspended_s = measured
        return self._suspended_s

    def now_ms(self) -> float:
        """The node's time in ms: trio's time plus the time suspended. Never decreases.

        Must be called where ``trio_now`` works (by default: inside ``trio.run``).
        """
        return (self._trio_now() + self.suspended_s()) * 1000.0

    def trio_deadline(self, deadline_ms: float) -> float:
        """The trio time (s) at which ``now_ms()`` reaches ``deadline_ms``, if the machine is not
        suspended before then; for ``trio.move_on_at`` / ``trio.sleep_until``. It never grows
        as time passes, so a wake-up at it always finds ``deadline_ms`` reached."""
        return deadline_ms / 1000.0 - self.suspended_s()


node_clock = NodeClock()
"""The clock every node of this process feeds its core (suspension is machine-wide)."""
