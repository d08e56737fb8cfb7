"""Hypothesis-generated fault schedules over the simulated cluster.

Schedules mix partitions, one-way cuts, crashes and restarts, lossy networks, per-message-type
drops, holds and order-keeping stalls on chosen links (the leader's included), quick restarts
of a voter with its peers reconnecting late (at the worst moment for a lease), leadership
transfers whose TimeoutNow arrives late, and bursts of writes and lease reads around those
moments (half the reads go to a node that believes it leads, stale leaders included). A
quarter of the schedules run with CheckQuorum off, a quarter with PreVote off.

Most schedules run with snapshots at a low threshold (10 to 50 entries, some entries retained
or none), and some actions aim at them: a follower cut off or down across several compactions
that comes back needing a snapshot, with its InstallSnapshot dropped, held, duplicated, the
follower crashed at any phase of the install, or the leader changed or restarted while the
install is in flight; a snapshot taken now with the node crashed, restarted, partitioned or
(leader) transferring leadership at the moment it is written, stepped or compacted; a crash
armed for the next install anywhere.

Every step of every run is checked for election safety, log matching, leader completeness,
state-machine safety, the commit-index bounds (never past the log, never past what a follower
shares with its leader), CheckQuorum (a leader has heard from a majority within an election
timeout) and (DiskFirst) durability of committed entries; at the end the healed
cluster must make progress, eventual reads must never return a value never written, and the
puts with the linearizable and lease reads must be linearizable, key by key
(``tests/support/linearizability.py``; lease reads run with 2% clock drift).

A failing run prints its ``Schedule`` (and, for the client history, the smallest
non-linearizable window found): paste it into ``replay(...)`` below to rerun it exactly.
CI runs a bounded number of examples (300, or ``DENGINE_SIM_CI_EXAMPLES``); ``make chaos``
runs the long campaign (10,000, or ``DENGINE_SIM_EXAMPLES``), which prints at which schedule
it first found a violation, if any.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, cast

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dengine_trio.raft import MESSAGE_TYPES, Durability, Role
from dengine_trio.raft.membership import ConfChange, ConfChangeKind
from dengine_trio.raft.messages import InstallSnapshot, RequestVote, TimeoutNow

from .cluster import Cluster, InvariantViolation, LinkRule, NetworkFaults, SimNode

CHAOS = os.environ.get("DENGINE_CHAOS") == "1"
TYPES = {cls.__name__: cls for cls in MESSAGE_TYPES}
"""Message types by name: a per-type rule in a schedule names its type, so it pastes."""


@attrs.frozen
class Schedule:
    size: int
    seed: int
    # The enum's own repr (<Durability...>) is not Python; this one pastes into ``replay``.
    durability: Durability = attrs.field(repr=lambda d: f"Durability.{d.name}")
    actions: tuple[tuple[float, tuple[object, ...]], ...]  # (ms to run before, action)
    # Raft options off the defaults, e.g. (("check_quorum", False),): without CheckQuorum
    # voters are not sticky and a lease promises nothing; without PreVote a campaign raises
    # terms at once, so a stale answer can raise a sticky voter's term.
    options: tuple[tuple[str, bool], ...] = ()
    # (snapshot_threshold, snapshot_retained) of the simulated runtime; (0, 0): no snapshots.
    snapshots: tuple[int, int] = (0, 0)
    # The nodes' bootstrap cluster id; "" keeps the implicit membership (no membership
    # actions then: they are skipped), as every schedule before issue 14 ran.
    cluster_id: str = ""


SNAPSHOT_SETTINGS = [(0, 0), (10, 0), (10, 3), (25, 5), (50, 10)]
INSTALL_MOMENTS = [
    "install-staged",
    "install-start",
    "install-renamed",
    "install-reset",
    "install-done",
]
SNAPSHOT_MOMENTS = ["snapshot-written", "snapshot-taken", "snapshot-compacted"]
MEMBER_OPS = ["add", "add", "promote", "remove", "remove-leader", "replace", "readd", "bind"]
MAX_NODES = 7
"""Node processes a schedule may have, added ones included (bounds a schedule's cost)."""
RACE_TYPES = [
    "AppendEntries",
    "AppendEntriesResponse",
    "Heartbeat",
    "HeartbeatResponse",
    "InstallSnapshot",
    "RequestVote",
    "RequestVoteResponse",
    "TimeoutNow",
]


def actions(size: int) -> st.SearchStrategy[tuple[object, ...]]:
    node = st.integers(1, size)
    # A link end: a node, 0 for any node, -1 for whoever leads when the action runs (the
    # interesting links are the leader's, and the leader is not known when drawing).
    end = st.integers(-1, size)
    return st.one_of(
        st.tuples(st.just("partition"), st.lists(st.integers(0, 2), min_size=size, max_size=size)),
        st.tuples(st.just("cut"), node, node),
        st.tuples(st.just("heal")),
        st.tuples(st.just("crash"), node),
        st.tuples(st.just("restart"), node),
        st.tuples(
            st.just("net"),
            st.sampled_from([0.0, 0.05, 0.2]),
            st.sampled_from([0.0, 0.1]),
            st.sampled_from([2.0, 30.0, 300.0]),
        ),
        st.tuples(st.just("transfer"), st.integers(0, size)),
        st.tuples(st.just("clients"), st.integers(1, 30)),
        # Per message type on one link: drop, hold until released (a message that arrives
        # long after its moment: a late TimeoutNow, a stale ReadIndexResponse), or stall
        # with the order kept.
        st.tuples(
            st.just("rule"),
            st.sampled_from(["drop", "hold", "delay"]),
            end,
            end,
            # InstallSnapshot twice more: the one type that exists only with snapshots on.
            st.sampled_from(["*", *TYPES, "InstallSnapshot", "InstallSnapshot"]),
            st.sampled_from([20.0, 300.0, 700.0]),
        ),
        st.tuples(st.just("release")),
        # Both directions of a path stall, order kept (A to B d ms, B to A d + 60 ms).
        st.tuples(st.just("stall-path"), end, end, st.sampled_from([250.0, 700.0])),
        # A process restart with the disk intact, 0-350 ms down, its peers reconnecting after
        # a backoff: now, or timed to end just before some node's next campaign, or a lease
        # voter's worst moment (the leader's links to some follower C just cut, the
        # voter back just before C's campaign), with clients busy around that campaign.
        st.tuples(
            st.just("bounce"),
            st.sampled_from(["now", "before-campaign", "lease-voter"]),
            end,
            st.sampled_from([0.0, 100.0, 300.0, 350.0]),
            st.sampled_from([0.0, 500.0, 1_000.0]),
        ),
        # A transfer whose TimeoutNow is held for a while (past the transfer's deadline, say),
        # with lease and ReadIndex reads in flight at the leader and elsewhere, and clients
        # busy when the late TimeoutNow lands.
        # The TimeoutNow either held alone, or stuck in a path to the target that stalls
        # both ways (leader to target d ms, back d + 60 ms, order kept).
        st.tuples(
            st.just("transfer-late"),
            st.integers(0, size),
            st.sampled_from(["hold", "stall-path"]),
            st.sampled_from([300.0, 650.0, 1_000.0]),
        ),
        st.tuples(st.just("reads"), st.integers(1, 20)),
        # A leader split from one follower C while the others keep acknowledging its rounds;
        # just before C's campaign the others' answers to the leader are lost, so the leader
        # keeps its view (and its lease, if it may have one) while C campaigns among them,
        # with clients busy around that campaign.
        st.tuples(st.just("lease-split"), st.sampled_from([5.0, 50.0, 200.0])),
        # A follower F whose own campaign raises its term while its uplink stalls, then
        # follows the winner in that same term (issue 11 item 6): the leader, cut from all
        # but F, appends entries that reach only F, starts a transfer to F whose TimeoutNow
        # lands ``late`` ms later, and stops; once another node wins, its next write reaches
        # one other node only, F's stalled answers are let through ``release`` ms later, and
        # a partition then lets F's side elect without the winner's side.
        # A voter that backs the leader's lease gets its term raised by a stale-term answer
        # (to a vote request of an earlier term arriving late) while a campaigner's vote
        # request of that same term waits on the link: with PreVote off, that voter must
        # still refuse, or the campaigner wins behind the lease.
        st.tuples(st.just("stale-term"), st.sampled_from([1.0, 20.0])),
        st.tuples(
            st.just("raised-term"),
            st.sampled_from([300.0, 480.0, 650.0]),
            st.sampled_from([2.0, 5.0, 30.0]),
        ),
        # A follower cut off (or down) across ``rounds`` compactions' worth of writes comes
        # back needing a snapshot, with a twist on the InstallSnapshot: dropped, held, the
        # network duplicating, the follower crashed at a phase of the install, the leader
        # transferring or cut off when the file lands, or snapshotting and restarting.
        st.tuples(
            st.just("lagging"),
            st.sampled_from(["cut", "crash"]),
            st.sampled_from([1, 3]),
            st.sampled_from(
                ["none", "drop", "hold", "dup", "crash-install", "leader-change", "leader-restart"]
            ),
            st.sampled_from(INSTALL_MOMENTS),
        ),
        # A snapshot taken now on one node, and at one moment of it (file renamed in,
        # SnapshotTaken stepped, disk compacted) the node crashes, restarts at once,
        # is partitioned away, or (a leader) hands leadership over: compaction racing a
        # leader change.
        st.tuples(
            st.just("snapshot-now"),
            end,
            st.sampled_from(["none", "crash", "bounce", "partition", "transfer"]),
            st.sampled_from(SNAPSHOT_MOMENTS),
        ),
        # The next install on a node (0: any) crashes at a phase; back 0-300 ms later.
        st.tuples(
            st.just("install-crash"),
            st.integers(0, size),
            st.sampled_from(INSTALL_MOMENTS),
            st.sampled_from([0.0, 100.0, 300.0]),
        ),
        *membership_actions(size),
    )


def membership_actions(size: int) -> list[st.SearchStrategy[tuple[object, ...]]]:
    """Membership changes (issue 14), each proposed at the leader of the moment (at some node
    if none leads: refused as not_leader), under whatever else the schedule does."""
    end = st.integers(-1, size)
    return [
        # One change: add a learner (a new node, started at once or late; auto-promoted or a
        # read replica), promote a learner, remove a member or the leader, replace a voter
        # (remove it, wipe it, add it back as a joining learner), re-add a removed node (its
        # old disk or wiped), or a BIND of a member's current uuid.
        st.tuples(st.just("member"), st.sampled_from(MEMBER_OPS), st.booleans()),
        # Wipe a node (-1: the leader, 0: any node) and start it again down_ms later under a
        # new uuid; its PeerIdentity reaches the others after identity_ms (a slow handshake)
        # unless one of its messages gets there first.
        st.tuples(
            st.just("wipe"),
            end,
            st.sampled_from([0.0, 50.0, 400.0]),
            st.sampled_from([1.0, 300.0, 2_000.0]),
        ),
        # A change with a fault at its worst moment, ``ms`` after the proposal: the leader
        # crashed (back 100-500 ms later), partitioned away (with or without the change's
        # target), leadership transferred, one message type held on one of the leader's links
        # (to a follower or from it) for ``ms``; or, "before-noop", the leader deposed and
        # the change proposed the moment the next leader takes office (its no-op not yet
        # committed: refused as pending).
        st.tuples(
            st.just("member-race"),
            st.sampled_from(["crash-leader", "partition", "transfer", "hold", "before-noop"]),
            st.sampled_from(MEMBER_OPS),
            st.sampled_from([0.0, 1.0, 5.0, 30.0, 300.0]),
            st.sampled_from(RACE_TYPES),
        ),
        # A follower cut off while the leader removes it: it never learns, and once the cut
        # heals it campaigns (pre-votes, or votes with PreVote off) against a cluster that
        # must ignore it; restarted too, sometimes.
        st.tuples(st.just("removed-campaign"), st.booleans()),
        # A voter wiped and back just before another node's campaign (the leader's links to
        # that candidate cut): its amnesia must not give the candidate a second vote of a
        # term; its identity reaches the leader late or at once.
        st.tuples(
            st.just("wiped-race"),
            st.sampled_from([0.0, 50.0, 200.0]),
            st.sampled_from([1.0, 500.0]),
        ),
        # The strict reconfiguration check (409 quorum_at_risk): ``down`` voters crash,
        # and ``wait`` minimum election timeouts later (either side of the check's window)
        # the leader is asked to remove another voter or itself; the crashed ones come back
        # ``back_ms`` later. The simulator's invariant (_check_strict_reconfiguration)
        # fails a removal appended while a majority of the voters left cannot be active.
        st.tuples(
            st.just("quorum-risk"),
            st.integers(1, 2),
            st.sampled_from([0.5, 1.0, 1.5, 3.0]),
            st.sampled_from(["follower", "leader"]),
            st.sampled_from([300.0, 2_000.0]),
        ),
    ]


@st.composite
def schedules(draw: st.DrawFn, max_actions: int = 12) -> Schedule:
    size = draw(st.sampled_from([3, 5]))
    steps = draw(
        st.lists(
            st.tuples(
                st.sampled_from([1.0, 10.0, 100.0, 400.0, 650.0, 1_000.0, 3_000.0]),
                actions(size),
            ),
            max_size=max_actions,
        )
    )
    return Schedule(
        size=size,
        seed=draw(st.integers(0, 2**32 - 1)),
        durability=draw(st.sampled_from(list(Durability))),
        actions=tuple(steps),
        options=tuple(
            (name, False)
            for name in ("check_quorum", "pre_vote")
            if draw(st.sampled_from([True, True, True, False])) is False
        ),
        snapshots=draw(st.sampled_from(SNAPSHOT_SETTINGS)),
        cluster_id=draw(st.sampled_from(["", "c1", "c1", "c1"])),
    )


def member_op(
    c: Cluster, op: str, promote: bool, mem_first: bool, healed: list[bool]
) -> int | None:
    """Carry out one membership ``op`` at the leader of the moment (any node if none leads:
    the core refuses it, not_leader). Returns the target node, if there was one."""
    leader = c.leader()
    at = leader or c.rng.choice(c.ids)
    raft = c.nodes[at].raft
    if raft is None:
        return None
    membership = raft.membership
    if membership.implicit:
        return None  # no cluster id in the log yet: nothing to change
    others = [n for n in membership.ids if n != at]
    learners = list(membership.learners)
    removed = [n for n in c.ids if n not in membership.ids]
    if op == "promote" and not learners:
        op = "add"
    if op == "readd" and not removed:
        op = "add"
    if op == "add" and len(c.ids) >= MAX_NODES:
        op = "readd" if removed else "bind"
    change: ConfChange
    target: int
    if op == "add":
        late = c.rng.random() < 0.3  # the node starts only after the change is proposed
        target = c.add_node(start=not late)
        change = ConfChange(ConfChangeKind.ADD_LEARNER, target, c.address(target), promote)
        c.change(at, change)
        if late:
            c.call_at(c.now + c.rng.uniform(20, 500), lambda: c.restart(target))
        return target
    if op == "readd":
        target = c.rng.choice(removed)
        if c.rng.random() < 0.5 and c.may_wipe(target):
            c.wipe(target, joining=True)
        else:
            c.add_node(target)  # its old disk, its config now a joining node's
        c.change(at, ConfChange(ConfChangeKind.ADD_LEARNER, target, c.address(target), promote))
        return target
    if op == "promote":
        target = c.rng.choice(learners)
        c.change(at, ConfChange(ConfChangeKind.PROMOTE, target))
        return target
    if op == "remove" and others:
        target = c.rng.choice(others)
        if not c.may_remove(target):
            return None
        op_id = c.change(at, ConfChange(ConfChangeKind.REMOVE, target))
        if c.rng.random() < 0.5:
            # The operator stops it some time later, once removed (or never).
            def stop() -> None:
                if c.history[op_id].ok and not healed[0]:
                    c.crash(target, lose_unflushed=not mem_first)

            c.call_at(c.now + c.rng.uniform(50, 1_000), stop)
        return target
    if op == "remove-leader" or op == "remove":
        if not c.may_remove(at):
            return None  # the voters left would be a majority of amnesiacs
        c.change(at, ConfChange(ConfChangeKind.REMOVE, at))
        return at
    if op == "replace":
        voters = [v for v in membership.voters if v != at]
        if not voters:
            return None
        target = c.rng.choice(voters)
        if not c.may_remove(target):
            return None
        done = c.change(at, ConfChange(ConfChangeKind.REMOVE, target))
        for _ in range(150):  # the operator waits for the removal (at most 1.5 s)
            if c.history[done].complete is not None:
                break
            c.run_for(10)
        if not c.may_wipe(target):
            return target  # not removed after all, and already a minority is amnesiac
        c.wipe(target, joining=True)
        new_leader = c.leader() or at
        c.change(
            new_leader, ConfChange(ConfChangeKind.ADD_LEARNER, target, c.address(target), True)
        )
        return target
    # BIND of a member's current uuid: no change but one more CONFIG entry.
    target = c.rng.choice(membership.ids)
    c.change(at, ConfChange(ConfChangeKind.BIND, uuids=((target, c.nodes[target].uuid),)))
    return target


def member_race(
    c: Cluster,
    twist: str,
    op: str,
    ms: float,
    type_name: str,
    mem_first: bool,
    healed: list[bool],
) -> None:
    """A membership change with a fault at its worst moment (see ``membership_actions``)."""
    leader = c.leader()
    if leader is None:
        return
    if twist == "before-noop":
        # Depose the leader; the moment another node takes office, propose the change there.
        def on_leader(moment: str, node: SimNode) -> bool:
            if healed[0]:
                return True
            if moment != "became-leader" or node.id == leader:
                return False
            c.call_at(c.now, lambda: member_op(c, op, True, mem_first, healed))
            return True

        c.hooks.append(on_leader)
        if c.rng.random() < 0.5:
            c.transfer(leader, 0)
        else:
            c.bounce(leader, c.rng.uniform(100, 600), lose_unflushed=not mem_first)
        return
    follower = c.rng.choice([n for n in c.ids if n != leader])
    types = (TYPES[type_name],)
    rule = None
    if twist == "hold":
        src, dst = (leader, follower) if c.rng.random() < 0.5 else (follower, leader)
        rule = c.hold(src, dst, *types)
    target = member_op(c, op, True, mem_first, healed)

    def fault() -> None:
        if healed[0]:
            return
        current = c.leader()
        if twist == "crash-leader" and current is not None:
            c.bounce(current, c.rng.uniform(100, 500), lose_unflushed=not mem_first)
        elif twist == "partition" and current is not None:
            side = [current] + ([target] if target and c.rng.random() < 0.5 else [])
            c.partition(side, [n for n in c.ids if n not in side])
        elif twist == "transfer" and current is not None:
            c.transfer(current, c.rng.choice([0, follower]))
        elif twist == "hold" and rule is not None:
            c.release(rule.src, rule.dst, *types)

    c.call_at(c.now + ms, fault)


def removed_campaign(c: Cluster, restart: bool, mem_first: bool) -> None:
    """Cut a follower off, remove it, let the removal commit without it, heal: it campaigns."""
    leader = c.leader()
    if leader is None:
        return
    membership = c.raft(leader).membership
    if membership.implicit:
        return
    followers = [v for v in membership.ids if v != leader and c.nodes[v].raft is not None]
    if not followers:
        return
    f = c.rng.choice(followers)
    if not c.may_remove(f):
        return
    c.partition([f], [n for n in c.ids if n != f])
    op = c.change(leader, ConfChange(ConfChangeKind.REMOVE, f))
    for _ in range(100):
        if c.history[op].complete is not None:
            break
        c.run_for(10)
    if restart:
        c.bounce(f, 50.0, lose_unflushed=not mem_first)
    c.cut = set()  # the removed node is heard again: its campaigns reach everyone
    c.run_for(c.config_for(f).election_timeout_max_ms * 2)


def quorum_risk(
    c: Cluster,
    down: int,
    wait: float,
    whom: str,
    back_ms: float,
    mem_first: bool,
    healed: list[bool],
) -> None:
    """Crash ``down`` voters (not the leader), wait ``wait`` minimum election timeouts, then
    ask the leader to remove ``whom`` ("follower": another voter, if one is left; "leader":
    itself); the crashed voters restart ``back_ms`` later."""
    leader = c.leader()
    if leader is None:
        return
    raft = c.raft(leader)
    membership = raft.membership
    if membership.implicit:
        return
    followers = [v for v in membership.voters if v != leader and c.nodes[v].raft is not None]
    c.rng.shuffle(followers)
    crashed, others = followers[:down], followers[down:]
    for v in crashed:
        c.crash(v, lose_unflushed=not mem_first)
    c.run_for(wait * raft.config.election_timeout_min_ms)
    at = c.leader()
    target = at if whom == "leader" else (c.rng.choice(others) if others else None)
    if at is not None and target is not None and c.may_remove(target):
        c.change(at, ConfChange(ConfChangeKind.REMOVE, target))

    def back() -> None:
        if not healed[0]:
            for v in crashed:
                c.restart(v)

    c.call_at(c.now + back_ms, back)


def wiped_race(c: Cluster, down: float, identity_ms: float) -> None:
    """A voter W wiped and back just before candidate C's campaign, the leader's links to C
    cut, W's identity slow to reach the leader."""
    leader = c.leader()
    if leader is None:
        return
    voters = [v for v in c.raft(leader).membership.voters if v != leader]
    live = [v for v in voters if c.nodes[v].raft is not None]
    if len(live) < 2:
        return
    candidate, w = c.rng.sample(live, 2)
    c.cut_link(leader, candidate)
    c.cut_link(candidate, leader)
    campaign_at = c.raft(candidate).next_deadline() / c.nodes[candidate].rate
    if campaign_at == float("inf"):
        return
    delay = (identity_ms, identity_ms * 1.5)

    def wipe() -> None:
        if c.may_wipe(w):
            c.wipe(w, down_ms=down, identity_delay_ms=delay)

    c.call_at(max(c.now, campaign_at - down - 5), wipe)


def replay(schedule: Schedule) -> Cluster:
    """Run one schedule and every check; raises on the first violation, with the schedule to
    paste back into ``replay`` and (for the client history) the checker's explanation."""
    try:
        return _run(schedule)
    except AssertionError as error:
        raise InvariantViolation(f"{error}\n\nReplay with:\n  replay({schedule!r})") from error


def _run(schedule: Schedule) -> Cluster:
    c = Cluster(
        schedule.size,
        seed=schedule.seed,
        durability=schedule.durability,
        drift=0.02,
        snapshot_threshold=schedule.snapshots[0],
        snapshot_retained=schedule.snapshots[1],
        cluster_id=schedule.cluster_id,
        **dict[str, Any](schedule.options),
    )
    keys = ["a", "b", "c"]
    mem_first = schedule.durability is Durability.MEM_FIRST

    def leaders() -> list[int]:
        """Every node that believes it leads (a deposed leader may not know yet)."""
        return [n for n, sn in c.nodes.items() if sn.raft is not None and sn.raft.is_leader]

    def read_at_some_leader(node: int, key: str, policy: str) -> None:
        # Half the reads go to a node that believes it leads: a stale leader serving from
        # its lease is exactly what a lease bug looks like.
        believers = leaders()
        if believers and c.rng.random() < 0.5:
            node = c.rng.choice(believers)
        c.read(node, key, policy)

    def client_load(
        duration_ms: float, count: int, kinds: tuple[str, ...] = (), start: float | None = None
    ) -> None:
        """``count`` operations at random moments of the next ``duration_ms`` (from ``start``).
        A burst of a given kind (``kinds``) works on one key, so that its reads and writes
        overlap and a stale read has a newer write to be caught by."""
        burst_key = c.rng.choice(keys) if kinds else None
        for _ in range(count):
            at = (c.now if start is None else start) + c.rng.uniform(0, duration_ms)
            node, key = c.rng.choice(c.ids), burst_key or c.rng.choice(keys)
            kind = c.rng.choice(kinds or ("put", "put", "linearizable", "lease", "eventual"))
            if kind == "put" and c.rng.random() < 0.5:
                # The runtime forwards writes to the leader; the core alone rejects them on a
                # follower. Half the writes go where forwarding would take them, so enough
                # succeed (and overlap) to give the linearizability checker work.
                c.call_at(at, lambda n=node, k=key: c.put(c.leader() or n, k))
            elif kind == "put":
                c.call_at(at, lambda n=node, k=key: c.put(n, k))
            else:
                c.call_at(at, lambda n=node, k=key, p=kind: read_at_some_leader(n, k, p))

    healed = [False]  # the final heal happened: scheduled faults no longer fire

    def resolve(end: int) -> int:
        if end == -1:
            return c.leader() or 0
        return end

    def once(moment: str, node_id: int, act: Callable[[SimNode], None]) -> None:
        """Run ``act(node)`` the first time ``node_id`` (0: any node) reaches ``moment`` of
        the snapshot machinery, unless the final heal came first."""

        def hook(at: str, node: SimNode) -> bool:
            if healed[0]:
                return True
            if at != moment or node_id not in (0, node.id):
                return False
            c._count(f"at-{moment}")  # the campaign's summary shows what was hit
            act(node)
            return True

        c.hooks.append(hook)

    def crash_and_return(down_ms: float) -> Callable[[SimNode], None]:
        def act(node: SimNode) -> None:
            c.bounce(node.id, down_ms, lose_unflushed=not mem_first)

        return act

    for run_ms, action in schedule.actions:
        client_load(run_ms, 8)
        c.run_for(run_ms)
        name, *args = action
        if name == "partition":
            groups: dict[int, list[int]] = {}
            # Nodes added by membership actions join a group drawn at run time.
            drawn = [*args[0], *(c.rng.randint(0, 2) for _ in c.ids[schedule.size :])]  # type: ignore[misc]
            for node_id, group in zip(c.ids, drawn, strict=True):
                groups.setdefault(group, []).append(node_id)
            c.partition(*groups.values())
        elif name == "cut" and args[0] != args[1]:
            c.cut_link(args[0], args[1])  # type: ignore[arg-type]
        elif name == "heal":
            c.heal()
        elif name == "crash":
            # MemFirst acknowledges before fsync by design: a crash there may lose acknowledged
            # writes (docs/durability.md), so its schedules stop nodes gracefully.
            c.crash(args[0], lose_unflushed=not mem_first)  # type: ignore[arg-type]
        elif name == "restart":
            c.restart(args[0])  # type: ignore[arg-type]
        elif name == "net":
            drop, dup, delay_max = args
            c.set_faults(NetworkFaults(drop, dup, 0.2, delay_max))  # type: ignore[arg-type]
        elif name == "transfer":
            leader = c.leader()
            if leader is not None:
                c.transfer(leader, args[0])  # type: ignore[arg-type]
        elif name == "clients":
            client_load(200, args[0])  # type: ignore[arg-type]
        elif name == "rule":
            verb, src, dst, type_name, delay = args
            types = () if type_name == "*" else (TYPES[type_name],)  # type: ignore[index]
            c.add_rule(
                LinkRule(verb, resolve(src), resolve(dst), types, delay_ms=delay)  # type: ignore[arg-type]
            )
        elif name == "release":
            c.release()
        elif name == "stall-path":
            a, b = resolve(args[0]), resolve(args[1])  # type: ignore[arg-type]
            if a and b and a != b:
                c.stall(a, b, args[2])  # type: ignore[arg-type]
                c.stall(b, a, args[2] + 60)  # type: ignore[operator]
        elif name == "bounce":
            when, target, down, reconnect = args
            target = resolve(target)  # type: ignore[arg-type]
            at = c.now
            leader = c.leader()
            slow: tuple[int, ...] = ()  # whose reconnection backs off (default: everyone's)
            if when == "lease-voter" and leader is not None:
                followers = [n for n in c.ids if n != leader and c.nodes[n].raft is not None]
                if len(followers) >= 2:
                    candidate, target = c.rng.sample(followers, 2)
                    c.cut_link(leader, candidate)
                    c.cut_link(candidate, leader)
                    slow = (leader,)  # the leader's backoff has grown while the voter was down
                    when = "before-campaign"
            if when == "before-campaign":
                # The next campaign: the earliest election deadline among live non-leaders.
                waiting = [
                    (sn.raft.next_deadline() / sn.rate, n)
                    for n, sn in c.nodes.items()
                    if sn.raft is not None and not sn.raft.is_leader and n != target
                ]
                if waiting and min(waiting)[0] != float("inf"):
                    campaign_at = min(waiting)[0]
                    at = max(c.now, campaign_at - down - 20)  # type: ignore[operator]
                    client_load(100, 30, ("put", "lease", "lease"), campaign_at)
            if target and (when == "now" or target != c.leader()):

                def bounce(
                    n: int = target,
                    d: float = down,  # type: ignore[assignment]
                    r: float = reconnect,  # type: ignore[assignment]
                    f: tuple[int, ...] = slow,
                ) -> None:
                    c.bounce(n, d, lose_unflushed=not mem_first, reconnect_ms=r, reconnect_from=f)

                c.call_at(at, bounce)
        elif name == "transfer-late":
            target, how, late_ms = args
            leader = c.leader()
            if leader is not None:
                if how == "hold":
                    c.hold(leader, 0, TimeoutNow)
                elif target not in (0, leader):
                    c.stall(leader, target, late_ms)  # type: ignore[arg-type]
                    c.stall(target, leader, late_ms + 60)  # type: ignore[arg-type, operator]
                client_load(50, 6, ("lease", "linearizable"))
                c.transfer(leader, target)  # type: ignore[arg-type]
                client_load(50, 6, ("lease", "linearizable"))
                lands_at = c.now + late_ms  # type: ignore[operator]
                if how == "hold":
                    c.call_at(lands_at, lambda n=leader: c.release(n, 0, TimeoutNow))
                client_load(100, 30, ("put", "lease", "lease"), lands_at)
        elif name == "lease-split":
            leader = c.leader()
            followers = [n for n in c.ids if n != leader and c.nodes[n].raft is not None]
            if leader is not None and followers:
                cut_off = c.rng.choice(followers)
                c.cut_link(leader, cut_off)
                c.cut_link(cut_off, leader)
                campaign_at = c.nodes[cut_off].raft.next_deadline() / c.nodes[cut_off].rate  # type: ignore[union-attr]
                if campaign_at != float("inf"):

                    def mute(leader: int = leader, cut_off: int = cut_off) -> None:
                        if healed[0]:
                            return
                        for n in c.ids:
                            if n not in (leader, cut_off):
                                c.cut_link(n, leader)

                    c.call_at(max(c.now, campaign_at - args[0]), mute)  # type: ignore[operator]
                    client_load(100, 30, ("put", "lease", "lease"), campaign_at)
        elif name == "stale-term":
            leader = c.leader()
            followers = [n for n in c.ids if n != leader and c.nodes[n].raft is not None]
            if leader is not None and len(followers) >= 2:
                voter, campaigner = c.rng.sample(followers, 2)
                c.cut_link(leader, campaigner)
                c.cut_link(campaigner, leader)
                c.hold(campaigner, voter, RequestVote)
                for _ in range(1_500):
                    cr = c.nodes[campaigner].raft
                    if cr is None or cr.role is Role.CANDIDATE:
                        break
                    c.run_for(1)
                cr = c.nodes[campaigner].raft
                vr = c.nodes[voter].raft
                if cr is not None and vr is not None and cr.role is Role.CANDIDATE:
                    c.cut_link(voter, leader)  # the leader does not learn of the new term
                    # A vote request of the voter's from an earlier term arrives late; the
                    # campaigner's answer carries its raised term.
                    term = vr.term
                    c.inject(RequestVote(max(0, term - 1), voter, campaigner, 0, 0))
                    for _ in range(50):
                        if c.nodes[voter].raft is None or c.raft(voter).term > term:
                            break
                        c.run_for(1)
                    c.run_for(args[0])  # type: ignore[arg-type]
                    c.release(campaigner, voter, RequestVote)
                    client_load(100, 30, ("put", "lease", "lease"))
                    c.run_for(150)  # played out before the next action can heal it away
                else:
                    c.release(campaigner, voter, RequestVote)
        elif name == "raised-term":
            # Played out here and now (not scheduled): the next action's heal or partition
            # must not cut it short.
            late, release_ms = cast(tuple[float, float], tuple(args))
            old = c.leader()
            followers = [n for n in c.ids if n != old and c.nodes[n].raft is not None]
            if old is not None and len(followers) >= 2:
                f = c.rng.choice(followers)
                for n in followers:
                    if n != f:
                        c.cut_link(old, n)
                        c.cut_link(n, old)
                key = c.rng.choice(keys)
                for _ in range(c.rng.randint(1, 3)):
                    c.put(old, key)
                c.run_for(80)  # they reach F only
                c.hold(old, f, TimeoutNow)
                c.transfer(old, f)
                c.run_for(1)
                c.crash(old, lose_unflushed=not mem_first)
                c.hold(f, 0)  # F's uplink stalls
                c.run_for(late)
                c.release(old, f, TimeoutNow)  # F campaigns, raising its own term
                winner = None
                for _ in range(3_000):  # another node wins; F follows it in the same term
                    winner = c.leader()
                    if winner is not None and winner not in (old, f):
                        break
                    c.run_for(1)
                if winner is not None and winner not in (old, f):
                    c.run_for(3)
                    others = [m for m in c.ids if m not in (winner, old)]
                    keep = c.rng.choice([m for m in others if m != f] or others)
                    for m in others:
                        if m != keep:
                            c.cut_link(winner, m)
                    c.put(winner, key)  # reaches one other node only
                    c.run_for(release_ms)
                c.release(f, 0)  # F's stalled answers arrive
                c.run_for(5)
                c.restart(old)
                if winner is not None and winner not in (old, f):
                    c.partition([winner, keep], [m for m in c.ids if m not in (winner, keep)])
                    client_load(2_000, 20, ("put", "linearizable"))
        elif name == "reads":
            client_load(100, args[0], ("lease", "lease", "linearizable", "put"))  # type: ignore[arg-type]
        elif name == "lagging":
            how, rounds, twist, moment = cast(tuple[str, int, str, str], tuple(args))
            leader = c.leader()
            followers = [n for n in c.ids if n != leader and c.nodes[n].raft is not None]
            if leader is not None and followers:
                f = c.rng.choice(followers)
                if how == "cut":
                    c.partition([f], [n for n in c.ids if n != f])
                else:
                    c.crash(f, lose_unflushed=not mem_first)
                key = c.rng.choice(keys)
                for _ in range(rounds * max(schedule.snapshots[0], 10) + 3):
                    at = c.now + c.rng.uniform(0, 300)
                    c.call_at(at, lambda k=key, n=leader: c.put(c.leader() or n, k))
                c.run_for(320)
                now_leader = c.leader()
                if schedule.snapshots[0] and now_leader is not None:
                    c.take_snapshot(now_leader)  # compacted even if the threshold is not met
                    c.run_for(20)
                if twist == "drop":
                    c.drop(0, f, InstallSnapshot, count=c.rng.randint(1, 2))
                elif twist == "hold":  # the first one only: it lands after F has moved on
                    c.add_rule(LinkRule("hold", 0, f, (InstallSnapshot,), remaining=1))
                elif twist == "dup":
                    c.set_faults(NetworkFaults(0.0, 0.5, 0.2, 30.0))
                elif twist == "crash-install":
                    once(moment, f, crash_and_return(c.rng.choice([0.0, 50.0, 300.0])))
                elif twist == "leader-change":

                    def change(node: SimNode) -> None:
                        current = c.leader()
                        if current is None:
                            return
                        if c.rng.random() < 0.5:
                            c.transfer(current, c.rng.choice([0, node.id]))
                        else:
                            c.partition([current], [n for n in c.ids if n != current])

                    once(moment, f, change)
                elif twist == "leader-restart" and now_leader is not None:
                    moment = c.rng.choice(SNAPSHOT_MOMENTS)
                    once(moment, now_leader, crash_and_return(c.rng.choice([0.0, 100.0])))
                    c.take_snapshot(now_leader)
                if how == "cut":
                    c.cut = set()
                else:
                    c.restart(f)
                client_load(300, 20)
                c.run_for(300)
                if twist == "hold":
                    current = c.leader()
                    if current is not None:
                        for _ in range(max(schedule.snapshots[0], 5)):
                            c.put(current, key)
                        c.run_for(30)
                        c.take_snapshot(current)
                        c.run_for(30)
                    c.release(0, f, InstallSnapshot)  # an older snapshot than F's state
                    c.run_for(50)
                clean = (
                    not c.cut
                    and all(r.remaining == 0 for r in c.rules)
                    and c.faults == NetworkFaults()
                    and all(n.raft is not None for n in c.nodes.values())
                )
                if clean:  # nothing in the way: F must catch up now, not only after the heal
                    c.wait_converged(5_000)
        elif name == "snapshot-now":
            target, then, moment = cast(tuple[int, str, str], tuple(args))
            target = resolve(target)
            if target and c.nodes[target].raft is not None:
                if then == "crash":
                    once(
                        moment, target, lambda node: c.crash(node.id, lose_unflushed=not mem_first)
                    )
                elif then == "bounce":
                    once(moment, target, crash_and_return(c.rng.choice([0.0, 100.0, 300.0])))
                elif then == "partition":
                    once(
                        moment,
                        target,
                        lambda node: c.partition([node.id], [n for n in c.ids if n != node.id]),
                    )
                elif then == "transfer":

                    def hand_over(node: SimNode) -> None:
                        if node.raft is not None and node.raft.is_leader:
                            c.transfer(node.id, 0)

                    once(moment, target, hand_over)
                c.take_snapshot(target)
                client_load(100, 10)
        elif name == "install-crash":
            target, moment, down = cast(tuple[int, str, float], tuple(args))
            once(moment, target, crash_and_return(down))
        elif not schedule.cluster_id:
            continue  # membership actions need an explicit membership
        elif name == "member":
            op, promote = cast(tuple[str, bool], tuple(args))
            member_op(c, op, promote, mem_first, healed)
        elif name == "wipe":
            target, down, identity_ms = cast(tuple[int, float, float], tuple(args))
            target = resolve(target) if target else c.rng.choice(c.ids)
            if target and c.may_wipe(target):
                c.wipe(target, down_ms=down, identity_delay_ms=(identity_ms, identity_ms * 1.5))
        elif name == "member-race":
            member_race(c, *cast(tuple[str, str, float, str], tuple(args)), mem_first, healed)
            client_load(300, 10)
        elif name == "removed-campaign":
            removed_campaign(c, cast(bool, args[0]), mem_first)
        elif name == "quorum-risk":
            down, wait, whom, back = cast(tuple[int, float, str, float], tuple(args))
            quorum_risk(c, down, wait, whom, back, mem_first, healed)
            client_load(100, 10)
        elif name == "wiped-race":
            down, identity_ms = cast(tuple[float, float], tuple(args))
            wiped_race(c, down, identity_ms)
            client_load(200, 20, ("put", "linearizable", "lease"))

    # Heal everything: the cluster must elect a leader and commit again. Faults an action
    # scheduled for later are off from here on.
    healed[0] = True
    c.heal()
    for node_id in c.ids:
        c.restart(node_id)
    for _attempt in range(5):  # a client retries: the leader may be mid-transfer
        final = c.put(c.wait_for_leader(timeout_ms=20_000), "final")
        c.run_for(500)
        if c.history[final].ok:
            break
    assert c.history[final].ok, "healed cluster did not commit a write"
    c.wait_converged()  # every node catches up, by log or by snapshot
    c.check_durability()
    c.check_history()
    c.check_linearizability()
    return c


@settings(
    max_examples=int(os.environ.get("DENGINE_SIM_CI_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
@given(schedules())
def test_fault_schedules_keep_raft_safe(schedule: Schedule) -> None:
    replay(schedule)


@pytest.mark.chaos
@pytest.mark.skipif(not CHAOS, reason="long campaign: run with make chaos")
def test_long_simulator_campaign() -> None:
    """The long campaign: thousands of schedules; prints what it ran."""
    budget = int(os.environ.get("DENGINE_SIM_EXAMPLES", "10000"))
    stats = {"schedules": 0, "steps": 0, "ops": 0, "checked": 0, "inconclusive": 0}
    faults: dict[str, int] = {}

    @settings(
        max_examples=budget,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
        database=None,
    )
    @given(schedules(max_actions=25))
    def campaign(schedule: Schedule) -> None:
        try:
            c = replay(schedule)
        except AssertionError:
            if "first_failure" not in stats:  # before hypothesis starts shrinking
                stats["first_failure"] = stats["schedules"] + 1
                print(f"\nfirst violation at schedule {stats['first_failure']}")
            raise
        stats["schedules"] += 1
        stats["steps"] += c.steps
        stats["ops"] += len(c.history)
        stats["checked"] += len(c.client_history())
        assert c.linearizability is not None
        stats["inconclusive"] += c.linearizability.inconclusive
        for kind, count in c.faults_injected.items():
            faults[kind] = faults.get(kind, 0) + count

    started = time.monotonic()
    campaign()
    elapsed = time.monotonic() - started
    print(
        f"\nsimulator campaign: {stats['schedules']} schedules, {stats['steps']} steps, "
        f"{stats['ops']} client operations ({stats['checked']} through the linearizability "
        f"checker, {stats['inconclusive']} schedules inconclusive), faults {faults}, "
        f"{elapsed:.0f} s, 0 violations"
    )


def test_a_stale_read_fails_the_linearizability_check() -> None:
    """The client history reaches the checker: a read served from a cut-off follower's own
    state (what an eventual read does), passed off as linearizable, is caught."""
    c = Cluster(3, seed=11)
    leader = c.wait_for_leader()
    loner = next(n for n in c.ids if n != leader)
    c.partition([loner], [n for n in c.ids if n != loner])
    written = c.put(leader, "a")
    c.run_for(100)
    assert c.history[written].ok
    stale = c.read(loner, "a", "eventual")
    assert c.history[stale].value is None
    c.check_linearizability()  # eventual reads are not held to linearizability
    c.history[stale].kind = "read-linearizable"
    with pytest.raises(InvariantViolation, match="key a is not linearizable") as caught:
        c.check_linearizability()
    assert "get a -> absent" in str(caught.value)
