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

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import partial

import trio

from . import kvbridge
from .client_types import Item, Page, TxnOp, TxnOutcome, WriteOutcome
from .config import NodeConfig
from .errors import NodeRemoved, Stopped, Timeout, TooLarge
from .kv_commands import MAX_INDEX, MAX_TTL_MS, UNSET, Compare, _Unset
from .metrics import MetricsSink
from .policy import ReadPolicy
from .runtime.expiry import Expirer
from .runtime.membership import ConfChange as ConfChange  # re-exported for the admin API
from .runtime.membership import ConfChangeKind as ConfChangeKind
from .runtime.node import NodeRuntime
from .runtime.snapshotting import SnapshotFile
from .runtime.status import NodeStatus
from .runtime.watch import SlowConsumer as SlowConsumer  # re-exported for api/ and users
from .runtime.watch import TooManyWatchers as TooManyWatchers
from .runtime.watch import WatchCompacted as WatchCompacted
from .runtime.watch import Watcher, WatchHub
from .runtime.watch import WatchEvent as WatchEvent
from .runtime.watch import attach as attach_watch_hub
from .statemachine import KVStateMachine, StateMachine


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
        self.state_machine: StateMachine = state_machine or KVStateMachine(
            idempotency_max_keys=config.kv.idempotency_max_keys,
            idempotency_ttl_ms=config.kv.idempotency_ttl_ms,
            idempotency_max_bytes=config.kv.idempotency_max_bytes,
        )
        self._runtime = NodeRuntime(config, self.state_machine, metrics)
        self.watch_hub: WatchHub | None = None
        """Changes applied here, for watchers (``runtime/watch.py``); None with a custom state
        machine that offers no change listener."""
        if isinstance(self.state_machine, KVStateMachine):
            watch = config.watch
            hub = WatchHub(
                history_events=watch.history_events,
                history_bytes=watch.history_bytes,
                max_watchers=watch.max_watchers,
                queue_events=watch.queue_events,
                queue_bytes=watch.queue_bytes,
            )
            if attach_watch_hub(hub, self.state_machine):
                self.watch_hub = hub
        self.metrics: MetricsSink = self._runtime.metrics
        self._done = trio.Event()
        self.expirer: Expirer | None = None
        """The TTL expirer of the default KV state machine (None with a custom one)."""

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
            if engine.watch_hub is not None:
                # The state restored at start covers the log through its snapshot, whatever
                # the image said (a version-1 image carries no index).
                engine.watch_hub.starts_after(engine._runtime.status().snapshot_index)
            engine._start_expirer()
            try:
                yield engine
            finally:
                await engine.stop()

    def _start_expirer(self) -> None:
        """The KV state machine's TTL expirer (``runtime/expiry.py``), in the node's nursery so
        that it ends with the node; it proposes only while this node leads."""
        node_nursery = self._runtime.nursery
        if isinstance(self.state_machine, KVStateMachine) and node_nursery is not None:
            self.expirer = Expirer(self._runtime, self.state_machine, kvbridge.wall_clock_ms)
            node_nursery.start_soon(self.expirer.run)

    async def _run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await self._runtime.run(task_status=task_status)
        finally:
            if self.watch_hub is not None:
                self.watch_hub.close()
            self._done.set()

    async def stop(self) -> None:
        """Stop the node: pending requests fail with ``Stopped``, the log is flushed and
        closed, and every task of the node has ended when this returns. Idempotent."""
        self._runtime.stop()
        await self._done.wait()

    def refuse_requests(self) -> None:
        """Begin a stop: requests pending on this node fail with ``Stopped`` at once, and new
        ones are refused with it, while the node still takes part in Raft until ``stop``.
        A server calls this before it stops serving, so every request gets an answer.
        Open watches end (``Stopped``) after the changes they hold."""
        self._runtime.refuse_requests()
        if self.watch_hub is not None:
            self.watch_hub.close()

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

    # ------------------------------------------------------------------ membership (issue 14)

    async def members(self) -> dict[str, object]:
        """This node's view of the membership in effect (the latest configuration entry it
        appended; ``GET /members``): ``{"leader_id": int | None, "cluster_id": str ("" while
        unknown), "index": int (the configuration entry's, 0: the implicit bootstrap
        membership), "members": [{"id": int, "address": "host:port", "voter": bool,
        "promote": bool (a learner the leader promotes once caught up), "bound": bool (a data
        directory is bound to it), "match_index": int | None, "heard_ms_ago": int | None (ms
        since it last answered the leader; 0 for the leader itself, None if never), "active":
        bool | None (it counts in a quorum now: answered within the minimum election timeout,
        on the data directory it is bound to; what a ``quorum_at_risk`` refusal is decided
        by)}]}``: the last three are the leader's view, None on any other node. Never
        raises."""
        return self._runtime.membership.members()

    async def change_membership(self, change: ConfChange, timeout_s: float | None = None) -> int:
        """Make one membership change (:class:`ConfChange`, re-exported here: add a
        learner, promote it, remove a member; Ongaro thesis section 4.1, one server at a
        time), on whichever node leads (a follower forwards it like a write); return the index
        of its configuration entry once committed and applied on the leader. ``timeout_s``
        in seconds, default ``request_timeout_ms``. Raises ``MembershipError`` (refused:
        ``code``, HTTP ``status`` and ``detail``, see ``dengine_trio.errors``), ``Timeout``
        (it may or may not have been committed), ``NoLeader``, ``Overloaded``, ``Stopped``.
        """
        return await self._runtime.operations.change_membership(change, timeout_s)

    async def transfer_leadership_to(
        self, to: int | None = None, timeout_s: float | None = None
    ) -> int:
        """Hand leadership to voter ``to`` (None: the most caught-up voter; Raft thesis
        section 3.10), asking the leader wherever it is; return the new leader's id once it
        leads. Raises ``MembershipError`` (``unknown_member``, ``not_voter``,
        ``transfer_failed``), ``NoLeader``, ``Overloaded``, ``Stopped``."""
        return await self._runtime.operations.transfer_leadership_to(to, timeout_s)

    def caught_up(self) -> bool:
        """This node has heard from its leader within ``election_timeout_max_ms``, has
        applied, once since it started, as far as a leader had committed when first asked,
        and its state machine is at most ``raft.max_promote_lag_entries`` behind what that
        leader told it was committed: a learner (read replica) that may serve eventual reads
        (``/replica``). True on a leader."""
        return self._runtime.caught_up()

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
        ``NoLeader``, ``Overloaded`` (``max_pending_requests`` reached), ``Stopped``,
        ``NodeRemoved`` (this node was removed from its cluster).
        """
        self._check_not_removed()
        return await self._runtime.propose(command, timeout_s)

    def removed(self) -> bool:
        """This node was removed from its cluster (its log holds its removal, or a member
        told it at the handshake): it serves nothing (``/replica`` 503, KV 503 ``removed``)."""
        return self._runtime.membership.removed()

    def _check_not_removed(self) -> None:
        if self.removed():
            raise NodeRemoved(
                f"node {self._runtime.node_id} was removed from its cluster and serves nothing"
            )

    async def read_barrier(self, policy: ReadPolicy, timeout_s: float | None = None) -> None:
        """Wait until the local state machine may serve a read under ``policy``.

        ``LINEARIZABLE``: it has applied every write acknowledged before the call (ReadIndex,
        Raft thesis section 6.4: a heartbeat round to a majority, and from a follower one round
        trip to the leader). ``LEASE``: the same while the leader's lease holds, without the
        round (thesis section 6.4.1). ``EVENTUAL``: returns at once. ``timeout_s`` in seconds,
        default ``request_timeout_ms``. Raises ``NoLeader`` (none confirmed the read in time),
        ``Timeout``, ``Overloaded``, ``Stopped``, ``NodeRemoved`` (any policy: a removed
        node's state machine no longer follows the cluster).
        """
        self._check_not_removed()
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
    This is the one place ``limits.max_key_bytes``, ``limits.max_value_bytes``,
    ``limits.max_txn_ops`` and ``limits.max_txn_bytes`` are checked (the HTTP API relies on
    it): every method raises ``TooLarge`` (``limit`` ``"key"``, ``"value"``, ``"txn_ops"``,
    ``"txn"``) before waiting for anything.

    Every write returns the Raft index it applied at (``X-Dengine-Index`` over HTTP). Reads
    given ``min_index`` first wait until this node has applied that index
    (:meth:`EmbeddedEngine.wait_applied`): read-your-writes on any node, under any policy.
    TTL deadlines are wall-clock ms computed once here, by the proposer (``now + ttl_ms``), and
    carried in the command, so every replica holds the same deadline; a read treats a key past
    its deadline as absent by this node's wall clock, and the leader's expirer
    (:mod:`dengine_trio.runtime.expiry`) deletes it for good within about
    ``EXPIRY_INTERVAL_MS`` (50 ms) plus a commit.

    An ``idempotency_key`` (bytes, at most 256) makes a write exactly-once: a retry with the
    same key (after a ``Timeout``, a dropped connection, a failover; on any node) returns the
    first outcome and applies nothing again, while the key is in the state machine's table
    (``[kv] idempotency_ttl_ms``, ``idempotency_max_keys``).
    """

    def __init__(self, engine: EmbeddedEngine) -> None:
        self._engine = engine
        sm = engine.state_machine
        assert isinstance(sm, KVStateMachine)
        self._sm = sm
        limits = engine.config.limits
        self._max_key = limits.max_key_bytes
        self._max_value = limits.max_value_bytes
        self._max_txn_ops = limits.max_txn_ops
        self._max_txn_bytes = limits.max_txn_bytes
        self._default_policy = engine.config.raft.read_consistency.default_policy
        self._request_timeout_s = engine.config.raft.timing.request_timeout_ms / 1000
        self._operations = engine._runtime.operations
        """What ``EmbeddedEngine.propose`` calls: ``put`` and ``delete`` call it directly."""

    def _check_key(self, key: bytes) -> None:
        if len(key) > self._max_key:
            raise TooLarge("key", len(key), self._max_key)

    def _check_value(self, value: bytes) -> None:
        if len(value) > self._max_value:
            raise TooLarge("value", len(value), self._max_value)

    @staticmethod
    def _check_int(name: str, value: object, low: int, high: int) -> None:
        """ValueError unless ``value`` is an int (not a bool) from ``low`` to ``high``: the
        bounds HTTP checks (400), so both APIs take the same arguments."""
        if type(value) is not int or not low <= value <= high:
            raise ValueError(f"{name} must be an int from {low} to {high}, got {value!r}")

    @staticmethod
    def _check_idempotency_key(idempotency_key: bytes | None) -> None:
        if idempotency_key is not None and type(idempotency_key) is not bytes:
            raise ValueError(f"an idempotency key is bytes, got {type(idempotency_key).__name__}")
        if idempotency_key is not None and not 1 <= len(idempotency_key) <= (
            MAX_IDEMPOTENCY_KEY_BYTES
        ):
            # A programming mistake, like a negative TTL (HTTP refuses it first: 400).
            raise ValueError(
                f"an idempotency key is 1 to {MAX_IDEMPOTENCY_KEY_BYTES} bytes, "
                f"got {len(idempotency_key)}"
            )

    # ------------------------------------------------------------------ writes

    async def put(
        self,
        key: bytes,
        value: bytes,
        *,
        ttl_ms: int | None = None,
        prev_value: bytes | _Unset | None = UNSET,
        prev_index: int | None = None,
        idempotency_key: bytes | None = None,
    ) -> int:
        """Set ``key`` to ``value``; return the index it applied at, once committed and
        applied on the leader.

        ``ttl_ms`` (>= 1): the key expires that many ms from now. ``prev_value``: write only
        if the key's value is this (None: only if the key does not exist); ``prev_index``:
        only if the key's ``mod_index`` is this (0: only if it does not exist); else
        ``CompareFailed`` (the key's current value and index), nothing written.
        ``idempotency_key``: a retry of the same request with the same key returns the first
        outcome (``duplicate``) and applies nothing; the key reused for a different request
        (another kind of write, key, value, TTL or compare) raises ``IdempotencyKeyReused``,
        nothing applied. Raises ``TooLarge`` (key, value), ``ValueError`` (a ``ttl_ms`` not an
        int from 1 to 2**53, a ``prev_index`` not an int from 0 to 2**63-1, bools refused as
        HTTP refuses them; an idempotency key not bytes of 1 to 256), and what
        :meth:`EmbeddedEngine.propose` raises: on ``Timeout`` the write may or may not have
        been applied (retry it with the same ``idempotency_key`` to find out, applying it at
        most once).
        """
        # Not a call of put_outcome, nor of EmbeddedEngine.propose (whose check it repeats):
        # each coroutine frame a write passes through costs it again at every resumption.
        command = self._put_command(key, value, ttl_ms, prev_value, prev_index, idempotency_key)
        self._engine._check_not_removed()
        return kvbridge.write_outcome(await self._operations.propose(command)).index

    async def put_outcome(
        self,
        key: bytes,
        value: bytes,
        *,
        ttl_ms: int | None = None,
        prev_value: bytes | _Unset | None = UNSET,
        prev_index: int | None = None,
        idempotency_key: bytes | None = None,
    ) -> WriteOutcome:
        """:meth:`put`, returning its :class:`WriteOutcome` (index, and whether it was the
        replay of an earlier request with the same ``idempotency_key``)."""
        command = self._put_command(key, value, ttl_ms, prev_value, prev_index, idempotency_key)
        return kvbridge.write_outcome(await self._engine.propose(command))

    def _put_command(
        self,
        key: bytes,
        value: bytes,
        ttl_ms: int | None,
        prev_value: bytes | _Unset | None,
        prev_index: int | None,
        idempotency_key: bytes | None,
    ) -> bytes:
        """Check the arguments of a put (see :meth:`put`) and encode its command."""
        self._check_key(key)
        self._check_value(value)
        self._check_idempotency_key(idempotency_key)
        if ttl_ms is not None:
            self._check_int("ttl_ms", ttl_ms, 1, MAX_TTL_MS)
        if prev_index is not None:
            self._check_int("prev_index", prev_index, 0, MAX_INDEX)
        now_ms = kvbridge.wall_clock_ms()
        return kvbridge.encode_put(
            key,
            value,
            now_ms=now_ms,
            expires_at_ms=0 if ttl_ms is None else now_ms + ttl_ms,
            prev_value=prev_value,
            prev_index=prev_index,
            idempotency_key=idempotency_key,
        )

    async def delete(
        self,
        key: bytes,
        *,
        prev_index: int | None = None,
        idempotency_key: bytes | None = None,
    ) -> int:
        """Remove ``key`` (a missing key is not an error); return the index it applied at.
        ``prev_index``: only if the key's ``mod_index`` is this, else ``CompareFailed``.
        Otherwise like :meth:`put`."""
        command = self._delete_command(key, prev_index, idempotency_key)
        self._engine._check_not_removed()  # EmbeddedEngine.propose's, inlined as in put
        return kvbridge.write_outcome(await self._operations.propose(command)).index

    async def delete_outcome(
        self,
        key: bytes,
        *,
        prev_index: int | None = None,
        idempotency_key: bytes | None = None,
    ) -> WriteOutcome:
        """:meth:`delete`, returning its :class:`WriteOutcome`."""
        command = self._delete_command(key, prev_index, idempotency_key)
        return kvbridge.write_outcome(await self._engine.propose(command))

    def _delete_command(
        self, key: bytes, prev_index: int | None, idempotency_key: bytes | None
    ) -> bytes:
        """Check the arguments of a delete (see :meth:`delete`) and encode its command."""
        self._check_key(key)
        self._check_idempotency_key(idempotency_key)
        if prev_index is not None:
            self._check_int("prev_index", prev_index, 0, MAX_INDEX)
        return kvbridge.encode_delete(
            key,
            now_ms=kvbridge.wall_clock_ms(),
            prev_index=prev_index,
            idempotency_key=idempotency_key,
        )

    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[TxnOp],
        failure: Sequence[TxnOp] = (),
        *,
        idempotency_key: bytes | None = None,
    ) -> TxnOutcome:
        """Apply atomically, in one log entry (etcd's ``Txn``): if every compare holds, the
        ``success`` operations, else the ``failure`` ones, in order; a ``get`` sees the writes
        before it in its branch. Returns which branch ran, the entry's index and one result per
        operation of that branch.

        Raises ``TooLarge``: compares and operations (both branches) over
        ``limits.max_txn_ops`` (``"txn_ops"``), their keys and values over
        ``limits.max_txn_bytes`` (``"txn"``), a key or value over its own limit, the keys and
        values the branch's gets would read over ``limits.max_txn_bytes`` (``"txn_read"``,
        decided when the txn applies: nothing applied);
        ``ValueError`` for a ``ttl_ms`` < 1 or a negative index; and as :meth:`put`.
        """
        ops = len(compares) + len(success) + len(failure)
        if ops > self._max_txn_ops:
            raise TooLarge("txn_ops", ops, self._max_txn_ops)
        size = 0
        for compare in compares:
            self._check_key(compare.key)
            operand = compare.operand
            size += len(compare.key) + (len(operand) if isinstance(operand, bytes) else 0)
        for op in (*success, *failure):
            self._check_key(op.key)
            self._check_value(op.value)
            if op.ttl_ms is not None:
                self._check_int("ttl_ms", op.ttl_ms, 1, MAX_TTL_MS)
            size += len(op.key) + len(op.value)
        if size > self._max_txn_bytes:
            raise TooLarge("txn", size, self._max_txn_bytes)
        self._check_idempotency_key(idempotency_key)
        command = kvbridge.encode_txn_ops(
            compares,
            success,
            failure,
            now_ms=kvbridge.wall_clock_ms(),
            idempotency_key=idempotency_key,
            # Each get copies a value into the answer, built at apply on every replica: bounded
            # like the request, so a small txn of many gets of a big key cannot build a huge one.
            max_read_bytes=self._max_txn_bytes,
        )
        return kvbridge.txn_outcome(await self._engine.propose(command))

    # ------------------------------------------------------------------ reads

    async def _before_read(self, policy: ReadPolicy | None, min_index: int) -> None:
        """``min_index`` applied here, then ``policy``'s barrier, within one request timeout."""
        self._check_int("min_index", min_index, 0, MAX_INDEX)
        policy = policy or self._default_policy
        if min_index > 0:
            deadline = trio.current_time() + self._request_timeout_s
            await self._engine.wait_applied(min_index, self._request_timeout_s)
            if policy is not ReadPolicy.EVENTUAL:
                await self._engine.read_barrier(policy, max(0.0, deadline - trio.current_time()))
        elif policy is not ReadPolicy.EVENTUAL:
            await self._engine.read_barrier(policy)

    async def get(
        self, key: bytes, policy: ReadPolicy | None = None, *, min_index: int = 0
    ) -> bytes | None:
        """Read ``key`` (None if absent or past its TTL) under ``policy`` (default: the
        config's ``default_policy``), after this node has applied ``min_index`` (0: no wait;
        ``Timeout`` if not applied within ``request_timeout_ms``); raises ``TooLarge`` (a key
        over ``limits.max_key_bytes``: it cannot exist) and as
        :meth:`EmbeddedEngine.read_barrier`."""
        self._check_key(key)
        if min_index or type(min_index) is not int:  # False, 0.0: refused by the check
            await self._before_read(policy, min_index)
        else:  # the hot path: one call, as before min_index existed
            await self._engine.read_barrier(policy or self._default_policy)
        return kvbridge.get_value(self._sm, key)

    async def get_item(
        self, key: bytes, policy: ReadPolicy | None = None, *, min_index: int = 0
    ) -> Item | None:
        """Like :meth:`get`, with the key's indexes and what is left of its TTL
        (:class:`Item`)."""
        self._check_key(key)
        await self._before_read(policy, min_index)
        return kvbridge.get_item(self._sm, key)

    async def list(
        self,
        prefix: bytes = b"",
        *,
        after: bytes | None = None,
        limit: int = 100,
        policy: ReadPolicy | None = None,
        min_index: int = 0,
        max_bytes: int | None = None,
    ) -> Page:
        """The keys starting with ``prefix``, in byte order, after ``after`` (exclusive; None:
        from the first), at most ``limit`` (>= 1) of them and, when ``max_bytes`` is given,
        no more than fit in it (keys plus values; at least one): a :class:`Page` whose
        ``next`` continues the listing. One consistent view under ``policy`` (the state as
        of one instant: nothing applies while a page is collected). Raises ``ValueError``
        (``limit`` < 1) and as :meth:`get`."""
        self._check_int("limit", limit, 1, MAX_INDEX)
        await self._before_read(policy, min_index)
        return kvbridge.list_page(self._sm, prefix, after, limit, max_bytes)

    async def get_linearizable(self, key: bytes) -> bytes | None:
        """``key``'s value (None if absent), seeing every write acknowledged before the call.

        Costs a heartbeat round to a majority (and from a follower a round trip to the
        leader); raises ``TooLarge`` like :meth:`get` and as :meth:`EmbeddedEngine.read_barrier`.
        """
        self._check_key(key)
        await self._engine.read_barrier(ReadPolicy.LINEARIZABLE)
        return kvbridge.get_value(self._sm, key)

    async def get_lease(self, key: bytes) -> bytes | None:
        """Like :meth:`get_linearizable` while the leader's lease holds, without the round:
        a local lookup on a leader (valid while clocks drift less than the election timeout
        exceeds ``lease_duration_ms``). Raises like :meth:`get_linearizable`."""
        self._check_key(key)
        await self._engine.read_barrier(ReadPolicy.LEASE)
        return kvbridge.get_value(self._sm, key)

    async def get_eventual(self, key: bytes) -> bytes | None:
        """``key``'s value in this node's state machine now (None if absent); never waits,
        may be stale. Raises only ``TooLarge`` (a key over ``limits.max_key_bytes``) and
        ``NodeRemoved``."""
        self._check_key(key)
        self._engine._check_not_removed()
        return kvbridge.get_value(self._sm, key)

    def watch(
        self,
        key: bytes | None = None,
        *,
        prefix: bytes | None = None,
        from_index: int | None = None,
    ) -> Watcher:
        """Watch ``key``, or every key starting with ``prefix`` (exactly one of the two; an
        empty prefix watches every key), as applied on THIS node (any node: followers too).

        Returns at once a :class:`~dengine_trio.runtime.watch.Watcher`: an async iterator
        (and async context manager, which closes it) of ``WatchEvent(index, key, value,
        kind)`` (``kind`` ``"put"``, ``"delete"`` or ``"expire"``, ``value`` None unless a
        put), in index order, each change once, with no gap, starting at ``from_index`` (an
        index, >= 1; None: the changes applied after this call)::

            async with client.watch(prefix=b"user/") as changes:
                async for change in changes:
                    print(change.index, change.key, change.value)

        To resume, pass ``from_index`` = the last index seen + 1. Iteration raises
        ``SlowConsumer`` (more than ``[watch] queue_events`` changes, or ``queue_bytes`` of
        them, were waiting: the watch ended; resume from its ``next_index``),
        ``WatchCompacted`` (a snapshot installed on this node replaced the changes the watch
        still needed) or ``Stopped`` (the node stops, or the watcher was closed). Raises at
        once ``WatchCompacted`` (changes from ``from_index`` are no longer retained: its
        ``oldest_index`` is), ``TooManyWatchers`` (``[watch] max_watchers``), ``TooLarge`` (a
        key or prefix over ``max_key_bytes``), ``ValueError`` (neither or both of key and
        prefix, ``from_index`` < 1), ``Stopped``.
        """
        hub = self._engine.watch_hub
        if hub is None:
            raise Stopped("this node's state machine offers no change listener")
        for watched in (key, prefix):
            if watched is not None:
                self._check_key(watched)
        if from_index is not None:
            self._check_int("from_index", from_index, 1, MAX_INDEX)  # as GET /watch: 400
        return hub.subscribe(key=key, prefix=prefix, from_index=from_index)


MAX_IDEMPOTENCY_KEY_BYTES = 256
"""The longest idempotency key (bytes): each is kept in the replicated table."""
