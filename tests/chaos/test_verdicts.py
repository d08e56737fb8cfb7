"""How the campaign judges what it saw: outcomes of HTTP answers, and lost writes."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.support.linearizability import Operation

from .nemesis import FAULT_KINDS, make_schedule
from .workload import lost_writes, put_outcome


def answer(status: int, error: str | None = None) -> httpx.Response:
    body = {} if error is None else {"error": error, "message": "..."}
    return httpx.Response(status, content=json.dumps(body).encode())


@pytest.mark.parametrize(
    ("status", "error", "outcome"),
    [
        (200, None, "ok"),
        (503, "not_leader", "fail"),
        (503, "no_leader", "fail"),
        (503, "overloaded", "fail"),
        (400, "invalid_request", "fail"),
        (503, "stopped", "unknown"),  # a stopping leader's proposal may still commit
        (504, "timeout", "unknown"),
        (500, "internal", "unknown"),
        (502, None, "unknown"),
    ],
)
def test_put_outcomes(status: int, error: str | None, outcome: str) -> None:
    assert put_outcome(answer(status, error)) == outcome


def put(value: str, invoke: float, complete: float, outcome: str = "ok") -> Operation:
    return Operation("c", "put", "k", value, invoke, complete, outcome)  # type: ignore[arg-type]


def test_a_write_overwritten_by_a_later_or_concurrent_one_is_not_lost() -> None:
    history = [put("a", 0, 1), put("b", 2, 3), put("c", 2.5, 4)]
    assert lost_writes(history, {"k": "c"}) == []
    assert lost_writes(history, {"k": "b"}) == []  # c and b were concurrent


def test_a_final_value_older_than_an_acknowledged_write_loses_it() -> None:
    a, b, c = put("a", 0, 1), put("b", 2, 3), put("c", 4, 5)
    assert lost_writes([a, b, c], {"k": "a"}) == [b, c]
    assert lost_writes([a, b, c], {"k": None}) == [a, b, c]


def test_writes_of_unknown_outcome_are_never_counted_lost_and_may_be_final() -> None:
    a, late = put("a", 0, 1), put("late", 2, 3, "unknown")
    assert lost_writes([a, late], {"k": "late"}) == []
    assert lost_writes([a, late], {"k": "a"}) == []


def test_schedules_are_a_function_of_their_seed() -> None:
    assert make_schedule(7, "DiskFirst", 60) == make_schedule(7, "DiskFirst", 60)
    assert make_schedule(7, "DiskFirst", 60) != make_schedule(8, "DiskFirst", 60)
    long = make_schedule(7, "DiskFirst", 60)
    assert sum(s.hold_s + s.quiet_s for s in long.steps) >= 60
    covering = make_schedule(3, "DiskFirst", 0)
    assert sorted(f.kind for s in covering.steps for f in s.faults) == sorted(FAULT_KINDS)
