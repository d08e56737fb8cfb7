"""Snapshots in the Raft core (Raft paper §7, Figure 13; thesis §5): restart from a snapshot,
log compaction (``SnapshotTaken``), the leader's SNAPSHOT progress state and InstallSnapshot on
the follower. Each rule comes with the schedule that would break it: stale, duplicate and
late snapshots, a lost answer, a failed transfer, compaction racing a leader change."""

from __future__ import annotations

import random

import pytest

from dengine_trio.raft import (
    Apply,
    Durability,
    Effect,
    Entry,
    InstallSnapshot,
    Persisted,
    PersistEntries,
    Propose,
    RaftConfig,
    RaftNode,
    Receive,
    RestoreSnapshot,
    Role,
    Send,
    SnapshotStatus,
    SnapshotTaken,
    Tick,
)
from dengine_trio.raft.messages import (
    AppendEntries,
    AppendEntriesResponse,
    Heartbeat,
    HeartbeatResponse,
    RequestVote,
    RequestVoteResponse,
)
from dengine_trio.raft.progress import ProgressState


def config(node_id: int, durability: Durability = Durability.DISK_FIRST) -> RaftConfig:
    return RaftConfig(node_id=node_id, voters=(1, 2, 3), durability=durability)


def entries(first: int, *terms: int) -> list[Entry]:
    return [Entry(t, first + i, f"c{first + i}".encode()) for i, t in enumerate(terms)]


def sent(effects: list[Effect], kind: type) -> list:
    return [e.message for e in effects if isinstance(e, Send) and isinstance(e.message, kind)]


def applied(effects: list[Effect]) -> list[int]:
    return [e.index for eff in effects if isinstance(eff, Apply) for e in eff.entries]


def restarted(
    node_id: int,
    snapshot: tuple[int, int],
    log: list[Entry] | None = None,
    term: int | None = None,
    durability: Durability = Durability.DISK_FIRST,
) -> RaftNode:
    index, snap_term = snapshot
    return RaftNode(
        config(node_id, durability),
        random.Random(0),
        term=snap_term if term is None else term,
        entries=log or [],
        snapshot_index=index,
        snapshot_term=snap_term,
    )


def elect(n: RaftNode, now: float = 10_000.0) -> float:
    pending = sent(n.step(now, Tick()), RequestVote)
    while pending and n.role is not Role.LEADER:
        m = pending.pop(0)
        pending += sent(
            n.step(now, Receive(RequestVoteResponse(m.term, m.dst, n.id, True, m.pre_vote))),
            RequestVote,
        )
    assert n.role is Role.LEADER
    return now


def leader_needing_snapshot() -> tuple[RaftNode, float]:
    """Node 1 restarted from a snapshot at (10, 1) and elected (term 2, no-op at 11); follower
    2 answered the first probe with a hint below the snapshot, so it is sent one."""
    leader = restarted(1, (10, 1))
    now = elect(leader)
    term = leader.term
    leader.step(now, Persisted(11, term))
    effects = leader.step(now, Receive(HeartbeatResponse(term, 2, 1, seq=1, last_index=3)))
    (probe,) = sent(effects, AppendEntries)
    assert probe.prev_log_index == 10  # the no-op's predecessor: the snapshot's last entry
    reject = AppendEntriesResponse(
        term, 2, 1, False, reject_index=10, conflict_index=4, conflict_term=0
    )
    effects = leader.step(now, Receive(reject))
    assert sent(effects, InstallSnapshot) == [InstallSnapshot(term, 1, 2, 10, 1)]
    assert not sent(effects, AppendEntries)
    return leader, now


# ---------------------------------------------------------------------- restart


def test_restart_from_a_snapshot_commits_and_applies_only_after_it() -> None:
    node = restarted(1, (10, 1), entries(11, 1, 2), term=2)
    assert (node.commit_index, node.snapshot_index, node.snapshot_term) == (10, 10, 1)
    assert (node.log.first_index, node.log.last_index, node.durable_index) == (11, 12, 12)
    # A leader's commit of 12 applies 11..12, never what the snapshot already holds.
    effects = node.step(0, Receive(AppendEntries(2, 3, 1, 12, 2, (), leader_commit=12)))
    assert applied(effects) == [11, 12]


def test_restart_refuses_a_term_older_than_the_snapshot_or_a_gap_after_it() -> None:
    with pytest.raises(ValueError, match="older than the snapshot"):
        restarted(1, (10, 3), term=2)
    with pytest.raises(ValueError, match="not contiguous"):
        restarted(1, (10, 1), entries(12, 1))


# ---------------------------------------------------------------------- leader side


def test_leader_sends_a_snapshot_and_holds_appends_but_not_heartbeats() -> None:
    leader, now = leader_needing_snapshot()
    progress = leader.progress[2]
    assert progress.state is ProgressState.SNAPSHOT and progress.pending_snapshot == 10
    # New proposals reach follower 3, not the follower being sent a snapshot.
    leader.step(now, Receive(AppendEntriesResponse(2, 3, 1, True, match_index=11)))
    effects = leader.step(now + 1, Propose(1, b"x"))
    assert [m.dst for m in sent(effects, AppendEntries)] == [3]
    # Heartbeats go on, and carry the snapshot's last entry as the position to confirm.
    effects = leader.step(now + 100, Tick())
    beat = next(m for m in sent(effects, Heartbeat) if m.dst == 2)
    assert (beat.commit, beat.commit_term) == (10, 1)
    assert not sent(effects, InstallSnapshot)


def test_snapshot_answer_releases_to_replicate_and_sends_the_rest() -> None:
    leader, now = leader_needing_snapshot()
    effects = leader.step(now, Receive(AppendEntriesResponse(2, 2, 1, True, match_index=10)))
    progress = leader.progress[2]
    assert progress.state is ProgressState.REPLICATE and progress.match_index == 10
    (append,) = sent(effects, AppendEntries)
    assert append.prev_log_index == 10 and [e.index for e in append.entries] == [11]


def test_lost_snapshot_answer_is_recovered_by_a_heartbeat_answer() -> None:
    """The follower installed the snapshot but its answer was lost: the heartbeat that carries
    the snapshot's last entry is answered with a last index at or past it, and the leader
    probes from just past the snapshot instead of waiting for an answer that never comes.
    A late answer to a round started before the snapshot went out proves nothing (that
    heartbeat named another entry; the follower may hold a long log of other terms)."""
    leader, now = leader_needing_snapshot()
    old_round = HeartbeatResponse(2, 2, 1, seq=1, last_index=15)
    effects = leader.step(now + 1, Receive(old_round))
    assert leader.progress[2].state is ProgressState.SNAPSHOT and not sent(effects, AppendEntries)
    (beat,) = [m for m in sent(leader.step(now + 50, Tick()), Heartbeat) if m.dst == 2]
    reply = HeartbeatResponse(2, 2, 1, seq=beat.seq, last_index=10)
    effects = leader.step(now + 51, Receive(reply))
    progress = leader.progress[2]
    assert progress.state is ProgressState.PROBE
    (probe,) = sent(effects, AppendEntries)
    assert probe.prev_log_index == 10 and probe.prev_log_term == 1


def test_heartbeat_answer_below_the_snapshot_keeps_waiting_without_resending() -> None:
    leader, now = leader_needing_snapshot()
    effects = leader.step(now + 50, Receive(HeartbeatResponse(2, 2, 1, seq=2, last_index=9)))
    assert leader.progress[2].state is ProgressState.SNAPSHOT
    assert not sent(effects, InstallSnapshot) and not sent(effects, AppendEntries)


def test_failed_transfer_retries_only_when_the_follower_answers_again() -> None:
    leader, now = leader_needing_snapshot()
    # Success of the transfer alone proves nothing: wait for the follower's answer.
    leader.step(now + 1, SnapshotStatus(2, ok=True))
    assert leader.progress[2].state is ProgressState.SNAPSHOT
    # Failure: probe again, but not in this step (no tight loop against a dead peer).
    effects = leader.step(now + 2, SnapshotStatus(2, ok=False))
    assert leader.progress[2].state is ProgressState.PROBE
    assert not sent(effects, InstallSnapshot) and not sent(effects, AppendEntries)
    effects = leader.step(now + 3, Tick())
    assert not sent(effects, InstallSnapshot)
    # The next heartbeat answer shows the follower is there: the snapshot goes again.
    effects = leader.step(now + 60, Receive(HeartbeatResponse(2, 2, 1, seq=2, last_index=3)))
    assert sent(effects, InstallSnapshot) == [InstallSnapshot(2, 1, 2, 10, 1)]
    # A status about a follower not in SNAPSHOT (a late one) changes nothing.
    leader.step(now + 61, Receive(AppendEntriesResponse(2, 2, 1, True, match_index=10)))
    leader.step(now + 62, SnapshotStatus(2, ok=False))
    assert leader.progress[2].state is ProgressState.REPLICATE


def test_delivered_snapshot_lost_before_the_install_is_sent_again() -> None:
    """The transfer completed (``SnapshotStatus(ok=True)``), then the follower died before the
    install was durable and came back with its old log: its answer never comes (found by the
    simulator, tests/sim/test_regressions.py). A heartbeat round started after the report
    that finds it without the snapshot sends the snapshot again; an answer to an earlier
    round (the install may still be under way) does not."""
    leader, now = leader_needing_snapshot()
    effects = leader.step(now + 10, Tick())  # no round due yet
    leader.step(now + 20, SnapshotStatus(2, ok=True))
    delivered = leader.progress[2].snapshot_delivered_round
    assert delivered >= 1 and leader.progress[2].state is ProgressState.SNAPSHOT
    early = HeartbeatResponse(2, 2, 1, seq=delivered, last_index=3)
    effects = leader.step(now + 30, Receive(early))
    assert not sent(effects, InstallSnapshot) and leader.progress[2].state is ProgressState.SNAPSHOT
    effects = leader.step(now + 100, Tick())
    (beat,) = [m for m in sent(effects, Heartbeat) if m.dst == 2]
    assert beat.seq > delivered
    late = HeartbeatResponse(2, 2, 1, seq=beat.seq, last_index=3)
    effects = leader.step(now + 110, Receive(late))
    assert sent(effects, InstallSnapshot) == [InstallSnapshot(2, 1, 2, 10, 1)]
    assert leader.progress[2].snapshot_delivered_round == 0


def test_stale_rejection_does_not_pull_a_follower_out_of_snapshot() -> None:
    leader, now = leader_needing_snapshot()
    reject = AppendEntriesResponse(
        2, 2, 1, False, reject_index=10, conflict_index=4, conflict_term=0
    )
    effects = leader.step(now, Receive(reject))  # a duplicate of the rejection
    assert leader.progress[2].state is ProgressState.SNAPSHOT and not effects


def test_hint_of_a_term_known_only_at_the_offset_needs_no_snapshot() -> None:
    """The follower's conflicting term is the one of the leader's last compacted entry: the
    leader can still send from just after it (prev = the offset, whose term it knows)."""
    leader = restarted(1, (10, 1), entries(11, 2, 2, 2), term=2)
    now = elect(leader)
    assert leader.term == 3
    leader.step(now, Persisted(14, 3))
    # Follower 2 holds 1..15 of term 1 and has committed nothing it knows of.
    leader.step(now, Receive(HeartbeatResponse(3, 2, 1, seq=1, last_index=15)))
    reject = AppendEntriesResponse(
        3, 2, 1, False, reject_index=13, conflict_index=1, conflict_term=1
    )
    effects = leader.step(now, Receive(reject))
    (append,) = sent(effects, AppendEntries)
    assert (append.prev_log_index, append.prev_log_term) == (10, 1)
    assert not sent(effects, InstallSnapshot)


def mem_first_leader_with(log_terms: tuple[int, ...]) -> tuple[RaftNode, float]:
    """Node 1 (MemFirst, so its own append counts at once) elected over ``log_terms``, its
    no-op committed with follower 3's help; follower 2 has answered nothing yet."""
    leader = RaftNode(
        config(1, Durability.MEM_FIRST), random.Random(0), term=1, entries=entries(1, *log_terms)
    )
    now = elect(leader)
    last = leader.log.last_index
    leader.step(now, Receive(AppendEntriesResponse(leader.term, 3, 1, True, match_index=last)))
    assert leader.commit_index == last
    return leader, now


def test_heartbeat_to_a_match_below_the_offset_claims_no_term() -> None:
    """A match whose term is compacted away must not go out with a made-up term (0): the
    follower would read it as "I do not hold that entry" and the leader would lower the
    match it knows."""
    leader, now = mem_first_leader_with((1,) * 10)
    leader.step(now, Receive(AppendEntriesResponse(2, 2, 1, True, match_index=5)))
    leader.step(now, SnapshotTaken(index=11, term=2, compact_through=8))
    effects = leader.step(now + 100, Tick())
    beat = next(m for m in sent(effects, Heartbeat) if m.dst == 2)
    assert (beat.commit, beat.commit_term) == (0, 0)
    assert leader.progress[2].match_index == 5


def test_an_answer_from_which_the_log_can_continue_ends_snapshot_state() -> None:
    """etcd raft: whatever the follower reached, once the log can carry it on (a match at or
    past the offset) the snapshot is no longer needed; here an AppendEntries answer that was
    in flight when the leader compacted (offset 7, snapshot at 10)."""
    leader, now = mem_first_leader_with((1,) * 10)
    leader.step(now, SnapshotTaken(index=10, term=1, compact_through=7))
    reject = AppendEntriesResponse(2, 2, 1, False, reject_index=10, conflict_index=3)
    assert sent(leader.step(now, Receive(reject)), InstallSnapshot)
    assert leader.progress[2].pending_snapshot == 10
    effects = leader.step(now, Receive(AppendEntriesResponse(2, 2, 1, True, match_index=8)))
    assert leader.progress[2].state is ProgressState.REPLICATE
    (append,) = sent(effects, AppendEntries)
    assert append.prev_log_index == 8


# ---------------------------------------------------------------------- follower side


def follower(log_terms: tuple[int, ...] = (1, 1, 1), term: int = 2, **kw: object) -> RaftNode:
    durability = kw.get("durability", Durability.DISK_FIRST)
    assert isinstance(durability, Durability)
    return RaftNode(
        config(2, durability), random.Random(0), term=term, entries=entries(1, *log_terms)
    )


def test_snapshot_past_the_log_is_restored_before_the_answer() -> None:
    f = follower()
    effects = f.step(0, Receive(InstallSnapshot(2, 1, 2, 10, 2)))
    kinds = [type(e) for e in effects]
    assert RestoreSnapshot in kinds and kinds.index(RestoreSnapshot) < kinds.index(Send)
    assert RestoreSnapshot.barrier  # the runtime installs it before the answer leaves
    assert effects[kinds.index(RestoreSnapshot)] == RestoreSnapshot(10, 2)
    assert (f.log.snapshot_index, f.log.last_index, f.log.last_term) == (10, 10, 2)
    assert (f.commit_index, f.durable_index, f.snapshot_index, f.snapshot_term) == (10, 10, 10, 2)
    assert not applied(effects)  # the state machine comes from the snapshot, not from Apply
    assert [m.match_index for m in sent(effects, AppendEntriesResponse)] == [10]
    # The next append continues from the snapshot and applies from there.
    effects = f.step(1, Receive(AppendEntries(2, 1, 2, 10, 2, tuple(entries(11, 2)), 11)))
    f.step(1, Persisted(11, 2))
    assert applied(effects) == [11]


def test_snapshot_whose_last_entry_we_hold_only_moves_the_commit_index() -> None:
    """Figure 13 step 6: the log holds the snapshot's last entry: keep the entries after it,
    apply up to it from the log, restore nothing."""
    f = follower((1, 1, 2, 2, 2))
    effects = f.step(0, Receive(InstallSnapshot(2, 1, 2, 4, 2)))
    assert not [e for e in effects if isinstance(e, RestoreSnapshot)]
    assert f.commit_index == 4 and f.log.last_index == 5 and applied(effects) == [1, 2, 3, 4]
    assert [m.match_index for m in sent(effects, AppendEntriesResponse)] == [4]


def test_duplicate_or_late_snapshot_at_or_below_the_commit_restores_nothing() -> None:
    """The schedule: a snapshot is installed, then the same InstallSnapshot is delivered again
    (duplicated) and an older one arrives late; later the follower committed past a third
    before it arrived. None may roll the state machine back."""
    f = follower()
    f.step(0, Receive(InstallSnapshot(2, 1, 2, 10, 2)))
    f.step(1, Receive(AppendEntries(2, 1, 2, 10, 2, tuple(entries(11, 2, 2)), 12)))
    f.step(1, Persisted(12, 2))
    assert f.commit_index == 12
    for late in (InstallSnapshot(2, 1, 2, 10, 2), InstallSnapshot(2, 1, 2, 8, 1)):
        effects = f.step(2, Receive(late))
        assert not [e for e in effects if isinstance(e, RestoreSnapshot)]
        assert [m.match_index for m in sent(effects, AppendEntriesResponse)] == [12]
    assert (f.log.last_index, f.commit_index, f.snapshot_index) == (12, 12, 10)


def test_snapshot_of_an_old_term_is_rejected_after_a_newer_leader() -> None:
    """A leader of term 2 sent a snapshot; it arrives after a term-3 leader reached us."""
    f = follower(term=2)
    f.step(0, Receive(Heartbeat(3, 3, 2, commit=0, seq=1)))
    effects = f.step(1, Receive(InstallSnapshot(2, 1, 2, 10, 2)))
    assert not [e for e in effects if isinstance(e, RestoreSnapshot)]
    (reply,) = sent(effects, AppendEntriesResponse)
    assert not reply.success and reply.term == 3 and f.log.last_index == 3
    assert f.leader_id == 3


def test_snapshot_of_a_newer_term_makes_us_its_leaders_follower() -> None:
    f = follower(term=2)
    effects = f.step(0, Receive(InstallSnapshot(4, 3, 2, 10, 3)))
    assert (f.term, f.leader_id, f.role) == (4, 3, Role.FOLLOWER)
    assert RestoreSnapshot(10, 3) in effects


def test_snapshot_counts_as_leader_contact_for_stickiness() -> None:
    """Thesis §4.2.3: a follower that just heard from a leader (here, its snapshot) ignores a
    campaign for the minimum election timeout, as after an AppendEntries."""
    f = follower(term=2)
    f.step(5_000, Receive(InstallSnapshot(2, 1, 2, 10, 2)))
    effects = f.step(5_100, Receive(RequestVote(3, 3, 2, 20, 2)))
    assert f.term == 2 and not sent(effects, RequestVoteResponse)
    assert f.next_deadline() >= 5_000 + f.config.election_timeout_min_ms


def test_malformed_snapshot_is_ignored() -> None:
    f = follower(term=2)
    for bad in (InstallSnapshot(2, 1, 2, 10, 5), InstallSnapshot(2, 1, 2, 10, 0)):
        effects = f.step(0, Receive(bad))
        assert not [e for e in effects if isinstance(e, (Send, RestoreSnapshot))]
        assert f.log.last_index == 3 and f.leader_id == 0


def test_disk_first_answer_reports_only_what_is_durable() -> None:
    """Under DiskFirst a match counts only once durable: a snapshot at or below the commit
    index is answered with the durable part of it; the Persisted report follows."""
    f = follower(term=2)
    f.step(0, Receive(AppendEntries(2, 1, 2, 3, 1, tuple(entries(4, 2, 2)), 5)))
    assert f.commit_index == 5 and f.durable_index == 3
    effects = f.step(1, Receive(InstallSnapshot(2, 1, 2, 5, 2)))
    assert [m.match_index for m in sent(effects, AppendEntriesResponse)] == [3]
    effects = f.step(2, Persisted(5, 2))
    assert [m.match_index for m in sent(effects, AppendEntriesResponse)] == [5]


# ---------------------------------------------------------------------- SnapshotTaken


def committed_follower(durability: Durability = Durability.DISK_FIRST) -> RaftNode:
    f = follower((1, 1, 1, 1, 1, 1), term=1, durability=durability)
    f.step(0, Receive(AppendEntries(1, 1, 2, 6, 1, (), 6)))
    assert f.commit_index == 6
    return f


def test_snapshot_taken_compacts_through_the_retained_point() -> None:
    f = committed_follower()
    assert not f.step(1, SnapshotTaken(index=5, term=1, compact_through=3))
    assert (f.snapshot_index, f.snapshot_term, f.log.snapshot_index) == (5, 1, 3)
    f.step(2, SnapshotTaken(index=6, term=1, compact_through=9))  # never past the snapshot
    assert (f.snapshot_index, f.log.snapshot_index, f.log.last_index) == (6, 6, 6)
    f.step(3, SnapshotTaken(index=4, term=1, compact_through=4))  # an older one: no change
    assert (f.snapshot_index, f.log.snapshot_index) == (6, 6)


def test_snapshot_taken_must_cover_only_applied_entries_and_leaves_no_effects_behind() -> None:
    f = committed_follower()
    with pytest.raises(ValueError, match="applied up to 6"):
        f.step(1, SnapshotTaken(index=7, term=1, compact_through=7))
    with pytest.raises(ValueError, match="has term 1"):
        f.step_many(
            1,
            [
                Receive(Heartbeat(1, 1, 2, commit=6, seq=1, commit_term=1)),
                SnapshotTaken(index=6, term=2, compact_through=6),
            ],
        )
    assert f.log.snapshot_index == 0 and f.snapshot_index == 0
    # The heartbeat before the bad event was not processed: its answer is not left queued.
    assert not sent(f.step(2, Tick()), HeartbeatResponse)


def test_snapshot_taken_after_a_restore_to_a_newer_one_is_harmless() -> None:
    """The runtime snapshots applied index 6 while an InstallSnapshot of 20 is restored: the
    late SnapshotTaken(6) must neither move the snapshot back nor touch the new log."""
    f = committed_follower()
    f.step(1, Receive(InstallSnapshot(1, 1, 2, 20, 1)))
    f.step(2, SnapshotTaken(index=6, term=1, compact_through=6))
    assert (f.snapshot_index, f.log.snapshot_index, f.log.last_index) == (20, 20, 20)


def test_compaction_racing_a_leader_change() -> None:
    """Node 2 compacted through 6 as follower of term 1; a new leader (term 2) that does not
    know our match probes from below our offset, and its heartbeat names a compacted entry:
    neither may fail, claim a mismatch, or lower what we report."""
    f = committed_follower()
    f.step(1, SnapshotTaken(index=6, term=1, compact_through=6))
    append = AppendEntries(2, 3, 2, 4, 1, tuple(entries(5, 1, 1, 2)), 6)
    effects = f.step(2, Receive(append))
    assert f.log.last_index == 7 and f.log.term_at(7) == 2
    f.step(2, Persisted(7, 2))
    effects = f.step(3, Receive(Heartbeat(2, 3, 2, commit=5, seq=1, commit_term=1)))
    # Index 5 is compacted: it was committed, so this leader holds it too.
    assert [m.last_index for m in sent(effects, HeartbeatResponse)] == [7]


def test_new_leaders_heartbeat_naming_a_compacted_entry_is_confirmed() -> None:
    """A new leader's first heartbeat (before any AppendEntries of its term) names an entry
    we compacted away: it was committed, so we share it; answering "probe me below it" would
    make the leader send a needless snapshot."""
    f = committed_follower()
    f.step(1, SnapshotTaken(index=6, term=1, compact_through=6))
    effects = f.step(2, Receive(Heartbeat(2, 3, 2, commit=5, seq=1, commit_term=1)))
    assert [m.last_index for m in sent(effects, HeartbeatResponse)] == [6]


def test_persisted_reports_under_a_snapshot_are_old_news() -> None:
    f = committed_follower()
    assert f.durable_index == 6
    f2 = follower((1,), term=1)
    f2.step(0, Receive(AppendEntries(1, 1, 2, 1, 1, tuple(entries(2, 1, 1, 1)), 4)))
    assert (f2.commit_index, f2.durable_index) == (4, 1)
    f2.step(0, SnapshotTaken(index=4, term=1, compact_through=4))
    # The snapshot holds 1..4 across a restart whatever the log's writes reached.
    assert f2.durable_index == 4
    effects = f2.step(1, Persisted(3, 1))  # about entries now compacted away
    assert f2.durable_index == 4 and not effects


def test_leader_compacting_past_a_follower_switches_it_to_a_snapshot() -> None:
    """Compaction while a follower lags (etcd raft's slow follower after compaction): its
    next entry is gone, so the next thing it is sent is the snapshot."""
    leader = RaftNode(
        config(1, Durability.MEM_FIRST), random.Random(0), term=1, entries=entries(1, 1, 1, 1, 1, 1)
    )
    now = elect(leader)
    term = leader.term
    for peer in (2, 3):
        leader.step(now, Receive(HeartbeatResponse(term, peer, 1, seq=1, last_index=5)))
    leader.step(now, Receive(AppendEntriesResponse(term, 3, 1, True, match_index=6)))
    assert leader.commit_index == 6
    leader.step(now, SnapshotTaken(index=6, term=term, compact_through=6))
    assert leader.log.first_index == 7
    # Follower 2 rejects its probe, naming index 3: compacted away by now.
    reject = AppendEntriesResponse(term, 2, 1, False, reject_index=5, conflict_index=3)
    effects = leader.step(now + 1, Receive(reject))
    assert sent(effects, InstallSnapshot) == [InstallSnapshot(term, 1, 2, 6, term)]
    assert leader.progress[2].state is ProgressState.SNAPSHOT


@pytest.mark.parametrize("log", [[], entries(11, 2, 2)])
def test_append_contradicting_the_snapshot_entry_is_rejected_not_a_crash(
    log: list[Entry],
) -> None:
    """A leader whose entry at our snapshot's index (our commit index, the log offset) has
    another term: only a lost MemFirst tail (a majority's power cut; durability.md) or a
    confused peer can send it, but the node must not die of a message (before: the conflict
    hint looked up the offset's entry, compacted away: IndexError out of ``step``). It is
    rejected with a hint past the commit index, as any conflict is."""
    follower = restarted(2, (10, 1), log, term=2)
    append = AppendEntries(
        3, 1, 2, prev_log_index=10, prev_log_term=3, entries=(), leader_commit=10
    )
    effects = follower.step(10_000.0, Receive(append))
    (answer,) = sent(effects, AppendEntriesResponse)
    assert not answer.success
    assert answer.conflict_index == 11 and answer.reject_index == 10
    assert follower.commit_index == 10 and follower.log.last_index == 10 + len(log)


@pytest.mark.parametrize("durability", list(Durability))
def test_one_batch_with_appends_around_a_restore_applies_each_index_once_in_order(
    durability: Durability,
) -> None:
    """The runtime steps everything its inbox holds at once (``step_many``): appends that
    commit entries, a snapshot past them, and the leader's next append after it can land in
    one step. Read in effect order, as the runtime carries them out, the state machine sees
    the applies below the snapshot (or none), then the restore, then applies from the
    snapshot's next index on: no index applied twice, none skipped, nothing of the old log
    written after the reset, and the new entries written to the log only after it."""
    f = follower((1, 1, 1), durability=durability)
    f.step(0, Persisted(3, 1))
    batch = [
        Receive(AppendEntries(2, 1, 2, 3, 1, tuple(entries(4, 2, 2)), 5)),
        Receive(InstallSnapshot(2, 1, 2, 20, 2)),
        Receive(AppendEntries(2, 1, 2, 20, 2, tuple(entries(21, 2, 2)), 22)),
    ]
    effects = f.step_many(1, batch)
    if durability is Durability.DISK_FIRST:
        effects += f.step(2, Persisted(22, 2))
    state = 0  # what the state machine holds, as the runtime would see it
    written: list[int] = []
    for effect in effects:
        if isinstance(effect, RestoreSnapshot):
            assert effect.index > state
            state, written = effect.index, []
        elif isinstance(effect, Apply):
            for e in effect.entries:
                assert e.index == state + 1, (e.index, state)
                state = e.index
        elif isinstance(effect, PersistEntries):
            indexes = [e.index for e in effect.entries]
            assert not written or indexes[0] == written[-1] + 1
            written += indexes
    assert state == 22 and written == [21, 22] and f.commit_index == 22
