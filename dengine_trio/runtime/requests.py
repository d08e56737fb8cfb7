"""The request table: what clients of this node wait for, and how each wait ends.

A request (a proposal, a read) is a ``Waiter`` under a request id. The core's effects settle it
(``Proposed`` then the entry's ``Apply``, ``ProposalRejected``, ``ReadReady`` then the apply of
the read index, ``ReadFailed``); its deadline fails it with ``Timeout``; a stop fails it with
``Stopped``.

Capacity is counted per client request, not per waiter: a request takes a slot (``admit``)
when it arrives and gives it back (``release``) when it ends, whatever it waits for meanwhile
(a leader to be known, a forward to the leader, its commit, a read's confirmation, a retry
after a refusal). Beyond ``max_pending`` slots a request is refused (``Overloaded``) before
it waits for anything, so a flood cannot exhaust memory, leader or not.

Deadlines are swept by one task (``sweep_deadlines``) from one heap rather than a cancel scope
per request, which cost ~13% of the leader's CPU with 64 writers.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable
from typing import Any

import trio

from ..errors import NotLeader, Overloaded, Stopped, Timeout

__all__ = ["RequestTable", "Waiter"]


class Waiter:
    """One pending request, awaited by the one task that made it: resolved exactly once with
    a value or an exception.

    Not a ``trio.Event``: its parking lot is more than one waiting task needs, and a request
    costs a waiter; this one parks and reschedules that task directly.
    """

    __slots__ = ("done", "error", "index", "on_proposed", "task", "term", "value")

    def __init__(self) -> None:
        self.done = False
        self.value: Any = None
        self.error: BaseException | None = None
        self.index = 0
        self.term = 0
        self.task: trio.lowlevel.Task | None = None
        self.on_proposed: Callable[[int, int], object] | None = None
        """Called with (index, term) once a proposal is an entry of the leader's log."""

    def resolve(self, value: Any = None) -> None:
        """Settle with ``value`` and wake the waiting task; no-op if already settled."""
        if not self.done:
            self.done = True
            self.value = value
            self._wake()

    def fail(self, error: BaseException) -> None:
        """Settle with ``error`` (raised by ``RequestTable.wait``) and wake the waiting
        task; no-op if already settled."""
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


class RequestTable:
    """Pending proposals and reads of one node, their deadlines and their capacity.

    ``first_id`` starts the request ids (see ``NodeRuntime``: they carry the incarnation).
    ``max_pending`` bounds the client requests occupying the node at once (``admit``).
    """

    def __init__(self, node_id: int, max_pending: int, first_id: int) -> None:
        self.node_id = node_id
        self.max_pending = max_pending
        self.ids = itertools.count(first_id)
        self.closed = False
        """Set by ``close``: every new request fails with ``Stopped``."""
        self._occupied = 0  # slots taken by admit() and not released
        self._proposals: dict[int, Waiter] = {}
        self._by_index: dict[int, Waiter] = {}
        self._reads: dict[int, Waiter] = {}
        self._reads_by_index: list[tuple[int, int, Waiter]] = []  # heap on read index
        # A heap on the deadline; resolved waiters are dropped lazily.
        self._deadlines: list[tuple[float, int, Waiter, Callable[[], object]]] = []
        self._sweep_at = math.inf  # when the sweeper wakes next
        self._deadline_sooner = trio.Event()

    def pending(self) -> int:
        """Client requests occupying this node (admitted and not released): waiting for a
        leader, forwarded, pending commit or a read's confirmation, or between retries."""
        return self._occupied

    def pending_proposals(self) -> int:
        """This node's own proposals waiting (not forwarded writes, not reads)."""
        return len(self._proposals) + len(self._by_index)

    def check_open(self) -> None:
        """Raises ``Stopped`` once closed."""
        if self.closed:
            raise Stopped("node is stopping")

    def admit(self) -> None:
        """Take a slot for one client request, held until ``release`` (call it in a
        ``finally``) across everything the request waits for. Raises ``Stopped`` once closed,
        ``Overloaded`` when ``max_pending`` slots are taken."""
        if self.closed:
            raise Stopped("node is stopping")
        if self._occupied >= self.max_pending:
            raise Overloaded(f"{self._occupied} requests pending on node {self.node_id}")
        self._occupied += 1

    def release(self) -> None:
        """Give back the slot an ``admit`` took."""
        self._occupied -= 1

    # -- making requests -------------------------------------------------------------------

    def new_proposal(
        self, on_proposed: Callable[[int, int], object] | None = None
    ) -> tuple[int, Waiter]:
        """A proposal's id and waiter, for a request holding a slot (``admit``). Raises
        ``Stopped`` once closed."""
        self.check_open()
        request_id = next(self.ids)
        waiter = Waiter()
        waiter.on_proposed = on_proposed
        self._proposals[request_id] = waiter
        return request_id, waiter

    def forget_proposal(self, request_id: int, waiter: Waiter) -> None:
        """Drop the proposal's entries from the table (its wait ended, however); no-op if
        already gone."""
        self._proposals.pop(request_id, None)
        if waiter.index and self._by_index.get(waiter.index) is waiter:
            del self._by_index[waiter.index]

    def new_read(self) -> tuple[int, Waiter]:
        """A read's id and waiter, for a request holding a slot (``admit``). Raises
        ``Stopped`` once closed."""
        self.check_open()
        request_id = next(self.ids)
        waiter = Waiter()
        self._reads[request_id] = waiter
        return request_id, waiter

    def forget_read(self, request_id: int) -> None:
        """Drop a read still waiting for its read index; no-op if already gone."""
        self._reads.pop(request_id, None)

    async def wait(self, waiter: Waiter, deadline: float, cleanup: Callable[[], object]) -> Any:
        """``waiter``'s value, or its error raised; at ``deadline`` (trio time, s) it fails
        with ``Timeout`` after ``cleanup``."""
        if not waiter.done:
            heap = self._deadlines
            # Requests share one timeout, so the oldest deadlines are on top and nearly all
            # resolved: dropping them here keeps the heap near the requests in flight.
            # Otherwise up to 2 * max_pending settled entries (each keeping a waiter and
            # its cleanup alive) piled up for the garbage collector to traverse on every
            # full collection (issue 18).
            while heap and heap[0][2].done:
                heapq.heappop(heap)
            if len(heap) > 2 * self.max_pending + 64:
                # Compact: at most max_pending entries are unresolved, so most are long done
                # (each would otherwise wait for its deadline to reach the top of the heap).
                heap[:] = [item for item in heap if not item[2].done]
                heapq.heapify(heap)
            heapq.heappush(heap, (deadline, next(self.ids), waiter, cleanup))
            if deadline < self._sweep_at:
                self._deadline_sooner.set()
            # Waiter.wait, inlined (not done, checked above): one coroutine frame less.
            waiter.task = trio.lowlevel.current_task()
            await trio.lowlevel.wait_task_rescheduled(waiter._abort)
        if waiter.error is not None:
            raise waiter.error
        return waiter.value

    async def sweep_deadlines(self) -> None:
        """Runs until cancelled: fails every waiter that reaches its deadline unresolved."""
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

    # -- outcomes (from the core's effects) ------------------------------------------------

    def proposed(self, request_id: int, index: int, term: int) -> None:
        """Proposal ``request_id`` became entry (``index``, ``term``): it now waits for that
        index to apply (``applied``), and its ``on_proposed`` is called with (index, term)."""
        waiter = self._proposals.pop(request_id, None)
        if waiter is not None:
            waiter.index, waiter.term = index, term
            self._by_index[index] = waiter
            if waiter.on_proposed is not None:
                waiter.on_proposed(index, term)

    def proposal_rejected(self, request_id: int, leader_id: int) -> None:
        """Proposal ``request_id`` fails with ``NotLeader(leader_id or None)``."""
        waiter = self._proposals.pop(request_id, None)
        if waiter is not None:
            waiter.fail(NotLeader(leader_id or None))

    def proposal_failed(self, request_id: int, error: BaseException) -> None:
        """Proposal ``request_id`` fails with ``error`` (a refused membership change)."""
        waiter = self._proposals.pop(request_id, None)
        if waiter is not None:
            waiter.fail(error)

    def applied(self, index: int, term: int, result: bytes, leader_id: int) -> None:
        """Entry (``index``, ``term``) was applied with ``result``: the proposal waiting on
        ``index`` resolves with it, or fails with ``NotLeader(leader_id or None)`` if its
        entry had another term (overwritten by a newer leader, Raft paper section 5.3: never
        committed, so it may be proposed again)."""
        waiter = self._by_index.pop(index, None)
        if waiter is not None:
            if waiter.term == term:
                waiter.resolve(result)
            else:  # our entry was overwritten by a newer leader's: never committed
                waiter.fail(NotLeader(leader_id or None))

    def snapshot_installed(self, index: int, term: int, leader_id: int) -> None:
        """A leader's snapshot as of entry (``index``, ``term``) replaced the state machine:
        the proposals waiting on an index it covers are settled without their entry's result.
        One of a later term than ``term`` was never committed (every entry up to ``index`` has
        a term of at most ``term``, Raft paper section 5.3): ``NotLeader``, it may be sent
        again. Any other may or may not be the committed entry there (its term is not in the
        snapshot), and its result is gone: ``Timeout``, as etcd leaves such a waiter to time
        out. One after ``index`` of an older term than ``term`` can never commit either:
        ``NotLeader`` at once."""
        for covered in [i for i in self._by_index if i <= index]:
            waiter = self._by_index.pop(covered)
            if waiter.term > term:
                waiter.fail(NotLeader(leader_id or None))
            else:
                waiter.fail(
                    Timeout(
                        "a snapshot from the leader replaced this node's log before the "
                        "write's entry applied here; the write may or may not have been applied"
                    )
                )
        # After the snapshot every entry has a term of at least ``term``: one of an older
        # term there was overwritten and can never commit (else it would wait for its
        # deadline on an idle cluster and report a Timeout, "may have applied").
        for later in [i for i, w in self._by_index.items() if i > index and w.term < term]:
            self._by_index.pop(later).fail(NotLeader(leader_id or None))

    def reads_applied(self, applied_index: int) -> None:
        """Resolve every read whose read index is at most ``applied_index`` (Raft thesis
        section 6.4: a read is served once its read index has applied)."""
        heap = self._reads_by_index
        while heap and heap[0][0] <= applied_index:
            _, _, waiter = heapq.heappop(heap)
            waiter.resolve(None)

    def read_ready(self, request_id: int, read_index: int, applied_index: int) -> None:
        """Read ``request_id`` got ``read_index``: resolve it now if ``applied_index``
        covers it, else when ``reads_applied`` reaches it."""
        waiter = self._reads.pop(request_id, None)
        if waiter is None:
            return
        if read_index <= applied_index:
            waiter.resolve(None)
        else:
            heap = self._reads_by_index
            if len(heap) > 2 * self.max_pending + 64:
                # Compact: a waiter that timed out stays here until its index applies, which
                # for a far-off index (``GET /kv/k?min_index=N``) may be never.
                heap[:] = [item for item in heap if not item[2].done]
                heapq.heapify(heap)
            heapq.heappush(heap, (read_index, next(self.ids), waiter))

    def read_failed(self, request_id: int, leader_id: int) -> None:
        """Read ``request_id`` fails with ``NotLeader(leader_id or None)``."""
        waiter = self._reads.pop(request_id, None)
        if waiter is not None:
            waiter.fail(NotLeader(leader_id or None))

    def fail_all(self, error: BaseException) -> None:
        """Fail every pending proposal and read with ``error``; the table stays open (see
        ``close``)."""
        for table in (self._proposals, self._by_index, self._reads):
            for waiter in table.values():
                waiter.fail(error)
            table.clear()
        for _, _, waiter in self._reads_by_index:
            waiter.fail(error)
        self._reads_by_index = []

    def close(self, error: BaseException) -> None:
        """Fail everything pending with ``error`` and refuse new requests (``Stopped``)."""
        self.closed = True
        self.fail_all(error)
