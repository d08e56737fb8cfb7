"""One schedule of the process campaign, start to verdict.

Start three nodes behind the proxy, wait for a leader, run the clients while the nemesis plays
the schedule, heal, stop the clients (each finishes its operation in flight), read every key
linearizably, wait for the nodes to converge, then judge:

- the history (final reads included) is linearizable (``tests.support.linearizability``);
- no acknowledged write is lost (``workload.lost_writes``);
- every node applied the same index and holds the same value for every key, and that value is
  what the final linearizable read returned or the value of a put of unknown outcome (one still
  in flight when the reads ran may land later);
- every node is a voter again, bound to its data directory (a node removed and added back
  with a wiped directory was promoted; a voter wiped under its old id was re-bound).
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import attrs
import trio

from tests.support.linearizability import Result, check

from .cluster import ChaosCluster
from .nemesis import Fault, Nemesis, Schedule
from .workload import Workload, lost_writes

__all__ = ["ScheduleReport", "run_schedule"]

START_TIMEOUT_S = 90.0
"""Generous: three interpreters start on a shared two-core machine."""
HEAL_TIMEOUT_S = 90.0
KEYS = 6
CLIENTS = 3

# Link faults before process faults, so a delay never overrides a cut of the same step.
_ORDER = {"delay": 0, "delay_node": 0, "isolate": 1, "cut_out": 1, "cut_in": 1, "cut_pair": 1}


@attrs.define
class ScheduleReport:
    schedule: Schedule
    operations: int = 0
    puts_ok: int = 0
    puts_unknown: int = 0
    puts_failed: int = 0
    reads_ok: int = 0
    lost: int = 0
    inconclusive: bool = False
    faults: Counter[str] = attrs.Factory(Counter)
    proxy: Counter[str] = attrs.Factory(Counter)
    snapshots: Counter[str] = attrs.Factory(Counter)  # written, installed, restarted_from
    responses: Counter[str] = attrs.Factory(Counter)
    nemesis_log: list[str] = attrs.Factory(list)
    elapsed_s: float = 0.0

    def line(self) -> str:
        return (
            f"schedule {self.schedule.replay_spec}: {len(self.schedule.steps)} steps, "
            f"{self.operations} operations ({self.puts_ok} puts ok, {self.puts_unknown} unknown, "
            f"{self.puts_failed} failed, {self.reads_ok} reads ok), faults {dict(self.faults)}, "
            f"snapshots {dict(self.snapshots)}, lost {self.lost}"
            f"{', INCONCLUSIVE' if self.inconclusive else ''}, "
            f"{self.elapsed_s:.0f} s"
        )


class ChaosFailure(AssertionError):
    pass


async def run_schedule(root: Path, schedule: Schedule, *, clients: int = CLIENTS) -> ScheduleReport:
    """Run ``schedule`` on a fresh cluster under ``root``; raise ``AssertionError`` (with the
    replay spec, the nemesis log and node logs) if any check fails."""
    started = time.monotonic()
    report = ScheduleReport(schedule)
    keys = [f"k{i}" for i in range(KEYS)]
    async with ChaosCluster(root, schedule.durability) as cluster:
        nemesis = Nemesis(cluster, random.Random(f"{schedule.seed}/nemesis"))
        workload = Workload(cluster, schedule.seed, keys, clients)

        def failure(message: str) -> ChaosFailure:
            return ChaosFailure(
                f"{message}\nreplay: DENGINE_CHAOS_REPLAY={schedule.replay_spec} "
                f".venv/bin/pytest tests/chaos/test_process_chaos.py -k replay -s\n"
                f"nemesis: {' | '.join(nemesis.log)}\n{cluster.logs()}"
            )

        try:
            await _play(cluster, schedule, nemesis, workload, keys, report, failure)
        except ChaosFailure:
            raise
        except AssertionError as exc:  # a bounded wait that ran out: say how to replay it
            raise failure(str(exc)) from None
    report.elapsed_s = time.monotonic() - started
    return report


async def _play(
    cluster: ChaosCluster,
    schedule: Schedule,
    nemesis: Nemesis,
    workload: Workload,
    keys: list[str],
    report: ScheduleReport,
    failure: Callable[[str], ChaosFailure],
) -> None:
    await cluster.wait_for_leader(START_TIMEOUT_S)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(workload.run)
        for step in schedule.steps:
            for fault in sorted(step.faults, key=_injection_order):
                await nemesis.inject(fault)
            # The schedule's own pacing: how long faults hold and the calm between them.
            await trio.sleep(step.hold_s)
            nemesis.heal()
            await trio.sleep(step.quiet_s)
        nemesis.heal()
        workload.stop()
    await cluster.wait_for_leader(HEAL_TIMEOUT_S)
    final = await workload.final_reads(HEAL_TIMEOUT_S)
    converged = await cluster.wait_converged(keys, HEAL_TIMEOUT_S)
    if not await nemesis.members_settled(HEAL_TIMEOUT_S):
        leader = await cluster.leader()
        view = await cluster.member_view(leader) if leader is not None else None
        raise failure(f"not every node is a bound voter again after the heal: {view}")

    history = workload.history
    report.operations = len(history)
    puts = [op for op in history if op.kind == "put"]
    report.puts_ok = sum(op.outcome == "ok" for op in puts)
    report.puts_unknown = sum(op.outcome == "unknown" for op in puts)
    report.puts_failed = sum(op.outcome == "fail" for op in puts)
    report.reads_ok = sum(op.kind == "get" and op.outcome == "ok" for op in history)
    report.faults = nemesis.injected
    report.proxy = cluster.network.stats
    report.snapshots = Counter(cluster.snapshot_counts())
    report.responses = workload.responses
    report.nemesis_log = nemesis.log

    result: Result = await trio.to_thread.run_sync(check, history)
    if result.violation:
        raise failure(f"the history is not linearizable:\n{result.explanation}")
    report.inconclusive = result.inconclusive
    lost = lost_writes(history, final)
    report.lost = len(lost)
    if lost:
        shown = "\n".join("  " + op.describe() for op in lost[:20])
        raise failure(f"{len(lost)} acknowledged writes lost; final values {final}:\n{shown}")
    unknown_values = {op.value for op in puts if op.outcome == "unknown"}
    for key in keys:
        if converged[key] != final[key] and converged[key] not in unknown_values:
            raise failure(
                f"key {key}: the nodes converged on {converged[key]!r}, but the final "
                f"linearizable read returned {final[key]!r}"
            )


def _injection_order(fault: Fault) -> int:
    return _ORDER.get(fault.kind, 2)
