"""Majority arithmetic shared by commit, vote counting and the lease."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

T = TypeVar("T", int, float)


def majority(voters: int) -> int:
    """How many of ``voters`` (>= 1) make a majority (§5.2): ``voters // 2 + 1``."""
    return voters // 2 + 1


def quorum_value(values: Iterable[T]) -> T:
    """The largest value that a majority of ``values`` is at least equal to.

    For match indexes this is the commit candidate (§5.3); for acknowledged heartbeat rounds it
    is the newest round a majority has confirmed; for contact times (ms), the latest moment by
    which a majority had been heard from (CheckQuorum).
    """
    ordered = sorted(values, reverse=True)
    return ordered[majority(len(ordered)) - 1]
