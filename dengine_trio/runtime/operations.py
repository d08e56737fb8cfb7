"""What clients ask of a node: writes, read barriers, and a leadership hand-over.

``Operations`` runs a request across the node's collaborators: it waits for a leader, submits
the event to the driver or forwards the write (``Forwarding``), waits in the request table,
and retries only where the request certainly had no effect (a write refused or overwritten, a
read that found no leader: reads are idempotent).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

import trio

from ..errors import DengineError, NoLeader, NotLeader, Stopped, TooLarge
from ..metrics import reason_of
from ..raft import Event, Propose, ReadRequest, Role, TransferLeader
from ..wire import MAX_FRAME_BYTES

if TYPE_CHECKING:
    from .node import NodeRuntime

__all__ = ["MAX_COMMAND_BYTES", "Operations"]

MAX_COMMAND_BYTES = MAX_FRAME_BYTES - (1 << 20)
"""The largest command accepted: headroom below the frame limit for the AppendEntries
envelope around a single entry, so an entry always fits one frame. Checked once, by
``Operations.propose`` on the node the client asked (a forwarded write was checked there)."""


class Operations:
    """The client-facing operations of ``node`` (a ``NodeRuntime``)."""

    def __init__(self, node: NodeRuntime) -> None:
        self._node = node
        self.lease_reads_local = 0
        """Lease reads served by the fast path (no message). Counted here, as a plain int,
        not in the metrics sink: the whole fast path costs ~1.3 us, a sink call ~0.1-0.3 us;
        the sink reads this when scraped."""

    def _submit(self, event: Event) -> None:
        driver = self._node.driver
        assert driver is not None
        driver.submit(event)

    async def _wait_for_leader(self, deadline: float) -> int:
        raft = self._node.raft
        assert raft is not None
        while not raft.leader_id:
            if self._node.stopped or self._node.refusing:
                raise Stopped("node is stopping")
            with trio.move_on_at(deadline):
                await self._node.wait_for_state_change()
            if trio.current_time() >= deadline and not raft.leader_id:
                raise NoLeader("no leader elected")
        return raft.leader_id

    def _deadline(self, timeout_s: float | None) -> float:
        """The trio time (s) a request gives up at: ``timeout_s`` seconds from now, default
        ``request_timeout_ms``."""
        return trio.current_time() + (
            self._node.request_timeout_s if timeout_s is None else timeout_s
        )

    async def _before_retry(self, deadline: float, exc: DengineError, what: str) -> None:
        """Wait for a state change (at most 50 ms) before a retry; ``NoLeader`` ("no leader
        <what> in time", from ``exc``) once ``deadline`` has passed."""
        if trio.current_time() >= deadline:
            raise NoLeader(f"no leader {what} in time") from exc
        with trio.move_on_after(0.05):
            await self._node.wait_for_state_change()

    async def propose(self, command: bytes, timeout_s: float | None = None) -> bytes:
        """Replicate ``command``; return the state machine's result once it is applied.

        On a follower the command is forwarded to the leader. Retries cover only outcomes
        where the command certainly was not committed (rejected, withdrawn unsent, or
        overwritten). Raises ``TooLarge`` (over ``MAX_COMMAND_BYTES``), ``Timeout`` (at
        ``timeout_s`` seconds, default ``request_timeout_ms``: may or may not be applied),
        ``NoLeader`` (none known, or none accepted it, by then), ``Overloaded`` (over
        ``max_pending_requests``), ``Stopped``; a forwarded write may also fail with the
        leader's ``TooLarge``/``Overloaded``.
        """
        # Not a wrapper coroutine: one more frame per write is measurable at 30 us a write.
        try:
            if len(command) > MAX_COMMAND_BYTES:
                # One entry must fit one frame, or replication would stall on it for good.
                raise TooLarge("command", len(command), MAX_COMMAND_BYTES)
            requests = self._node.requests
            # One slot from now until the answer, whatever the write waits for.
            requests.admit()
            try:
                deadline = self._deadline(timeout_s)
                while True:
                    leader = await self._wait_for_leader(deadline)
                    try:
                        if leader == self._node.node_id:
                            return await self.propose_local(command, deadline)
                        self._node.metrics.forwarded_write()
                        return await self._node.forwarding.propose(leader, command, deadline)
                    except (NotLeader, NoLeader) as exc:
                        # Leadership is moving: wait for news (or a beat) and try again.
                        await self._before_retry(deadline, exc, "accepted the request")
            finally:
                requests.release()
        except DengineError as exc:
            self._node.metrics.proposal_failed(reason_of(exc))
            raise

    async def propose_local(
        self,
        command: bytes,
        deadline: float,
        on_proposed: Callable[[int, int], object] | None = None,
    ) -> bytes:
        """Propose ``command`` on this node (it leads) and return its result once applied;
        ``on_proposed(index, term)`` once it is an entry. The caller holds the request's slot
        (``RequestTable.admit``). Raises ``NotLeader`` (refused or overwritten), ``Timeout``
        at ``deadline`` (trio time, s), ``Stopped``."""
        request_id, waiter = self._node.requests.new_proposal(on_proposed)
        self._submit(Propose(request_id, command))
        forget = partial(self._node.requests.forget_proposal, request_id, waiter)
        result: bytes = await self._node.requests.wait(waiter, deadline, forget)
        return result

    async def read_barrier(self, *, lease: bool, timeout_s: float | None = None) -> None:
        """Return once the local state machine reflects every write committed before the call
        (linearizable: ReadIndex, Raft thesis section 6.4, one heartbeat round to a quorum),
        or the leader's lease vouches for it (``lease``: thesis section 6.4.1, no round while
        the lease holds; on the leader with nothing left to apply, no message at all).
        Raises ``NoLeader`` (no leader confirmed it by ``timeout_s`` seconds, default
        ``request_timeout_ms``), ``Timeout``, ``Overloaded``, ``Stopped``."""
        metrics = self._node.metrics
        try:
            raft = self._node.raft
            assert raft is not None
            if (
                lease
                and raft.role is Role.LEADER
                and self._node.applied_index >= raft.commit_index
                and raft.lease_valid(self._node.now_ms())
            ):
                self.lease_reads_local += 1
                return  # the lease read fast path: no message, no task switch
            requests = self._node.requests
            # One slot from now until the answer, whatever the read waits for.
            requests.admit()
            try:
                deadline = self._deadline(timeout_s)
                while True:
                    await self._wait_for_leader(deadline)
                    request_id, waiter = requests.new_read()
                    self._submit(ReadRequest(request_id, lease))
                    try:
                        forget = partial(requests.forget_read, request_id)
                        await requests.wait(waiter, deadline, forget)
                        metrics.read("lease" if lease else "linearizable", "ok")
                        return
                    except NotLeader as exc:  # reads are idempotent: retry until the deadline
                        await self._before_retry(deadline, exc, "confirmed the read")
            finally:
                requests.release()
        except DengineError as exc:
            metrics.read("lease" if lease else "linearizable", reason_of(exc))
            raise

    def reachable_peers(self) -> list[int]:
        """The peers this node's transport is connected to right now (their processes are
        up and took the handshake), in id order."""
        if self._node.transport is None:
            return []
        return sorted(p for p, stats in self._node.transport.stats.peers.items() if stats.connected)

    async def transfer_leadership(self, timeout_s: float) -> bool:
        """Hand leadership to the most up-to-date follower (Raft thesis §3.10); True once
        another node leads. Gives up (False) after ``timeout_s`` seconds, or as soon as no
        peer is reachable (whole-cluster stop: nobody to hand over to)."""
        raft = self._node.raft
        if raft is None or not raft.is_leader or not self.reachable_peers():
            return False
        self._node.transferring = True
        try:
            self._submit(TransferLeader(0))
            with trio.move_on_after(timeout_s):
                while raft.is_leader or not raft.leader_id:
                    # Woken by role changes; the peers' links are looked at between them.
                    with trio.move_on_after(0.05):
                        await self._node.wait_for_state_change()
                    if raft.is_leader and not self.reachable_peers():
                        break
        finally:
            self._node.transferring = False
        return not raft.is_leader and raft.leader_id not in (0, self._node.node_id)
