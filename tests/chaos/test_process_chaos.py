"""The process campaign: three real nodes, a nemesis, concurrent clients, a checker.

``test_covering_schedule`` (in ``make test``) plays every fault kind once under DiskFirst.
``test_long_process_campaign`` (``make chaos``) plays seeded schedules for about
``DENGINE_PROCESS_CHAOS_S`` seconds, alternating DiskFirst and MemFirst, and prints a summary.
``test_replay`` replays one schedule named by ``DENGINE_CHAOS_REPLAY=<seed>:<durability>:<s>``,
which every failure prints.
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.support.linearizability import check

from .campaign import HEAL_TIMEOUT_S, START_TIMEOUT_S, ScheduleReport, run_schedule
from .cluster import SNAPSHOT_EVERY, ChaosCluster
from .nemesis import FAULT_KINDS, make_schedule
from .proxy import LinkFault, LinkMode
from .workload import CLIENT_TIMEOUT_S, Workload

CHAOS = os.environ.get("DENGINE_CHAOS") == "1"
REPLAY = os.environ.get("DENGINE_CHAOS_REPLAY", "")


def _check_report(report: ScheduleReport) -> None:
    # run_schedule raises on a violation, a lost write or divergence; these guard the guards.
    assert report.lost == 0
    assert report.puts_ok > 0, f"no write succeeded at all: {report.responses}"
    assert report.reads_ok > 0, f"no read succeeded at all: {report.responses}"


async def test_covering_schedule(tmp_path: Path) -> None:
    """Every fault kind once (kills, pauses, partitions, one-way cuts, black holes, delays,
    a follower removed and added back with a wiped directory, a voter wiped under its old id)
    under DiskFirst, with snapshots every ``SNAPSHOT_EVERY`` entries: linearizable, nothing
    acknowledged lost, the nodes converge, and snapshots were taken during the faults."""
    seed = int(os.environ.get("DENGINE_CHAOS_SEED", "1"))
    schedule = make_schedule(seed, "DiskFirst", 0)
    report = await run_schedule(tmp_path, schedule)
    print("\n" + report.line())
    _check_report(report)
    assert set(report.faults) == set(FAULT_KINDS)
    # The proxy really stood in the way: links were cut and bytes swallowed.
    assert report.proxy["closed_by_fault"] + report.proxy["refused"] > 0
    assert report.proxy["bytes_swallowed"] > 0
    # Snapshots and compaction ran under the faults (installs depend on timing: printed).
    assert report.snapshots["written"] > 0, report.snapshots
    # The membership faults did what they say: a follower removed (200, or 404 when an
    # answer was lost and a retry found it gone) and back as a
    # joining learner (then promoted: run_schedule checks every node is a voter at the end).
    assert any("wipe, back as a joining learner" in s for s in report.nemesis_log), (
        report.nemesis_log
    )


@pytest.mark.skipif(not REPLAY, reason="set DENGINE_CHAOS_REPLAY=<seed>:<durability>:<s>")
async def test_replay(tmp_path: Path) -> None:
    seed, durability, duration_s = REPLAY.split(":")
    schedule = make_schedule(int(seed), durability, float(duration_s))
    print(f"\nreplaying {schedule}")
    report = await run_schedule(tmp_path, schedule)
    print(report.line())
    _check_report(report)


@pytest.mark.chaos
@pytest.mark.skipif(not CHAOS, reason="long campaign: run with make chaos")
async def test_long_process_campaign(tmp_path: Path) -> None:
    """Seeded schedules of about a minute each until the budget is spent; prints a summary."""
    budget_s = float(os.environ.get("DENGINE_PROCESS_CHAOS_S", "480"))
    schedule_s = float(os.environ.get("DENGINE_PROCESS_SCHEDULE_S", "45"))
    base_seed = int(os.environ.get("DENGINE_CHAOS_SEED", str(random.randrange(1 << 30))))
    started = time.monotonic()
    reports: list[ScheduleReport] = []
    faults: Counter[str] = Counter()
    snapshots: Counter[str] = Counter()
    lost: Counter[str] = Counter()
    print(f"\nprocess campaign: base seed {base_seed}, budget {budget_s:.0f} s")
    n = 0
    while time.monotonic() - started < budget_s:
        durability = "MemFirst" if n % 3 == 2 else "DiskFirst"
        schedule = make_schedule(base_seed + n, durability, schedule_s)
        report = await run_schedule(tmp_path / f"s{n}", schedule)
        print(report.line(), flush=True)
        _check_report(report)
        reports.append(report)
        faults.update(report.faults)
        snapshots.update(report.snapshots)
        lost[durability] += report.lost
        n += 1
    operations = sum(r.operations for r in reports)
    inconclusive = sum(r.inconclusive for r in reports)
    by_durability = Counter(r.schedule.durability for r in reports)
    print(
        f"process campaign: {len(reports)} schedules ({dict(by_durability)}), "
        f"{operations} operations checked "
        f"({sum(r.puts_ok for r in reports)} acknowledged puts, "
        f"{sum(r.puts_unknown for r in reports)} puts of unknown outcome, "
        f"{sum(r.reads_ok for r in reports)} reads), "
        f"faults injected {dict(sorted(faults.items()))}, "
        f"snapshots (every {SNAPSHOT_EVERY} entries) {dict(snapshots)}, "
        f"violations found 0, acknowledged writes lost under DiskFirst {lost['DiskFirst']} "
        f"(MemFirst {lost['MemFirst']}), {inconclusive} schedules inconclusive, "
        f"{time.monotonic() - started:.0f} s"
    )


async def test_a_stale_read_through_a_cut_is_caught(tmp_path: Path) -> None:
    """The pipeline can fail: a follower cut off by the proxy does not see a committed write.
    Its linearizable read refuses to answer rather than answer stale; its eventual read,
    passed off as linearizable, makes the checker report a violation."""
    async with ChaosCluster(tmp_path, "DiskFirst") as cluster:
        leader = await cluster.wait_for_leader(START_TIMEOUT_S)
        loner = next(i for i in cluster.ids if i != leader)
        net = cluster.network
        net.set_links(net.links_of(loner), LinkFault(LinkMode.CUT))
        workload = Workload(cluster, seed=0, keys=["k"])
        async with httpx.AsyncClient(trust_env=False, timeout=CLIENT_TIMEOUT_S) as http:
            written = await workload.put(http, "writer", leader, "k", "v1")
            assert written.outcome == "ok", workload.responses
            refused = await workload.get(http, "reader", loner, "k", "linearizable")
            assert refused.outcome == "fail", refused
            stale = await workload.get(http, "reader", loner, "k", "eventual")
        assert stale.outcome == "ok" and stale.value is None
        result = check(workload.history)
        assert result.violation
        assert "get k -> absent" in result.explanation
        # Healed, the loner catches up and the same read is fresh.
        net.heal()
        assert (await cluster.wait_converged(["k"], HEAL_TIMEOUT_S)) == {"k": "v1"}
