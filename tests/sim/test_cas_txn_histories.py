"""Compare-and-swap and transactions through Raft under faults (issue 17): histories of puts,
CAS, multi-key txns and linearizable reads, across partitions, crashes and leader changes,
checked by the linearizability checker (cas and txn operations; keys a txn joins are checked
together) and by ``check_history``. A history whose CAS outcome was reported wrongly is
flagged."""

from __future__ import annotations

import pytest

from dengine_trio.raft import Durability

from .cluster import Cluster, InvariantViolation

KEYS = ["a", "b", "c"]


def run_workload(seed: int, durability: Durability) -> Cluster:
    c = Cluster(3, seed=seed, durability=durability)
    rng = c.rng
    c.wait_for_leader()

    def known(key: str) -> str | None:
        # What a client last heard of the key: the committed state now (a CAS on it may still
        # lose to a write committed meanwhile), or a stale or absent value, so both compare
        # outcomes occur.
        choice = rng.random()
        if choice < 0.6:
            return c.committed_states[-1].get(key)
        if choice < 0.8:
            return None
        states = c.committed_states
        return states[rng.randrange(len(states))].get(key)

    def client(node: int) -> None:
        target = c.leader() or node if rng.random() < 0.7 else node
        kind = rng.choice(["put", "cas", "cas", "txn", "txn", "read"])
        key = rng.choice(KEYS)
        if kind == "put":
            c.put(target, key)
        elif kind == "cas":
            c.cas(target, key, known(key))
        elif kind == "txn":
            keys = rng.sample(KEYS, rng.randint(1, 2))
            compares = [(k, known(k)) for k in keys]
            success = [(rng.choice(["put", "get"]), rng.choice(KEYS)) for _ in range(3)]
            failure = [("get", k) for k in rng.sample(KEYS, rng.randint(0, 2))]
            c.txn(target, compares, success, failure)
        else:
            c.read(target, key, "linearizable")

    for _ in range(12):
        for _ in range(10):
            node = rng.choice(c.ids)
            c.call_at(c.now + rng.uniform(0, 300), lambda n=node: client(n))
        fault = rng.choice(["partition", "crash", "transfer", "none"])
        if fault == "partition":
            isolated = rng.choice(c.ids)
            c.partition([isolated], [n for n in c.ids if n != isolated])
        elif fault == "crash":
            c.bounce(rng.choice(c.ids), rng.uniform(50, 400))
        elif fault == "transfer" and c.leader():
            c.transfer(c.leader())  # type: ignore[arg-type]
        c.run_for(300)
        c.heal()
    c.run_for(2_000)
    c.wait_converged()
    return c


@pytest.mark.parametrize("seed", range(6))
def test_cas_and_txn_histories_under_faults_are_linearizable(seed: int) -> None:
    durability = Durability.MEM_FIRST if seed % 2 else Durability.DISK_FIRST
    c = run_workload(seed, durability)
    c.check_history()
    result = c.check_linearizability()
    assert result.ok, result.explanation
    # Not vacuous: both compare outcomes happened, CAS and txn, and some writes were lost
    # to faults or left unknown.
    done = [op for op in c.history if op.ok and op.kind in ("cas", "txn")]
    assert {(op.kind, op.succeeded) for op in done} == {
        ("cas", True),
        ("cas", False),
        ("txn", True),
        ("txn", False),
    }
    assert any(op.ok is not True for op in c.history if op.kind in ("put", "cas", "txn"))


def test_a_cas_reported_with_the_wrong_outcome_is_flagged() -> None:
    """The same run, with one CAS's answer turned around (what a node that answered from the
    wrong state, or lost the write after acknowledging it, would have told its client)."""
    c = run_workload(1, Durability.MEM_FIRST)
    c.check_linearizability()
    held = [op for op in c.history if op.kind == "cas" and op.ok and op.succeeded]
    assert held
    lost = held[len(held) // 2]
    lost.succeeded = False
    with pytest.raises(InvariantViolation, match="cas"):
        c.check_linearizability()
