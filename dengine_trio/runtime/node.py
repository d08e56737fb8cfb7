"""The node runtime: a trio nursery around one sans-IO ``RaftNode``, composed of

* the driver (``driver.py``): the inbox, stepping the core, the order in which effects are
  carried out, and the I/O effects (transport, log, fsyncs);
* the request table (``requests.py``): pending proposals and reads, capacity, deadlines;
* the forwarding protocol (``forwarding.py``): a follower's writes sent to the leader;
* the snapshotter (``snapshotting.py``): snapshots taken, restored at start, installed;
* the membership (``membership.py``): links following the members, the cluster id, the
  handshake's admission, joining, the admin requests' encoding;
* the transport (``transport.py``) and the storage.

``NodeRuntime`` owns their lifecycle and carries out the effects that are not I/O: it applies
committed entries to the state machine (in log order, in whichever task stepped the core, so
"applied" and the core's view never disagree) and settles the requests they answer.

Tasks in the node's nursery: the Raft loop (``Driver.run``), the transport (its listener and
one outbound link per peer; a task that receives from a peer steps the core itself), the flush
task (``Driver.flush_loop``, in the node's fsync thread), the deadline sweeper, the join
loop (``MembershipRuntime.join``: a joining node asks to be added, then ends), one short
task per write or membership change forwarded to this node, and one per snapshot being
written. Cancelling the
nursery is shutdown; ``run`` then flushes and closes the storage before it returns, so
nothing keeps running and nothing acknowledged is left unflushed.
"""

from __future__ import annotations

import logging
import random
import time
import uuid as uuid_module
from collections.abc import Callable, Sequence
from pathlib import Path

import trio

from ..config import NodeConfig
from ..errors import DengineError, MembershipError, Stopped
from ..metrics import MetricsSink, OperatorWarnings
from ..raft import (
    Apply,
    Durability,
    EntryKind,
    ProposalRejected,
    Proposed,
    RaftNode,
    ReadFailed,
    ReadReady,
    Receive,
    RestoreSnapshot,
    RoleChanged,
    SnapshotStatus,
)
from ..raft.effects import ConfChangeRejected, Effect, MembershipChanged
from ..raft.events import PeerIdentity
from ..raft.membership import (
    ConfChange,
    canonical_address,
    decode_membership,
    implicit_membership,
)
from ..raft.messages import (
    MESSAGE_TYPES,
    AppendEntries,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
)
from ..statemachine import StateMachine
from ..storage import Storage
from ..storage.cluster_identity import load_cluster_id
from ..storage.snapshots import SnapshotFile
from ..wire import ForwardAccepted, ForwardPropose, ForwardResult, JoinRequest
from ..wire.errors import CodecError
from .clock import node_clock
from .driver import Driver
from .forwarding import Forwarding
from .membership import MembershipRuntime
from .observe import NodeLog
from .operations import MAX_COMMAND_BYTES, Operations
from .requests import RequestTable
from .snapshot_transfer import SnapshotHooks
from .snapshotting import Snapshotter
from .status import NodeStatus, PeerStatus
from .tls import peer_tls_from_config
from .transport import Transport, new_incarnation
from .worker import WorkerThread

__all__ = ["MAX_COMMAND_BYTES", "NodeRuntime"]

log = logging.getLogger("dengine_trio.node")


class NodeRuntime:
    """One Raft node: storage, transport, core and state machine, run in one nursery.

    ``metrics`` receives what the node measures (``dengine_trio.metrics``; default: nothing
    is recorded); its ``thresholds`` decide the operator warnings.
    """

    def __init__(
        self, config: NodeConfig, state_machine: StateMachine, metrics: MetricsSink | None = None
    ) -> None:
        self.config = config
        self.node_id = config.cluster.node_id
        self.state_machine = state_machine
        self.raft_config = config.raft_config()
        self.request_timeout_s = config.raft.timing.request_timeout_ms / 1000
        self.raft: RaftNode | None = None
        self.storage: Storage | None = None
        self.transport: Transport | None = None
        self.driver: Driver | None = None
        self.applied_index = 0
        self.applied_term = 0
        """Term of the entry at ``applied_index`` (0 before any)."""
        self.leader_commit_heard = 0
        """The highest commit index a leader's AppendEntries or heartbeat told this node
        (a lower bound of the cluster's commit index; 0 before any, and after a restart):
        how far this node's ``applied_index`` lags, for ``/replica?max_lag=N``."""
        self._ready_target: int | None = None
        """``caught_up``: the commit index a leader announced when first asked, to be applied
        once before this node counts as caught up (None: not known yet)."""
        self.stopped = False
        self.refusing = False
        """``refuse_requests`` was called: the node is about to stop."""
        self.incarnation = new_incarnation()
        """Names this process of the node to its peers (``Hello``, forwarded requests)."""
        # Request ids name one request across restarts too: the high 31 bits come from the
        # incarnation. A reply to a request of an earlier process of this node (a forwarded
        # write's ForwardResult, a ReadIndexResponse, which the core matches by id alone) can
        # still arrive after a restart, in flight or from a peer's queue, and must find no
        # request to answer. 2^32 requests per process before the low bits wrap into another
        # prefix.
        self.requests = RequestTable(
            self.node_id,
            config.limits.max_pending_requests,
            first_id=(self.incarnation >> 32 << 32) + 1,
        )
        self.forwarding = Forwarding(
            self.node_id,
            self.incarnation,
            self.requests,
            send=self._send,
            withdraw=self._withdraw,
            leadership=self._leadership,
            propose_local=lambda *args: self.operations.propose_local(*args),
            stopped=lambda: self.stopped,
            request_timeout_s=self.request_timeout_s,
            admin_local=lambda *args: self.operations.admin_local(*args),
        )
        self._state_changed = trio.Event()
        self.transferring = False
        """A leadership transfer is under way: a step-down is planned."""
        self.operations = Operations(self)
        self.node_log = NodeLog(self.node_id, config.db_root_path())
        self.metrics = metrics if metrics is not None else MetricsSink()
        self.warnings = OperatorWarnings(
            self.node_id, self.metrics, config.raft.timing.heartbeat_interval_ms / 1000
        )
        self.metrics.attach(
            self.node_id,
            lambda: self.status(detail=True),
            self.pending_proposals,
            lambda: self.operations.lease_reads_local,
        )
        # Heartbeats queued and not answered yet, per peer: seq -> time.perf_counter().
        self._heartbeats_out: dict[int, dict[int, float]] = {}
        self._nursery: trio.Nursery | None = None
        self._cancel_scope: trio.CancelScope | None = None
        self.cluster_id = ""
        """This node's cluster id (handshake, snapshot headers): the one persisted in
        ``db_root_dir`` (``storage/cluster_identity.py``: generated at bootstrap, learned
        from the membership, or a restored cluster's), "" while it knows none
        (``runtime/membership.py``)."""
        self.uuid = ""
        """This data directory's uuid (``Storage.node_uuid``), set by ``open_storage``."""
        self.bootstrap_cluster_id = ""
        """The id this node gives the cluster if it makes the first explicit membership:
        ``<NodeConfig.cluster_id()>-<12 random hex digits>``."""
        self.hello_cluster_id = ""
        """What the handshake names before the cluster's id is known (``open_storage``)."""
        self.membership = MembershipRuntime(self)
        self.snapshotter = Snapshotter(self)
        if self.snapshotter.enable and not callable(getattr(state_machine, "snapshot", None)):
            log.warning(
                "node %d: state machine %s has no snapshot(); [raft.snapshot] enable is ignored "
                "and the log grows without bound (see docs/api.md, a custom state machine)",
                self.node_id,
                type(state_machine).__name__,
            )
            self.snapshotter.enable = False

    @property
    def nursery(self) -> trio.Nursery | None:
        """The node's nursery while it runs (None before and after)."""
        return self._nursery

    # ------------------------------------------------------------------ lifecycle

    @staticmethod
    def now_ms() -> float:
        """The core's clock (ms): trio's plus time suspended (``runtime/clock.py``), so a
        resumed leader's lease is judged on the time that really passed."""
        return node_clock.now_ms()

    async def open_storage(self) -> Storage:
        """Lock and recover ``db_root_dir`` and choose the snapshot to start from
        (``Storage.open``); raises ``StorageError`` (locked, corrupt)."""
        cfg = self.config

        def open_it() -> Storage:
            # A restored cluster's id, persisted by `snapshot restore`, wins over the
            # configuration's: nodes restored from different backups must refuse each other.
            persisted = load_cluster_id(cfg.db_root_path())
            self.set_cluster_id(persisted or "")
            # Until it knows its cluster's id, a node names its configuration's in the
            # handshake (a joining node none: its configuration need not list the voters the
            # cluster started with); ``inbound.same_cluster``.
            self.hello_cluster_id = persisted or (
                "" if self.membership.joiner else cfg.cluster_id()
            )
            # Without a persisted id (a new node, or one from before issue 14) any
            # snapshot's id is accepted: the membership decides who it talks to.
            storage = Storage.open(
                cfg.db_root_path(),
                snapshots_dir=self.snapshotter.directory,
                cluster_id=persisted,
            )
            self.uuid = storage.node_uuid
            self.bootstrap_cluster_id = (
                persisted or f"{cfg.cluster_id()}-{uuid_module.uuid4().hex[:12]}"
            )
            try:
                self.snapshotter.clean_incoming()
            except BaseException:
                storage.close()
                raise
            return storage

        self.storage = await trio.to_thread.run_sync(open_it)
        return self.storage

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the node until ``stop`` (or a failure of its core, raised as RuntimeError)."""
        cfg = self.config
        storage = self.storage or await self.open_storage()
        # The log after the snapshot (all of it without one) is replayed into the state
        # machine as commits become known.
        self.state_machine.reset()
        try:
            hs = storage.hard_state
            snapshot = storage.snapshot
            entries = storage.entries_after_snapshot()
            snapshot_index = snapshot_term = 0
            if snapshot is not None:
                # Served at once: eventual reads see everything the snapshot covers.
                await self.snapshotter.restore_at_start(snapshot)
                snapshot_index, snapshot_term = snapshot.last_index, snapshot.last_term
                self.applied_index, self.applied_term = snapshot_index, snapshot_term
            self.node_log.started_empty = (
                hs.term == 0
                and hs.voted_for == 0
                and not entries
                and snapshot is None
                and not self.membership.joiner  # a joining node is expected to start empty
            )
            encoded = storage.snapshot_membership
            # None: no snapshot, or none explicit in it: the implicit membership of the
            # configuration, then the configuration entries of the log.
            if encoded:
                membership = decode_membership(encoded)
            else:
                # With the members' addresses: the first explicit membership, which the first
                # leader copies from it, carries them to every node (and to later joiners).
                voters = set(cfg.bootstrap_voters())
                membership = implicit_membership(
                    tuple(voters),
                    {
                        p.id: canonical_address(p.address)
                        for p in cfg.cluster.initial_cluster
                        if p.id in voters
                    },
                )
            self.raft = RaftNode(
                self.raft_config,
                random.Random(),
                term=hs.term,
                voted_for=hs.voted_for,
                entries=entries,
                now_ms=self.now_ms(),
                snapshot_index=snapshot_index,
                snapshot_term=snapshot_term,
                membership=membership,
                membership_index=snapshot_index if encoded else 0,
                uuid=self.uuid,
                bootstrap_cluster_id=self.bootstrap_cluster_id,
            )
            self.membership.changed(self.raft.membership, self.raft.membership_index)
            del entries
            storage.entries = []  # the core holds the log now
            last = self.raft.log.last_index
            if last:
                log.info(
                    "node %d recovered term %d, vote %d, snapshot through %d, %s from %s",
                    self.node_id,
                    hs.term,
                    hs.voted_for,
                    snapshot_index,
                    f"log entries {snapshot_index + 1}..{last}"
                    if last > snapshot_index
                    else "no log entries after it",
                    cfg.db_root_path(),
                )
            batch = cfg.raft.persistence.flush_policy.batch
            driver = self.driver = Driver(
                self.node_id,
                self.raft,
                storage,
                self._send,
                self,
                now_ms=self.now_ms,
                trio_deadline=node_clock.trio_deadline,
                on_failure=lambda _exc: self.stop(),
                disk_first=self.raft_config.durability is Durability.DISK_FIRST,
                flush_threshold=batch.threshold,
                flush_interval_s=batch.interval_ms / 1000,
                metrics=self.metrics,
                warnings=self.warnings,
                is_leader=lambda: self.raft is not None and self.raft.is_leader,
            )
            peers = self.membership.peer_addresses()
            self.transport = Transport(
                self.node_id,
                self.hello_cluster_id,
                cfg.listen_host_port(),
                peers,
                self._deliver,
                delivered=driver.step_now,
                log=logging.getLogger("dengine_trio.transport"),
                incarnation=self.incarnation,
                dropped=self.forwarding.dropped,
                unreachable=self.warnings.peer_unreachable,
                tls=peer_tls_from_config(cfg.tls),
                snapshots=SnapshotHooks(
                    directory=self.snapshotter.directory,
                    chunk_bytes=cfg.raft.snapshot.chunk_size,
                    latest=lambda: self.snapshotter.latest,
                    received=self.snapshot_received,
                    status=self.snapshot_status,
                    damaged=self.snapshotter.snapshot_damaged,
                ),
                uuid=self.uuid,
                joining=self.membership.joiner and not self.membership.is_member(),
                admit=self.membership.admit,
                identified=self._identified,
                removal=self.membership.removal,
                removed=self.membership.told,
                known_cluster_id=self.cluster_id,
                address=cfg.own_member().address,
            )
            async with (
                WorkerThread(f"dengine-fsync-{self.node_id}") as fsync_thread,
                trio.open_nursery() as nursery,
            ):
                self._nursery = nursery
                self._cancel_scope = nursery.cancel_scope
                await nursery.start(self.transport.run)
                nursery.start_soon(driver.run)
                nursery.start_soon(driver.flush_loop, fsync_thread)
                nursery.start_soon(self.requests.sweep_deadlines)
                nursery.start_soon(self.membership.join)
                task_status.started()
            if driver.failure is not None:
                raise RuntimeError(
                    f"node {self.node_id} failed stepping its Raft core"
                ) from driver.failure
        finally:
            self.stopped = True
            self.snapshotter.stop()
            self.snapshotter.discard_staged()
            self._fail_everything(Stopped("node stopped"))
            with trio.CancelScope(shield=True):
                # Graceful stop: everything appended becomes durable before we exit.
                await trio.to_thread.run_sync(storage.close)
            self._notify_state_change()
            log.info("node %d stopped", self.node_id)

    def stop(self) -> None:
        """Cancel the node's tasks; ``run`` then flushes, closes the storage and returns."""
        self.stopped = True
        self.snapshotter.stop()
        if self._cancel_scope is not None:
            self._cancel_scope.cancel()

    def refuse_requests(self) -> None:
        """First step of a stop: every pending request fails with ``Stopped`` now and new ones
        are refused with it, while the node keeps taking part in Raft until ``stop``. Lets
        the HTTP layer answer every request before its servers stop. Idempotent."""
        self.refusing = True
        self._fail_everything(Stopped("node is stopping"))
        self._notify_state_change()

    def _fail_everything(self, error: BaseException) -> None:
        self.requests.close(error)
        self.forwarding.fail_all(error)

    def status(self, *, detail: bool = False) -> NodeStatus:
        """This node now. ``detail`` adds the leader's view of its peers and the transport's
        counters (costlier: for ``/status``, not for every probe)."""
        raft = self.raft
        if raft is None:
            return NodeStatus(self.node_id, "stopped", 0, None, 0, self.applied_index, 0,
                              False, False, False, True)  # fmt: skip
        latest = self.snapshotter.latest
        now = self.now_ms()
        is_leader = raft.is_leader
        window_ms = self.config.raft.timing.election_timeout_max_ms
        peers: dict[int, PeerStatus] = {}
        if detail and is_leader:
            for peer, p in raft.progress.items():
                ago = (
                    None
                    if p.last_contact_ms == float("-inf")
                    else round(now - p.last_contact_ms, 1)
                )
                peers[peer] = PeerStatus(p.match_index, p.next_index, p.state.value, ago)
        return NodeStatus(
            node_id=self.node_id,
            role=raft.role.name.lower(),
            term=raft.term,
            leader_id=raft.leader_id or None,
            commit_index=raft.commit_index,
            applied_index=self.applied_index,
            last_log_index=raft.log.last_index,
            ready=bool(raft.leader_id)
            and (not is_leader or raft.log.term_at(raft.commit_index) == raft.term),
            has_quorum=raft.has_quorum_contact(now),
            leader_contact_recent=raft.leader_contact_within(now, window_ms),
            stopped=self.stopped,
            snapshot_index=raft.snapshot_index,
            snapshot_term=raft.snapshot_term,
            snapshot_bytes=latest.size_bytes if latest is not None else 0,
            peers=peers,
            transport=self.transport.stats.as_dict() if detail and self.transport else {},
        )

    def caught_up(self) -> bool:
        """Heard from its leader within ``election_timeout_max_ms``, has applied once as far
        as a leader had committed when first asked, and applied to within
        ``max_promote_lag_entries`` of the commit index that leader told it (a learner that
        may serve as a read replica); True on a leader, False stopped.

        The first condition keeps a node that just joined (or restarted) out of a load
        balancer's read pool until it holds the data: the lag alone let a new read replica
        of a cluster with fewer than 1,000 entries answer 200 before it had applied any (its
        leader's heartbeats carry commit 0 until its log is known to match), so its eventual
        reads answered 404 for keys the cluster holds (tests/e2e/test_membership_cli.py
        failed so once in CI). The target is fixed when first known, not the moving commit
        index, so a node under a steady write load still gets there."""
        raft = self.raft
        if raft is None or self.stopped:
            return False
        if raft.is_leader:
            return True
        window_ms = self.config.raft.timing.election_timeout_max_ms
        if not raft.leader_id or not raft.leader_contact_within(self.now_ms(), window_ms):
            return False
        heard = max(raft.commit_index, self.leader_commit_heard)
        if self._ready_target is None:
            if heard == 0:
                return False  # no leader has said how far it committed (there is a no-op)
            self._ready_target = heard
        if self.applied_index < self._ready_target:
            return False
        return heard - self.applied_index <= self.raft_config.max_promote_lag_entries

    def pending_requests(self) -> int:
        """Client requests occupying this node: waiting for a leader, forwarded, pending
        commit or a read's confirmation (the count ``max_pending_requests`` bounds)."""
        return self.requests.pending()

    def pending_proposals(self) -> int:
        """Writes waiting on this node: its own proposals and those it forwarded."""
        return self.requests.pending_proposals() + self.forwarding.pending()

    # ------------------------------------------------------------------ transport

    def _deliver(self, message: object) -> None:
        """Transport callback, in the trio thread; must not block. Raft messages wait in
        the inbox for ``Driver.step_now``, which the transport calls after each read."""
        if isinstance(message, MESSAGE_TYPES):
            if type(message) is HeartbeatResponse:
                self._heartbeat_answered(message)
            elif type(message) is AppendEntries:
                if message.leader_commit > self.leader_commit_heard:
                    self.leader_commit_heard = message.leader_commit
            elif type(message) is Heartbeat and message.commit > self.leader_commit_heard:
                self.leader_commit_heard = message.commit
            if self.node_log.started_empty:
                self.node_log.peer_message(message, self.raft.log.last_index if self.raft else 0)
            assert self.driver is not None
            self.driver.receive(Receive(message))  # type: ignore[arg-type]
        elif isinstance(message, ForwardPropose):
            if self._nursery is not None and not self.stopped:
                self._nursery.start_soon(self.forwarding.serve, message, self.refusing)
        elif isinstance(message, ForwardResult):
            self.forwarding.result(message)
        elif isinstance(message, ForwardAccepted):
            self.forwarding.accepted(message, self.applied_index)
        elif isinstance(message, JoinRequest):
            self.membership.join_requested(message)

    def _send(self, message: object) -> bytes | None:
        """Queue ``message``; its frame (see ``Transport.withdraw``), or None if dropped."""
        assert self.transport is not None
        if type(message) is Heartbeat:
            self._heartbeat_sent(message)
        try:
            return self.transport.send(message)
        except (CodecError, ValueError, TypeError) as exc:  # e.g. a frame over the limit
            log.warning(
                "node %d dropped a message to %s: %s",
                self.node_id,
                getattr(message, "dst", "?"),
                exc,
            )
            return None

    def _heartbeat_sent(self, message: Heartbeat) -> None:
        out = self._heartbeats_out.get(message.dst)
        if out is None:
            out = self._heartbeats_out[message.dst] = {}
        elif len(out) >= 64:
            out.clear()  # a peer that stopped answering: forget its old rounds
        out[message.seq] = time.perf_counter()

    def _heartbeat_answered(self, message: HeartbeatResponse) -> None:
        # The round trip from queueing a heartbeat to reading its answer (``seq`` echoed):
        # the network, both transports, and the follower's turnaround.
        out = self._heartbeats_out.get(message.src)
        sent = out.pop(message.seq, None) if out else None
        if sent is not None:
            self.metrics.peer_round_trip(message.src, time.perf_counter() - sent)

    def _withdraw(self, dst: int, frame: bytes) -> bool:
        return self.transport is not None and self.transport.withdraw(dst, frame)

    def _leadership(self) -> tuple[bool, int]:
        raft = self.raft
        return (raft is not None and raft.is_leader, raft.leader_id if raft else 0)

    # ------------------------------------------------------------------ effects (not I/O)

    def apply(self, effect: Apply) -> None:
        """Apply ``effect.entries`` (committed, in log order; no-ops only advance
        ``applied_index``) to the state machine, and settle what they answer: this node's
        proposals and forwarded writes (resolved with the result, or ``NotLeader`` if another
        term's entry took their index), then reads whose read index is now applied. Raises
        what the state machine raises (the node must stop)."""
        sm = self.state_machine
        requests, forwarding = self.requests, self.forwarding
        leader_id = self.raft.leader_id if self.raft else 0
        commands = 0
        start = time.perf_counter()
        configs = False
        for entry in effect.entries:
            result = b""
            if entry.kind is EntryKind.COMMAND:
                result = sm.apply(entry.index, entry.data)
                commands += 1
            elif entry.kind is EntryKind.CONFIG:
                configs = True
            self.applied_index = entry.index
            requests.applied(entry.index, entry.term, result, leader_id)
            forwarding.applied(entry.index, entry.term, result, leader_id)
        elapsed = time.perf_counter() - start
        if effect.entries:
            self.applied_term = effect.entries[-1].term
            # Between two applies: the state machine's image is exactly as of this entry.
            self.snapshotter.applied(self.applied_index, self.applied_term)
        requests.reads_applied(self.applied_index)
        if configs:
            self.membership.committed()
        # One observation per batch, not per entry: the write path pays two clock reads.
        self.metrics.applied(elapsed, len(effect.entries))
        if elapsed >= self.warnings.apply_s:
            self.warnings.applied(elapsed, len(effect.entries))
        if commands and leader_id == self.node_id:
            self.metrics.proposals_committed(commands)

    async def restore_snapshot(self, effect: RestoreSnapshot) -> None:
        """Carry out the barrier ``RestoreSnapshot`` (``Snapshotter.install``)."""
        await self.snapshotter.install(effect)

    def snapshot_stepped(self, effects: Sequence[Effect]) -> None:
        """The step that took a staged snapshot's message returned ``effects``
        (``Snapshotter.stepped``: a file no ``RestoreSnapshot`` names is deleted)."""
        self.snapshotter.stepped(effects)

    def snapshot_installed(self, index: int, term: int) -> None:
        """The state machine now holds a leader's snapshot as of entry (``index``,
        ``term``): applied up to there, and the requests waiting on entries it covers are
        settled (``RequestTable.snapshot_installed``, ``Forwarding.snapshot_installed``);
        reads whose read index it covers are served."""
        self.applied_index, self.applied_term = index, term
        leader_id = self.raft.leader_id if self.raft else 0
        self.requests.snapshot_installed(index, term, leader_id)
        self.forwarding.snapshot_installed(index, term, leader_id)
        self.requests.reads_applied(index)

    def snapshot_received(self, message: InstallSnapshot, staged: Path) -> None:
        """The transport received a whole snapshot file and verified it: it is at
        ``staged`` (same file system as ``snapshots_dir``), as of entry
        (``message.last_index``, ``message.last_term``). The node owns the file from now on:
        it steps ``Receive(message)`` and installs the file if the core says so
        (``RestoreSnapshot``), else deletes it. Call in the trio thread."""
        driver = self.driver
        if driver is None or self.stopped:
            staged.unlink(missing_ok=True)
            return
        self.snapshotter.stage(message.last_index, message.last_term, staged)
        driver.receive_snapshot(Receive(message))

    def snapshot_status(self, peer: int, ok: bool) -> None:
        """The transport finished streaming a snapshot to ``peer`` (``ok``) or gave up:
        step ``SnapshotStatus`` (etcd raft's ``ReportSnapshot``) and count a sent one
        (``dengine_snapshots_sent_total``). Call in the trio thread."""
        driver = self.driver
        if ok:
            latest = self.snapshotter.latest
            self.metrics.snapshot_sent(peer, latest.size_bytes if latest is not None else 0)
        if driver is not None and not self.stopped:
            driver.receive(SnapshotStatus(peer, ok))
            driver.step_now()

    async def take_snapshot(self) -> SnapshotFile:
        """See ``Snapshotter.take_snapshot``."""
        return await self.snapshotter.take_snapshot()

    def proposed(self, effect: Proposed) -> None:
        """``RequestTable.proposed``: the proposal now waits for its entry to apply."""
        self.requests.proposed(effect.request_id, effect.index, effect.term)

    def proposal_rejected(self, effect: ProposalRejected) -> None:
        """The proposal fails with ``NotLeader(effect.leader_id)``."""
        self.requests.proposal_rejected(effect.request_id, effect.leader_id)

    def read_ready(self, effect: ReadReady) -> None:
        """The read resolves once ``applied_index`` reaches ``effect.read_index`` (Raft
        thesis section 6.4, step 4)."""
        self.requests.read_ready(effect.request_id, effect.read_index, self.applied_index)

    def read_failed(self, effect: ReadFailed) -> None:
        """The read fails with ``NotLeader(effect.leader_id)``."""
        self.requests.read_failed(effect.request_id, effect.leader_id)

    def role_changed(self, effect: RoleChanged) -> None:
        """Record the new (role, term, leader) in metrics and the log, take back forwards
        still queued for a former leader (``Forwarding.leader_changed``), and wake
        ``wait_for_state_change``."""
        self.metrics.role_changed(effect.role.name.lower(), effect.term, effect.leader_id)
        self.forwarding.leader_changed(effect.leader_id)
        self.node_log.role_changed(effect, planned=self.transferring)
        self._notify_state_change()

    def membership_changed(self, effect: MembershipChanged) -> None:
        """The membership in effect changed (``MembershipRuntime.changed``)."""
        self.membership.changed(effect.membership, effect.index)

    def conf_change_rejected(self, effect: ConfChangeRejected) -> None:
        """Change ``effect.request_id`` fails: ``NotLeader`` for ``not_leader`` (it goes to
        the leader), else ``MembershipError`` with the core's code and detail."""
        if effect.code == "not_leader":
            self.requests.proposal_rejected(effect.request_id, effect.leader_id)
        else:
            self.requests.proposal_failed(
                effect.request_id, MembershipError(effect.code, effect.message, effect.detail)
            )

    def set_cluster_id(self, cluster_id: str) -> None:
        """This node's cluster id from now on (handshake, snapshots written and accepted)."""
        self.cluster_id = cluster_id
        if self.transport is not None:
            self.transport.set_cluster_id(cluster_id)

    def _identified(self, peer: int, uuid: str) -> None:
        """The transport accepted a message connection from ``peer`` running on data
        directory ``uuid``: the core hears it before any message of that connection."""
        if self.driver is not None:
            self.driver.receive(PeerIdentity(peer, uuid))

    def send(self, message: object) -> None:
        """Queue a message for a peer (dropped with a WARNING if it cannot be sent)."""
        self._send(message)

    def propose_change_quietly(
        self,
        change: ConfChange,
        on_rejected: Callable[[ConfChange, MembershipError], None],
        on_done: Callable[[], None],
    ) -> None:
        """Make ``change`` through the leader (here, or forwarded) in a task of its own,
        nobody waiting for it (a join request's change); ``on_rejected`` hears a refusal,
        ``on_done`` the end, whatever it was."""
        if self._nursery is None or self.stopped or self.refusing:
            on_done()
            return

        async def propose() -> None:
            try:
                await self.operations.change_membership(change)
            except MembershipError as exc:
                on_rejected(change, exc)
            except DengineError:
                pass  # no leader took it in time, stopping: the joiner asks again
            finally:
                on_done()

        self._nursery.start_soon(propose)

    def notify_state_change(self) -> None:
        """Wake ``wait_for_state_change`` (the membership changed, say)."""
        self._notify_state_change()

    def _notify_state_change(self) -> None:
        self._state_changed.set()
        self._state_changed = trio.Event()

    # ------------------------------------------------------------------ requests

    # The client-facing operations live in operations.py.

    async def propose(self, command: bytes, timeout_s: float | None = None) -> bytes:
        """See ``Operations.propose``."""
        return await self.operations.propose(command, timeout_s)

    async def read_barrier(self, *, lease: bool, timeout_s: float | None = None) -> None:
        """See ``Operations.read_barrier``."""
        await self.operations.read_barrier(lease=lease, timeout_s=timeout_s)

    async def transfer_leadership(self, timeout_s: float) -> bool:
        """See ``Operations.transfer_leadership``."""
        return await self.operations.transfer_leadership(timeout_s)

    def reachable_peers(self) -> list[int]:
        """See ``Operations.reachable_peers``."""
        return self.operations.reachable_peers()

    async def wait_for_state_change(self) -> None:
        """Until the role, term or leader changes, or the node stops."""
        await self._state_changed.wait()
