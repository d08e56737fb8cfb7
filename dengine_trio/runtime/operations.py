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

import attrs
import msgpack
import trio

from ..config import check_member_address
from ..errors import DengineError, MembershipError, NoLeader, NotLeader, Stopped, TooLarge
from ..metrics import reason_of
from ..raft import Event, Propose, ReadRequest, Role, TransferLeader
from ..raft.events import ProposeConfChange
from ..raft.membership import ConfChange, ConfChangeKind, canonical_address
from ..wire import MAX_FRAME_BYTES
from .membership import decode_admin_request, encode_admin_request

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
                            # propose_local, inlined: one coroutine frame less per write.
                            request_id, waiter = requests.new_proposal()
                            self._submit(Propose(request_id, command))
                            forget = partial(requests.forget_proposal, request_id, waiter)
                            result: bytes = await requests.wait(waiter, deadline, forget)
                            return result
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

    # -- membership (issue 14) -------------------------------------------------------------

    async def change_membership(self, change: ConfChange, timeout_s: float | None = None) -> int:
        """Commit ``change`` (one single-server change, Ongaro thesis section 4.1) through the
        leader, forwarded like a write; return the index of its configuration entry once it
        is applied on the leader. Retries only while no leader took it. Raises
        ``MembershipError`` (refused: ``code``, ``status``, ``detail``), ``Timeout`` (it may
        or may not be committed), ``NoLeader``, ``Overloaded``, ``Stopped``."""
        data = encode_admin_request(change)
        requests = self._node.requests
        requests.admit()
        try:
            deadline = self._deadline(timeout_s)
            while True:
                leader = await self._wait_for_leader(deadline)
                try:
                    if leader == self._node.node_id:
                        index, _ = await self.change_local(change, deadline)
                        return index
                    removes_self = (
                        change.kind is ConfChangeKind.REMOVE and change.id == self._node.node_id
                    )
                    result = await self._node.forwarding.propose(
                        leader, data, deadline, conf=True, removes_self=removes_self
                    )
                    index = msgpack.unpackb(result)
                    return int(index)
                except (NotLeader, NoLeader) as exc:
                    await self._before_retry(deadline, exc, "accepted the change")
        finally:
            requests.release()

    async def change_local(
        self,
        change: ConfChange,
        deadline: float,
        on_proposed: Callable[[int, int], object] | None = None,
    ) -> tuple[int, int]:
        """Propose ``change`` on this node (it leads); (index, term) of its entry once
        applied. The caller holds the request's slot. Raises ``MembershipError``,
        ``NotLeader``, ``Timeout`` at ``deadline`` (trio time, s), ``Stopped``."""
        if change.kind is ConfChangeKind.ADD_LEARNER:
            # The core carries addresses opaquely; one nobody can dial would be a member no
            # leader ever reaches (a forwarded or joining node's request is checked here too).
            problem = check_member_address(change.address)
            if problem:
                raise MembershipError("bad_request", f"address {change.address!r}: {problem}")
            # One spelling per endpoint in the membership (a join request's, a forward's).
            change = attrs.evolve(change, address=canonical_address(change.address))
        placed: list[tuple[int, int]] = []

        def proposed(index: int, term: int) -> None:
            placed.append((index, term))
            if on_proposed is not None:
                on_proposed(index, term)

        request_id, waiter = self._node.requests.new_proposal(proposed)
        self._submit(ProposeConfChange(request_id, change))
        forget = partial(self._node.requests.forget_proposal, request_id, waiter)
        await self._node.requests.wait(waiter, deadline, forget)
        return placed[-1]

    async def admin_local(
        self, data: bytes, deadline: float, on_proposed: Callable[[int, int], object]
    ) -> bytes:
        """A follower's forwarded admin request (``encode_admin_request``), on this leader:
        the entry's index (msgpack int) for a change, the new leader's id for a transfer.
        Raises ``MembershipError`` (``bad_request`` for undecodable ``data``) and what
        ``change_local`` and ``transfer_to`` raise."""
        try:
            change, to = decode_admin_request(data)
        except ValueError as exc:
            raise MembershipError("bad_request", str(exc)) from None
        if change is None:
            leader = await self.transfer_to(to, deadline - trio.current_time())
            return bytes(msgpack.packb(leader))
        index, _ = await self.change_local(change, deadline, on_proposed)
        return bytes(msgpack.packb(index))

    async def transfer_leadership_to(self, to: int | None, timeout_s: float | None = None) -> int:
        """Hand leadership to ``to`` (None: the most caught-up voter), asking the leader
        wherever it is (forwarded like a write); the new leader's id once it leads. Raises
        ``MembershipError`` (``unknown_member``, ``not_voter``, ``transfer_failed``),
        ``NoLeader``, ``Overloaded``, ``Stopped``."""
        requests = self._node.requests
        requests.admit()
        try:
            deadline = self._deadline(timeout_s)
            while True:
                leader = await self._wait_for_leader(deadline)
                try:
                    if leader == self._node.node_id:
                        return await self.transfer_to(to or 0, deadline - trio.current_time())
                    data = encode_admin_request(None, to)
                    result = await self._node.forwarding.propose(leader, data, deadline, conf=True)
                    return int(msgpack.unpackb(result))
                except (NotLeader, NoLeader) as exc:
                    await self._before_retry(deadline, exc, "took the transfer")
        finally:
            requests.release()

    async def transfer_to(self, to: int, timeout_s: float) -> int:
        """On the leader: hand leadership to voter ``to`` (0: the most caught-up one, Raft
        thesis section 3.10); the new leader's id. Raises ``NotLeader`` (not the leader),
        ``MembershipError``: ``unknown_member``, ``not_voter``, ``transfer_failed`` (nobody
        took over within ``timeout_s`` seconds)."""
        node = self._node
        raft = node.raft
        assert raft is not None
        if not raft.is_leader:
            raise NotLeader(raft.leader_id or None)
        if to:
            member = raft.membership.get(to)
            if member is None:
                raise MembershipError("unknown_member", f"node {to} is not a member")
            if not member.voter:
                raise MembershipError("not_voter", f"node {to} is a learner, not a voter")
            if to == node.node_id:
                return to
        node.transferring = True
        try:
            self._submit(TransferLeader(to))
            with trio.move_on_after(max(0.0, timeout_s)):
                while raft.is_leader or not raft.leader_id:
                    with trio.move_on_after(0.05):
                        await node.wait_for_state_change()
        finally:
            node.transferring = False
        if raft.is_leader or raft.leader_id in (0, node.node_id):
            raise MembershipError(
                "transfer_failed", "no other voter took leadership in time; still the leader"
            )
        return raft.leader_id
