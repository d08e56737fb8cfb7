"""``Progress``: the leader's view of one follower (probe and replicate, the in-flight window,
stale replies)."""

from __future__ import annotations

from dengine_trio.raft.progress import Progress, ProgressState


def test_probe_sends_one_message_at_a_time() -> None:
    p = Progress(next_index=5)
    assert p.state is ProgressState.PROBE and not p.paused(4)
    p.sent(7)
    assert p.paused(4) and p.next_index == 5  # a probe does not advance next_index


def test_first_success_moves_to_replicate_and_pipelines_up_to_the_window() -> None:
    p = Progress(next_index=5)
    p.sent(7)
    assert p.acknowledge(7)
    p.become_replicate()
    assert p.next_index == 8 and not p.paused(2)
    p.sent(9)
    p.sent(10)
    assert p.next_index == 11 and p.paused(2)
    assert p.acknowledge(9) and not p.paused(2) and list(p.inflight) == [10]


def test_stale_and_duplicate_acknowledgements_change_nothing() -> None:
    p = Progress(next_index=1)
    assert p.acknowledge(4)
    assert not p.acknowledge(4) and not p.acknowledge(2)
    assert p.match_index == 4


def test_rejections_back_track_but_never_below_the_match() -> None:
    p = Progress(next_index=1)
    p.acknowledge(3)
    p.become_replicate()
    p.sent(8)
    assert not p.reject(3, 1)  # about a message at or below the match: stale
    assert p.reject(8, 6)  # back to probing from the hint
    assert p.state is ProgressState.PROBE and p.next_index == 6
    assert not p.reject(8, 2)  # a second rejection of an older message: stale
    assert p.reject(5, 1) and p.next_index == 4  # never at or below the match (3)


def test_snapshot_state_holds_every_append_and_takes_no_rejection() -> None:
    p = Progress(next_index=4)
    p.acknowledge(2)
    p.become_replicate()
    p.sent(9)
    p.become_snapshot(20, 3, 1)
    assert p.state is ProgressState.SNAPSHOT and p.paused(64) and not p.inflight
    assert (p.pending_snapshot, p.pending_snapshot_term) == (20, 3)
    # A rejection of an AppendEntries sent before the snapshot is stale, even one that
    # names the index just before ``next_index`` (what a probe's rejection would name).
    assert not p.reject(p.next_index - 1, 5) and not p.reject(8, 5)
    assert p.state is ProgressState.SNAPSHOT and p.pending_snapshot == 20


def test_snapshot_landing_probes_past_it_and_failure_waits_for_an_answer() -> None:
    p = Progress(next_index=4)
    p.acknowledge(2)
    p.become_snapshot(20, 3, 1)
    p.snapshot_landed()
    assert p.state is ProgressState.PROBE and p.next_index == 21 and not p.paused(64)
    assert p.pending_snapshot == 0
    p.become_snapshot(20, 3, 1)
    p.snapshot_failed()
    # Back to probing from the match, but held until the follower next answers: no resend
    # in the same step, so an unreachable follower is not sent a snapshot in a loop.
    assert p.state is ProgressState.PROBE and p.next_index == 3 and p.paused(64)
