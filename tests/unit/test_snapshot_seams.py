"""Seams of the snapshot work (issue 13) that a unit can show: what the node runtime concludes
from an installed snapshot about requests it holds (runtime/requests.py), checked against the
Raft rule it rests on (Raft paper section 5.3: terms never decrease along a log)."""

from __future__ import annotations

from typing import Any

from dengine_trio.errors import NotLeader
from dengine_trio.runtime.forwarding import Forwarding, _Forward
from dengine_trio.runtime.requests import RequestTable


def test_a_proposal_after_the_snapshot_of_an_older_term_fails_at_once() -> None:
    """This node, once leader in term 2, proposed entries 45 and 46; it lost leadership, and
    a leader's snapshot through (40, 3) replaced its log. Every entry after index 40 of the
    cluster's log has a term of at least 3, so those term-2 entries can never commit: the
    requests fail with ``NotLeader`` at once (safe to send again). Before, they waited for an
    entry at their index to apply (NotLeader then), or for their deadline on an idle cluster:
    a Timeout, which tells the client the write may have been applied."""
    table = RequestTable(1, max_pending=8, first_id=1)
    waiters = {}
    for index, term in ((45, 2), (46, 2), (47, 3)):
        request_id, waiter = table.new_proposal()
        table.proposed(request_id, index, term)
        waiters[index] = waiter
    table.snapshot_installed(40, 3, leader_id=2)
    for index in (45, 46):
        error = waiters[index].error
        assert isinstance(error, NotLeader) and error.leader_id == 2, index
    assert not waiters[47].done  # term 3 at 47 may be the committed entry: it waits on


def test_a_forward_placed_after_the_snapshot_in_an_older_term_fails_at_once() -> None:
    """The same rule for a write this follower forwarded: the leader of term 2 placed it at
    45 (``ForwardAccepted``) and then lost leadership; a snapshot through (40, 3) arrives.
    It can never commit there: ``NotLeader`` at once, safe to send again. One placed at 46
    in term 3 may still commit: it waits on."""
    table = RequestTable(1, max_pending=8, first_id=1)
    nothing: Any = lambda *args: None  # noqa: E731 (nothing is sent in this test)
    forwarding = Forwarding(
        1, 1, table, send=nothing, withdraw=nothing, leadership=lambda: (False, 3),
        propose_local=nothing, stopped=lambda: False, request_timeout_s=5.0,
    )  # fmt: skip
    stale, live = _Forward(2), _Forward(2)
    stale.index, stale.term = 45, 2
    live.index, live.term = 46, 3
    forwarding._entries = {45: [stale], 46: [live]}
    forwarding.snapshot_installed(40, 3, leader_id=3)
    assert isinstance(stale.waiter.error, NotLeader) and stale.waiter.error.leader_id == 3
    assert not live.waiter.done
    assert forwarding._entries == {46: [live]}
