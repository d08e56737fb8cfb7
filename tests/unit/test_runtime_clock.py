"""The node's clock counts suspended time (issue 11 item 3), and the runtime feeds it to the core.

A suspend is imitated by making ``CLOCK_BOOTTIME`` read ahead of ``CLOCK_MONOTONIC``, as it
does after a resume: trio's clock (``CLOCK_MONOTONIC``) does not see the suspended time.
"""

from __future__ import annotations

import time
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
import trio
import trio.testing

from dengine_trio.engine import EmbeddedEngine
from dengine_trio.runtime import clock as clock_module
from dengine_trio.runtime.clock import SUSPEND_AWARE, NodeClock, node_clock
from tests.integration.cluster import write_configs

linux_only = pytest.mark.skipif(not SUSPEND_AWARE, reason="CLOCK_BOOTTIME is Linux-only")


_REAL_CLOCK_GETTIME = time.clock_gettime


def suspend(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """From now on CLOCK_BOOTTIME reads ``seconds`` further ahead, as after a suspend."""
    ahead = getattr(time.clock_gettime, "ahead_s", 0.0) + seconds

    def clock_gettime(clock_id: int) -> float:
        reading = _REAL_CLOCK_GETTIME(clock_id)
        return reading + ahead if clock_id == time.CLOCK_BOOTTIME else reading

    clock_gettime.ahead_s = ahead  # type: ignore[attr-defined]
    monkeypatch.setattr(time, "clock_gettime", clock_gettime)


@linux_only
def test_the_node_clock_is_boottime_up_to_a_constant() -> None:
    """Under trio's real clock the node clock and CLOCK_BOOTTIME advance together."""

    async def main() -> list[float]:
        differences = []
        for _ in range(5):
            boot_ms = time.clock_gettime(time.CLOCK_BOOTTIME) * 1000
            differences.append(node_clock.now_ms() - boot_ms)
            await trio.sleep(0.01)
        return differences

    differences = trio.run(main)
    assert max(differences) - min(differences) < 1.0  # ms: the reading jitter only


def test_the_node_clock_never_goes_back() -> None:
    async def main() -> None:
        previous = node_clock.now_ms()
        for _ in range(2000):
            now = node_clock.now_ms()
            assert now >= previous
            previous = now
            if _ % 100 == 0:
                await trio.lowlevel.checkpoint()

    trio.run(main)


def test_suspended_time_is_added_and_deadlines_convert() -> None:
    trio_now = [100.0]
    reading = [5.0]
    clock = NodeClock(lambda: trio_now[0], lambda: reading[0])
    assert clock.now_ms() == 100_000.0
    assert clock.trio_deadline(100_600.0) == pytest.approx(100.6)
    reading[0] = 35.0  # suspended 30 s; trio's clock did not move
    assert clock.now_ms() == 130_000.0
    # A deadline 600 ms ahead in node time is 600 ms ahead in trio time too.
    assert clock.trio_deadline(130_600.0) == pytest.approx(100.6)
    # Reading jitter backwards is ignored: suspended time never shrinks.
    reading[0] = 34.999
    assert clock.now_ms() == 130_000.0
    # At the converted deadline the node clock has reached it, whatever happened meanwhile.
    deadline = clock.trio_deadline(131_000.0)
    trio_now[0] = deadline
    assert clock.now_ms() >= 131_000.0 - 1e-6


def test_without_boottime_the_clock_is_trios(monkeypatch: pytest.MonkeyPatch) -> None:
    """The documented fallback: no suspended time where CLOCK_BOOTTIME does not exist."""
    monkeypatch.setattr(clock_module, "SUSPEND_AWARE", False)
    clock = NodeClock(lambda: 7.0)
    assert clock.now_ms() == 7000.0
    assert clock.trio_deadline(7500.0) == 7.5


@linux_only
async def test_a_leader_resumed_from_suspend_has_no_lease(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reported class: a leader whose machine was suspended must not count its lease as
    running; its followers' clocks ran on and may have elected a new leader. Real engines on
    loopback; the suspend is seen by the runtime's clock (and so by the core) at once."""
    configs = write_configs(tmp_path, policy="LeaseRead")
    async with AsyncExitStack() as stack:
        engines = [await stack.enter_async_context(EmbeddedEngine.start(c)) for c in configs]
        await engines[0].wait_ready(timeout_s=20)
        leader = next(e for e in engines if e.is_leader())
        await leader.client().put(b"k", b"v")
        runtime = leader._runtime
        raft = runtime.raft
        assert raft is not None
        with trio.fail_after(20):
            while not raft.lease_valid(runtime.now_ms()):
                await trio.sleep(0.01)
        suspend(monkeypatch, 30.0)  # longer than any election timeout
        # No checkpoint in between: nothing could have renewed the lease.
        assert not raft.lease_valid(runtime.now_ms())
        # The cluster carries on: rounds sent after the resume give a leader a lease again,
        # and a lease read is answered (the runtime's sleeps follow the converted deadlines).
        with trio.fail_after(20):
            while True:
                current = next((e for e in engines if e.is_leader()), None)
                if current is not None and current._runtime.raft is not None:
                    rt = current._runtime
                    assert rt.raft is not None
                    if rt.raft.lease_valid(rt.now_ms()):
                        break
                await trio.sleep(0.01)
        assert await current.client().get(b"k") == b"v"


@linux_only
async def test_the_raft_loop_sleeps_until_deadlines_in_node_time(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The core's deadlines are in node time, ahead of trio's by the suspended time; the Raft
    loop must convert them (sleeping on node time / 1000 would oversleep by 100 s here). Under
    a virtual clock: a lone node campaigning for 5 virtual seconds must never have an overdue
    election deadline when anyone looks."""
    suspend(monkeypatch, 100.0)
    configs = write_configs(tmp_path)
    async with EmbeddedEngine.start(configs[0]) as engine:
        runtime = engine._runtime
        raft = runtime.raft
        assert raft is not None
        for _ in range(50):
            await trio.sleep(0.1)
            overdue_ms = runtime.now_ms() - raft.next_deadline()
            assert overdue_ms < 1.0, f"a deadline {overdue_ms:.0f} ms overdue"
        assert runtime.now_ms() > 100_000.0 + trio.current_time() * 1000.0 - 1.0
