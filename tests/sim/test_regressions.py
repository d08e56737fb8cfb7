"""Schedules that once broke a Raft rule, replayed exactly (issue 11). Each test builds its
schedule step by step, asserts that the schedule really happened as described (so a change in
timing cannot turn it into a test that passes for the wrong reason), and lets the simulator's
per-step checks and the history checks judge the outcome."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dengine_trio.raft import Durability, Receive, Role, Send
from dengine_trio.raft.messages import (
    AppendEntries,
    AppendEntriesResponse,
    InstallSnapshot,
    TimeoutNow,
)
from dengine_trio.raft.state import CandidateState

from .cluster import Cluster, LinkRule, NetworkFaults, SimNode


def test_self_raised_term_forgets_the_match_reported_to_the_old_leader() -> None:
    """Issue 11 item 6: five voters, MemFirst. A leads term t and commits; A's links to three
    nodes die; A appends 3-4, which reach only F; A starts a transfer to F and crashes with the
    TimeoutNow in flight, held ~500 ms. F campaigns in t+1 (it raised its term itself) while its
    uplink stalls; L2 wins t+1; F follows L2 in that same term and truncates A's 3-4 under L2's
    no-op at 3. If F still reported match 4, L2's put at index 4 would commit on L2, X and F's
    false match while only two nodes hold it, and F would lead t+2 without it."""
    c = Cluster(5, seed=61, durability=Durability.MEM_FIRST)
    a = c.wait_for_leader()
    t = c.raft(a).term
    c.put(a, "k")
    c.run_for(50)
    others = [n for n in c.ids if n != a]
    f, rest = others[0], others[1:]
    for n in rest:
        c.cut_link(a, n)
        c.cut_link(n, a)
    c.put(a, "x")
    c.put(a, "y")
    c.run_for(80)  # a reordered AppendEntries is repaired by the next heartbeat
    assert c.raft(f).log.last_index == c.raft(a).log.last_index == 4
    c.hold(a, f, TimeoutNow)
    c.transfer(a, f)
    c.run_for(1)
    assert len(c.held) == 1
    c.crash(a, lose_unflushed=False)
    c.hold(f, 0)  # F's uplink stalls
    c.run_for(480)
    assert c.raft(f).role is Role.FOLLOWER and c.raft(f).term == t
    c.release(a, f, TimeoutNow)
    c.run_for(5)
    assert c.raft(f).role is Role.CANDIDATE and c.raft(f).term == t + 1
    # One of the three others times out and wins t+1 (F's vote requests are stalled).
    while (l2 := c.leader()) is None:
        c.run_for(1)
    assert l2 in rest and c.raft(l2).term == t + 1
    x, y = (n for n in rest if n != l2)
    c.run_for(3)  # L2's no-op reaches F, X and Y
    assert c.raft(f).role is Role.FOLLOWER and c.raft(f).term == t + 1
    assert c.raft(f).log.last_index == 3 and c.raft(f).log.term_at(3) == t + 1
    c.cut_link(l2, f)
    c.cut_link(l2, y)
    put = c.put(l2, "z")  # index 4 of term t+1: reaches X only
    c.run_for(5)
    assert c.raft(x).log.last_index == 4 and c.raft(l2).commit_index == 3
    reports = [
        m for m in c.held if isinstance(m, AppendEntriesResponse) and m.dst == l2 and m.success
    ]
    assert reports, "F answered L2's no-op"
    c.release(f, 0)  # F's stalled answers reach L2
    c.run_for(5)
    # Index 4 is on L2 and X only: it must not have committed.
    assert not c.history[put].ok
    # A partition lets F lead t+2 with Y and the restarted A: whatever it was told, nothing
    # committed may be missing from its log (the simulator checks leader completeness).
    c.restart(a)
    c.partition([l2, x], [f, y, a])
    c.run_for(3_000)
    new = c.leader()
    assert new is not None and new in (f, y, a) and c.raft(new).term >= t + 2
    c.heal()
    c.run_for(1_000)
    c.check_history()
    c.check_linearizability()


def test_append_entries_does_not_resurrect_a_match_from_an_earlier_term() -> None:
    """The same class through the core directly: a follower that campaigned (raising its own
    term) and then follows the winner reports only what matches the winner's log."""
    c = Cluster(3, seed=62, durability=Durability.MEM_FIRST)
    leader = c.wait_for_leader()
    raft = c.raft(next(n for n in c.ids if n != leader))
    assert raft._follower.leader_match == raft.log.last_index > 0
    term = raft.term
    c.inject(TimeoutNow(term, leader, raft.id))
    c.crash(leader)
    c.hold(raft.id, 0)
    c.run_for(1)
    assert raft.role is Role.CANDIDATE and raft.term == term + 1
    assert isinstance(raft._state, CandidateState)  # no match of the old leader kept
    # The winner's first AppendEntries matches only our first entry: we report that much,
    # not the match we had reported to the old leader.
    other = next(n for n in c.ids if n not in (leader, raft.id))
    first = raft.log.entry(1)
    effects = raft.step(
        raft.now, Receive(AppendEntries(term + 1, other, raft.id, 1, first.term, (), 0))
    )
    replies = [
        e.message
        for e in effects
        if isinstance(e, Send) and isinstance(e.message, AppendEntriesResponse)
    ]
    assert [r.match_index for r in replies] == [1]


def test_restarted_follower_does_not_commit_an_entry_it_no_longer_shares() -> None:
    """Issue 11 item 7, through a heartbeat: five voters, MemFirst. A leads term t; its put at
    index 3 reaches only F, whose disk makes it durable. A crashes; L2 wins t+1 without F and
    its no-op overwrites index 3 in F's memory; F acknowledges (MemFirst) and crashes before
    that overwrite reaches its disk. F restarts holding A's index 3 of term t. L2 believes F
    matches it through 3, and its heartbeats say "committed up to 3": F may not take that as
    leave to commit the entry *it* holds at 3, which L2's log does not share."""
    c = Cluster(5, seed=71, durability=Durability.MEM_FIRST)
    a = c.wait_for_leader()
    t = c.raft(a).term
    c.put(a, "k")
    c.run_for(50)
    f, *rest = (n for n in c.ids if n != a)
    for n in rest:
        c.cut_link(a, n)
    c.put(a, "x")
    c.run_for(80)
    assert [e.term for e in c.nodes[f].disk_log] == [t, t, t]
    c.crash(a)
    for n in rest:  # F hears the new leader but cannot vote in its election
        c.cut_link(f, n)
    while (l2 := c.leader()) is None or c.raft(l2).term == t:
        c.run_for(1)
    c.stall_disk(f)
    c.run_for(20)
    assert c.raft(f).term == t + 1 and c.raft(f).log.term_at(3) == t + 1
    c.heal()
    c.run_for(80)  # F's answers now reach L2
    assert c.raft(l2).progress[f].match_index >= 3
    c.crash(f)  # the overwrite of index 3 never reached F's disk
    c.stall_disk(f, False)
    c.restart(f)
    assert c.raft(f).log.term_at(3) == t
    c.run_for(500)  # heartbeats; every step is checked (state machine safety, commit bounds)
    assert c.raft(f).log.term_at(3) == t + 1 and c.raft(f).commit_index >= 3
    c.put(l2, "after")
    c.run_for(100)
    assert c.nodes[f].state == c.nodes[l2].state
    c.check_history()


def _lease_ready(c: Cluster, leader: int) -> None:
    """Run until ``leader`` may serve lease reads, and commit ``k=old`` first."""
    c.put(leader, "k")
    c.run_for(c.config_for(leader).election_timeout_min_ms + 100)
    raft = c.raft(leader)
    assert raft.lease_valid(raft.now)


def test_abandoned_transfer_does_not_revive_the_lease() -> None:
    """Issue 11 item 1, first input: the leader A starts a transfer to B and keeps sending
    heartbeat rounds while the TimeoutNow is in flight; the transfer times out; the TimeoutNow
    then elects B (a transfer campaign passes the voters' stickiness) and B commits k=new. A,
    cut off from the news, must not serve k=old from a lease renewed by rounds sent during the
    transfer."""
    c = Cluster(3, seed=81)
    a = c.wait_for_leader()
    b, other = (n for n in c.ids if n != a)
    _lease_ready(c, a)
    term = c.raft(a).term
    c.hold(a, b, TimeoutNow)
    c.transfer(a, b)
    c.run_for(1)
    assert c.raft(a)._leader.transfer_target == b and len(c.held) == 1
    c.run_for(c.config_for(a).election_timeout_min_ms + 10)  # rounds acked; transfer abandoned
    assert c.raft(a)._leader.transfer_target == 0 and c.raft(a).is_leader
    c.cut_link(b, a)
    c.cut_link(other, a)
    c.release(a, b, TimeoutNow)
    while not (c.leader() == b and c.raft(b)._committed_in_term()):
        c.run_for(1)
    assert c.raft(b).term == term + 1 and c.raft(a).is_leader
    put = c.put(b, "k")
    c.run_for(10)
    assert c.history[put].ok
    read = c.read(a, "k", "lease")
    assert c.history[read].complete is None  # not from the lease: a heartbeat round first
    c.run_for(1_000)
    c.heal()
    c.run_for(500)
    c.check_history()
    c.check_linearizability()


def test_stale_timeout_now_cannot_elect_behind_a_live_lease() -> None:
    """Issue 11 item 1, second input: the A-B path stalls (A to B 700 ms, B to A 760 ms,
    order kept). A starts a transfer to B; the TimeoutNow sits in the stalled link; the
    transfer times out; C keeps acknowledging A's rounds after the deadline; then the stale
    TimeoutNow arrives, B campaigns past C's stickiness and commits k=new. A must not serve
    k=old by lease: once it has sent TimeoutNow, its lease is gone for the rest of the term."""
    c = Cluster(3, seed=82)
    a = c.wait_for_leader()
    b, other = (n for n in c.ids if n != a)
    _lease_ready(c, a)
    term = c.raft(a).term
    c.stall(a, b, 700)
    c.stall(b, a, 760)
    c.transfer(a, b)
    c.run_for(c.config_for(a).election_timeout_min_ms + 10)
    assert c.raft(a)._leader.transfer_target == 0 and c.raft(a).is_leader
    assert c.raft(b).term == term  # the TimeoutNow has not arrived yet
    while c.raft(b).term == term:
        c.run_for(1)
    c.cut_link(other, a)  # A keeps its view a while longer
    while not (c.leader() == b and c.raft(b)._committed_in_term()):
        c.run_for(1)
    put = c.put(b, "k")
    c.run_for(10)
    assert c.history[put].ok and c.raft(a).is_leader
    read = c.read(a, "k", "lease")
    assert c.history[read].complete is None  # not from the lease: a heartbeat round first
    c.run_for(1_000)
    c.heal()
    c.run_for(500)
    c.check_history()
    c.check_linearizability()


def test_restarted_voter_keeps_backing_the_lease() -> None:
    """Issue 11 item 2, for restarts of 0-350 ms: A leads with a valid lease; A-C is cut; B,
    hearing A, refuses C's PreVotes; B's process restarts (disk intact) just before C's next
    campaign while A-B stays down (A's reconnect backoff). B must not grant C's PreVote and
    vote at once: it acknowledged A's rounds before the restart, and A's lease relies on that.
    """
    for down_ms in (0.0, 100.0, 300.0, 350.0):
        c = Cluster(3, seed=91)
        a = c.wait_for_leader()
        b, cc = (n for n in c.ids if n != a)
        _lease_ready(c, a)
        term = c.raft(a).term
        c.partition([a, b], [cc])
        c.cut_link(a, cc)
        while c.raft(cc).role is not Role.PRE_CANDIDATE:  # C's first campaign: refused by B
            c.run_for(1)
        c.run_for(10)
        assert c.raft(cc).term == term
        next_campaign = c.raft(cc)._election_deadline
        c.run_until(next_campaign - down_ms - 20)
        c.cut_link(a, b)
        c.cut_link(b, a)
        c.bounce(b, down_ms)
        c.cut.discard((b, cc))
        c.cut.discard((cc, b))
        c.run_until(next_campaign + 30)
        assert c.raft(a).is_leader and c.raft(a).term == term
        if c.raft(cc).is_leader:  # (only without the rule) C commits k=new
            c.put(cc, "k")
        c.run_for(10)
        c.read(a, "k", "lease")
        c.run_for(2_000)
        c.heal()
        c.run_for(500)
        c.check_history()
        c.check_linearizability()


def test_leader_without_quorum_steps_down_after_one_election_timeout() -> None:
    """Issue 11 item 9: CheckQuorum as a continuous rule. A leader steps down as soon as it
    has not heard from a majority (itself included) for the minimum election timeout, not at
    the next periodic check (which let /primary say 200 for up to ~2 timeouts)."""
    for seed in range(101, 106):
        c = Cluster(5, seed=seed)
        a = c.wait_for_leader()
        c.run_for(c.rng.uniform(0, 700))  # anywhere in the old check period
        raft = c.raft(a)
        rest = [n for n in c.ids if n != a]
        c.partition([a, rest[0]], rest[1:])  # A keeps one follower: not a majority of five
        cut_at = c.now
        timeout = c.config_for(a).election_timeout_min_ms
        # Last heard from the majority within one heartbeat round (50 ms) before the cut.
        c.run_until(cut_at + timeout - 60)
        assert raft.is_leader and raft.has_quorum_contact(raft.now)
        c.run_until(cut_at + timeout + 5)  # answers in flight at the cut arrive within ~2 ms
        assert not raft.is_leader and not raft.has_quorum_contact(raft.now)


# --- snapshots, compaction and InstallSnapshot (issue 13) ------------------------------------


def _follower_down_across_compactions(seed: int, **options: Any) -> tuple[Cluster, int, int]:
    """Three voters snapshotting every 10 entries, keeping none: a follower F is down while
    the leader L commits 40 writes (four compactions), then F restarts. Returns (c, L, F)
    with F's log ending before L's first entry: only a snapshot can bring F up to date."""
    c = Cluster(3, seed=seed, snapshot_threshold=10, snapshot_retained=0, **options)
    leader = c.wait_for_leader()
    f = next(n for n in c.ids if n != leader)
    c.crash(f)
    for _ in range(40):
        c.put(leader, "k")
        c.run_for(5)
    c.run_for(100)
    assert c.raft(leader).log.first_index > c.nodes[f].disk_last + 1, "L compacted past F"
    return c, leader, f


def _at(c: Cluster, moment: str, node_id: int, act: Callable[[], None]) -> list[float]:
    """Run ``act`` once, when ``node_id`` first reaches ``moment`` of the snapshot machinery;
    returns the list the time it ran is appended to (so a test can assert it happened)."""
    ran: list[float] = []

    def hook(at: str, node: SimNode) -> bool:
        if at != moment or node.id != node_id:
            return False
        ran.append(c.now)
        act()
        return True

    c.hooks.append(hook)
    return ran


def test_follower_down_across_compactions_catches_up_by_snapshot() -> None:
    """Raft paper §7: the entry F needs next is compacted away on L, so L sends its snapshot;
    F installs it (log reset to the snapshot's offset, state machine replaced) and continues
    from the log. The simulator checks F's state machine against the committed prefix."""
    c, leader, f = _follower_down_across_compactions(201)
    c.restart(f)
    c.wait_converged(3_000)
    assert c.faults_injected["install-snapshot"] >= 1
    assert c.faults_injected["restore-snapshot"] >= 1
    snap = c.nodes[f].snapshot
    assert snap is not None and c.raft(f).snapshot_index >= snap.index > 0
    assert c.nodes[f].state == c.nodes[leader].state
    c.check_history()
    c.check_durability()


def test_a_delivered_snapshot_not_installed_before_a_crash_is_sent_again() -> None:
    """The follower's runtime received the whole file (so the leader's runtime reported
    ``SnapshotStatus(ok=True)``), then the process died before the install was durable: with
    the file staged but not yet stepped, or with the restore begun but not yet renamed in.
    F restarts with its old log and never answers that snapshot. The leader must not wait
    for that answer forever: F has to catch up."""
    for moment in ("install-staged", "install-start"):
        c, leader, f = _follower_down_across_compactions(202)
        crashed = _at(c, moment, f, lambda f=f, c=c: c.bounce(f, 0.0))  # type: ignore[misc]
        c.restart(f)
        for _ in range(300):
            if crashed:
                break
            c.run_for(1)
        assert crashed, f"F reached {moment}"
        assert c.nodes[f].snapshot is None, "nothing of the install was durable"
        c.wait_converged(3_000)
        assert c.nodes[f].state == c.nodes[leader].state
        c.check_history()


def test_a_crash_mid_install_leaves_the_old_or_the_new_state() -> None:
    """A crash at each durable phase of an install (file renamed in; WAL reset; state machine
    swapped): the restart finds either the old log or the new snapshot with a consistent log
    after it (a log that ends before the snapshot is reset), never a mix; the node then
    catches up. The simulator's boot and per-apply checks judge the state."""
    for moment in ("install-renamed", "install-reset", "install-done"):
        c, leader, f = _follower_down_across_compactions(203)
        crashed = _at(c, moment, f, lambda f=f, c=c: c.crash(f))  # type: ignore[misc]
        c.restart(f)
        c.run_for(200)
        assert crashed and c.nodes[f].raft is None
        snap = c.nodes[f].snapshot
        assert snap is not None and c.nodes[f].disk_offset <= snap.index  # renamed in first
        c.restart(f)  # boots from the new snapshot; its state is checked when it applies
        assert c.nodes[f].applied_index == snap.index
        c.wait_converged(3_000)
        assert c.nodes[f].state == c.nodes[leader].state
        c.check_history()


def test_a_lost_install_snapshot_is_retried_and_a_late_copy_changes_nothing() -> None:
    """The InstallSnapshot to F is held in the network: L's runtime gives up
    (``SnapshotStatus(ok=False)``), L probes again and sends it again, F installs that one and
    catches up from the log. The held copy then lands long after, at or below F's commit
    index: F answers with its commit index and restores nothing."""
    c, leader, f = _follower_down_across_compactions(204)
    c.add_rule(LinkRule("hold", leader, f, (InstallSnapshot,), remaining=1))
    c.restart(f)
    c.run_for(50)
    assert len(c.held) == 1 and c.nodes[f].applied_index == 0
    c.wait_converged(3_000)
    restores = c.faults_injected["restore-snapshot"]
    assert c.faults_injected["install-snapshot"] >= 2
    for _ in range(15):
        c.put(leader, "k")
        c.run_for(5)
    c.release()
    c.run_for(100)
    assert c.faults_injected["restore-snapshot"] == restores, "the late copy restored nothing"
    c.wait_converged(3_000)
    assert c.nodes[f].state == c.nodes[leader].state
    c.check_history()
    c.check_linearizability()


def test_install_snapshot_survives_drops_and_duplicates() -> None:
    """The first two InstallSnapshots to F are dropped, then the network duplicates half of
    everything: F installs one snapshot, a duplicate lands after it (index at or below its
    commit) and is answered without a second restore of that snapshot."""
    c, leader, f = _follower_down_across_compactions(205)
    c.drop(leader, f, InstallSnapshot, count=2)
    c.set_faults(NetworkFaults(0.0, 0.5, 0.2, 30.0))
    c.restart(f)
    c.wait_converged(5_000)
    assert c.faults_injected["drop-InstallSnapshot"] == 2
    assert c.faults_injected["install-snapshot"] >= 3
    c.heal()
    c.run_for(200)
    assert c.nodes[f].state == c.nodes[leader].state
    c.check_history()


def test_restart_right_after_a_snapshot_boots_from_it() -> None:
    """A node restarts at each moment of taking a snapshot (file renamed in but
    ``SnapshotTaken`` not stepped; stepped but the disk not compacted; compacted): it boots
    from the newest snapshot plus the log after it, with every committed entry still there
    (the leader, so that a lost entry would also break leader completeness on re-election)."""
    for moment in ("snapshot-written", "snapshot-taken", "snapshot-compacted"):
        c = Cluster(3, seed=206, snapshot_threshold=0, snapshot_retained=2)
        leader = c.wait_for_leader()
        for _ in range(25):
            c.put(leader, "k")
            c.run_for(5)
        restarted = _at(c, moment, leader, lambda n=leader, c=c: c.bounce(n, 0.0))  # type: ignore[misc]
        c.take_snapshot(leader)
        c.run_for(100)
        assert restarted, f"the leader reached {moment}"
        snap = c.nodes[leader].snapshot
        assert snap is not None and snap.index >= 25
        assert c.nodes[leader].applied_index >= snap.index
        c.run_for(1_000)
        c.put(c.wait_for_leader(), "k")
        c.wait_converged(3_000)
        c.check_durability()
        c.check_history()


def test_compaction_racing_a_leader_change() -> None:
    """L compacts past a lagging F while it hands leadership to the other follower: the new
    leader, with a log compacted at another point (or not at all), must bring F up to date
    by its own snapshot or log, and no committed entry may be missing anywhere."""
    c, leader, f = _follower_down_across_compactions(207)
    other = next(n for n in c.ids if n not in (leader, f))
    moved = _at(c, "snapshot-taken", leader, lambda: c.transfer(leader, other))
    for _ in range(12):
        c.put(leader, "k")
        c.run_for(2)
    c.take_snapshot(leader)
    c.restart(f)
    c.run_for(500)
    assert moved
    new = c.wait_for_leader()
    for _ in range(12):
        c.put(new, "k")
        c.run_for(5)
    c.wait_converged(3_000)
    c.check_durability()
    c.check_history()
    c.check_linearizability()


def test_a_snapshot_whose_last_entry_the_follower_holds_keeps_its_log() -> None:
    """Raft paper §7, Figure 13 step 6: F holds the snapshot's last entry (same index and
    term) but has not learnt it is committed. The InstallSnapshot moves F's commit index there
    and F keeps the entries after it: no restore, no log reset (a restore would throw away
    entries F may have acknowledged, and the work of sending them)."""
    c = Cluster(3, seed=208, snapshot_threshold=0, snapshot_retained=100)
    leader = c.wait_for_leader()
    f = next(n for n in c.ids if n != leader)
    c.put(leader, "k")
    c.run_for(50)
    c.drop(f, leader)  # F's answers are lost: the leader never learns F's match
    in_order = c.stall(leader, f, 0.0)
    for _ in range(10):
        c.put(leader, "k")  # each AppendEntries to F carries the commit index of its moment
    c.remove_rule(in_order)
    c.drop(leader, f)  # nothing more reaches F: no later commit index either
    c.run_for(50)
    c.take_snapshot(leader)
    c.run_for(30)
    snap = c.nodes[leader].snapshot
    raft = c.raft(f)
    assert snap is not None and raft.commit_index < snap.index <= raft.log.last_index
    assert raft.log.term_at(snap.index) == snap.term
    last = raft.log.last_index
    c.heal()
    c.send_snapshot(leader, f)
    for _ in range(100):
        if raft.commit_index >= snap.index:
            break
        c.run_for(1)
    assert raft.commit_index >= snap.index
    assert "restore-snapshot" not in c.faults_injected, "the follower restored nothing"
    assert raft.log.first_index == 1 and raft.log.last_index >= last, "F kept its log"
    c.wait_converged(3_000)
    c.check_history()


def test_an_install_snapshot_from_an_older_term_is_refused() -> None:
    """All term rules apply to InstallSnapshot as to AppendEntries (§5.1): L's InstallSnapshot
    to F is held while L is deposed and F follows the new leader O in a later term; when L's
    message finally lands, F answers with its term and neither restores L's snapshot nor takes
    L for its leader."""
    c, leader, f = _follower_down_across_compactions(209)
    o = next(n for n in c.ids if n not in (leader, f))
    c.hold(0, f, InstallSnapshot)  # every snapshot to F waits, L's and later O's
    c.restart(f)
    c.run_for(100)
    assert [m.src for m in c.held] and {m.src for m in c.held} == {leader}
    term = c.raft(leader).term
    c.partition([leader], [f, o])
    while not (c.leader() == o and c.raft(o).term > term):
        c.run_for(1)
    c.run_for(60)  # F hears O's heartbeats in O's term
    assert c.raft(f).term == c.raft(o).term > term and c.raft(f).leader_id == o
    restores = c.faults_injected.get("restore-snapshot", 0)
    c.cut.discard((leader, f))  # L's link to F only comes back
    assert c.release(leader, f, InstallSnapshot) >= 1  # L's, of term ``term``: stale
    c.run_for(3)
    assert not any(m.src == leader for m in c.held)
    assert c.faults_injected.get("restore-snapshot", 0) == restores
    assert c.raft(f).leader_id == o and c.raft(f).term > term
    c.heal()
    c.wait_converged(3_000)
    c.check_history()
