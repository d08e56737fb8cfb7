"""Hypothesis-generated fault schedules over the simulated cluster.

Every step of every run is checked for election safety, log matching, leader completeness,
state-machine safety and (DiskFirst) durability of committed entries; at the end the healed
cluster must make progress, eventual reads must never return a value never written, and the
puts with the linearizable and lease reads must be linearizable, key by key
(``tests/support/linearizability.py``; lease reads run with 2% clock drift).

A failing run prints its ``Schedule`` (and, for the client history, the smallest
non-linearizable window found): paste it into ``replay(...)`` below to rerun it exactly.
CI runs a bounded number of examples; ``make chaos`` runs the long campaign.
"""

from __future__ import annotations

import os
import time

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dengine_trio.raft import Durability

from .cluster import Cluster, InvariantViolation, NetworkFaults

CHAOS = os.environ.get("DENGINE_CHAOS") == "1"


@attrs.frozen
class Schedule:
    size: int
    seed: int
    # The enum's own repr (<Durability...>) is not Python; this one pastes into ``replay``.
    durability: Durability = attrs.field(repr=lambda d: f"Durability.{d.name}")
    actions: tuple[tuple[float, tuple[object, ...]], ...]  # (ms to run before, action)


def actions(size: int) -> st.SearchStrategy[tuple[object, ...]]:
    node = st.integers(1, size)
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
    )


@st.composite
def schedules(draw: st.DrawFn, max_actions: int = 12) -> Schedule:
    size = draw(st.sampled_from([3, 5]))
    steps = draw(
        st.lists(
            st.tuples(st.sampled_from([10.0, 100.0, 400.0, 1_000.0, 3_000.0]), actions(size)),
            max_size=max_actions,
        )
    )
    return Schedule(
        size=size,
        seed=draw(st.integers(0, 2**32 - 1)),
        durability=draw(st.sampled_from(list(Durability))),
        actions=tuple(steps),
    )


def replay(schedule: Schedule) -> Cluster:
    """Run one schedule and every check; raises on the first violation, with the schedule to
    paste back into ``replay`` and (for the client history) the checker's explanation."""
    try:
        return _run(schedule)
    except AssertionError as error:
        raise InvariantViolation(f"{error}\n\nReplay with:\n  replay({schedule!r})") from error


def _run(schedule: Schedule) -> Cluster:
    c = Cluster(schedule.size, seed=schedule.seed, durability=schedule.durability, drift=0.02)
    keys = ["a", "b", "c"]
    mem_first = schedule.durability is Durability.MEM_FIRST

    def client_load(duration_ms: float, count: int) -> None:
        for _ in range(count):
            at = c.now + c.rng.uniform(0, duration_ms)
            node, key = c.rng.choice(c.ids), c.rng.choice(keys)
            kind = c.rng.choice(["put", "put", "linearizable", "lease", "eventual"])
            if kind == "put" and c.rng.random() < 0.5:
                # The runtime forwards writes to the leader; the core alone rejects them on a
                # follower. Half the writes go where forwarding would take them, so enough
                # succeed (and overlap) to give the linearizability checker work.
                c.call_at(at, lambda n=node, k=key: c.put(c.leader() or n, k))
            elif kind == "put":
                c.call_at(at, lambda n=node, k=key: c.put(n, k))
            else:
                c.call_at(at, lambda n=node, k=key, p=kind: c.read(n, k, p))

    for run_ms, action in schedule.actions:
        client_load(run_ms, 8)
        c.run_for(run_ms)
        name, *args = action
        if name == "partition":
            groups: dict[int, list[int]] = {}
            for node_id, group in zip(c.ids, args[0], strict=True):  # type: ignore[call-overload]
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

    # Heal everything: the cluster must elect a leader and commit again.
    c.heal()
    for node_id in c.ids:
        c.restart(node_id)
    for _attempt in range(5):  # a client retries: the leader may be mid-transfer
        final = c.put(c.wait_for_leader(timeout_ms=20_000), "final")
        c.run_for(500)
        if c.history[final].ok:
            break
    assert c.history[final].ok, "healed cluster did not commit a write"
    c.check_durability()
    c.check_history()
    c.check_linearizability()
    return c


@settings(
    max_examples=100,
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
        c = replay(schedule)
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
