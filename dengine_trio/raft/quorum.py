"""Majority arithmetic shared by commit, vote counting and the lease."""

from __future__ import annotations

from collections.abc import Iterable


def majority(voters: int) -> int:
    return voters // 2 + 1


def quorum_value(values: Iterable[int]) -> int:
    """The largest value that a majority of ``values`` is at least equal to.

    For match indexes this is the commit candidate (§5.3); for acknowledged heartbeat rounds it
    is the newest round a majority has confirmed.
    """
    ordered = sorted(values, reverse=True)
    return ordered[majority(len(ordered)) - 1]
