"""The driver: steps the sans-IO core and carries out its effects, in order.

Inputs reach the core through one inbox: client events (``submit``: proposals, reads, a
transfer), which the Raft loop (``run``) takes in batches so concurrent proposals share one
AppendEntries, and peers' messages (``receive``), which the task that read them steps at once
(``step_now``) so a message and its reply cost no task switch. The loop also ticks the core
when its next deadline passes.

The ordering rule: the effects of one step are carried out in the order the core returned
them, synchronously, up to the first that must await (a barrier: ``PersistHardState``, term
and vote durable before any later message leaves, Raft paper Figure 2; ``RestoreSnapshot``, a
leader's snapshot installed before anything that follows it). What an inline step could not
finish is left, in order, to the Raft loop, and until the loop has carried it out nobody
steps the core: effects of later steps never overtake those of earlier ones.

I/O effects are carried out here (``Send`` to the transport, ``PersistEntries`` and
``PersistHardState`` to the storage, fsyncs by ``flush_loop``); the others go to the
``EffectHandler`` (the runtime: state machine, request table, role).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import NoReturn, Protocol

import trio

from ..metrics import MetricsSink, OperatorWarnings
from ..raft import (
    Apply,
    Effect,
    Entry,
    Event,
    Persisted,
    PersistEntries,
    PersistHardState,
    ProposalRejected,
    Proposed,
    ReadFailed,
    ReadReady,
    RestoreSnapshot,
    RoleChanged,
    Send,
    Tick,
)
from ..raft.effects import ConfChangeRejected, MembershipChanged
from .worker import WorkerThread

__all__ = ["Core", "Driver", "EffectHandler", "LogStorage"]

log = logging.getLogger("dengine_trio.node")


class Core(Protocol):
    """What the driver needs of the Raft core (``RaftNode``)."""

    def step_many(self, now_ms: float, events: list[Event]) -> list[Effect]:
        """Step with ``events`` at ``now_ms`` (ms, the core's clock); return the effects, in
        the order they must be carried out. An exception means the node must stop."""
        ...

    def next_deadline(self) -> float:
        """When (ms, the core's clock) the core next needs a ``Tick``; ``inf`` if never."""
        ...


class LogStorage(Protocol):
    """What the driver needs of the storage (``Storage``)."""

    def append(self, entries: Sequence[Entry]) -> None:
        """Write ``entries`` (contiguous), truncating the log from ``entries[0].index``
        first; not durable until ``sync``. Raises ``StorageError`` once the log has failed."""
        ...

    def save_hard_state(self, term: int, voted_for: int) -> None:
        """Durably record ``term`` and ``voted_for`` (0: none) before returning (Raft paper
        Figure 2: persistent state is updated before responding). Raises ``OSError``."""
        ...

    def sync(self) -> tuple[int, int]:
        """Fsync what was appended; return (index, term) of the last entry covered, (0, 0)
        if none. Runs in a worker thread beside ``append``. Raises ``StorageError``."""
        ...


class EffectHandler(Protocol):
    """Where the effects that are not I/O go, each carried out synchronously."""

    def apply(self, effect: Apply) -> None:
        """Apply ``effect.entries`` (committed, in log order) to the state machine and
        resolve the requests they answer."""
        ...

    def proposed(self, effect: Proposed) -> None:
        """Proposal ``effect.request_id`` became entry (``index``, ``term``)."""
        ...

    def proposal_rejected(self, effect: ProposalRejected) -> None:
        """Proposal ``effect.request_id`` was refused here; ``leader_id`` (0: unknown) may
        take it."""
        ...

    def read_ready(self, effect: ReadReady) -> None:
        """Read ``effect.request_id`` may be served once ``read_index`` has applied."""
        ...

    def read_failed(self, effect: ReadFailed) -> None:
        """Read ``effect.request_id`` got no read index here; ``leader_id`` (0: unknown) may
        serve it."""
        ...

    def role_changed(self, effect: RoleChanged) -> None:
        """The node's (role, term, leader) changed: update status and metrics."""
        ...

    def membership_changed(self, effect: MembershipChanged) -> None:
        """The membership in effect changed: links follow it, a new cluster id is kept."""
        ...

    def conf_change_rejected(self, effect: ConfChangeRejected) -> None:
        """Membership change ``effect.request_id`` was refused (``effect.code`` says why)."""
        ...

    async def restore_snapshot(self, effect: RestoreSnapshot) -> None:
        """Install the staged snapshot ``effect`` names (a barrier: awaited before any
        later effect); raises what the disk or the state machine raises (the node stops)."""
        ...

    def snapshot_stepped(self, effects: Sequence[Effect]) -> None:
        """A step that took an ``InstallSnapshot`` handed over with ``receive_snapshot``
        returned ``effects`` (staged files that no ``RestoreSnapshot`` names are not needed)."""
        ...


def _unhandled(effect: NoReturn) -> NoReturn:
    """mypy fails where this is reachable: an effect type the ``match`` does not handle."""
    raise AssertionError(f"unhandled effect {effect!r}")


class Driver:
    """Steps ``core`` and carries out its effects for one node.

    ``send`` queues a message on the transport. ``now_ms()`` is the core's clock (ms);
    ``trio_deadline(ms)`` converts one of the core's deadlines to trio time (s).
    ``on_failure`` is called once if stepping the core or carrying out an effect fails in an
    inline step (the node must stop); such a failure in the Raft loop propagates out of
    ``run``. ``disk_first``, ``flush_threshold`` (entries) and ``flush_interval_s`` choose
    when ``flush_loop`` fsyncs. ``metrics`` receives each fsync's duration (s);
    ``warnings`` hears of slow fsyncs and of a Raft loop that woke late past a deadline
    (``is_leader()``: only a leader's late wake-up is reported, its heartbeats went out late).
    """

    def __init__(
        self,
        node_id: int,
        core: Core,
        storage: LogStorage,
        send: Callable[[object], object],
        handler: EffectHandler,
        *,
        now_ms: Callable[[], float],
        trio_deadline: Callable[[float], float],
        on_failure: Callable[[Exception], None],
        disk_first: bool = True,
        flush_threshold: int = 1,
        flush_interval_s: float = 0.0,
        metrics: MetricsSink | None = None,
        warnings: OperatorWarnings | None = None,
        is_leader: Callable[[], bool] = lambda: False,
    ) -> None:
        self.node_id = node_id
        self.core = core
        self.storage = storage
        self._send = send
        self._handler = handler
        self._now_ms = now_ms
        self._trio_deadline = trio_deadline
        self._on_failure = on_failure
        self._disk_first = disk_first
        self._flush_threshold = flush_threshold
        self._flush_interval_s = flush_interval_s
        self.failure: Exception | None = None
        """What stopped the node from the inside (an inline step that failed)."""
        self._inbox: list[Event] = []
        self._wakeup = trio.Event()
        self._sleeps_until_ms = -math.inf  # the Raft loop's deadline while it waits
        self._busy = False  # effects are being carried out across an await: do not step
        self._snapshot_in_inbox = False  # a receive_snapshot event waits in the inbox
        self._deferred: list[Effect] = []  # what an inline step left for the Raft loop
        self._unflushed = 0
        self._flush_needed = trio.Event()
        self._flush_threshold_hit = trio.Event()
        self._metrics = metrics if metrics is not None else MetricsSink()
        self._warnings = warnings
        self._late_s = warnings.loop_late_s if warnings is not None else math.inf
        self._is_leader = is_leader

    # -- inputs ----------------------------------------------------------------------------

    def submit(self, event: Event) -> None:
        """Queue a client's event for the Raft loop, which steps the core with every event
        that arrived in the meantime: concurrent proposals share one AppendEntries."""
        self._inbox.append(event)
        self._wakeup.set()

    def receive(self, event: Event) -> None:
        """Queue a peer's message (as ``Receive``) for the next ``step_now``."""
        self._inbox.append(event)

    def receive_snapshot(self, event: Event) -> None:
        """Queue ``Receive(InstallSnapshot)`` for a staged snapshot file and step it now; the
        handler hears the effects of the step that takes it (``snapshot_stepped``)."""
        self._inbox.append(event)
        self._snapshot_in_inbox = True
        self.step_now()

    def step_now(self) -> None:
        """Step the core right here, in the calling task, rather than waking the Raft loop.

        Called by the transport after each read and by the flush task after each fsync: a
        message is handled, and its reply written to the socket, without a task switch,
        which in trio costs more than the Raft work itself. Effects that must await are left,
        with everything after them, to the Raft loop (the ordering rule).

        Client requests are not stepped this way: one by one they would each cost a message
        where the Raft loop batches them (measured under HTTP at 16 connections: ~25% fewer
        POSTs/s, and no gain in latency at one connection).
        """
        if not self._inbox or self.failure is not None:
            return
        if self._busy:
            self._wakeup.set()  # the Raft loop takes the inbox once it is done
            return
        try:
            effects = self._step_inbox()
            done = self._carry_out_now(effects, 0)
        except Exception as exc:
            # The core has moved on without its effects (a failed log write, say): the node
            # stops, as it would had the Raft loop failed. Not left to the caller, a transport
            # task that would take an OSError for a broken connection and carry on.
            log.critical("node %d failed stepping its Raft core: %r", self.node_id, exc)
            self.failure = exc
            self._on_failure(exc)
            return
        if done < len(effects):
            self._deferred = effects[done:]
            self._busy = True
            self._wakeup.set()
        elif self.core.next_deadline() < self._sleeps_until_ms:
            self._wakeup.set()  # e.g. a commit notice became due before the loop's deadline

    def _step_inbox(self) -> list[Effect]:
        """Step the core with the inbox, and a ``Tick`` if its deadline has passed."""
        core = self.core
        events, self._inbox = self._inbox, []
        deadline_ms = core.next_deadline()
        now_ms = self._now_ms()
        if trio.current_time() >= self._trio_deadline(deadline_ms):
            # Trio says the deadline passed; the ms round trip may land a hair short of it,
            # and the core must still see its deadline reached (or the loop would spin).
            now_ms = max(now_ms, deadline_ms)
        if now_ms >= deadline_ms:
            events.append(Tick())
        if not events:
            return []
        effects = core.step_many(now_ms, events)
        if self._snapshot_in_inbox:
            self._snapshot_in_inbox = False
            self._handler.snapshot_stepped(effects)
        return effects

    # -- the Raft loop ---------------------------------------------------------------------

    async def run(self) -> None:
        """The Raft loop; runs until cancelled. Whatever stepping the core or carrying out
        an effect raises here (``StorageError``, ``OSError`` of a hard state write)
        propagates: the node must stop, its core having moved on without that effect."""
        core = self.core
        while True:
            if self._deferred:
                effects, self._deferred = self._deferred, []
                await self._carry_out(effects)
            if not self._inbox:
                deadline_ms = core.next_deadline()
                self._sleeps_until_ms = deadline_ms
                if math.isinf(deadline_ms):
                    await self._wakeup.wait()
                else:
                    wake_at = self._trio_deadline(deadline_ms)
                    with trio.move_on_at(wake_at) as sleep:
                        await self._wakeup.wait()
                    if sleep.cancelled_caught:
                        # Woke past the deadline: something held the trio thread (etcd's
                        # "leader failed to send out heartbeat on time").
                        late_s = trio.current_time() - wake_at
                        if late_s >= self._late_s and self._warnings is not None:
                            self._warnings.loop_late(late_s, self._is_leader())
                self._sleeps_until_ms = -math.inf
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
                if isinstance(effect, PersistHardState):
                    # Raft's rule: term and vote are durable before any message that depends
                    # on them leaves (the Sends that follow in this list).
                    seconds = await trio.to_thread.run_sync(
                        _timed, self.storage.save_hard_state, effect.term, effect.voted_for
                    )
                    self._fsynced(seconds)
                elif isinstance(effect, RestoreSnapshot):
                    # The core's log now starts after the snapshot: the WAL and the state
                    # machine must too before anything later (its answer to the leader).
                    await self._handler.restore_snapshot(effect)
                else:  # a new barrier type fails here until it is awaited here too
                    raise AssertionError(f"unhandled barrier {effect!r}")
                done = self._carry_out_now(effects, done + 1)
        finally:
            self._busy = False

    def _carry_out_now(self, effects: list[Effect], start: int) -> int:
        """Carry out ``effects[start:]`` in order up to the first barrier (an effect whose type
        has ``barrier = True``, see ``dengine_trio.raft.effects``); return its position, or
        ``len(effects)``."""
        handler = self._handler
        for position in range(start, len(effects)):
            effect = effects[position]
            # (getattr: something that is no effect at all reaches ``_unhandled`` below.)
            if getattr(effect, "barrier", False):
                return position
            match effect:
                case Send():
                    self._send(effect.message)
                case PersistEntries():
                    self._persist_entries(effect)
                case Apply():
                    handler.apply(effect)
                case Proposed():
                    handler.proposed(effect)
                case ReadReady():
                    handler.read_ready(effect)
                case ProposalRejected():
                    handler.proposal_rejected(effect)
                case ReadFailed():
                    handler.read_failed(effect)
                case RoleChanged():
                    handler.role_changed(effect)
                case MembershipChanged():
                    handler.membership_changed(effect)
                case ConfChangeRejected():
                    handler.conf_change_rejected(effect)
                case PersistHardState() | RestoreSnapshot():  # barriers: awaited by _carry_out
                    raise AssertionError(f"barrier {effect!r} carried out synchronously")
                case _:
                    _unhandled(effect)
        return len(effects)

    # -- persistence -----------------------------------------------------------------------

    def _persist_entries(self, effect: PersistEntries) -> None:
        self.storage.append(effect.entries)
        self._unflushed += len(effect.entries)
        self._flush_needed.set()
        if self._disk_first or self._unflushed >= self._flush_threshold:
            self._flush_threshold_hit.set()

    async def flush_loop(self, fsync_thread: WorkerThread) -> None:
        """Runs until cancelled: fsyncs the log in ``fsync_thread``. DiskFirst: group commit
        (one fsync covers everything appended while the previous one ran). MemFirst: at
        ``flush_threshold`` pending entries or after ``flush_interval_s``. Each fsync is
        reported to the core as ``Persisted``, stepped at once (under DiskFirst an entry
        counts toward commit on this node only from then; the leader writes its log in
        parallel with replication: Raft thesis section 10.2.1).
        Raises ``StorageError`` when an fsync fails (the node must stop)."""
        storage = self.storage

        def timed_sync() -> tuple[tuple[int, int], float]:
            start = time.perf_counter()
            synced = storage.sync()
            return synced, time.perf_counter() - start

        while True:
            await self._flush_needed.wait()
            if not self._disk_first:
                with trio.move_on_after(self._flush_interval_s):
                    await self._flush_threshold_hit.wait()
            self._flush_needed = trio.Event()
            self._flush_threshold_hit = trio.Event()
            self._unflushed = 0
            (index, term), seconds = await fsync_thread.run(timed_sync)
            if index:
                self._fsynced(seconds)
                self._inbox.append(Persisted(index, term))
                self.step_now()

    def _fsynced(self, seconds: float) -> None:
        self._metrics.wal_fsync(seconds)
        if self._warnings is not None:
            self._warnings.wal_fsync(seconds)


def _timed(fn: Callable[[int, int], None], a: int, b: int) -> float:
    """Seconds ``fn(a, b)`` took (run in a worker thread: the fsync alone is timed)."""
    start = time.perf_counter()
    fn(a, b)
    return time.perf_counter() - start
