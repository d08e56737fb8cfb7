"""``RaftLog``: the in-memory log's indexing, term lookups, truncation and batching (§5.3)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


# --- the offset a snapshot leaves (Raft paper §7)


def compacted(offset: int, offset_term: int, *terms: int) -> RaftLog:
    """A log compacted through (offset, offset_term), holding entries of ``terms`` after it."""
    entries = (Entry(t, offset + i + 1) for i, t in enumerate(terms))
    return RaftLog(entries, snapshot_index=offset, snapshot_term=offset_term)


def test_offset_term_is_known_and_nothing_below_it() -> None:
    log = compacted(10, 2, 2, 3)
    assert (log.first_index, log.last_index, log.last_term) == (11, 12, 3)
    assert (log.snapshot_index, log.snapshot_term) == (10, 2)
    assert [log.term_at(i) for i in (0, 9, 10, 11, 12, 13)] == [None, None, 2, 2, 3, None]
    assert log.matches(10, 2) and not log.matches(9, 2) and not log.matches(0, 0)
    assert log.entry(11).index == 11 and [e.index for e in log.slice(11, 12)] == [11, 12]
    assert [e.index for e in log.batch_from(12, 10, 1_000)] == [12]


def test_compacted_entries_are_never_handed_out() -> None:
    """A negative list position would silently wrap to the log's tail: every accessor
    refuses an index at or below the offset instead."""
    log = compacted(10, 2, 2, 3)
    for call in (lambda: log.entry(10), lambda: log.slice(10, 12), lambda: log.entry(1)):
        with pytest.raises(IndexError, match="compacted"):
            call()
    with pytest.raises(IndexError, match="compacted"):
        log.batch_from(5, 10, 1_000)
    with pytest.raises(ValueError, match="compacted through 10"):
        log.truncate_from(10)


def test_entries_must_continue_the_offset_and_the_offset_be_a_position() -> None:
    with pytest.raises(ValueError, match="position 0"):
        RaftLog([Entry(1, 1)], snapshot_index=5, snapshot_term=1)
    for index, term in ((5, 0), (0, 1), (-1, 1)):
        with pytest.raises(ValueError, match="snapshot"):
            RaftLog(snapshot_index=index, snapshot_term=term)


def test_compact_keeps_the_term_of_the_last_entry_dropped() -> None:
    log = log_of(1, 1, 2, 2, 3)
    log.compact(3)
    assert (log.snapshot_index, log.snapshot_term, log.first_index) == (3, 2, 4)
    assert [e.index for e in log.slice(4, 5)] == [4, 5] and log.term_at(3) == 2
    log.compact(2)  # at or below the offset: nothing to do
    assert log.snapshot_index == 3
    log.compact(5)  # everything: the log is empty, its last entry is still known
    assert (log.last_index, log.last_term, log.term_at(5)) == (5, 3, 3)
    log.append([Entry(3, 6)])
    assert log.last_index == 6 and log.entry(6).term == 3
    with pytest.raises(ValueError, match="log ends at 6"):
        log.compact(7)


def test_restore_is_an_empty_log_ending_at_the_snapshot() -> None:
    log = log_of(1, 1, 1)
    log.restore(20, 4)
    assert (log.first_index, log.last_index, log.last_term) == (21, 20, 4)
    assert log.term_at(3) is None and log.term_at(20) == 4
    # The election restriction compares against the snapshot's last entry (§5.4.1).
    assert log.is_up_to_date(20, 4) and not log.is_up_to_date(25, 3)
    with pytest.raises(ValueError):
        log.restore(0, 0)


def test_back_tracking_hints_stop_at_the_offset() -> None:
    log = compacted(10, 2, 2, 2, 3)
    # The run of term 2 reaches into the compacted prefix: the hint is the first index held.
    assert log.first_index_of_term_at(12) == 11 and log.first_index_of_term_at(13) == 13
    assert log.last_index_of_term(2) == 12 and log.last_index_of_term(1) == 0
    # A term known only as the offset's: the offset is its last index.
    only_offset = compacted(10, 2, 3, 3)
    assert only_offset.last_index_of_term(2) == 10 and only_offset.last_index_of_term(3) == 12
    assert RaftLog(snapshot_index=7, snapshot_term=4).last_index_of_term(4) == 7


# --- the offset against a model: every operation, any interleaving

_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(1, 4), st.integers(0, 2)),
        st.tuples(st.just("truncate"), st.integers(0, 12), st.just(0)),
        st.tuples(st.just("compact"), st.integers(0, 12), st.just(0)),
        st.tuples(st.just("restore"), st.integers(1, 30), st.integers(0, 2)),
    ),
    max_size=25,
)


@settings(max_examples=200, deadline=None)
@given(_OPS)
def test_offset_log_agrees_with_a_plain_model(ops: list[tuple[str, int, int]]) -> None:
    """A dict index -> term (what is held) plus the offset, against ``RaftLog``: whatever the
    order of appends, truncations, compactions and restores, every lookup agrees, nothing at or
    below the offset is handed out, and the log stays contiguous."""
    log = RaftLog()
    held: dict[int, int] = {}
    offset, offset_term = 0, 0

    def last() -> tuple[int, int]:
        return (max(held), held[max(held)]) if held else (offset, offset_term)

    for op, a, b in ops:
        last_index, last_term = last()
        if op == "append":
            new = [Entry(last_term + b, last_index + i + 1) for i in range(a)]
            log.append(new)
            held.update({e.index: e.term for e in new})
        elif op == "truncate":
            index = offset + 1 + a
            if index > last_index:
                continue
            log.truncate_from(index)
            held = {i: t for i, t in held.items() if i < index}
        elif op == "compact":
            through = min(offset + a, last_index)
            log.compact(through)
            if through > offset:
                offset, offset_term = through, held[through]
                held = {i: t for i, t in held.items() if i > through}
        else:
            index, term = last_index + a, last_term + b + 1
            log.restore(index, term)
            held, offset, offset_term = {}, index, term
        assert (log.snapshot_index, log.snapshot_term) == (offset, offset_term)
        assert (log.last_index, log.last_term) == last()
        assert log.first_index == offset + 1
        for i in range(0, log.last_index + 3):
            expected = offset_term if i == offset else held.get(i)
            assert log.term_at(i) == expected
            if i <= offset:
                with pytest.raises(IndexError):
                    log.entry(i)
            elif i <= log.last_index:
                assert log.entry(i).index == i
        if held:
            assert [e.index for e in log.slice(offset + 1, log.last_index)] == sorted(held)
