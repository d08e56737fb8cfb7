"""A deterministic cluster simulator for the sans-IO Raft core.

Several ``RaftNode`` cores, one simulated clock, a simulated network (drop, delay, duplicate,
reorder, one-way or two-way cuts), a simulated disk (writes complete after a latency; a crash
loses exactly what was not yet durable), per-node clock drift, and clients issuing writes and
reads of each kind. Every step is followed by invariant checks; a violation raises
``InvariantViolation`` with the simulated time and what broke.

Everything random comes from one ``random.Random(seed)``: the same seed and schedule replay the
same run exactly.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from typing_extensions import assert_never

from dengine_trio.raft import (
    Apply,
    Durability,
    Effect,
    Entry,
    EntryKind,
    Event,
    Message,
    Persisted,
    PersistEntries,
    PersistHardState,
    ProposalRejected,
    Propose,
    Proposed,
    RaftConfig,
    RaftNode,
    ReadFailed,
    ReadReady,
    ReadRequest,
    Receive,
    Role,
    RoleChanged,
    Send,
    Tick,
    TransferLeader,
)

from ..support.linearizability import Kind, Operation, Outcome, Result, check


class InvariantViolation(AssertionError):
    pass


@dataclass
class Op:
    """One client operation in the history. ``ok`` is None while (or if forever) unknown."""

    kind: str  # "put", "read-linearizable", "read-lease", "read-eventual"
    key: str
    value: str | None
    node: int
    invoke: float
    complete: float | None = None
    ok: bool | None = None


@dataclass
class SimNode:
    id: int
    rate: float  # local clock speed relative to true time (drift)
    raft: RaftNode | None = None
    hard_state: tuple[int, int] = (0, 0)
    disk_log: list[Entry] = field(default_factory=list)
    pending_writes: list[tuple[Entry, ...]] = field(default_factory=list)
    disk_generation: int = 0
    state: dict[str, str] = field(default_factory=dict)
    applied_index: int = 0
    waiting_reads: list[tuple[int, int]] = field(default_factory=list)  # (read_index, op id)
    timer_token: int = 0

    def local_time(self, true_now: float) -> float:
        return true_now * self.rate


@dataclass
class LinkRule:
    """What the network does to the messages of some types on some links, until removed.

    ``src``/``dst`` 0 match any node; an empty ``types`` matches every message type.
    ``action`` is "drop", "hold" (kept, in order, until ``Cluster.release``) or "delay"
    (``delay_ms`` more, and the link then keeps its order: a stalled, not a reordering, link).
    ``remaining`` bounds how many messages the rule takes (None: no bound).
    """

    action: str
    src: int = 0
    dst: int = 0
    types: tuple[type, ...] = ()
    delay_ms: float = 0.0
    remaining: int | None = None

    def matches(self, message: Message) -> bool:
        return (
            (self.src == 0 or self.src == message.src)
            and (self.dst == 0 or self.dst == message.dst)
            and (not self.types or isinstance(message, self.types))
            and (self.remaining is None or self.remaining > 0)
        )


@dataclass(frozen=True)
class NetworkFaults:
    drop: float = 0.0
    duplicate: float = 0.0
    delay_min_ms: float = 0.2
    delay_max_ms: float = 2.0


def encode_put(key: str, value: str) -> bytes:
    return f"{key}={value}".encode()


def decode_put(data: bytes) -> tuple[str, str]:
    key, _, value = data.decode().partition("=")
    return key, value


class Cluster:
    def __init__(
        self,
        size: int = 3,
        *,
        seed: int = 0,
        durability: Durability = Durability.DISK_FIRST,
        drift: float = 0.0,
        disk_latency_ms: tuple[float, float] = (0.1, 3.0),
        **raft_overrides: Any,
    ) -> None:
        self.rng = random.Random(seed)
        self.ids = tuple(range(1, size + 1))
        self.durability = durability
        self.raft_overrides = raft_overrides
        self.disk_latency_ms = disk_latency_ms
        self.now = 0.0
        self.faults = NetworkFaults()
        self.cut: set[tuple[int, int]] = set()  # (src, dst) links that drop everything
        self.rules: list[LinkRule] = []  # per-link, per-message-type drops, holds, delays
        self.held: list[Message] = []  # messages a "hold" rule keeps, in the order sent
        self._link_last: dict[tuple[int, int], float] = {}  # last delivery time on a link
        self.disk_stalled: set[int] = set()  # nodes whose disk writes do not complete
        self._queue: list[tuple[float, int, str, Any]] = []
        self._seq = 0
        self.nodes: dict[int, SimNode] = {}
        for node_id in self.ids:
            rate = 1.0 + self.rng.uniform(-drift, drift) if drift else 1.0
            self.nodes[node_id] = SimNode(node_id, rate)
            self._boot(self.nodes[node_id])
        # Checker state.
        self.leaders: dict[int, int] = {}  # term -> leader id
        self.committed: list[Entry] = []  # the one committed log, as applied anywhere
        self.history: list[Op] = []
        self._ops_waiting: dict[int, tuple[int, int, int]] = {}  # op id -> (node, index, term)
        self.steps = 0
        self.faults_injected: dict[str, int] = {}
        self._value_counter = 0
        self.linearizability: Result | None = None  # set by check_linearizability

    # ------------------------------------------------------------------ plumbing

    def config_for(self, node_id: int) -> RaftConfig:
        return RaftConfig(
            node_id=node_id, voters=self.ids, durability=self.durability, **self.raft_overrides
        )

    def _boot(self, node: SimNode) -> None:
        term, voted_for = node.hard_state
        node.raft = RaftNode(
            self.config_for(node.id),
            random.Random(self.rng.random()),
            term=term,
            voted_for=voted_for,
            entries=list(node.disk_log),
            now_ms=node.local_time(self.now),
        )
        node.state = {}
        node.applied_index = 0
        node.waiting_reads = []
        self._schedule_timer(node)

    def _push(self, at: float, kind: str, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (at, self._seq, kind, payload))

    def _schedule_timer(self, node: SimNode) -> None:
        assert node.raft is not None
        node.timer_token += 1
        deadline_local = node.raft.next_deadline()
        if deadline_local == float("inf"):
            return
        # A hair late, so float rounding of the drifted clock never makes the node see a
        # time just short of its own deadline (and reschedule the same instant forever).
        at = max(self.now, deadline_local / node.rate + 1e-6)
        self._push(at, "timer", (node.id, node.timer_token))

    def _count(self, kind: str) -> None:
        self.faults_injected[kind] = self.faults_injected.get(kind, 0) + 1

    # ------------------------------------------------------------------ running

    def run_for(self, duration_ms: float) -> None:
        self.run_until(self.now + duration_ms)

    def run_until(self, t_end: float) -> None:
        while self._queue and self._queue[0][0] <= t_end:
            at, _, kind, payload = heapq.heappop(self._queue)
            self.now = max(self.now, at)
            self._handle(kind, payload)
        self.now = max(self.now, t_end)

    def _handle(self, kind: str, payload: Any) -> None:
        if kind == "timer":
            node_id, token = payload
            node = self.nodes[node_id]
            if node.raft is not None and token == node.timer_token:
                self.step(node_id, [Tick()])
        elif kind == "deliver":
            message: Message = payload
            node = self.nodes[message.dst]
            if node.raft is not None and (message.src, message.dst) not in self.cut:
                self.step(message.dst, [Receive(message)])
        elif kind == "disk":
            node_id, generation = payload
            node = self.nodes[node_id]
            if node.raft is not None and generation == node.disk_generation:
                if node_id in self.disk_stalled:
                    node.disk_generation += 1  # resumed by ``stall_disk(node, False)``
                else:
                    self._complete_disk_write(node)
        elif kind == "call":
            payload()

    def step(self, node_id: int, events: Iterable[Event]) -> None:
        node = self.nodes[node_id]
        assert node.raft is not None
        effects = node.raft.step_many(node.local_time(self.now), events)
        self.steps += 1
        for effect in effects:
            self._carry_out(node, effect)
        self._schedule_timer(node)
        self._check_node(node)

    def _carry_out(self, node: SimNode, effect: Effect) -> None:
        """Carry out one effect as the runtime would. The match is exhaustive over ``Effect``:
        an effect type added to the core and not handled here fails mypy (``assert_never``)
        and, at run time, the step, instead of being dropped silently (issue 12 item 1)."""
        match effect:
            case Send(message=message):
                self._transmit(message)
            case PersistHardState(term=term, voted_for=voted_for):
                node.hard_state = (term, voted_for)  # synchronous, like the runtime
            case PersistEntries(entries=entries):
                node.pending_writes.append(entries)
                if len(node.pending_writes) == 1:
                    self._schedule_disk(node)
            case Apply(entries=entries):
                self._apply(node, entries)
            case ReadReady(request_id=request_id, read_index=read_index):
                node.waiting_reads.append((read_index, request_id))
                self._serve_reads(node)
            case ReadFailed(request_id=request_id):
                self._finish(request_id, ok=False)
            case Proposed(request_id=request_id, index=index, term=term):
                self._ops_waiting[request_id] = (node.id, index, term)
            case ProposalRejected(request_id=request_id):
                self._finish(request_id, ok=False)
            case RoleChanged(role=role, term=term):
                if role is Role.LEADER:
                    self._check_new_leader(node, term)
            case _:
                assert_never(effect)

    def _transmit(self, message: Message) -> None:
        if (message.src, message.dst) in self.cut:
            return
        rule = next((r for r in self.rules if r.matches(message)), None)
        extra = 0.0
        if rule is not None:
            if rule.remaining is not None:
                rule.remaining -= 1
            self._count(f"{rule.action}-{type(message).__name__}")
            if rule.action == "drop":
                return
            if rule.action == "hold":
                self.held.append(message)
                return
            extra = rule.delay_ms
        faults = self.faults
        if faults.drop and self.rng.random() < faults.drop:
            return
        copies = 2 if faults.duplicate and self.rng.random() < faults.duplicate else 1
        for _ in range(copies):
            at = self.now + self.rng.uniform(faults.delay_min_ms, faults.delay_max_ms) + extra
            if rule is not None:
                # A stalled link delivers late but in order.
                link = (message.src, message.dst)
                at = max(at, self._link_last.get(link, 0.0) + 1e-3)
                self._link_last[link] = at
            self._push(at, "deliver", message)

    def _schedule_disk(self, node: SimNode) -> None:
        low, high = self.disk_latency_ms
        self._push(self.now + self.rng.uniform(low, high), "disk", (node.id, node.disk_generation))

    def _complete_disk_write(self, node: SimNode) -> None:
        entries = node.pending_writes.pop(0)
        first = entries[0].index
        if first <= len(node.disk_log):
            self._check_truncation(node, first)
            del node.disk_log[first - 1 :]
        assert len(node.disk_log) == first - 1, "disk writes must arrive in order"
        node.disk_log.extend(entries)
        if node.pending_writes:
            self._schedule_disk(node)
        last = entries[-1]
        self.step(node.id, [Persisted(last.index, last.term)])

    # ------------------------------------------------------------------ state machine and clients

    def _apply(self, node: SimNode, entries: tuple[Entry, ...]) -> None:
        for entry in entries:
            if entry.index != node.applied_index + 1:
                raise InvariantViolation(
                    f"t={self.now}: node {node.id} applied {entry.index} out of order"
                )
            self._check_applied(node, entry)
            node.applied_index = entry.index
            if entry.kind is EntryKind.COMMAND:
                key, value = decode_put(entry.data)
                node.state[key] = value
        # Writes proposed here complete when their own entry applies here.
        for op_id, (node_id, index, term) in list(self._ops_waiting.items()):
            if node_id == node.id and index <= node.applied_index:
                del self._ops_waiting[op_id]
                self._finish(op_id, ok=self.committed[index - 1].term == term)
        self._serve_reads(node)

    def _serve_reads(self, node: SimNode) -> None:
        still = []
        for read_index, op_id in node.waiting_reads:
            if node.applied_index >= read_index:
                op = self.history[op_id]
                self._finish(op_id, ok=True, value=node.state.get(op.key))
            else:
                still.append((read_index, op_id))
        node.waiting_reads = still

    def _finish(self, op_id: int, *, ok: bool, value: str | None = None) -> None:
        op = self.history[op_id]
        if op.complete is not None:
            return
        op.complete = self.now
        op.ok = ok
        if op.kind.startswith("read"):
            op.value = value

    def put(self, node_id: int, key: str) -> int:
        """Propose ``key = <fresh unique value>`` at ``node_id``; returns the op id."""
        self._value_counter += 1
        value = f"v{self._value_counter}"
        op_id = len(self.history)
        self.history.append(Op("put", key, value, node_id, self.now))
        if self.nodes[node_id].raft is None:
            self._finish(op_id, ok=False)
        else:
            self.step(node_id, [Propose(op_id, encode_put(key, value))])
        return op_id

    def read(self, node_id: int, key: str, policy: str) -> int:
        """``policy`` is "linearizable", "lease" or "eventual"; returns the op id."""
        op_id = len(self.history)
        self.history.append(Op(f"read-{policy}", key, None, node_id, self.now))
        node = self.nodes[node_id]
        if node.raft is None:
            self._finish(op_id, ok=False)
        elif policy == "eventual":
            self._finish(op_id, ok=True, value=node.state.get(key))
        else:
            self.step(node_id, [ReadRequest(op_id, lease=policy == "lease")])
        return op_id

    def transfer(self, node_id: int, target: int = 0) -> None:
        if self.nodes[node_id].raft is not None:
            self.step(node_id, [TransferLeader(target)])

    # ------------------------------------------------------------------ faults

    def crash(self, node_id: int, *, lose_unflushed: bool = True) -> None:
        """Stop a node. It loses exactly what was not yet durable (or, with
        ``lose_unflushed=False``, a graceful stop that flushes first)."""
        node = self.nodes[node_id]
        if node.raft is None:
            return
        self._count("crash")
        if not lose_unflushed:
            while node.pending_writes:
                entries = node.pending_writes.pop(0)
                del node.disk_log[entries[0].index - 1 :]
                node.disk_log.extend(entries)
        node.raft = None
        node.pending_writes = []
        node.disk_generation += 1
        node.timer_token += 1
        for op_id, (owner, _, _) in list(self._ops_waiting.items()):
            if owner == node_id:
                del self._ops_waiting[op_id]  # outcome unknown: stays ok=None
        for _, op_id in node.waiting_reads:
            self._finish(op_id, ok=False)
        node.waiting_reads = []

    def restart(self, node_id: int) -> None:
        node = self.nodes[node_id]
        if node.raft is not None:
            return
        self._count("restart")
        self._boot(node)

    def partition(self, *groups: Iterable[int]) -> None:
        """Cut every link between different groups, both ways."""
        self._count("partition")
        sets = [set(g) for g in groups]
        self.cut = {
            (a, b)
            for a in self.ids
            for b in self.ids
            if a != b and not any(a in s and b in s for s in sets)
        }

    def cut_link(self, src: int, dst: int) -> None:
        self._count("cut-one-way")
        self.cut.add((src, dst))

    def heal(self) -> None:
        """Reconnect everything: cuts and rules go, held messages are finally delivered."""
        self.cut = set()
        self.faults = NetworkFaults()
        self.rules = []
        self.release()

    # --- per-message-type control (a link that stalls, a TimeoutNow that arrives late ...)

    def add_rule(self, rule: LinkRule) -> LinkRule:
        """Apply ``rule`` to messages sent from now on (the first matching rule wins)."""
        self._count(f"rule-{rule.action}")
        self.rules.append(rule)
        return rule

    def remove_rule(self, rule: LinkRule) -> None:
        if rule in self.rules:
            self.rules.remove(rule)

    def hold(self, src: int = 0, dst: int = 0, *types: type) -> LinkRule:
        """Keep matching messages in the network until ``release``."""
        return self.add_rule(LinkRule("hold", src, dst, types))

    def drop(self, src: int = 0, dst: int = 0, *types: type, count: int | None = None) -> LinkRule:
        return self.add_rule(LinkRule("drop", src, dst, types, remaining=count))

    def stall(self, src: int, dst: int, delay_ms: float, *types: type) -> LinkRule:
        """Deliver matching messages ``delay_ms`` late, in the order sent."""
        return self.add_rule(LinkRule("delay", src, dst, types, delay_ms=delay_ms))

    def release(self, src: int = 0, dst: int = 0, *types: type) -> int:
        """Stop holding matching messages and deliver the held ones now, in the order sent
        (a cut link still drops them). Returns how many were released."""
        probe = LinkRule("hold", src, dst, types)

        def covered(r: LinkRule) -> bool:  # a hold rule no wider than what is released
            return (
                r.action == "hold"
                and src in (0, r.src)
                and dst in (0, r.dst)
                and (not types or (bool(r.types) and set(r.types) <= set(types)))
            )

        self.rules = [r for r in self.rules if not covered(r)]
        out = [m for m in self.held if probe.matches(m)]
        self.held = [m for m in self.held if not probe.matches(m)]
        for pos, message in enumerate(out):
            self._push(self.now + 0.1 + pos * 1e-3, "deliver", message)
        return len(out)

    def stall_disk(self, node_id: int, stalled: bool = True) -> None:
        """Hold (or resume) a node's disk: its writes stay in flight, lost by a crash."""
        node = self.nodes[node_id]
        if stalled:
            self._count("disk-stall")
            self.disk_stalled.add(node_id)
        elif node_id in self.disk_stalled:
            self.disk_stalled.discard(node_id)
            node.disk_generation += 1
            if node.pending_writes:
                self._schedule_disk(node)

    def inject(self, message: Message, delay_ms: float = 0.0) -> None:
        """Put ``message`` on the network as if its ``src`` had sent it."""
        self._push(self.now + delay_ms, "deliver", message)

    def bounce(
        self,
        node_id: int,
        down_ms: float,
        *,
        lose_unflushed: bool = False,
        reconnect_ms: float = 0.0,
        reconnect_from: Iterable[int] = (),
    ) -> None:
        """Restart a node's process: down now (disk intact unless ``lose_unflushed``), back
        ``down_ms`` later. For ``reconnect_ms`` after that the messages of the peers in
        ``reconnect_from`` (default: all) still do not reach it (their connections reconnect
        with a backoff), though its own go out."""
        self.crash(node_id, lose_unflushed=lose_unflushed)
        sources = tuple(reconnect_from) or (0,)

        def back() -> None:
            self.restart(node_id)
            if reconnect_ms > 0:
                rules = [self.add_rule(LinkRule("drop", src, node_id)) for src in sources]

                def reconnected() -> None:
                    for rule in rules:
                        self.remove_rule(rule)

                self.call_at(self.now + reconnect_ms, reconnected)

        self.call_at(self.now + down_ms, back)

    def set_faults(self, faults: NetworkFaults) -> None:
        self._count("network-faults")
        self.faults = faults

    def call_at(self, at: float, fn: Any) -> None:
        self._push(at, "call", fn)

    # ------------------------------------------------------------------ queries

    def leader(self) -> int | None:
        """The live leader with the highest term, if any."""
        best: tuple[int, int] | None = None
        for node in self.nodes.values():
            if node.raft is not None and node.raft.role is Role.LEADER:
                if best is None or node.raft.term > best[0]:
                    best = (node.raft.term, node.id)
        return best[1] if best else None

    def raft(self, node_id: int) -> RaftNode:
        raft = self.nodes[node_id].raft
        assert raft is not None, f"node {node_id} is down"
        return raft

    def wait_for_leader(self, timeout_ms: float = 10_000) -> int:
        deadline = self.now + timeout_ms
        while self.now < deadline:
            leader = self.leader()
            if leader is not None and self.raft(leader)._committed_in_term():
                return leader
            self.run_for(10)
        raise AssertionError(f"no leader within {timeout_ms} ms")

    # ------------------------------------------------------------------ invariants

    def _check_new_leader(self, node: SimNode, term: int) -> None:
        # Election safety: at most one leader per term.
        other = self.leaders.setdefault(term, node.id)
        if other != node.id:
            raise InvariantViolation(
                f"t={self.now}: two leaders in term {term}: {other} and {node.id}"
            )
        # Leader completeness: a new leader holds every committed entry.
        assert node.raft is not None
        have = node.raft.log.slice(1, len(self.committed))
        if have != self.committed:
            raise InvariantViolation(
                f"t={self.now}: leader {node.id} of term {term} lacks committed entries "
                f"(committed up to {len(self.committed)}, "
                f"its log ends at {node.raft.log.last_index})"
            )

    def _check_applied(self, node: SimNode, entry: Entry) -> None:
        # State machine safety: no two nodes apply different entries at one index.
        if entry.index <= len(self.committed):
            if self.committed[entry.index - 1] != entry:
                raise InvariantViolation(
                    f"t={self.now}: node {node.id} applied {entry} at {entry.index}, "
                    f"but {self.committed[entry.index - 1]} was applied there before"
                )
        else:
            assert entry.index == len(self.committed) + 1
            self.committed.append(entry)

    def _check_truncation(self, node: SimNode, first: int) -> None:
        # Committed entries never disappear: truncating a durable log below the commit point
        # must leave a majority still holding the entry durably (DiskFirst guarantees this).
        if self.durability is not Durability.DISK_FIRST or first > len(self.committed):
            return
        for index in range(first, len(self.committed) + 1):
            holders = sum(
                1
                for other in self.nodes.values()
                if other.id != node.id
                and len(other.disk_log) >= index
                and other.disk_log[index - 1] == self.committed[index - 1]
            )
            if holders < len(self.ids) // 2 + 1:
                raise InvariantViolation(
                    f"t={self.now}: node {node.id} truncated committed entry {index} from disk "
                    f"and only {holders} other nodes hold it"
                )

    def _check_node(self, node: SimNode) -> None:
        raft = node.raft
        if raft is None:
            return
        # CheckQuorum: a leader has heard from a majority within an election timeout (what
        # /primary reports), or it is no longer leader.
        if raft.role is Role.LEADER and raft.config.check_quorum:
            if not raft.has_quorum_contact(raft.now):
                raise InvariantViolation(
                    f"t={self.now}: node {node.id} leads without quorum contact"
                )
        # The commit index only ever covers entries the node holds and shares with the
        # leader of its term (issue 11 item 7): whatever message advanced it.
        if raft.commit_index > raft.log.last_index:
            raise InvariantViolation(
                f"t={self.now}: node {node.id} commit index {raft.commit_index} is past the end "
                f"of its log ({raft.log.last_index})"
            )
        leader = self.nodes[raft.leader_id].raft if raft.leader_id else None
        if (
            raft.role is Role.FOLLOWER
            and leader is not None
            and leader.role is Role.LEADER
            and leader.term == raft.term
            and leader.log.slice(1, raft.commit_index) != raft.log.slice(1, raft.commit_index)
        ):
            raise InvariantViolation(
                f"t={self.now}: node {node.id} commits up to {raft.commit_index}, but its log "
                f"there differs from its leader {raft.leader_id}'s"
            )
        # A node's log agrees with the committed log up to its own commit index.
        upto = min(raft.commit_index, len(self.committed))
        if raft.log.slice(1, upto) != self.committed[:upto]:
            raise InvariantViolation(
                f"t={self.now}: node {node.id} log diverges below its commit index"
            )
        # Log matching against every other live node.
        for other in self.nodes.values():
            if other.raft is None or other.id == node.id:
                continue
            a, b = raft.log, other.raft.log
            index = min(a.last_index, b.last_index)
            while index > 0 and a.term_at(index) != b.term_at(index):
                index -= 1
            if index and a.slice(1, index) != b.slice(1, index):
                raise InvariantViolation(
                    f"t={self.now}: log matching broken between {node.id} and {other.id} "
                    f"below index {index}"
                )

    def check_durability(self) -> None:
        """Every committed entry is on a majority of durable logs (DiskFirst)."""
        if self.durability is not Durability.DISK_FIRST:
            return
        for index, entry in enumerate(self.committed, start=1):
            holders = sum(
                1
                for n in self.nodes.values()
                if len(n.disk_log) >= index and n.disk_log[index - 1] == entry
            )
            if holders < len(self.ids) // 2 + 1:
                raise InvariantViolation(
                    f"committed entry {index} is durable on only {holders} nodes"
                )

    def client_history(self) -> list[Operation]:
        """The history for the linearizability checker: every put, and the linearizable and
        lease reads (eventual reads promise no order; ``check_history`` covers them).

        A put has three outcomes. Rejected by the node, or proposed as an entry that another
        entry replaced at its index (that index committed with another term, so the entry can
        never commit): certainly not applied. Applied where it was proposed: applied. Node
        crashed first, or still pending at the end: unknown, it may commit later or never.
        """
        operations = []
        kind: Kind
        outcome: Outcome
        for op_id, op in enumerate(self.history):
            if op.kind == "put":
                outcome = "unknown" if op.ok is None else "ok" if op.ok else "fail"
                kind = "put"
            elif op.kind in ("read-linearizable", "read-lease"):
                if not op.ok:
                    continue
                outcome, kind = "ok", "get"
            else:
                continue
            operations.append(
                Operation(
                    f"#{op_id}@n{op.node}" + ("/lease" if op.kind == "read-lease" else ""),
                    kind,
                    op.key,
                    op.value,
                    op.invoke,
                    op.complete,
                    outcome,
                )
            )
        return operations

    def check_linearizability(self) -> Result:
        """Puts, linearizable and lease reads form a linearizable history, key by key. Raises
        on a violation; an inconclusive search (step budget spent) is returned, not raised."""
        result = self.linearizability = check(self.client_history())
        if result.violation:
            raise InvariantViolation(result.explanation)
        return result

    def check_history(self) -> None:
        """Reads never return a value that was never written, nor (linearizable and lease
        reads) one that had certainly been overwritten before the read began."""
        writes: dict[str, list[Op]] = {}
        for op in self.history:
            if op.kind == "put":
                writes.setdefault(op.key, []).append(op)
        for op in self.history:
            if not op.kind.startswith("read") or not op.ok:
                continue
            assert op.complete is not None
            key_writes = writes.get(op.key, [])
            if op.value is None:
                source = None
            else:
                found = [w for w in key_writes if w.value == op.value]
                if not found or found[0].invoke > op.complete or found[0].ok is False:
                    raise InvariantViolation(f"{op} returned a value never written")
                source = found[0]
            if op.kind == "read-eventual":
                continue
            for w in key_writes:
                if not w.ok or w.complete is None or w.complete >= op.invoke or w is source:
                    continue
                if source is None or (source.complete is not None and source.complete < w.invoke):
                    raise InvariantViolation(
                        f"stale read: {op} returned {op.value!r}, but {w} completed before it "
                        f"began and after the write of what it returned"
                    )
