"""Every node killed at once under write load: what acknowledged writes survive.

In ``make test``: MemFirst loses nothing to SIGKILL of every process (the WAL's ``os.write``
put the entries in the page cache before they were acknowledged), and DiskFirst loses nothing
even to an imitated power cut of every machine (``fsync_probe``). ``make chaos`` measures
several rounds of both faults under both strategies and prints the table that
``docs/durability.md`` quotes.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .cluster import ChaosCluster
from .fsync_probe import power_cut
from .loss_window import LossRound, measure_round

CHAOS = os.environ.get("DENGINE_CHAOS") == "1"


async def test_mem_first_loses_nothing_when_every_process_is_killed(tmp_path: Path) -> None:
    async with ChaosCluster(tmp_path, "MemFirst") as cluster:
        result = await measure_round(cluster, 1, power_cut=False)
    print("\n" + result.line())
    assert result.acknowledged > 0
    assert result.lost == 0


async def test_disk_first_loses_nothing_to_a_power_cut_of_every_node(tmp_path: Path) -> None:
    async with ChaosCluster(tmp_path, "DiskFirst", probe_fsync=True) as cluster:
        result = await measure_round(cluster, 1, power_cut=True)
    print("\n" + result.line())
    assert result.acknowledged > 0
    assert result.lost == 0


def test_a_power_cut_keeps_exactly_what_was_fsynced(tmp_path: Path) -> None:
    wal = tmp_path / "db" / "wal"
    wal.mkdir(parents=True)
    synced, unsynced = wal / "00000000000000000001.wal", wal / "00000000000000000009.wal"
    synced.write_bytes(b"x" * 100)
    unsynced.write_bytes(b"y" * 10)
    log = tmp_path / "n1.fsync"
    # Two fsyncs of the first segment: the later one (after a truncation) is what counts.
    log.write_text(f"80 {synced.resolve()}\n60 {synced.resolve()}\n")
    assert power_cut(tmp_path / "db", log) == 40 + 10
    assert synced.read_bytes() == b"x" * 60
    assert not unsynced.exists()


@pytest.mark.chaos
@pytest.mark.skipif(not CHAOS, reason="long campaign: run with make chaos")
async def test_measured_loss_window(tmp_path: Path) -> None:
    """Rounds of SIGKILL-all and of SIGKILL-all plus a power cut, under both strategies."""
    rounds_per_fault = int(os.environ.get("DENGINE_LOSS_ROUNDS", "3"))
    results: list[LossRound] = []
    print()
    for durability in ("MemFirst", "DiskFirst"):
        async with ChaosCluster(tmp_path / durability, durability, probe_fsync=True) as cluster:
            for n in range(2 * rounds_per_fault):
                result = await measure_round(cluster, n, power_cut=n % 2 == 1, load_s=3.0)
                print(result.line(), flush=True)
                results.append(result)
    print("loss window summary:")
    for durability in ("MemFirst", "DiskFirst"):
        for fault in ("SIGKILL all", "SIGKILL all + power cut"):
            chosen = [r for r in results if r.durability == durability and r.fault == fault]
            print(
                f"  {durability:<9} {fault:<24} rounds {len(chosen)}, acknowledged "
                f"{sum(r.acknowledged for r in chosen)}, lost {sum(r.lost for r in chosen)}, "
                f"longest window {max(r.window_ms for r in chosen):.0f} ms, "
                f"most lost in one round {max(r.lost for r in chosen)}"
            )
    assert all(r.lost == 0 for r in results if r.fault == "SIGKILL all")
    assert all(r.lost == 0 for r in results if r.durability == "DiskFirst")
