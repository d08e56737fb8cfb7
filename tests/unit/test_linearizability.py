"""The linearizability checker on hand-written and generated key-value histories."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ..support.linearizability import (
    Kind,
    Operation,
    Outcome,
    Verdict,
    check,
    check_key,
    relevant_operations,
    shrink,
)


def put(
    key: str, value: str, invoke: float, end: float | None, outcome: Outcome = "ok", client: int = 1
) -> Operation:
    return Operation(client, "put", key, value, invoke, end, outcome)


def get(
    key: str, value: str | None, invoke: float, end: float, outcome: Outcome = "ok", client: int = 2
) -> Operation:
    return Operation(client, "get", key, value, invoke, end, outcome)


def delete(key: str, invoke: float, end: float | None, outcome: Outcome = "ok") -> Operation:
    return Operation(3, "delete", key, None, invoke, end, outcome)


KINDS: list[Kind] = ["put", "put", "get", "get", "delete"]
OUTCOMES: list[Outcome] = ["ok", "ok", "ok", "unknown", "fail"]


def assert_linearizable(history: list[Operation]) -> None:
    result = check(history)
    assert result.ok, result.explanation


def assert_violation(history: list[Operation]) -> str:
    result = check(history)
    assert result.violation, result
    return result.explanation


# ---------------------------------------------------------------- known-good histories


def test_empty_history_and_reads_of_nothing() -> None:
    assert_linearizable([])
    assert_linearizable([get("a", None, 0, 1), get("a", None, 2, 3)])


def test_sequential_history() -> None:
    assert_linearizable(
        [
            put("a", "1", 0, 1),
            get("a", "1", 2, 3),
            put("a", "2", 4, 5),
            get("a", "2", 6, 7),
            delete("a", 8, 9),
            get("a", None, 10, 11),
        ]
    )


@pytest.mark.parametrize("seen", ["1", "2"])
def test_concurrent_put_and_get_may_go_either_way(seen: str) -> None:
    # The get overlaps the put of 2: it may be ordered before it or after it.
    assert_linearizable([put("a", "1", 0, 1), put("a", "2", 2, 6), get("a", seen, 3, 5)])


def test_two_concurrent_puts_order_is_fixed_by_what_later_reads_see() -> None:
    assert_linearizable(
        [put("a", "1", 0, 5), put("a", "2", 1, 4), get("a", "1", 6, 7), get("a", "1", 8, 9)]
    )
    assert_linearizable(
        [put("a", "1", 0, 5), put("a", "2", 1, 4), get("a", "2", 6, 7), get("a", "2", 8, 9)]
    )


def test_concurrent_reads_may_see_old_then_new_only_if_overlapping() -> None:
    # Both reads overlap the put: the earlier-starting read seeing the new value and the
    # later one the old value is fine because the two reads overlap each other.
    assert_linearizable(
        [put("a", "1", 0, 1), put("a", "2", 2, 10), get("a", "2", 3, 6), get("a", "1", 4, 5)]
    )


@pytest.mark.parametrize("read_after", [None, "2"])
def test_unknown_write_may_be_read_or_never_read(read_after: str | None) -> None:
    history = [put("a", "1", 0, 1), put("a", "2", 2, None, "unknown")]
    history.append(get("a", read_after or "1", 5, 6))
    history.append(get("a", read_after or "1", 7, 8))
    assert_linearizable(history)


def test_unknown_write_may_take_effect_long_after_its_client_gave_up() -> None:
    history = [
        put("a", "1", 0, 1),
        put("a", "2", 2, 3, "unknown"),  # timed out at 3
        get("a", "1", 4, 5),
        get("a", "1", 6, 7),
        get("a", "2", 100, 101),
    ]
    assert_linearizable(history)


def test_failed_write_and_failed_reads_are_ignored() -> None:
    assert_linearizable(
        [
            put("a", "1", 0, 1),
            put("a", "2", 2, 3, "fail"),
            get("a", "garbage", 4, 5, "fail"),
            get("a", "other", 4, 5, "unknown"),
            get("a", "1", 6, 7),
        ]
    )


def test_deletes() -> None:
    assert_linearizable(
        [put("a", "1", 0, 1), delete("a", 2, 6), get("a", "1", 3, 4), get("a", None, 5, 7)]
    )
    assert_linearizable(
        [put("a", "1", 0, 1), delete("a", 2, None, "unknown"), get("a", None, 9, 10)]
    )


def test_keys_are_independent() -> None:
    # The same value on two keys does not confuse them.
    assert_linearizable(
        [put("a", "x", 0, 1), put("b", "y", 0, 1), get("a", "x", 2, 3), get("b", "y", 2, 3)]
    )
    result = check([put("a", "x", 0, 1), put("b", "y", 0, 1), get("b", "x", 2, 3)])
    assert result.violation and result.key == "b"


def test_touching_intervals_count_as_concurrent() -> None:
    # The put completes at the very instant the read is invoked: either order is allowed.
    assert_linearizable([put("a", "1", 0, 1), put("a", "2", 2, 5), get("a", "1", 5, 6)])


# ---------------------------------------------------------------- known-bad histories


def test_stale_read() -> None:
    explanation = assert_violation([put("a", "1", 0, 1), put("a", "2", 2, 3), get("a", "1", 4, 5)])
    assert "key a is not linearizable" in explanation
    assert "get a -> '1'" in explanation and "put a = '2'" in explanation


def test_lost_write_read_sees_previous_value() -> None:
    assert_violation([put("a", "1", 0, 1), put("a", "2", 2, 3), get("a", "1", 10, 11)])


def test_lost_write_read_sees_absent() -> None:
    assert_violation([put("a", "1", 0, 1), get("a", None, 5, 6)])


def test_read_of_a_never_written_value() -> None:
    assert_violation([put("a", "1", 0, 1), get("a", "7", 2, 3)])
    # A failed write never took effect, so reading its value is just as impossible.
    assert_violation([put("a", "7", 0, 1, "fail"), get("a", "7", 2, 3)])


def test_read_from_the_future() -> None:
    assert_violation([get("a", "1", 0, 1), put("a", "1", 2, 3)])
    assert_violation([get("a", "1", 0, 1), put("a", "1", 2, None, "unknown")])


def test_non_monotonic_reads() -> None:
    # The put of 2 is concurrent with both reads, but once a read saw 2, a later one cannot
    # see 1 again.
    assert_violation(
        [put("a", "1", 0, 1), put("a", "2", 2, 20), get("a", "2", 3, 4), get("a", "1", 5, 6)]
    )


def test_deleted_value_reappears() -> None:
    assert_violation([put("a", "1", 0, 1), delete("a", 2, 3), get("a", "1", 4, 5)])


def test_unknown_write_cannot_be_read_before_a_later_definite_overwrite_is_undone() -> None:
    # The unknown put of 2 may land any time after its invocation. The read at 10 sees it
    # after the acknowledged put of 3, so 2 landed after 3, and nothing writes 3 again.
    assert_violation(
        [
            put("a", "2", 2, None, "unknown"),
            put("a", "3", 5, 6),
            get("a", "2", 10, 11),
            get("a", "3", 12, 13),
        ]
    )


def test_violation_window_is_shrunk_to_the_operations_that_matter() -> None:
    history: list[Operation] = []
    t = 0.0
    for i in range(200):  # a long, healthy sequential prefix on the key
        history.append(put("a", f"v{i}", t, t + 1))
        history.append(get("a", f"v{i}", t + 2, t + 3))
        t += 4
    history += [put("a", "x", t, t + 1), put("a", "y", t + 2, t + 3), get("a", "x", t + 4, t + 5)]
    history += [put("a", "z", t + 6, t + 7), get("a", "z", t + 8, t + 9)]
    result = check(history)
    assert result.violation
    assert len(result.operations) <= 4
    assert {op.value for op in result.operations} >= {"x", "y"}
    # The window is itself a violation, and a sound one: it is a sub-history of the input.
    assert check_key(list(result.operations)) is Verdict.VIOLATION
    assert set(result.operations) <= set(history)


def test_shrink_never_removes_the_write_a_read_depends_on() -> None:
    # Removing the put of 1 would make "read of a never-written value" out of a stale read;
    # the shrunk window must still show the stale read.
    window = shrink([put("a", "1", 0, 1), put("a", "2", 2, 3), get("a", "1", 4, 5)])
    assert [op.value for op in window] == ["1", "2", "1"]


def test_exhausted_budget_is_inconclusive_not_a_violation() -> None:
    # Many concurrent writes and one read of the initial state after them all: the search
    # must exhaust every order before it can refute, so a tiny budget runs out.
    history = [put("a", str(i), 0, 100, client=i) for i in range(12)]
    history.append(get("a", None, 200, 201))
    result = check(history, max_steps_per_key=50)
    assert result.inconclusive and not result.ok and not result.violation
    assert "inconclusive" in result.explanation


def test_relevant_operations_drops_what_cannot_matter() -> None:
    kept = relevant_operations(
        [
            put("a", "1", 0, 1),
            put("a", "2", 0, 1, "fail"),
            put("a", "3", 0, None, "unknown"),  # never read: indistinguishable from no effect
            put("a", "4", 0, None, "unknown"),
            get("a", "4", 2, 3),
            get("a", "5", 2, 3, "fail"),
        ]
    )
    assert [op.value for op in kept] == ["1", "4", "4"]


def test_operation_validation() -> None:
    with pytest.raises(ValueError):
        Operation(1, "put", "a", None, 0, 1)
    with pytest.raises(ValueError):
        Operation(1, "get", "a", "1", 0, None)
    with pytest.raises(ValueError):
        Operation(1, "get", "a", "1", 2, 1)
    with pytest.raises(ValueError):
        Operation(1, "cas", "a", "1", 0, 1)  # type: ignore[arg-type]


def test_a_few_thousand_operations_over_a_handful_of_keys() -> None:
    # Overlapping windows of three clients per key; the budget must suffice without shortcuts.
    history: list[Operation] = []
    for k, key in enumerate("abcde"):
        value: str | None = None
        for i in range(600):
            t = float(i * 3)
            if i % 3 == 0:
                value = f"{key}{i}"
                history.append(put(key, value, t, t + 4, client=k))
            else:
                history.append(get(key, value, t + 0.5, t + 5, client=k + 10))
    assert_linearizable(history)


# ---------------------------------------------------------------- generated histories


@st.composite
def register_runs(draw: st.DrawFn) -> list[Operation]:
    """Histories of a real register: each operation takes effect at one instant inside its
    window (instants strictly increasing), so they are linearizable by construction."""
    count = draw(st.integers(1, 25))
    state: dict[str, str] = {}
    history = []
    instant = 0.0
    for i in range(count):
        instant += draw(st.integers(1, 5))
        key = draw(st.sampled_from("ab"))
        kind = draw(st.sampled_from(KINDS))
        # Windows overlap neighbours; a sloppy checker would be tripped by the slack.
        invoke = instant - draw(st.integers(0, 12))
        complete = instant + draw(st.integers(0, 12))
        outcome = draw(st.sampled_from(OUTCOMES))
        if kind == "get":
            value = state.get(key) if outcome == "ok" else draw(st.sampled_from(["junk", None]))
            history.append(Operation(i % 4, "get", key, value, invoke, complete, outcome))
            continue
        applied = outcome == "ok" or (outcome == "unknown" and draw(st.booleans()))
        value = f"v{i}" if kind == "put" else None
        if applied:
            if value is None:
                state.pop(key, None)
            else:
                state[key] = value
        done = None if outcome == "unknown" and draw(st.booleans()) else complete
        history.append(Operation(i % 4, kind, key, value, invoke, done, outcome))
    return history


def impossible_values(history: list[Operation], read: Operation) -> list[str | None]:
    """Values ``read`` could not have returned, whatever the order of concurrent operations."""
    written = {op.value for op in history if op.kind == "put" and op.outcome != "fail"}
    candidates: list[str | None] = ["never-written"]
    assert read.complete is not None
    for w in history:
        if w.kind != "put" or w.key != read.key or w.outcome == "fail":
            continue
        # Written only after the read returned (values are unique per put).
        if w.invoke > read.complete:
            candidates.append(w.value)  # type: ignore[arg-type]
        # Overwritten for sure before the read began: the only write of the value completed,
        # then a definite write of the key ran and completed, all before the read's invoke.
        elif w.complete is not None and w.outcome == "ok":
            for w2 in history:
                if (
                    w2 is not w
                    and w2.key == read.key
                    and w2.kind != "get"
                    and w2.outcome == "ok"
                    and w.complete < w2.invoke
                    and w2.complete is not None
                    and w2.complete < read.invoke
                    and w2.value != w.value
                ):
                    candidates.append(w.value)  # type: ignore[arg-type]
                    break
    assert "never-written" not in written
    return [v for v in candidates if v != read.value]


@settings(max_examples=50, deadline=None)
@given(register_runs())
def test_histories_of_a_real_register_are_accepted(history: list[Operation]) -> None:
    assert_linearizable(history)


@settings(max_examples=50, deadline=None)
@given(register_runs(), st.data())
def test_one_impossible_read_makes_a_real_register_history_rejected(
    history: list[Operation], data: st.DataObject
) -> None:
    reads = [i for i, op in enumerate(history) if op.kind == "get" and op.outcome == "ok"]
    if not reads:
        history.append(Operation(9, "get", "a", None, 1000, 1001))
        reads = [len(history) - 1]
    index = data.draw(st.sampled_from(reads))
    value = data.draw(st.sampled_from(impossible_values(history, history[index])))
    history[index] = Operation(9, "get", history[index].key, value, *_times(history[index]))
    result = check(history)
    assert result.violation, f"mutated read {history[index]} accepted"
    assert check_key(list(result.operations)) is Verdict.VIOLATION


def _times(op: Operation) -> tuple[float, float]:
    assert op.complete is not None
    return op.invoke, op.complete


def brute_force_linearizable(history: list[Operation]) -> bool:
    """Every subset of the unknown writes, every order: the definition, for tiny histories."""
    writes_unknown = [op for op in history if op.outcome == "unknown" and op.kind != "get"]
    certain = [op for op in history if op.outcome == "ok"]
    inf = float("inf")

    def ends(op: Operation) -> float:
        return op.complete if op.outcome == "ok" and op.complete is not None else inf

    for mask in range(1 << len(writes_unknown)):
        chosen = certain + [w for i, w in enumerate(writes_unknown) if mask >> i & 1]
        for order in itertools.permutations(chosen):
            # Real time: no operation may come after one that was invoked after it returned.
            if any(ends(b) < a.invoke for i, a in enumerate(order) for b in order[i + 1 :]):
                continue
            state: dict[object, object] = {}
            for op in order:
                if op.kind == "get" and state.get(op.key) != op.value:
                    break
                if op.kind == "put":
                    state[op.key] = op.value
                elif op.kind == "delete":
                    state.pop(op.key, None)
            else:
                return True
    return False


@st.composite
def tiny_histories(draw: st.DrawFn) -> list[Operation]:
    history = []
    for i in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(KINDS[1:]))
        invoke = draw(st.integers(0, 10))
        complete = invoke + draw(st.integers(0, 6))
        outcome = draw(st.sampled_from(OUTCOMES[1:]))
        value = draw(st.sampled_from(["1", "2", None])) if kind != "delete" else None
        if kind == "put" and value is None:
            value = "1"
        done = None if outcome == "unknown" and draw(st.booleans()) else complete
        history.append(Operation(i, kind, "a", value, invoke, done, outcome))
    return history


@settings(max_examples=50, deadline=None)
@given(tiny_histories())
def test_agrees_with_brute_force_on_tiny_histories(history: list[Operation]) -> None:
    # Repeated values and unknown deletes included: the pruning must stay exact without the
    # uniqueness of values the simulator happens to guarantee.
    assert check(history).ok == brute_force_linearizable(history)
