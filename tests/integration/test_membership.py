"""Membership changes on running engines (issue 14): real TCP on loopback, real files.

Each test runs three or four ``EmbeddedEngine``s in one trio program; every wait is bounded.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import pytest
import trio

from dengine_trio.config import (
    ROLE_LEARNER,
    STATUS_JOINING,
    NodeConfig,
    PeerConfig,
    load_config,
    render_toml,
)
from dengine_trio.engine import EmbeddedEngine
from dengine_trio.errors import DengineError, MembershipError
from dengine_trio.policy import ReadPolicy
from dengine_trio.raft.membership import ConfChange, ConfChangeKind
from dengine_trio.raft.messages import RequestVoteResponse
from dengine_trio.storage.cluster_identity import save_cluster_id
from tests.support.cluster import free_ports

from .cluster import EngineHandle, agreed_leader, record_sends, wait_until, write_configs

WAIT_S = 20.0
TEST_S = 90.0
"""A bound on each test as a whole (trio.fail_after): a hang fails, it does not stall CI."""


@asynccontextmanager
async def bounded_nursery() -> AsyncIterator[trio.Nursery]:
    with trio.fail_after(TEST_S):
        async with trio.open_nursery() as nursery:
            yield nursery


def joiner_config(
    configs: list[NodeConfig], root: Path, node_id: int, promote: bool = True
) -> NodeConfig:
    """Node ``node_id`` joining the cluster of ``configs``: its own entry is a learner's
    (``role = 3``, ``status = 0``: promoted once caught up; ``status = 2``: a read replica)."""
    base = configs[0]
    port = free_ports(1)[0]
    address = f"127.0.0.1:{port}"
    cluster = attrs.evolve(
        base.cluster,
        node_id=node_id,
        listen_address=address,
        initial_cluster=[
            *base.cluster.initial_cluster,
            PeerConfig(node_id, address, ROLE_LEARNER, STATUS_JOINING if promote else 2),
        ],
        db_root_dir=(root / f"db{node_id}").as_posix(),
    )
    path = root / f"n{node_id}.toml"
    path.write_text(render_toml(attrs.evolve(base, path=path, cluster=cluster)), encoding="utf-8")
    return load_config(path)


def members(engine: EmbeddedEngine) -> dict[int, bool]:
    """``{id: voter}`` of ``engine``'s membership in effect."""
    m = engine._runtime.raft.membership  # type: ignore[union-attr]
    return {member.id: member.voter for member in m.members}


async def writer(engine: EmbeddedEngine, prefix: str, count: int, done: list[int]) -> None:
    """Write ``prefix0..`` through ``engine`` one after another (bounded), recording each
    acknowledged index in ``done``; a refused write is retried (the cluster is changing)."""
    client = engine.client()
    for i in range(count):
        with trio.fail_after(WAIT_S):
            while True:
                try:
                    await client.put(f"{prefix}{i}".encode(), b"v%d" % i)
                    break
                except DengineError:
                    await trio.sleep(0.05)
        done.append(i)


async def test_a_joining_node_becomes_a_learner_catches_up_by_snapshot_and_is_promoted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dengine_trio")
    configs = write_configs(
        tmp_path,
        extra={
            "raft.snapshot.max_log_entries_before_snapshot": 50,
            "raft.snapshot.retained_log_entries": 10,
        },
    )
    nodes = {c.cluster.node_id: EngineHandle(c) for c in configs}
    async with bounded_nursery() as nursery:
        for node in nodes.values():
            await node.start(nursery)
        leader = await agreed_leader(nodes)
        engine = nodes[leader].engine
        # History the newcomer can only get from a snapshot (the log is compacted past it).
        await writer(engine, "old", 200, [])
        await wait_until(lambda: engine.node_status().snapshot_index >= 100, WAIT_S)

        done: list[int] = []
        async with trio.open_nursery() as load:
            load.start_soon(writer, nodes[next(n for n in nodes if n != leader)].engine,
                            "new", 300, done)  # fmt: skip
            joiner = EmbeddedEngine.start(joiner_config(configs, tmp_path, 4))
            async with joiner as four:
                # Not a member when it starts: it does not campaign, it asks to be added.
                assert 4 not in members(four)
                await wait_until(lambda: members(engine).get(4) is not None, WAIT_S)
                await wait_until(lambda: members(engine).get(4) is True, WAIT_S)
                assert four._runtime.snapshotter.installed >= 1
                await wait_until(lambda: members(four).get(4) is True, WAIT_S)
                assert four.node_status().role in ("follower", "leader")
                # A voter now: the others answer its reads as any member's.
                with trio.fail_after(WAIT_S):
                    while len(done) < 300:
                        await trio.sleep(0.05)
                assert await four.client().get(b"new299", ReadPolicy.LINEARIZABLE) == b"v299"
                assert await four.client().get(b"old0", ReadPolicy.LINEARIZABLE) == b"v0"
                listed = await engine.members()
                [entry] = [m for m in listed["members"] if m["id"] == 4]  # type: ignore[union-attr,index]
                assert entry["voter"] is True
        # A node that joins is expected to start empty: no wiped-directory warning for it.
        assert not [
            r for r in caplog.records if r.getMessage().startswith("node 4 started with an empty")
        ]
        nursery.cancel_scope.cancel()


async def test_a_read_replica_stays_a_learner_and_serves_reads(tmp_path: Path) -> None:
    configs = write_configs(tmp_path)
    nodes = {c.cluster.node_id: EngineHandle(c) for c in configs}
    async with bounded_nursery() as nursery:
        for node in nodes.values():
            await node.start(nursery)
        leader = await agreed_leader(nodes)
        engine = nodes[leader].engine
        await writer(engine, "k", 30, [])
        async with EmbeddedEngine.start(
            joiner_config(configs, tmp_path, 4, promote=False)
        ) as replica:
            await wait_until(lambda: members(replica).get(4) is False, WAIT_S)
            await wait_until(replica.caught_up, WAIT_S)
            assert await replica.client().get(b"k29", ReadPolicy.EVENTUAL) == b"v29"
            # Writes and linearizable reads go through the leader as from any follower.
            await replica.client().put(b"from-replica", b"1")
            assert await replica.client().get(b"from-replica", ReadPolicy.LINEARIZABLE) == b"1"
            await trio.sleep(1.0)  # many heartbeats: still a learner, never promoted
            assert members(engine).get(4) is False
            assert replica.node_status().role == "follower"
            assert not replica.is_leader()
        nursery.cancel_scope.cancel()


async def test_a_new_read_replica_is_caught_up_only_once_it_holds_what_was_committed(
    tmp_path: Path,
) -> None:
    """``caught_up`` (``/replica``'s 200, what a load balancer adds a read replica by) turns
    True for a learner that just joined only once it has applied what the cluster had
    committed: 1,200 writes, more than one AppendEntries carries (512 entries), fewer than
    the lag a caught-up node may have (1,000 entries). Watched at every turn of the loop from
    the replica's start. Before, it was True from the first leader contact (commit 0 or 1,200
    heard, 0 applied: within the lag, or after the first 512), and an eventual read of the
    last key answered absent (tests/e2e/test_membership_cli.py, once in CI)."""
    configs = write_configs(tmp_path)
    nodes = {c.cluster.node_id: EngineHandle(c) for c in configs}
    async with bounded_nursery() as nursery:
        for node in nodes.values():
            await node.start(nursery)
        leader = await agreed_leader(nodes)
        engine = nodes[leader].engine
        client = engine.client()

        async def put_range(start: int) -> None:
            for i in range(start, 1_200, 8):
                await client.put(b"r%04d" % i, b"v")

        async with trio.open_nursery() as writers:
            for start in range(8):
                writers.start_soon(put_range, start)
        committed = engine.node_status().commit_index
        async with EmbeddedEngine.start(
            joiner_config(configs, tmp_path, 4, promote=False)
        ) as replica:
            with trio.fail_after(WAIT_S):
                while not replica.caught_up():
                    await trio.sleep(0)
            applied = replica.node_status().applied_index
            assert applied >= committed, (applied, committed)
            assert await replica.client().get(b"r1199", ReadPolicy.EVENTUAL) == b"v"
        nursery.cancel_scope.cancel()


async def test_admin_requests_through_a_follower(tmp_path: Path) -> None:
    configs = write_configs(tmp_path)
    nodes = {c.cluster.node_id: EngineHandle(c) for c in configs}
    async with bounded_nursery() as nursery:
        for node in nodes.values():
            await node.start(nursery)
        leader = await agreed_leader(nodes)
        follower = next(n for n in nodes if n != leader)
        other = next(n for n in nodes if n not in (leader, follower))
        engine = nodes[follower].engine
        taken = nodes[other].config.cluster.initial_cluster[other - 1].address
        # Refusals come back from the leader with their code, status and detail.
        with pytest.raises(MembershipError) as refused:
            await engine.change_membership(ConfChange(ConfChangeKind.ADD_LEARNER, 9, taken))
        assert (refused.value.code, refused.value.status) == ("duplicate_address", 409)
        with pytest.raises(MembershipError) as refused:
            await engine.change_membership(ConfChange(ConfChangeKind.ADD_LEARNER, 9, "no-port"))
        assert (refused.value.code, refused.value.status) == ("bad_request", 400)
        with pytest.raises(MembershipError) as refused:
            await engine.change_membership(ConfChange(ConfChangeKind.PROMOTE, other))
        assert refused.value.code == "not_learner"
        with pytest.raises(MembershipError) as refused:
            await engine.transfer_leadership_to(7)
        assert refused.value.code == "unknown_member"
        # A learner nobody runs: added (forwarded), listed everywhere, then removed.
        index = await engine.change_membership(
            ConfChange(ConfChangeKind.ADD_LEARNER, 9, "127.0.0.1:1")
        )
        assert index > 0
        listed = await engine.members()
        assert {m["id"]: m["voter"] for m in listed["members"]} == {  # type: ignore[attr-defined]
            1: True, 2: True, 3: True, 9: False,
        }  # fmt: skip
        await engine.change_membership(ConfChange(ConfChangeKind.REMOVE, 9))
        await wait_until(lambda: 9 not in members(nodes[leader].engine), WAIT_S)
        # Leadership handed to a named voter, asked through another follower.
        new_leader = await engine.transfer_leadership_to(other)
        assert new_leader == other
        await wait_until(lambda: nodes[other].engine.is_leader(), WAIT_S)
        nursery.cancel_scope.cancel()


async def test_removing_a_follower_then_the_leader(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dengine_trio")
    configs = write_configs(tmp_path)
    nodes = {c.cluster.node_id: EngineHandle(c) for c in configs}
    async with bounded_nursery() as nursery:
        for node in nodes.values():
            await node.start(nursery)
        leader = await agreed_leader(nodes)
        engine = nodes[leader].engine
        await writer(engine, "a", 20, [])
        follower = next(n for n in nodes if n != leader)

        # Removing a follower: asked through the other follower (forwarded to the leader).
        other = next(n for n in nodes if n not in (leader, follower))
        index = await nodes[other].engine.change_membership(
            ConfChange(ConfChangeKind.REMOVE, follower)
        )
        assert index > 0
        assert follower not in members(engine)
        await writer(nodes[other].engine, "b", 20, [])
        # The removed node still runs: the others refuse it, with one clear line.
        await wait_until(
            lambda: any(
                f"node {follower} is not a member of cluster" in r.getMessage()
                for r in caplog.records
            ),
            WAIT_S,
        )
        with pytest.raises(MembershipError) as refused:
            await engine.change_membership(ConfChange(ConfChangeKind.REMOVE, follower))
        assert refused.value.code == "unknown_member"
        assert refused.value.status == 404

        # Removing the leader: it hands over once the change commits; writes resume.
        await engine.change_membership(ConfChange(ConfChangeKind.REMOVE, leader))
        await wait_until(lambda: nodes[other].engine.is_leader(), WAIT_S)
        await writer(nodes[other].engine, "c", 20, [])
        assert members(nodes[other].engine) == {other: True}
        # The leader removed itself appended its own removal: it says so, once.
        said = [
            r
            for r in caplog.records
            if r.getMessage().startswith(f"node {leader}: removed from cluster")
        ]
        assert len(said) == 1 and said[0].levelno == logging.WARNING
        # Neither removed node disrupts the one left: its term stays put while they run.
        term = nodes[other].engine.node_status().term
        await trio.sleep(1.5)  # three election timeouts of the removed nodes
        assert nodes[other].engine.node_status().term == term
        assert nodes[other].engine.is_leader()
        assert await nodes[other].engine.client().get(b"c19") == b"v19"
        nursery.cancel_scope.cancel()


async def test_removing_a_healthy_voter_while_another_is_down_is_refused(tmp_path: Path) -> None:
    """The strict reconfiguration check: with one follower down, removing the other would
    leave two voters of which only the leader is active, and the cluster could never commit
    again: refused ``quorum_at_risk`` (409), naming the node that is down. Removing the node
    that is down is accepted, and the two left go on committing."""
    configs = write_configs(tmp_path)
    nodes = {c.cluster.node_id: EngineHandle(c) for c in configs}
    async with bounded_nursery() as nursery:
        for node in nodes.values():
            await node.start(nursery)
        leader = await agreed_leader(nodes)
        engine = nodes[leader].engine
        await writer(engine, "a", 5, [])
        down, healthy = (n for n in sorted(nodes) if n != leader)

        async def contact() -> dict[int, tuple[object, object]]:
            """GET /members' leader view: {id: (heard_ms_ago, active)}."""
            listed = await engine.members()
            return {m["id"]: (m["heard_ms_ago"], m["active"]) for m in listed["members"]}  # type: ignore[attr-defined]

        # Every voter active once each has answered on its bound directory; a follower
        # cannot tell (None), only the leader hears from all.
        active = {n: True for n in nodes}

        async def all_active() -> bool:
            return {n: a for n, (_, a) in (await contact()).items()} == active

        with trio.fail_after(WAIT_S):
            while not await all_active():
                await trio.sleep(0.02)
        assert (await contact())[leader] == (0, True)
        view = await nodes[healthy].engine.members()
        assert {(m["heard_ms_ago"], m["active"]) for m in view["members"]} == {(None, None)}  # type: ignore[attr-defined]

        await nodes[down].stop()
        raft = engine._runtime.raft  # type: ignore[union-attr]
        silent_ms = raft.config.election_timeout_min_ms
        await wait_until(lambda: (raft._heard_ago(down) or 0) > silent_ms, WAIT_S)
        # What the refusal below is decided by, shown to the operator beforehand.
        seen = await contact()
        assert seen[down][1] is False and seen[down][0] > silent_ms  # type: ignore[operator]
        assert seen[healthy][1] is True and seen[leader] == (0, True)
        with pytest.raises(MembershipError) as refused:
            await nodes[healthy].engine.change_membership(
                ConfChange(ConfChangeKind.REMOVE, healthy)
            )
        assert (refused.value.code, refused.value.status) == ("quorum_at_risk", 409)
        assert refused.value.detail["needed"] == 2 and refused.value.detail["active"] == [leader]
        assert f"[{down}]" in refused.value.message
        assert set(members(engine)) == {1, 2, 3}
        await engine.change_membership(ConfChange(ConfChangeKind.REMOVE, down))
        assert members(engine) == {leader: True, healthy: True}
        await writer(nodes[healthy].engine, "b", 5, [])
        nursery.cancel_scope.cancel()


async def test_a_voter_back_with_a_wiped_directory_is_rebound_before_it_votes(
    tmp_path: Path,
) -> None:
    configs = write_configs(tmp_path)
    nodes = {c.cluster.node_id: EngineHandle(c) for c in configs}
    async with bounded_nursery() as nursery:
        for node in nodes.values():
            await node.start(nursery)
        leader = await agreed_leader(nodes)
        await writer(nodes[leader].engine, "k", 20, [])
        wiped, other = [n for n in nodes if n != leader]
        await wait_until(lambda: all(
            m.uuid for m in nodes[leader].engine._runtime.raft.membership.members  # type: ignore[union-attr]
        ), WAIT_S)  # fmt: skip

        # The wiped node comes back while the leader is down: the one voter left needs its
        # vote to win, and must not get it (the wiped node forgot what it voted).
        await nodes[leader].stop()
        await nodes[wiped].stop()
        shutil.rmtree(nodes[wiped].config.db_root_path())
        fresh = await nodes[wiped].start(nursery)
        sent = record_sends(fresh)
        await trio.sleep(2.0)  # several election timeouts of the node left
        assert not [m for m in sent if type(m) is RequestVoteResponse and m.granted]
        assert nodes[other].engine.leader_id() is None

        # The old leader back: the cluster binds the wiped node's new directory.
        await nodes[leader].start(nursery)
        new_uuid = fresh._runtime.uuid

        def rebound() -> bool:
            m = fresh._runtime.raft.membership  # type: ignore[union-attr]
            me = m.get(wiped)
            # Taken back as a learner bound to its new directory, then promoted.
            return me is not None and me.voter and me.uuid == new_uuid

        await wait_until(rebound, WAIT_S)
        assert await fresh.client().get(b"k19", ReadPolicy.LINEARIZABLE) == b"v19"
        # Bound again, it votes: with the leader gone the other two elect one of themselves.
        agreed = await agreed_leader(nodes)
        await nodes[agreed].stop()
        rest = [h.engine for n, h in nodes.items() if n != agreed]
        await wait_until(lambda: any(e.is_leader() for e in rest), WAIT_S)
        nursery.cancel_scope.cancel()


async def test_a_node_of_another_cluster_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dengine_trio")
    configs = write_configs(tmp_path)
    nodes = {c.cluster.node_id: EngineHandle(c) for c in configs}
    async with bounded_nursery() as nursery:
        for node in nodes.values():
            await node.start(nursery)
        leader = await agreed_leader(nodes)
        await writer(nodes[leader].engine, "k", 5, [])
        cluster_id = nodes[leader].engine._runtime.cluster_id
        assert cluster_id
        stranger = next(n for n in nodes if n != leader)
        await nodes[stranger].stop()
        # Its directory now belongs to another cluster (as if swapped with another's).
        directory = nodes[stranger].config.db_root_path()
        shutil.rmtree(directory)
        directory.mkdir()
        save_cluster_id(directory, "other-0123456789abcdef", origin="bootstrap")
        caplog.clear()
        await nodes[stranger].start(nursery)
        await wait_until(
            lambda: any(
                "'other-0123456789abcdef' is not" in r.getMessage() and r.levelno == logging.WARNING
                for r in caplog.records
            ),
            WAIT_S,
        )
        await trio.sleep(1.0)
        assert nodes[stranger].engine.node_status().last_log_index == 0
        assert nodes[stranger].engine._runtime.cluster_id == "other-0123456789abcdef"
        nursery.cancel_scope.cancel()


async def test_grow_to_five_under_writes_then_lose_two_of_the_original_three(
    tmp_path: Path,
) -> None:
    """Nodes 4 and 5 join at once (one change at a time: the second waits for the first)
    while writes flow; once both vote, two of the original three stop (the leader among
    them) and the five-node cluster still commits and reads: nothing acknowledged is lost."""
    configs = write_configs(tmp_path)
    nodes = {c.cluster.node_id: EngineHandle(c) for c in configs}
    async with bounded_nursery() as nursery:
        for node in nodes.values():
            await node.start(nursery)
        leader = await agreed_leader(nodes)
        done: list[int] = []
        async with trio.open_nursery() as load:
            # Bounded; cancelled once both joiners vote (the writes span the whole change).
            load.start_soon(writer, nodes[leader].engine, "w", 100_000, done)
            for joiner_id in (4, 5):
                nodes[joiner_id] = EngineHandle(joiner_config(configs, tmp_path, joiner_id))
                await nodes[joiner_id].start(nursery)
            engine = nodes[leader].engine
            await wait_until(
                lambda: members(engine) == {1: True, 2: True, 3: True, 4: True, 5: True}, WAIT_S
            )
            acked_when_grown = len(done)
            await wait_until(lambda: len(done) > acked_when_grown, WAIT_S)
            load.cancel_scope.cancel()
        assert done
        lost = [leader, next(n for n in (1, 2, 3) if n != leader)]
        for n in lost:
            await nodes[n].stop()
        rest = {n: h for n, h in nodes.items() if n not in lost}
        await wait_until(lambda: any(h.engine.is_leader() for h in rest.values()), WAIT_S)
        survivor = nodes[4].engine
        await writer(survivor, "after", 20, [])
        for i in (0, len(done) // 2, done[-1]):
            assert await survivor.client().get(f"w{i}".encode(), ReadPolicy.LINEARIZABLE) == (
                b"v%d" % i
            )
        assert await survivor.client().get(b"after19", ReadPolicy.LINEARIZABLE) == b"v19"
        nursery.cancel_scope.cancel()
