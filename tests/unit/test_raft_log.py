"""``RaftLog``: the in-memory log's indexing, term lookups, truncation and batching (§5.3)."""

from __future__ import annotations

import pytest

from dengine_trio.raft.log import RaftLog
from dengine_trio.raft.messages import Entry


def log_of(*terms: int, size: int = 1) -> RaftLog:
    return RaftLog(Entry(t, i + 1, b"x" * size) for i, t in enumerate(terms))


def test_empty_log_is_index_zero_term_zero() -> None:
    log = RaftLog()
    assert (log.last_index, log.last_term) == (0, 0)
    assert log.term_at(0) == 0 and log.term_at(1) is None
    assert log.matches(0, 0) and not log.matches(1, 1)


def test_entries_must_be_contiguous_from_one() -> None:
    with pytest.raises(ValueError, match="position 1"):
        RaftLog([Entry(1, 1), Entry(1, 3)])


def test_term_lookups_and_slices() -> None:
    log = log_of(1, 1, 2, 3, 3)
    assert log.last_index == 5 and log.last_term == 3
    assert [log.term_at(i) for i in range(7)] == [0, 1, 1, 2, 3, 3, None]
    assert [e.index for e in log.slice(2, 4)] == [2, 3, 4]
    assert log.first_index_of_term_at(5) == 4 and log.first_index_of_term_at(2) == 1
    assert log.last_index_of_term(1) == 2 and log.last_index_of_term(3) == 5
    assert log.last_index_of_term(4) == 0 and log.last_index_of_term(0) == 0


def test_truncate_drops_the_suffix() -> None:
    log = log_of(1, 1, 2, 2)
    log.truncate_from(3)
    assert log.last_index == 2 and log.last_term == 1
    log.append([Entry(3, 3)])
    assert log.term_at(3) == 3


def test_up_to_date_compares_last_term_then_length() -> None:
    """§5.4.1: a later last term wins; with equal last terms, the longer log."""
    log = log_of(1, 2, 2)
    assert log.is_up_to_date(3, 2) and log.is_up_to_date(9, 2) and log.is_up_to_date(1, 3)
    assert not log.is_up_to_date(2, 2) and not log.is_up_to_date(9, 1)


def test_batches_respect_both_limits_but_never_come_back_empty() -> None:
    log = log_of(*[1] * 10, size=100)
    assert len(log.batch_from(1, 4, 10_000)) == 4
    assert len(log.batch_from(1, 100, 250)) == 2
    assert len(log.batch_from(3, 100, 10)) == 1  # one oversized entry still goes
    assert log.batch_from(11, 100, 10_000) == []
