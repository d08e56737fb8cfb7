"""A deterministic cluster simulator for the sans-IO Raft core.

Several ``RaftNode`` cores, one simulated clock, a simulated network (drop, delay, duplicate,
reorder, one-way or two-way cuts), a simulated disk (writes complete after a latency; a crash
loses exactly what was not yet durable), per-node clock drift, and clients issuing writes and
reads of each kind. Every step is followed by invariant checks; a violation raises
``InvariantViolation`` with the simulated time and what broke.

Snapshots (``snapshot_threshold``): each node's state machine (a dictionary) is written as an
image at its applied index once it has applied that many entries past its last snapshot, the
write completing after a latency (a crash before then loses it: the old snapshot stays, as with
the runtime's write-fsync-rename). Then the node steps ``SnapshotTaken`` and its disk log drops
what the snapshot covers, keeping ``snapshot_retained`` entries. A leader's ``InstallSnapshot``
carries the leader's newest image out of band, through the same faulty network as every other
message; the leader's runtime reports ``SnapshotStatus`` (ok when the stream completed, not ok
some time after it was lost). ``RestoreSnapshot`` is a barrier: the node does nothing else while
the install runs in three durable phases (the staged file renamed in, the WAL reset, the state
machine swapped), and a crash between phases leaves exactly the disk state of that moment.
A restart loads the newest snapshot and the disk log after it, as storage recovery does.

Membership (issue 14; ``Cluster(cluster_id="...")``, off by default so that the older schedules
replay exactly): the first leader makes the implicit membership explicit, and nodes can then be
added (``add_node``: a new process with empty storage, joining), promoted, removed and re-bound
through ``change`` (``ProposeConfChange`` at a node), and WIPED (``wipe``: the process dies, its
data directory is emptied and it restarts under a new uuid, as an operator replacing a disk
would). Every node has a data-directory uuid; a node's peers learn it from ``PeerIdentity``
steps, as the runtime steps them from each connection's ``Hello``: some time after the node
(re)starts (``identity_delay_ms``), and always before the first message of the new process is
delivered. Snapshot images carry the membership as of their index, as the files' headers do.

Everything random comes from one ``random.Random(seed)``: the same seed and schedule replay the
same run exactly.
"""

from __future__ import annotations

import heapq
import json
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import attrs
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
    RestoreSnapshot,
    Role,
    RoleChanged,
    Send,
    SnapshotStatus,
    SnapshotTaken,
    Tick,
    TransferLeader,
)
from dengine_trio.raft.effects import ConfChangeRejected, MembershipChanged
from dengine_trio.raft.events import PeerIdentity, ProposeConfChange
from dengine_trio.raft.log import RaftLog
from dengine_trio.raft.membership import (
    ConfChange,
    Membership,
    decode_membership,
    encode_membership,
    implicit_membership,
)
from dengine_trio.raft.messages import InstallSnapshot, RequestVote, RequestVoteResponse

from ..support.linearizability import Kind, Operation, Outcome, Result, check


class InvariantViolation(AssertionError):
    pass


@dataclass
class Op:
    """One client operation in the history. ``ok`` is None while (or if forever) unknown."""

    kind: str  # "put", "read-linearizable", "read-lease", "read-eventual", "conf"
    key: str  # a conf op: the change, as text
    value: str | None
    node: int
    invoke: float
    complete: float | None = None
    ok: bool | None = None
    code: str = ""  # a refused conf op: ConfChangeRejected.code
    # A cas or txn (issue 17): its command, and once applied whether its compare held and
    # what its gets returned (``apply_command``). A cas writes ``value`` if ``key`` holds
    # ``expected`` (None: absent).
    expected: str | None = None
    command: bytes = b""
    succeeded: bool | None = None
    reads: tuple[str | None, ...] = ()


@dataclass(frozen=True)
class SimSnapshot:
    """A snapshot file: the state machine image as of applied entry (index, term)."""

    index: int
    term: int
    state: tuple[tuple[str, str], ...]  # sorted items: immutable, comparable
    membership: Membership | None = None  # as of ``index`` (the file header's); None: implicit


@dataclass
class Install:
    """A ``RestoreSnapshot`` being carried out: the effects after it wait (a barrier)."""

    image: SimSnapshot
    rest: list[Effect]


@dataclass
class SimNode:
    id: int
    rate: float  # local clock speed relative to true time (drift)
    raft: RaftNode | None = None
    hard_state: tuple[int, int] = (0, 0)
    # The durable log holds entries disk_offset+1 .. disk_offset+len(disk_log); what lies at
    # or below the offset was dropped by compaction (or an install's WAL reset).
    disk_log: list[Entry] = field(default_factory=list)
    disk_offset: int = 0
    pending_writes: list[tuple[Entry, ...]] = field(default_factory=list)
    disk_generation: int = 0
    snapshot: SimSnapshot | None = None  # the newest durable snapshot file
    staged: SimSnapshot | None = None  # a received InstallSnapshot file, verified, staged
    snapshot_writing: bool = False
    install: Install | None = None  # RestoreSnapshot in progress: the node is busy
    backlog: list[Callable[[], None]] = field(default_factory=list)  # waiting for the install
    incarnation: int = 0  # bumped at every boot: a dead process's callbacks are void
    state: dict[str, str] = field(default_factory=dict)
    applied_index: int = 0
    applied_term: int = 0
    commit_seen: int = 0  # highest commit index of this incarnation: it never goes back
    waiting_reads: list[tuple[int, int]] = field(default_factory=list)  # (read_index, op id)
    timer_token: int = 0
    uuid: str = ""  # the data directory's uuid: a new one at every wipe
    wipes: int = 0
    # A joining node (its config lists itself as a learner, status Joining): it boots with an
    # empty membership unless its disk names one.
    joining: bool = False
    # What its wiped data directories held, (index -> term) and the newest snapshot's index:
    # counted as still held for the quorum checks until the node has durably appended a
    # binding of its new uuid (thesis-style argument in docs/architecture.md: from then on its
    # log holds everything its old acknowledgements could have helped commit).
    lost_entries: dict[int, int] = field(default_factory=dict)
    lost_snapshot: int = 0
    # The uuid of each peer its runtime has stepped a PeerIdentity for (this incarnation).
    known_identity: dict[int, str] = field(default_factory=dict)
    identity_delay: tuple[float, float] | None = None  # for its next start only

    def local_time(self, true_now: float) -> float:
        return true_now * self.rate

    @property
    def disk_last(self) -> int:
        return self.disk_offset + len(self.disk_log)

    def disk_entry(self, index: int) -> Entry | None:
        """The durable entry at ``index``, if the disk log holds it."""
        if self.disk_offset < index <= self.disk_last:
            return self.disk_log[index - self.disk_offset - 1]
        return None

    def durably_holds(self, index: int, entry: Entry) -> bool:
        """Is committed ``entry`` durable here, in the log or covered by the snapshot file?
        (Snapshot images are checked against the committed prefix when taken.)"""
        covered = self.snapshot is not None and self.snapshot.index >= index
        return covered or self.disk_entry(index) == entry


def log_entries(log: RaftLog, first: int, last: int) -> list[Entry]:
    """Entries ``first..last`` the log still holds (what compaction left: from its first index)."""
    return log.slice(max(first, log.first_index), last)


def _logs_agree(a: RaftLog, b: RaftLog, upto: int) -> bool:
    """Do two logs agree through ``upto`` wherever both can tell: the entries both hold, and
    the term at the later of the two offsets (the snapshot the other was compacted to)?"""
    if min(a.last_index, b.last_index) < upto:
        return False
    first = max(a.first_index, b.first_index)
    if first - 1 > upto:
        return True  # both compacted past it: their snapshots are checked against the log
    if a.term_at(first - 1) != b.term_at(first - 1):
        return False
    return a.slice(first, upto) == b.slice(first, upto)


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


def encode_cas(key: str, expected: str | None, value: str) -> bytes:
    """Write ``value`` if ``key`` holds ``expected`` (None: absent): the KV API's CAS."""
    return json.dumps({"cas": [key, expected, value]}).encode()


def encode_txn(
    compares: list[tuple[str, str | None]],
    success: list[tuple[str, str, str | None]],
    failure: list[tuple[str, str, str | None]],
) -> bytes:
    """etcd-like txn: if every ``(key, value)`` compare holds (None: absent), the ``success``
    ops ``(kind, key, value)`` (put/delete/get) run, else the ``failure`` ops."""
    return json.dumps({"txn": [compares, success, failure]}).encode()


def apply_command(state: dict[str, str], data: bytes) -> tuple[bool, tuple[str | None, ...]]:
    """The simulated state machine: apply a put, cas or txn to ``state``; returns whether the
    compare held (a put: True) and what the txn's gets returned."""
    if not data.startswith(b"{"):
        key, value = decode_put(data)
        state[key] = value
        return True, ()
    command = json.loads(data)
    if "cas" in command:
        key, expected, value = command["cas"]
        if state.get(key) != expected:
            return False, ()
        state[key] = value
        return True, ()
    compares, success, failure = command["txn"]
    held = all(state.get(key) == value for key, value in compares)
    reads = []
    for kind, key, value in success if held else failure:
        if kind == "put":
            state[key] = value
        elif kind == "delete":
            state.pop(key, None)
        else:
            reads.append(state.get(key))
    return held, tuple(reads)


class Cluster:
    def __init__(
        self,
        size: int = 3,
        *,
        seed: int = 0,
        durability: Durability = Durability.DISK_FIRST,
        drift: float = 0.0,
        disk_latency_ms: tuple[float, float] = (0.1, 3.0),
        snapshot_threshold: int = 0,
        snapshot_retained: int = 0,
        cluster_id: str = "",
        identity_delay_ms: tuple[float, float] = (0.2, 2.0),
        **raft_overrides: Any,
    ) -> None:
        """``snapshot_threshold``: a node snapshots once it has applied that many entries past
        its last snapshot (0: only when asked, ``take_snapshot``); ``snapshot_retained``: the
        entries before the snapshot index its log keeps (``retained_log_entries``).
        ``cluster_id``: "" runs the cluster on the implicit membership forever, as before
        issue 14 (no ``PeerIdentity`` is stepped); any other value is every node's bootstrap
        cluster id, so the first leader makes the membership explicit and ``change``,
        ``add_node`` and ``wipe`` are meaningful. ``identity_delay_ms``: how long after a
        process starts its peers' runtimes step its ``PeerIdentity`` (a connection's set-up),
        unless one of its messages reaches them first (the identity then comes just before)."""
        self.rng = random.Random(seed)
        self.initial_ids = tuple(range(1, size + 1))
        # Every node process the simulation has (added nodes too); members or not.
        self.ids = self.initial_ids
        self.cluster_id = cluster_id
        self.identity_delay_ms = identity_delay_ms
        # Granted votes delivered: (candidate, term) -> voters.
        self.grants: dict[tuple[int, int], set[int]] = {}
        self.heard_at: dict[tuple[int, int], float] = {}
        """(node, peer): the node's local time when it last stepped a message from peer."""
        # Memberships of the committed log: (index of the CONFIG entry, membership).
        self.committed_memberships: list[tuple[int, Membership]] = []
        self.identity_messages: dict[int, tuple[Message, str]] = {}  # id -> (message, src uuid)
        self.durability = durability
        self.raft_overrides = raft_overrides
        self.disk_latency_ms = disk_latency_ms
        self.snapshot_threshold = snapshot_threshold
        self.snapshot_retained = snapshot_retained
        # Moments of the snapshot machinery a test (or the generator) wants to act at: called
        # with (moment, node); a hook returning True is removed. Moments: "snapshot-written"
        # (file renamed in, SnapshotTaken not yet stepped), "snapshot-taken" (stepped, disk
        # not yet compacted), "snapshot-compacted", "install-staged" (file staged, not yet
        # stepped), "install-start", "install-renamed", "install-reset", "install-done";
        # "became-leader" (RoleChanged to leader carried out; the step's later effects not yet).
        self.hooks: list[Callable[[str, SimNode], bool]] = []
        self._images: dict[int, tuple[Message, SimSnapshot]] = {}  # InstallSnapshot payloads
        # The state machine as of each committed index (index 0: empty), as applied anywhere.
        self.committed_states: list[dict[str, str]] = [{}]
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
        self.drift = drift
        for node_id in self.ids:
            rate = 1.0 + self.rng.uniform(-drift, drift) if drift else 1.0
            self.nodes[node_id] = SimNode(node_id, rate, uuid=f"uuid-{node_id}-0")
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
            node_id=node_id,
            voters=self.initial_ids,
            durability=self.durability,
            **self.raft_overrides,
        )

    def _boot_membership(self, node: SimNode) -> tuple[Membership | None, int]:
        """What the runtime passes ``RaftNode``: the snapshot file's membership, else (a
        joining node) an empty one, else None (the implicit one, from ``initial_cluster``).
        The core replays the CONFIG entries of the log itself."""
        snap = node.snapshot
        if snap is not None and snap.membership is not None:
            return snap.membership, snap.index
        if node.joining:
            return Membership("", ()), 0
        return None, 0

    def _boot(self, node: SimNode) -> None:
        """Start a node from its disk, as storage recovery does: the newest snapshot, then the
        disk log after it (the suffix if the log holds the snapshot's entry or starts right
        after it; a log that conflicts with or ends before the snapshot is reset)."""
        term, voted_for = node.hard_state
        snap = node.snapshot
        if snap is not None:
            if node.disk_offset > snap.index:
                raise InvariantViolation(
                    f"t={self.now}: node {node.id}'s disk log starts at {node.disk_offset + 1}, "
                    f"after its snapshot at {snap.index}: entries lost between them"
                )
            held = node.disk_entry(snap.index)
            if node.disk_offset == snap.index or (held is not None and held.term == snap.term):
                del node.disk_log[: snap.index - node.disk_offset]
            else:
                node.disk_log = []
            node.disk_offset = snap.index
        node.incarnation += 1
        node.install = None
        node.staged = None
        node.backlog = []
        node.snapshot_writing = False
        membership, membership_index = self._boot_membership(node)
        node.raft = RaftNode(
            self.config_for(node.id),
            random.Random(self.rng.random()),
            term=term,
            voted_for=voted_for,
            entries=list(node.disk_log),
            now_ms=node.local_time(self.now),
            snapshot_index=snap.index if snap else 0,
            snapshot_term=snap.term if snap else 0,
            membership=membership,
            membership_index=membership_index,
            uuid=node.uuid,
            bootstrap_cluster_id=self.cluster_id,
        )
        node.known_identity = {}
        node.state = dict(snap.state) if snap else {}
        node.applied_index = snap.index if snap else 0
        node.applied_term = snap.term if snap else 0
        node.commit_seen = 0
        node.waiting_reads = []
        self._schedule_timer(node)
        if self.cluster_id:
            self._introduce(node)

    # ------------------------------------------------------------------ identities

    def _introduce(self, node: SimNode) -> None:
        """A (re)started process connects to its peers and they to it: each side's runtime
        steps the other's ``PeerIdentity`` once the connection is up."""
        incarnation = node.incarnation
        low, high = node.identity_delay or self.identity_delay_ms
        node.identity_delay = None
        for other in self.nodes.values():
            if other.id == node.id:
                continue
            # Fixed draws per pair would do as well; the rng keeps runs reproducible.
            there = self.now + self.rng.uniform(low, high)
            back = self.now + self.rng.uniform(0.2, 2.0)

            def _there(o: SimNode = other, u: str = node.uuid) -> None:
                # No connection over a cut link (its first message, later, brings the Hello).
                if (node.id, o.id) not in self.cut:
                    self._identify(o, node.id, u)

            def _back(o: SimNode = other) -> None:
                alive = node.raft is not None and node.incarnation == incarnation
                if alive and (o.id, node.id) not in self.cut:
                    self._identify(node, o.id, o.uuid)

            self.call_at(there, _there)

            self.call_at(back, _back)

    def _identify(self, node: SimNode, peer: int, uuid: str) -> None:
        """Step ``PeerIdentity(peer, uuid)`` at ``node`` unless its runtime knows it already."""
        if node.raft is None or node.known_identity.get(peer) == uuid:
            return
        if uuid != self.nodes[peer].uuid:
            return  # that data directory is gone: no new connection will name it
        node.known_identity[peer] = uuid
        self._count("peer-identity")
        self.step(node.id, [PeerIdentity(peer, uuid)])

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
                self._deliver(node, message)
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

    def _deliver(self, node: SimNode, message: Message) -> None:
        if node.raft is None:
            return
        if node.install is not None:  # busy restoring: the message waits in the inbox
            node.backlog.append(lambda: self._deliver(node, message))
            return
        if isinstance(message, RequestVoteResponse) and message.granted and not message.pre_vote:
            self.grants.setdefault((message.dst, message.term), set()).add(message.src)
        if self.cluster_id:
            # The runtime steps a connection's PeerIdentity before any of its messages.
            origin = self.identity_messages.get(id(message))
            if origin is not None and node.known_identity.get(message.src) != origin[1]:
                self._identify(node, message.src, origin[1])
                if node.raft is None or node.install is not None:
                    if node.install is not None:
                        node.backlog.append(lambda: self._deliver(node, message))
                    return
        if isinstance(message, InstallSnapshot):
            # The runtime steps the message only once the whole file is received, verified
            # and staged on disk.
            image = self._images[id(message)][1]
            node.staged = image
            self._hook("install-staged", node)
            if node.raft is None or node.staged is not image:
                return  # crashed with the file staged: the temporary is removed at boot
        self.step(node.id, [Receive(message)])

    def step(self, node_id: int, events: Iterable[Event]) -> None:
        node = self.nodes[node_id]
        assert node.raft is not None
        if node.install is not None:
            # A RestoreSnapshot barrier is being carried out: nothing else is stepped until
            # it completes (the runtime awaits it).
            pending = list(events)
            node.backlog.append(lambda: self._step_if_alive(node, pending))
            return
        raft = node.raft
        leading = raft.role is Role.LEADER
        term, commit, membership = raft.term, raft.commit_index, raft.membership
        local = node.local_time(self.now)
        events = list(events)
        effects = raft.step_many(local, events)
        self.steps += 1
        proposed_change = False
        for event in events:
            if isinstance(event, Receive):
                self.heard_at[(node_id, event.message.src)] = local
            proposed_change = proposed_change or isinstance(event, ProposeConfChange)
        if leading and raft.term == term and raft.commit_index > commit:
            self._check_commit_quorum(node, raft, membership)
        if proposed_change and raft.membership is not membership:
            self._check_strict_reconfiguration(node, raft, membership, local)
        self._carry_out_all(node, effects)
        self._check_node(node)

    def _step_if_alive(self, node: SimNode, events: list[Event]) -> None:
        if node.raft is not None:
            self.step(node.id, events)

    def _carry_out_all(self, node: SimNode, effects: list[Effect]) -> None:
        for pos, effect in enumerate(effects):
            if isinstance(effect, RestoreSnapshot):
                self._begin_install(node, effect, effects[pos + 1 :])
                return
            self._carry_out(node, effect)
            if node.raft is None:
                return  # a hook crashed it
        node.staged = None  # no RestoreSnapshot in this step: the staged file is discarded
        self._schedule_timer(node)

    def _hook(self, moment: str, node: SimNode) -> None:
        for hook in list(self.hooks):
            if hook in self.hooks and hook(moment, node):
                self.hooks.remove(hook)

    # ------------------------------------------------------------------ snapshots

    def take_snapshot(self, node_id: int) -> None:
        """Snapshot ``node_id``'s state machine now (what a threshold hit or ``GET /snapshot``
        does): the write completes after a disk latency, then ``SnapshotTaken``."""
        node = self.nodes[node_id]
        if node.raft is None or node.install is not None or node.snapshot_writing:
            return
        if node.snapshot is not None and node.snapshot.index >= node.applied_index:
            return
        if node.applied_index == 0:
            return
        self._count("snapshot")
        membership = node.raft.membership_at(node.applied_index)
        image = SimSnapshot(
            node.applied_index,
            node.applied_term,
            tuple(sorted(node.state.items())),
            None if membership.implicit else membership,
        )
        self._check_image(node, image, "took")
        node.snapshot_writing = True
        incarnation = node.incarnation

        def alive() -> bool:
            return node.raft is not None and node.incarnation == incarnation

        def taken() -> None:
            if not alive():
                return
            compact_through = max(0, image.index - self.snapshot_retained)
            self.step(node.id, [SnapshotTaken(image.index, image.term, compact_through)])
            self._hook("snapshot-taken", node)
            if alive():
                self._compact_disk(node, min(compact_through, image.index))
                self._hook("snapshot-compacted", node)

        def written() -> None:
            if not alive():
                return  # the process died mid-write: the temporary file never got renamed
            node.snapshot_writing = False
            if node.snapshot is None or image.index > node.snapshot.index:
                node.snapshot = image  # renamed in: atomic
            self._hook("snapshot-written", node)
            if not alive():
                return
            if node.install is not None:
                node.backlog.append(taken)
            else:
                taken()

        low, high = self.disk_latency_ms
        self.call_at(self.now + self.rng.uniform(low, high * 5), written)

    def send_snapshot(self, src: int, dst: int) -> None:
        """Put an InstallSnapshot of ``src``'s newest snapshot file (in ``src``'s current term)
        on the network to ``dst``, as if ``src``'s core had asked for it."""
        snap = self.nodes[src].snapshot
        assert snap is not None, f"node {src} has no snapshot"
        self._transmit(InstallSnapshot(self.raft(src).term, src, dst, snap.index, snap.term))

    @staticmethod
    def _membership_bytes(snap: SimSnapshot) -> bytes:
        return b"" if snap.membership is None else encode_membership(snap.membership)

    def _maybe_snapshot(self, node: SimNode) -> None:
        last = node.snapshot.index if node.snapshot is not None else 0
        if self.snapshot_threshold and node.applied_index - last >= self.snapshot_threshold:
            self.take_snapshot(node.id)

    def _check_image(self, node: SimNode, image: SimSnapshot, verb: str) -> None:
        """A snapshot never covers uncommitted entries, and its image is the state machine
        of the committed prefix at its index (state machine safety across snapshots)."""
        if image.index > len(self.committed):
            raise InvariantViolation(
                f"t={self.now}: node {node.id} {verb} a snapshot at {image.index}, past the "
                f"committed log ({len(self.committed)})"
            )
        if image.index and self.committed[image.index - 1].term != image.term:
            raise InvariantViolation(
                f"t={self.now}: node {node.id} {verb} a snapshot at {image.index} of term "
                f"{image.term}, but the committed entry there is of term "
                f"{self.committed[image.index - 1].term}"
            )
        if dict(image.state) != self.committed_states[image.index]:
            raise InvariantViolation(
                f"t={self.now}: node {node.id} {verb} a snapshot at {image.index} whose image "
                f"differs from the committed state there"
            )
        committed = self.committed_membership(image.index)
        if image.membership != (None if committed.implicit else committed):
            raise InvariantViolation(
                f"t={self.now}: node {node.id} {verb} a snapshot at {image.index} whose "
                f"membership {image.membership} is not the committed log's there ({committed})"
            )

    def _compact_disk(self, node: SimNode, through: int) -> None:
        if through <= node.disk_offset:
            return
        if through >= node.disk_last:
            node.disk_log = []
        else:
            del node.disk_log[: through - node.disk_offset]
        node.disk_offset = through

    def _attach_image(self, message: InstallSnapshot) -> InstallSnapshot:
        """The leader's runtime streams its newest snapshot file; the message the follower's
        runtime steps names that file's index and term."""
        snap = self.nodes[message.src].snapshot
        if snap is None or snap.index < message.last_index:
            raise InvariantViolation(
                f"t={self.now}: node {message.src} sends a snapshot through {message.last_index} "
                f"to {message.dst}, but its newest file is "
                f"{'none' if snap is None else snap.index}"
            )
        sent = attrs.evolve(
            message,
            last_index=snap.index,
            last_term=snap.term,
            membership=self._membership_bytes(snap),
        )
        self._images[id(sent)] = (sent, snap)
        self._count("install-snapshot")
        return sent

    def _snapshot_status(self, message: InstallSnapshot, ok: bool, at: float) -> None:
        """The leader's runtime reports the transfer's end to its core (this incarnation's:
        a restarted process knows of no transfer)."""
        leader = self.nodes[message.src]
        incarnation = leader.incarnation

        def report() -> None:
            if leader.raft is not None and leader.incarnation == incarnation:
                self.step(leader.id, [SnapshotStatus(message.dst, ok)])

        self.call_at(max(self.now, at), report)

    def _begin_install(self, node: SimNode, effect: RestoreSnapshot, rest: list[Effect]) -> None:
        image = node.staged
        if image is None or (image.index, image.term) != (effect.index, effect.term):
            raise InvariantViolation(
                f"t={self.now}: node {node.id} asked to restore a snapshot at "
                f"{effect.term}/{effect.index}, but the staged file is "
                f"{'none' if image is None else f'{image.term}/{image.index}'}"
            )
        self._check_image(node, image, "installs")
        if effect.membership != self._membership_bytes(image):
            raise InvariantViolation(
                f"t={self.now}: node {node.id} restores the snapshot at {image.index} with "
                f"membership {effect.membership!r}, but the file's is {image.membership}"
            )
        self._count("restore-snapshot")
        node.staged = None
        node.install = Install(image, list(rest))
        incarnation = node.incarnation
        self._hook("install-start", node)
        low, high = self.disk_latency_ms
        times = sorted(self.now + self.rng.uniform(low, high) for _ in range(3))

        def alive() -> bool:
            return node.raft is not None and node.incarnation == incarnation

        def renamed() -> None:
            if alive():
                if node.snapshot is None or image.index > node.snapshot.index:
                    node.snapshot = image
                self._hook("install-renamed", node)

        def reset() -> None:
            if alive():
                # The WAL reset drops every entry: committed ones past the snapshot must still
                # be durable on a majority elsewhere (as with any truncation).
                if node.disk_last > image.index:
                    self._check_truncation(node, max(image.index, node.disk_offset) + 1)
                node.disk_log = []
                node.disk_offset = image.index
                node.pending_writes = []
                node.disk_generation += 1
                self._hook("install-reset", node)

        def done() -> None:
            if alive():
                self._finish_install(node)

        self.call_at(times[0], renamed)
        self.call_at(times[1], reset)
        self.call_at(times[2], done)

    def _finish_install(self, node: SimNode) -> None:
        install = node.install
        assert install is not None and node.raft is not None
        image = install.image
        if image.index < node.applied_index:
            raise InvariantViolation(
                f"t={self.now}: node {node.id} restored a snapshot at {image.index} over its "
                f"state at {node.applied_index}: its state machine went back"
            )
        node.state = dict(image.state)  # swapped in at once
        node.applied_index = image.index
        node.applied_term = image.term
        node.install = None
        self._complete_ops(node)
        self._serve_reads(node)
        incarnation = node.incarnation
        self._hook("install-done", node)
        if node.raft is None or node.incarnation != incarnation:
            return
        self._carry_out_all(node, install.rest)
        self._check_node(node)
        if node.raft is not None and node.incarnation == incarnation:
            # The runtime's storage reports the reset log as synced through the snapshot's
            # entry, so its driver may step this once after a restore: it must be harmless.
            self.step(node.id, [Persisted(image.index, image.term)])
        while node.backlog and node.install is None and node.raft is not None:
            node.backlog.pop(0)()

    def _carry_out(self, node: SimNode, effect: Effect) -> None:
        """Carry out one effect as the runtime would. The match is exhaustive over ``Effect``:
        an effect type added to the core and not handled here fails mypy (``assert_never``)
        and, at run time, the step, instead of being dropped silently (issue 12 item 1)."""
        match effect:
            case Send(message=message):
                if isinstance(message, (RequestVote, RequestVoteResponse)):
                    self._check_vote(node, message)
                self._transmit(message)
            case PersistHardState(term=term, voted_for=voted_for):
                node.hard_state = (term, voted_for)  # synchronous, like the runtime
            case PersistEntries(entries=entries):
                node.pending_writes.append(entries)
                if len(node.pending_writes) == 1:
                    self._schedule_disk(node)
            case Apply(entries=entries):
                self._apply(node, entries)
                self._maybe_snapshot(node)
            case ReadReady(request_id=request_id, read_index=read_index):
                node.waiting_reads.append((read_index, request_id))
                self._serve_reads(node)
            case ReadFailed(request_id=request_id):
                self._finish(request_id, ok=False)
            case Proposed(request_id=request_id, index=index, term=term):
                self._ops_waiting[request_id] = (node.id, index, term)
            case ProposalRejected(request_id=request_id):
                self._finish(request_id, ok=False)
            case ConfChangeRejected(request_id=request_id, code=code):
                self.history[request_id].code = code
                self._count(f"conf-rejected-{code}")
                self._finish(request_id, ok=False)
            case MembershipChanged():
                self._count("membership-changed")
            case RoleChanged(role=role, term=term):
                if role is Role.LEADER:
                    self._check_new_leader(node, term)
                    self._hook("became-leader", node)
            case RestoreSnapshot():
                raise AssertionError("a barrier: carried out by _carry_out_all")
            case _:
                assert_never(effect)

    def _transmit(self, message: Message) -> None:
        install = isinstance(message, InstallSnapshot)
        lost_at = 0.0
        if isinstance(message, InstallSnapshot):
            message = self._attach_image(message)
            # A transfer that is lost ends, for the leader's runtime, when it gives up.
            lost_at = self.now + self.rng.uniform(20.0, 400.0)
        self._mark_origin(message)
        if (message.src, message.dst) in self.cut:
            if isinstance(message, InstallSnapshot):
                self._snapshot_status(message, False, lost_at)
            return
        rule = next((r for r in self.rules if r.matches(message)), None)
        extra = 0.0
        if rule is not None:
            if rule.remaining is not None:
                rule.remaining -= 1
            self._count(f"{rule.action}-{type(message).__name__}")
            if rule.action in ("drop", "hold"):
                if rule.action == "hold":
                    self.held.append(message)  # may still land, long after
                if isinstance(message, InstallSnapshot):
                    self._snapshot_status(message, False, lost_at)
                return
            extra = rule.delay_ms
        faults = self.faults
        if faults.drop and self.rng.random() < faults.drop:
            if isinstance(message, InstallSnapshot):
                self._snapshot_status(message, False, lost_at)
            return
        copies = 2 if faults.duplicate and self.rng.random() < faults.duplicate else 1
        for copy in range(copies):
            at = self.now + self.rng.uniform(faults.delay_min_ms, faults.delay_max_ms) + extra
            if install:
                at += self.rng.uniform(0.0, 10.0)  # the file's transfer time
            if rule is not None:
                # A stalled link delivers late but in order.
                link = (message.src, message.dst)
                at = max(at, self._link_last.get(link, 0.0) + 1e-3)
                self._link_last[link] = at
            self._push(at, "deliver", message)
            if isinstance(message, InstallSnapshot) and copy == 0:
                # The stream completed: reported around the moment the follower steps it.
                self._snapshot_status(message, True, at + self.rng.uniform(-1.0, 1.0))

    def _schedule_disk(self, node: SimNode) -> None:
        low, high = self.disk_latency_ms
        self._push(self.now + self.rng.uniform(low, high), "disk", (node.id, node.disk_generation))

    def _write_durably(self, node: SimNode, entries: tuple[Entry, ...]) -> None:
        """Entries reach the disk log, truncating it first from ``entries[0].index``. What a
        snapshot already covers (compacted while the write was in flight) is not written."""
        for entry in entries:
            if entry.index > node.disk_offset:
                break
            if entry.index <= len(self.committed) and self.committed[entry.index - 1] != entry:
                raise InvariantViolation(
                    f"t={self.now}: node {node.id} writes {entry} over committed "
                    f"{self.committed[entry.index - 1]}"
                )
        entries = tuple(e for e in entries if e.index > node.disk_offset)
        if not entries:
            return
        first = entries[0].index
        if first <= node.disk_last:
            self._check_truncation(node, first)
            del node.disk_log[first - node.disk_offset - 1 :]
        assert node.disk_last == first - 1, "disk writes must arrive in order"
        node.disk_log.extend(entries)

    def _complete_disk_write(self, node: SimNode) -> None:
        entries = node.pending_writes.pop(0)
        self._write_durably(node, entries)
        if node.pending_writes:
            self._schedule_disk(node)
        last = entries[-1]
        self.step(node.id, [Persisted(last.index, last.term)])

    # ------------------------------------------------------------------ state machine and clients

    def _apply(self, node: SimNode, entries: tuple[Entry, ...]) -> None:
        for entry in entries:
            if entry.index != node.applied_index + 1:
                raise InvariantViolation(
                    f"t={self.now}: node {node.id} applied {entry.index} out of order "
                    f"(applied {node.applied_index})"
                )
            self._check_applied(node, entry)
            node.applied_index = entry.index
            node.applied_term = entry.term
            if entry.kind is EntryKind.COMMAND:
                apply_command(node.state, entry.data)
        # State machine safety across snapshots and logs: whatever mix of restored image and
        # applied entries got it here, the node's state is the committed prefix's.
        if node.state != self.committed_states[node.applied_index]:
            raise InvariantViolation(
                f"t={self.now}: node {node.id}'s state machine at {node.applied_index} differs "
                f"from the committed log's"
            )
        self._complete_ops(node)
        self._serve_reads(node)

    def _complete_ops(self, node: SimNode) -> None:
        """Writes proposed here complete when their own index is applied here (by an entry or
        a restored snapshot); ok if the committed entry there is theirs."""
        for op_id, (node_id, index, term) in list(self._ops_waiting.items()):
            if node_id == node.id and index <= node.applied_index:
                del self._ops_waiting[op_id]
                ok = self.committed[index - 1].term == term
                op = self.history[op_id]
                if ok and op.command:
                    # What the entry's apply answered, from the state before it.
                    before = dict(self.committed_states[index - 1])
                    op.succeeded, op.reads = apply_command(before, op.command)
                self._finish(op_id, ok=ok)

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

    def cas(self, node_id: int, key: str, expected: str | None) -> int:
        """Propose "``key`` = <fresh unique value> if it holds ``expected``" at ``node_id``;
        returns the op id."""
        self._value_counter += 1
        value = f"v{self._value_counter}"
        return self._propose_op(
            Op("cas", key, value, node_id, self.now, expected=expected),
            encode_cas(key, expected, value),
        )

    def txn(
        self,
        node_id: int,
        compares: list[tuple[str, str | None]],
        success: list[tuple[str, str]],
        failure: list[tuple[str, str]] = (),  # type: ignore[assignment]
    ) -> int:
        """Propose a txn at ``node_id``; ops are ``(kind, key)``, kind "put" (a fresh unique
        value) or "get" ("delete" applies too, but ``check_history`` assumes keys are never
        deleted). Returns the op id."""

        def values(ops: list[tuple[str, str]]) -> list[tuple[str, str, str | None]]:
            out: list[tuple[str, str, str | None]] = []
            for kind, key in ops:
                value = None
                if kind == "put":
                    self._value_counter += 1
                    value = f"v{self._value_counter}"
                out.append((kind, key, value))
            return out

        command = encode_txn(compares, values(success), values(list(failure)))
        return self._propose_op(Op("txn", "", None, node_id, self.now), command)

    def _propose_op(self, op: Op, command: bytes) -> int:
        op.command = command
        op_id = len(self.history)
        self.history.append(op)
        if self.nodes[op.node].raft is None:
            self._finish(op_id, ok=False)
        else:
            self.step(op.node, [Propose(op_id, command)])
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
                self._write_durably(node, node.pending_writes.pop(0))
        node.raft = None
        node.install = None  # a crash mid-install: the disk is as far as the install got
        node.staged = None
        node.backlog = []
        node.snapshot_writing = False
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
        self._mark_origin(message)
        self._push(self.now + delay_ms, "deliver", message)

    def _mark_origin(self, message: Message) -> None:
        """Remember which data directory (uuid) sent ``message``: its connection's Hello."""
        if self.cluster_id:
            sender = self.nodes.get(message.src)
            if sender is not None:
                self.identity_messages[id(message)] = (message, sender.uuid)

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

    # ------------------------------------------------------------------ membership

    def committed_membership(self, index: int | None = None) -> Membership:
        """The membership of the committed log as of ``index`` (default: its end): its last
        CONFIG entry at or below ``index``, else the implicit one of the initial nodes."""
        for at, membership in reversed(self.committed_memberships):
            if index is None or at <= index:
                return membership
        return implicit_membership(self.initial_ids)

    def change(self, node_id: int, change: ConfChange) -> int:
        """Step ``ProposeConfChange`` at ``node_id`` (what the runtime does for an admin
        request or a JoinRequest); returns the op id. The op completes ok once the CONFIG
        entry applies there, or fails (``code`` set if the core refused it)."""
        op_id = len(self.history)
        what = f"{change.kind.name} {change.id}{' ' + repr(change.uuids) if change.uuids else ''}"
        self.history.append(Op("conf", what, None, node_id, self.now))
        self._count(f"conf-{change.kind.name}")
        if self.nodes[node_id].raft is None:
            self._finish(op_id, ok=False)
        else:
            self.step(node_id, [ProposeConfChange(op_id, change)])
        return op_id

    @staticmethod
    def address(node_id: int) -> str:
        """A node's Raft address, as carried in the membership (opaque to the core)."""
        return f"sim-{node_id}:7000"

    def add_node(self, node_id: int | None = None, *, start: bool = True) -> int:
        """A new node process with empty storage whose config says it joins (it boots with an
        empty membership): a fresh id (default: one past the highest), or a former member's
        id again, in which case that node's disk stays as it is (``wipe`` it first to model
        a new machine). Started now unless ``start`` is False; returns its id."""
        if node_id is None:
            node_id = max(self.ids) + 1
        node = self.nodes.get(node_id)
        if node is None:
            rate = 1.0 + self.rng.uniform(-self.drift, self.drift) if self.drift else 1.0
            node = self.nodes[node_id] = SimNode(node_id, rate, uuid=f"uuid-{node_id}-0")
            self.ids = (*self.ids, node_id)
            self._count("node-added")
        node.joining = True
        if start and node.raft is None:
            self._boot(node)
        return node_id

    def wipe(
        self,
        node_id: int,
        *,
        down_ms: float = 0.0,
        joining: bool | None = None,
        identity_delay_ms: tuple[float, float] | None = None,
    ) -> None:
        """The node's process dies, its data directory is emptied (hard state, log, snapshots)
        and it starts again ``down_ms`` later under a new uuid, with the membership its config
        gives (implicit, or empty if ``joining``); its peers step its new ``PeerIdentity``
        ``identity_delay_ms`` after that start (default ``Cluster.identity_delay_ms``) or
        just before its first message reaches them. What the old directory held is
        remembered for the quorum checks until the node durably appends a binding of its new
        uuid."""
        node = self.nodes[node_id]
        node.identity_delay = identity_delay_ms
        self._count("wipe")
        if node.raft is not None and self.durability is Durability.MEM_FIRST:
            # MemFirst acknowledges what is appended in memory: all of it was "held".
            log = node.raft.log
            for entry in log.slice(log.first_index, log.last_index):
                node.lost_entries[entry.index] = entry.term
        self.crash(node_id, lose_unflushed=True)
        for entry in node.disk_log:
            node.lost_entries[entry.index] = entry.term
        if node.snapshot is not None:
            node.lost_snapshot = max(node.lost_snapshot, node.snapshot.index)
        node.hard_state = (0, 0)
        node.disk_log = []
        node.disk_offset = 0
        node.snapshot = None
        node.state = {}
        node.applied_index = node.applied_term = 0
        node.wipes += 1
        node.uuid = f"uuid-{node_id}-{node.wipes}"
        if joining is not None:
            node.joining = joining
        if down_ms <= 0:
            self.restart(node_id)
        else:
            wipes = node.wipes
            self.call_at(
                self.now + down_ms, lambda: self.restart(node_id) if node.wipes == wipes else None
            )

    def amnesiac(self) -> set[int]:
        """Nodes that lost a data directory and have not yet recovered (``_recovered``: a new
        one durably re-bound, as a voter or a learner, whose log holds again what the old one
        helped commit)."""
        return {
            n.id
            for n in self.nodes.values()
            if (n.lost_entries or n.lost_snapshot) and not self._recovered(n)
        }

    def _implicit(self, node: SimNode) -> bool:
        """Does the node run on (or would it restart with) the implicit membership?"""
        if node.raft is not None:
            return node.raft.membership.implicit
        if node.joining:
            return False
        if any(e.kind is EntryKind.CONFIG for e in node.disk_log):
            return False
        return node.snapshot is None or node.snapshot.membership is None

    def may_wipe(self, node_id: int) -> bool:
        """Would wiping ``node_id`` now leave at most a minority of the voters of every
        configuration in play amnesiac (wiped, not yet re-bound)? Beyond that the cluster has
        lost the memory of a majority of its voters, as any Raft whose majority loses its
        disks: the generator wipes within that bound only. (Wipes during the bootstrap,
        while voters are still implicit, are drawn: the core's bootstrap election needs
        every initial voter, fafa45f; before it, the generator also kept out of that window.)"""
        amnesiac = self.amnesiac()
        for membership in self._configs_in_play():
            voters = set(membership.voters)
            lost = self._amnesiac_in(membership, amnesiac) | ({node_id} & voters)
            if len(lost) > (len(voters) - 1) // 2:
                return False
        return True

    def _amnesiac_in(self, membership: Membership, amnesiac: set[int]) -> set[int]:
        """Voters of ``membership`` whose memory it cannot count on: the amnesiac ones, and
        those it binds to a data directory they no longer run on (wiped, then re-bound only
        by a later configuration, which may never commit). The campaign once wiped a voter
        while another, re-bound as a learner by an uncommitted BIND, was still bound to its
        old directory in the configuration two live voters held: half of that
        configuration's voters had lost their disks, and no leader could be elected."""
        lost = amnesiac & set(membership.voters)
        if not membership.implicit:
            for m in membership.members:
                node = self.nodes.get(m.id)
                if m.voter and m.uuid and node is not None and m.uuid != node.uuid:
                    lost.add(m.id)
        return lost

    def may_remove(self, node_id: int) -> bool:
        """Would removing ``node_id`` keep a majority of the voters left remembering (neither
        amnesiac nor implicit) in every configuration in play? Otherwise the cluster that
        remains cannot elect a leader (a wiped voter not yet re-bound never votes): the
        generator does not remove then (as etcd's strict reconfiguration check refuses a
        change that loses quorum)."""
        amnesiac = self.amnesiac()
        for membership in self._configs_in_play():
            voters = set(membership.voters) - {node_id}
            implicit = {v for v in voters if v in self.nodes and self._implicit(self.nodes[v])}
            lost = (self._amnesiac_in(membership, amnesiac) | implicit) & voters
            if len(lost) > (len(voters) - 1) // 2:
                return False
        return True

    def _configs_in_play(self) -> list[Membership]:
        """The committed log's latest membership and those nodes appended after it (in effect
        there: a leader counts by its own, committed or not; a node down has its disk's)."""
        since = self.committed_memberships[-1][0] if self.committed_memberships else 0
        configs = [self.committed_membership()]
        for n in self.nodes.values():
            if n.raft is not None:
                if n.raft.membership_index > since:
                    configs.append(n.raft.membership)
                continue
            for entry in reversed(n.disk_log):  # a node down: what it restarts with
                if entry.kind is EntryKind.CONFIG:
                    if entry.index > since:
                        configs.append(decode_membership(entry.data))
                    break
        return configs

    def _durably_bound(self, node: SimNode) -> bool:
        """Does the node's durable state name a membership binding it to its own uuid?"""
        membership = None
        for entry in reversed(node.disk_log):
            if entry.kind is EntryKind.CONFIG:
                membership = decode_membership(entry.data)
                break
        if membership is None and node.snapshot is not None:
            membership = node.snapshot.membership
        member = membership.get(node.id) if membership is not None else None
        return member is not None and member.uuid == node.uuid

    def _recovered(self, node: SimNode) -> bool:
        """Has a wiped node durably re-bound its new uuid and does its durable state hold
        again every committed entry its lost directory held? A binding alone is not enough:
        a stale leader (CheckQuorum off, cut off while the others committed without it) may
        bind a wiped node with a CONFIG entry that will never commit, in a log that lacks
        what the lost directory helped commit (the campaign of 2026-11-30, schedule 63: the
        wiped node's lost entries stopped counting there, and a committed entry then looked
        held by a minority when its log was rightly overwritten)."""
        if not self._durably_bound(node):
            return False
        committed = self.committed
        covered = node.snapshot.index if node.snapshot is not None else 0
        lost = [i for i in node.lost_entries if i <= len(committed)]
        lost += range(1, min(node.lost_snapshot, len(committed)) + 1)
        for index in lost:
            if index <= covered:
                continue
            entry = committed[index - 1]
            if node.lost_entries.get(index, entry.term) != entry.term:
                continue  # the lost copy was not the committed entry: nothing to regain
            held = node.disk_entry(index)
            if held is None or held.term != entry.term:
                return False
        return True

    def _holds(self, node_id: int, index: int, term: int, durable: bool) -> bool:
        """Does node ``node_id`` hold entry (``index``, ``term``): on disk (log or covered by
        its snapshot file), or with ``durable`` False also in its live log; or did a wiped
        directory of it hold it, and it has not yet durably re-bound its new uuid?"""
        node = self.nodes.get(node_id)
        if node is None:
            return False
        if node.snapshot is not None and node.snapshot.index >= index:
            return True
        held = node.disk_entry(index)
        if held is not None and held.term == term:
            return True
        if not durable and node.raft is not None and node.raft.log.term_at(index) == term:
            return True
        if node.lost_entries or node.lost_snapshot:
            if self._recovered(node):
                node.lost_entries, node.lost_snapshot = {}, 0  # its log holds it all now
                return False
            return node.lost_entries.get(index) == term or node.lost_snapshot >= index
        return False

    def may_vote(self, node: SimNode, *, as_learner: bool = False) -> bool:
        """The rule the core must keep: a node campaigns (and leads) only as a voter of its
        membership, and in an explicit one only while bound there to its own uuid; or as a
        bound voter of the explicit membership before it, while the newest entry (which
        removed it) is not committed (thesis §4.2.2: "it might still be needed until the Cnew
        entry is committed"; its own vote then counts for nothing, ``_check_votes_counted``).
        The generator's ``quorum-risk`` found why: a leader that appended its own removal
        and lost office before it committed never campaigned, and the voter left, back
        without the entry, needed its vote (a stall for good).

        With ``as_learner``, what granting a vote needs: a member (a learner may grant, as in
        etcd raft's campaign_learner_must_vote: the candidate's log may already hold the
        learner's promotion, and a candidate counts only its own configuration's voters,
        ``_check_votes_counted``), bound, in any membership the node's log may still fall
        back to: a node that appended its own removal, not committed yet, may grant, for the
        removal may be truncated and a majority of the committed configuration may need its
        vote (the core's ``_refuses_candidate``)."""
        raft = node.raft
        assert raft is not None
        if as_learner:
            memberships = self._memberships_in_reach(raft)
        else:
            # Campaigning: the membership in effect, and the one before it while the newest
            # entry is not committed (only the newest can be: one change at a time, so an
            # older removal is committed whatever the commit index says after a restart).
            memberships = [raft.membership]
            newest = raft.membership_index
            if raft.commit_index < newest and newest - 1 >= raft.snapshot_index:
                before = raft.membership_at(newest - 1)
                if not before.implicit:
                    memberships.append(before)
        for membership in memberships:
            member = membership.get(node.id)
            if member is None or not (member.voter or as_learner):
                continue
            if membership.implicit:
                if as_learner or membership is raft.membership:
                    return True
            elif member.uuid == node.uuid:
                return True
        return False

    @staticmethod
    def _memberships_in_reach(raft: RaftNode) -> list[Membership]:
        """The membership in effect at ``raft``'s commit index (or its snapshot, if later)
        and each one its log holds after it: what a truncation could still bring back."""
        found: list[Membership] = []
        for index in range(max(raft.commit_index, raft.snapshot_index), raft.log.last_index + 1):
            membership = raft.membership_at(index)
            if not found or membership is not found[-1]:
                found.append(membership)
        return found

    def _check_vote(self, node: SimNode, message: RequestVote | RequestVoteResponse) -> None:
        granting = isinstance(message, RequestVoteResponse)
        if isinstance(message, RequestVoteResponse) and not message.granted:
            return
        if not self.may_vote(node, as_learner=granting):
            assert node.raft is not None
            what = "granted a" if granting else "asked for a"
            raise InvariantViolation(
                f"t={self.now}: node {node.id} {what} {'pre-' if message.pre_vote else ''}vote "
                f"in term {message.term} while not a bound "
                f"{'member' if granting else 'voter'}: its membership is "
                f"{node.raft.membership}, its uuid {node.uuid}"
            )

    def _check_votes_counted(self, node: SimNode, term: int) -> None:
        """A new leader of ``term`` was granted votes, delivered to it in that term, by a
        majority of the voters of its own membership (itself included): a learner's or a
        stranger's grant counts for nothing."""
        assert node.raft is not None
        voters = node.raft.membership.voters
        granted = (self.grants.get((node.id, term), set()) | {node.id}) & set(voters)
        if len(granted) < len(voters) // 2 + 1:
            raise InvariantViolation(
                f"t={self.now}: node {node.id} leads term {term} with grants from "
                f"{sorted(granted)} of its voters {voters}"
            )

    def _check_commit_quorum(self, node: SimNode, raft: RaftNode, before: Membership) -> None:
        """A leader commits an entry only once a majority of the voters of the membership in
        effect at it (its latest appended configuration) hold it: durably under DiskFirst,
        appended under MemFirst. Seen from outside one step, the membership in effect when
        the commit index moved is the one before the step or the one after it (the step may
        have appended a configuration before or after counting)."""
        index = raft.commit_index
        term = raft.log.term_at(index)
        assert term is not None
        durable = self.durability is Durability.DISK_FIRST
        for membership in (before, raft.membership):
            voters = membership.voters
            holders = [v for v in voters if self._holds(v, index, term, durable)]
            if len(holders) >= len(voters) // 2 + 1:
                return
        raise InvariantViolation(
            f"t={self.now}: leader {node.id} committed {term}/{index} held only by "
            f"{holders} of its voters {voters} (before the step: {before.voters})"
        )

    def _check_strict_reconfiguration(
        self, node: SimNode, raft: RaftNode, before: Membership, local: float
    ) -> None:
        """A leader appends an operator's change that drops or rebinds a voter only if a
        majority of the new voters may be active (the strict reconfiguration check, 409
        ``quorum_at_risk``): not a voter from which it has stepped no message for the
        minimum election timeout of its own clock (``heard_at``: every contact the core can
        count is such a message, so a voter silent that long is inactive whatever else the
        core knows). A change appended against that leaves the cluster unable to commit
        until the silent voters come back."""
        after = raft.membership
        lost = False
        for m in before.members:
            now_m = after.get(m.id)
            if m.voter and (now_m is None or not now_m.voter or now_m.uuid != m.uuid):
                lost = True
        if not lost:
            return
        voters = after.voters
        window = raft.config.election_timeout_min_ms
        silent = [
            v
            for v in voters
            if v != node.id and local - self.heard_at.get((node.id, v), float("-inf")) >= window
        ]
        if len(voters) - len(silent) < len(voters) // 2 + 1:
            raise InvariantViolation(
                f"t={self.now}: leader {node.id} appended {after} (from {before}) with voters "
                f"{silent} silent for {window} ms or more: a majority of {voters} cannot be "
                "active (the strict reconfiguration check should have refused it)"
            )

    # ------------------------------------------------------------------ invariants

    def _check_new_leader(self, node: SimNode, term: int) -> None:
        # A leader is a bound voter of its own membership, or of one its log may still fall
        # back to (thesis §4.2.2, ``may_vote``): a learner, a node whose removal committed, or
        # a wiped voter not yet re-bound never leads.
        if not self.may_vote(node):
            assert node.raft is not None
            raise InvariantViolation(
                f"t={self.now}: node {node.id} leads term {term} while not a bound voter of "
                f"its membership {node.raft.membership}"
            )
        self._check_votes_counted(node, term)
        # Election safety: at most one leader per term.
        other = self.leaders.setdefault(term, node.id)
        if other != node.id:
            raise InvariantViolation(
                f"t={self.now}: two leaders in term {term}: {other} and {node.id}"
            )
        # Leader completeness: a new leader holds every committed entry (what its log has
        # compacted, its snapshot covers: compared by the term at the log's offset).
        assert node.raft is not None
        if not self._agrees_with_committed(node.raft.log, len(self.committed)):
            raise InvariantViolation(
                f"t={self.now}: leader {node.id} of term {term} lacks committed entries "
                f"(committed up to {len(self.committed)}, its log holds "
                f"{node.raft.log.first_index}..{node.raft.log.last_index})"
            )

    def _agrees_with_committed(self, log: RaftLog, upto: int) -> bool:
        """Does ``log`` hold the committed log through ``upto``: entries from its first index,
        and the committed entry's term at its offset (the snapshot it was compacted to)?"""
        if log.last_index < upto:
            return False
        offset = log.first_index - 1
        if offset > len(self.committed):
            return False  # compacted past the committed log: a snapshot of uncommitted entries
        if 0 < offset and log.term_at(offset) != self.committed[offset - 1].term:
            return False
        return log_entries(log, 1, upto) == self.committed[offset:upto]

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
            if entry.kind is EntryKind.CONFIG:
                self.committed_memberships.append((entry.index, decode_membership(entry.data)))
            state = dict(self.committed_states[-1])
            if entry.kind is EntryKind.COMMAND:
                apply_command(state, entry.data)
            self.committed_states.append(state)

    def _check_truncation(self, node: SimNode, first: int) -> None:
        # Committed entries never disappear: truncating a durable log below the commit point
        # must leave a majority still holding the entry durably (DiskFirst guarantees this).
        if self.durability is not Durability.DISK_FIRST or first > len(self.committed):
            return
        for index in range(first, len(self.committed) + 1):
            entry = self.committed[index - 1]
            # Truncating the committed entry itself: the others must hold it. Truncating
            # another entry there (a wiped node's stale copy): the entry must still be held,
            # the node's lost directory counting as for any check.
            but = node.id if node.disk_entry(index) == entry else 0
            if not self._quorum_holds(index, entry.term, but=but):
                raise InvariantViolation(
                    f"t={self.now}: node {node.id} truncated committed entry {index} from disk "
                    f"and no majority of the voters of a configuration in play holds it "
                    f"(committed voters {self.committed_membership().voters})"
                )

    def _quorum_holds(self, index: int, term: int, but: int = 0) -> bool:
        """Do the nodes other than ``but`` durably holding entry (``index``, ``term``) make a
        majority of the voters of a configuration in play: the committed log's latest, or
        one a live node has appended since (in effect there, so a leader may count by it)?"""
        for membership in self._configs_in_play():
            voters = membership.voters
            holders = sum(1 for v in voters if v != but and self._holds(v, index, term, True))
            if holders >= len(voters) // 2 + 1:
                return True
        return False

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
        if raft.commit_index < node.commit_seen:
            raise InvariantViolation(
                f"t={self.now}: node {node.id} commit index went back from {node.commit_seen} "
                f"to {raft.commit_index}"
            )
        node.commit_seen = raft.commit_index
        # A snapshot never covers uncommitted entries: the core's snapshot and its log's
        # offset stay at or below its commit index.
        offset = raft.log.first_index - 1
        if max(raft.snapshot_index, offset) > raft.commit_index:
            raise InvariantViolation(
                f"t={self.now}: node {node.id} has a snapshot at {raft.snapshot_index} (log "
                f"offset {offset}) past its commit index {raft.commit_index}"
            )
        leader = self.nodes[raft.leader_id].raft if raft.leader_id else None
        if (
            raft.role is Role.FOLLOWER
            and leader is not None
            and leader.role is Role.LEADER
            and leader.term == raft.term
            and not _logs_agree(leader.log, raft.log, raft.commit_index)
        ):
            raise InvariantViolation(
                f"t={self.now}: node {node.id} commits up to {raft.commit_index}, but its log "
                f"there differs from its leader {raft.leader_id}'s"
            )
        # A node's log agrees with the committed log up to its own commit index (by entries
        # where it holds them, by the offset's term where it compacted them).
        upto = min(raft.commit_index, len(self.committed))
        if not self._agrees_with_committed(raft.log, upto):
            raise InvariantViolation(
                f"t={self.now}: node {node.id} log diverges below its commit index"
            )
        # Log matching against every other live node, where both still hold entries.
        for other in self.nodes.values():
            if other.raft is None or other.id == node.id:
                continue
            a, b = raft.log, other.raft.log
            floor = max(a.first_index, b.first_index) - 1  # both know the term from here
            index = min(a.last_index, b.last_index)
            while index > floor and a.term_at(index) != b.term_at(index):
                index -= 1
            if index > floor and not _logs_agree(a, b, index):
                raise InvariantViolation(
                    f"t={self.now}: log matching broken between {node.id} and {other.id} "
                    f"below index {index}"
                )

    def wait_converged(self, timeout_ms: float = 10_000) -> None:
        """Every node (all up, faults healed) catches up to the committed log's end, by log or
        by snapshot, within ``timeout_ms``; raises ``InvariantViolation`` naming the laggards."""
        deadline = self.now + timeout_ms
        while True:
            target = len(self.committed)
            members = self.committed_membership().ids
            behind = [
                m
                for m in members
                if (n := self.nodes.get(m)) is None
                or n.raft is None
                or n.install is not None
                or n.applied_index < target
            ]
            if not behind:
                return
            if self.now >= deadline:
                raise InvariantViolation(
                    f"t={self.now}: nodes {behind} did not catch up to {target} within "
                    f"{timeout_ms} ms of healing (applied: "
                    f"{ {n.id: n.applied_index for n in self.nodes.values()} })"
                )
            self.run_for(10)

    def check_durability(self) -> None:
        """Every committed entry is on a majority of durable logs (DiskFirst)."""
        if self.durability is not Durability.DISK_FIRST:
            return
        for index, entry in enumerate(self.committed, start=1):
            if not self._quorum_holds(index, entry.term):
                holders = [n for n in self.ids if self._holds(n, index, entry.term, True)]
                raise InvariantViolation(
                    f"committed entry {index} is durable only on {holders}, no majority of "
                    f"the voters {self.committed_membership().voters}"
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
            elif op.kind in ("cas", "txn"):
                operations.append(self._cas_or_txn(op_id, op))
                continue
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

    @staticmethod
    def _cas_or_txn(op_id: int, op: Op) -> Operation:
        outcome: Outcome = "unknown" if op.ok is None else "ok" if op.ok else "fail"
        succeeded = op.succeeded if outcome == "ok" else None
        if op.kind == "cas":
            return Operation(
                f"#{op_id}@n{op.node}",
                "cas",
                op.key,
                op.value,
                op.invoke,
                op.complete,
                outcome,
                expected=op.expected,
                succeeded=succeeded,
            )
        compares, success, failure = json.loads(op.command)["txn"]
        return Operation(
            f"#{op_id}@n{op.node}",
            "txn",
            f"txn#{op_id}",
            None,
            op.invoke,
            op.complete,
            outcome,
            succeeded=succeeded,
            compares=tuple(map(tuple, compares)),
            success=tuple(map(tuple, success)),
            failure=tuple(map(tuple, failure)),
            reads=op.reads,
        )

    def _writes(self) -> list[Op]:
        """Every write as a put, cas and txn puts too: ok True where it applied and its
        branch ran, False where it certainly wrote nothing, None where unknown."""
        writes = []
        for op in self.history:
            if op.kind == "put":
                writes.append(op)
            elif op.kind == "cas":
                ok = None if op.ok is None else bool(op.ok and op.succeeded)
                writes.append(Op("put", op.key, op.value, op.node, op.invoke, op.complete, ok))
            elif op.kind == "txn":
                _, success, failure = json.loads(op.command)["txn"]
                for branch, ran in ((success, True), (failure, False)):
                    ok = None if op.ok is None else bool(op.ok and op.succeeded is ran)
                    for kind, key, value in branch:
                        if kind == "put":
                            writes.append(
                                Op("put", key, value, op.node, op.invoke, op.complete, ok)
                            )
        return writes

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
        for op in self._writes():
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
