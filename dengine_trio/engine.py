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

import trio

from .config import NodeConfig
from .errors import Stopped, Timeout, TooLarge
from .policy import ReadPolicy
from .raft import RaftNode, Role
from .runtime.node import NodeRuntime
from .statemachine import KVStateMachine, StateMachine, encode_delete, encode_put


class EmbeddedEngine:
    """A running node. Create it with ``EmbeddedEngine.start(config)``."""

    def __init__(self, config: NodeConfig, state_machine: StateMachine | None = None) -> None:
        self.config = config
        self.node_id = config.cluster.node_id
        self.state_machine: StateMachine = state_machine or KVStateMachine()
        self._runtime = NodeRuntime(config, self.state_machine)
        self._done = trio.Event()

    @classmethod
    @asynccontextmanager
    async def start(
        cls, config: NodeConfig, *, state_machine: StateMachine | None = None
    ) -> AsyncIterator[EmbeddedEngine]:
        """Open storage, start the node's tasks, and stop them (flushing) on exit."""
        engine = cls(config, state_machine)
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

    @property
    def _raft(self) -> RaftNode:
        raft = self._runtime.raft
        if raft is None:
            raise Stopped("engine not running")
        return raft

    async def wait_ready(self, timeout_s: float) -> tuple[int, int]:
        """Wait until a leader is known (and, on the leader, has committed its first entry);
        return (leader_id, term). Raises ``Timeout``."""
        with trio.move_on_after(timeout_s):
            while True:
                raft = self._raft
                if raft.leader_id and (raft.role is not Role.LEADER or raft._committed_in_term()):
                    return raft.leader_id, raft.term
                if self._runtime.stopped:
                    raise Stopped("engine stopped")
                # Role changes wake us at once; the first commit of a term is polled for.
                with trio.move_on_after(0.01):
                    await self._runtime.wait_for_state_change()
        raise Timeout(f"no leader within {timeout_s} s")

    def is_leader(self) -> bool:
        return self._runtime.raft is not None and self._runtime.raft.is_leader

    def leader_id(self) -> int | None:
        raft = self._runtime.raft
        return raft.leader_id or None if raft is not None else None

    def has_quorum(self) -> bool:
        raft = self._runtime.raft
        return raft is not None and raft.has_quorum_contact(self._runtime.now_ms())

    def leader_contact_recent(self) -> bool:
        raft = self._runtime.raft
        window = self.config.raft.timing.election_timeout_max_ms
        return raft is not None and raft.leader_contact_within(self._runtime.now_ms(), window)

    def status(self) -> dict[str, object]:
        raft = self._runtime.raft
        now = self._runtime.now_ms()
        status: dict[str, object] = {
            "node_id": self.node_id,
            # Lower case, as /primary and /replica spell it: "pre_candidate", "leader", ...
            "role": raft.role.name.lower() if raft else "stopped",
            "term": raft.term if raft else 0,
            "leader_id": (raft.leader_id or None) if raft else None,
            "commit_index": raft.commit_index if raft else 0,
            "applied_index": self._runtime.applied_index,
            "last_log_index": raft.log.last_index if raft else 0,
            "durability": self.config.raft.persistence.strategy.value,
        }
        if raft is not None and raft.is_leader:
            status["peers"] = {
                str(peer): {
                    "match_index": p.match_index,
                    "next_index": p.next_index,
                    "state": p.state.value,
                    "last_contact_ms": None
                    if p.last_contact_ms == float("-inf")
                    else round(now - p.last_contact_ms, 1),
                }
                for peer, p in raft.progress.items()
            }
        if self._runtime.transport is not None:
            status["transport"] = self._runtime.transport.stats.as_dict()
        return status

    async def transfer_leadership(self, timeout_s: float) -> bool:
        """Hand leadership to the most up-to-date follower; True once another node leads.
        False after ``timeout_s`` seconds, or at once when no peer is reachable."""
        return await self._runtime.transfer_leadership(timeout_s)

    def reachable_peers(self) -> list[int]:
        """Ids of the peers this node is connected to right now (their processes are up)."""
        return self._runtime.reachable_peers()

    # ------------------------------------------------------------------ custom state machines

    async def propose(self, command: bytes, timeout_s: float | None = None) -> bytes:
        """Replicate an opaque command to the state machine; returns its result."""
        return await self._runtime.propose(command, timeout_s)

    async def read_barrier(self, policy: ReadPolicy, timeout_s: float | None = None) -> None:
        """Wait until the local state machine may serve a read under ``policy``."""
        if policy is not ReadPolicy.EVENTUAL:
            await self._runtime.read_barrier(lease=policy is ReadPolicy.LEASE, timeout_s=timeout_s)

    def client(self) -> Client:
        if not isinstance(self.state_machine, KVStateMachine):
            raise TypeError("client() serves the default KV state machine; use propose()")
        return Client(self)


class Client:
    """Key-value operations on the embedded cluster. Keys and values are bytes."""

    def __init__(self, engine: EmbeddedEngine) -> None:
        self._engine = engine
        self._runtime = engine._runtime
        sm = engine.state_machine
        assert isinstance(sm, KVStateMachine)
        self._sm = sm
        limits = engine.config.limits
        self._max_key = limits.max_key_bytes
        self._max_value = limits.max_value_bytes
        self._default_policy = engine.config.raft.read_consistency.default_policy

    def _check_key(self, key: bytes) -> None:
        if len(key) > self._max_key:
            raise TooLarge(f"key of {len(key)} bytes exceeds {self._max_key}")

    async def put(self, key: bytes, value: bytes) -> None:
        self._check_key(key)
        if len(value) > self._max_value:
            raise TooLarge(f"value of {len(value)} bytes exceeds {self._max_value}")
        await self._runtime.propose(encode_put(key, value))

    async def delete(self, key: bytes) -> None:
        self._check_key(key)
        await self._runtime.propose(encode_delete(key))

    async def get(self, key: bytes, policy: ReadPolicy | None = None) -> bytes | None:
        """Read ``key`` (None if absent) under ``policy`` (default: the config's)."""
        policy = policy or self._default_policy
        if policy is not ReadPolicy.EVENTUAL:
            await self._runtime.read_barrier(lease=policy is ReadPolicy.LEASE)
        return self._sm.data.get(key)

    async def get_linearizable(self, key: bytes) -> bytes | None:
        await self._runtime.read_barrier(lease=False)
        return self._sm.data.get(key)

    async def get_lease(self, key: bytes) -> bytes | None:
        await self._runtime.read_barrier(lease=True)
        return self._sm.data.get(key)

    async def get_eventual(self, key: bytes) -> bytes | None:
        return self._sm.data.get(key)
