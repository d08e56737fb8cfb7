"""The driver's ordering rule, against a fake core (issue 12 item 2).

The effects of one step are carried out in the order the core returned them, synchronously up
to the first barrier (an effect type with ``barrier = True``: ``PersistHardState``, whose save
is awaited, and ``RestoreSnapshot``, whose install is awaited); what is left goes to the Raft
loop, and
until it is carried out nobody steps the core, so a later step's effects never overtake it.
"""

from __future__ import annotations

import math
import threading
import typing
from typing import Any

import pytest
import trio

from dengine_trio.raft import (
    Apply,
    Effect,
    PersistEntries,
    PersistHardState,
    ProposalRejected,
    Proposed,
    ReadFailed,
    ReadReady,
    Receive,
    RestoreSnapshot,
    Role,
    RoleChanged,
    Send,
)
from dengine_trio.runtime.driver import Driver

WAIT_S = 10


class FakeCore:
    """Returns scripted effects, one list per step; records the events of every step."""

    def __init__(self, *script: list[Any]) -> None:
        self.script = list(script)
        self.steps: list[list[Any]] = []

    def step_many(self, now_ms: float, events: list[Any]) -> list[Any]:
        self.steps.append([e.message for e in events if isinstance(e, Receive)])
        return self.script.pop(0) if self.script else []

    def next_deadline(self) -> float:
        return math.inf


class FakeStorage:
    """Hard-state saves block until ``release`` is set (they run in a worker thread)."""

    def __init__(self, journal: list[tuple[str, Any]]) -> None:
        self.journal = journal
        self.release = threading.Event()
        self.saving = threading.Event()

    def append(self, entries: Any) -> None:
        self.journal.append(("append", len(entries)))

    def save_hard_state(self, term: int, voted_for: int) -> None:
        self.saving.set()
        assert self.release.wait(WAIT_S)
        self.journal.append(("save", term))

    def sync(self) -> tuple[int, int]:
        return 0, 0


class Handler:
    def __init__(self, journal: list[tuple[str, Any]]) -> None:
        self.journal = journal

    def __getattr__(self, name: str) -> Any:
        return lambda effect: self.journal.append((name, effect))


def make_driver(core: FakeCore, journal: list[tuple[str, Any]]) -> tuple[Driver, FakeStorage]:
    storage = FakeStorage(journal)
    failures: list[Exception] = []
    driver = Driver(
        1,
        core,
        storage,
        lambda message: journal.append(("send", message)),
        Handler(journal),  # type: ignore[arg-type]
        now_ms=lambda: trio.current_time() * 1000,
        trio_deadline=lambda ms: ms / 1000,
        on_failure=failures.append,
    )
    return driver, storage


async def wait_until(condition: Any) -> None:
    with trio.fail_after(WAIT_S):
        while not condition():
            await trio.sleep(0.001)


def test_the_ordering_rule_is_a_property_of_the_effect_types() -> None:
    """Every effect type says whether it is a barrier; the hard-state save (its durability
    comes before any later message, Raft Figure 2) and a snapshot's install (the log and state
    machine start after it before anything later) are the only ones."""
    barriers = {t.__name__: t.barrier for t in typing.get_args(Effect)}
    assert len(barriers) == 12  # ConfChangeRejected, MembershipChanged (issue 14) are not
    assert {name for name, barrier in barriers.items() if barrier} == {
        "PersistHardState",
        "RestoreSnapshot",
    }
    assert all(isinstance(barrier, bool) for barrier in barriers.values())


async def test_effects_after_an_await_go_before_any_later_step() -> None:
    journal: list[tuple[str, Any]] = []
    core = FakeCore(
        [Send("a"), PersistHardState(2, 1), Send("b"), PersistEntries(())],
        [Send("c")],
    )
    driver, storage = make_driver(core, journal)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(driver.run)
        driver.receive(Receive("m1"))
        driver.step_now()
        # Inline: up to the hard-state save, which is left to the Raft loop.
        assert journal == [("send", "a")]
        await trio.to_thread.run_sync(storage.saving.wait)
        # While the save is under way a message arrives and its reader steps: the core is
        # not stepped, the message waits.
        driver.receive(Receive("m2"))
        driver.step_now()
        assert core.steps == [["m1"]]
        storage.release.set()
        await wait_until(lambda: ("send", "c") in journal)
        nursery.cancel_scope.cancel()
    assert journal == [
        ("send", "a"),
        ("save", 2),
        ("send", "b"),
        ("append", 0),
        ("send", "c"),
    ]
    assert core.steps == [["m1"], ["m2"]]


async def test_every_other_effect_goes_to_the_handler_in_order() -> None:
    journal: list[tuple[str, Any]] = []
    effects = [
        Apply(()),
        Proposed(1, 5, 2),
        ReadReady(2, 5),
        ProposalRejected(3, 0),
        ReadFailed(4, 0),
        RoleChanged(Role.LEADER, 2, 1),
    ]
    driver, _ = make_driver(FakeCore(effects), journal)
    driver.receive(Receive("m"))
    driver.step_now()
    assert journal == [
        ("apply", effects[0]),
        ("proposed", effects[1]),
        ("read_ready", effects[2]),
        ("proposal_rejected", effects[3]),
        ("read_failed", effects[4]),
        ("role_changed", effects[5]),
    ]


async def test_an_effect_nobody_handles_stops_the_node_instead_of_vanishing() -> None:
    journal: list[tuple[str, Any]] = []
    driver, _ = make_driver(FakeCore([Send("a"), object(), Send("b")]), journal)
    driver.receive(Receive("m"))
    driver.step_now()
    assert isinstance(driver.failure, AssertionError)
    assert "unhandled effect" in str(driver.failure)
    assert journal == [("send", "a")]


@pytest.mark.parametrize("hard_state_first", [True, False])
async def test_the_raft_loop_steps_client_events_in_one_batch(hard_state_first: bool) -> None:
    journal: list[tuple[str, Any]] = []
    first = [PersistHardState(1, 0), Send("x")] if hard_state_first else [Send("x")]
    core = FakeCore(first)
    driver, storage = make_driver(core, journal)
    storage.release.set()
    async with trio.open_nursery() as nursery:
        for name in ("p1", "p2", "p3"):
            driver.submit(Receive(name))
        nursery.start_soon(driver.run)
        await wait_until(lambda: ("send", "x") in journal)
        nursery.cancel_scope.cancel()
    assert core.steps == [["p1", "p2", "p3"]]


class InstallingHandler(Handler):
    """``restore_snapshot`` waits until ``release`` is set, as an install in a thread does."""

    def __init__(self, journal: list[tuple[str, Any]]) -> None:
        super().__init__(journal)
        self.release = trio.Event()
        self.installing = trio.Event()

    async def restore_snapshot(self, effect: RestoreSnapshot) -> None:
        self.installing.set()
        await self.release.wait()
        self.journal.append(("restore", effect.index))


async def test_a_snapshot_install_is_a_barrier_and_the_staged_step_is_reported() -> None:
    """``RestoreSnapshot`` is awaited before the effects after it (the answer to the leader),
    a message arriving meanwhile is not stepped, and the step that took a staged snapshot's
    message is reported with its effects (``snapshot_stepped``), that one only."""
    journal: list[tuple[str, Any]] = []
    core = FakeCore([RestoreSnapshot(40, 3), Send("ack")], [Send("c")])
    storage = FakeStorage(journal)
    handler = InstallingHandler(journal)
    driver = Driver(
        1,
        core,
        storage,
        lambda message: journal.append(("send", message)),
        handler,  # type: ignore[arg-type]
        now_ms=lambda: trio.current_time() * 1000,
        trio_deadline=lambda ms: ms / 1000,
        on_failure=lambda exc: None,
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(driver.run)
        driver.receive_snapshot(Receive("snap"))
        assert journal == [("snapshot_stepped", [RestoreSnapshot(40, 3), Send("ack")])]
        with trio.fail_after(WAIT_S):
            await handler.installing.wait()
        driver.receive(Receive("m2"))
        driver.step_now()
        assert core.steps == [["snap"]]
        handler.release.set()
        await wait_until(lambda: ("send", "c") in journal)
        nursery.cancel_scope.cancel()
    assert journal == [
        ("snapshot_stepped", [RestoreSnapshot(40, 3), Send("ack")]),
        ("restore", 40),
        ("send", "ack"),
        ("send", "c"),
    ]
    assert core.steps == [["snap"], ["m2"]]
