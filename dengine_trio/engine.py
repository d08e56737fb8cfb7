"""The embedded API: one call starts a Raft node inside the caller's trio program.

    async with EmbeddedEngine.start(load_config("config/n1")) as engine:
        await engine.wait_ready(timeout_s=10)
        client = engine.client()
        await client.put(b"user", b"alice")
        assert await client.get(b"user") == b"alice"

Writes and linearizable or lease reads work on every node (a follower forwards writes to the
leader and asks it for a read index); eventual reads are a local dictionary lookup.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import trio

from .config import NodeConfig
from .errors import Stopped, Timeout, TooLarge
from .metrics import MetricsSink
from .policy import ReadPolicy
from .runtime.node import NodeRuntime
from .runtime.snapshotting import SnapshotFile
from .runtime.status import NodeStatus
from .statemachine import KVStateMachine, StateMachine, encode_delete, encode_put


class EmbeddedEngine:
    """A running node. Create it with ``EmbeddedEngine.start(config)``.

    ``config`` is the :class:`NodeConfig` it runs, ``node_id`` its id, ``state_machine`` what
    it applies committed commands to. Timeouts given here are in seconds (trio's unit); the
    configuration's are in ms. Errors are :class:`~dengine_trio.errors.DengineError`
    subclasses unless said otherwise. ``metrics`` is where the node's metrics go (default: a
    no-op :class:`~dengine_trio.metrics.MetricsSink`; the node process passes a
    :class:`~dengine_trio.metrics.prometheus.PrometheusSink`, see ``docs/monitoring.md``).
    """

    def __init__(
        self,
        config: NodeConfig,
        state_machine: StateMachine | None = None,
        metrics: MetricsSink | None = None,
    ) -> None:
        self.config = config
        self.node_id = config.cluster.node_id
        self.state_machine: StateMachine = state_machine or KVStateMachine()
        self._runtime = NodeRuntime(config, self.state_machine, metrics)
        self.metrics: MetricsSink = self._runtime.metrics
        self._done = trio.Event()

    @classmethod
    @asynccontextmanager
    async def start(
        cls,
        config: NodeConfig,
        *,
        state_machine: StateMachine | None = None,
        metrics: MetricsSink | None = None,
    ) -> AsyncIterator[EmbeddedEngine]:
        """Open storage, start the node's tasks, and stop them (flushing) on exit.

        An async context manager yielding the running engine; peers need not be up. Without
        ``state_machine`` a new :class:`KVStateMachine` is used. Raises ``StorageError``
        (``dengine_trio.storage``: ``StorageLockedError`` if another process holds
        ``db_root_dir``, or a corrupt log or hard state) before any task starts; a later
        failure to start (an ``OSError``: the Raft port is taken) comes in an exception group.
        """
        engine = cls(config, state_machine, metrics)
        # Outside the nursery, so a locked or corrupt db_root_dir raises StorageError itself
        # rather than inside an exception group.
        await engine._runtime.open_storage()
        async with trio.open_nursery() as nursery:
            await nursery.start(engine._run)
            try:
                yield engine
            finally:
                await engine.stop()

    async def _run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await self._runtime.run(task_status=task_status)
        finally:
            self._done.set()

    async def stop(self) -> None:
        """Stop the node: pending requests fail with ``Stopped``, the log is flushed and
        closed, and every task of the node has ended when this returns. Idempotent."""
        self._runtime.stop()
        await self._done.wait()

    def refuse_requests(self) -> None:
        """Begin a stop: requests pending on this node fail with ``Stopped`` at once, and new
        ones are refused with it, while the node still takes part in Raft until ``stop``.
        A server calls this before it stops serving, so every request gets an answer."""
        self._runtime.refuse_requests()

    # ------------------------------------------------------------------ state

    def node_status(self, *, detail: bool = False) -> NodeStatus:
        """This node now, as one frozen value (see ``NodeStatus``); ``detail`` adds the
        leader's view of its peers and the transport's counters."""
        return self._runtime.status(detail=detail)

    async def wait_ready(self, timeout_s: float) -> tuple[int, int]:
        """Wait until a leader is known (and, on the leader, has committed its first entry);
        return (leader_id, term). Raises ``Timeout``, or ``Stopped``."""
        with trio.move_on_after(timeout_s):
            while True:
                status = self._runtime.status()
                if status.ready and status.leader_id is not None:
                    return status.leader_id, status.term
                if status.stopped:
                    raise Stopped("engine stopped")
                # Role changes wake us at once; the first commit of a term is polled for.
                with trio.move_on_after(0.01):
                    await self._runtime.wait_for_state_change()
        raise Timeout(f"no leader within {timeout_s} s")

    def is_leader(self) -> bool:
        """This node is the leader of its current term, as far as it knows (a deposed leader
        learns it from the next message of a higher term, or steps down by CheckQuorum)."""
        return self._runtime.status().is_leader

    def leader_id(self) -> int | None:
        """The leader this node knows of in its current term (itself included), else None."""
        return self._runtime.status().leader_id

    def has_quorum(self) -> bool:
        """On the leader: it heard from a quorum within the election timeout."""
        return self._runtime.status().has_quorum

    def leader_contact_recent(self) -> bool:
        """On a follower: it heard from its leader within ``election_timeout_max_ms``."""
        return self._runtime.status().leader_contact_recent

    def status(self) -> dict[str, object]:
        """``/status``: the node's state as JSON-ready data."""
        st = self._runtime.status(detail=True)
        status: dict[str, object] = {
            "node_id": st.node_id,
            "role": st.role,
            "term": st.term,
            "leader_id": st.leader_id,
            "commit_index": st.commit_index,
            "applied_index": st.applied_index,
            "last_log_index": st.last_log_index,
            "snapshot_index": st.snapshot_index,
            "snapshot_term": st.snapshot_term,
            "durability": self.config.raft.persistence.strategy.value,
        }
        if st.is_leader:
            status["peers"] = {
                str(peer): {
                    "match_index": p.match_index,
                    "next_index": p.next_index,
                    "state": p.state,
                    "last_contact_ms": p.last_contact_ago_ms,
                }
                for peer, p in st.peers.items()
            }
        if st.transport:
            status["transport"] = dict(st.transport)
        return status

    async def transfer_leadership(self, timeout_s: float) -> bool:
        """Hand leadership to the most up-to-date follower; True once another node leads.
        False after ``timeout_s`` seconds, or at once when no peer is reachable."""
        return await self._runtime.transfer_leadership(timeout_s)

    def pending_requests(self) -> int:
        """Client requests occupying this node now: waiting for a leader, forwarded, pending
        commit or a read's confirmation (what ``limits.max_pending_requests`` bounds)."""
        return self._runtime.pending_requests()

    def reachable_peers(self) -> list[int]:
        """Ids of the peers this node is connected to right now (their processes are up)."""
        return self._runtime.reachable_peers()

    # ------------------------------------------------------------------ custom state machines

    async def propose(self, command: bytes, timeout_s: float | None = None) -> bytes:
        """Replicate an opaque command; return the state machine's ``apply`` result for it.

        Returns once the command is committed and applied on the leader (a follower forwards
        it; its own state machine may apply it a heartbeat later). Retries by itself while the
        command certainly was not committed. ``timeout_s`` in seconds, default
        ``request_timeout_ms``. Raises ``TooLarge`` (``command`` over ``MAX_COMMAND_BYTES``, the
        transport frame limit less 1 MiB), ``Timeout`` (it may or may not have been applied),
        ``NoLeader``, ``Overloaded`` (``max_pending_requests`` reached), ``Stopped``.
        """
        return await self._runtime.propose(command, timeout_s)

    async def read_barrier(self, policy: ReadPolicy, timeout_s: float | None = None) -> None:
        """Wait until the local state machine may serve a read under ``policy``.

        ``LINEARIZABLE``: it has applied every write acknowledged before the call (ReadIndex,
        Raft thesis section 6.4: a heartbeat round to a majority, and from a follower one round
        trip to the leader). ``LEASE``: the same while the leader's lease holds, without the
        round (thesis section 6.4.1). ``EVENTUAL``: returns at once. ``timeout_s`` in seconds,
        default ``request_timeout_ms``. Raises ``NoLeader`` (none confirmed the read in time),
        ``Timeout``, ``Overloaded``, ``Stopped``.
        """
        if policy is not ReadPolicy.EVENTUAL:
            await self._runtime.read_barrier(lease=policy is ReadPolicy.LEASE, timeout_s=timeout_s)

    async def wait_applied(self, index: int, timeout_s: float | None = None) -> int:
        """Wait until this node's state machine has applied entry ``index``; return the
        applied index then (>= ``index``).

        Read-your-writes on any node: a client that wrote through the leader (which answered
        the write's index) reads here after this, under any policy, ``EVENTUAL`` included.
        Waits on the request table's read heap (settled by every apply and snapshot install),
        so it costs no polling. ``timeout_s`` in seconds, default ``request_timeout_ms``.
        Raises ``Timeout`` (not applied by then), ``Overloaded`` (occupies one of
        ``max_pending_requests`` while it waits), ``Stopped``.
        """
        runtime = self._runtime
        if runtime.applied_index >= index:
            return runtime.applied_index
        requests = runtime.requests
        requests.admit()
        try:
            request_id, waiter = requests.new_read()
            requests.read_ready(request_id, index, runtime.applied_index)
            timeout = runtime.request_timeout_s if timeout_s is None else timeout_s
            deadline = trio.current_time() + timeout
            await requests.wait(waiter, deadline, partial(requests.forget_read, request_id))
        finally:
            requests.release()
        return runtime.applied_index

    def applied_lag(self) -> int:
        """Entries this node has still to apply: the highest commit index it heard from a
        leader (or, on the leader, its own) less its applied index; ``>= 0``. What
        ``/replica?max_lag=N`` compares with ``N``. After a restart it counts from the first
        message of a leader."""
        runtime = self._runtime
        status = runtime.status()
        heard = max(status.commit_index, runtime.leader_commit_heard)
        return max(0, heard - status.applied_index)

    async def take_snapshot(self) -> SnapshotFile:
        """Write a fresh snapshot of the state machine as of its current applied index.

        Returns the complete, verified file in ``snapshots_dir`` (``GET /snapshot`` streams it;
        the node may delete it once two newer snapshots exist, so open it at once). Raises
        ``Stopped`` and ``OSError`` (the disk), as the runtime's ``take_snapshot`` does.
        """
        return await self._runtime.take_snapshot()

    def client(self) -> Client:
        """A :class:`Client` for the default :class:`KVStateMachine`.

        Raises TypeError (not a DengineError: a programming mistake) when the engine runs a
        custom state machine; use :meth:`propose` and :meth:`read_barrier` with it.
        """
        if not isinstance(self.state_machine, KVStateMachine):
            raise TypeError("client() serves the default KV state machine; use propose()")
        return Client(self)


class Client:
    """Key-value operations on the embedded cluster. Keys and values are bytes.

    Writes and reads but eventual ones wait at most ``request_timeout_ms``, including for a
    leader to be elected, and may raise ``Stopped``, ``Timeout``, ``NoLeader`` and
    ``Overloaded`` (see :meth:`EmbeddedEngine.propose` and :meth:`EmbeddedEngine.read_barrier`).
    This is the one place ``limits.max_key_bytes`` and ``limits.max_value_bytes`` are checked
    (the HTTP API relies on it): every method raises ``TooLarge`` (``limit`` ``"key"`` or
    ``"value"``) for a key or value over them, before waiting for anything.
    """

    def __init__(self, engine: EmbeddedEngine) -> None:
        self._engine = engine
        sm = engine.state_machine
        assert isinstance(sm, KVStateMachine)
        self._sm = sm
        limits = engine.config.limits
        self._max_key = limits.max_key_bytes
        self._max_value = limits.max_value_bytes
        self._default_policy = engine.config.raft.read_consistency.default_policy

    def _check_key(self, key: bytes) -> None:
        if len(key) > self._max_key:
            raise TooLarge("key", len(key), self._max_key)

    async def put(self, key: bytes, value: bytes) -> None:
        """Set ``key`` to ``value``; returns once committed and applied on the leader.

        Raises ``TooLarge`` if ``key`` is over ``limits.max_key_bytes`` or ``value`` over
        ``limits.max_value_bytes`` (bytes), and what :meth:`EmbeddedEngine.propose` raises: on
        ``Timeout`` the write may or may not have been applied.
        """
        self._check_key(key)
        if len(value) > self._max_value:
            raise TooLarge("value", len(value), self._max_value)
        await self._engine.propose(encode_put(key, value))

    async def delete(self, key: bytes) -> None:
        """Remove ``key`` (a missing key is not an error); otherwise like :meth:`put`."""
        self._check_key(key)
        await self._engine.propose(encode_delete(key))

    async def get(self, key: bytes, policy: ReadPolicy | None = None) -> bytes | None:
        """Read ``key`` (None if absent) under ``policy`` (default: the config's
        ``default_policy``); raises ``TooLarge`` (a key over ``limits.max_key_bytes``: it
        cannot exist) and as :meth:`EmbeddedEngine.read_barrier`."""
        self._check_key(key)
        policy = policy or self._default_policy
        await self._engine.read_barrier(policy)
        return self._sm.get(key)

    async def get_linearizable(self, key: bytes) -> bytes | None:
        """``key``'s value (None if absent), seeing every write acknowledged before the call.

        Costs a heartbeat round to a majority (and from a follower a round trip to the
        leader); raises ``TooLarge`` like :meth:`get` and as :meth:`EmbeddedEngine.read_barrier`.
        """
        self._check_key(key)
        await self._engine.read_barrier(ReadPolicy.LINEARIZABLE)
        return self._sm.get(key)

    async def get_lease(self, key: bytes) -> bytes | None:
        """Like :meth:`get_linearizable` while the leader's lease holds, without the round:
        a local lookup on a leader (valid while clocks drift less than the election timeout
        exceeds ``lease_duration_ms``). Raises like :meth:`get_linearizable`."""
        self._check_key(key)
        await self._engine.read_barrier(ReadPolicy.LEASE)
        return self._sm.get(key)

    async def get_eventual(self, key: bytes) -> bytes | None:
        """``key``'s value in this node's state machine now (None if absent); never waits,
        may be stale. Raises only ``TooLarge`` (a key over ``limits.max_key_bytes``)."""
        self._check_key(key)
        return self._sm.get(key)
