"""The linearizability checker on histories with compare-and-swap and transactions (issue 17):
hand-written violations (a lost CAS, two CAS succeeding from one value, a torn txn), and
generated histories of a real store, against a brute-force search on small ones."""

from __future__ import annotations

import itertools
from collections.abc import Hashable

from hypothesis import given, settings
from hypothesis import strategies as st

from ..support.linearizability import Operation, Outcome, check

INF = float("inf")


def put(
    key: str, value: str, invoke: float, end: float | None, outcome: Outcome = "ok"
) -> Operation:
    return Operation("w", "put", key, value, invoke, end, outcome)


def get(key: str, value: str | None, invoke: float, end: float) -> Operation:
    return Operation("r", "get", key, value, invoke, end)


def cas(
    key: str,
    expected: str | None,
    value: str | None,
    invoke: float,
    end: float | None,
    succeeded: bool | None,
    outcome: Outcome = "ok",
) -> Operation:
    return Operation(
        "c", "cas", key, value, invoke, end, outcome, expected=expected, succeeded=succeeded
    )


def txn(
    compares: tuple,
    success: tuple,
    failure: tuple,
    invoke: float,
    end: float | None,
    succeeded: bool | None,
    reads: tuple = (),
    outcome: Outcome = "ok",
) -> Operation:
    return Operation(
        "t",
        "txn",
        "txn",
        None,
        invoke,
        end,
        outcome,
        succeeded=succeeded,
        compares=compares,
        success=success,
        failure=failure,
        reads=reads,
    )


def test_a_lost_cas_is_flagged() -> None:
    """The CAS was acknowledged as applied, yet a read after it sees the old value."""
    history = [put("a", "1", 0, 1), cas("a", "1", "2", 2, 3, True), get("a", "1", 4, 5)]
    result = check(history)
    assert result.violation
    assert "cas a '1' -> '2' (held)" in result.explanation
    # Had the read seen the CAS's value, or the CAS reported that it failed (it could not
    # have: the key held "1"), the first would be fine and the second flagged too.
    assert check([*history[:2], get("a", "2", 4, 5)]).ok
    assert check([history[0], cas("a", "1", "2", 2, 3, False), history[2]]).violation


def test_two_cas_cannot_both_succeed_from_one_value() -> None:
    # The lost update CAS exists to prevent: concurrent or not, only one wins.
    concurrent = [
        put("a", "1", 0, 1),
        cas("a", "1", "2", 2, 5, True),
        cas("a", "1", "3", 2, 5, True),
    ]
    assert check(concurrent).violation
    one_wins = [
        put("a", "1", 0, 1),
        cas("a", "1", "2", 2, 5, True),
        cas("a", "1", "3", 2, 5, False),
    ]
    assert check(one_wins).ok
    # Unless the value came back in between.
    again = [*one_wins[:2], put("a", "1", 6, 7), cas("a", "1", "3", 8, 9, True)]
    assert check(again).ok


def test_a_failed_compare_observes_the_state() -> None:
    # A CAS for "must not exist" failed on a key that was never written: impossible.
    assert check([cas("a", None, "1", 0, 1, False)]).violation
    assert check([cas("a", None, "1", 0, 1, True), get("a", "1", 2, 3)]).ok
    # A write of unknown outcome that no read saw explains a failed compare: it is kept.
    history = [put("a", "x", 0, None, "unknown"), cas("a", None, "1", 5, 6, False)]
    assert check(history).ok


def test_a_cas_of_unknown_outcome_may_or_may_not_have_taken_effect() -> None:
    base = [put("a", "1", 0, 1), cas("a", "1", "2", 2, None, None, "unknown")]
    assert check([*base, get("a", "2", 10, 11)]).ok
    assert check([*base, get("a", "1", 10, 11)]).ok
    assert check([*base, get("a", "2", 10, 11), get("a", "1", 12, 13)]).violation


def test_a_cas_delete() -> None:
    history = [put("a", "1", 0, 1), cas("a", "1", None, 2, 3, True), get("a", None, 4, 5)]
    assert check(history).ok
    assert check([*history[:2], get("a", "1", 4, 5)]).violation


def test_a_torn_txn_is_flagged() -> None:
    """A transfer that wrote both keys atomically: a reader may not see one write without
    the other once the txn has returned."""
    transfer = txn((("a", "1"),), (("put", "a", "0"), ("put", "b", "1")), (), 2, 3, True)
    history = [put("a", "1", 0, 1), transfer, get("a", "0", 4, 5), get("b", None, 6, 7)]
    result = check(history)
    assert result.violation and result.key == ("a", "b")
    assert check([*history[:3], get("b", "1", 6, 7)]).ok


def test_txn_branch_and_reads_must_match_one_state() -> None:
    setup = [put("a", "1", 0, 1), put("b", "2", 0, 1)]
    reads_both = (("get", "a", None), ("get", "b", None))
    assert check([*setup, txn((("a", "1"),), reads_both, (), 2, 3, True, ("1", "2"))]).ok
    # A snapshot that never existed (a from before the put, b from after).
    assert check([*setup, txn((("a", "1"),), reads_both, (), 2, 3, True, (None, "2"))]).violation
    # The compare held, so the failure branch cannot have run.
    assert check([*setup, txn((("a", "1"),), (), reads_both, 2, 3, False, ("1", "2"))]).violation
    # Gets see the txn's own earlier writes.
    own = txn((), (("put", "a", "9"), ("get", "a", None)), (), 2, 3, True, ("9",))
    assert check([*setup, own]).ok


def test_keys_a_txn_joins_are_checked_together_others_apart() -> None:
    history = [
        put("c", "1", 0, 1),
        get("c", "1", 2, 3),
        txn((), (("put", "a", "1"), ("put", "b", "1")), (), 0, 1, True),
        get("a", "1", 2, 3),
    ]
    assert check(history).ok


# ---------------------------------------------------------------- generated histories

KEYS = ("a", "b")
VALUES = ("1", "2", None)


@st.composite
def store_runs(draw: st.DrawFn, max_ops: int = 12) -> list[Operation]:
    """Histories of a real store: each operation takes effect at one instant inside its
    window (a write of unknown outcome maybe never), so they are linearizable by construction."""
    state: dict[str, str | None] = dict.fromkeys(KEYS)
    history = []
    instant = 0.0
    for i in range(draw(st.integers(1, max_ops))):
        instant += draw(st.integers(1, 4))
        invoke = instant - draw(st.integers(0, 8))
        complete = instant + draw(st.integers(0, 8))
        outcome: Outcome = draw(st.sampled_from(["ok", "ok", "ok", "unknown"]))
        applied = outcome == "ok" or draw(st.booleans())
        kind = draw(st.sampled_from(["put", "get", "cas", "cas", "txn"]))
        key = draw(st.sampled_from(KEYS))
        if kind == "get":
            if outcome == "ok":
                history.append(get(key, state[key], invoke, complete))
            continue
        end = None if outcome == "unknown" else complete
        value = f"v{i}"
        if kind == "put":
            if applied:
                state[key] = value
            history.append(put(key, value, invoke, end, outcome))
            continue
        if kind == "cas":
            expected = draw(st.sampled_from([state[key], state[key], None, "v0"]))
            new = draw(st.sampled_from([value, value, None]))
            holds = state[key] == expected
            if applied and holds:
                state[key] = new
            succeeded = holds if outcome == "ok" else None
            history.append(cas(key, expected, new, invoke, end, succeeded, outcome))
            continue
        compares = tuple(
            (k, draw(st.sampled_from([state[k], None])))
            for k in draw(st.sets(st.sampled_from(KEYS)))
        )
        branches = []
        for _ in range(2):
            ops = []
            for k in draw(st.lists(st.sampled_from(KEYS), max_size=3)):
                op = draw(st.sampled_from(["put", "delete", "get"]))
                ops.append((op, k, f"v{i}{k}{len(ops)}" if op == "put" else None))
            branches.append(tuple(ops))
        holds = all(state[k] == v for k, v in compares)
        reads = []
        after = dict(state)
        for op, k, v in branches[0] if holds else branches[1]:
            if op == "get":
                reads.append(after[k])
            else:
                after[k] = v
        if applied:
            state = after
        succeeded = holds if outcome == "ok" else None
        history.append(
            txn(compares, branches[0], branches[1], invoke, end, succeeded, tuple(reads), outcome)
        )
    return history


@settings(max_examples=60, deadline=None)
@given(store_runs())
def test_histories_of_a_real_store_are_accepted(history: list[Operation]) -> None:
    result = check(history)
    assert result.ok, result.explanation


def brute_force(history: list[Operation]) -> bool:
    """The definition, for tiny histories: some subset of the unknown operations and some
    order respecting real time explains every definite one."""
    unknown = [op for op in history if op.outcome == "unknown"]
    certain = [op for op in history if op.outcome == "ok"]

    def ends(op: Operation) -> float:
        return op.complete if op.outcome == "ok" and op.complete is not None else INF

    for mask in range(1 << len(unknown)):
        chosen = certain + [op for i, op in enumerate(unknown) if mask >> i & 1]
        for order in itertools.permutations(chosen):
            if any(ends(b) < a.invoke for i, a in enumerate(order) for b in order[i + 1 :]):
                continue
            if _explains(order):
                return True
    return False


def _explains(order: tuple[Operation, ...]) -> bool:
    state: dict[Hashable, Hashable | None] = {}
    for op in order:
        definite = op.outcome == "ok"
        if op.kind == "get":
            if state.get(op.key) != op.value:
                return False
        elif op.kind == "put":
            state[op.key] = op.value
        elif op.kind == "cas":
            holds = state.get(op.key) == op.expected
            if definite and holds != op.succeeded:
                return False
            if holds:
                state[op.key] = op.value
        else:
            holds = all(state.get(k) == v for k, v in op.compares)
            if definite and holds != op.succeeded:
                return False
            reads = list(op.reads)
            for kind, k, v in op.success if holds else op.failure:
                if kind == "get":
                    if definite and (not reads or state.get(k) != reads.pop(0)):
                        return False
                else:
                    state[k] = v if kind == "put" else None
    return True


@settings(max_examples=120, deadline=None)
@given(store_runs(max_ops=5), st.data())
def test_the_verdict_matches_a_brute_force_search(
    history: list[Operation], data: st.DataObject
) -> None:
    # Mutate one definite operation's observation half the time, so both verdicts occur.
    definite = [i for i, op in enumerate(history) if op.outcome == "ok" and op.kind != "put"]
    if definite and data.draw(st.booleans()):
        at = data.draw(st.sampled_from(definite))
        op = history[at]
        if op.kind == "get":
            history[at] = get(op.key, data.draw(st.sampled_from(VALUES)), op.invoke, op.complete)  # type: ignore[arg-type]
        else:
            history[at] = Operation(
                op.client_id,
                op.kind,
                op.key,
                op.value,
                op.invoke,
                op.complete,
                op.outcome,
                expected=op.expected,
                succeeded=not op.succeeded,
                compares=op.compares,
                success=op.success,
                failure=op.failure,
                reads=op.reads,
            )
    assert check(history).ok == brute_force(history)
