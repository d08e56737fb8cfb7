"""The nemesis: seeded fault schedules for a :class:`ChaosCluster`, and carrying them out.

A schedule is a list of steps. Each step injects one or two faults, holds them for a while,
heals everything (links restored, paused nodes resumed, killed nodes restarted) and then lets
the cluster run quietly for a while. The schedule is a pure function of ``(seed, durability,
duration_s)``, so a failing one is regenerated exactly from its seed; what the real processes
do under it (who leads when, which request meets which fault) differs from run to run.
"""

from __future__ import annotations

import random
from collections import Counter

import attrs
import trio

from .cluster import ChaosCluster
from .proxy import LinkFault, LinkMode

__all__ = ["FAULT_KINDS", "Fault", "Nemesis", "Schedule", "Step", "make_schedule"]

FAULT_KINDS = (
    "kill",  # SIGKILL one node; restarted at the heal
    # SIGKILL one follower for 4-8 s while the others take writes: it misses several of the
    # leader's compactions and comes back needing an InstallSnapshot (issue 13).
    "kill_follower",
    "kill_majority",  # SIGKILL two nodes
    "kill_all",  # SIGKILL every node at once
    "pause",  # SIGSTOP one node; SIGCONT at the heal
    "isolate",  # cut every link of one node, both ways (a minority and a majority side)
    "cut_out",  # cut the links from one node: it hears the others, they do not hear it
    "cut_in",  # cut the links to one node: it speaks, hears nothing
    "cut_pair",  # cut both ways between two nodes; the third still talks to both
    "blackhole",  # every link of one node swallows bytes silently, both ways
    "delay",  # every link delayed
    "delay_node",  # every link of one node delayed
    # Membership (issue 14): DELETE /members/<follower>, SIGKILL it, empty its data directory
    # and start it again as a joining node (own entry role 3, status 0): it asks to be added
    # back as a learner, catches up (snapshot, then log) and is promoted automatically.
    "replace_follower",
    # SIGKILL a voter (or the leader), empty its data directory and start it again with its
    # original voter's file, under its old id: what docs/operations.md says not to do. It
    # must not vote until the leader has bound its new data directory (issue 14).
    "wipe_voter",
)
LONG_HOLD = frozenset({"kill_follower"})
MEMBERSHIP = frozenset({"replace_follower", "wipe_voter"})
"""Faults that change the membership: each waits until every node is a bound voter again
(``MEMBERS_SETTLE_S``), since wiping a second directory before the first is bound again
takes two of three voters' votes away (a cluster that cannot elect, not a safety question)."""
MEMBERS_SETTLE_S = 60.0
REMOVE_TIMEOUT_S = 20.0
"""Faults held 4-8 s rather than 0.5-6 s (1.5-3 s in the covering schedule)."""
LEADER = 0
"""``Fault.target`` for "whichever node leads when the fault is injected"."""


@attrs.frozen
class Fault:
    kind: str
    target: int = LEADER
    """A node id, or ``LEADER``."""
    other_offset: int = 1
    """Picks a second node: ``target + other_offset`` (cyclically)."""
    delay_ms: int = 0


@attrs.frozen
class Step:
    faults: tuple[Fault, ...]
    hold_s: float
    quiet_s: float


@attrs.frozen
class Schedule:
    seed: int
    durability: str
    duration_s: float
    steps: tuple[Step, ...]

    @property
    def replay_spec(self) -> str:
        """The value of ``DENGINE_CHAOS_REPLAY`` that regenerates this schedule."""
        return f"{self.seed}:{self.durability}:{self.duration_s:g}"


def _fault(rng: random.Random, kind: str, size: int) -> Fault:
    target = LEADER if rng.random() < 0.5 else rng.randint(1, size)
    delay_ms = 0
    if kind == "delay":
        delay_ms = rng.choice((20, 50, 150, 400))
    elif kind == "delay_node":
        delay_ms = rng.choice((50, 200, 700))
    return Fault(kind, target, rng.randint(1, size - 1), delay_ms)


def make_schedule(seed: int, durability: str, duration_s: float, size: int = 3) -> Schedule:
    """Steps filling about ``duration_s`` seconds. ``duration_s == 0`` gives the covering
    schedule: every fault kind once, in an order drawn from the seed (for ``make test``)."""
    rng = random.Random(seed)
    steps: list[Step] = []
    if duration_s == 0:
        kinds = list(FAULT_KINDS)
        rng.shuffle(kinds)
        for kind in kinds:
            hold = rng.uniform(4.0, 8.0) if kind in LONG_HOLD else rng.uniform(1.5, 3.0)
            steps.append(Step((_fault(rng, kind, size),), hold, 1.0))
        return Schedule(seed, durability, duration_s, tuple(steps))
    elapsed = 0.0
    while elapsed < duration_s:
        first = rng.choice(FAULT_KINDS)
        faults = [_fault(rng, first, size)]
        if rng.random() < 0.3 and first != "kill_all" and first not in MEMBERSHIP:
            # A membership fault comes alone: its removal must commit while it is carried out.
            others = [k for k in FAULT_KINDS if k not in (first, "kill_all", *MEMBERSHIP)]
            faults.append(_fault(rng, rng.choice(others), size))
        hold = rng.uniform(0.5, 6.0)
        if any(f.kind in LONG_HOLD for f in faults):
            hold = rng.uniform(4.0, 8.0)
        step = Step(tuple(faults), hold, rng.uniform(0.3, 3.0))
        steps.append(step)
        elapsed += step.hold_s + step.quiet_s
    return Schedule(seed, durability, duration_s, tuple(steps))


class Nemesis:
    """Injects ``Fault``s into ``cluster`` and heals them; counts what it injected."""

    def __init__(self, cluster: ChaosCluster, rng: random.Random) -> None:
        self.cluster = cluster
        self.rng = rng
        self.injected: Counter[str] = Counter()
        self.log: list[str] = []

    async def _resolve(self, target: int) -> int:
        if target != LEADER:
            return target
        leader = await self.cluster.leader()
        return leader if leader is not None else self.rng.choice(self.cluster.ids)

    def _other(self, node: int, offset: int) -> int:
        ids = self.cluster.ids
        return ids[(ids.index(node) + offset) % len(ids)]

    async def inject(self, fault: Fault) -> str:
        """Carry out ``fault``; return what was done, for the log."""
        c = self.cluster
        net = c.network
        node = await self._resolve(fault.target)
        other = self._other(node, fault.other_offset)
        kind = fault.kind
        cut = LinkFault(LinkMode.CUT)
        if kind == "kill":
            await c.kill(node)
            done = f"SIGKILL n{node}"
        elif kind == "kill_follower":
            leader = await c.leader()
            followers = [i for i in c.ids if i != leader]
            node = followers[fault.other_offset % len(followers)]
            await c.kill(node)
            done = f"SIGKILL follower n{node}"
        elif kind == "kill_majority":
            await c.kill(node)
            await c.kill(other)
            done = f"SIGKILL n{node} n{other}"
        elif kind == "kill_all":
            await c.kill_all()
            done = "SIGKILL all"
        elif kind == "pause":
            c.pause(node)
            done = f"SIGSTOP n{node}"
        elif kind == "isolate":
            net.set_links(net.links_of(node), cut)
            done = f"isolate n{node}"
        elif kind == "cut_out":
            net.set_links(net.links_of(node, inbound=False), cut)
            done = f"cut n{node} -> *"
        elif kind == "cut_in":
            net.set_links(net.links_of(node, outbound=False), cut)
            done = f"cut * -> n{node}"
        elif kind == "cut_pair":
            net.set_links([(node, other), (other, node)], cut)
            done = f"cut n{node} <-> n{other}"
        elif kind == "blackhole":
            net.set_links(net.links_of(node), LinkFault(LinkMode.BLACKHOLE))
            done = f"blackhole n{node}"
        elif kind == "delay":
            net.set_links(net.all_links(), LinkFault(delay_s=fault.delay_ms / 1000))
            done = f"delay all links {fault.delay_ms} ms"
        elif kind == "delay_node":
            net.set_links(net.links_of(node), LinkFault(delay_s=fault.delay_ms / 1000))
            done = f"delay n{node} links {fault.delay_ms} ms"
        elif kind in MEMBERSHIP:
            if not await self.members_settled(MEMBERS_SETTLE_S):
                self.injected[f"{kind}_skipped"] += 1
                done = f"{kind} skipped: members not all bound voters"
                self.log.append(done)
                return done
            if kind == "replace_follower":
                leader = await c.leader()
                followers = [i for i in c.ids if i != leader]
                node = followers[fault.other_offset % len(followers)]
                status = 0
                with trio.move_on_after(REMOVE_TIMEOUT_S):
                    while status not in (200, 404):
                        status = await c.admin("DELETE", f"/members/{node}")
                        if status not in (200, 404):
                            await trio.sleep(0.3)
                removed = status in (200, 404) or await self.removed(node)
                # Not removed (no leader in time): it comes back as a wiped voter instead.
                await c.wipe(node, joining=removed)
                c.start(node)
                back = "a joining learner" if removed else "a voter (not removed)"
                done = f"remove n{node} ({status}), wipe, back as {back}"
            else:
                await c.wipe(node, joining=False)
                c.start(node)
                done = f"wipe n{node}, restart as a voter under its old id"
        else:
            raise ValueError(f"unknown fault kind {kind!r}")
        self.injected[kind] += 1
        self.log.append(done)
        return done

    def heal(self) -> None:
        self.cluster.heal()
        self.log.append("heal")

    async def removed(self, node: int) -> bool:
        """After a DELETE that got no clear answer: is ``node`` out of the leader's view?"""
        c = self.cluster
        with trio.move_on_after(10.0):
            while True:
                leader = await c.leader()
                view = await c.member_view(leader) if leader is not None else None
                if view is not None:
                    return node not in {m["id"] for m in view["members"]}
                await trio.sleep(0.2)
        return False

    async def members_settled(self, timeout_s: float) -> bool:
        """Wait (bounded) until the leader's ``GET /members`` lists every node as a voter
        bound to a data directory; False if that did not happen in time."""
        c = self.cluster
        want = set(c.ids)
        with trio.move_on_after(timeout_s):
            while True:
                leader = await c.leader()
                view = await c.member_view(leader) if leader is not None else None
                if view is not None:
                    members = {m["id"]: m for m in view["members"]}
                    running = all(c.running(i) and i not in c.paused for i in c.ids)
                    if (
                        running
                        and set(members) == want
                        and all(m["voter"] and m.get("bound", True) for m in members.values())
                    ):
                        return True
                await trio.sleep(0.2)
        return False
