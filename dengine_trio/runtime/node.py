"""The node runtime: a trio nursery around one sans-IO ``RaftNode``.

Tasks in the node's nursery:

* the Raft loop (``_raft_loop``): steps the core with client requests (proposals, reads) in
  batches, ticks it when its next deadline passes, and carries out the effects in the order
  the core returned them;
* the transport (``Transport.run``): the inbound listener and one outbound link per peer. A
  task that receives from a peer steps the core itself (``_step_now``) and its replies go
  straight to the sockets, so a message costs no task switch; what must await (a hard-state
  save) is left, in order, to the Raft loop;
* the flush task (``_flush_loop``): fsyncs the log in the node's fsync thread (a long-lived
  ``WorkerThread``: ``trio.to_thread`` costs more than the fsync). DiskFirst: group commit
  (one fsync covers everything appended while the previous one ran). MemFirst: when
  ``threshold`` entries are pending or ``interval_ms`` has passed;
* the deadline sweeper (``_sweep_deadlines``): fails requests that reach their deadline;
* one short task per forwarded request from a follower.

Committed entries are applied to the state machine by whichever task stepped the core, in log
order, so that "applied" and the core's view never disagree. Cancelling the nursery is
shutdown; ``run`` then flushes and closes the storage before it returns, so nothing keeps
running and nothing acknowledged is left unflushed.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import random
from collections.abc import Callable
from functools import partial
from typing import Any

import trio

from ..config import NodeConfig
from ..errors import DengineError, NoLeader, NotLeader, Overloaded, Stopped, Timeout, TooLarge
from ..raft import (
    Apply,
    Durability,
    Effect,
    EntryKind,
    Event,
    Persisted,
    PersistEntries,
    PersistHardState,
    ProposalRejected,
    Propose,
    Proposed,
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
from ..raft.messages import MESSAGE_TYPES, AppendEntries, Heartbeat, RequestVote
from ..statemachine import StateMachine
from ..storage import Storage
from ..wire import MAX_FRAME_BYTES, ForwardAccepted, ForwardPropose, ForwardResult, ForwardStatus
from ..wire.errors import CodecError
from .clock import node_clock
from .transport import Transport, new_incarnation
from .worker import WorkerThread

log = logging.getLogger("dengine_trio.node")

# Headroom below the frame limit for the AppendEntries envelope around a single entry.
MAX_COMMAND_BYTES = MAX_FRAME_BYTES - (1 << 20)

_STATUS_FOR_ERROR: dict[type[DengineError], ForwardStatus] = {
    NotLeader: ForwardStatus.NOT_LEADER,
    NoLeader: ForwardStatus.NO_LEADER,
    Timeout: ForwardStatus.TIMEOUT,
    TooLarge: ForwardStatus.TOO_LARGE,
    Overloaded: ForwardStatus.OVERLOADED,
    Stopped: ForwardStatus.STOPPED,
}
_ERROR_FOR_STATUS = {status: error for error, status in _STATUS_FOR_ERROR.items()}


class _Waiter:
    """One pending request, awaited by the one task that made it: resolved exactly once with
    a value or an exception.

    Not a ``trio.Event``: its parking lot is more than one waiting task needs, and a request
    costs a waiter; this one parks and reschedules that task directly.
    """

    __slots__ = ("done", "error", "index", "on_proposed", "task", "term", "value")

    def __init__(self) -> None:
        self.done = False
        self.value: Any = None
        self.on_proposed: Callable[[int, int], object] | None = None
        self.error: BaseException | None = None
        self.index = 0
        self.term = 0
        self.task: trio.lowlevel.Task | None = None

    def resolve(self, value: Any = None) -> None:
        if not self.done:
            self.done = True
            self.value = value
            self._wake()

    def fail(self, error: BaseException) -> None:
        if not self.done:
            self.done = True
            self.error = error
            self._wake()

    def _wake(self) -> None:
        task = self.task
        if task is not None:
            self.task = None
            trio.lowlevel.reschedule(task)

    async def wait(self) -> None:
        """Until resolved (returns at once if it is); cancellable like any trio wait."""
        if self.done:
            return
        self.task = trio.lowlevel.current_task()
        await trio.lowlevel.wait_task_rescheduled(self._abort)

    def _abort(self, _raise_cancel: object) -> trio.lowlevel.Abort:
        self.task = None
        return trio.lowlevel.Abort.SUCCEEDED


class _Forward:
    """A write this follower forwarded to ``leader``, waiting for its outcome.

    ``frame`` is the ``ForwardPropose`` as queued (None once it may have reached a socket);
    ``index``/``term`` the entry the leader made of it, once a ``ForwardAccepted`` said so.
    """

    __slots__ = ("frame", "index", "leader", "term", "waiter")

    def __init__(self, leader: int) -> None:
        self.leader = leader
        self.waiter = _Waiter()
        self.frame: bytes | None = None
        self.index = 0
        self.term = 0


class NodeRuntime:
    """One Raft node: storage, transport, core and state machine, run in one nursery."""

    def __init__(self, config: NodeConfig, state_machine: StateMachine) -> None:
        self.config = config
        self.node_id = config.cluster.node_id
        self.state_machine = state_machine
        self.raft_config = config.raft_config()
        timing = config.raft.timing
        self.request_timeout_s = timing.request_timeout_ms / 1000
        self._max_pending = config.limits.max_pending_requests
        batch = config.raft.persistence.flush_policy.batch
        self._flush_threshold = batch.threshold
        self._flush_interval_s = batch.interval_ms / 1000
        self._disk_first = self.raft_config.durability is Durability.DISK_FIRST

        self.raft: RaftNode | None = None
        self.storage: Storage | None = None
        self.transport: Transport | None = None
        self.applied_index = 0
        self.stopped = False
        self._refusing = False  # refuse_requests was called: the node is about to stop

        self._inbox: list[Event] = []
        self._wakeup = trio.Event()
        self._raft_sleeps_until_ms = -math.inf  # the Raft loop's deadline while it waits
        self._busy = False  # effects are being carried out across an await: do not step
        self._deferred: list[Effect] = []  # what an inline step left for the Raft loop
        self.incarnation = new_incarnation()
        """Names this process of the node to its peers (``Hello``, forwarded requests)."""
        # Request ids name one request across restarts too: the high 31 bits come from the
        # incarnation. A reply to a request of an earlier process of this node (a forwarded
        # write's ForwardResult, a ReadIndexResponse, which the core matches by id alone) can
        # still arrive after a restart, in flight or from a peer's queue, and must find no
        # request to answer. 2^32 requests per process before the low bits wrap into another
        # prefix.
        self._ids = itertools.count((self.incarnation >> 32 << 32) + 1)
        self._proposals: dict[int, _Waiter] = {}
        self._by_index: dict[int, _Waiter] = {}
        self._reads: dict[int, _Waiter] = {}
        self._reads_by_index: list[tuple[int, int, _Waiter]] = []  # heap on read index
        self._forwards: dict[int, _Forward] = {}
        # Forwarded writes the leader took as entry (index, term), by index: settled by what
        # this node applies at that index, whatever becomes of that leader.
        self._forwarded_entries: dict[int, list[_Forward]] = {}
        # Request deadlines, swept by one task rather than a cancel scope per request (which
        # cost ~13% of the leader's CPU with 64 writers). A heap on the deadline; resolved
        # waiters are dropped lazily.
        self._deadlines: list[tuple[float, int, _Waiter, Callable[[], object]]] = []
        self._sweep_at = math.inf  # when the sweeper wakes next
        self._deadline_sooner = trio.Event()
        self._unflushed = 0
        self._flush_needed = trio.Event()
        self._flush_threshold_hit = trio.Event()
        self._state_changed = trio.Event()
        self._was_leader = False
        self._transferring = False  # transfer_leadership is under way: a step-down is planned
        self._last_term = 0
        self._nursery: trio.Nursery | None = None
        self._cancel_scope: trio.CancelScope | None = None
        self._failure: Exception | None = None  # what stopped the node from the inside
        self._started_empty = False  # armed until a peer shows a history, or we hold entries

    # ------------------------------------------------------------------ lifecycle

    @staticmethod
    def now_ms() -> float:
        """The core's clock (ms): trio's plus time suspended (``runtime/clock.py``), so a
        resumed leader's lease is judged on the time that really passed."""
        return node_clock.now_ms()

    async def open_storage(self) -> Storage:
        """Lock and recover ``db_root_dir``; raises ``StorageError`` (locked, corrupt)."""
        self.storage = await trio.to_thread.run_sync(Storage.open, self.config.db_root_path())
        return self.storage

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        cfg = self.config
        storage = self.storage or await self.open_storage()
        # The log is replayed into the state machine from the start as commits become known.
        self.state_machine.reset()
        try:
            hs = storage.hard_state
            self._started_empty = hs.term == 0 and hs.voted_for == 0 and not storage.entries
            self.raft = RaftNode(
                self.raft_config,
                random.Random(),
                term=hs.term,
                voted_for=hs.voted_for,
                entries=storage.entries,
                now_ms=self.now_ms(),
            )
            storage.entries = []  # the core holds the log now
            if self.raft.log.last_index:
                log.info(
                    "node %d recovered term %d, vote %d, %d log entries from %s",
                    self.node_id,
                    hs.term,
                    hs.voted_for,
                    self.raft.log.last_index,
                    cfg.db_root_path(),
                )
            peers = {i: a for i, a in cfg.peer_addresses().items() if i != self.node_id}
            self.transport = Transport(
                self.node_id,
                cfg.cluster_id(),
                cfg.listen_host_port(),
                peers,
                self._deliver,
                delivered=self._step_now,
                log=logging.getLogger("dengine_trio.transport"),
                incarnation=self.incarnation,
            )
            async with (
                WorkerThread(f"dengine-fsync-{self.node_id}") as fsync_thread,
                trio.open_nursery() as nursery,
            ):
                self._nursery = nursery
                self._cancel_scope = nursery.cancel_scope
                await nursery.start(self.transport.run)
                nursery.start_soon(self._raft_loop)
                nursery.start_soon(self._flush_loop, fsync_thread)
                nursery.start_soon(self._sweep_deadlines)
                task_status.started()
            if self._failure is not None:
                raise RuntimeError(
                    f"node {self.node_id} failed stepping its Raft core"
                ) from self._failure
        finally:
            self.stopped = True
            self._fail_everything(Stopped("node stopped"))
            with trio.CancelScope(shield=True):
                # Graceful stop: everything appended becomes durable before we exit.
                await trio.to_thread.run_sync(storage.close)
            self._notify_state_change()
            log.info("node %d stopped", self.node_id)

    def stop(self) -> None:
        self.stopped = True
        if self._cancel_scope is not None:
            self._cancel_scope.cancel()

    def refuse_requests(self) -> None:
        """First step of a stop: every pending request fails with ``Stopped`` now and new ones
        are refused with it, while the node keeps taking part in Raft until ``stop``. Lets
        the HTTP layer answer every request before its servers stop. Idempotent."""
        self._refusing = True
        self._fail_everything(Stopped("node is stopping"))
        self._notify_state_change()

    # ------------------------------------------------------------------ the Raft loop

    def _submit(self, event: Event) -> None:
        """Queue a client's event for the Raft loop, which steps the core with every event
        that arrived in the meantime: concurrent proposals share one AppendEntries."""
        self._inbox.append(event)
        self._wakeup.set()

    def _deliver(self, message: object) -> None:
        """Transport callback, in the trio thread; must not block. Raft messages wait in
        the inbox for ``_step_now``, which the transport calls after each read."""
        if isinstance(message, MESSAGE_TYPES):
            if self._started_empty:
                self._warn_if_peer_has_history(message)
            self._inbox.append(Receive(message))  # type: ignore[arg-type]
        elif isinstance(message, ForwardPropose):
            if self._nursery is not None and not self.stopped:
                self._nursery.start_soon(self._serve_forwarded, message)
        elif isinstance(message, ForwardResult):
            if message.incarnation != self.incarnation:
                return  # the answer to a request of an earlier process of this node
            forward = self._forwards.get(message.request_id)
            if forward is None:
                return
            if message.status == ForwardStatus.OK:
                forward.waiter.resolve(message.result)
            elif message.status == ForwardStatus.NOT_LEADER:
                forward.waiter.fail(NotLeader(message.leader_id or None))
            else:
                error = _ERROR_FOR_STATUS[message.status]
                forward.waiter.fail(error("forwarded request failed on the leader"))
        elif isinstance(message, ForwardAccepted):
            if message.incarnation != self.incarnation:
                return
            forward = self._forwards.get(message.request_id)
            if forward is None or forward.waiter.done or message.index <= self.applied_index:
                return  # (applied already: its ForwardResult carries the result)
            forward.index, forward.term = message.index, message.term
            self._forwarded_entries.setdefault(message.index, []).append(forward)

    def _warn_if_peer_has_history(self, message: object) -> None:
        """One loud line when this node started with no term, vote or log but a peer's message
        shows a log it never received: a voter whose data directory was wiped can lose
        acknowledged writes (issue 11 item 5; the real fix needs membership). Also seen on a
        node's very first start after its peers made progress without it; the line says so."""
        raft = self.raft
        if raft is None or raft.log.last_index > 0:
            self._started_empty = False  # it holds entries now: later evidence is its own
            return
        if isinstance(message, RequestVote):
            shown = message.last_log_index
        elif isinstance(message, AppendEntries):
            shown = max(message.prev_log_index, message.leader_commit)
        elif isinstance(message, Heartbeat):
            shown = message.commit
        else:
            return
        if shown > 0:
            self._started_empty = False
            log.warning(
                "node %d started with an empty data directory (%s), but node %d has a log up "
                "to index %d (term %d): if this node held data before (a wiped or replaced "
                "directory), acknowledged writes can be lost; stop it and see docs/durability.md, "
                "section \"A voter's data directory\". (On a node's very first start, after its "
                "peers made progress without it, this is expected.)",
                self.node_id,
                self.config.db_root_path(),
                getattr(message, "src", 0),
                shown,
                getattr(message, "term", 0),
            )

    def _step_now(self) -> None:
        """Step the core right here, in the calling task, rather than waking the Raft loop.

        Called by the transport after each read and by the flush task after each fsync: a
        message is handled, and its reply written to the socket, without a task switch,
        which in trio costs more than the Raft work itself. Effects that must await (a
        hard-state save) are left, with everything after them, to the Raft loop, and until
        it has carried them out no one else steps the core, so effects keep their order.

        Client requests are not stepped this way: one by one they would each cost a message
        where the Raft loop batches them (measured under HTTP at 16 connections: ~25% fewer
        POSTs/s, and no gain in latency at one connection).
        """
        if not self._inbox or self.raft is None or self._failure is not None:
            return
        if self._busy:
            self._wakeup.set()  # the Raft loop takes the inbox once it is done
            return
        try:
            effects = self._step_inbox()
            done = self._carry_out_now(effects, 0)
        except Exception as exc:
            # The core has moved on without its effects (a failed log write, say): the node
            # stops, as it would had the Raft loop failed, and ``run`` raises this. Not left
            # to the caller, a transport task that would take an OSError for a broken
            # connection and carry on.
            log.critical("node %d failed stepping its Raft core: %r", self.node_id, exc)
            self._failure = exc
            self.stop()
            return
        if done < len(effects):
            self._deferred = effects[done:]
            self._busy = True
            self._wakeup.set()
        elif self.raft.next_deadline() < self._raft_sleeps_until_ms:
            self._wakeup.set()  # e.g. a commit notice became due before the loop's deadline

    def _step_inbox(self) -> list[Effect]:
        """Step the core with the inbox, and a ``Tick`` if its deadline has passed."""
        raft = self.raft
        assert raft is not None
        events, self._inbox = self._inbox, []
        deadline_ms = raft.next_deadline()
        now_ms = self.now_ms()
        if trio.current_time() >= node_clock.trio_deadline(deadline_ms):
            # Trio says the deadline passed; the ms round trip may land a hair short of it,
            # and the core must still see its deadline reached (or the loop would spin).
            now_ms = max(now_ms, deadline_ms)
        if now_ms >= deadline_ms:
            events.append(Tick())
        return raft.step_many(now_ms, events) if events else []

    async def _raft_loop(self) -> None:
        raft = self.raft
        assert raft is not None
        while True:
            if self._deferred:
                effects, self._deferred = self._deferred, []
                await self._carry_out(effects)
            if not self._inbox:
                deadline_ms = raft.next_deadline()
                self._raft_sleeps_until_ms = deadline_ms
                if math.isinf(deadline_ms):
                    await self._wakeup.wait()
                else:
                    with trio.move_on_at(node_clock.trio_deadline(deadline_ms)):
                        await self._wakeup.wait()
                self._raft_sleeps_until_ms = -math.inf
            self._wakeup = trio.Event()
            if self._deferred:
                continue  # an inline step left effects: they go before anything newer
            await self._carry_out(self._step_inbox())
            if self._inbox:
                # Let transport and client tasks run between batches, so inputs batch up.
                await trio.lowlevel.checkpoint()

    async def _carry_out(self, effects: list[Effect]) -> None:
        done = self._carry_out_now(effects, 0)
        if done == len(effects):
            return
        self._busy = True
        try:
            while done < len(effects):
                effect = effects[done]
                assert isinstance(effect, PersistHardState)
                # Raft's rule: term and vote are durable before any message that depends on
                # them leaves (the Sends that follow in this list).
                assert self.storage is not None
                await trio.to_thread.run_sync(
                    self.storage.save_hard_state, effect.term, effect.voted_for
                )
                done = self._carry_out_now(effects, done + 1)
        finally:
            self._busy = False

    def _carry_out_now(self, effects: list[Effect], start: int) -> int:
        """Carry out ``effects[start:]`` in order up to the first that must await (a
        ``PersistHardState``); return its position, or ``len(effects)``."""
        for position in range(start, len(effects)):
            effect = effects[position]
            if isinstance(effect, Send):
                self._send(effect.message)
            elif isinstance(effect, PersistEntries):
                self._persist_entries(effect)
            elif isinstance(effect, Apply):
                self._apply(effect)
            elif isinstance(effect, Proposed):
                waiter = self._proposals.pop(effect.request_id, None)
                if waiter is not None:
                    waiter.index, waiter.term = effect.index, effect.term
                    self._by_index[effect.index] = waiter
                    if waiter.on_proposed is not None:
                        waiter.on_proposed(effect.index, effect.term)
            elif isinstance(effect, ReadReady):
                self._read_ready(effect)
            elif isinstance(effect, ProposalRejected):
                waiter = self._proposals.pop(effect.request_id, None)
                if waiter is not None:
                    waiter.fail(NotLeader(effect.leader_id or None))
            elif isinstance(effect, ReadFailed):
                waiter = self._reads.pop(effect.request_id, None)
                if waiter is not None:
                    waiter.fail(NotLeader(effect.leader_id or None))
            elif isinstance(effect, PersistHardState):
                return position
            elif isinstance(effect, RoleChanged):
                self._role_changed(effect)
        return len(effects)

    def _send(self, message: object) -> bytes | None:
        """Queue ``message``; its frame (see ``Transport.withdraw``), or None if dropped."""
        assert self.transport is not None
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

    def _role_changed(self, change: RoleChanged) -> None:
        if self._forwards:
            self._withdraw_forwards(change.leader_id)
        was_leader, self._was_leader = self._was_leader, change.role is Role.LEADER
        last_term, self._last_term = self._last_term, change.term
        if was_leader and change.role is not Role.LEADER:
            if self._transferring and change.term > last_term:
                # The hand-over this node asked for: normal operations, logged at INFO.
                log.info(
                    "node %d term %d: stepped down as leader: handed over (term %d)",
                    self.node_id,
                    last_term,
                    change.term,
                )
            else:
                if change.term == last_term:
                    why = "no quorum heard within an election timeout (CheckQuorum)"
                else:
                    why = f"saw term {change.term}"
                log.warning(
                    "node %d term %d: stepped down as leader: %s", self.node_id, last_term, why
                )
        if change.role is Role.LEADER:
            log.info("node %d term %d: elected leader", self.node_id, change.term)
        elif change.role is Role.FOLLOWER and change.leader_id:
            log.info(
                "node %d term %d: follower of leader %d",
                self.node_id,
                change.term,
                change.leader_id,
            )
        elif change.role is Role.FOLLOWER:
            log.info("node %d term %d: follower, no leader known", self.node_id, change.term)
        else:
            log.info(
                "node %d term %d: %s, campaigning", self.node_id, change.term, change.role.value
            )
        self._notify_state_change()

    def _withdraw_forwards(self, leader_id: int) -> None:
        """Leadership moved away from where pending writes were forwarded: those whose frame
        is still in the transport's queue certainly never reached that node, so they are
        taken back and go to the next leader (``propose`` retries a ``NotLeader``). The others
        may have been taken: they wait for their outcome."""
        assert self.transport is not None
        for forward in self._forwards.values():
            frame = forward.frame
            if frame is None or forward.leader == leader_id:
                continue
            forward.frame = None
            if self.transport.withdraw(forward.leader, frame):
                forward.waiter.fail(NotLeader(leader_id or None))

    def _notify_state_change(self) -> None:
        self._state_changed.set()
        self._state_changed = trio.Event()

    # ------------------------------------------------------------------ persistence

    def _persist_entries(self, effect: PersistEntries) -> None:
        assert self.storage is not None
        self.storage.append(effect.entries)
        self._unflushed += len(effect.entries)
        self._flush_needed.set()
        if self._disk_first or self._unflushed >= self._flush_threshold:
            self._flush_threshold_hit.set()

    async def _flush_loop(self, fsync_thread: WorkerThread) -> None:
        storage = self.storage
        assert storage is not None
        while True:
            await self._flush_needed.wait()
            if not self._disk_first:
                # MemFirst batch policy: flush at `threshold` pending entries or after
                # `interval_ms`, whichever comes first.
                with trio.move_on_after(self._flush_interval_s):
                    await self._flush_threshold_hit.wait()
            self._flush_needed = trio.Event()
            self._flush_threshold_hit = trio.Event()
            self._unflushed = 0
            index, term = await fsync_thread.run(storage.sync)
            if index:
                self._inbox.append(Persisted(index, term))
                self._step_now()

    # ------------------------------------------------------------------ applying

    def _apply(self, effect: Apply) -> None:
        sm = self.state_machine
        by_index = self._by_index
        for entry in effect.entries:
            result = b""
            if entry.kind is EntryKind.COMMAND:
                result = sm.apply(entry.index, entry.data)
            self.applied_index = entry.index
            waiter = by_index.pop(entry.index, None)
            if waiter is not None:
                if waiter.term == entry.term:
                    waiter.resolve(result)
                else:  # our entry was overwritten by a newer leader's: never committed
                    waiter.fail(NotLeader(self.raft.leader_id if self.raft else None))
            if self._forwarded_entries:
                for forward in self._forwarded_entries.pop(entry.index, ()):
                    if forward.term == entry.term:  # committed, by whichever leader
                        forward.waiter.resolve(result)
                    else:  # overwritten: never committed, so it may be sent again
                        forward.waiter.fail(NotLeader(self.raft.leader_id if self.raft else None))
        heap = self._reads_by_index
        while heap and heap[0][0] <= self.applied_index:
            _, _, waiter = heapq.heappop(heap)
            waiter.resolve(None)

    def _read_ready(self, effect: ReadReady) -> None:
        waiter = self._reads.pop(effect.request_id, None)
        if waiter is None:
            return
        if effect.read_index <= self.applied_index:
            waiter.resolve(None)
        else:
            heapq.heappush(self._reads_by_index, (effect.read_index, next(self._ids), waiter))

    # ------------------------------------------------------------------ requests

    def _check_capacity(self) -> None:
        if self.stopped or self._refusing:
            raise Stopped("node is stopping")
        pending = (
            len(self._proposals)
            + len(self._by_index)
            + len(self._reads)
            + len(self._reads_by_index)
            + len(self._forwards)
        )
        if pending >= self._max_pending:
            raise Overloaded(f"{pending} requests pending on node {self.node_id}")

    async def _wait(self, waiter: _Waiter, deadline: float, cleanup: Callable[[], object]) -> Any:
        """Wait for ``waiter``; at ``deadline`` it fails with ``Timeout`` after ``cleanup``."""
        if not waiter.done:
            heap = self._deadlines
            if len(heap) > 2 * self._max_pending + 64:
                # Compact: at most max_pending entries are unresolved, so most are long done
                # (each would otherwise wait for its deadline to reach the top of the heap).
                heap[:] = [item for item in heap if not item[2].done]
                heapq.heapify(heap)
            heapq.heappush(heap, (deadline, next(self._ids), waiter, cleanup))
            if deadline < self._sweep_at:
                self._deadline_sooner.set()
            await waiter.wait()
        if waiter.error is not None:
            raise waiter.error
        return waiter.value

    async def _sweep_deadlines(self) -> None:
        heap = self._deadlines
        while True:
            now = trio.current_time()
            while heap and (heap[0][0] <= now or heap[0][2].done):
                _, _, waiter, cleanup = heapq.heappop(heap)
                if not waiter.done:
                    cleanup()
                    waiter.fail(
                        Timeout("request timed out; a write may or may not have been applied")
                    )
            self._sweep_at = heap[0][0] if heap else math.inf
            self._deadline_sooner = trio.Event()
            with trio.move_on_at(self._sweep_at):
                await self._deadline_sooner.wait()

    async def _wait_for_leader(self, deadline: float) -> int:
        raft = self.raft
        assert raft is not None
        while not raft.leader_id:
            if self.stopped or self._refusing:
                raise Stopped("node is stopping")
            with trio.move_on_at(deadline):
                await self._state_changed.wait()
            if trio.current_time() >= deadline and not raft.leader_id:
                raise NoLeader("no leader elected")
        return raft.leader_id

    async def propose(self, command: bytes, timeout_s: float | None = None) -> bytes:
        """Replicate ``command``; return the state machine's result once it is applied here.

        On a follower the command is forwarded to the leader. Retries cover only outcomes
        where the command certainly was not committed (rejected, or overwritten).
        """
        if len(command) > MAX_COMMAND_BYTES:
            # One entry must fit one frame, or replication would stall on it for good.
            raise TooLarge(f"command of {len(command)} bytes exceeds {MAX_COMMAND_BYTES}")
        deadline = trio.current_time() + (
            self.request_timeout_s if timeout_s is None else timeout_s
        )
        while True:
            leader = await self._wait_for_leader(deadline)
            try:
                if leader == self.node_id:
                    return await self._propose_local(command, deadline)
                return await self._propose_forwarded(leader, command, deadline)
            except (NotLeader, NoLeader) as exc:
                if trio.current_time() >= deadline:
                    raise NoLeader("no leader accepted the request in time") from exc
                # Leadership is moving: wait for news (or a beat) and try again.
                with trio.move_on_after(0.05):
                    await self._state_changed.wait()

    async def _propose_local(
        self,
        command: bytes,
        deadline: float,
        on_proposed: Callable[[int, int], object] | None = None,
    ) -> bytes:
        self._check_capacity()
        request_id = next(self._ids)
        waiter = _Waiter()
        waiter.on_proposed = on_proposed
        self._proposals[request_id] = waiter
        self._submit(Propose(request_id, command))

        def forget() -> None:
            self._proposals.pop(request_id, None)
            if waiter.index and self._by_index.get(waiter.index) is waiter:
                del self._by_index[waiter.index]

        result: bytes = await self._wait(waiter, deadline, forget)
        return result

    async def _propose_forwarded(self, leader: int, command: bytes, deadline: float) -> bytes:
        """Forward ``command`` to ``leader``; its result once committed. Raises ``NotLeader``
        (or ``NoLeader``) only when the command certainly was not committed: refused, taken
        back from the transport's queue unsent, or its entry overwritten."""
        self._check_capacity()
        request_id = next(self._ids)
        forward = _Forward(leader)
        self._forwards[request_id] = forward
        forward.frame = self._send(
            ForwardPropose(
                src=self.node_id,
                dst=leader,
                request_id=request_id,
                data=command,
                incarnation=self.incarnation,
            )
        )
        try:
            result: bytes = await self._wait(forward.waiter, deadline, lambda: None)
            return result
        finally:
            self._forwards.pop(request_id, None)
            if forward.index:
                waiting = self._forwarded_entries.get(forward.index, [])
                if forward in waiting:
                    waiting.remove(forward)
                    if not waiting:
                        del self._forwarded_entries[forward.index]

    async def _serve_forwarded(self, message: ForwardPropose) -> None:
        """Leader side of a follower's forwarded write."""
        status, result = ForwardStatus.OK, b""
        try:
            if self.raft is None or not self.raft.is_leader or self._refusing:
                # (Stopping: certainly not proposed here, so the follower may send it on.)
                raise NotLeader(self.raft.leader_id if self.raft else None)
            deadline = trio.current_time() + self.request_timeout_s

            def accepted(index: int, term: int) -> None:
                # Lets the follower settle the request even if this node dies before the
                # entry commits: it knows which entry to watch.
                self._send(
                    ForwardAccepted(
                        src=self.node_id,
                        dst=message.src,
                        request_id=message.request_id,
                        index=index,
                        term=term,
                        incarnation=message.incarnation,
                    )
                )

            result = await self._propose_local(message.data, deadline, accepted)
        except NotLeader:
            status = ForwardStatus.NOT_LEADER
        except DengineError as exc:
            status = _STATUS_FOR_ERROR.get(type(exc), ForwardStatus.NO_LEADER)
        leader = self.raft.leader_id if self.raft else 0
        if not self.stopped:
            self._send(
                ForwardResult(
                    src=self.node_id,
                    dst=message.src,
                    request_id=message.request_id,
                    status=status,
                    leader_id=leader,
                    result=result,
                    incarnation=message.incarnation,
                )
            )

    async def read_barrier(self, *, lease: bool, timeout_s: float | None = None) -> None:
        """Return once the local state machine reflects every write committed before the call
        (linearizable), or the leader's lease vouches for it (lease)."""
        raft = self.raft
        assert raft is not None
        if (
            lease
            and raft.role is Role.LEADER
            and self.applied_index >= raft.commit_index
            and raft.lease_valid(self.now_ms())
        ):
            return  # the lease read fast path: no message, no task switch
        deadline = trio.current_time() + (
            self.request_timeout_s if timeout_s is None else timeout_s
        )
        while True:
            self._check_capacity()
            await self._wait_for_leader(deadline)
            request_id = next(self._ids)
            waiter = _Waiter()
            self._reads[request_id] = waiter
            self._submit(ReadRequest(request_id, lease))
            try:
                await self._wait(waiter, deadline, partial(self._reads.pop, request_id, None))
                return
            except NotLeader as exc:  # reads are idempotent: retry until the deadline
                if trio.current_time() >= deadline:
                    raise NoLeader("no leader confirmed the read in time") from exc
                with trio.move_on_after(0.05):
                    await self._state_changed.wait()

    def reachable_peers(self) -> list[int]:
        """The peers this node's transport is connected to right now (their processes are
        up and took the handshake), in id order."""
        if self.transport is None:
            return []
        return sorted(p for p, stats in self.transport.stats.peers.items() if stats.connected)

    async def transfer_leadership(self, timeout_s: float) -> bool:
        """Hand leadership to the most up-to-date follower (Raft thesis §3.10); True once
        another node leads. Gives up (False) after ``timeout_s`` seconds, or as soon as no
        peer is reachable (whole-cluster stop: nobody to hand over to)."""
        raft = self.raft
        if raft is None or not raft.is_leader or not self.reachable_peers():
            return False
        self._transferring = True
        try:
            self._submit(TransferLeader(0))
            with trio.move_on_after(timeout_s):
                while raft.is_leader or not raft.leader_id:
                    # Woken by role changes; the peers' links are looked at between them.
                    with trio.move_on_after(0.05):
                        await self._state_changed.wait()
                    if raft.is_leader and not self.reachable_peers():
                        break
        finally:
            self._transferring = False
        return not raft.is_leader and raft.leader_id not in (0, self.node_id)

    async def wait_for_state_change(self) -> None:
        await self._state_changed.wait()

    def _fail_everything(self, error: BaseException) -> None:
        for table in (self._proposals, self._by_index, self._reads):
            for waiter in table.values():
                waiter.fail(error)
            table.clear()
        for forward in self._forwards.values():
            forward.waiter.fail(error)
        self._forwards.clear()
        self._forwarded_entries.clear()
        for _, _, waiter in self._reads_by_index:
            waiter.fail(error)
        self._reads_by_index = []
