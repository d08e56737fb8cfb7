"""A linearizability checker for a key-value register (put, get, delete), one key at a time.

The search is Wing & Gong's, with the pruning of Lowe, Knossos and Porcupine:

- P-compositionality: a history is linearizable iff each key's sub-history is, so every key is
  checked on its own (small histories, small states).
- Depth-first search over the list of call and return events, with a memo of the configurations
  (set of linearized operations, register state) already explored: reaching one twice cannot
  succeed the second time.
- Just-in-time linearization: only operations invoked before the earliest pending return can be
  linearized next; meeting a return whose operation is not linearized yet means backtracking.

Compare-and-swap and transactions (issue 17). A ``cas`` writes ``value`` (None: deletes) if the
key holds ``expected`` (None: absent), and reports whether it did (``succeeded``). A ``txn``
(etcd's ``Txn``) compares several keys' values, then runs its ``success`` or ``failure`` ops
(put, delete, get) atomically; ``reads`` are what its gets returned. A txn joins the keys it
touches: keys linked by txns are checked together, with a state of one value per key (the
P-compositionality above holds between such groups, not inside one). The pruning of unknown
writes that no read returned is for plain registers only: a failed compare observes a write
too, so in a group with a cas or a txn every write of unknown outcome is kept.

Outcomes follow Jepsen. An operation whose outcome is unknown (timed out, node crashed) may have
taken effect at any instant after its invocation, or never: its return is at infinity and the
search may leave it out. An operation that failed for sure had no effect and is dropped, as is
every read that did not return a value.

The answer is sound: a violation is reported only once the search has shown that no
linearization exists. A search that runs out of its step budget says "inconclusive" instead.
A violation is explained by a small sub-history that is itself not linearizable, shrunk by
removing operations whose removal could not have created the violation (see ``_safe_removal``).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from enum import Enum
from typing import Literal

import attrs

Kind = Literal["put", "get", "delete", "cas", "txn"]
TxnCompare = tuple[Hashable, Hashable | None]  # (key, value it must hold; None: absent)
TxnOp = tuple[str, Hashable, Hashable | None]  # ("put", key, value) | ("delete"|"get", key, None)
Outcome = Literal["ok", "fail", "unknown"]

DEFAULT_MAX_STEPS_PER_KEY = 500_000
DEFAULT_SHRINK_STEPS = 2_000_000


def _check_operation(op: Operation, _attribute: object, _value: object) -> None:
    if op.kind not in ("put", "get", "delete", "cas", "txn"):
        raise ValueError(f"unknown kind {op.kind!r}")
    if op.outcome not in ("ok", "fail", "unknown"):
        raise ValueError(f"unknown outcome {op.outcome!r}")
    if op.kind == "put" and op.value is None:
        raise ValueError("a put needs a value (None stands for absent)")
    if op.kind == "delete" and op.value is not None:
        raise ValueError("a delete carries no value")
    if op.kind in ("cas", "txn") and op.outcome == "ok" and op.succeeded is None:
        raise ValueError(f"a completed {op.kind} says whether it succeeded")
    if op.kind == "txn":
        for kind, _key, value in (*op.success, *op.failure):
            if kind not in ("put", "delete", "get") or (kind == "put") != (value is not None):
                raise ValueError("a txn op is (put, key, value) or (delete|get, key, None)")
    if op.outcome == "ok" and op.complete is None:
        raise ValueError("an operation known to have succeeded needs its completion time")
    if op.complete is not None and op.complete < op.invoke:
        raise ValueError(f"completed at {op.complete} before it was invoked at {op.invoke}")


@attrs.frozen
class Operation:
    """One client operation as observed by its client.

    ``value`` is what a put wrote, or what a get returned (None: the key was absent); it is None
    for a delete. Times are in any one unit on one clock; an operation that completed before
    another was invoked (strictly) precedes it, equal times count as concurrent.
    ``outcome``: "ok" took effect (a get returned ``value``); "fail" certainly took no effect;
    "unknown" may or may not have taken effect (``complete`` is then ignored).
    """

    client_id: Hashable
    kind: Kind
    key: Hashable
    value: Hashable | None
    invoke: float
    complete: float | None
    outcome: Outcome = attrs.field(default="ok", validator=_check_operation)
    # A cas: ``value`` is written (None: deleted) if the key holds ``expected`` (None: absent).
    expected: Hashable | None = None
    # A cas or txn: whether its compare held (None while the outcome is unknown).
    succeeded: bool | None = None
    # A txn (its ``key`` only names it; ``keys()`` are the keys it touches): compares, the
    # two branches, and what the gets of the branch that ran returned, in order.
    compares: tuple[TxnCompare, ...] = ()
    success: tuple[TxnOp, ...] = ()
    failure: tuple[TxnOp, ...] = ()
    reads: tuple[Hashable | None, ...] = ()

    def keys(self) -> tuple[Hashable, ...]:
        """The keys this operation reads or writes."""
        if self.kind != "txn":
            return (self.key,)
        keys = [key for key, _ in self.compares] + [k for _, k, _ in self.success + self.failure]
        return tuple(dict.fromkeys(keys))

    def describe(self) -> str:
        """One readable line: client, operation, value, times."""
        if self.kind == "put":
            what = f"put {self.key!s} = {self.value!r}"
        elif self.kind == "delete":
            what = f"delete {self.key!s}"
        elif self.kind == "cas":
            was = "absent" if self.expected is None else repr(self.expected)
            now = "delete" if self.value is None else repr(self.value)
            what = f"cas {self.key!s} {was} -> {now} {_held(self.succeeded)}"
        elif self.kind == "txn":
            compares = " and ".join(f"{k!s}={v!r}" for k, v in self.compares) or "true"
            branch = lambda ops: ", ".join(  # noqa: E731
                f"{kind} {k!s}" + (f"={v!r}" if kind == "put" else "") for kind, k, v in ops
            )
            what = (
                f"txn if {compares} then [{branch(self.success)}] else "
                f"[{branch(self.failure)}] {_held(self.succeeded)} reads {list(self.reads)!r}"
            )
        else:
            shown = "absent" if self.value is None else repr(self.value)
            what = f"get {self.key!s} -> {shown}"
        if self.outcome == "unknown":
            when = f"invoked {self.invoke:.3f}, outcome unknown"
        else:
            when = f"invoked {self.invoke:.3f}, returned {self.complete:.3f}"
        return f"{'client ' + str(self.client_id):<24} {what:<26} {when}"


def _held(succeeded: bool | None) -> str:
    return "(?)" if succeeded is None else "(held)" if succeeded else "(failed)"


class Verdict(str, Enum):
    LINEARIZABLE = "linearizable"
    VIOLATION = "violation"
    INCONCLUSIVE = "inconclusive"


@attrs.frozen
class Result:
    """``ok``: every key was shown linearizable. ``key``: the first key that was not (a
    violation, or ``inconclusive`` when the step budget ran out before an answer)."""

    ok: bool
    key: Hashable | None = None
    explanation: str = ""
    inconclusive: bool = False
    operations: tuple[Operation, ...] = ()  # the shrunk non-linearizable window, if any

    @property
    def violation(self) -> bool:
        return not self.ok and not self.inconclusive


def check(
    history: Iterable[Operation],
    *,
    max_steps_per_key: int = DEFAULT_MAX_STEPS_PER_KEY,
    shrink_steps: int = DEFAULT_SHRINK_STEPS,
) -> Result:
    """Check a key-value history for linearizability, key by key.

    ``max_steps_per_key`` bounds each key's search; ``shrink_steps`` bounds the total search
    effort spent shrinking a violation to a small window.
    """
    by_key = _groups(history)
    undecided: Hashable | None = None
    undecided_count = 0
    for key, ops in by_key.items():
        relevant = relevant_operations(ops)
        verdict = check_key(relevant, max_steps=max_steps_per_key)
        if verdict is Verdict.VIOLATION:
            window = shrink(relevant, step_budget=shrink_steps)
            return Result(
                ok=False,
                key=key,
                explanation=_explain(key, window, len(relevant)),
                operations=tuple(window),
            )
        if verdict is Verdict.INCONCLUSIVE and undecided is None:
            undecided, undecided_count = key, len(relevant)
    if undecided is not None:
        return Result(
            ok=False,
            key=undecided,
            inconclusive=True,
            explanation=(
                f"key {undecided!s}: inconclusive: no answer within {max_steps_per_key} search "
                f"steps over {undecided_count} operations"
            ),
        )
    return Result(ok=True)


def _groups(history: Iterable[Operation]) -> dict[Hashable, list[Operation]]:
    """The operations by key, keys that a txn touches together forming one group (named by
    its first key, or a tuple of its keys when there are several)."""
    parent: dict[Hashable, Hashable] = {}

    def root(key: Hashable) -> Hashable:
        while parent.setdefault(key, key) != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    ops = list(history)
    for op in ops:
        keys = op.keys()
        for key in keys[:1]:
            root(key)
        for other in keys[1:]:
            parent[root(other)] = root(keys[0])
    members: dict[Hashable, list[Hashable]] = {}
    for key in parent:
        members.setdefault(root(key), []).append(key)
    grouped: dict[Hashable, list[Operation]] = {}
    for op in ops:
        group = members[root(op.keys()[0])] if op.keys() else [op.key]
        name = group[0] if len(group) == 1 else tuple(group)
        grouped.setdefault(name, []).append(op)
    return grouped


def _plain(ops: Iterable[Operation]) -> bool:
    """One key's register operations only (no cas or txn): the fast path applies."""
    return all(op.kind in ("get", "put", "delete") for op in ops)


def relevant_operations(ops: Iterable[Operation]) -> list[Operation]:
    """The operations that constrain a linearization: writes that did or may have taken
    effect, and reads that returned. A write of unknown outcome whose value no read returned
    is left out too: had it taken effect, nothing could tell (see ``_safe_removal``); not in a
    group with a cas or a txn, whose failed compares observe writes too."""
    kept = [
        op for op in ops if op.outcome == "ok" or (op.outcome == "unknown" and op.kind != "get")
    ]
    if not _plain(kept):
        return kept
    read_values = {op.value for op in kept if op.kind == "get"}
    return [op for op in kept if op.outcome == "ok" or op.value in read_values]


def check_key(ops: Sequence[Operation], *, max_steps: int = DEFAULT_MAX_STEPS_PER_KEY) -> Verdict:
    """Is this one key's history linearizable? ``ops`` should be ``relevant_operations``."""
    found, _ = _search(ops, max_steps)
    if found is None:
        return Verdict.INCONCLUSIVE
    return Verdict.LINEARIZABLE if found else Verdict.VIOLATION


_GET, _PUT, _DELETE = 0, 1, 2
_KINDS = {"get": _GET, "put": _PUT, "delete": _DELETE}


def _event_time(op: Operation, is_return: int, definite: bool) -> float:
    if not is_return:
        return op.invoke
    return op.complete if definite and op.complete is not None else float("inf")


def _transition(
    op: Operation, state: tuple[Hashable | None, ...], slot: dict[Hashable, int]
) -> tuple[bool, tuple[Hashable | None, ...]]:
    """Can ``op`` take effect in ``state`` (one value per key of its group, at ``slot[key]``)
    and what state follows. An operation of unknown outcome may take effect whichever way its
    compare goes."""
    definite = op.outcome == "ok"
    if op.kind == "get":
        return state[slot[op.key]] == op.value, state
    if op.kind in ("put", "delete"):
        return True, _with(state, slot[op.key], op.value if op.kind == "put" else None)
    if op.kind == "cas":
        holds = state[slot[op.key]] == op.expected
        if definite and holds != op.succeeded:
            return False, state
        return True, _with(state, slot[op.key], op.value) if holds else state
    holds = all(state[slot[key]] == value for key, value in op.compares)
    if definite and holds != op.succeeded:
        return False, state
    values = list(state)
    reads = iter(op.reads)
    for kind, key, value in op.success if holds else op.failure:
        if kind == "get":
            if definite and values[slot[key]] != next(reads, _NO_READ):
                return False, state
        else:
            values[slot[key]] = value if kind == "put" else None
    return True, tuple(values)


_NO_READ = object()


def _with(state: tuple[Hashable | None, ...], at: int, value: Hashable | None) -> tuple:
    return (*state[:at], value, *state[at + 1 :])


def _search(ops: Sequence[Operation], max_steps: int) -> tuple[bool | None, int]:
    """(True: linearizable, False: not, None: gave up after ``max_steps`` steps; steps taken)"""
    if not _plain(ops):
        return _search_group(ops, max_steps)
    n = len(ops)
    kinds = [_KINDS[op.kind] for op in ops]
    values = [op.value for op in ops]
    definite = [op.outcome == "ok" for op in ops]
    # Entry e is op e // 2's call (even e) or return (odd e). At equal times calls come first,
    # so operations that touch in time count as concurrent: never a false violation.
    order = sorted(
        range(2 * n),
        key=lambda e: (_event_time(ops[e >> 1], e & 1, definite[e >> 1]), e & 1, e),
    )
    head = 2 * n
    nxt = [-1] * (2 * n + 1)
    prv = [-1] * (2 * n + 1)
    last = head
    for e in order:
        nxt[last], prv[e] = e, last
        last = e

    def lift(op: int) -> None:
        for e in (2 * op, 2 * op + 1):
            nxt[prv[e]] = nxt[e]
            if nxt[e] != -1:
                prv[nxt[e]] = prv[e]

    def unlift(op: int) -> None:
        for e in (2 * op + 1, 2 * op):
            nxt[prv[e]] = e
            if nxt[e] != -1:
                prv[nxt[e]] = e

    # A write of unknown outcome matters only while some read of its value is still to be
    # linearized; placed after all of them it changes nothing anyone sees, so it is skipped.
    readers_left: dict[Hashable | None, int] = {}
    for i in range(n):
        if kinds[i] == _GET:
            readers_left[values[i]] = readers_left.get(values[i], 0) + 1

    remaining = sum(definite)
    state: Hashable | None = None  # the register starts absent
    linearized = 0
    memo: set[tuple[int, Hashable | None]] = set()
    stack: list[tuple[int, Hashable | None]] = []  # (op, state before it)
    entry = nxt[head]
    steps = 0
    while remaining:
        steps += 1
        if steps > max_steps:
            return None, max_steps
        if not entry & 1:  # a call: try to linearize its operation here
            op = entry >> 1
            kind = kinds[op]
            if kind == _GET:
                applicable, after = state == values[op], state
            else:
                applicable = definite[op] or readers_left.get(values[op], 0) > 0
                after = values[op] if kind == _PUT else None
            if applicable:
                key = (linearized | (1 << op), after)
                if key not in memo:
                    memo.add(key)
                    stack.append((op, state))
                    linearized, state = key
                    lift(op)
                    remaining -= definite[op]
                    if kind == _GET:
                        readers_left[values[op]] -= 1
                    entry = nxt[head]
                    continue
            entry = nxt[entry]
        else:  # the earliest pending return: its operation had to be linearized by now
            if not stack:
                return False, steps
            op, state = stack.pop()
            linearized &= ~(1 << op)
            unlift(op)
            remaining += definite[op]
            if kinds[op] == _GET:
                readers_left[values[op]] += 1
            entry = nxt[2 * op]
    return True, steps


def _search_group(ops: Sequence[Operation], max_steps: int) -> tuple[bool | None, int]:
    """``_search`` for a group with a cas or a txn: the same search over a state of one value
    per key of the group, each operation's effect from ``_transition``, every operation of
    unknown outcome kept (it may be placed anywhere after its call, or left out)."""
    n = len(ops)
    slot: dict[Hashable, int] = {}
    for op in ops:
        for key in op.keys():
            slot.setdefault(key, len(slot))
    definite = [op.outcome == "ok" for op in ops]
    order = sorted(
        range(2 * n),
        key=lambda e: (_event_time(ops[e >> 1], e & 1, definite[e >> 1]), e & 1, e),
    )
    head = 2 * n
    nxt = [-1] * (2 * n + 1)
    prv = [-1] * (2 * n + 1)
    last = head
    for e in order:
        nxt[last], prv[e] = e, last
        last = e

    def lift(op: int) -> None:
        for e in (2 * op, 2 * op + 1):
            nxt[prv[e]] = nxt[e]
            if nxt[e] != -1:
                prv[nxt[e]] = prv[e]

    def unlift(op: int) -> None:
        for e in (2 * op + 1, 2 * op):
            nxt[prv[e]] = e
            if nxt[e] != -1:
                prv[nxt[e]] = e

    remaining = sum(definite)
    state: tuple[Hashable | None, ...] = (None,) * len(slot)  # every key starts absent
    linearized = 0
    memo: set[tuple[int, tuple[Hashable | None, ...]]] = set()
    stack: list[tuple[int, tuple[Hashable | None, ...]]] = []
    entry = nxt[head]
    steps = 0
    while remaining:
        steps += 1
        if steps > max_steps:
            return None, max_steps
        if not entry & 1:
            op = entry >> 1
            applicable, after = _transition(ops[op], state, slot)
            if applicable:
                key = (linearized | (1 << op), after)
                if key not in memo:
                    memo.add(key)
                    stack.append((op, state))
                    linearized, state = key
                    lift(op)
                    remaining -= definite[op]
                    entry = nxt[head]
                    continue
            entry = nxt[entry]
        else:
            if not stack:
                return False, steps
            op, state = stack.pop()
            linearized &= ~(1 << op)
            unlift(op)
            remaining += definite[op]
            entry = nxt[2 * op]
    return True, steps


def _safe_removal(current: Sequence[Operation], chunk: Sequence[Operation]) -> set[int]:
    """The ids of the operations of ``chunk`` whose removal from ``current`` keeps a
    linearizable history linearizable, so that a violation left after removing them was
    already there. A read: always (it changes no state). A write: when no remaining read
    returns its value, since in any linearization the reads between it and the next write
    return its value: there are none, and without it the next write overwrites the same."""
    reads = {id(op) for op in chunk if op.kind == "get"}
    if not _plain(current):
        # A cas or txn observes writes through its compares: only reads are surely safe.
        return reads
    read_values = {op.value for op in current if op.kind == "get" and id(op) not in reads}
    writes = {id(op) for op in chunk if op.kind != "get" and op.value not in read_values}
    return reads | writes


def shrink(ops: Sequence[Operation], *, step_budget: int = DEFAULT_SHRINK_STEPS) -> list[Operation]:
    """A small non-linearizable sub-history of a non-linearizable ``ops`` (delta debugging:
    drop chunks, halving their size, while the rest is still shown non-linearizable)."""
    current = list(ops)
    found, base_steps = _search(current, step_budget)
    if found is not False:
        return current
    budget = step_budget - base_steps
    # A sub-history is rarely much harder than the whole; one that is must not eat the budget.
    per_candidate = max(10_000, 4 * base_steps)
    size = max(1, len(current) // 2)
    while budget > 0:
        removed_any = False
        start = 0
        while start < len(current) and budget > 0:
            chunk = current[start : start + size]
            drop = _safe_removal(current, chunk)
            if drop:
                candidate = [op for op in current if id(op) not in drop]
                found, steps = _search(candidate, min(budget, per_candidate))
                budget -= steps
                if found is False:
                    current = candidate
                    removed_any = True
                    continue  # the next chunk now starts at ``start``
            start += size
        if size == 1 and not removed_any:
            break
        size = max(1, size // 2)
    return sorted(current, key=lambda op: (op.invoke, op.complete is None, op.complete or 0.0))


def _explain(key: Hashable, window: Sequence[Operation], total: int) -> str:
    lines = [
        f"key {key!s} is not linearizable. No order of these {len(window)} operations "
        f"(shrunk from {total} on this key) respects both real time and a register:"
    ]
    lines.extend("  " + op.describe() for op in window)
    return "\n".join(lines)
