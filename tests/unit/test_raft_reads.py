"""``ReadOnly``: heartbeat rounds, reads waiting for a confirmed round, and the lease."""

from __future__ import annotations

from dengine_trio.raft.reads import PendingRead, ReadOnly


def test_a_confirmed_round_releases_its_reads_in_order() -> None:
    r = ReadOnly()
    first = r.start_round(100.0, lease_ok=True)
    r.pending.append(PendingRead(first, 1, 0, 7))
    second = r.start_round(150.0, lease_ok=True)
    r.pending += [PendingRead(second, 2, 3, 8), PendingRead(second, 4, 0, 8)]
    assert r.confirm(0, 500.0) == []
    assert [p.request_id for p in r.confirm(first, 500.0)] == [1]
    assert [p.request_id for p in r.confirm(second, 500.0)] == [2, 4]
    assert r.pending == [] and r.confirmed_seq == second


def test_the_lease_runs_from_when_the_round_was_sent() -> None:
    r = ReadOnly()
    r.start_round(100.0, lease_ok=True)
    r.start_round(150.0, lease_ok=True)
    r.confirm(2, 500.0)
    assert r.lease_expiry == 650.0
    r.confirm(1, 500.0)  # an older confirmation never shortens it
    assert r.lease_expiry == 650.0


def test_rounds_that_may_not_back_the_lease_never_extend_it() -> None:
    """Issue 11 item 1: rounds sent while a transfer was pending (or after TimeoutNow)."""
    r = ReadOnly()
    r.start_round(100.0, lease_ok=True)
    r.confirm(1, 500.0)
    r.void_lease()  # a transfer starts
    r.start_round(200.0, lease_ok=False)
    r.start_round(250.0, lease_ok=False)
    r.confirm(3, 500.0)
    assert r.lease_expiry == float("-inf")


def test_take_all_empties_both_queues() -> None:
    r = ReadOnly()
    r.pending.append(PendingRead(1, 1, 0, 1))
    pending, held = r.take_all()
    assert len(pending) == 1 and held == [] and r.pending == []
