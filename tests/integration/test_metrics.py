"""Metrics move as the cluster works: three in-process engines over real TCP, each with its own
``PrometheusSink`` (and registry), read back through ``prometheus_client``'s own parser."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from dengine_trio.config import NodeConfig
from dengine_trio.engine import EmbeddedEngine
from dengine_trio.errors import TooLarge
from dengine_trio.metrics import Thresholds
from dengine_trio.metrics.prometheus import PrometheusSink
from dengine_trio.policy import ReadPolicy
from dengine_trio.raft.membership import ConfChange, ConfChangeKind
from dengine_trio.runtime.node import MAX_COMMAND_BYTES
from dengine_trio.statemachine import KVStateMachine
from tests.integration.cluster import write_configs
from tests.support.cluster import wait_until_async as wait_until

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(engine: EmbeddedEngine) -> Samples:
    """Every sample of ``engine``'s exposition, parsed by prometheus_client's parser:
    (sample name, sorted labels) -> value."""
    exposition = engine.metrics.exposition()
    assert exposition is not None
    body, content_type = exposition
    assert content_type.startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(engine: EmbeddedEngine, name: str, **labels: str) -> float:
    return scrape(engine).get((name, tuple(sorted(labels.items()))), 0.0)


@asynccontextmanager
async def metered_cluster(
    configs: list[NodeConfig],
    thresholds: Thresholds | None = None,
    state_machine: type[KVStateMachine] = KVStateMachine,
) -> AsyncIterator[dict[int, EmbeddedEngine]]:
    engines: dict[int, EmbeddedEngine] = {}
    async with trio.open_nursery() as nursery:
        stops = {}
        for config in configs:
            stop = trio.Event()

            async def run(
                config: NodeConfig = config,
                stop: trio.Event = stop,
                *,
                task_status: trio.TaskStatus[EmbeddedEngine] = trio.TASK_STATUS_IGNORED,
            ) -> None:
                sink = PrometheusSink(thresholds)
                async with EmbeddedEngine.start(
                    config, state_machine=state_machine(), metrics=sink
                ) as engine:
                    task_status.started(engine)
                    await stop.wait()

            engine = await nursery.start(run)
            engines[config.cluster.node_id] = engine
            stops[config.cluster.node_id] = stop
        try:
            yield engines
        finally:
            for stop in stops.values():
                stop.set()


async def leader_of(engines: dict[int, EmbeddedEngine]) -> EmbeddedEngine:
    for engine in engines.values():
        leader_id, _ = await engine.wait_ready(10)
        await engines[leader_id].wait_ready(10)
        return engines[leader_id]
    raise AssertionError("no engines")


async def test_writes_reads_and_leader_changes_move_the_metrics(tmp_path: Path) -> None:
    configs = write_configs(tmp_path)
    async with metered_cluster(configs) as engines:
        leader = await leader_of(engines)
        followers = [e for e in engines.values() if e is not leader]
        # Each node has its own registry: only the leader says it leads.
        assert [value(e, "dengine_is_leader") for e in engines.values()].count(1.0) == 1
        assert value(leader, "dengine_is_leader") == 1.0
        for engine in engines.values():
            assert value(engine, "dengine_has_leader") == 1.0
            assert value(engine, "dengine_term") == leader.node_status().term
            # The membership in effect (these gauges were never fed before).
            assert value(engine, "dengine_cluster_voters") == 3.0
            assert value(engine, "dengine_cluster_learners") == 0.0

        committed = value(leader, "dengine_proposals_committed_total")
        for i in range(5):
            await leader.client().put(f"k{i}".encode(), b"v")
        assert value(leader, "dengine_proposals_committed_total") == committed + 5
        commit = leader.node_status().commit_index
        assert value(leader, "dengine_commit_index") == commit

        def applied_everywhere() -> bool:
            return all(value(e, "dengine_applied_index") >= commit for e in engines.values())

        await wait_until(applied_everywhere)
        for follower in followers:
            assert value(follower, "dengine_proposals_committed_total") == 0

        # A learner (nobody runs it): in effect on each node once its entry is in the log.
        await leader.change_membership(ConfChange(ConfChangeKind.ADD_LEARNER, 9, "127.0.0.1:1"))
        await wait_until(
            lambda: all(value(e, "dengine_cluster_learners") == 1.0 for e in engines.values())
        )
        assert value(leader, "dengine_cluster_voters") == 3.0
        await leader.change_membership(ConfChange(ConfChangeKind.REMOVE, 9))
        assert value(leader, "dengine_cluster_learners") == 0.0

        # A write through a follower is forwarded (and committed by the leader).
        await followers[0].client().put(b"via-follower", b"v")
        assert value(followers[0], "dengine_forwarded_writes_total") == 1
        assert value(leader, "dengine_proposals_committed_total") == committed + 6

        await leader.client().get(b"k0", ReadPolicy.LINEARIZABLE)
        await followers[0].client().get(b"k0", ReadPolicy.LINEARIZABLE)
        for _ in range(3):
            await leader.client().get(b"k0", ReadPolicy.LEASE)  # the fast path, mostly
        await followers[0].client().get(b"k0", ReadPolicy.EVENTUAL)  # not counted
        for engine in (leader, followers[0]):
            ok = value(engine, "dengine_reads_total", policy="linearizable", outcome="ok")
            assert ok == 1
        assert value(leader, "dengine_reads_total", policy="lease", outcome="ok") == 3
        assert value(followers[0], "dengine_reads_total", policy="eventual", outcome="ok") == 0

        with pytest.raises(TooLarge):
            await leader.propose(b"x" * (MAX_COMMAND_BYTES + 1))
        assert value(leader, "dengine_proposals_failed_total", reason="too_large") == 1

        # Disk, peers: the fsync histogram filled, heartbeats measured a round trip to each
        # follower, bytes went both ways.
        assert value(leader, "dengine_wal_fsync_duration_seconds_count") > 0
        assert value(leader, "dengine_apply_duration_seconds_count") > 0
        for follower in followers:
            peer = str(follower.node_id)

            def round_trip_seen(peer: str = peer) -> bool:
                return value(leader, "dengine_peer_round_trip_time_seconds_count", peer=peer) > 0

            await wait_until(round_trip_seen)
            assert value(leader, "dengine_peer_sent_bytes_total", peer=peer) > 0
            assert value(leader, "dengine_peer_received_bytes_total", peer=peer) > 0
            assert value(leader, "dengine_peer_connected", peer=peer) == 1
            assert value(leader, "dengine_peer_lag_entries", peer=peer) >= 0

        # Kill the leader: each survivor sees one more leader change.
        seen = {e.node_id: value(e, "dengine_leader_changes_seen_total") for e in followers}
        assert all(n >= 1 for n in seen.values())
        await leader.stop()

        def new_leader_seen() -> bool:
            return all(
                value(e, "dengine_leader_changes_seen_total") > seen[e.node_id]
                and value(e, "dengine_has_leader") == 1.0
                for e in followers
            )

        await wait_until(new_leader_seen, timeout_s=20)
        assert [value(e, "dengine_is_leader") for e in followers].count(1.0) == 1


def warnings_of(caplog: pytest.LogCaptureFixture, text: str) -> dict[str, int]:
    """How many WARNING lines containing ``text`` each node logged: 'node N' -> count."""
    lines: dict[str, int] = {}
    for record in caplog.records:
        message = record.getMessage()
        if record.levelno == logging.WARNING and text in message:
            node = message.split(":")[0]
            lines[node] = lines.get(node, 0) + 1
    return lines


class SlowKV(KVStateMachine):
    """Applies a command in 30 ms: a state machine doing real work in the trio thread."""

    def apply(self, index: int, command: bytes) -> bytes:
        time.sleep(0.03)
        return super().apply(index, command)


# A long rate-limit interval: the test must never straddle two intervals on a slow machine.
ONCE = dict(interval_s=600.0)


async def test_a_slow_apply_warns_once_not_every_time(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "dengine_trio")
    configs = write_configs(tmp_path, election_timeout_ms=(1500, 2500))
    async with metered_cluster(configs, Thresholds(apply_s=0.02, **ONCE), SlowKV) as engines:
        leader = await leader_of(engines)
        for i in range(12):
            await leader.client().put(f"k{i}".encode(), b"v")
        lines = warnings_of(caplog, "committed entries took")
        # Every batch was slow, but one line per node said so (the rest counted, not logged).
        assert lines.get(f"node {leader.node_id}") == 1, lines
        assert all(n == 1 for n in lines.values()), lines
        assert value(leader, "dengine_slow_events_total", kind="apply") >= 12


async def test_slow_fsyncs_warn_once_and_are_all_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "dengine_trio")
    configs = write_configs(tmp_path)
    # Threshold 0: every fsync is "slow", so the rate limit is what keeps the log short.
    async with metered_cluster(configs, Thresholds(wal_fsync_s=0.0, **ONCE)) as engines:
        leader = await leader_of(engines)
        for i in range(10):
            await leader.client().put(f"k{i}".encode(), b"v")
        lines = warnings_of(caplog, "slow fsync of the log")
        assert lines.get(f"node {leader.node_id}") == 1, lines
        fsyncs = value(leader, "dengine_wal_fsync_duration_seconds_count")
        assert fsyncs >= 10
        assert value(leader, "dengine_slow_events_total", kind="wal_fsync") == fsyncs


async def test_a_blocked_event_loop_warns_that_heartbeats_went_out_late(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "dengine_trio")
    configs = write_configs(tmp_path, election_timeout_ms=(1500, 2500))
    async with metered_cluster(configs, Thresholds(loop_late_s=0.1, **ONCE)) as engines:
        leader = await leader_of(engines)
        for _ in range(4):
            # Hold the trio thread, as a CPU-bound handler or a starved process would: the
            # leader's Raft loop, asleep until its next heartbeat (30 ms), wakes ~250 ms late.
            time.sleep(0.25)
            await trio.sleep(0.1)
        lines = warnings_of(caplog, "heartbeats to followers went out late")
        assert lines.get(f"node {leader.node_id}") == 1, lines
        assert value(leader, "dengine_slow_events_total", kind="raft_loop_late") >= 4


async def test_an_unreachable_peer_is_warned_about_once_per_interval(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "dengine_trio")
    configs = write_configs(tmp_path)
    down = configs[2].cluster.node_id
    thresholds = Thresholds(peer_unreachable_s=0.2, **ONCE)
    # Nodes 1 and 2 of a brand-new cluster elect no leader without node 3 (a bootstrap needs
    # every member): the warnings about it do not depend on a leader.
    async with metered_cluster(configs[:2], thresholds) as engines:

        def retried_several_times() -> bool:
            return all(
                value(e, "dengine_slow_events_total", kind="peer_unreachable") >= 3
                for e in engines.values()
            )

        await wait_until(retried_several_times, timeout_s=20)
        lines = warnings_of(caplog, f"peer {down} at")
        assert sorted(lines) == sorted(f"node {i}" for i in engines), lines
        assert all(n == 1 for n in lines.values()), lines
        for engine in engines.values():
            assert value(engine, "dengine_peer_connected", peer=str(down)) == 0
