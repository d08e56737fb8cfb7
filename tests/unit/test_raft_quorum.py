"""Majority arithmetic: the commit candidate, the newest confirmed heartbeat round, and the
moment a majority was last heard from (CheckQuorum) are the same quorum value."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dengine_trio.raft.quorum import majority, quorum_value


def test_majority() -> None:
    assert [majority(n) for n in range(1, 8)] == [1, 2, 2, 3, 3, 4, 4]


def test_quorum_value_examples() -> None:
    assert quorum_value([5]) == 5
    assert quorum_value([9, 3, 4]) == 4  # two of three hold 4 or more
    assert quorum_value([9, 3, 4, 1, 8]) == 4
    assert quorum_value([1.5, float("-inf"), 3.0]) == 1.5  # contact times work the same


@given(st.lists(st.integers(0, 100), min_size=1, max_size=9))
def test_quorum_value_is_the_largest_value_a_majority_reaches(values: list[int]) -> None:
    q = quorum_value(values)
    assert sum(v >= q for v in values) >= majority(len(values))
    assert sum(v >= q + 1 for v in values) < majority(len(values))
