"""The request table's capacity: one slot per client request, from arrival to answer.

``max_pending_requests`` bounds the requests occupying a node whatever they wait for; a slot
is taken before the request waits for anything (a leader, a forward, a commit) and given back
when it ends, so a request waiting for a leader counts as much as one pending commit
(tests/e2e/test_newcomer_pending_limit.py is the end-to-end case).
"""

from __future__ import annotations

import pytest
import trio

from dengine_trio.errors import NotLeader, Overloaded, Stopped, Timeout
from dengine_trio.runtime.requests import RequestTable


def test_slots_bound_the_requests_and_come_back_when_released() -> None:
    table = RequestTable(1, max_pending=3, first_id=1)
    for _ in range(3):
        table.admit()
    assert table.pending() == 3
    with pytest.raises(Overloaded):
        table.admit()
    assert table.pending() == 3  # a refused request occupies nothing
    table.release()
    table.admit()
    assert table.pending() == 3


def test_a_slot_is_the_count_not_the_waiters_it_creates() -> None:
    """A request that retries makes several waiters in turn; before it makes any (waiting
    for a leader) it is counted all the same."""
    table = RequestTable(1, max_pending=1, first_id=1)
    table.admit()
    with pytest.raises(Overloaded):
        table.admit()
    request_id, _ = table.new_read()
    table.read_failed(request_id, 0)  # NotLeader: the request retries with a new read
    table.new_read()
    assert table.pending() == 1


def test_a_closed_table_refuses_with_stopped_before_overloaded() -> None:
    table = RequestTable(1, max_pending=1, first_id=1)
    table.admit()
    table.close(Stopped("stopping"))
    with pytest.raises(Stopped):
        table.admit()
    with pytest.raises(Stopped):
        table.new_proposal()
    with pytest.raises(Stopped):
        table.new_read()


async def test_a_request_that_times_out_is_failed_and_its_entry_forgotten() -> None:
    table = RequestTable(1, max_pending=2, first_id=1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(table.sweep_deadlines)
        table.admit()
        try:
            request_id, waiter = table.new_proposal()
            forgotten: list[int] = []
            with pytest.raises(Timeout):
                await table.wait(
                    waiter, trio.current_time() + 0.01, lambda: forgotten.append(request_id)
                )
            assert forgotten == [request_id]
        finally:
            table.release()
        assert table.pending() == 0
        nursery.cancel_scope.cancel()


def test_a_snapshot_from_the_leader_settles_the_proposals_it_covers() -> None:
    """Every entry up to the snapshot's index (40, term 3) has a term of at most 3: a
    proposal there of a later term was never committed (NotLeader, safe to send again); one
    of term 3 or earlier may be the committed entry, and its result is not in the snapshot
    (Timeout: may or may not have applied). Proposals after the index wait on."""
    table = RequestTable(1, max_pending=8, first_id=1)
    waiters = {}
    for index, term in ((30, 2), (38, 3), (39, 4), (41, 4)):
        request_id, waiter = table.new_proposal()
        table.proposed(request_id, index, term)
        waiters[index] = waiter
    table.snapshot_installed(40, 3, leader_id=2)
    assert isinstance(waiters[30].error, Timeout)
    assert isinstance(waiters[38].error, Timeout)
    assert isinstance(waiters[39].error, NotLeader) and waiters[39].error.leader_id == 2
    assert not waiters[41].done
    table.applied(41, 4, b"ok", leader_id=2)
    assert waiters[41].value == b"ok"
