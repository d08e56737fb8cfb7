"""Each claim of docs/durability.md "What one power cut, kill or partition loses", tested.

Issue 11 item 9: the MemFirst loss window is wider than "a majority of machine crashes within
the flush interval". A write acknowledged by a bare majority from memory (leader L and
follower F; the third node G has not received it yet) is held in memory by two nodes only; a
power cut of F before its flush leaves it on L alone, and if L is then merely partitioned away
or its process killed, F and G elect a leader without it.

Vocabulary, as in the simulator (``tests/sim/cluster.py``):
- power cut: ``crash(n)`` (``lose_unflushed=True``): the node loses what it had not flushed;
- process kill: ``crash(n, lose_unflushed=False)``: under the real runtime every append is
  ``os.write``-n before it is acknowledged, so the page cache keeps it across a process kill
  and recovery reads it back (``docs/durability.md``, "Processes killed");
- partition: ``partition(...)``, both ways.
The flush window is the simulated disk latency, 15-25 ms (``interval_ms`` 20 plus an fsync);
every fault below strikes within it unless a test says otherwise.

"Lost" means the simulator elected a leader that lacks the acknowledged entry: its
leader-completeness check fires. That leader appends its own entry at that index and
overwrites the write everywhere. "Kept" means no check fires, and after healing every node
applied the acknowledged value and the history is linearizable.

Each test name and docstring names its row of the table in docs/durability.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from dengine_trio.raft import Durability, Entry
from dengine_trio.raft.messages import AppendEntries

from .cluster import Cluster, InvariantViolation

MEM, DISK = Durability.MEM_FIRST, Durability.DISK_FIRST
FLUSH_WINDOW_MS = (15.0, 25.0)
SEEDS = range(10)
ROLES = ("leader", "follower", "lagging")


@dataclass
class Acked:
    """A cluster just after one write was acknowledged, and who is who."""

    c: Cluster
    leader: int
    follower: int  # acknowledged it
    lagging: int  # has not received it (when ``lagging`` was asked for)
    op: int
    entry: Entry

    def in_memory(self, node: int) -> bool:
        raft = self.c.nodes[node].raft
        index = self.entry.index
        return (
            raft is not None
            and raft.log.last_index >= index
            and raft.log.entry(index) == self.entry
        )

    def named(self, role: str) -> int:
        """The node playing ``role`` (one of ``ROLES``)."""
        return {"leader": self.leader, "follower": self.follower, "lagging": self.lagging}[role]

    def on_disk(self, node: int) -> bool:
        disk = self.c.nodes[node].disk_log
        return len(disk) >= self.entry.index and disk[self.entry.index - 1] == self.entry


def acknowledge(durability: Durability, seed: int, *, lagging: bool = True) -> Acked:
    """Three nodes; one put through the leader, acknowledged. With ``lagging`` the third node
    gets none of the leader's AppendEntries from then on (a slow or distant node): the write
    is acknowledged by a bare majority, the leader and one follower."""
    c = Cluster(3, seed=seed, durability=durability, disk_latency_ms=FLUSH_WINDOW_MS)
    leader = c.wait_for_leader()
    c.run_for(200)  # everything so far flushed everywhere
    follower, other = (n for n in c.ids if n != leader)
    if lagging:
        c.hold(leader, other, AppendEntries)
    op = c.put(leader, "k")
    for _ in range(400):
        if c.history[op].ok is not None:
            break
        c.run_for(0.25)
    assert c.history[op].ok, "the write was acknowledged"
    raft = c.raft(leader)
    entry = raft.log.entry(raft.log.last_index)
    acked = Acked(c, leader, follower, other, op, entry)
    # The schedule is what its name says.
    if lagging:
        # Held in memory by the leader and the follower; on the follower's disk only under
        # DiskFirst; the lagging node does not have it at all.
        assert acked.in_memory(leader) and acked.in_memory(follower)
        assert acked.on_disk(follower) == (durability is DISK)
        assert not acked.in_memory(other)
    else:
        # Every node holds it in memory (the one that was not needed receives it a moment
        # later); on a disk besides the leader's only under DiskFirst.
        for _ in range(40):
            if all(acked.in_memory(n) for n in c.ids):
                break
            c.run_for(0.25)
        assert all(acked.in_memory(n) for n in c.ids)
        assert any(acked.on_disk(n) for n in (follower, other)) == (durability is DISK)
    return acked


def power_cut(c: Cluster, node: int, down_ms: float) -> None:
    c.crash(node)  # loses what it had not flushed
    c.call_at(c.now + down_ms, lambda: c.restart(node))


def kill(c: Cluster, node: int, down_ms: float) -> None:
    c.crash(node, lose_unflushed=False)  # the page cache keeps every os.write
    c.call_at(c.now + down_ms, lambda: c.restart(node))


def isolate(c: Cluster, node: int) -> None:
    c.partition([node], [n for n in c.ids if n != node])  # both ways


def unavailable(c: Cluster, node: int, how: str, down_ms: float) -> None:
    """``how`` "partition": ``isolate`` it; "kill": a process kill, restarted after
    ``down_ms``."""
    if how == "partition":
        isolate(c, node)
    else:
        kill(c, node, down_ms=down_ms)


def kept(a: Acked, settle_ms: float = 3_000) -> None:
    """Run on, heal, restart whoever is down; the acknowledged write is everywhere."""
    c = a.c
    c.run_for(settle_ms)
    c.heal()
    for node in c.ids:
        c.restart(node)
    c.run_for(3_000)
    value = c.history[a.op].value
    assert all(c.nodes[n].state.get("k") == value for n in c.ids), "every node applied it"
    c.check_history()
    c.check_linearizability()


def lost(a: Acked, settle_ms: float = 3_000) -> None:
    """Run on: a leader without the acknowledged write is elected (leader completeness)."""
    with pytest.raises(InvariantViolation, match="lacks committed entries") as raised:
        a.c.run_for(settle_ms)
    leader = a.c.leader()
    assert leader is not None and not a.in_memory(leader), raised.value


Schedule = Callable[[Acked], None]


def outcome(durability: Durability, seed: int, schedule: Schedule, *, lagging: bool) -> bool:
    """True if the acknowledged write was lost under ``schedule``, False if it was kept."""
    a = acknowledge(durability, seed, lagging=lagging)
    schedule(a)
    try:
        a.c.run_for(3_000)
    except InvariantViolation as exc:
        assert "lacks committed entries" in str(exc)
        return True
    kept(a, settle_ms=0)
    return False


# ----------------------------------------------------------------------------------- rows


@pytest.mark.parametrize("durability", [MEM, DISK])
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("killed", ["all", *ROLES])
def test_row_process_kills_of_any_nodes_even_all_at_once_lose_nothing(
    durability: Durability, seed: int, killed: str
) -> None:
    """Row "process kills of any nodes, even all at once": nothing lost, either strategy."""
    a = acknowledge(durability, seed)
    a.c.run_for(2)
    for node in a.c.ids if killed == "all" else [a.named(killed)]:
        kill(a.c, node, down_ms=100)
    kept(a)


@pytest.mark.parametrize("durability", [MEM, DISK])
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("isolated", ["leader", "follower", "lagging"])
def test_row_a_partition_alone_loses_nothing(
    durability: Durability, seed: int, isolated: str
) -> None:
    """Row "partitions, no power cut": nothing lost; whichever node is cut off."""
    a = acknowledge(durability, seed)
    a.c.run_for(5)
    isolate(a.c, a.named(isolated))
    kept(a)


@pytest.mark.parametrize("durability", [MEM, DISK])
@pytest.mark.parametrize("seed", SEEDS)
def test_row_power_cut_of_the_acknowledging_follower_alone_loses_nothing(
    durability: Durability, seed: int
) -> None:
    """Row "power cut of F, L stays up and reachable": nothing lost; L re-sends it."""
    a = acknowledge(durability, seed)
    a.c.run_for(5)
    power_cut(a.c, a.follower, down_ms=50)
    kept(a)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("then", ["partition", "kill"])
def test_row_power_cut_of_the_follower_then_leader_unavailable_loses_it_under_mem_first(
    seed: int, then: str
) -> None:
    """Row "power cut of F, then L partitioned away or its process killed before it re-sends":
    MemFirst LOSES the write (the reported input: F loses power 5 ms after the
    acknowledgement, then L is cut off or killed; F and G elect a leader without it)."""
    a = acknowledge(MEM, seed)
    a.c.run_for(5)
    power_cut(a.c, a.follower, down_ms=50)
    assert not a.on_disk(a.follower) and not a.in_memory(a.lagging)
    a.c.run_for(5)
    unavailable(a.c, a.leader, then, down_ms=5_000)
    lost(a)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("then", ["partition", "kill"])
def test_row_power_cut_of_the_follower_then_leader_unavailable_loses_nothing_under_disk_first(
    seed: int, then: str
) -> None:
    """The same row under DiskFirst: nothing lost (F fsynced it before acknowledging)."""
    a = acknowledge(DISK, seed)
    a.c.run_for(5)
    power_cut(a.c, a.follower, down_ms=50)
    a.c.run_for(5)
    unavailable(a.c, a.leader, then, down_ms=5_000)
    kept(a)


@pytest.mark.parametrize("durability", [MEM, DISK])
@pytest.mark.parametrize("seed", SEEDS)
def test_row_power_cut_of_the_follower_after_its_flush_then_leader_partitioned_loses_nothing(
    durability: Durability, seed: int
) -> None:
    """Row "the same, but the power cut comes after F's flush": nothing lost. The window is
    F's flush: once F has fsynced the write, F's copy survives and F can win the election."""
    a = acknowledge(durability, seed)
    a.c.run_for(FLUSH_WINDOW_MS[1] + 5)
    assert a.on_disk(a.follower)
    power_cut(a.c, a.follower, down_ms=50)
    a.c.run_for(5)
    isolate(a.c, a.leader)
    kept(a)


@pytest.mark.parametrize("down_ms", [5, 250])
def test_row_power_cut_of_the_leader_back_within_300_ms_can_lose_it_under_mem_first(
    down_ms: float,
) -> None:
    """Row "power cut of L, back within election_timeout_max - election_timeout_min (300 ms)":
    MemFirst CAN lose the write. L lost it, G never had it, F holds it: once L's post-boot
    quiet (election_timeout_min) is over, if G times out before F, L's vote (its log is no
    longer ahead of G's) elects G. Some seeds lose it, some keep it."""

    def schedule(a: Acked) -> None:
        a.c.run_for(5)
        power_cut(a.c, a.leader, down_ms=down_ms)
        assert not a.on_disk(a.leader)

    results = [outcome(MEM, seed, schedule, lagging=True) for seed in range(100)]
    assert any(results), "no seed lost it: the claim 'can lose' is not shown"
    assert not all(results), "every seed lost it: then say 'loses'"


@pytest.mark.parametrize("seed", SEEDS)
def test_row_power_cut_of_the_leader_back_at_once_loses_nothing_under_disk_first(
    seed: int,
) -> None:
    def schedule(a: Acked) -> None:
        a.c.run_for(5)
        power_cut(a.c, a.leader, down_ms=5)

    assert not outcome(DISK, seed, schedule, lagging=True)


@pytest.mark.parametrize("durability", [MEM, DISK])
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("down_ms", [310, 3_000])
def test_row_power_cut_of_the_leader_down_longer_than_300_ms_loses_nothing(
    durability: Durability, seed: int, down_ms: float
) -> None:
    """Row "power cut of L, down longer than that": nothing lost. G cannot win without L's
    vote (F's log is ahead of G's), and a restarted L grants none for election_timeout_min
    after it boots, by which time F and G have timed out and F, which holds it, is elected."""
    a = acknowledge(durability, seed)
    a.c.run_for(5)
    power_cut(a.c, a.leader, down_ms=down_ms)
    kept(a)


@pytest.mark.parametrize("durability", [MEM, DISK])
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(
    "cut, other",
    [(cut, other) for cut in ROLES for other in ROLES if other != cut],
)
@pytest.mark.parametrize("how", ["partition", "kill"])
def test_row_held_by_all_three_one_power_cut_and_one_unavailable_node_lose_nothing(
    durability: Durability, seed: int, cut: str, other: str, how: str
) -> None:
    """Row "all three nodes had it": one power cut plus one other node partitioned away or
    killed loses nothing; the third node holds it in memory and is the only one that can be
    elected by the two that are up."""
    a = acknowledge(durability, seed, lagging=False)
    a.c.run_for(5)
    assert a.in_memory(a.lagging)
    power_cut(a.c, a.named(cut), down_ms=50)
    a.c.run_for(5)
    unavailable(a.c, a.named(other), how, down_ms=3_000)
    kept(a)


@pytest.mark.parametrize("seed", SEEDS)
def test_row_power_cuts_of_two_nodes_within_the_window_lose_it_under_mem_first(
    seed: int,
) -> None:
    """Row "power cuts of two nodes (a majority) within the window": MemFirst loses a write
    that only they held; this is the loss the earlier docs described."""
    a = acknowledge(MEM, seed)
    a.c.run_for(5)
    power_cut(a.c, a.leader, down_ms=50)
    power_cut(a.c, a.follower, down_ms=50)
    lost(a)


@pytest.mark.parametrize("seed", SEEDS)
def test_row_power_cuts_of_two_nodes_within_the_window_lose_nothing_under_disk_first(
    seed: int,
) -> None:
    a = acknowledge(DISK, seed)
    a.c.run_for(5)
    power_cut(a.c, a.leader, down_ms=50)
    power_cut(a.c, a.follower, down_ms=50)
    kept(a)


@pytest.mark.parametrize("durability", [MEM, DISK])
@pytest.mark.parametrize("seed", SEEDS)
def test_row_power_cuts_of_every_node_at_once(durability: Durability, seed: int) -> None:
    """Second table, "power cuts of every node at once": MemFirst loses the write acknowledged
    within the flush window (nobody had flushed it), DiskFirst nothing."""
    a = acknowledge(durability, seed, lagging=False)
    a.c.run_for(2)
    for node in a.c.ids:
        power_cut(a.c, node, down_ms=50)
    if durability is MEM:
        lost(a)
    else:
        kept(a)


@pytest.mark.parametrize("durability", [MEM, DISK])
@pytest.mark.parametrize("seed", SEEDS)
def test_row_a_graceful_stop_of_every_node_loses_nothing(durability: Durability, seed: int) -> None:
    """Second table, "a graceful stop": the stop flushes first, so nothing is lost."""
    a = acknowledge(durability, seed, lagging=False)
    a.c.run_for(2)
    for node in a.c.ids:
        a.c.crash(node, lose_unflushed=False)
        a.c.call_at(a.c.now + 50, lambda node=node: a.c.restart(node))
    kept(a)


def five_nodes_acknowledge(seed: int, copies: int) -> tuple[Acked, list[int]]:
    """Five voters (F = 2), MemFirst: one put acknowledged and held in memory by exactly
    ``copies`` nodes (the leader included); the others get none of the leader's appends."""
    c = Cluster(5, seed=seed, durability=MEM, disk_latency_ms=FLUSH_WINDOW_MS)
    leader = c.wait_for_leader()
    c.run_for(200)
    followers = [n for n in c.ids if n != leader]
    holders, laggards = followers[: copies - 1], followers[copies - 1 :]
    for node in laggards:
        c.hold(leader, node, AppendEntries)
    op = c.put(leader, "k")
    for _ in range(40):
        last = c.raft(leader).log.last_index
        if c.history[op].ok and all(c.raft(n).log.last_index == last for n in holders):
            break
        c.run_for(0.25)
    assert c.history[op].ok
    entry = c.raft(leader).log.entry(c.raft(leader).log.last_index)
    a = Acked(c, leader, holders[0], laggards[0], op, entry)
    assert [n for n in c.ids if a.in_memory(n)] == sorted([leader, *holders])
    return a, holders


def five_nodes_schedule(a: Acked, holders: list[int], cuts: int) -> None:
    """``cuts`` power cuts of followers holding it, then the leader partitioned away."""
    a.c.run_for(5)
    for node in holders[:cuts]:
        power_cut(a.c, node, down_ms=50)
    a.c.run_for(5)
    isolate(a.c, a.leader)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("copies", [3, 4])
def test_row_five_nodes_held_by_f_plus_k_fewer_than_k_power_cuts_lose_nothing(
    seed: int, copies: int
) -> None:
    """Paragraph "more nodes": five voters (F = 2), MemFirst. A write held by F+k nodes
    (k = 1: a bare majority of 3; k = 2: 4) survives k-1 power cuts of followers holding it
    plus the leader's partition: F+1 holders remain, and every majority includes one."""
    a, holders = five_nodes_acknowledge(seed, copies)
    five_nodes_schedule(a, holders, cuts=copies - 3)
    kept(a)


@pytest.mark.parametrize("copies", [3, 4])
def test_row_five_nodes_held_by_f_plus_k_k_power_cuts_can_lose_it(copies: int) -> None:
    """The same paragraph: k power cuts plus the leader's partition CAN lose it: F nodes lacking
    it plus the cut ones are a majority, and win if they time out before the remaining holder."""

    def run(seed: int) -> bool:
        a, holders = five_nodes_acknowledge(seed, copies)
        five_nodes_schedule(a, holders, cuts=copies - 2)
        try:
            a.c.run_for(3_000)
        except InvariantViolation as exc:
            assert "lacks committed entries" in str(exc)
            return True
        kept(a, settle_ms=0)
        return False

    results = [run(seed) for seed in range(40)]
    assert any(results), "no seed lost it: the claim 'can lose' is not shown"
